//! The gRPC surface of the secret broker.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use orchestrator_audit::{Entry, Ledger};
use orchestrator_github::{GitHub, GitHubError, PutOutcome, RepoRef, SecretName};
use orchestrator_mesh::caller;
use orchestrator_mesh::status::{Violations, with_reason};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1::{
    self as pb, secret_broker_service_server::SecretBrokerService,
};
use orchestrator_proto::timestamp as ts_us;
use orchestrator_store::{Database, StoreError};
use secrecy::ExposeSecret;
use sqlx::Row;
use tonic::{Code, Request, Response, Status};
use zeroize::Zeroizing;

use crate::now_us;
use crate::pacing::Pacer;

const SERVICE: &str = "/orchestrator.secretbroker.v1.SecretBrokerService/";
/// GitHub's limit on one secret value.
const MAX_VALUE: usize = 48 * 1024;
/// GitHub's limit on secrets per repository.
const MAX_SECRETS: usize = 100;
/// The names only infra may write (SetDeployCredentials).
const DEPLOY_PREFIX: &str = "DEPLOY_";

#[derive(Debug)]
pub struct Broker {
    pub db: Database,
    pub ledger: Ledger,
    pub github: Arc<GitHub>,
    pub pacer: Arc<Pacer>,
    /// The organization where the scaffolder creates repositories (`GITHUB_ORG`).
    pub org: Option<String>,
}

fn store(e: sqlx::Error) -> Status {
    StoreError::from(e).into()
}

fn method(name: &str) -> String {
    format!("{SERVICE}{name}")
}

fn ts_rfc3339(s: &str) -> Option<prost_types::Timestamp> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

fn valid_project_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn check_project_id(v: &mut Violations, id: &str) {
    v.check(
        valid_project_id(id),
        "project_id",
        "1-128 characters of [A-Za-z0-9_-]",
    );
}

fn check_request_id(v: &mut Violations, id: &str) {
    v.check(
        valid_request_id(id),
        "request_id",
        "required, 1-128 printable characters",
    );
}

fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

fn github_status(e: &GitHubError) -> Status {
    e.to_grpc()
}

fn failure(status: &Status) -> common::Failure {
    common::Failure {
        code: status.code() as i32,
        reason: String::new(),
        message: status.message().to_owned(),
        metadata: Default::default(),
    }
}

/// A registered project repository.
#[derive(Debug, Clone)]
struct Registered {
    repo: RepoRef,
    installation: i64,
    created_us: i64,
}

impl Broker {
    /// A token for the project repository's Actions secrets (narrowed to that repository and
    /// `secrets: write`; cached by the client until shortly before it expires).
    async fn secrets_token(
        &self,
        reg: &Registered,
    ) -> Result<Arc<orchestrator_github::InstallationToken>, Status> {
        let (token, _) = self
            .github
            .token(
                reg.installation as u64,
                &[reg.repo.name()],
                &[("secrets", "write")],
            )
            .await
            .map_err(|e| github_status(&e))?;
        Ok(token)
    }

    async fn registered(&self, project_id: &str) -> Result<Registered, Status> {
        let row = sqlx::query("SELECT owner, name, installation_id, created_us FROM repositories WHERE project_id = $1")
            .bind(project_id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store)?
            .ok_or_else(|| Status::not_found(format!("project `{project_id}` has no registered repository")))?;
        let owner: String = row.try_get("owner").map_err(store)?;
        let name: String = row.try_get("name").map_err(store)?;
        Ok(Registered {
            repo: RepoRef::new(&owner, &name).map_err(|e| Status::internal(e.to_string()))?,
            installation: row.try_get("installation_id").map_err(store)?,
            created_us: row.try_get("created_us").map_err(store)?,
        })
    }

