//! A project as a read returns it: BASIC, or FULL with each secret's presence from the broker.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use orchestrator_mesh::retry::from_peer;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;
use orchestrator_proto::secretbroker::v1 as broker;
use tonic::Status;

use crate::project::{Project, Step, secret_location, secret_location_key};
use crate::state::Scaffolder;

/// How much of a project a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Everything but `secret_presence` (no call to the broker).
    Basic,
    /// With `secret_presence`.
    Full,
}

pub(crate) async fn project(
    s: &Scaffolder,
    project: &Project,
    view: View,
) -> Result<pb::Project, Status> {
    let presence = match view {
        View::Basic => HashMap::new(),
        View::Full => secret_presence(s, project).await?,
    };
    Ok(project.to_pb(presence))
}

/// Each `secrets_ref` key's presence: a GitHub secret is present if the broker has it, a vault
/// entry is unknown (the scaffolder does not read the vault; it only records grants there).
async fn secret_presence(
    s: &Scaffolder,
    project: &Project,
) -> Result<HashMap<String, i32>, Status> {
    // Before the registration the broker knows nothing of the project. One listing per
    // location the references name: (location key, name) -> presence.
    let mut known: BTreeMap<(String, String), i32> = BTreeMap::new();
    if project.step >= Step::RepositoryRegistered {
        let places: BTreeSet<String> = project
            .spec
            .secrets_ref
            .entries
            .values()
            .filter_map(|t| match &t.target {
                Some(common::secret_target::Target::GithubSecret(g)) => {
                    Some(secret_location_key(g.location.as_ref()))
                }
                _ => None,
            })
            .collect();
        for place in places {
            let listed = s
                .broker()
                .list_project_secrets(broker::ListProjectSecretsRequest {
                    project_id: project.id.to_string(),
                    page_size: 100,
                    page_token: String::new(),
                    location: secret_location(&place),
                })
                .await
                .map_err(from_peer("secret broker"))?
                .into_inner()
                .secrets;
            known.extend(
                listed
                    .into_iter()
                    .map(|s| ((place.clone(), s.name), s.presence)),
            );
        }
    }
    Ok(project
        .spec
        .secrets_ref
        .entries
        .iter()
        .map(|(key, target)| {
            let presence = match &target.target {
                Some(common::secret_target::Target::GithubSecret(g)) => known
                    .get(&(
                        secret_location_key(g.location.as_ref()),
                        g.name.to_ascii_uppercase(),
                    ))
                    .copied()
                    .unwrap_or(common::SecretPresence::Missing as i32),
                _ => common::SecretPresence::Unknown as i32,
            };
            (key.clone(), presence)
        })
        .collect())
}
