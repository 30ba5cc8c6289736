//! The gRPC surface of infra: operations accepted at once and run in the background.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_audit::{Entry, Ledger};
use orchestrator_mesh::caller;
use orchestrator_mesh::status::{Violations, with_reason};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1::{self as pb, infra_service_server::InfraService};
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_proto::timestamp as ts;
use orchestrator_proto::vault::v1 as vault;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use orchestrator_ssh::AdminKey;
use orchestrator_store::random_hex;
use orchestrator_store::{Database, StoreError};
use secrecy::SecretString;
use sqlx::Row;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::now_us;
use crate::ops::{DESTROY, ROTATE, initial_steps, provision_steps};

#[derive(Debug)]
pub struct Infra {
    pub db: Database,
    pub ledger: Ledger,
    pub self_id: String,
    /// The broker (deploy credentials) and the vault (users' keys): one channel each,
    /// connected on first use and reconnected as needed.
    pub broker: Channel,
    pub vault: Channel,
    pub do_url: String,
    pub do_token: Option<SecretString>,
    pub t4_url: String,
    /// The platform's Time4VPS account: user and password.
    pub t4_login: Option<(String, SecretString)>,
    pub t4_default_os: String,
    pub cf_url: String,
    pub cf_token: Option<SecretString>,
    /// The Cloudflare zone for servers' A records; `None` = no DNS step.
    pub cf_zone: Option<String>,
    /// The orchestrator's admin key (L1): installed on servers, used for readiness checks
    /// and Time4VPS takeovers; it never leaves infra.
    pub admin_key: AdminKey,
    /// The port servers' SSH daemons listen on.
    pub ssh_port: u16,
    /// How long a new server may take to become ready (cloud-init, reinstall, takeover).
    pub ready_timeout: Duration,
    /// Where servers clone repositories from (`https://github.com`).
    pub git_url: String,
}

pub fn store(e: sqlx::Error) -> Status {
    StoreError::from(e).into()
}

/// Where a server lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    DigitalOcean,
    Time4Vps,
}

impl Provider {
    fn as_str(self) -> &'static str {
        match self {
            Provider::DigitalOcean => "digitalocean",
            Provider::Time4Vps => "time4vps",
        }
    }

    fn pb(self) -> pb::Provider {
        match self {
            Provider::DigitalOcean => pb::Provider::Digitalocean,
            Provider::Time4Vps => pb::Provider::Time4vps,
        }
    }
}

/// Where a server's provider (or DNS) token comes from.
#[derive(Debug, Clone)]
pub enum Creds {
    Platform,
    UserVault { user_id: String, key: String },
}

#[derive(Debug, Clone)]
pub struct ServerRow {
    pub id: String,
    pub project_id: String,
    pub provider: Provider,
    pub state: String,
    pub hostname: String,
    pub provider_server_id: Option<String>,
    pub ipv4: Option<String>,
    pub region: String,
    pub size: String,
    pub image: String,
    pub deploy_user: String,
    pub deploy_public_key: Option<String>,
    pub host_public_key: Option<String>,
    pub dns_record_id: Option<String>,
    /// A Time4VPS reinstall infra started (and may still be waiting for).
    pub provider_task_id: Option<String>,
    pub credentials: Creds,
    pub dns_credentials: Creds,
    pub operation_id: String,
    pub created_us: i64,
    pub updated_us: i64,
    pub ready_us: Option<i64>,
    pub destroyed_us: Option<i64>,
}

impl ServerRow {
    /// Whether the provider was asked for the server (a droplet exists, or our reinstall was
    /// accepted): from then on a retry waits for it instead of asking again.
    pub fn started(&self) -> bool {
        match self.provider {
            Provider::DigitalOcean => self.provider_server_id.is_some(),
            Provider::Time4Vps => self.provider_task_id.is_some(),
        }
    }
}

fn creds_json(c: &Creds) -> String {
    match c {
        Creds::Platform => serde_json::json!({ "platform": {} }).to_string(),
        Creds::UserVault { user_id, key } => {
            serde_json::json!({ "user_vault": { "user_id": user_id, "key": key } }).to_string()
        }
    }
}