    /// Pushes validated secrets to the project's repository one by one (paced), recording each
    /// as `present` only after GitHub accepted it. Values are dropped (zeroized) as they go.
    async fn push(
        &self,
        caller: &str,
        method: &str,
        request_id: &str,
        project_id: &str,
        secrets: Vec<(SecretName, Zeroizing<Vec<u8>>)>,
        deploy: bool,
    ) -> Result<Vec<common::SecretWriteResult>, Status> {
        let reg = self.registered(project_id).await?;
        let token = self.secrets_token(&reg).await?;
        // GitHub allows 100 secrets per repository, counting the ones already there.
        let existing = self
            .github
            .list_secrets(&token.token, &reg.repo)
            .await
            .map_err(|e| github_status(&e))?;
        let mut names: HashSet<String> = existing
            .iter()
            .map(|s| s.name.to_ascii_uppercase())
            .collect();
        names.extend(secrets.iter().map(|(n, _)| n.as_str().to_owned()));
        if names.len() > MAX_SECRETS {
            return Err(with_reason(
                Code::FailedPrecondition,
                "TOO_MANY_SECRETS",
                format!(
                    "the repository would hold {} secrets; GitHub allows {MAX_SECRETS}",
                    names.len()
                ),
                &[("existing", existing.len().to_string())],
            ));
        }
        let mut key = self
            .github
            .public_key(&token.token, &reg.repo)
            .await
            .map_err(|e| github_status(&e))?;
        let mut results = Vec::with_capacity(secrets.len());
        for (name, value) in secrets {
            if let Some(done) = self.recorded(request_id, project_id, &name).await? {
                results.push(done);
                continue;
            }
            self.mark_pending(caller, method, project_id, &name, deploy)
                .await?;
            let mut attempt = 0;
            let outcome = loop {
                let sealed = orchestrator_github::seal(&key, &value);
                let put = self
                    .pacer
                    .paced(reg.installation, || {
                        self.github
                            .put_secret(&token.token, &reg.repo, &name, &sealed, &key.key_id)
                    })
                    .await?;
                match put {
                    // A stale key: fetch it again, once.
                    Err(GitHubError::Status { status: 422, .. }) if attempt == 0 => {
                        attempt += 1;
                        key = self
                            .github
                            .public_key(&token.token, &reg.repo)
                            .await
                            .map_err(|e| github_status(&e))?;
                    }
                    other => break other,
                }
            };
            drop(value);
            let result = match outcome {
                Ok(put) => {
                    let meta = self
                        .github
                        .get_secret(&token.token, &reg.repo, &name)
                        .await
                        .ok()
                        .flatten();
                    self.record_present(
                        caller,
                        method,
                        request_id,
                        project_id,
                        &name,
                        put,
                        &key.key_id,
                        meta.map(|m| m.updated_at),
                    )
                    .await?
                }
                Err(e) => {
                    let status = github_status(&e);
                    self.record_failed(caller, method, project_id, &name, &status)
                        .await?;
                    common::SecretWriteResult {
                        name: name.to_string(),
                        outcome: common::SecretWriteOutcome::Failed as i32,
                        error: Some(failure(&status)),
                        ..Default::default()
                    }
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn recorded(
        &self,
        request_id: &str,
        project_id: &str,
        name: &SecretName,
    ) -> Result<Option<common::SecretWriteResult>, Status> {
        // Per project: two projects may well pick the same request id.
        let row = sqlx::query("SELECT outcome, key_id, github_updated_at, recorded_us FROM write_requests WHERE request_id = $1 AND project_id = $2 AND name = $3")
            .bind(request_id)
            .bind(project_id)
            .bind(name.as_str())
            .fetch_optional(self.db.pool())
            .await
            .map_err(store)?;
        let Some(row) = row else { return Ok(None) };
        let outcome = match row.try_get::<String, _>("outcome").map_err(store)?.as_str() {
            "created" => common::SecretWriteOutcome::Created,
            _ => common::SecretWriteOutcome::Updated,
        };
        Ok(Some(common::SecretWriteResult {
            name: name.to_string(),
            outcome: outcome as i32,
            error: None,
            github_update_time: row
                .try_get::<Option<String>, _>("github_updated_at")
                .map_err(store)?
                .as_deref()
                .and_then(ts_rfc3339),
            key_id: row.try_get("key_id").map_err(store)?,
            record_time: Some(ts_us(row.try_get("recorded_us").map_err(store)?)),
        }))
    }

    async fn mark_pending(
        &self,
        caller: &str,
        method: &str,
        project_id: &str,
        name: &SecretName,
        deploy: bool,
    ) -> Result<(), Status> {
        let (caller, method, project_id, name) = (
            caller.to_owned(),
            method.to_owned(),
            project_id.to_owned(),
            name.clone(),
        );
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    // An existing reference stays `present` (GitHub still holds the old value) until replaced.
                    sqlx::query(
                        "INSERT INTO secret_refs (project_id, name, state, recorded_us, written_by, deploy) VALUES ($1, $2, 'pending', $3, $4, $5) \
                         ON CONFLICT (project_id, name) DO UPDATE SET written_by = $4",
                    )
                    .bind(&project_id)
                    .bind(name.as_str())
                    .bind(now)
                    .bind(&caller)
                    .bind(i64::from(deploy))
                    .execute(&mut *conn)
                    .await
                    .map_err(store)?;
                    let entry = Entry::new(&caller, &method, format!("projects/{project_id}/secrets/{name}")).detail("pending");
                    Ok(((), vec![entry]))
                })
            })
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_present(
        &self,
        caller: &str,
        method: &str,
        request_id: &str,
        project_id: &str,
        name: &SecretName,
        put: PutOutcome,
        key_id: &str,
        github_updated_at: Option<String>,
    ) -> Result<common::SecretWriteResult, Status> {
        let (caller, method, request_id, project_id, name, key_id) = (
            caller.to_owned(),
            method.to_owned(),
            request_id.to_owned(),
            project_id.to_owned(),
            name.clone(),
            key_id.to_owned(),
        );
        let outcome = match put {
            PutOutcome::Created => "created",
            PutOutcome::Updated => "updated",
        };
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    sqlx::query(
                        "UPDATE secret_refs SET state = 'present', github_updated_at = $3, key_id = $4, recorded_us = $5, last_error = NULL \
                         WHERE project_id = $1 AND name = $2",
                    )
                    .bind(&project_id)
                    .bind(name.as_str())
                    .bind(github_updated_at.as_deref())
                    .bind(&key_id)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(store)?;
                    sqlx::query(
                        "INSERT INTO write_requests (request_id, project_id, name, outcome, key_id, github_updated_at, recorded_us) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    )
                    .bind(&request_id)
                    .bind(&project_id)
                    .bind(name.as_str())
                    .bind(outcome)
                    .bind(&key_id)
                    .bind(github_updated_at.as_deref())
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(store)?;
                    let entry = Entry::new(&caller, &method, format!("projects/{project_id}/secrets/{name}"))
                        .request_id(&request_id)
                        .detail(format!("{outcome} key_id={key_id}"));
                    let result = common::SecretWriteResult {
                        name: name.to_string(),
                        outcome: if outcome == "created" { common::SecretWriteOutcome::Created } else { common::SecretWriteOutcome::Updated } as i32,
                        error: None,
                        github_update_time: github_updated_at.as_deref().and_then(ts_rfc3339),
                        key_id,
                        record_time: Some(ts_us(now)),
                    };
                    Ok((result, vec![entry]))
                })
            })
            .await
    }

    async fn record_failed(
        &self,
        caller: &str,
        method: &str,
        project_id: &str,
        name: &SecretName,
        status: &Status,
    ) -> Result<(), Status> {
        let (caller, method, project_id, name) = (
            caller.to_owned(),
            method.to_owned(),
            project_id.to_owned(),
            name.clone(),
        );
        let (code, message) = (format!("{:?}", status.code()), status.message().to_owned());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE secret_refs SET state = CASE WHEN state = 'present' THEN 'present' ELSE 'failed' END, last_error = $3 \
                         WHERE project_id = $1 AND name = $2",
                    )
                    .bind(&project_id)
                    .bind(name.as_str())
                    .bind(&message)
                    .execute(&mut *conn)
                    .await
                    .map_err(store)?;
                    let mut entry = Entry::new(&caller, &method, format!("projects/{project_id}/secrets/{name}")).detail("failed");
                    entry.outcome = code;
                    Ok(((), vec![entry]))
                })
            })
            .await
    }
}

