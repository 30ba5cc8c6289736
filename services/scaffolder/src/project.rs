//! The project model: a project as the scaffolder records it, the steps of its creation, and
//! how it reads in the API.

use std::collections::HashMap;

use orchestrator_fields::{ProjectId, RequestId, UserId};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;
use orchestrator_proto::timestamp as ts;
use orchestrator_status::reason_of;
use orchestrator_templates::{File, ProjectVars, RenderError, SecretVar};
use tonic::Status;

orchestrator_store::stored_enum! {
    /// The deploy template rendered into the repository.
    pub(crate) enum Template: pb::ProjectTemplate {
        DockerSsh = "docker_ssh" => DockerSsh,
        Ansible = "ansible" => Ansible,
    }
}

orchestrator_store::stored_enum! {
    /// The repository's visibility at GitHub.
    pub(crate) enum Visibility: pb::RepositoryVisibility {
        Private = "private" => Private,
        Internal = "internal" => Internal,
        Public = "public" => Public,
    }
}

orchestrator_store::stored_enum! {
    /// Where a project is in its life cycle.
    pub(crate) enum State: pb::ProjectState {
        Creating = "creating" => Creating,
        Ready = "ready" => Ready,
        Failed = "failed" => Failed,
    }
}

orchestrator_store::stored_enum! {
    /// The steps of a creation, in the order they run (and compare); each is recorded when done.
    pub(crate) enum Step: pb::ProjectCreationStep {
        Recorded = "recorded" => Recorded,
        RepositoryCreated = "repository_created" => RepositoryCreated,
        TemplateCommitted = "template_committed" => TemplateCommitted,
        RepositoryRegistered = "repository_registered" => RepositoryRegistered,
        InitialSecretsSet = "initial_secrets_set" => InitialSecretsSet,
        Done = "done" => Done,
    }
}

impl Template {
    fn deploy(self) -> orchestrator_templates::Template {
        match self {
            Template::DockerSsh => orchestrator_templates::Template::DockerSsh,
            Template::Ansible => orchestrator_templates::Template::Ansible,
        }
    }
}

/// A project as its CreateProject asked for it, validated; it does not change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProjectSpec {
    pub(crate) request_id: RequestId,
    /// The repository name (GitHub's rules).
    pub(crate) name: String,
    pub(crate) user_id: UserId,
    pub(crate) template: Template,
    pub(crate) description: String,
    pub(crate) visibility: Visibility,
    /// Abstract key -> GitHub secret or vault entry: names only.
    pub(crate) secrets_ref: common::SecretsRef,
}

/// The initial secret values of a CreateProject: forwarded to the broker, never stored here.
// Architecture Invariant: no L2 value is stored or logged by the mesh (Debug shows names only).
pub(crate) struct InitialSecrets(pub(crate) Vec<common::ProjectSecretValue>);

impl std::fmt::Debug for InitialSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|s| &s.name))
            .finish()
    }
}

/// Why the last creation attempt stopped (cleared when a later step succeeds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The gRPC code of the step's status.
    pub(crate) code: i32,
    /// Its `ErrorInfo` reason, or empty.
    pub(crate) reason: String,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn of(status: &Status) -> Self {
        Self {
            code: status.code() as i32,
            reason: reason_of(status)
                .map(|(reason, _)| reason)
                .unwrap_or_default(),
            message: status.message().to_owned(),
        }
    }
}

/// A project as recorded: what was asked for, and how far its creation got.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Project {
    pub(crate) id: ProjectId,
    pub(crate) spec: ProjectSpec,
    /// The organization the repository is created in.
    pub(crate) owner: String,
    /// GitHub's id of the repository, once it exists.
    pub(crate) repository_id: Option<i64>,
    pub(crate) state: State,
    /// The last step done.
    pub(crate) step: Step,
    pub(crate) failure: Option<Failure>,
    pub(crate) created_us: i64,
    pub(crate) updated_us: i64,
    pub(crate) ready_us: Option<i64>,
}

/// The key project names are unique by (GitHub's names are case-insensitive).
/// [`secret_location_key`] of the repository's Actions secrets (and of no location).
pub(crate) const REPOSITORY: &str = "repository";

/// A `secrets_ref` GitHub target's location as one string, the broker's spelling:
/// `repository`, `environment:<name>` (lower-cased), `dependabot`, `organization`.
pub(crate) fn secret_location_key(location: Option<&common::GitHubSecretLocation>) -> String {
    use common::git_hub_secret_location::Kind;
    match location.and_then(|l| l.kind.as_ref()) {
        None | Some(Kind::Repository(_)) => REPOSITORY.to_owned(),
        Some(Kind::Environment(e)) => format!("environment:{}", e.name.to_ascii_lowercase()),
        Some(Kind::Dependabot(_)) => "dependabot".to_owned(),
        Some(Kind::Organization(_)) => "organization".to_owned(),
    }
}

