//! Operations: provisioning and destroying servers in the background, step by step, each step
//! recorded so an infra restart resumes where it stopped, and retried only where it is safe.

use std::time::{Duration, Instant};

use orchestrator_audit::Entry;
use orchestrator_deploy_keys as keys;
use orchestrator_mesh::status::{reason_of, with_reason};
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::secretbroker::v1 as broker;
use orchestrator_providers::{
    Cloudflare, DigitalOcean, ProviderError, Retry, ServerProvider, ServerSpec, Started, Time4Vps,
};
use orchestrator_ssh::{HostKey, Session, SshError, Target};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use sqlx::Row;
use tonic::Status;

use crate::api::{Creds, Infra, Provider, ServerRow, store};
use crate::now_us;

/// Steps of a provision, in order; the checkout only when asked for.
pub fn provision_steps(checkout: bool) -> Vec<pb::OperationStep> {
    let mut steps = vec![
        pb::OperationStep::ServerCreated,
        pb::OperationStep::AddressAssigned,
        pb::OperationStep::DnsRecordSet,
        pb::OperationStep::DeployCredentialsHandedOver,
        pb::OperationStep::ServerReady,
    ];
    if checkout {
        steps.push(pb::OperationStep::RepositoryCheckedOut);
    }
    steps
}

/// Steps of a deploy key rotation, in order.
pub const ROTATE: [pb::OperationStep; 3] = [
    pb::OperationStep::DeployKeyAuthorized,
    pb::OperationStep::DeployCredentialsHandedOver,
    pb::OperationStep::OldDeployKeysRevoked,
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
        let code = match e.reason() {
            "PROVIDER_RATE_LIMITED" | "PROVIDER_UNAVAILABLE" => {
                return StepError::Transient(e.to_string());
            }
            "PROVIDER_AUTH_FAILED" => tonic::Code::PermissionDenied,
            "PROVIDER_QUOTA_EXCEEDED" => tonic::Code::ResourceExhausted,
            "PROVIDER_NOT_FOUND" => tonic::Code::NotFound,
            "PROVIDER_BAD_ANSWER" => tonic::Code::Internal,
            _ => tonic::Code::FailedPrecondition,
        };
        StepError::Final(with_reason(code, e.reason(), e.to_string(), &[]))
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

/// SSH failures: transient ones (still booting) are retried; a host key that does not match
/// the pinned one never is.
fn ssh_error(e: SshError) -> StepError {
    match &e {
        SshError::HostKeyMismatch { .. } => StepError::Final(with_reason(
            tonic::Code::FailedPrecondition,
            "HOST_KEY_MISMATCH",
            e.to_string(),
            &[],
        )),
        SshError::AuthRefused { .. } => StepError::Final(with_reason(
            tonic::Code::FailedPrecondition,
            "ADMIN_KEY_REFUSED",
            e.to_string(),
            &[],
        )),
        _ if e.is_transient() => StepError::Transient(e.to_string()),
        _ => StepError::Final(Status::internal(e.to_string())),
    }
}

/// What `bash -s` on the server reads: line 2 is the token (bash reads a script from a pipe
/// line by line, so `read` takes the line that follows it), then the script, which clones (or
/// fetches) `url` into `~/<dir>` with the token from `$GIT_TOKEN`. The credential helper on
/// git's command line names the variable, never the token.
fn checkout_stdin(token: &SecretString, url: &str, dir: &str) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!(
        r#"set -euo pipefail
IFS= read -r GIT_TOKEN
{token}
export GIT_TOKEN
helper='!f() {{ test "$1" = get && printf "username=x-access-token\npassword=%s\n" "$GIT_TOKEN"; }}; f'
git_() {{ git -c credential.helper= -c "credential.helper=$helper" "$@"; }}
if [ -d "$HOME/{dir}/.git" ]; then
  git_ -C "$HOME/{dir}" fetch --quiet origin
else
  git_ clone --quiet '{url}' "$HOME/{dir}"
fi
"#,
        token = token.expose_secret(),
    ))
}

