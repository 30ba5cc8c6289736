//! CreateProject, step by step: `recorded -> repository_created -> template_committed ->
//! repository_registered -> initial_secrets_set -> done`. Each step is recorded (and audited)
//! when done, so a retry with the same request id resumes at the first step not recorded.
//! The repository is registered at the broker before the template is committed (the commit
//! token is narrowed to the registered repository); `repository_registered` confirms it.
//! Each GitHub job uses a token of its own, revoked when the job is done (`tokens`).
//! Before `done`, the owner's grant of each vault entry to the project is recorded at the vault.

use orchestrator_fields::ProjectId;
use orchestrator_github::{GitHubError, RepoRef};
use orchestrator_mesh::retry::from_peer;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as broker;
use orchestrator_proto::vault::v1 as vault;
use orchestrator_status::with_reason;
use orchestrator_store::{StoreError, now_us};
use secrecy::SecretString;
use tonic::{Code, Status};

use crate::db;
use crate::project::{
    Failure, InitialSecrets, Project, ProjectSpec, Step, Visibility, deploy_files, name_key,
};
use crate::state::{Action, Scaffolder};
use crate::tokens::{Job, with_token};

/// Creates the project `spec` asks for, or resumes the one its request id recorded; returns it
/// (ready) with the broker's result for each initial secret. A failed step is recorded on the
/// project, which stays `creating` for a retry.
pub(crate) async fn create_project(
    s: &Scaffolder,
    spec: ProjectSpec,
    initial: InitialSecrets,
    caller: &str,
) -> Result<(Project, Vec<common::SecretWriteResult>), Status> {
    let name = name_key(&spec.name);
    let mut project = match db::project_by_request_id(&s.db, &spec.request_id).await? {
        Some(p) => p,
        None => record(s, spec, caller).await?,
    };
    if name_key(&project.spec.name) != name {
        return Err(with_reason(
            Code::FailedPrecondition,
            "REQUEST_ID_REUSED",
            format!("request_id was used for project {}", project.spec.name),
            &[("project_id", project.id.to_string())],
        ));
    }
    match run_steps(s, &mut project, initial, caller).await {
        Ok(results) => Ok((project, results)),
        Err(status) => {
            record_failure(s, &project.id, &status, caller).await;
            Err(status)
        }
    }
}

/// Records the new project (step `recorded`) under a fresh id; or returns the one a
/// concurrent call with the same request id (on another replica, say) recorded first.
async fn record(s: &Scaffolder, spec: ProjectSpec, caller: &str) -> Result<Project, Status> {
    let (owner, caller) = (s.settings.org.clone(), caller.to_owned());
    s.ledger
        .write_retrying(move |conn| {
            let (spec, owner, caller) = (spec.clone(), owner.clone(), caller.clone());
            Box::pin(async move {
                if let Some(earlier) = db::project_by_request_id_in(conn, &spec.request_id).await? {
                    return Ok((earlier, Vec::new()));
                }
                let project = Project::recorded(spec, ProjectId::generate(), owner, now_us());
                db::insert_project(conn, &project)
                    .await
                    .map_err(|e| match e {
                        StoreError::Duplicate(_) => with_reason(
                            Code::AlreadyExists,
                            "PROJECT_NAME_TAKEN",
                            format!("a project named `{}` exists", project.spec.name),
                            &[],
                        ),
                        other => other.into(),
                    })?;
                let entry = Action::CreateProject
                    .on(&caller, &project.id)
                    .request_id(project.spec.request_id.as_str())
                    .detail(format!(
                        "recorded name={} template={}",
                        project.spec.name,
                        project.spec.template.as_str()
                    ));
                Ok((project, vec![entry]))
            })
        })
        .await
}