/// Validates names and values of a batch before any GitHub call: every violation at once.
fn validate_batch(
    v: &mut Violations,
    values: Vec<common::ProjectSecretValue>,
    allow_deploy: bool,
) -> Vec<(SecretName, Zeroizing<Vec<u8>>)> {
    v.check(
        (1..=MAX_SECRETS).contains(&values.len()),
        "secrets",
        "1-100 secrets",
    );
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(values.len());
    for (i, mut s) in values.into_iter().enumerate() {
        let value = Zeroizing::new(std::mem::take(&mut s.value));
        v.check(
            (1..=MAX_VALUE).contains(&value.len()),
            format!("secrets[{i}].value"),
            "1-49,152 bytes (GitHub's limit)",
        );
        match SecretName::new(&s.name) {
            Ok(name) => {
                if !seen.insert(name.clone()) {
                    v.add(
                        format!("secrets[{i}].name"),
                        format!("`{}` appears twice (names are case-insensitive)", s.name),
                    );
                } else if !allow_deploy && name.as_str().starts_with(DEPLOY_PREFIX) {
                    v.add(
                        format!("secrets[{i}].name"),
                        "DEPLOY_* names are reserved for the deploy credentials",
                    );
                } else {
                    out.push((name, value));
                }
            }
            Err(e) => v.add(format!("secrets[{i}].name"), e.to_string()),
        }
    }
    out
}