/// The columns of a server row that operations record as they go.
#[derive(Debug, Clone, Copy)]
enum Column {
    ProviderServerId,
    ProviderTaskId,
    Ipv4,
    DnsRecordId,
    DeployPublicKey,
    HostPublicKey,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::ProviderServerId => "provider_server_id",
            Column::ProviderTaskId => "provider_task_id",
            Column::Ipv4 => "ipv4",
            Column::DnsRecordId => "dns_record_id",
            Column::DeployPublicKey => "deploy_public_key",
            Column::HostPublicKey => "host_public_key",
        }
    }

    fn update(self) -> &'static str {
        match self {
            Column::ProviderServerId => {
                "UPDATE servers SET provider_server_id = $2, updated_us = $3 WHERE id = $1"
            }
            Column::ProviderTaskId => {
                "UPDATE servers SET provider_task_id = $2, updated_us = $3 WHERE id = $1"
            }
            Column::Ipv4 => "UPDATE servers SET ipv4 = $2, updated_us = $3 WHERE id = $1",
            Column::DnsRecordId => {
                "UPDATE servers SET dns_record_id = $2, updated_us = $3 WHERE id = $1"
            }
            Column::DeployPublicKey => {
                "UPDATE servers SET deploy_public_key = $2, updated_us = $3 WHERE id = $1"
            }
            Column::HostPublicKey => {
                "UPDATE servers SET host_public_key = $2, updated_us = $3 WHERE id = $1"
            }
        }
    }
}

/// What the first step says while it runs.
fn starting(server: &ServerRow) -> String {
    match server.provider {
        Provider::DigitalOcean => "creating the server".to_owned(),
        Provider::Time4Vps => format!(
            "reinstalling server {} with {}",
            server.provider_server_id.as_deref().unwrap_or_default(),
            server.image
        ),
    }
}

