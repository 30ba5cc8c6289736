//! SetProjectSecrets and SetDeployCredentials: validated secrets, sealed for the repository,
//! PUT one by one (paced), each recorded.
//!
//! A batch goes to one location (the repository's Actions secrets, an environment's, the
//! repository's Dependabot secrets or the organization's) and uses one token, narrowed to what
//! that location needs, and one public key, the location's own. Each secret is recorded `pending` before its
//! PUT and `present` (with GitHub's `updated_at`) only after GitHub accepted it; a final error
//! is recorded with its reason. A retry of a request (same request id, same project) answers
//! what the first attempt recorded instead of writing again.

use std::collections::HashSet;

use orchestrator_audit::Entry;
use orchestrator_fields::{ProjectId, RequestId};
use orchestrator_github::{
    GitHubError, InstallationToken, OrgVisibility, PublicKey, PutOutcome, SecretName, SecretsAt,
};
use orchestrator_mesh::status::with_reason;
use orchestrator_proto::common::v1 as common;
use orchestrator_store::now_us;
use tonic::{Code, Status};

use crate::audit::Action;
use crate::db::{self, WriteRecord};
use crate::location::{Location, Visibility};
use crate::messages;
use crate::registry::Registered;
use crate::state::Broker;
use crate::validate::{Secret, SecretsRequest, is_deploy_credential};

/// Who writes into which project, under which request id: what the records of a push name.
/// Small, so each record's closure takes its own copy.
#[derive(Debug, Clone)]
struct Writer {
    caller: String,
    action: Action,
    request_id: RequestId,
    project_id: ProjectId,
    /// The stored key of the location written to.
    location: String,
}

impl Writer {
    fn entry(&self, name: &SecretName) -> Entry {
        self.action.on_secret(
            &self.caller,
            &self.project_id,
            crate::location::audited(&self.location, name),
        )
    }
}

/// Where one batch goes: GitHub's path, the token for it, and an organization secret's
/// visibility.
struct Target<'a> {
    reg: &'a Registered,
    at: SecretsAt,
    token: std::sync::Arc<InstallationToken>,
    visibility: Option<OrgVisibility>,
}