/// The location of a [`secret_location_key`]; `None` for the repository (unset, as clients
/// written before locations send it).
pub(crate) fn secret_location(key: &str) -> Option<common::GitHubSecretLocation> {
    use common::git_hub_secret_location::Kind;
    let kind = match key {
        "dependabot" => Kind::Dependabot(common::DependabotSecretLocation {}),
        "organization" => Kind::Organization(common::OrganizationSecretLocation::default()),
        _ => Kind::Environment(common::EnvironmentSecretLocation {
            name: key.strip_prefix("environment:")?.to_owned(),
        }),
    };
    Some(common::GitHubSecretLocation { kind: Some(kind) })
}

pub(crate) fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl Project {
    /// A project just recorded: `creating`, at the step `recorded`.
    pub(crate) fn recorded(spec: ProjectSpec, id: ProjectId, owner: String, now_us: i64) -> Self {
        Self {
            id,
            spec,
            owner,
            repository_id: None,
            state: State::Creating,
            step: Step::Recorded,
            failure: None,
            created_us: now_us,
            updated_us: now_us,
            ready_us: None,
        }
    }

    /// The project after `step` was recorded at `now_us` (as `db::record_step` stores it).
    pub(crate) fn advance(&mut self, step: Step, repository_id: Option<i64>, now_us: i64) {
        self.step = step;
        self.repository_id = repository_id.or(self.repository_id);
        self.updated_us = now_us;
        self.failure = None;
        if step == Step::Done {
            self.state = State::Ready;
            self.ready_us = Some(now_us);
        }
    }

    pub(crate) fn repository(&self) -> common::RepositoryRef {
        common::RepositoryRef {
            owner: self.owner.clone(),
            name: self.spec.name.clone(),
            id: self.repository_id.unwrap_or_default(),
        }
    }

    /// The project as the API shows it, with `secret_presence` as given (empty in the BASIC
    /// view).
    pub(crate) fn to_pb(&self, secret_presence: HashMap<String, i32>) -> pb::Project {
        pb::Project {
            id: self.id.to_string(),
            name: self.spec.name.clone(),
            user_id: self.spec.user_id.to_string(),
            template: pb::ProjectTemplate::from(self.spec.template) as i32,
            description: self.spec.description.clone(),
            visibility: pb::RepositoryVisibility::from(self.spec.visibility) as i32,
            repository: Some(self.repository()),
            secrets_ref: Some(self.spec.secrets_ref.clone()),
            secret_presence,
            state: pb::ProjectState::from(self.state) as i32,
            creation_step: pb::ProjectCreationStep::from(self.step) as i32,
            failure: self.failure.as_ref().map(|f| common::Failure {
                code: f.code,
                reason: f.reason.clone(),
                message: f.message.clone(),
                metadata: Default::default(),
            }),
            request_id: self.spec.request_id.to_string(),
            create_time: Some(ts(self.created_us)),
            update_time: Some(ts(self.updated_us)),
            ready_time: self.ready_us.map(ts),
        }
    }
}

/// The files the deploy template renders for a project: its GitHub secrets appear in the
/// workflow by name only.
// Architecture Invariant: every secret in `secrets_ref` reaches the app only as
// `${{ secrets.NAME }}` (the template gets names, never a value).
pub(crate) fn deploy_files(
    template: Template,
    name: &str,
    secrets_ref: &common::SecretsRef,
) -> Result<Vec<File>, RenderError> {
    let secrets: Vec<SecretVar> = github_targets(secrets_ref)
        .into_iter()
        .map(|(env, secret)| SecretVar { secret, env })
        .collect();
    orchestrator_templates::render(
        template.deploy(),
        &ProjectVars {
            name,
            secrets: &secrets,
            environment: orchestrator_templates::DEFAULT_ENVIRONMENT,
        },
    )
}

/// The GitHub secret names `secrets_ref` targets, each with the abstract key that becomes the
/// app's environment variable: (ENV, SECRET), sorted.
fn github_targets(secrets_ref: &common::SecretsRef) -> Vec<(String, String)> {
    let mut targets: Vec<(String, String)> = secrets_ref
        .entries
        .iter()
        .filter_map(|(key, target)| match &target.target {
            Some(common::secret_target::Target::GithubSecret(g)) => {
                Some((key.to_ascii_uppercase(), g.name.to_ascii_uppercase()))
            }
            _ => None,
        })
        .collect();
    targets.sort();
    targets
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stored_names_round_trip_and_unknown_ones_are_refused() {
        for t in Template::ALL {
            assert_eq!(Template::parse(t.as_str()), Ok(*t));
        }
        for v in Visibility::ALL {
            assert_eq!(Visibility::parse(v.as_str()), Ok(*v));
        }
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Ok(*s));
        }
        for s in Step::ALL {
            assert_eq!(Step::parse(s.as_str()), Ok(*s));
        }
        assert!(State::parse("deleted").is_err());
        assert!(Template::parse("docker-ssh").is_err());
    }

    #[test]
    fn steps_compare_in_the_order_they_run_as_in_the_contract() {
        for pair in Step::ALL.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(
                pb::ProjectCreationStep::from(pair[0]) < pb::ProjectCreationStep::from(pair[1])
            );
        }
    }

    #[test]
    fn initial_secrets_show_names_only() {
        let secrets = InitialSecrets(vec![common::ProjectSecretValue {
            name: "TOKEN".into(),
            value: b"canary-value".to_vec(),
        }]);
        let shown = format!("{secrets:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("canary"),
            "{shown}"
        );
    }
}
