//! What infra's audit records name as their action.

use orchestrator_audit::Entry;

/// An audited action: an RPC that changed something, or a step of background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    ProvisionServer,
    DestroyServer,
    RotateDeployKey,
    /// A change an operation made as it ran (a step's state, a server column, the end).
    Operation,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::ProvisionServer => "/orchestrator.infra.v1.InfraService/ProvisionServer",
            Action::DestroyServer => "/orchestrator.infra.v1.InfraService/DestroyServer",
            Action::RotateDeployKey => "/orchestrator.infra.v1.InfraService/RotateDeployKey",
            Action::Operation => "infra/operation",
        }
    }

    /// A record of this action by `caller` on `target` (`servers/…`, `operations/…`).
    pub(crate) fn entry(self, caller: &str, target: String) -> Entry {
        Entry::new(caller, self.as_str(), target)
    }
}