impl Broker {
    /// Pushes validated secrets to the project's repository, one by one (paced). Values are
    /// dropped (zeroized) as they go.
    pub(crate) async fn push(
        &self,
        caller: String,
        action: Action,
        req: SecretsRequest,
    ) -> Result<Vec<common::SecretWriteResult>, Status> {
        let writer = Writer {
            caller,
            action,
            request_id: req.request_id,
            project_id: req.project_id,
            location: req.location.key(),
        };
        let reg = self.registered(&writer.project_id).await?;
        let visibility = match &req.visibility {
            Some(v) => Some(self.org_visibility(&reg, v).await?),
            None => None,
        };
        let target = Target {
            reg: &reg,
            at: req.location.at(&reg.repo),
            token: self.secrets_token(&reg, &req.location).await?,
            visibility,
        };
        // The key first: an environment that does not exist yet is created on the way, and
        // only then can its secrets be listed.
        let mut key = self
            .location_key(&target, &req.location, &writer.caller)
            .await?;
        self.check_room(&target, &writer, &req.location, &req.secrets)
            .await?;
        let mut results = Vec::with_capacity(req.secrets.len());
        for Secret { name, value } in req.secrets {
            let recorded = db::find_write(
                self.db.pool(),
                &writer.request_id,
                &writer.project_id,
                &writer.location,
                &name,
            )
            .await?;
            if let Some(done) = recorded {
                results.push(messages::written(&name, &done));
                continue;
            }
            self.mark_pending(&writer, &name).await?;
            let outcome = self.put(&target, &mut key, &name, &value).await?;
            drop(value);
            let result = match outcome {
                Ok(put) => {
                    // GitHub's time for the record; missing it does not undo the write.
                    let updated_at = self
                        .github
                        .get_secret_at(&target.token.token, &target.at, &name)
                        .await
                        .ok()
                        .flatten()
                        .map(|meta| meta.updated_at);
                    let write = self
                        .record_present(&writer, &name, put, &key.key_id, updated_at)
                        .await?;
                    messages::written(&name, &write)
                }
                Err(e) => {
                    let status = e.to_grpc();
                    self.record_failed(&writer, &name, &status).await?;
                    messages::failed(&name, &status)
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    /// The location's public key. A deployment environment GitHub does not have (404) is
    /// created first, with a token that can do that and nothing else, and audited.
    async fn location_key(
        &self,
        target: &Target<'_>,
        location: &Location,
        caller: &str,
    ) -> Result<PublicKey, Status> {
        let first = self
            .github
            .public_key_at(&target.token.token, &target.at)
            .await;
        let Location::Environment(env) = location else {
            return first.map_err(|e| e.to_grpc());
        };
        match first {
            Err(GitHubError::Status { status: 404, .. }) => {}
            other => return other.map_err(|e| e.to_grpc()),
        }
        let reg = target.reg;
        let admin = self.environment_token(reg).await?;
        self.pacer
            .paced(reg.installation, || {
                self.github.create_environment(&admin.token, &reg.repo, env)
            })
            .await?
            .map_err(|e| e.to_grpc())?;
        let (project_id, env_name, caller) =
            (reg.project_id.clone(), env.to_string(), caller.to_owned());
        self.ledger
            .write(move |_conn| {
                Box::pin(async move {
                    let entry = Entry::new(
                        caller,
                        Action::SetProjectSecrets.as_str(),
                        format!("projects/{project_id}/environments/{env_name}"),
                    )
                    .detail("environment created at GitHub");
                    Ok(((), vec![entry]))
                })
            })
            .await?;
        self.github
            .public_key_at(&target.token.token, &target.at)
            .await
            .map_err(|e| e.to_grpc())
    }

    /// An organization secret's visibility for GitHub: `selected` names registered projects
    /// only, mapped to their repositories' numeric ids.
    async fn org_visibility(
        &self,
        reg: &Registered,
        visibility: &Visibility,
    ) -> Result<OrgVisibility, Status> {
        let projects = match visibility {
            Visibility::All => return Ok(OrgVisibility::All),
            Visibility::Private => return Ok(OrgVisibility::Private),
            Visibility::Selected(projects) => projects,
        };
        // Architecture Invariant: an organization secret is shared only with repositories
        // registered at the broker (all of them of its organization).
        let mut repos = Vec::with_capacity(projects.len());
        for (i, project) in projects.iter().enumerate() {
            let Some(selected) = self.registration(project).await? else {
                return Err(with_reason(
                    Code::FailedPrecondition,
                    "PROJECT_NOT_REGISTERED",
                    format!(
                        "location.organization.selected_project_ids[{i}]: project `{project}` has no repository registered at the broker"
                    ),
                    &[
                        (
                            "field",
                            format!("location.organization.selected_project_ids[{i}]"),
                        ),
                        ("project_id", project.to_string()),
                    ],
                ));
            };
            repos.push(selected.repo);
        }
        // One organization, one installation of the App: the project's covers them all.
        let names: Vec<&str> = repos.iter().map(|r| r.name()).collect();
        let (token, _) = self
            .github
            .token(reg.installation as u64, &names, &[("metadata", "read")])
            .await
            .map_err(|e| e.to_grpc())?;
        let mut ids = Vec::with_capacity(repos.len());
        for repo in &repos {
            let found = self
                .github
                .repository(&token.token, repo)
                .await
                .map_err(|e| e.to_grpc())?
                .ok_or_else(|| {
                    with_reason(
                        Code::FailedPrecondition,
                        "REPOSITORY_NOT_FOUND",
                        format!("GitHub has no repository {repo}"),
                        &[("repository", repo.to_string())],
                    )
                })?;
            ids.push(found.id);
        }
        Ok(OrgVisibility::Selected(ids))
    }

    /// GitHub's limit of secrets per location, counting the ones already there; and for the
    /// organization, the ownership of each name: another project's, or one the broker did
    /// not write, is refused before anything is written.
    async fn check_room(
        &self,
        target: &Target<'_>,
        writer: &Writer,
        location: &Location,
        secrets: &[Secret],
    ) -> Result<(), Status> {
        let existing = self
            .github
            .list_secrets_at(&target.token.token, &target.at)
            .await
            .map_err(|e| e.to_grpc())?;
        let mut names: HashSet<String> = existing
            .iter()
            .map(|s| s.name.to_ascii_uppercase())
            .collect();
        if *location == Location::Organization {
            for s in secrets {
                let owner = db::organization_secret_owner(self.db.pool(), &s.name).await?;
                let refused = match &owner {
                    Some(owner) => owner != writer.project_id.as_str(),
                    None => names.contains(s.name.as_str()),
                };
                if refused {
                    return Err(with_reason(
                        Code::FailedPrecondition,
                        "ORGANIZATION_SECRET_OF_ANOTHER_PROJECT",
                        format!(
                            "the organization secret `{}` was not written by the broker for project `{}`",
                            s.name, writer.project_id
                        ),
                        &[
                            ("name", s.name.to_string()),
                            ("project_id", writer.project_id.to_string()),
                        ],
                    ));
                }
            }
        }
        names.extend(secrets.iter().map(|s| s.name.as_str().to_owned()));
        let max = location.max_secrets();
        if names.len() > max {
            return Err(with_reason(
                Code::FailedPrecondition,
                "TOO_MANY_SECRETS",
                format!(
                    "{} would hold {} secrets; GitHub allows {max}",
                    location.describe(),
                    names.len()
                ),
                &[("existing", existing.len().to_string())],
            ));
        }
        Ok(())
    }

    /// PUTs `value` sealed with `key` (paced). The outer error is ours (pacing could not
    /// start); the inner result is GitHub's answer, which is recorded either way.
    async fn put(
        &self,
        target: &Target<'_>,
        key: &mut PublicKey,
        name: &SecretName,
        value: &[u8],
    ) -> Result<Result<PutOutcome, GitHubError>, Status> {
        let mut refetched = false;
        loop {
            let sealed = orchestrator_github::seal(key, value);
            let put = self
                .pacer
                .paced(target.reg.installation, || {
                    self.github.put_secret_at(
                        &target.token.token,
                        &target.at,
                        name,
                        &sealed,
                        &key.key_id,
                        target.visibility.as_ref(),
                    )
                })
                .await?;
            match put {
                // A stale key: fetch it again and retry, once. Any 422 is taken for a stale
                // key, so a value GitHub refuses for another reason is sent twice.
                Err(GitHubError::Status { status: 422, .. }) if !refetched => {
                    refetched = true;
                    *key = self
                        .github
                        .public_key_at(&target.token.token, &target.at)
                        .await
                        .map_err(|e| e.to_grpc())?;
                }
                answer => return Ok(answer),
            }
        }
    }

    /// Architecture Invariant: `present` means GitHub has it. A write is recorded `pending`
    /// before its PUT, so a crash in between leaves a row reconcile can settle.
    async fn mark_pending(&self, writer: &Writer, name: &SecretName) -> Result<(), Status> {
        let (writer, name) = (writer.clone(), name.clone());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    let deploy = is_deploy_credential(&name);
                    db::record_pending(
                        conn,
                        &writer.project_id,
                        &writer.location,
                        &name,
                        &writer.caller,
                        deploy,
                        now_us(),
                    )
                    .await?;
                    Ok(((), vec![writer.entry(&name).detail("pending")]))
                })
            })
            .await
    }

