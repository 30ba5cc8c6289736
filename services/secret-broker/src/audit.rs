//! What the broker's audit records name: the action (the RPC's full method path) and the
//! target (the project, one of its secrets, or its tokens).

use orchestrator_audit::Entry;
use orchestrator_fields::ProjectId;

/// Every state change the broker audits, one per RPC that changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    RegisterRepository,
    SetProjectSecrets,
    SetDeployCredentials,
    DeleteProjectSecret,
    ReconcileProjectSecrets,
    MintRepositoryToken,
}

impl Action {
    /// The record's `method`: the full gRPC method path.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::RegisterRepository => {
                "/orchestrator.secretbroker.v1.SecretBrokerService/RegisterRepository"
            }
            Action::SetProjectSecrets => {
                "/orchestrator.secretbroker.v1.SecretBrokerService/SetProjectSecrets"
            }
            Action::SetDeployCredentials => {
                "/orchestrator.secretbroker.v1.SecretBrokerService/SetDeployCredentials"
            }
            Action::DeleteProjectSecret => {
                "/orchestrator.secretbroker.v1.SecretBrokerService/DeleteProjectSecret"
            }
            Action::ReconcileProjectSecrets => {
                "/orchestrator.secretbroker.v1.SecretBrokerService/ReconcileProjectSecrets"
            }
            Action::MintRepositoryToken => {
                "/orchestrator.secretbroker.v1.SecretBrokerService/MintRepositoryToken"
            }
        }
    }

    /// A record of this action by `caller` on project `project_id`.
    pub(crate) fn on_project(self, caller: &str, project_id: &ProjectId) -> Entry {
        Entry::new(caller, self.as_str(), format!("projects/{project_id}"))
    }

    /// A record of this action by `caller` on one secret of a project.
    pub(crate) fn on_secret(
        self,
        caller: &str,
        project_id: &ProjectId,
        name: impl std::fmt::Display,
    ) -> Entry {
        Entry::new(
            caller,
            self.as_str(),
            format!("projects/{project_id}/secrets/{name}"),
        )
    }

    /// A record of this action by `caller` on a project's tokens (`project_id` may be empty:
    /// repository-creation tokens need no project).
    pub(crate) fn on_tokens(self, caller: &str, project_id: &str) -> Entry {
        Entry::new(
            caller,
            self.as_str(),
            format!("projects/{project_id}/tokens"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_methods_of_the_broker_in_the_contract() {
        let broker = orchestrator_proto::services(orchestrator_proto::FILE_DESCRIPTOR_SET)
            .unwrap()
            .into_iter()
            .find(|s| s.name == "orchestrator.secretbroker.v1.SecretBrokerService")
            .unwrap();
        for action in [
            Action::RegisterRepository,
            Action::SetProjectSecrets,
            Action::SetDeployCredentials,
            Action::DeleteProjectSecret,
            Action::ReconcileProjectSecrets,
            Action::MintRepositoryToken,
        ] {
            let method = action
                .as_str()
                .strip_prefix(&format!("/{}/", broker.name))
                .unwrap();
            assert!(broker.methods.iter().any(|m| m == method), "{method}");
        }
    }
}