/// The last line(s) of a command's stderr, for an error message (bounded).
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(300);
    text[text.floor_char_boundary(start)..].to_owned()
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
                    let now = now_us();
                    if let Some(list) = steps.as_array_mut() {
                        for s in list.iter_mut() {
                            if s["step"].as_i64() == Some(step as i64) {
                                s["state"] = json!(state as i32);
                                s["detail"] = json!(detail);
                                // When it started (first seen running) and when it ended.
                                if s["start_us"].is_null() {
                                    s["start_us"] = json!(now);
                                }
                                if state != pb::OperationStepState::Running {
                                    s["end_us"] = json!(now);
                                }
                            }
                        }
                    }
                    sqlx::query("UPDATE operations SET steps = $2, message = $3, state = 'running', updated_us = $4 WHERE id = $1")
                        .bind(&op_id)
                        .bind(steps.to_string())
                        .bind(&detail)
                        .bind(now)
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
        // The reason (and its facts) from the status's ErrorInfo, where it has one.
        let error = error.map(|e| {
            let (reason, metadata) = reason_of(e).unwrap_or_default();
            json!({ "code": e.code() as i32, "reason": reason, "message": e.message(), "metadata": metadata })
                .to_string()
        });
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
                         ready_us = CASE WHEN $2 = 'ready' AND ready_us IS NULL THEN $3 ELSE ready_us END, \
                         destroyed_us = CASE WHEN $2 = 'destroyed' THEN $3 ELSE destroyed_us END \
                         WHERE id = $1 AND ($2 = 'destroyed' OR state NOT IN ('destroying', 'destroyed'))",
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

    /// Sets one column of a server row (an empty value clears it), audited.
    async fn set_server(&self, server_id: &str, column: Column, value: &str) -> Result<(), Status> {
        let (sql, column) = (column.update(), column.name());
        let (server_id, value, self_id) =
            (server_id.to_owned(), value.to_owned(), self.self_id.clone());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(sql)
                        .bind(&server_id)
                        .bind((!value.is_empty()).then_some(&value))
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

    /// A credential: the platform's (L1), or the user's own from the vault, read for this
    /// call only and dropped (zeroized) after it.
    async fn credential(
        &self,
        creds: &Creds,
        platform: Option<&SecretString>,
        name: &str,
    ) -> Result<SecretString, StepError> {
        match creds {
            Creds::Platform => platform.cloned().ok_or_else(|| {
                StepError::Final(Status::failed_precondition(format!(
                    "{name} is not configured on infra"
                )))
            }),
            Creds::UserVault { user_id, key } => Ok(self.user_secret(user_id, key).await?),
        }
    }

    async fn digitalocean(&self, server: &ServerRow) -> Result<DigitalOcean, StepError> {
        let token = self
            .credential(
                &server.credentials,
                self.do_token.as_ref(),
                "DIGITALOCEAN_TOKEN",
            )
            .await?;
        Ok(DigitalOcean::new(&self.do_url, token, Retry::default())?)
    }

    /// Time4VPS logs in with a user and a password: the platform's, or the user's own vault
    /// entry holding `username:password`.
    async fn time4vps(&self, server: &ServerRow) -> Result<Time4Vps, StepError> {
        let (user, password) = match &server.credentials {
            Creds::Platform => self.t4_login.clone().ok_or_else(|| {
                StepError::Final(Status::failed_precondition(
                    "TIME4VPS_USER and TIME4VPS_PASSWORD are not configured on infra",
                ))
            })?,
            Creds::UserVault { user_id, key } => {
                let secret = self.user_secret(user_id, key).await?;
                let (user, password) = secret.expose_secret().split_once(':').ok_or_else(|| {
                    StepError::Final(Status::failed_precondition(
                        "the user's Time4VPS entry must be `username:password`",
                    ))
                })?;
                (user.to_owned(), SecretString::from(password.to_owned()))
            }
        };
        Ok(Time4Vps::new(
            &self.t4_url,
            &user,
            password,
            Retry::default(),
        )?)
    }

    /// Cloudflare with the server's DNS credential, and the zone; `None` = no DNS configured.
    async fn cloudflare(
        &self,
        server: &ServerRow,
    ) -> Result<Option<(Cloudflare, String)>, StepError> {
        let Some(zone) = &self.cf_zone else {
            return Ok(None);
        };
        let token = self
            .credential(
                &server.dns_credentials,
                self.cf_token.as_ref(),
                "CLOUDFLARE_API_TOKEN",
            )
            .await?;
        Ok(Some((
            Cloudflare::new(&self.cf_url, token, Retry::default())?,
            zone.clone(),
        )))
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
                        // A failed rotation leaves a working server: the old key, or both.
                        let rotation = self
                            .operation(&op_id)
                            .await
                            .is_ok_and(|op| op.kind == pb::OperationKind::RotateDeployKey as i32);
                        let state = if rotation {
                            server.state.as_str()
                        } else {
                            "failed"
                        };
                        let _ = self.finish(&op_id, &server.id, Some(&status), state).await;
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
            "rotate" => self.rotate(op_id, server).await,
            _ => self.provision(op_id, server).await,
        }
    }

    async fn provision(&self, op_id: &str, mut server: ServerRow) -> Result<(), StepError> {
        self.still_wanted(&server.id).await?;
        self.hand_over_deploy_key(op_id, &mut server).await?;
        self.still_wanted(&server.id).await?;
        match server.provider {
            Provider::DigitalOcean => {
                let provider = self.digitalocean(&server).await?;
                self.bring_up(op_id, &mut server, &provider).await?
            }
            Provider::Time4Vps => {
                let provider = self.time4vps(&server).await?;
                self.bring_up(op_id, &mut server, &provider).await?
            }
        }
        self.still_wanted(&server.id).await?;
        self.set_dns(op_id, &mut server).await?;
        self.still_wanted(&server.id).await?;
        self.hand_over_host(op_id, &server).await?;
        self.still_wanted(&server.id).await?;
        self.check_ready(op_id, &server).await?;
        if self.wants_checkout(op_id).await? {
            self.still_wanted(&server.id).await?;
            self.check_out(op_id, &server).await?;
        }
        self.finish(op_id, &server.id, None, "ready").await?;
        Ok(())
    }

    /// The deploy key: handed to the broker the moment it exists; only its public half stays,
    /// so no later step (nor a restart) needs a private key infra no longer has.
    async fn hand_over_deploy_key(
        &self,
        op_id: &str,
        server: &mut ServerRow,
    ) -> Result<(), StepError> {
        if server.deploy_public_key.is_some() {
            return Ok(());
        }
        let deploy = keys::generate(&format!("deploy@{}", server.hostname))
            .map_err(|e| StepError::Final(Status::internal(e.to_string())))?;
        self.send_private_key(op_id, server, &deploy).await?;
        self.set_server(&server.id, Column::DeployPublicKey, &deploy.public_openssh)
            .await?;
        server.deploy_public_key = Some(deploy.public_openssh.clone());
        Ok(())
    }

    /// The server, through whichever provider: found by its key or started (where cloud-init
    /// runs, with the host key injected, so it is known and pinned before the server answers),
    /// then its public address; where it does not (Time4VPS), taken over over SSH.
    async fn bring_up<P: ServerProvider>(
        &self,
        op_id: &str,
        server: &mut ServerRow,
        provider: &P,
    ) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        let mut spec = self.server_spec(op_id, server);
        if !server.started() {
            self.mark(op_id, Step::ServerCreated, St::Running, &starting(server))
                .await?;
            let started = match provider.find(&spec).await? {
                Some(existing) => existing,
                None => {
                    if provider.runs_cloud_init() {
                        let host = keys::generate(&format!("host@{}", server.hostname))
                            .map_err(|e| StepError::Final(Status::internal(e.to_string())))?;
                        self.set_server(&server.id, Column::HostPublicKey, &host.public_openssh)
                            .await?;
                        server.host_public_key = Some(host.public_openssh.clone());
                        spec.user_data = keys::cloud_init(
                            &server.deploy_user,
                            server.deploy_public_key.as_deref().unwrap_or_default(),
                            self.admin_key.public_openssh(),
                            &host,
                        )
                        .map_err(|e| StepError::Final(Status::invalid_argument(e.to_string())))?;
                    }
                    provider.start(&spec).await?
                }
            };
            // The task first: from now on a restart waits for it instead of starting another.
            if let Some(task) = &started.task {
                self.set_server(&server.id, Column::ProviderTaskId, task)
                    .await?;
                server.provider_task_id = Some(task.clone());
            }
            self.set_server(&server.id, Column::ProviderServerId, &started.id)
                .await?;
            server.provider_server_id = Some(started.id.clone());
            let detail = match &started.task {
                Some(task) => format!(
                    "server {} reinstalling with {} (task {task})",
                    started.id, server.image
                ),
                None => format!("droplet {}", started.id),
            };
            self.mark(op_id, Step::ServerCreated, St::Done, &detail)
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
            let started = Started {
                id: server.provider_server_id.clone().unwrap_or_default(),
                task: server.provider_task_id.clone(),
            };
            let ip = provider.wait_until_up(&started, self.ready_timeout).await?;
            self.set_server(&server.id, Column::Ipv4, &ip).await?;
            server.ipv4 = Some(ip.clone());
            self.mark(op_id, Step::AddressAssigned, St::Done, &ip)
                .await?;
        }
        if server.host_public_key.is_none() {
            self.take_over(op_id, server).await?;
        }
        Ok(())
    }

    /// What the provider is asked for, from the server's record.
    fn server_spec(&self, op_id: &str, server: &ServerRow) -> ServerSpec {
        ServerSpec {
            key: format!("orch-{op_id}"),
            existing: match server.provider {
                Provider::Time4Vps => server.provider_server_id.clone().unwrap_or_default(),
                Provider::DigitalOcean => String::new(),
            },
            name: server.hostname.replace('.', "-"),
            region: server.region.clone(),
            size: server.size.clone(),
            image: server.image.clone(),
            user_data: String::new(),
            root_key: self.admin_key.public_openssh().to_owned(),
        }
    }

    /// A server without cloud-init (Time4VPS), freshly reinstalled with the admin key for
    /// root: the takeover script over SSH sets it up as cloud-init would. Its host key is
    /// learned on this first contact — right after the reinstall infra itself asked for, the
    /// only moment it can be — and pinned from then on.
    async fn take_over(&self, op_id: &str, server: &mut ServerRow) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        let ip = server.ipv4.clone().unwrap_or_default();
        self.mark(
            op_id,
            Step::ServerReady,
            St::Running,
            "taking over the reinstalled server",
        )
        .await?;
        let script = keys::takeover_script(
            &server.deploy_user,
            server.deploy_public_key.as_deref().unwrap_or_default(),
            self.admin_key.public_openssh(),
        )
        .map_err(|e| StepError::Final(Status::invalid_argument(e.to_string())))?;
        let target = Target {
            host: ip.clone(),
            port: self.ssh_port,
            user: "root".to_owned(),
            host_key: HostKey::LearnOnFirstUse,
        };
        let session = match self.ssh_when_up(&target).await {
            Ok(session) => session,
            // Root refused after our reinstall: an earlier attempt took the server over but
            // died before recording its host key. Reinstall again rather than guess.
            Err(SshError::AuthRefused { .. }) => {
                for column in [Column::ProviderTaskId, Column::Ipv4] {
                    self.set_server(&server.id, column, "").await?;
                }
                return Err(StepError::Transient(format!(
                    "{ip} was taken over by an earlier attempt; reinstalling again"
                )));
            }
            Err(e) => return Err(self.not_ready(e)),
        };
        let output = session
            .run("bash -s", script.as_bytes())
            .await
            .map_err(ssh_error)?;
        let host_key = session.host_key().to_owned();
        session.close().await;
        if !output.success() {
            return Err(StepError::Final(with_reason(
                tonic::Code::FailedPrecondition,
                "TAKEOVER_FAILED",
                format!(
                    "the takeover script on {ip} exited with {:?}: {}",
                    output.status,
                    tail(&output.stderr)
                ),
                &[],
            )));
        }
        self.set_server(&server.id, Column::HostPublicKey, &host_key)
            .await?;
        server.host_public_key = Some(host_key);
        Ok(())
    }

    /// A provision stops at its next step once a destroy of its server was asked for (the
    /// destroy waits for it, then removes whatever it made).
    async fn still_wanted(&self, server_id: &str) -> Result<(), StepError> {
        let state = self.server(server_id).await?.state;
        if matches!(state.as_str(), "destroying" | "destroyed") {
            return Err(StepError::Final(with_reason(
                tonic::Code::Cancelled,
                "SERVER_DESTROYED",
                "the server is being destroyed: provisioning stopped",
                &[],
            )));
        }
        Ok(())
    }

    /// The provision operation of `server_id` and whether it has ended.
    async fn provision_of(&self, server_id: &str) -> Result<Option<(String, bool)>, Status> {
        let row = sqlx::query(
            "SELECT id, state FROM operations WHERE server_id = $1 AND kind = 'provision'",
        )
        .bind(server_id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store)?;
        row.map(|r| {
            let state: String = r.try_get("state").map_err(store)?;
            Ok((
                r.try_get("id").map_err(store)?,
                matches!(state.as_str(), "succeeded" | "failed"),
            ))
        })
        .transpose()
    }

    async fn wants_checkout(&self, op_id: &str) -> Result<bool, Status> {
        let row = sqlx::query("SELECT steps FROM operations WHERE id = $1")
            .bind(op_id)
            .fetch_one(self.db.pool())
            .await
            .map_err(store)?;
        let steps: String = row.try_get("steps").map_err(store)?;
        let step = pb::OperationStep::RepositoryCheckedOut as i64;
        Ok(serde_json::from_str::<serde_json::Value>(&steps)
            .unwrap_or_default()
            .as_array()
            .is_some_and(|list| list.iter().any(|s| s["step"].as_i64() == Some(step))))
    }

    /// Clones the project's repository on the server as the deploy user, with a clone-scoped
    /// token minted for this one use: it travels over the SSH channel's stdin, reaches git
    /// through a credential helper reading the environment, and is stored nowhere (the
    /// checkout's remote carries no credential). Safe to repeat: an existing checkout is
    /// fetched instead.
    async fn check_out(&self, op_id: &str, server: &ServerRow) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        self.mark(
            op_id,
            Step::RepositoryCheckedOut,
            St::Running,
            "cloning the repository",
        )
        .await?;
        let minted = self
            .broker()
            .mint_repository_token(broker::MintRepositoryTokenRequest {
                scope: broker::RepositoryTokenScope::Clone as i32,
                project_id: server.project_id.clone(),
            })
            .await?
            .into_inner();
        let token = SecretString::from(minted.token);
        let repository = minted.repositories.first().cloned().ok_or_else(|| {
            StepError::Final(Status::failed_precondition(
                "the broker minted a clone token for no repository",
            ))
        })?;
        // GitHub's own naming rules: nothing else reaches the URL or the checkout's path.
        let repository = orchestrator_github::RepoRef::new(&repository.owner, &repository.name)
            .map_err(|e| StepError::Final(Status::failed_precondition(e.to_string())))?;
        let url = format!(
            "{}/{}/{}.git",
            self.git_url,
            repository.owner(),
            repository.name()
        );
        let stdin = checkout_stdin(&token, &url, repository.name());
        let session = self.admin_session(server).await?;
        let command = format!("sudo -u {} -H bash -s", server.deploy_user);
        let output = session
            .run(&command, stdin.as_bytes())
            .await
            .map_err(ssh_error)?;
        session.close().await;
        if !output.success() {
            return Err(StepError::Final(with_reason(
                tonic::Code::FailedPrecondition,
                "CHECKOUT_FAILED",
                format!(
                    "cloning {url} on the server failed: {}",
                    tail(&output.stderr)
                ),
                &[],
            )));
        }
        self.mark(
            op_id,
            Step::RepositoryCheckedOut,
            St::Done,
            &format!(
                "{}/{} in ~{}/{}",
                repository.owner(),
                repository.name(),
                server.deploy_user,
                repository.name()
            ),
        )
        .await?;
        Ok(())
    }

    /// Logs in as soon as the server answers, within the readiness deadline: a refused
    /// connection or login while it boots is retried, a wrong host key never is. Root refused
    /// on first contact is returned at once (see [`Self::take_over`]).
    async fn ssh_when_up(&self, target: &Target) -> Result<Session, SshError> {
        let deadline = Instant::now() + self.ready_timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            match orchestrator_ssh::connect(target, &self.admin_key, Duration::from_secs(30)).await
            {
                Ok(session) => return Ok(session),
                // Root refused on first contact is not a boot delay (see `take_over`).
                Err(e @ SshError::AuthRefused { .. })
                    if target.host_key == HostKey::LearnOnFirstUse =>
                {
                    return Err(e);
                }
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "server not answering over SSH yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The admin account on `server`, under its pinned host key, as soon as it answers.
    async fn admin_session(&self, server: &ServerRow) -> Result<Session, StepError> {
        let target = Target {
            host: server.ipv4.clone().unwrap_or_default(),
            port: self.ssh_port,
            user: keys::ADMIN_USER.to_owned(),
            host_key: HostKey::Pinned(server.host_public_key.clone().unwrap_or_default()),
        };
        self.ssh_when_up(&target)
            .await
            .map_err(|e| self.not_ready(e))
    }

    /// A login that did not happen within the readiness deadline, or was refused for good.
    fn not_ready(&self, e: SshError) -> StepError {
        if e.is_transient() && !matches!(e, SshError::AuthRefused { .. }) {
            StepError::Final(with_reason(
                tonic::Code::DeadlineExceeded,
                "SERVER_NOT_READY",
                format!("{e} (gave up after {:?})", self.ready_timeout),
                &[],
            ))
        } else {
            ssh_error(e)
        }
    }

    async fn set_dns(&self, op_id: &str, server: &mut ServerRow) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        if server.dns_record_id.is_some() {
            return Ok(());
        }
        let ip = server.ipv4.clone().unwrap_or_default();
        match self.cloudflare(server).await? {
            Some((cf, zone)) => {
                self.mark(
                    op_id,
                    Step::DnsRecordSet,
                    St::Running,
                    "setting the A record",
                )
                .await?;
                let zone_id = cf.zone_id(&zone).await?;
                let record = cf.upsert_a_record(&zone_id, &server.hostname, &ip).await?;
                self.set_server(&server.id, Column::DnsRecordId, &record)
                    .await?;
                server.dns_record_id = Some(record);
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
                    "no DNS zone configured",
                )
                .await?
            }
        }
        Ok(())
    }

    /// Host, user and the pinned host key: the workflow can now deploy.
    async fn hand_over_host(&self, op_id: &str, server: &ServerRow) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        self.mark(
            op_id,
            Step::DeployCredentialsHandedOver,
            St::Running,
            "handing over the deploy credentials",
        )
        .await?;
        let ip = server.ipv4.clone().unwrap_or_default();
        let host_public = server.host_public_key.clone().unwrap_or_default();
        let known_hosts = format!(
            "{}{}",
            keys::known_hosts(&server.hostname, &host_public),
            keys::known_hosts(&ip, &host_public)
        );
        let host = if self.cf_zone.is_some() {
            server.hostname.clone()
        } else {
            ip.clone()
        };
        self.broker()
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
        Ok(())
    }

    /// Ready when the admin account gets in under the pinned host key and cloud-init says it
    /// is done (DigitalOcean); a Time4VPS takeover script checked its own result.
    async fn check_ready(&self, op_id: &str, server: &ServerRow) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        if server.provider == Provider::Time4Vps {
            return Ok(self
                .mark(
                    op_id,
                    Step::ServerReady,
                    St::Done,
                    "takeover finished: deploy user set up, root login off",
                )
                .await?);
        }
        self.mark(
            op_id,
            Step::ServerReady,
            St::Running,
            "waiting for cloud-init",
        )
        .await?;
        let session = self.admin_session(server).await?;
        let output = session
            .run("cloud-init status --wait", b"")
            .await
            .map_err(ssh_error)?;
        session.close().await;
        let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.success() || !said.contains("status: done") {
            return Err(StepError::Final(with_reason(
                tonic::Code::FailedPrecondition,
                "CLOUD_INIT_FAILED",
                format!(
                    "cloud-init on {} did not finish: {said} {}",
                    server.ipv4.as_deref().unwrap_or_default(),
                    tail(&output.stderr)
                ),
                &[],
            )));
        }
        self.mark(
            op_id,
            Step::ServerReady,
            St::Done,
            "cloud-init done; the admin key and the pinned host key work",
        )
        .await?;
        Ok(())
    }

    /// Hands a deploy key's private half to the broker (DEPLOY_SSH_KEY); infra keeps none.
    async fn send_private_key(
        &self,
        op_id: &str,
        server: &ServerRow,
        deploy: &keys::KeyPair,
    ) -> Result<(), StepError> {
        self.broker()
            .set_deploy_credentials(broker::SetDeployCredentialsRequest {
                // Per key: a retry with the same key is one write, a new key another.
                request_id: format!("{op_id}-key-{}", &deploy.fingerprint[7..15]),
                project_id: server.project_id.clone(),
                credentials: Some(broker::DeployCredentials {
                    ssh_private_key: deploy.private_openssh.expose_secret().as_bytes().to_vec(),
                    ..Default::default()
                }),
                server_id: server.id.clone(),
            })
            .await?;
        Ok(())
    }

    /// A new deploy key, authorized next to the old one, handed to the broker, then the only
    /// one. Started over from the top after any interruption: a key whose private half was lost
    /// is harmless (nobody holds it) and the revocation leaves exactly the newest key.
    async fn rotate(&self, op_id: &str, server: ServerRow) -> Result<(), StepError> {
        use pb::OperationStep as Step;
        use pb::OperationStepState as St;
        self.still_wanted(&server.id).await?;
        self.mark(
            op_id,
            Step::DeployKeyAuthorized,
            St::Running,
            "authorizing a new deploy key",
        )
        .await?;
        let deploy = keys::generate(&format!("deploy@{}", server.hostname))
            .map_err(|e| StepError::Final(Status::internal(e.to_string())))?;
        let line = format!(
            "{}\n",
            keys::normalized(&deploy.public_openssh)
                .map_err(|e| StepError::Final(Status::internal(e.to_string())))?
        );
        let session = self.admin_session(&server).await?;
        let edit = |what: &'static str, output: orchestrator_ssh::Output| {
            if output.success() {
                Ok(())
            } else {
                Err(StepError::Final(with_reason(
                    tonic::Code::FailedPrecondition,
                    "ROTATION_FAILED",
                    format!("{what} failed on the server: {}", tail(&output.stderr)),
                    &[],
                )))
            }
        };
        let output = session
            .run(
                &keys::authorize_command(&server.deploy_user),
                line.as_bytes(),
            )
            .await
            .map_err(ssh_error)?;
        edit("authorizing the new key", output)?;
        self.mark(
            op_id,
            Step::DeployKeyAuthorized,
            St::Done,
            &deploy.fingerprint,
        )
        .await?;
        self.still_wanted(&server.id).await?;
        self.mark(
            op_id,
            Step::DeployCredentialsHandedOver,
            St::Running,
            "handing the new key to the broker",
        )
        .await?;
        self.send_private_key(op_id, &server, &deploy).await?;
        self.mark(
            op_id,
            Step::DeployCredentialsHandedOver,
            St::Done,
            "DEPLOY_SSH_KEY",
        )
        .await?;
        self.mark(
            op_id,
            Step::OldDeployKeysRevoked,
            St::Running,
            "revoking the older keys",
        )
        .await?;
        let output = session
            .run(
                &keys::replace_keys_command(&server.deploy_user),
                line.as_bytes(),
            )
            .await
            .map_err(ssh_error)?;
        session.close().await;
        edit("revoking the older keys", output)?;
        self.set_server(&server.id, Column::DeployPublicKey, &deploy.public_openssh)
            .await?;
        self.mark(
            op_id,
            Step::OldDeployKeysRevoked,
            St::Done,
            &format!("only {} is authorized", deploy.fingerprint),
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
        // A provision still running stops at its next step; then whatever it made goes, a
        // droplet too whose id it never recorded (found by the provision's tag).
        let provision = self.provision_of(&server.id).await?;
        if let Some((_, false)) = provision {
            return Err(StepError::Transient(
                "waiting for the provision to stop at its next step".to_owned(),
            ));
        }
        let provision_op = provision.map(|(id, _)| id).unwrap_or_default();
        let spec = self.server_spec(&provision_op, &server);
        let released = match (server.provider, server.provider_server_id.as_deref()) {
            (Provider::DigitalOcean, Some(id)) => {
                Some(self.digitalocean(&server).await?.release(id, &spec).await?)
            }
            (Provider::DigitalOcean, None) => {
                let digitalocean = self.digitalocean(&server).await?;
                match digitalocean.find(&spec).await? {
                    Some(made) => Some(digitalocean.release(&made.id, &spec).await?),
                    None => None,
                }
            }
            (Provider::Time4Vps, Some(id)) => {
                Some(self.time4vps(&server).await?.release(id, &spec).await?)
            }
            (Provider::Time4Vps, None) => None,
        };
        let (state, detail) = match (released, server.provider) {
            (None, _) => (St::Skipped, "no server was created"),
            (Some(false), _) => (St::Done, "already gone"),
            (Some(true), Provider::DigitalOcean) => (St::Done, "deleted"),
            // A server bought in advance stays bought, wiped of the project and its keys.
            (Some(true), Provider::Time4Vps) => (St::Done, "wiped by a reinstall; it stays bought"),
        };
        self.mark(op_id, Step::ServerDeleted, state, detail).await?;
        match self.cloudflare(&server).await? {
            Some((cf, zone)) => {
                let zone_id = cf.zone_id(&zone).await?;
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
                    "no DNS zone configured",
                )
                .await?
            }
        }
        self.finish(op_id, &server.id, None, "destroyed").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn git(dir: &std::path::Path, args: &[&str]) {
        let ok = Command::new("git")
            .current_dir(dir)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "git {args:?}");
    }

    /// The checkout script, run by a real bash and git: it clones, keeps no credential, runs
    /// again as a fetch, and its credential helper answers with the token from stdin.
    #[test]
    fn the_checkout_clones_keeps_no_token_and_repeats() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(origin.join("compose.yaml"), "services: {}\n").unwrap();
        git(&origin, &["add", "."]);
        git(
            &origin,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-m",
                "first",
            ],
        );
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let token = SecretString::from("ghs_canary_clone_token_0123456789".to_owned());
        let url = format!("file://{}", origin.display());
        let run = |stdin: &str| {
            let mut child = Command::new("bash")
                .arg("-s")
                .env("HOME", &home)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        };
        let stdin = checkout_stdin(&token, &url, "app");
        assert_eq!(stdin.lines().nth(2), Some(token.expose_secret()));
        run(&stdin);
        assert!(home.join("app/compose.yaml").exists());
        run(&stdin); // again: a fetch, not a failed clone
        let config = std::fs::read_to_string(home.join("app/.git/config")).unwrap();
        assert!(!config.contains("ghs_canary"), "{config}");
        // The helper hands git the token read from stdin (what an HTTPS clone would send).
        let head = &stdin[..stdin.find("if [ -d").unwrap()];
        let probe = format!(
            "{head}printf 'protocol=https\\nhost=github.com\\n\\n' | git_ credential fill\n"
        );
        let out = run(&probe);
        let answer = String::from_utf8(out.stdout).unwrap();
        assert!(answer.contains("username=x-access-token"), "{answer}");
        assert!(
            answer.contains(&format!("password={}", token.expose_secret())),
            "{answer}"
        );
    }
}
