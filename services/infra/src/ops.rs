//! Operations: provisioning and destroying servers in the background, step by step, each step
//! recorded so an infra restart resumes where it stopped, and retried only where it is safe.

use std::time::Duration;

use orchestrator_audit::Entry;
use orchestrator_deploy_keys as keys;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::secretbroker::v1 as broker;
use orchestrator_providers::{CreateDroplet, DigitalOcean, ProviderError, Retry};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use sqlx::Row;
use tonic::Status;

use crate::api::{Infra, ServerRow, store};
use crate::now_us;

/// Steps of a provision, in order.
pub const PROVISION: [pb::OperationStep; 5] = [
    pb::OperationStep::ServerCreated,
    pb::OperationStep::AddressAssigned,
    pb::OperationStep::DnsRecordSet,
    pb::OperationStep::DeployCredentialsHandedOver,
    pb::OperationStep::ServerReady,
];

/// Steps of a destroy, in order.
pub const DESTROY: [pb::OperationStep; 2] = [
    pb::OperationStep::ServerDeleted,
    pb::OperationStep::DnsRecordRemoved,
];

/// Why a step stopped: worth retrying, or final.
enum StepError {
    Transient(String),
    Final(Status),
}

impl From<ProviderError> for StepError {
    fn from(e: ProviderError) -> Self {
        match &e {
            ProviderError::Unavailable { .. } | ProviderError::RateLimited { .. } => {
                StepError::Transient(e.to_string())
            }
            ProviderError::Status { status, .. } if *status >= 500 || *status == 429 => {
                StepError::Transient(e.to_string())
            }
            ProviderError::Auth { .. } => {
                StepError::Final(Status::permission_denied(e.to_string()))
            }
            _ => StepError::Final(Status::failed_precondition(e.to_string())),
        }
    }
}

impl From<Status> for StepError {
    fn from(s: Status) -> Self {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::Aborted => {
                StepError::Transient(s.message().to_owned())
            }
            _ => StepError::Final(s),
        }
    }
}

/// A fresh list of step states for `steps`, all pending.
pub fn initial_steps(steps: &[pb::OperationStep]) -> String {
    let list: Vec<_> = steps.iter().map(|s| json!({ "step": *s as i32, "state": pb::OperationStepState::Pending as i32, "detail": "" })).collect();
    serde_json::Value::Array(list).to_string()
}