fn creds_from_json(s: &str) -> Creds {
    let v: serde_json::Value = serde_json::from_str(s).unwrap_or_default();
    match v.get("user_vault") {
        Some(u) => Creds::UserVault {
            user_id: u["user_id"].as_str().unwrap_or_default().to_owned(),
            key: u["key"].as_str().unwrap_or_default().to_owned(),
        },
        None => Creds::Platform,
    }
}

/// A credential source from the request; a vault reference needs both its parts.
fn credential_source(
    v: &mut Violations,
    field: &str,
    source: Option<&pb::CredentialSource>,
) -> Creds {
    match source.and_then(|c| c.source.clone()) {
        Some(pb::credential_source::Source::UserVault(u)) => {
            v.check(
                !u.user_id.is_empty() && !u.key.is_empty(),
                format!("{field}.user_vault"),
                "user_id and key are required",
            );
            Creds::UserVault {
                user_id: u.user_id,
                key: u.key,
            }
        }
        _ => Creds::Platform,
    }
}

fn valid_hostname(h: &str) -> bool {
    (1..=253).contains(&h.len())
        && h.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl Infra {
    /// A client on the one (lazily connecting) channel to the broker.
    pub fn broker(&self) -> SecretBrokerServiceClient<Channel> {
        SecretBrokerServiceClient::new(self.broker.clone())
    }

    /// A user's provider key from the vault, for one call; never stored or logged.
    pub async fn user_secret(&self, user_id: &str, key: &str) -> Result<SecretString, Status> {
        let secret = VaultServiceClient::new(self.vault.clone())
            .get_user_secret(vault::GetUserSecretRequest {
                user_id: user_id.to_owned(),
                key: key.to_owned(),
                version: 0,
            })
            .await?
            .into_inner()
            .secret
            .ok_or_else(|| Status::internal("the vault answered without a secret"))?;
        let value = zeroize::Zeroizing::new(secret.value);
        let text = std::str::from_utf8(&value)
            .map_err(|_| Status::failed_precondition("the user's provider key is not text"))?;
        Ok(SecretString::from(text.trim().to_owned()))
    }

    pub async fn server(&self, id: &str) -> Result<ServerRow, Status> {
        let r = sqlx::query("SELECT * FROM servers WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store)?
            .ok_or_else(|| Status::not_found(format!("no server `{id}`")))?;
        let s = |c: &str| r.try_get::<String, _>(c).map_err(store);
        let o = |c: &str| r.try_get::<Option<String>, _>(c).map_err(store);
        Ok(ServerRow {
            id: s("id")?,
            project_id: s("project_id")?,
            provider: if s("provider")? == "time4vps" {
                Provider::Time4Vps
            } else {
                Provider::DigitalOcean
            },
            state: s("state")?,
            hostname: s("hostname")?,
            provider_server_id: o("provider_server_id")?,
            ipv4: o("ipv4")?,
            region: s("region")?,
            size: s("size")?,
            image: s("image")?,
            deploy_user: s("deploy_user")?,
            deploy_public_key: o("deploy_public_key")?,
            host_public_key: o("host_public_key")?,
            dns_record_id: o("dns_record_id")?,
            provider_task_id: o("provider_task_id")?,
            credentials: creds_from_json(&s("provider_credentials")?),
            dns_credentials: creds_from_json(&s("dns_credentials")?),
            operation_id: s("operation_id")?,
            created_us: r.try_get("created_us").map_err(store)?,
            updated_us: r.try_get("updated_us").map_err(store)?,
            ready_us: r.try_get("ready_us").map_err(store)?,
            destroyed_us: r.try_get("destroyed_us").map_err(store)?,
        })
    }

    pub async fn operation(&self, id: &str) -> Result<pb::Operation, Status> {
        let r = sqlx::query("SELECT * FROM operations WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store)?
            .ok_or_else(|| Status::not_found(format!("no operation `{id}`")))?;
        let steps: serde_json::Value =
            serde_json::from_str(&r.try_get::<String, _>("steps").map_err(store)?)
                .unwrap_or_default();
        let steps = steps
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| pb::OperationStepStatus {
                step: s["step"].as_i64().unwrap_or_default() as i32,
                state: s["state"].as_i64().unwrap_or_default() as i32,
                detail: s["detail"].as_str().unwrap_or_default().to_owned(),
                start_time: s["start_us"].as_i64().map(ts),
                end_time: s["end_us"].as_i64().map(ts),
            })
            .collect();
        let state = match r.try_get::<String, _>("state").map_err(store)?.as_str() {
            "pending" => pb::OperationState::Pending,
            "succeeded" => pb::OperationState::Succeeded,
            "failed" => pb::OperationState::Failed,
            _ => pb::OperationState::Running,
        };
        let error = r
            .try_get::<Option<String>, _>("error")
            .map_err(store)?
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(&e).unwrap_or_default();
                common::Failure {
                    code: v["code"].as_i64().unwrap_or(2) as i32,
                    reason: v["reason"].as_str().unwrap_or_default().to_owned(),
                    message: v["message"].as_str().unwrap_or_default().to_owned(),
                    metadata: v["metadata"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect(),
                }
            });
        Ok(pb::Operation {
            id: r.try_get("id").map_err(store)?,
            kind: match r.try_get::<String, _>("kind").map_err(store)?.as_str() {
                "destroy" => pb::OperationKind::Destroy,
                "rotate" => pb::OperationKind::RotateDeployKey,
                _ => pb::OperationKind::Provision,
            } as i32,
            server_id: r.try_get("server_id").map_err(store)?,
            project_id: r.try_get("project_id").map_err(store)?,
            state: state as i32,
            steps,
            status_message: r.try_get("message").map_err(store)?,
            error,
            request_id: r
                .try_get::<Option<String>, _>("request_id")
                .map_err(store)?
                .unwrap_or_default(),
            create_time: Some(ts(r.try_get("created_us").map_err(store)?)),
            update_time: Some(ts(r.try_get("updated_us").map_err(store)?)),
            end_time: r
                .try_get::<Option<i64>, _>("ended_us")
                .map_err(store)?
                .map(ts),
        })
    }

    fn server_pb(&self, s: &ServerRow) -> pb::Server {
        let state = match s.state.as_str() {
            "ready" => pb::ServerState::Ready,
            "failed" => pb::ServerState::Failed,
            "destroying" => pb::ServerState::Destroying,
            "destroyed" => pb::ServerState::Destroyed,
            _ => pb::ServerState::Provisioning,
        };
        let source = |c: &Creds| pb::CredentialSource {
            source: Some(match c {
                Creds::Platform => {
                    pb::credential_source::Source::Platform(pb::PlatformCredential {})
                }
                Creds::UserVault { user_id, key } => {
                    pb::credential_source::Source::UserVault(common::VaultEntryRef {
                        user_id: user_id.clone(),
                        key: key.clone(),
                        version: 0,
                    })
                }
            }),
        };
        let fp = |k: &Option<String>| {
            k.as_deref()
                .and_then(|k| orchestrator_deploy_keys::fingerprint(k).ok())
                .unwrap_or_default()
        };
        pb::Server {
            id: s.id.clone(),
            project_id: s.project_id.clone(),
            provider: s.provider.pb() as i32,
            provider_server_id: s.provider_server_id.clone().unwrap_or_default(),
            state: state as i32,
            hostname: s.hostname.clone(),
            ipv4_address: s.ipv4.clone().unwrap_or_default(),
            ipv6_address: String::new(),
            region: s.region.clone(),
            size: s.size.clone(),
            image: s.image.clone(),
            deploy_user: s.deploy_user.clone(),
            deploy_key_fingerprint: fp(&s.deploy_public_key),
            host_key_fingerprint: fp(&s.host_public_key),
            provider_credentials: Some(source(&s.credentials)),
            dns_credentials: Some(source(&s.dns_credentials)),
            operation_id: s.operation_id.clone(),
            create_time: Some(ts(s.created_us)),
            update_time: Some(ts(s.updated_us)),
            ready_time: s.ready_us.map(ts),
            destroy_time: s.destroyed_us.map(ts),
        }
    }

    /// Operations an earlier process left unfinished: picked up at start.
    pub async fn unfinished(&self) -> Result<Vec<String>, Status> {
        let rows = sqlx::query("SELECT id FROM operations WHERE state IN ('pending', 'running')")
            .fetch_all(self.db.pool())
            .await
            .map_err(store)?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(store))
            .collect()
    }
}