#[tonic::async_trait]
impl SecretBrokerService for Broker {
    async fn register_repository(
        &self,
        request: Request<pb::RegisterRepositoryRequest>,
    ) -> Result<Response<pb::RegisterRepositoryResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        check_request_id(&mut v, &req.request_id);
        check_project_id(&mut v, &req.project_id);
        let repo = match &req.repository {
            Some(r) => RepoRef::new(&r.owner, &r.name)
                .map_err(|e| v.add("repository", e.to_string()))
                .ok(),
            None => {
                v.add("repository", "required");
                None
            }
        };
        v.finish()?;
        let repo = repo.ok_or_else(|| Status::invalid_argument("repository"))?;
        // Not registered yet is NOT_FOUND; any other error (the database down) is the answer.
        let existing = match self.registered(&req.project_id).await {
            Ok(existing) => Some(existing),
            Err(e) if e.code() == Code::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(existing) = existing {
            if existing.repo != repo {
                return Err(with_reason(
                    Code::AlreadyExists,
                    "PROJECT_REGISTERED",
                    format!(
                        "project `{}` is registered to {}",
                        req.project_id, existing.repo
                    ),
                    &[("repository", existing.repo.to_string())],
                ));
            }
            return Ok(Response::new(pb::RegisterRepositoryResponse {
                registration: Some(registration(&req.project_id, &existing)),
            }));
        }
        let installation = self
            .github
            .installation_for_repo(&repo)
            .await
            .map_err(|e| github_status(&e))?;
        let (project_id, repo2) = (req.project_id.clone(), repo.clone());
        let method = method("RegisterRepository");
        let created_us = self
            .ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    sqlx::query("INSERT INTO repositories (project_id, owner, name, installation_id, created_us) VALUES ($1, $2, $3, $4, $5)")
                        .bind(&project_id)
                        .bind(repo2.owner())
                        .bind(repo2.name())
                        .bind(installation as i64)
                        .bind(now)
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| match StoreError::from(e) {
                            StoreError::Conflict(_) => with_reason(Code::AlreadyExists, "REPOSITORY_REGISTERED", "the repository or project is already registered", &[]),
                            other => other.into(),
                        })?;
                    let entry = Entry::new(&caller, &method, format!("projects/{project_id}"))
                        .request_id(&req.request_id)
                        .detail(format!("repository={repo2} installation={installation}"));
                    Ok::<_, Status>((now, vec![entry]))
                })
            })
            .await?;
        let reg = Registered {
            repo,
            installation: installation as i64,
            created_us,
        };
        Ok(Response::new(pb::RegisterRepositoryResponse {
            registration: Some(registration(&req.project_id, &reg)),
        }))
    }

    async fn set_project_secrets(
        &self,
        request: Request<pb::SetProjectSecretsRequest>,
    ) -> Result<Response<pb::SetProjectSecretsResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        check_request_id(&mut v, &req.request_id);
        check_project_id(&mut v, &req.project_id);
        let secrets = validate_batch(&mut v, req.secrets, false);
        v.finish()?;
        let results = self
            .push(
                &caller,
                &method("SetProjectSecrets"),
                &req.request_id,
                &req.project_id,
                secrets,
                false,
            )
            .await?;
        Ok(Response::new(pb::SetProjectSecretsResponse { results }))
    }

    async fn set_deploy_credentials(
        &self,
        request: Request<pb::SetDeployCredentialsRequest>,
    ) -> Result<Response<pb::SetDeployCredentialsResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        check_request_id(&mut v, &req.request_id);
        check_project_id(&mut v, &req.project_id);
        let creds = req.credentials.unwrap_or_default();
        // Any non-empty subset: the key is handed over as soon as infra generates it.
        let values: Vec<common::ProjectSecretValue> = [
            ("DEPLOY_HOST", creds.host.into_bytes()),
            ("DEPLOY_USER", creds.user.into_bytes()),
            ("DEPLOY_SSH_KEY", creds.ssh_private_key),
            ("DEPLOY_KNOWN_HOSTS", creds.known_hosts.into_bytes()),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| common::ProjectSecretValue {
            name: name.into(),
            value,
        })
        .collect();
        v.check(
            !values.is_empty(),
            "credentials",
            "at least one of host, user, ssh_private_key, known_hosts",
        );
        let secrets = if values.is_empty() {
            Vec::new()
        } else {
            validate_batch(&mut v, values, true)
        };
        v.finish()?;
        let results = self
            .push(
                &caller,
                &method("SetDeployCredentials"),
                &req.request_id,
                &req.project_id,
                secrets,
                true,
            )
            .await?;
        Ok(Response::new(pb::SetDeployCredentialsResponse { results }))
    }

    async fn list_project_secrets(
        &self,
        request: Request<pb::ListProjectSecretsRequest>,
    ) -> Result<Response<pb::ListProjectSecretsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        check_project_id(&mut v, &req.project_id);
        v.check(req.page_size >= 0, "page_size", "must not be negative");
        v.check(
            req.page_token.is_empty() || SecretName::new(&req.page_token).is_ok(),
            "page_token",
            "not a token this service issued",
        );
        v.finish()?;
        self.registered(&req.project_id).await?;
        let page = match req.page_size {
            0 => 100,
            n => i64::from(n).min(100),
        };
        let rows = sqlx::query(
            "SELECT name, state, github_updated_at, key_id, recorded_us, written_by, deploy, last_error FROM secret_refs \
             WHERE project_id = $1 AND name > $2 ORDER BY name LIMIT $3",
        )
        .bind(&req.project_id)
        .bind(&req.page_token)
        .bind(page + 1)
        .fetch_all(self.db.pool())
        .await
        .map_err(store)?;
        let mut secrets = Vec::new();
        for row in rows.iter().take(page as usize) {
            let presence = match row.try_get::<String, _>("state").map_err(store)?.as_str() {
                "present" => common::SecretPresence::Present,
                "pending" => common::SecretPresence::Pending,
                _ => common::SecretPresence::Failed,
            };
            let last_error: Option<String> = row.try_get("last_error").map_err(store)?;
            secrets.push(pb::ProjectSecretReference {
                name: row.try_get("name").map_err(store)?,
                presence: presence as i32,
                github_update_time: row
                    .try_get::<Option<String>, _>("github_updated_at")
                    .map_err(store)?
                    .as_deref()
                    .and_then(ts_rfc3339),
                key_id: row
                    .try_get::<Option<String>, _>("key_id")
                    .map_err(store)?
                    .unwrap_or_default(),
                record_time: Some(ts_us(row.try_get("recorded_us").map_err(store)?)),
                written_by: row.try_get("written_by").map_err(store)?,
                deploy_credential: row.try_get::<i64, _>("deploy").map_err(store)? != 0,
                last_error: last_error.map(|m| common::Failure {
                    message: m,
                    ..Default::default()
                }),
            });
        }
        let next_page_token = if rows.len() as i64 > page {
            secrets.last().map(|s| s.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListProjectSecretsResponse {
            secrets,
            next_page_token,
        }))
    }

    async fn delete_project_secret(
        &self,
        request: Request<pb::DeleteProjectSecretRequest>,
    ) -> Result<Response<pb::DeleteProjectSecretResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        check_project_id(&mut v, &req.project_id);
        let name = SecretName::new(&req.name)
            .map_err(|e| v.add("name", e.to_string()))
            .ok();
        v.finish()?;
        let name = name.ok_or_else(|| Status::invalid_argument("name"))?;
        let reg = self.registered(&req.project_id).await?;
        // Only what this broker wrote for this project: never a secret someone else created.
        let row = sqlx::query("SELECT deploy FROM secret_refs WHERE project_id = $1 AND name = $2")
            .bind(&req.project_id)
            .bind(name.as_str())
            .fetch_optional(self.db.pool())
            .await
            .map_err(store)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "the broker wrote no secret `{name}` for project `{}`",
                    req.project_id
                ))
            })?;
        if row.try_get::<i64, _>("deploy").map_err(store)? != 0 {
            return Err(with_reason(
                Code::FailedPrecondition,
                "DEPLOY_CREDENTIAL",
                "deploy credentials are managed by infra",
                &[],
            ));
        }
        let token = self.secrets_token(&reg).await?;
        let deleted = self
            .pacer
            .paced(reg.installation, || {
                self.github.delete_secret(&token.token, &reg.repo, &name)
            })
            .await?
            .map_err(|e| github_status(&e))?;
        let (project_id, method) = (req.project_id.clone(), method("DeleteProjectSecret"));
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query("DELETE FROM secret_refs WHERE project_id = $1 AND name = $2")
                        .bind(&project_id)
                        .bind(name.as_str())
                        .execute(&mut *conn)
                        .await
                        .map_err(store)?;
                    let entry = Entry::new(
                        &caller,
                        &method,
                        format!("projects/{project_id}/secrets/{name}"),
                    )
                    .detail(if deleted {
                        "deleted at GitHub"
                    } else {
                        "already gone at GitHub"
                    });
                    Ok::<_, Status>(((), vec![entry]))
                })
            })
            .await?;
        Ok(Response::new(pb::DeleteProjectSecretResponse {
            deleted_at_github: deleted,
        }))
    }

    async fn reconcile_project_secrets(
        &self,
        request: Request<pb::ReconcileProjectSecretsRequest>,
    ) -> Result<Response<pb::ReconcileProjectSecretsResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        check_project_id(&mut v, &req.project_id);
        v.finish()?;
        let reg = self.registered(&req.project_id).await?;
        let token = self.secrets_token(&reg).await?;
        let at_github: BTreeMap<String, String> = self
            .github
            .list_secrets(&token.token, &reg.repo)
            .await
            .map_err(|e| github_status(&e))?
            .into_iter()
            .map(|s| (s.name.to_ascii_uppercase(), s.updated_at))
            .collect();
        let rows = sqlx::query("SELECT name, state, github_updated_at FROM secret_refs WHERE project_id = $1 ORDER BY name")
            .bind(&req.project_id)
            .fetch_all(self.db.pool())
            .await
            .map_err(store)?;
        let mut findings = Vec::new();
        let mut in_sync = 0;
        let mut recovered = Vec::new();
        let mut ours = HashSet::new();
        for row in &rows {
            let name: String = row.try_get("name").map_err(store)?;
            let state: String = row.try_get("state").map_err(store)?;
            let recorded: Option<String> = row.try_get("github_updated_at").map_err(store)?;
            ours.insert(name.clone());
            let finding = |kind: pb::ReconcileFindingKind,
                           github: Option<&String>,
                           repaired: bool| pb::ReconcileFinding {
                name: name.clone(),
                kind: kind as i32,
                recorded_github_update_time: recorded.as_deref().and_then(ts_rfc3339),
                github_update_time: github.and_then(|g| ts_rfc3339(g)),
                repaired,
            };
            match (state.as_str(), at_github.get(&name)) {
                // A crash between GitHub accepting the PUT and our record: GitHub has it.
                ("pending", Some(updated)) => {
                    findings.push(finding(
                        pb::ReconcileFindingKind::Recovered,
                        Some(updated),
                        !req.dry_run,
                    ));
                    recovered.push((name.clone(), updated.clone()));
                }
                (_, None) => findings.push(finding(pb::ReconcileFindingKind::Missing, None, false)),
                ("present", Some(updated)) if recorded.as_deref() != Some(updated.as_str()) => {
                    findings.push(finding(
                        pb::ReconcileFindingKind::Drifted,
                        Some(updated),
                        false,
                    ));
                }
                _ => in_sync += 1,
            }
        }
        for (name, updated) in &at_github {
            if !ours.contains(name) {
                // Someone else's secret: reported, never touched.
                findings.push(pb::ReconcileFinding {
                    name: name.clone(),
                    kind: pb::ReconcileFindingKind::Unexpected as i32,
                    github_update_time: ts_rfc3339(updated),
                    ..Default::default()
                });
            }
        }
        if !req.dry_run && !recovered.is_empty() {
            let (project_id, method) = (req.project_id.clone(), method("ReconcileProjectSecrets"));
            self.ledger
                .write(move |conn| {
                    Box::pin(async move {
                        let mut entries = Vec::new();
                        for (name, updated) in recovered {
                            sqlx::query(
                                "UPDATE secret_refs SET state = 'present', github_updated_at = $3, recorded_us = $4, last_error = NULL \
                                 WHERE project_id = $1 AND name = $2 AND state = 'pending'",
                            )
                            .bind(&project_id)
                            .bind(&name)
                            .bind(&updated)
                            .bind(now_us())
                            .execute(&mut *conn)
                            .await
                            .map_err(store)?;
                            entries.push(Entry::new(&caller, &method, format!("projects/{project_id}/secrets/{name}")).detail("recovered: present at GitHub"));
                        }
                        Ok::<_, Status>(((), entries))
                    })
                })
                .await?;
        }
        Ok(Response::new(pb::ReconcileProjectSecretsResponse {
            findings,
            in_sync_count: in_sync,
            reconcile_time: Some(ts_us(now_us())),
        }))
    }

    async fn mint_repository_token(
        &self,
        request: Request<pb::MintRepositoryTokenRequest>,
    ) -> Result<Response<pb::MintRepositoryTokenResponse>, Status> {
        let caller_id = caller(&request)?.clone();
        let req = request.into_inner();
        let scope = pb::RepositoryTokenScope::try_from(req.scope)
            .unwrap_or(pb::RepositoryTokenScope::Unspecified);
        // The scope each caller may ask for: the policy file says who may call, this says what for.
        let allowed = matches!(
            (caller_id.name().as_str(), scope),
            ("scaffolder", pb::RepositoryTokenScope::RepositoryCreation)
                | ("infra", pb::RepositoryTokenScope::Clone)
        );
        let mut v = Violations::new();
        v.check(
            scope != pb::RepositoryTokenScope::Unspecified,
            "scope",
            "required",
        );
        v.check(
            req.project_id.is_empty() || valid_project_id(&req.project_id),
            "project_id",
            "1-128 characters of [A-Za-z0-9_-]",
        );
        v.check(
            scope != pb::RepositoryTokenScope::Clone || !req.project_id.is_empty(),
            "project_id",
            "required for CLONE",
        );
        v.finish()?;
        if !allowed {
            return Err(with_reason(
                Code::PermissionDenied,
                "SCOPE_NOT_ALLOWED",
                format!("{caller_id} may not mint a {scope:?} token"),
                &[
                    ("caller", caller_id.to_string()),
                    ("scope", format!("{scope:?}")),
                ],
            ));
        }
        // The owner the token's repositories belong to, from the same lookup as the token's scope.
        let (installation, owner, repos, permissions): (u64, String, Vec<String>, &[(&str, &str)]) =
            match scope {
                pb::RepositoryTokenScope::Clone => {
                    let reg = self.registered(&req.project_id).await?;
                    (
                        reg.installation as u64,
                        reg.repo.owner().to_owned(),
                        vec![reg.repo.name().to_owned()],
                        &[("contents", "read")],
                    )
                }
                _ => {
                    let org = self.org.clone().ok_or_else(|| {
                        with_reason(
                            Code::FailedPrecondition,
                            "NO_ORGANIZATION",
                            "GITHUB_ORG is not configured on the broker",
                            &[],
                        )
                    })?;
                    let installation = self
                        .github
                        .installation_for_org(&org)
                        .await
                        .map_err(|e| github_status(&e))?;
                    (
                        installation,
                        org,
                        Vec::new(),
                        &[
                            ("administration", "write"),
                            ("contents", "write"),
                            ("workflows", "write"),
                        ],
                    )
                }
            };
        let repo_names: Vec<&str> = repos.iter().map(String::as_str).collect();
        let token = self
            .github
            .mint_uncached(installation, &repo_names, permissions)
            .await
            .map_err(|e| github_status(&e))?;
        let (caller, method, project_id) = (
            caller_id.to_string(),
            method("MintRepositoryToken"),
            req.project_id.clone(),
        );
        let expires_at = token.expires_at;
        let detail = format!(
            "scope={scope:?} expires_at={expires_at} repositories={}",
            token.repositories.join(",")
        );
        self.ledger
            .write(move |_conn| {
                Box::pin(async move {
                    // Audited: who, what for, until when. Never the token.
                    Ok::<_, Status>((
                        (),
                        vec![
                            Entry::new(&caller, &method, format!("projects/{project_id}/tokens"))
                                .detail(detail),
                        ],
                    ))
                })
            })
            .await?;
        Ok(Response::new(pb::MintRepositoryTokenResponse {
            token: token.token.expose_secret().to_owned(),
            expire_time: Some(prost_types::Timestamp {
                seconds: expires_at,
                nanos: 0,
            }),
            scope: scope as i32,
            permissions: token
                .permissions
                .iter()
                .map(|(p, a)| pb::TokenPermission {
                    permission: p.clone(),
                    access: match a.as_str() {
                        "read" => pb::PermissionAccess::Read,
                        "write" => pb::PermissionAccess::Write,
                        "admin" => pb::PermissionAccess::Admin,
                        _ => pb::PermissionAccess::Unspecified,
                    } as i32,
                })
                .collect(),
            repositories: token
                .repositories
                .iter()
                .map(|n| common::RepositoryRef {
                    owner: owner.clone(),
                    name: n.clone(),
                    id: 0,
                })
                .collect(),
        }))
    }
}

fn registration(project_id: &str, reg: &Registered) -> pb::ProjectRepository {
    pb::ProjectRepository {
        project_id: project_id.to_owned(),
        repository: Some(common::RepositoryRef {
            owner: reg.repo.owner().to_owned(),
            name: reg.repo.name().to_owned(),
            id: 0,
        }),
        installation_id: reg.installation,
        create_time: Some(ts_us(reg.created_us)),
    }
}
