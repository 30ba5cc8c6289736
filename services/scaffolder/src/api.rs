//! The gRPC surface of the scaffolder: projects, created step by step so that a retry with the
//! same request id resumes where the previous attempt stopped and creates nothing twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use orchestrator_audit::{Entry, Ledger};
use orchestrator_github::{GitHub, GitHubError, RepoRef, SecretName};
use orchestrator_mesh::caller;
use orchestrator_mesh::status::{Violations, from_peer, reason_of, with_reason};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1::{
    self as pb, scaffolder_service_server::ScaffolderService,
};
use orchestrator_proto::secretbroker::v1 as broker;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_proto::timestamp as ts;
use orchestrator_store::random_hex;
use orchestrator_store::{Database, StoreError};
use secrecy::SecretString;
use sqlx::Row;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::now_us;

const CREATE: &str = "/orchestrator.scaffolder.v1.ScaffolderService/CreateProject";

#[derive(Debug)]
pub struct Scaffolder {
    pub db: Database,
    pub ledger: Ledger,
    pub github: Arc<GitHub>,
    /// Where repositories are created (`GITHUB_ORG`).
    pub org: String,
    /// A template repository to generate from instead of creating empty ones.
    pub template_repository: Option<RepoRef>,
    /// The secret broker: one channel, connected on first use and reconnected as needed.
    pub broker: Channel,
}

fn store(e: sqlx::Error) -> Status {
    StoreError::from(e).into()
}

/// The steps of a creation, in order; stored by name.
const STEPS: [(pb::ProjectCreationStep, &str); 6] = [
    (pb::ProjectCreationStep::Recorded, "recorded"),
    (
        pb::ProjectCreationStep::RepositoryCreated,
        "repository_created",
    ),
    (
        pb::ProjectCreationStep::TemplateCommitted,
        "template_committed",
    ),
    (
        pb::ProjectCreationStep::RepositoryRegistered,
        "repository_registered",
    ),
    (
        pb::ProjectCreationStep::InitialSecretsSet,
        "initial_secrets_set",
    ),
    (pb::ProjectCreationStep::Done, "done"),
];

fn step_name(step: pb::ProjectCreationStep) -> &'static str {
    STEPS
        .iter()
        .find(|(s, _)| *s == step)
        .map_or("recorded", |(_, n)| n)
}

fn step_of(name: &str) -> pb::ProjectCreationStep {
    STEPS
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(pb::ProjectCreationStep::Unspecified, |(s, _)| *s)
}

/// A project row.
#[derive(Debug, Clone)]
struct Row_ {
    id: String,
    request_id: String,
    name: String,
    user_id: String,
    template: pb::ProjectTemplate,
    description: String,
    visibility: pb::RepositoryVisibility,
    owner: String,
    repository_id: Option<i64>,
    secrets_ref: common::SecretsRef,
    state: pb::ProjectState,
    step: pb::ProjectCreationStep,
    failure: Option<common::Failure>,
    created_us: i64,
    updated_us: i64,
    ready_us: Option<i64>,
}

fn template_name(t: pb::ProjectTemplate) -> &'static str {
    match t {
        pb::ProjectTemplate::Ansible => "ansible",
        _ => "docker_ssh",
    }
}

fn visibility_name(v: pb::RepositoryVisibility) -> &'static str {
    match v {
        pb::RepositoryVisibility::Public => "public",
        pb::RepositoryVisibility::Internal => "internal",
        _ => "private",
    }
}

