//! GitHub tokens for one job each: minted by the broker for that job only, revoked by the
//! scaffolder as soon as the job is done (`DELETE /installation/token`, authenticated by the
//! token itself), whether the job succeeded or not.
//!
//! - Creating the repository: `administration: write` for the organization (plus `contents:
//!   read` when generating from a template), nothing that writes any repository.
//! - Committing the template: `contents` and `workflows` write on the project's registered
//!   repository only.

use orchestrator_fields::ProjectId;
use std::time::Duration;

use orchestrator_mesh::retry::{self, from_peer};
use orchestrator_proto::secretbroker::v1 as broker;
use secrecy::SecretString;
use tonic::Status;

use crate::state::Scaffolder;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Job {
    /// Creating (or generating) the project's repository in the organization.
    CreateRepository,
    /// Committing the rendered template to the project's registered repository.
    CommitTemplate,
}

impl Job {
    /// The job in a token's request id.
    fn key(self) -> &'static str {
        match self {
            Job::CreateRepository => "create-repository",
            Job::CommitTemplate => "commit-template",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Job::CreateRepository => "repository creation",
            Job::CommitTemplate => "template commit",
        }
    }
}

/// How long a mint is retried while the broker is down or restarting.
const MINT_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Mints the token for `job` on project `id` at the broker. One request id for this job's
/// token, repeated while the call fails transiently: a mint whose answer was lost is revoked
/// by the broker when the retry arrives. Fresh for every job, so that two replicas working on
/// the same project never end each other's token.
pub(crate) async fn mint(s: &Scaffolder, id: &ProjectId, job: Job) -> Result<SecretString, Status> {
    let scope = match job {
        Job::CreateRepository => broker::RepositoryTokenScope::RepositoryCreation,
        Job::CommitTemplate => broker::RepositoryTokenScope::InitialCommit,
    };
    let request = broker::MintRepositoryTokenRequest {
        scope: scope as i32,
        project_id: id.to_string(),
        from_template: job == Job::CreateRepository && s.settings.template_repository.is_some(),
        request_id: retry::request_id(&format!("{id}/{}", job.key())),
    };
    let minted = retry::while_transient(MINT_RETRY_BUDGET, || {
        let (mut broker, request) = (s.broker(), request.clone());
        async move { broker.mint_repository_token(request).await }
    })
    .await
    .map_err(from_peer("secret broker"))?
    .into_inner();
    Ok(SecretString::from(minted.token))
}

/// Runs `work` with a token for `job`, then revokes the token, whatever `work` returned.
/// A failed revocation is logged, not returned: the job's own outcome is what counts, and
/// GitHub expires the token within the hour anyway.
pub(crate) async fn with_token<T>(
    s: &Scaffolder,
    id: &ProjectId,
    job: Job,
    work: impl AsyncFnOnce(&SecretString) -> Result<T, Status>,
) -> Result<T, Status> {
    let token = mint(s, id, job).await?;
    let outcome = work(&token).await;
    // Architecture Invariant: a minted token lives as long as its job.
    match s.github.revoke_token(&token).await {
        Ok(_) => {}
        Err(e) => tracing::warn!(
            project_id = %id,
            job = job.name(),
            error = %e,
            "could not revoke a GitHub token after its job (it expires within the hour)"
        ),
    }
    outcome
}
