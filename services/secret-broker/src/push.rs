//! SetProjectSecrets and SetDeployCredentials: validated secrets, sealed for the repository,
//! PUT one by one (paced), each recorded.
//!
//! A batch uses one token and one public key. Each secret is recorded `pending` before its
//! PUT and `present` (with GitHub's `updated_at`) only after GitHub accepted it; a final error
//! is recorded with its reason. A retry of a request (same request id, same project) answers
//! what the first attempt recorded instead of writing again.

use std::collections::HashSet;

use orchestrator_audit::Entry;
use orchestrator_fields::{ProjectId, RequestId};
use orchestrator_github::{GitHubError, InstallationToken, PublicKey, PutOutcome, SecretName};
use orchestrator_mesh::status::with_reason;
use orchestrator_proto::common::v1 as common;
use orchestrator_store::now_us;
use tonic::{Code, Status};

use crate::audit::Action;
use crate::db::{self, WriteRecord};
use crate::messages;
use crate::registry::Registered;
use crate::state::Broker;
use crate::validate::{MAX_SECRETS, Secret, SecretsRequest, is_deploy_credential};

/// Who writes into which project, under which request id: what the records of a push name.
/// Small, so each record's closure takes its own copy.
#[derive(Debug, Clone)]
struct Writer {
    caller: String,
    action: Action,
    request_id: RequestId,
    project_id: ProjectId,
}

impl Writer {
    fn entry(&self, name: &SecretName) -> Entry {
        self.action.on_secret(&self.caller, &self.project_id, name)
    }
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
        };
        let reg = self.registered(&writer.project_id).await?;
        let token = self.secrets_token(&reg).await?;
        self.check_room(&token, &reg, &req.secrets).await?;
        let mut key = self
            .github
            .public_key(&token.token, &reg.repo)
            .await
            .map_err(|e| e.to_grpc())?;
        let mut results = Vec::with_capacity(req.secrets.len());
        for Secret { name, value } in req.secrets {
            let recorded = db::find_write(
                self.db.pool(),
                &writer.request_id,
                &writer.project_id,
                &name,
            )
            .await?;
            if let Some(done) = recorded {
                results.push(messages::written(&name, &done));
                continue;
            }
            self.mark_pending(&writer, &name).await?;
            let outcome = self.put(&token, &reg, &mut key, &name, &value).await?;
            drop(value);
            let result = match outcome {
                Ok(put) => {
                    // GitHub's time for the record; missing it does not undo the write.
                    let updated_at = self
                        .github
                        .get_secret(&token.token, &reg.repo, &name)
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

    /// GitHub allows 100 secrets per repository, counting the ones already there.
    async fn check_room(
        &self,
        token: &InstallationToken,
        reg: &Registered,
        secrets: &[Secret],
    ) -> Result<(), Status> {
        let existing = self
            .github
            .list_secrets(&token.token, &reg.repo)
            .await
            .map_err(|e| e.to_grpc())?;
        let mut names: HashSet<String> = existing
            .iter()
            .map(|s| s.name.to_ascii_uppercase())
            .collect();
        names.extend(secrets.iter().map(|s| s.name.as_str().to_owned()));
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
        Ok(())
    }

    /// PUTs `value` sealed with `key` (paced). The outer error is ours (pacing could not
    /// start); the inner result is GitHub's answer, which is recorded either way.
    async fn put(
        &self,
        token: &InstallationToken,
        reg: &Registered,
        key: &mut PublicKey,
        name: &SecretName,
        value: &[u8],
    ) -> Result<Result<PutOutcome, GitHubError>, Status> {
        let mut refetched = false;
        loop {
            let sealed = orchestrator_github::seal(key, value);
            let put = self
                .pacer
                .paced(reg.installation, || {
                    self.github
                        .put_secret(&token.token, &reg.repo, name, &sealed, &key.key_id)
                })
                .await?;
            match put {
                // A stale key: fetch it again and retry, once. Any 422 is taken for a stale
                // key, so a value GitHub refuses for another reason is sent twice.
                Err(GitHubError::Status { status: 422, .. }) if !refetched => {
                    refetched = true;
                    *key = self
                        .github
                        .public_key(&token.token, &reg.repo)
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
                    db::record_present(conn, &writer.request_id, &writer.project_id, &name, &write)
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
                    db::record_failed(conn, &writer.project_id, &name, &message).await?;
                    let mut entry = writer.entry(&name).detail("failed");
                    entry.outcome = code;
                    Ok(((), vec![entry]))
                })
            })
            .await
    }
}