fn parse_row(r: &sqlx::any::AnyRow) -> Result<Row_, Status> {
    let get_s = |c: &str| r.try_get::<String, _>(c).map_err(store);
    let template = match get_s("template")?.as_str() {
        "ansible" => pb::ProjectTemplate::Ansible,
        _ => pb::ProjectTemplate::DockerSsh,
    };
    let visibility = match get_s("visibility")?.as_str() {
        "public" => pb::RepositoryVisibility::Public,
        "internal" => pb::RepositoryVisibility::Internal,
        _ => pb::RepositoryVisibility::Private,
    };
    let state = match get_s("state")?.as_str() {
        "ready" => pb::ProjectState::Ready,
        "failed" => pb::ProjectState::Failed,
        _ => pb::ProjectState::Creating,
    };
    let failure_code: Option<i64> = r.try_get("failure_code").map_err(store)?;
    let failure = failure_code.map(|code| common::Failure {
        code: code as i32,
        reason: r
            .try_get::<Option<String>, _>("failure_reason")
            .ok()
            .flatten()
            .unwrap_or_default(),
        message: r
            .try_get::<Option<String>, _>("failure_message")
            .ok()
            .flatten()
            .unwrap_or_default(),
        metadata: Default::default(),
    });
    Ok(Row_ {
        id: get_s("id")?,
        request_id: get_s("request_id")?,
        name: get_s("name")?,
        user_id: get_s("user_id")?,
        template,
        description: get_s("description")?,
        visibility,
        owner: get_s("owner")?,
        repository_id: r.try_get("repository_id").map_err(store)?,
        secrets_ref: secrets_ref_from_json(&get_s("secrets_ref")?)?,
        state,
        step: step_of(&get_s("step")?),
        failure,
        created_us: r.try_get("created_us").map_err(store)?,
        updated_us: r.try_get("updated_us").map_err(store)?,
        ready_us: r.try_get("ready_us").map_err(store)?,
    })
}

fn secrets_ref_to_json(sr: &common::SecretsRef) -> String {
    let map: BTreeMap<&String, serde_json::Value> = sr
        .entries
        .iter()
        .map(|(k, t)| {
            let v = match &t.target {
                Some(common::secret_target::Target::GithubSecret(g)) => serde_json::json!({ "github_secret": g.name }),
                Some(common::secret_target::Target::VaultEntry(v)) => {
                    serde_json::json!({ "vault_entry": { "user_id": v.user_id, "key": v.key, "version": v.version } })
                }
                None => serde_json::Value::Null,
            };
            (k, v)
        })
        .collect();
    serde_json::json!(map).to_string()
}

fn secrets_ref_from_json(text: &str) -> Result<common::SecretsRef, Status> {
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| Status::internal(format!("stored secrets_ref: {e}")))?;
    let entries = map
        .into_iter()
        .map(|(k, v)| {
            let target = if let Some(name) = v.get("github_secret").and_then(|n| n.as_str()) {
                Some(common::secret_target::Target::GithubSecret(
                    common::GitHubSecretTarget {
                        name: name.to_owned(),
                    },
                ))
            } else {
                v.get("vault_entry").map(|e| {
                    common::secret_target::Target::VaultEntry(common::VaultEntryRef {
                        user_id: e["user_id"].as_str().unwrap_or_default().to_owned(),
                        key: e["key"].as_str().unwrap_or_default().to_owned(),
                        version: e["version"].as_i64().unwrap_or_default(),
                    })
                })
            };
            (k, common::SecretTarget { target })
        })
        .collect();
    Ok(common::SecretsRef { entries })
}