/// Runs the steps not recorded yet.
// Architecture Invariant: a project's creation never creates twice: recorded steps, the
// description marker of the repository, content-compared file writes, the broker's request ids.
async fn run_steps(
    s: &Scaffolder,
    project: &mut Project,
    initial: InitialSecrets,
    caller: &str,
) -> Result<Vec<common::SecretWriteResult>, Status> {
    if project.step == Step::Recorded {
        let repository_id = with_token(s, &project.id, Job::CreateRepository, async |token| {
            create_repository(s, project, token).await
        })
        .await?;
        advance(
            s,
            project,
            Step::RepositoryCreated,
            Some(repository_id),
            caller,
        )
        .await?;
    }
    if project.step == Step::RepositoryCreated {
        // The commit token reaches the registered repository only: register it first (the
        // `repository_registered` step below then finds it registered).
        register(s, project).await?;
        with_token(s, &project.id, Job::CommitTemplate, async |token| {
            commit_template(s, project, token).await
        })
        .await?;
        advance(s, project, Step::TemplateCommitted, None, caller).await?;
    }
    if project.step == Step::TemplateCommitted {
        register(s, project).await?;
        advance(s, project, Step::RepositoryRegistered, None, caller).await?;
    }
    let mut results = Vec::new();
    if !initial.0.is_empty() {
        // Idempotent by the project's request id: a retry gets the recorded results and
        // writes only what is missing. The values are never stored here.
        results = s
            .broker()
            .set_project_secrets(broker::SetProjectSecretsRequest {
                request_id: project.spec.request_id.to_string(),
                project_id: project.id.to_string(),
                secrets: initial.0,
                location: None,
            })
            .await
            .map_err(from_peer("secret broker"))?
            .into_inner()
            .results;
    }
    if project.step == Step::RepositoryRegistered {
        advance(s, project, Step::InitialSecretsSet, None, caller).await?;
    }
    if project.step == Step::InitialSecretsSet {
        grant_vault_entries(s, project).await?;
        advance(s, project, Step::Done, None, caller).await?;
    }
    Ok(results)
}

/// Records at the vault the owner's grant of each vault entry of `secrets_ref` to the project
/// (validation made sure each is the owner's), so that infra may read it for this project and
/// no other. Idempotent at the vault, so a retry grants again safely; a project is READY only
/// once every grant is recorded.
async fn grant_vault_entries(s: &Scaffolder, project: &Project) -> Result<(), Status> {
    let entries = project
        .spec
        .secrets_ref
        .entries
        .values()
        .filter_map(|t| match &t.target {
            Some(common::secret_target::Target::VaultEntry(e)) => Some(e),
            _ => None,
        });
    for entry in entries {
        s.vault()
            .grant_user_secret(vault::GrantUserSecretRequest {
                user_id: entry.user_id.clone(),
                key: entry.key.clone(),
                project_id: project.id.to_string(),
            })
            .await
            .map_err(from_peer("vault"))?;
    }
    Ok(())
}

/// Records `step` as done (ready at [`Step::Done`]), audited, and applies it to `project`.
async fn advance(
    s: &Scaffolder,
    project: &mut Project,
    step: Step,
    repository_id: Option<i64>,
    caller: &str,
) -> Result<(), Status> {
    let (id, caller) = (project.id.clone(), caller.to_owned());
    let now = s
        .ledger
        .write(move |conn| {
            Box::pin(async move {
                let now = now_us();
                db::record_step(conn, &id, step, repository_id, now).await?;
                let entry = Action::CreateProject.on(&caller, &id).detail(step.as_str());
                Ok((now, vec![entry]))
            })
        })
        .await?;
    project.advance(step, repository_id, now);
    Ok(())
}

/// Records why a step failed (best effort: the step's own error is what the caller gets).
async fn record_failure(s: &Scaffolder, id: &ProjectId, status: &Status, caller: &str) {
    let (id, failure, caller) = (id.clone(), Failure::of(status), caller.to_owned());
    let outcome = format!("{:?}", status.code());
    let result = s
        .ledger
        .write(move |conn| {
            Box::pin(async move {
                db::record_failure(conn, &id, &failure, now_us()).await?;
                let mut entry = Action::CreateProject
                    .on(&caller, &id)
                    .detail(format!("failed: {}", failure.message));
                entry.outcome = outcome;
                Ok(((), vec![entry]))
            })
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e.message(), "could not record a creation failure");
    }
}