/// The gRPC service: a handle on the shared state (background operations hold one too).
#[derive(Debug, Clone)]
pub struct Api(pub Arc<Infra>);

impl std::ops::Deref for Api {
    type Target = Infra;
    fn deref(&self) -> &Infra {
        &self.0
    }
}

type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl InfraService for Api {
    type WatchOperationStream = BoxStream<pb::WatchOperationResponse>;

    async fn provision_server(
        &self,
        request: Request<pb::ProvisionServerRequest>,
    ) -> Result<Response<pb::ProvisionServerResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        v.check(
            (1..=128).contains(&req.request_id.len()),
            "request_id",
            "required, 1-128 characters",
        );
        v.check(
            (1..=128).contains(&req.project_id.len()),
            "project_id",
            "required",
        );
        v.check(
            valid_hostname(&req.hostname),
            "hostname",
            "a lowercase DNS name",
        );
        if let Some(zone) = &self.cf_zone {
            v.check(
                req.hostname == *zone || req.hostname.ends_with(&format!(".{zone}")),
                "hostname",
                format!("must be inside the DNS zone `{zone}`"),
            );
        }
        let provider = match pb::Provider::try_from(req.provider) {
            Ok(pb::Provider::Digitalocean) => Some(Provider::DigitalOcean),
            Ok(pb::Provider::Time4vps) => Some(Provider::Time4Vps),
            _ => None,
        };
        v.check(provider.is_some(), "provider", "DIGITALOCEAN or TIME4VPS");
        // What the server row records: DigitalOcean's region/size/image; Time4VPS's server id and OS.
        let (region, size, image, provider_server_id) = match (&req.spec, provider) {
            (
                Some(pb::provision_server_request::Spec::Digitalocean(d)),
                Some(Provider::DigitalOcean),
            ) => {
                v.check(
                    !d.region.is_empty() && !d.size.is_empty() && !d.image.is_empty(),
                    "digitalocean",
                    "region, size and image are required",
                );
                (d.region.clone(), d.size.clone(), d.image.clone(), None)
            }
            (Some(pb::provision_server_request::Spec::Time4vps(t)), Some(Provider::Time4Vps)) => {
                v.check(
                    t.server_id > 0,
                    "time4vps.server_id",
                    "the id of a server bought in advance",
                );
                let os = if t.os.is_empty() {
                    self.t4_default_os.clone()
                } else {
                    t.os.clone()
                };
                v.check(
                    os.len() <= 128
                        && os
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                    "time4vps.os",
                    "an OS template name such as kvm-ubuntu-24.04-gpt-x86_64",
                );
                (
                    String::new(),
                    String::new(),
                    os,
                    Some(t.server_id.to_string()),
                )
            }
            _ => {
                v.check(
                    false,
                    "spec",
                    "the spec must match the provider (digitalocean or time4vps)",
                );
                Default::default()
            }
        };
        let deploy_user = if req.deploy_user.is_empty() {
            "deploy".to_owned()
        } else {
            req.deploy_user.clone()
        };
        v.check(
            orchestrator_deploy_keys::valid_user(&deploy_user)
                && deploy_user != orchestrator_deploy_keys::ADMIN_USER,
            "deploy_user",
            "1-32 of [a-z0-9_-] starting with a letter; not root or the admin account",
        );
        let creds = credential_source(
            &mut v,
            "provider_credentials",
            req.provider_credentials.as_ref(),
        );
        let dns_creds = credential_source(&mut v, "dns_credentials", req.dns_credentials.as_ref());
        v.finish()?;
        // Fail at once, not in the background, when the platform credential asked for is not there.
        let provider = provider.unwrap_or(Provider::DigitalOcean);
        let platform_missing = match provider {
            Provider::DigitalOcean => self.do_token.is_none().then_some("DIGITALOCEAN_TOKEN"),
            Provider::Time4Vps => self
                .t4_login
                .is_none()
                .then_some("TIME4VPS_USER and TIME4VPS_PASSWORD"),
        };
        if let (Creds::Platform, Some(missing)) = (&creds, platform_missing) {
            return Err(with_reason(
                Code::FailedPrecondition,
                "PROVIDER_NOT_CONFIGURED",
                format!(
                    "infra has no platform credential for {} ({missing}); pass the user's own key in provider_credentials",
                    provider.as_str()
                ),
                &[],
            ));
        }
        if self.cf_zone.is_none() && matches!(dns_creds, Creds::UserVault { .. }) {
            return Err(with_reason(
                Code::FailedPrecondition,
                "DNS_NOT_CONFIGURED",
                "infra has no DNS zone (CLOUDFLARE_ZONE): dns_credentials cannot be used",
                &[],
            ));
        }
        if let Some(existing) = sqlx::query("SELECT id FROM operations WHERE request_id = $1")
            .bind(&req.request_id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store)?
        {
            let id: String = existing.try_get("id").map_err(store)?;
            let operation = self.operation(&id).await?;
            let earlier = self.server(&operation.server_id).await?;
            let same = earlier.project_id == req.project_id
                && earlier.provider == provider
                && earlier.hostname == req.hostname
                && earlier.deploy_user == deploy_user
                && earlier.image == image
                && earlier.region == region
                && earlier.size == size
                && (provider_server_id.is_none()
                    || earlier.provider_server_id == provider_server_id);
            if !same {
                let mut v = Violations::new();
                v.add("request_id", "already used for a different request");
                v.finish()?;
            }
            return Ok(Response::new(pb::ProvisionServerResponse {
                operation: Some(operation),
            }));
        }
        let (op_id, server_id) = (
            format!("op-{}", random_hex(8)),
            format!("srv-{}", random_hex(8)),
        );
        let (o2, s2) = (op_id.clone(), server_id.clone());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    // One live server per hostname: its A record and DEPLOY_HOST are that server's.
                    if let Some(other) = sqlx::query("SELECT id FROM servers WHERE hostname = $1 AND state <> 'destroyed'")
                        .bind(&req.hostname)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(store)?
                    {
                        let other: String = other.try_get("id").map_err(store)?;
                        return Err(with_reason(
                            Code::AlreadyExists,
                            "HOSTNAME_IN_USE",
                            format!("{} is already the hostname of server {other}; destroy it first", req.hostname),
                            &[],
                        ));
                    }
                    // A Time4VPS server serves one project at a time.
                    if let Some(id) = &provider_server_id
                        && let Some(other) = sqlx::query("SELECT id FROM servers WHERE provider = 'time4vps' AND provider_server_id = $1 AND state <> 'destroyed'")
                            .bind(id)
                            .fetch_optional(&mut *conn)
                            .await
                            .map_err(store)?
                    {
                        let other: String = other.try_get("id").map_err(store)?;
                        return Err(with_reason(
                            Code::FailedPrecondition,
                            "SERVER_IN_USE",
                            format!("Time4VPS server {id} is already taken over as {other}; destroy that first"),
                            &[],
                        ));
                    }
                    sqlx::query(
                        "INSERT INTO servers (id, project_id, provider, provider_server_id, state, hostname, region, size, image, deploy_user, provider_credentials, dns_credentials, operation_id, created_us, updated_us) \
                         VALUES ($1, $2, $3, $4, 'provisioning', $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
                    )
                    .bind(&s2)
                    .bind(&req.project_id)
                    .bind(provider.as_str())
                    .bind(&provider_server_id)
                    .bind(&req.hostname)
                    .bind(&region)
                    .bind(&size)
                    .bind(&image)
                    .bind(&deploy_user)
                    .bind(creds_json(&creds))
                    .bind(creds_json(&dns_creds))
                    .bind(&o2)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(store)?;
                    sqlx::query(
                        "INSERT INTO operations (id, request_id, kind, server_id, project_id, state, steps, message, created_us, updated_us) \
                         VALUES ($1, $2, 'provision', $3, $4, 'pending', $5, 'accepted', $6, $6)",
                    )
                    .bind(&o2)
                    .bind(&req.request_id)
                    .bind(&s2)
                    .bind(&req.project_id)
                    .bind(initial_steps(&provision_steps(req.checkout_repository)))
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| match StoreError::from(e) {
                        StoreError::Conflict(_) => with_reason(Code::Aborted, "CONCURRENT_REQUEST", "the same request_id is being accepted concurrently; retry", &[]),
                        other => other.into(),
                    })?;
                    let entry = Entry::new(&caller, "/orchestrator.infra.v1.InfraService/ProvisionServer", format!("servers/{s2}"))
                        .request_id(&req.request_id)
                        .detail(format!("operation {o2} host {}", req.hostname));
                    Ok(((), vec![entry]))
                })
            })
            .await?;
        let infra = self.0.clone();
        let id = op_id.clone();
        tokio::spawn(async move { infra.run(id).await });
        Ok(Response::new(pb::ProvisionServerResponse {
            operation: Some(self.operation(&op_id).await?),
        }))
    }

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let id = request.into_inner().operation_id;
        let first = self.operation(&id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let infra = self.0.clone();
        tokio::spawn(async move {
            let mut last = first.update_time;
            let mut current = first;
            loop {
                let terminal = current.state == pb::OperationState::Succeeded as i32
                    || current.state == pb::OperationState::Failed as i32;
                if tx
                    .send(Ok(pb::WatchOperationResponse {
                        operation: Some(current.clone()),
                    }))
                    .await
                    .is_err()
                    || terminal
                {
                    return;
                }
                // Poll for the next change: every replica's progress lands in the database.
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match infra.operation(&id).await {
                        Ok(op) if op.update_time != last => {
                            last = op.update_time;
                            current = op;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                    if tx.is_closed() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        Ok(Response::new(pb::GetOperationResponse {
            operation: Some(self.operation(&request.into_inner().operation_id).await?),
        }))
    }

    async fn get_server(
        &self,
        request: Request<pb::GetServerRequest>,
    ) -> Result<Response<pb::GetServerResponse>, Status> {
        let server = self.server(&request.into_inner().server_id).await?;
        Ok(Response::new(pb::GetServerResponse {
            server: Some(self.server_pb(&server)),
        }))
    }

    async fn list_servers(
        &self,
        request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.check(req.page_size >= 0, "page_size", "must not be negative");
        // The token is where the previous page ended: `<created_us>.<id>` (newest first).
        let after = if req.page_token.is_empty() {
            Some((i64::MAX, String::new()))
        } else {
            req.page_token
                .split_once('.')
                .and_then(|(us, id)| Some((us.parse::<i64>().ok()?, id.to_owned())))
        };
        v.check(
            after.is_some(),
            "page_token",
            "not a token this service issued",
        );
        let provider = match pb::Provider::try_from(req.provider) {
            Ok(pb::Provider::Digitalocean) => Provider::DigitalOcean.as_str(),
            Ok(pb::Provider::Time4vps) => Provider::Time4Vps.as_str(),
            Ok(pb::Provider::Unspecified) => "",
            Err(_) => {
                v.add("provider", "unknown provider");
                ""
            }
        };
        v.finish()?;
        let (before_us, before_id) = after.unwrap_or_default();
        let page = if req.page_size == 0 {
            50
        } else {
            i64::from(req.page_size).min(1000)
        };
        let rows = sqlx::query(
            "SELECT id, created_us FROM servers \
             WHERE ($1 = '' OR project_id = $1) AND ($2 = '' OR provider = $2) AND ($3 = 1 OR state <> 'destroyed') \
             AND (created_us < $4 OR (created_us = $4 AND $5 <> '' AND id < $5)) \
             ORDER BY created_us DESC, id DESC LIMIT $6",
        )
        .bind(&req.project_id)
        .bind(provider)
        .bind(i64::from(req.show_destroyed))
        .bind(before_us)
        .bind(&before_id)
        .bind(page + 1)
        .fetch_all(self.db.pool())
        .await
        .map_err(store)?;
        let mut servers = Vec::new();
        for row in rows.iter().take(page as usize) {
            servers.push(
                self.server_pb(
                    &self
                        .server(&row.try_get::<String, _>("id").map_err(store)?)
                        .await?,
                ),
            );
        }
        let next_page_token = match rows.get(page as usize - 1) {
            Some(last) if rows.len() as i64 > page => format!(
                "{}.{}",
                last.try_get::<i64, _>("created_us").map_err(store)?,
                last.try_get::<String, _>("id").map_err(store)?
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListServersResponse {
            servers,
            next_page_token,
        }))
    }

    async fn destroy_server(
        &self,
        request: Request<pb::DestroyServerRequest>,
    ) -> Result<Response<pb::DestroyServerResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let server = self.server(&request.into_inner().server_id).await?;
        // Idempotent: a destroy already running or done is returned as it is.
        if let Some(existing) = sqlx::query("SELECT id FROM operations WHERE server_id = $1 AND kind = 'destroy' ORDER BY created_us DESC LIMIT 1")
            .bind(&server.id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store)?
        {
            let id: String = existing.try_get("id").map_err(store)?;
            return Ok(Response::new(pb::DestroyServerResponse { operation: Some(self.operation(&id).await?) }));
        }
        let op_id = format!("op-{}", random_hex(8));
        let (o2, s2, p2) = (op_id.clone(), server.id.clone(), server.project_id.clone());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    sqlx::query("INSERT INTO operations (id, kind, server_id, project_id, state, steps, message, created_us, updated_us) VALUES ($1, 'destroy', $2, $3, 'pending', $4, 'accepted', $5, $5)")
                        .bind(&o2)
                        .bind(&s2)
                        .bind(&p2)
                        .bind(initial_steps(&DESTROY))
                        .bind(now)
                        .execute(&mut *conn)
                        .await
                        .map_err(store)?;
                    sqlx::query("UPDATE servers SET state = 'destroying', updated_us = $2 WHERE id = $1").bind(&s2).bind(now).execute(&mut *conn).await.map_err(store)?;
                    Ok::<_, Status>(((), vec![Entry::new(&caller, "/orchestrator.infra.v1.InfraService/DestroyServer", format!("servers/{s2}")).detail(format!("operation {o2}"))]))
                })
            })
            .await?;
        let infra = self.0.clone();
        let id = op_id.clone();
        tokio::spawn(async move { infra.run(id).await });
        Ok(Response::new(pb::DestroyServerResponse {
            operation: Some(self.operation(&op_id).await?),
        }))
    }

    async fn rotate_deploy_key(
        &self,
        request: Request<pb::RotateDeployKeyRequest>,
    ) -> Result<Response<pb::RotateDeployKeyResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        v.check(
            (1..=128).contains(&req.request_id.len()),
            "request_id",
            "required, 1-128 characters",
        );
        v.check(!req.server_id.is_empty(), "server_id", "required");
        v.finish()?;
        if let Some(existing) =
            sqlx::query("SELECT id, server_id FROM operations WHERE request_id = $1")
                .bind(&req.request_id)
                .fetch_optional(self.db.pool())
                .await
                .map_err(store)?
        {
            if existing.try_get::<String, _>("server_id").map_err(store)? != req.server_id {
                let mut v = Violations::new();
                v.add("request_id", "already used for a different request");
                v.finish()?;
            }
            let id: String = existing.try_get("id").map_err(store)?;
            return Ok(Response::new(pb::RotateDeployKeyResponse {
                operation: Some(self.operation(&id).await?),
            }));
        }
        let server = self.server(&req.server_id).await?;
        if server.state != "ready" {
            return Err(with_reason(
                Code::FailedPrecondition,
                "SERVER_NOT_READY",
                format!(
                    "server {} is {}, not ready: only a ready server's key can be rotated",
                    server.id, server.state
                ),
                &[],
            ));
        }
        let op_id = format!("op-{}", random_hex(8));
        let (o2, s2, p2) = (op_id.clone(), server.id.clone(), server.project_id.clone());
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    // One operation at a time per server.
                    if let Some(running) = sqlx::query("SELECT id FROM operations WHERE server_id = $1 AND state IN ('pending', 'running')")
                        .bind(&s2)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(store)?
                    {
                        let running: String = running.try_get("id").map_err(store)?;
                        return Err(with_reason(
                            Code::FailedPrecondition,
                            "OPERATION_RUNNING",
                            format!("operation {running} is running on server {s2}; rotate when it has ended"),
                            &[],
                        ));
                    }
                    let now = now_us();
                    sqlx::query("INSERT INTO operations (id, request_id, kind, server_id, project_id, state, steps, message, created_us, updated_us) VALUES ($1, $2, 'rotate', $3, $4, 'pending', $5, 'accepted', $6, $6)")
                        .bind(&o2)
                        .bind(&req.request_id)
                        .bind(&s2)
                        .bind(&p2)
                        .bind(initial_steps(&ROTATE))
                        .bind(now)
                        .execute(&mut *conn)
                        .await
                        .map_err(store)?;
                    let entry = Entry::new(&caller, "/orchestrator.infra.v1.InfraService/RotateDeployKey", format!("servers/{s2}"))
                        .request_id(&req.request_id)
                        .detail(format!("operation {o2}"));
                    Ok(((), vec![entry]))
                })
            })
            .await?;
        let infra = self.0.clone();
        let id = op_id.clone();
        tokio::spawn(async move { infra.run(id).await });
        Ok(Response::new(pb::RotateDeployKeyResponse {
            operation: Some(self.operation(&op_id).await?),
        }))
    }
}