/// The GitHub secret names a project's `secrets_ref` targets, with the abstract key that
/// becomes the app's environment variable.
fn github_targets(sr: &common::SecretsRef) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = sr
        .entries
        .iter()
        .filter_map(|(k, t)| match &t.target {
            Some(common::secret_target::Target::GithubSecret(g)) => {
                Some((k.to_ascii_uppercase(), g.name.to_ascii_uppercase()))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn valid_abstract_key(k: &str) -> bool {
    (1..=64).contains(&k.len())
        && k.as_bytes()[0].is_ascii_lowercase()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Scaffolder {
    /// A client on the one (lazily connecting) channel to the broker.
    fn broker(&self) -> SecretBrokerServiceClient<Channel> {
        SecretBrokerServiceClient::new(self.broker.clone())
    }

    async fn find(&self, column: &'static str, value: &str) -> Result<Option<Row_>, Status> {
        let sql = match column {
            "request_id" => {
                "SELECT id, request_id, name, user_id, template, description, visibility, owner, repository_id, secrets_ref, state, step, failure_code, failure_reason, failure_message, created_us, updated_us, ready_us FROM projects WHERE request_id = $1"
            }
            _ => {
                "SELECT id, request_id, name, user_id, template, description, visibility, owner, repository_id, secrets_ref, state, step, failure_code, failure_reason, failure_message, created_us, updated_us, ready_us FROM projects WHERE id = $1"
            }
        };
        let row = sqlx::query(sql)
            .bind(value)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store)?;
        row.as_ref().map(parse_row).transpose()
    }

    /// Moves a project to `step` (and `ready` when done), audited.
    async fn advance(
        &self,
        project: &mut Row_,
        step: pb::ProjectCreationStep,
        repository_id: Option<i64>,
        caller: &str,
    ) -> Result<(), Status> {
        let (id, caller) = (project.id.clone(), caller.to_owned());
        let done = step == pb::ProjectCreationStep::Done;
        let now = self
            .ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    sqlx::query(
                        "UPDATE projects SET step = $2, repository_id = COALESCE($3, repository_id), updated_us = $4, \
                         state = CASE WHEN $5 = 1 THEN 'ready' ELSE state END, ready_us = CASE WHEN $5 = 1 THEN $4 ELSE ready_us END, \
                         failure_code = NULL, failure_reason = NULL, failure_message = NULL WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(step_name(step))
                    .bind(repository_id)
                    .bind(now)
                    .bind(i64::from(done))
                    .execute(&mut *conn)
                    .await
                    .map_err(store)?;
                    Ok::<_, Status>((now, vec![Entry::new(&caller, CREATE, format!("projects/{id}")).detail(step_name(step))]))
                })
            })
            .await?;
        project.step = step;
        project.repository_id = repository_id.or(project.repository_id);
        project.updated_us = now;
        project.failure = None;
        if done {
            project.state = pb::ProjectState::Ready;
            project.ready_us = Some(now);
        }
        Ok(())
    }

    /// Records why a step failed; the project stays `creating`, so a retry resumes.
    async fn record_failure(&self, project: &mut Row_, status: &Status, caller: &str) {
        let caller = caller.to_owned();
        let (id, code, reason, message) = (
            project.id.clone(),
            status.code() as i64,
            reason_of(status)
                .map(|(reason, _)| reason)
                .unwrap_or_default(),
            status.message().to_owned(),
        );
        let (r2, m2) = (reason.clone(), message.clone());
        let result = self
            .ledger
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query("UPDATE projects SET failure_code = $2, failure_reason = $3, failure_message = $4, updated_us = $5 WHERE id = $1")
                        .bind(&id)
                        .bind(code)
                        .bind(&r2)
                        .bind(&m2)
                        .bind(now_us())
                        .execute(&mut *conn)
                        .await
                        .map_err(store)?;
                    let mut entry = Entry::new(&caller, CREATE, format!("projects/{id}")).detail(format!("failed: {m2}"));
                    entry.outcome = format!("{:?}", Code::from_i32(code as i32));
                    Ok::<_, Status>(((), vec![entry]))
                })
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e.message(), "could not record a creation failure");
        }
        project.failure = Some(common::Failure {
            code: code as i32,
            reason,
            message,
            metadata: Default::default(),
        });
    }

    async fn repository_token(&self, project: &Row_) -> Result<SecretString, Status> {
        let minted = self
            .broker()
            .mint_repository_token(broker::MintRepositoryTokenRequest {
                scope: broker::RepositoryTokenScope::RepositoryCreation as i32,
                project_id: project.id.clone(),
            })
            .await
            .map_err(from_peer("secret broker"))?
            .into_inner();
        Ok(SecretString::from(minted.token))
    }

    /// Creates (or, after a crash, finds) the project's repository.
    async fn create_repository(&self, project: &Row_, token: &SecretString) -> Result<i64, Status> {
        let marker = format!("orchestrator project {}", project.id);
        let description = if project.description.is_empty() {
            marker.clone()
        } else {
            format!("{} ({marker})", project.description)
        };
        let private = project.visibility != pb::RepositoryVisibility::Public;
        let created = match &self.template_repository {
            Some(template) => {
                self.github
                    .generate_repository(
                        token,
                        template,
                        &self.org,
                        &project.name,
                        &description,
                        private,
                    )
                    .await
            }
            None => {
                self.github
                    .create_org_repository(token, &self.org, &project.name, &description, private)
                    .await
            }
        };
        match created {
            Ok(repo) => Ok(repo.id),
            Err(GitHubError::Status {
                status: 422,
                message,
            }) => {
                // Ours, from an attempt that crashed before recording it? Its description says so.
                let repo = RepoRef::new(&self.org, &project.name)
                    .map_err(|e| Status::internal(e.to_string()))?;
                match self
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
                            "GitHub refused to create {}/{}: {message}",
                            self.org, project.name
                        ),
                        &[("github_status", "422".into())],
                    )),
                }
            }
            Err(e) => Err(e.to_grpc()),
        }
    }

    async fn commit_template(&self, project: &Row_, token: &SecretString) -> Result<(), Status> {
        let secrets: Vec<orchestrator_templates::SecretVar> = github_targets(&project.secrets_ref)
            .into_iter()
            .map(|(env, secret)| orchestrator_templates::SecretVar { secret, env })
            .collect();
        let template = match project.template {
            pb::ProjectTemplate::Ansible => orchestrator_templates::Template::Ansible,
            _ => orchestrator_templates::Template::DockerSsh,
        };
        let files = orchestrator_templates::render(
            template,
            &orchestrator_templates::ProjectVars {
                name: &project.name,
                secrets: &secrets,
            },
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let repo = RepoRef::new(&project.owner, &project.name)
            .map_err(|e| Status::internal(e.to_string()))?;
        for file in files {
            self.github
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

    /// Runs the remaining steps of a creation.
    async fn drive(
        &self,
        project: &mut Row_,
        initial: Vec<common::ProjectSecretValue>,
        caller: &str,
    ) -> Result<Vec<common::SecretWriteResult>, Status> {
        use pb::ProjectCreationStep as Step;
        let mut token = None;
        if project.step == Step::Recorded {
            let t = self.repository_token(project).await?;
            let id = self.create_repository(project, &t).await?;
            self.advance(project, Step::RepositoryCreated, Some(id), caller)
                .await?;
            token = Some(t);
        }
        if project.step == Step::RepositoryCreated {
            let t = match token.take() {
                Some(t) => t,
                None => self.repository_token(project).await?,
            };
            self.commit_template(project, &t).await?;
            self.advance(project, Step::TemplateCommitted, None, caller)
                .await?;
        }
        if project.step == Step::TemplateCommitted {
            self.broker()
                .register_repository(broker::RegisterRepositoryRequest {
                    request_id: format!("{}-register", project.id),
                    project_id: project.id.clone(),
                    repository: Some(common::RepositoryRef {
                        owner: project.owner.clone(),
                        name: project.name.clone(),
                        id: project.repository_id.unwrap_or_default(),
                    }),
                })
                .await
                .map_err(from_peer("secret broker"))?;
            self.advance(project, Step::RepositoryRegistered, None, caller)
                .await?;
        }
        let mut results = Vec::new();
        if !initial.is_empty() {
            // Idempotent by the project's request id: a retry gets the recorded results and
            // writes only what is missing. The values are never stored here.
            results = self
                .broker()
                .set_project_secrets(broker::SetProjectSecretsRequest {
                    request_id: project.request_id.clone(),
                    project_id: project.id.clone(),
                    secrets: initial,
                })
                .await
                .map_err(from_peer("secret broker"))?
                .into_inner()
                .results;
        }
        if project.step == Step::RepositoryRegistered {
            self.advance(project, Step::InitialSecretsSet, None, caller)
                .await?;
        }
        if project.step == Step::InitialSecretsSet {
            self.advance(project, Step::Done, None, caller).await?;
        }
        Ok(results)
    }

    /// The project as the API shows it; with `full`, secret presence from the broker.
    async fn to_pb(&self, p: &Row_, full: bool) -> Result<pb::Project, Status> {
        let mut presence = std::collections::HashMap::new();
        if full {
            let known: BTreeMap<String, i32> =
                if p.step >= pb::ProjectCreationStep::RepositoryRegistered {
                    self.broker()
                        .list_project_secrets(broker::ListProjectSecretsRequest {
                            project_id: p.id.clone(),
                            page_size: 100,
                            page_token: String::new(),
                        })
                        .await
                        .map_err(from_peer("secret broker"))?
                        .into_inner()
                        .secrets
                        .into_iter()
                        .map(|s| (s.name, s.presence))
                        .collect()
                } else {
                    BTreeMap::new()
                };
            for (key, target) in &p.secrets_ref.entries {
                let value = match &target.target {
                    Some(common::secret_target::Target::GithubSecret(g)) => known
                        .get(&g.name.to_ascii_uppercase())
                        .copied()
                        .unwrap_or(common::SecretPresence::Missing as i32),
                    _ => common::SecretPresence::Unknown as i32,
                };
                presence.insert(key.clone(), value);
            }
        }
        Ok(pb::Project {
            id: p.id.clone(),
            name: p.name.clone(),
            user_id: p.user_id.clone(),
            template: p.template as i32,
            description: p.description.clone(),
            visibility: p.visibility as i32,
            repository: Some(common::RepositoryRef {
                owner: p.owner.clone(),
                name: p.name.clone(),
                id: p.repository_id.unwrap_or_default(),
            }),
            secrets_ref: Some(p.secrets_ref.clone()),
            secret_presence: presence,
            state: p.state as i32,
            creation_step: p.step as i32,
            failure: p.failure.clone(),
            request_id: p.request_id.clone(),
            create_time: Some(ts(p.created_us)),
            update_time: Some(ts(p.updated_us)),
            ready_time: p.ready_us.map(ts),
        })
    }
}

/// Validates a CreateProject request completely before anything is recorded or created.
fn validate(req: &pb::CreateProjectRequest, org: &str) -> Result<(), Status> {
    let mut v = Violations::new();
    v.check(
        (1..=128).contains(&req.request_id.len())
            && req.request_id.bytes().all(|b| b.is_ascii_graphic()),
        "request_id",
        "required, 1-128 printable characters",
    );
    v.check(
        RepoRef::new(org, &req.name).is_ok(),
        "name",
        "a GitHub repository name: 1-100 characters of letters, digits, `.`, `-`, `_`",
    );
    v.check(
        (1..=128).contains(&req.user_id.len()) && req.user_id.bytes().all(|b| b.is_ascii_graphic()),
        "user_id",
        "1-128 printable ASCII characters without spaces",
    );
    v.check(
        matches!(
            pb::ProjectTemplate::try_from(req.template),
            Ok(pb::ProjectTemplate::DockerSsh | pb::ProjectTemplate::Ansible)
        ),
        "template",
        "DOCKER_SSH or ANSIBLE",
    );
    v.check(
        req.description.len() <= 300,
        "description",
        "at most 300 characters",
    );
    v.check(
        pb::RepositoryVisibility::try_from(req.visibility).is_ok(),
        "visibility",
        "a known visibility",
    );
    let mut github_names = HashSet::new();
    if let Some(sr) = &req.secrets_ref {
        for (key, target) in &sr.entries {
            let field = format!("secrets_ref.entries[{key}]");
            v.check(
                valid_abstract_key(key),
                &field,
                "keys are 1-64 characters of [a-z0-9_], starting with a letter",
            );
            match &target.target {
                Some(common::secret_target::Target::GithubSecret(g)) => {
                    match SecretName::new(&g.name) {
                        Ok(name) if name.as_str().starts_with("DEPLOY_") => v.add(
                            format!("{field}.github_secret.name"),
                            "DEPLOY_* names are reserved for the deploy credentials",
                        ),
                        Ok(name) => {
                            if !github_names.insert(name.as_str().to_owned()) {
                                v.add(
                                    format!("{field}.github_secret.name"),
                                    format!(
                                        "`{}` is targeted twice (names are case-insensitive)",
                                        g.name
                                    ),
                                );
                            }
                        }
                        Err(e) => v.add(format!("{field}.github_secret.name"), e.to_string()),
                    }
                }
                Some(common::secret_target::Target::VaultEntry(e)) => {
                    v.check(
                        !e.user_id.is_empty() && !e.key.is_empty(),
                        format!("{field}.vault_entry"),
                        "user_id and key are required",
                    );
                }
                None => v.add(&field, "a target is required"),
            }
        }
    }
    // The template must render for these names: refused here, before anything is created.
    if v.is_empty() {
        let secrets: Vec<orchestrator_templates::SecretVar> = github_targets(
            req.secrets_ref
                .as_ref()
                .unwrap_or(&common::SecretsRef::default()),
        )
        .into_iter()
        .map(|(env, secret)| orchestrator_templates::SecretVar { secret, env })
        .collect();
        let template = match pb::ProjectTemplate::try_from(req.template) {
            Ok(pb::ProjectTemplate::Ansible) => orchestrator_templates::Template::Ansible,
            _ => orchestrator_templates::Template::DockerSsh,
        };
        if let Err(e) = orchestrator_templates::render(
            template,
            &orchestrator_templates::ProjectVars {
                name: &req.name,
                secrets: &secrets,
            },
        ) {
            v.add("secrets_ref", e.to_string());
        }
    }
    let mut seen = HashSet::new();
    for (i, s) in req.initial_secrets.iter().enumerate() {
        let upper = s.name.to_ascii_uppercase();
        v.check(
            github_names.contains(&upper),
            format!("initial_secrets[{i}].name"),
            "must be a GitHub secret named in secrets_ref",
        );
        v.check(
            seen.insert(upper),
            format!("initial_secrets[{i}].name"),
            "given twice",
        );
        v.check(
            (1..=48 * 1024).contains(&s.value.len()),
            format!("initial_secrets[{i}].value"),
            "1-49,152 bytes",
        );
    }
    v.finish()
}

#[tonic::async_trait]
impl ScaffolderService for Scaffolder {
    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::CreateProjectResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let mut req = request.into_inner();
        validate(&req, &self.org)?;
        let initial = std::mem::take(&mut req.initial_secrets);
        let name_key = req.name.to_ascii_lowercase();
        let mut project = match self.find("request_id", &req.request_id).await? {
            Some(p) if p.name.to_ascii_lowercase() == name_key => p,
            Some(p) => {
                return Err(with_reason(
                    Code::FailedPrecondition,
                    "REQUEST_ID_REUSED",
                    format!("request_id was used for project {}", p.name),
                    &[("project_id", p.id)],
                ));
            }
            None => self.record_new(&req, &caller).await?,
        };
        let results = match self.drive(&mut project, initial, &caller).await {
            Ok(results) => results,
            Err(status) => {
                self.record_failure(&mut project, &status, &caller).await;
                return Err(status);
            }
        };
        let project = self.to_pb(&project, false).await?;
        Ok(Response::new(pb::CreateProjectResponse {
            project: Some(project),
            initial_secret_results: results,
        }))
    }

    async fn get_project(
        &self,
        request: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::GetProjectResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.check(
            (1..=64).contains(&req.project_id.len()),
            "project_id",
            "required",
        );
        v.finish()?;
        let p = self
            .find("id", &req.project_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no project `{}`", req.project_id)))?;
        let full = pb::ProjectView::try_from(req.view).unwrap_or(pb::ProjectView::Unspecified)
            != pb::ProjectView::Basic;
        Ok(Response::new(pb::GetProjectResponse {
            project: Some(self.to_pb(&p, full).await?),
        }))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.check(req.page_size >= 0, "page_size", "must not be negative");
        v.check(
            req.page_token.len() <= 64,
            "page_token",
            "not a token this service issued",
        );
        v.finish()?;
        let page = match req.page_size {
            0 => 50,
            n => i64::from(n).min(1000),
        };
        let state =
            match pb::ProjectState::try_from(req.state).unwrap_or(pb::ProjectState::Unspecified) {
                pb::ProjectState::Ready => "ready",
                pb::ProjectState::Creating => "creating",
                pb::ProjectState::Failed => "failed",
                pb::ProjectState::Unspecified => "",
            };
        let rows = sqlx::query(
            "SELECT id, request_id, name, user_id, template, description, visibility, owner, repository_id, secrets_ref, state, step, \
             failure_code, failure_reason, failure_message, created_us, updated_us, ready_us FROM projects \
             WHERE id > $1 AND ($2 = '' OR user_id = $2) AND ($3 = '' OR state = $3) ORDER BY id LIMIT $4",
        )
        .bind(&req.page_token)
        .bind(&req.user_id)
        .bind(state)
        .bind(page + 1)
        .fetch_all(self.db.pool())
        .await
        .map_err(store)?;
        let full = pb::ProjectView::try_from(req.view).unwrap_or(pb::ProjectView::Unspecified)
            == pb::ProjectView::Full;
        let mut projects = Vec::new();
        for row in rows.iter().take(page as usize) {
            projects.push(self.to_pb(&parse_row(row)?, full).await?);
        }
        let next_page_token = if rows.len() as i64 > page {
            projects.last().map(|p| p.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListProjectsResponse {
            projects,
            next_page_token,
        }))
    }
}

impl Scaffolder {
    async fn record_new(
        &self,
        req: &pb::CreateProjectRequest,
        caller: &str,
    ) -> Result<Row_, Status> {
        let id = format!("prj-{}", random_hex(8));
        let template =
            pb::ProjectTemplate::try_from(req.template).unwrap_or(pb::ProjectTemplate::DockerSsh);
        // Unset is PRIVATE (the contract's default, and what is stored and read back later).
        let visibility = match pb::RepositoryVisibility::try_from(req.visibility) {
            Ok(pb::RepositoryVisibility::Unspecified) | Err(_) => pb::RepositoryVisibility::Private,
            Ok(v) => v,
        };
        let secrets_ref = req.secrets_ref.clone().unwrap_or_default();
        let json = secrets_ref_to_json(&secrets_ref);
        let (id2, req2, caller, org) =
            (id.clone(), req.clone(), caller.to_owned(), self.org.clone());
        let now = self
            .ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    sqlx::query(
                        "INSERT INTO projects (id, request_id, name, name_key, user_id, template, description, visibility, owner, secrets_ref, state, step, created_us, updated_us) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'creating', 'recorded', $11, $11)",
                    )
                    .bind(&id2)
                    .bind(&req2.request_id)
                    .bind(&req2.name)
                    .bind(req2.name.to_ascii_lowercase())
                    .bind(&req2.user_id)
                    .bind(template_name(template))
                    .bind(&req2.description)
                    .bind(visibility_name(visibility))
                    .bind(&org)
                    .bind(&json)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| match StoreError::from(e) {
                        StoreError::Conflict(_) => with_reason(Code::AlreadyExists, "PROJECT_NAME_TAKEN", format!("a project named `{}` exists", req2.name), &[]),
                        other => other.into(),
                    })?;
                    let entry = Entry::new(&caller, CREATE, format!("projects/{id2}"))
                        .request_id(&req2.request_id)
                        .detail(format!("recorded name={} template={}", req2.name, template_name(template)));
                    Ok::<_, Status>((now, vec![entry]))
                })
            })
            .await?;
        Ok(Row_ {
            id,
            request_id: req.request_id.clone(),
            name: req.name.clone(),
            user_id: req.user_id.clone(),
            template,
            description: req.description.clone(),
            visibility,
            owner: self.org.clone(),
            repository_id: None,
            secrets_ref,
            state: pb::ProjectState::Creating,
            step: pb::ProjectCreationStep::Recorded,
            failure: None,
            created_us: now,
            updated_us: now,
            ready_us: None,
        })
    }
}