impl Infra {
    /// Sets one step's state (and the operation's message), audited.
    async fn mark(
        &self,
        op_id: &str,
        step: pb::OperationStep,
        state: pb::OperationStepState,
        detail: &str,
    ) -> Result<(), Status> {
        let (op_id, detail) = (op_id.to_owned(), detail.to_owned());
        let self_id = self.self_id.clone();
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    let row = sqlx::query("SELECT steps FROM operations WHERE id = $1").bind(&op_id).fetch_one(&mut *conn).await.map_err(store)?;
                    let mut steps: serde_json::Value = serde_json::from_str(&row.try_get::<String, _>("steps").map_err(store)?).unwrap_or_default();
                    if let Some(list) = steps.as_array_mut() {
                        for s in list.iter_mut() {
                            if s["step"].as_i64() == Some(step as i64) {
                                s["state"] = json!(state as i32);
                                s["detail"] = json!(detail);
                            }
                        }
                    }
                    sqlx::query("UPDATE operations SET steps = $2, message = $3, state = 'running', updated_us = $4 WHERE id = $1")
                        .bind(&op_id)
                        .bind(steps.to_string())
                        .bind(&detail)
                        .bind(now_us())
                        .execute(&mut *conn)
                        .await
                        .map_err(store)?;
                    let entry = Entry::new(&self_id, "infra/operation", format!("operations/{op_id}")).detail(format!("{step:?} {state:?}: {detail}"));
                    Ok(((), vec![entry]))
                })
            })
            .await
    }

    async fn finish(
        &self,
        op_id: &str,
        server_id: &str,
        error: Option<&Status>,
        server_state: &str,
    ) -> Result<(), Status> {
        let (op_id, server_id, server_state) = (
            op_id.to_owned(),
            server_id.to_owned(),
            server_state.to_owned(),
        );
        let error =
            error.map(|e| json!({ "code": e.code() as i32, "message": e.message() }).to_string());
        let self_id = self.self_id.clone();
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    let state = if error.is_some() { "failed" } else { "succeeded" };
                    sqlx::query("UPDATE operations SET state = $2, error = $3, updated_us = $4, ended_us = $4 WHERE id = $1")
                        .bind(&op_id)
                        .bind(state)
                        .bind(error.as_deref())
                        .bind(now)
                        .execute(&mut *conn)
                        .await
                        .map_err(store)?;
                    sqlx::query(
                        "UPDATE servers SET state = $2, updated_us = $3, \
                         ready_us = CASE WHEN $2 = 'ready' THEN $3 ELSE ready_us END, \
                         destroyed_us = CASE WHEN $2 = 'destroyed' THEN $3 ELSE destroyed_us END WHERE id = $1",
                    )
                    .bind(&server_id)
                    .bind(&server_state)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(store)?;
                    let entry = Entry::new(&self_id, "infra/operation", format!("operations/{op_id}")).detail(format!("{state}; server {server_state}"));
                    Ok(((), vec![entry]))
                })
            })
            .await
    }

    async fn set_server(
        &self,
        server_id: &str,
        column: &'static str,
        value: &str,
    ) -> Result<(), Status> {
        let sql = match column {
            "provider_server_id" => {
                "UPDATE servers SET provider_server_id = $2, updated_us = $3 WHERE id = $1"
            }
            "ipv4" => "UPDATE servers SET ipv4 = $2, updated_us = $3 WHERE id = $1",
            "dns_record_id" => {
                "UPDATE servers SET dns_record_id = $2, updated_us = $3 WHERE id = $1"
            }
            "deploy_public_key" => {
                "UPDATE servers SET deploy_public_key = $2, updated_us = $3 WHERE id = $1"
            }
            _ => "UPDATE servers SET host_public_key = $2, updated_us = $3 WHERE id = $1",
        };
        let (server_id, value, self_id) =
            (server_id.to_owned(), value.to_owned(), self.self_id.clone());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(sql)
                        .bind(&server_id)
                        .bind(&value)
                        .bind(now_us())
                        .execute(&mut *conn)
                        .await
                        .map_err(store)?;
                    Ok((
                        (),
                        vec![
                            Entry::new(&self_id, "infra/operation", format!("servers/{server_id}"))
                                .detail(column),
                        ],
                    ))
                })
            })
            .await
    }

    /// The provider token for this server: the platform's (L1), or the user's own from the
    /// vault, read for this call only and dropped (zeroized) after it.
    async fn provider_token(&self, server: &ServerRow) -> Result<SecretString, StepError> {
        match &server.credentials {
            crate::api::Creds::Platform => self.do_token.clone().ok_or_else(|| {
                StepError::Final(Status::failed_precondition(
                    "DIGITALOCEAN_TOKEN is not configured on infra",
                ))
            }),
            crate::api::Creds::UserVault { user_id, key } => {
                let secret = self.user_secret(user_id, key).await?;
                Ok(secret)
            }
        }
    }

    async fn digitalocean(&self, server: &ServerRow) -> Result<DigitalOcean, StepError> {
        let token = self.provider_token(server).await?;
        Ok(DigitalOcean::new(&self.do_url, token, Retry::default())?)
    }

    /// Runs (or resumes) an operation until it ends. Transient failures are retried with
    /// backoff; a final one fails the operation with the provider's reason.
    pub async fn run(&self, op_id: String) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = self.run_once(&op_id).await;
            match result {
                Ok(()) => return,
                Err(StepError::Transient(why)) => {
                    tracing::warn!(operation = %op_id, error = %why, "operation step will be retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(StepError::Final(status)) => {
                    tracing::warn!(operation = %op_id, error = %status.message(), "operation failed");
                    if let Ok(server) = self.server_of(&op_id).await {
                        let _ = self
                            .finish(&op_id, &server.id, Some(&status), "failed")
                            .await;
                    }
                    return;
                }
            }
        }
    }

    async fn server_of(&self, op_id: &str) -> Result<ServerRow, Status> {
        let row = sqlx::query("SELECT server_id FROM operations WHERE id = $1")
            .bind(op_id)
            .fetch_one(self.db.pool())
            .await
            .map_err(store)?;
        self.server(&row.try_get::<String, _>("server_id").map_err(store)?)
            .await
    }

    async fn run_once(&self, op_id: &str) -> Result<(), StepError> {
        let row = sqlx::query("SELECT kind, state FROM operations WHERE id = $1")
            .bind(op_id)
            .fetch_one(self.db.pool())
            .await
            .map_err(store)?;
        if matches!(
            row.try_get::<String, _>("state").map_err(store)?.as_str(),
            "succeeded" | "failed"
        ) {
            return Ok(());
        }
        let server = self.server_of(op_id).await?;
        match row.try_get::<String, _>("kind").map_err(store)?.as_str() {
            "destroy" => self.destroy(op_id, server).await,
            _ => self.provision(op_id, server).await,
        }
    }

    async fn provision(&self, op_id: &str, mut server: ServerRow) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        let mut broker = self.broker();
        // The deploy key: handed to the broker the moment it exists; only its public half stays.
        if server.deploy_public_key.is_none() {
            let deploy = keys::generate(&format!("deploy@{}", server.hostname))
                .map_err(|e| StepError::Final(Status::internal(e.to_string())))?;
            broker
                .set_deploy_credentials(broker::SetDeployCredentialsRequest {
                    request_id: format!("{op_id}-key-{}", &deploy.fingerprint[7..15]),
                    project_id: server.project_id.clone(),
                    credentials: Some(broker::DeployCredentials {
                        ssh_private_key: deploy.private_openssh.expose_secret().as_bytes().to_vec(),
                        ..Default::default()
                    }),
                    server_id: server.id.clone(),
                })
                .await?;
            self.set_server(&server.id, "deploy_public_key", &deploy.public_openssh)
                .await?;
            server.deploy_public_key = Some(deploy.public_openssh.clone());
        }
        if server.provider_server_id.is_none() {
            self.mark(
                op_id,
                Step::ServerCreated,
                St::Running,
                "creating the server",
            )
            .await?;
            let digitalocean = self.digitalocean(&server).await?;
            let tag = format!("orch-{op_id}");
            let droplet = match digitalocean.droplets_by_tag(&tag).await?.into_iter().next() {
                Some(existing) => existing,
                None => {
                    // The host key is injected, so it is known (and pinned) before the server answers.
                    let host = keys::generate(&format!("host@{}", server.hostname))
                        .map_err(|e| StepError::Final(Status::internal(e.to_string())))?;
                    self.set_server(&server.id, "host_public_key", &host.public_openssh)
                        .await?;
                    server.host_public_key = Some(host.public_openssh.clone());
                    let user_data = keys::cloud_init(
                        &server.deploy_user,
                        server.deploy_public_key.as_deref().unwrap_or_default(),
                        &self.admin_public_key,
                        &host,
                    )
                    .map_err(|e| StepError::Final(Status::invalid_argument(e.to_string())))?;
                    digitalocean
                        .create_droplet(&CreateDroplet {
                            name: server.hostname.replace('.', "-"),
                            region: server.region.clone(),
                            size: server.size.clone(),
                            image: server.image.clone(),
                            tag,
                            user_data,
                            ssh_keys: Vec::new(),
                        })
                        .await?
                }
            };
            self.set_server(&server.id, "provider_server_id", &droplet.id.to_string())
                .await?;
            server.provider_server_id = Some(droplet.id.to_string());
            self.mark(
                op_id,
                Step::ServerCreated,
                St::Done,
                &format!("droplet {}", droplet.id),
            )
            .await?;
        }
        if server.ipv4.is_none() {
            self.mark(
                op_id,
                Step::AddressAssigned,
                St::Running,
                "waiting for a public address",
            )
            .await?;
            let id: u64 = server
                .provider_server_id
                .as_deref()
                .unwrap_or_default()
                .parse()
                .unwrap_or_default();
            let droplet = self
                .digitalocean(&server)
                .await?
                .wait_for_address(id, Duration::from_secs(600), Duration::from_millis(250))
                .await?;
            let ip = droplet.public_ipv4.unwrap_or_default();
            self.set_server(&server.id, "ipv4", &ip).await?;
            server.ipv4 = Some(ip.clone());
            self.mark(op_id, Step::AddressAssigned, St::Done, &ip)
                .await?;
        }
        let ip = server.ipv4.clone().unwrap_or_default();
        if server.dns_record_id.is_none() {
            match &self.cloudflare {
                Some((cf, zone)) => {
                    self.mark(
                        op_id,
                        Step::DnsRecordSet,
                        St::Running,
                        "setting the A record",
                    )
                    .await?;
                    let zone_id = cf.zone_id(zone).await?;
                    let record = cf.upsert_a_record(&zone_id, &server.hostname, &ip).await?;
                    self.set_server(&server.id, "dns_record_id", &record)
                        .await?;
                    self.mark(
                        op_id,
                        Step::DnsRecordSet,
                        St::Done,
                        &format!("{} -> {ip}", server.hostname),
                    )
                    .await?;
                }
                None => {
                    self.mark(
                        op_id,
                        Step::DnsRecordSet,
                        St::Skipped,
                        "no DNS provider configured",
                    )
                    .await?
                }
            }
        }
        // Host, user and the pinned host key: the workflow can now deploy.
        self.mark(
            op_id,
            Step::DeployCredentialsHandedOver,
            St::Running,
            "handing over the deploy credentials",
        )
        .await?;
        let host_public = server.host_public_key.clone().unwrap_or_default();
        let known_hosts = format!(
            "{}{}",
            keys::known_hosts(&server.hostname, &host_public),
            keys::known_hosts(&ip, &host_public)
        );
        let host = if self.cloudflare.is_some() {
            server.hostname.clone()
        } else {
            ip.clone()
        };
        broker
            .set_deploy_credentials(broker::SetDeployCredentialsRequest {
                request_id: format!("{op_id}-host"),
                project_id: server.project_id.clone(),
                credentials: Some(broker::DeployCredentials {
                    host,
                    user: server.deploy_user.clone(),
                    known_hosts,
                    ..Default::default()
                }),
                server_id: server.id.clone(),
            })
            .await?;
        self.mark(
            op_id,
            Step::DeployCredentialsHandedOver,
            St::Done,
            "DEPLOY_HOST, DEPLOY_USER, DEPLOY_SSH_KEY, DEPLOY_KNOWN_HOSTS",
        )
        .await?;
        self.mark(
            op_id,
            Step::ServerReady,
            St::Done,
            "created, addressed, credentials handed over",
        )
        .await?;
        self.finish(op_id, &server.id, None, "ready").await?;
        Ok(())
    }

    async fn destroy(&self, op_id: &str, server: ServerRow) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        self.mark(
            op_id,
            Step::ServerDeleted,
            St::Running,
            "deleting the server",
        )
        .await?;
        if let Some(id) = server
            .provider_server_id
            .as_deref()
            .and_then(|i| i.parse::<u64>().ok())
        {
            let gone = self.digitalocean(&server).await?.delete_droplet(id).await?;
            self.mark(
                op_id,
                Step::ServerDeleted,
                St::Done,
                if gone { "deleted" } else { "already gone" },
            )
            .await?;
        } else {
            self.mark(
                op_id,
                Step::ServerDeleted,
                St::Skipped,
                "no server was created",
            )
            .await?;
        }
        match &self.cloudflare {
            Some((cf, zone)) => {
                let zone_id = cf.zone_id(zone).await?;
                let removed = cf.delete_a_record(&zone_id, &server.hostname).await?;
                self.mark(
                    op_id,
                    Step::DnsRecordRemoved,
                    St::Done,
                    if removed { "removed" } else { "already gone" },
                )
                .await?;
            }
            None => {
                self.mark(
                    op_id,
                    Step::DnsRecordRemoved,
                    St::Skipped,
                    "no DNS provider configured",
                )
                .await?
            }
        }
        self.finish(op_id, &server.id, None, "destroyed").await?;
        Ok(())
    }
}