/// Registers the project's repository at the broker (idempotent by request id: a second call
/// answers the same registration).
async fn register(s: &Scaffolder, project: &Project) -> Result<(), Status> {
    s.broker()
        .register_repository(broker::RegisterRepositoryRequest {
            request_id: format!("{}-register", project.id),
            project_id: project.id.to_string(),
            repository: Some(project.repository()),
        })
        .await
        .map_err(from_peer("secret broker"))?;
    Ok(())
}

/// Creates (or, after a crash, finds) the project's repository; returns GitHub's id of it.
async fn create_repository(
    s: &Scaffolder,
    project: &Project,
    token: &SecretString,
) -> Result<i64, Status> {
    let org = &s.settings.org;
    let marker = format!("orchestrator project {}", project.id);
    let description = if project.spec.description.is_empty() {
        marker.clone()
    } else {
        format!("{} ({marker})", project.spec.description)
    };
    let private = project.spec.visibility != Visibility::Public;
    let created = match &s.settings.template_repository {
        Some(template) => {
            s.github
                .generate_repository(
                    token,
                    template,
                    org,
                    &project.spec.name,
                    &description,
                    private,
                )
                .await
        }
        None => {
            s.github
                .create_org_repository(token, org, &project.spec.name, &description, private)
                .await
        }
    };
    let message = match created {
        // GitHub answers with the name it gave (it normalizes some): validation took only
        // names it keeps, so another one means the project would not find its repository.
        Ok(repo) if !repo.name.eq_ignore_ascii_case(&project.spec.name) => {
            return Err(Status::internal(format!(
                "GitHub created {org}/{} when asked for {org}/{}",
                repo.name, project.spec.name
            )));
        }
        Ok(repo) => return Ok(repo.id),
        Err(GitHubError::Status {
            status: 422,
            message,
        }) => message,
        Err(e) => return Err(e.to_grpc()),
    };
    // Ours, from an attempt that crashed before recording it? Its description says so.
    let repo =
        RepoRef::new(org, &project.spec.name).map_err(|e| Status::internal(e.to_string()))?;
    match s
        .github
        .repository(token, &repo)
        .await
        .map_err(|e| e.to_grpc())?
    {
        Some(existing)
            if existing
                .description
                .as_deref()
                .is_some_and(|d| d.contains(&marker)) =>
        {
            Ok(existing.id)
        }
        _ => Err(with_reason(
            Code::AlreadyExists,
            "REPOSITORY_EXISTS",
            format!(
                "GitHub refused to create {org}/{}: {message}",
                project.spec.name
            ),
            &[("github_status", "422".into())],
        )),
    }
}

/// How long a repository generated from the template may stay empty (GitHub copies the
/// template's files after answering) before the step fails as unavailable (a retry resumes).
const TEMPLATE_COPY_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Commits the rendered deploy template (files whose content is already there are skipped by
/// the GitHub client). A repository generated from a template is written only once the
/// template's copy landed (its first commit): written before, our files would be replaced by
/// the copy; after, each update names the file's current `sha`.
async fn commit_template(
    s: &Scaffolder,
    project: &Project,
    token: &SecretString,
) -> Result<(), Status> {
    let files = deploy_files(
        project.spec.template,
        &project.spec.name,
        &project.spec.secrets_ref,
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let repo = RepoRef::new(&project.owner, &project.spec.name)
        .map_err(|e| Status::internal(e.to_string()))?;
    if s.settings.template_repository.is_some() {
        s.github
            .wait_for_first_commit(token, &repo, TEMPLATE_COPY_LIMIT)
            .await
            .map_err(|e| e.to_grpc())?;
    }
    for file in files {
        s.github
            .put_file(
                token,
                &repo,
                &file.path,
                &file.content,
                &format!("Add {} (orchestrator)", file.path),
            )
            .await
            .map_err(|e| e.to_grpc())?;
    }
    Ok(())
}