    /// Records a write GitHub accepted as `present`, and the request's write for its retries.
    async fn record_present(
        &self,
        writer: &Writer,
        name: &SecretName,
        put: PutOutcome,
        key_id: &str,
        github_updated_at: Option<String>,
    ) -> Result<WriteRecord, Status> {
        let (writer, name, key_id) = (writer.clone(), name.clone(), key_id.to_owned());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    let write = WriteRecord {
                        outcome: put.into(),
                        key_id,
                        github_updated_at,
                        recorded_us: now_us(),
                    };
                    db::record_present(
                        conn,
                        &writer.request_id,
                        &writer.project_id,
                        &writer.location,
                        &name,
                        &write,
                    )
                    .await?;
                    let entry = writer
                        .entry(&name)
                        .request_id(writer.request_id.as_str())
                        .detail(format!(
                            "{} key_id={}",
                            write.outcome.as_str(),
                            write.key_id
                        ));
                    Ok((write, vec![entry]))
                })
            })
            .await
    }

    /// Records a write's final error (its message; the audit record carries its code).
    async fn record_failed(
        &self,
        writer: &Writer,
        name: &SecretName,
        status: &Status,
    ) -> Result<(), Status> {
        let (writer, name) = (writer.clone(), name.clone());
        let (code, message) = (format!("{:?}", status.code()), status.message().to_owned());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    db::record_failed(conn, &writer.project_id, &writer.location, &name, &message)
                        .await?;
                    let mut entry = writer.entry(&name).detail("failed");
                    entry.outcome = code;
                    Ok(((), vec![entry]))
                })
            })
            .await
    }
}
