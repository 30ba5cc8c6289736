//! DigitalOcean API v2: droplets, actions and account SSH keys, with DigitalOcean's shapes,
//! status codes, rate-limit headers and timing hazards.
//!
//! - A droplet is `new` until `active_after`, then `active` with only a private address; its
//!   public IPv4 appears `address_after` later. The first `transient_404_polls` GETs of a fresh
//!   droplet answer 404 (capacity placement), though listing shows it.
//! - Each token is its own account (droplets, keys, actions).
//! - Limits per token: `rate_limit_per_hour` (the headers), `rate_limit_per_minute`, and
//!   `key_list_limit_per_minute` for `GET /v2/account/keys`; over any, 429 with `retry-after`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::core::{self, Core, Count, Fault, Running, Window, lock};
use crate::host::{self, Exec, Host, HostsConfig};
use crate::keys::PublicKey;
use crate::{Faults, Stats};

/// Largest `user_data` DigitalOcean accepts.
const USER_DATA_MAX: usize = 64 * 1024;

/// How the DigitalOcean emulator behaves.
#[derive(Debug, Clone)]
pub struct DoConfig {
    /// Accepted bearer tokens; each is its own account.
    pub tokens: Vec<String>,
    /// Time from create to `status: "active"`.
    pub active_after: Duration,
    /// Further time from `active` to a public IPv4 in `networks.v4`.
    pub address_after: Duration,
    /// The first N `GET /v2/droplets/{id}` of each new droplet answer 404.
    pub transient_404_polls: u32,
    /// Requests per minute per token (0 = unlimited).
    pub rate_limit_per_minute: u32,
    /// Requests per hour per token: `ratelimit-limit` (0 = unlimited).
    pub rate_limit_per_hour: u32,
    /// `GET /v2/account/keys` per minute per token (DigitalOcean: 10; 0 = unlimited).
    pub key_list_limit_per_minute: u32,
    /// Live droplets per account (DigitalOcean's droplet limit; 0 = none): a create beyond it
    /// is refused with DigitalOcean's 422.
    pub droplet_limit: usize,
    /// Boot droplets for real SSH: each gets its own `127.x.y.z` public address where an SSH
    /// daemon serves what its cloud-init says. `None` = addresses from 198.51.100.0/24, no SSH.
    pub hosts: Option<HostsConfig>,
}

impl Default for DoConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            active_after: Duration::from_millis(200),
            address_after: Duration::from_millis(200),
            transient_404_polls: 0,
            rate_limit_per_minute: 250,
            rate_limit_per_hour: 5000,
            key_list_limit_per_minute: 10,
            droplet_limit: 0,
            hosts: None,
        }
    }
}

/// A droplet as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DropletRecord {
    pub id: u64,
    pub name: String,
    pub size: String,
    pub region: Option<String>,
    pub tags: Vec<String>,
    /// The cloud-init text, as sent.
    pub user_data: Option<String>,
    /// Key ids or fingerprints as sent (numbers as decimal strings).
    pub ssh_keys: Vec<String>,
    /// The bearer token that created it.
    pub token_used: String,
    pub deleted: bool,
    /// `new` or `active` (as a GET would say now).
    pub status: String,
    /// The public IPv4, once assigned.
    pub ipv4: Option<String>,
    /// The whole create body.
    pub create_body: Value,
}

/// An account SSH key as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeyRecord {
    pub id: u64,
    pub name: String,
    pub fingerprint: String,
    pub public_key: String,
    pub token_used: String,
    pub deleted: bool,
}

#[derive(Debug)]
struct Droplet {
    id: u64,
    seq: u64,
    account: String,
    name: String,
    size: String,
    image: Value,
    region: Option<String>,
    tags: Vec<String>,
    user_data: Option<String>,
    ssh_keys: Vec<String>,
    vpc_uuid: Option<String>,
    body: Value,
    created: Instant,
    created_at: OffsetDateTime,
    deleted: bool,
    polls_404_left: u32,
    action_id: u64,
    /// Its SSH side, while it exists (with [`DoConfig::hosts`]).
    host: Option<Host>,
}

#[derive(Debug)]
struct Key {
    id: u64,
    account: String,
    name: String,
    fingerprint: String,
    public_key: String,
    blob: Vec<u8>,
    deleted: bool,
}

#[derive(Debug, Default)]
struct World {
    next_seq: u64,
    droplets: Vec<Droplet>,
    keys: Vec<Key>,
}

#[derive(Debug)]
struct Limits {
    hour: Window,
    minute: Window,
    key_list: Window,
}

#[derive(Debug)]
struct DoState {
    config: DoConfig,
    url: String,
    core: Core,
    world: Mutex<World>,
    limits: Mutex<Limits>,
    /// With hosts: the emulator's own `127.x.y.0/24` (random, so parallel tests differ).
    loopback_net: [u8; 2],
}

/// The token the gate accepted.
#[derive(Debug, Clone)]
struct Caller(String);

/// A running DigitalOcean emulator. Clones share it; the server stops when the last handle
/// drops or on [`DigitalOcean::shutdown`].
#[derive(Debug, Clone)]
pub struct DigitalOcean {
    state: Arc<DoState>,
    running: Arc<Running>,
}

impl DigitalOcean {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: DoConfig) -> anyhow::Result<Self> {
        Self::start_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr` (plain HTTP).
    pub async fn start_on(addr: std::net::SocketAddr, config: DoConfig) -> anyhow::Result<Self> {
        let (listener, url) = core::bind(addr).await?;
        let minute = Duration::from_secs(60);
        let limits = Limits {
            hour: Window::new(config.rate_limit_per_hour, Duration::from_secs(3600)),
            minute: Window::new(config.rate_limit_per_minute, minute),
            key_list: Window::new(config.key_list_limit_per_minute, minute),
        };
        let state = Arc::new(DoState {
            config,
            url: url.clone(),
            core: Core::new("digitalocean"),
            world: Mutex::new(World::default()),
            limits: Mutex::new(limits),
            loopback_net: core::random_bytes::<2>(),
        });
        let running = Running::spawn("digitalocean", listener, url, router(state.clone()));
        Ok(Self {
            state,
            running: Arc::new(running),
        })
    }

    /// The API base, e.g. `http://127.0.0.1:41234` (clients append `/v2/...`).
    pub fn url(&self) -> String {
        self.running.url.clone()
    }

    /// Stops the server.
    pub fn shutdown(&self) {
        self.running.stop();
    }

    /// Every droplet ever created (deleted ones too), in creation order.
    pub fn droplets(&self) -> Vec<DropletRecord> {
        let world = lock(&self.state.world);
        let now = Instant::now();
        world
            .droplets
            .iter()
            .map(|d| DropletRecord {
                id: d.id,
                name: d.name.clone(),
                size: d.size.clone(),
                region: d.region.clone(),
                tags: d.tags.clone(),
                user_data: d.user_data.clone(),
                ssh_keys: d.ssh_keys.clone(),
                token_used: d.account.clone(),
                deleted: d.deleted,
                status: self.state.status(d, now).to_owned(),
                ipv4: self
                    .state
                    .has_public(d, now)
                    .then(|| self.state.public_ip(d.seq)),
                create_body: d.body.clone(),
            })
            .collect()
    }

    /// The commands a droplet's server was asked to run over SSH (other than the readiness
    /// check), in order.
    pub fn commands(&self, id: u64) -> Vec<Exec> {
        let world = lock(&self.state.world);
        world
            .droplets
            .iter()
            .find(|d| d.id == id)
            .and_then(|d| d.host.as_ref())
            .map(|h| lock(&h.log).clone())
            .unwrap_or_default()
    }

    /// Droplets not deleted.
    pub fn live_droplets(&self) -> Vec<DropletRecord> {
        self.droplets().into_iter().filter(|d| !d.deleted).collect()
    }

    /// Every SSH key ever registered (deleted ones too).
    pub fn ssh_keys(&self) -> Vec<SshKeyRecord> {
        lock(&self.state.world)
            .keys
            .iter()
            .map(|k| SshKeyRecord {
                id: k.id,
                name: k.name.clone(),
                fingerprint: k.fingerprint.clone(),
                public_key: k.public_key.clone(),
                token_used: k.account.clone(),
                deleted: k.deleted,
            })
            .collect()
    }

    /// Deletes a droplet as if someone else had (no API call).
    pub fn delete_directly(&self, id: u64) -> bool {
        let mut world = lock(&self.state.world);
        match world.droplets.iter_mut().find(|d| d.id == id && !d.deleted) {
            Some(d) => {
                d.deleted = true;
                d.host = None;
                true
            }
            None => false,
        }
    }

    /// Faults for every route without its own; restarts the generator from `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        self.state.core.set_faults(faults);
    }

    /// Faults for one route, keyed like [`Stats::requests`] (`"POST /v2/droplets"`).
    pub fn set_faults_for(&self, route: &str, faults: Faults) {
        self.state.core.set_faults_for(route, faults);
    }

    /// No faults anywhere.
    pub fn clear_faults(&self) {
        self.state.core.clear_faults();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.state.core.stats().clone()
    }

    /// Clears the counters (not the rate-limit windows).
    pub fn reset_stats(&self) {
        *self.state.core.stats() = Stats::default();
    }
}

impl DoState {
    fn status(&self, d: &Droplet, now: Instant) -> &'static str {
        if now.saturating_duration_since(d.created) >= self.config.active_after {
            "active"
        } else {
            "new"
        }
    }

    fn has_public(&self, d: &Droplet, now: Instant) -> bool {
        now.saturating_duration_since(d.created)
            >= self.config.active_after + self.config.address_after
    }

    fn public_ip(&self, seq: u64) -> String {
        match self.config.hosts {
            Some(_) => {
                let [a, b] = self.loopback_net;
                format!("127.{a}.{}.{}", b.max(1), 2 + seq % 250)
            }
            None => format!("198.51.100.{}", 2 + seq % 250),
        }
    }

    /// Boots `d` for SSH: up when it has its public address, cloud-init done `boot_time` later.
    fn boot(&self, d: &Droplet) -> Option<Host> {
        let hosts = self.config.hosts.as_ref()?;
        let up_at = d.created + self.config.active_after + self.config.address_after;
        let mut boot = host::from_cloud_init(
            self.public_ip(d.seq).parse().ok()?,
            d.user_data.as_deref(),
            up_at,
            up_at + hosts.boot_time,
        );
        if hosts.impostor {
            boot.host_key = None;
        }
        boot.failed |= hosts.cloud_init_fails;
        match host::start(boot, hosts.ssh_port) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "droplet could not boot");
                None
            }
        }
    }

    fn droplet_json(&self, d: &Droplet, now: Instant) -> Value {
        let status = self.status(d, now);
        let mut v4 = Vec::new();
        if status == "active" {
            v4.push(json!({
                "ip_address": private_ip(d.seq),
                "netmask": "255.255.240.0",
                "gateway": "<nil>",
                "type": "private",
            }));
        }
        if self.has_public(d, now) {
            v4.push(json!({
                "ip_address": self.public_ip(d.seq),
                "netmask": "255.255.255.0",
                "gateway": "198.51.100.1",
                "type": "public",
            }));
        }
        let image = match &d.image {
            Value::String(slug) => json!({
                "id": 100_000_000 + (d.seq % 1000),
                "name": slug,
                "distribution": slug.split('-').next().unwrap_or_default(),
                "slug": slug,
                "public": true,
                "type": "base",
            }),
            other => json!({"id": other, "slug": null, "public": false, "type": "snapshot"}),
        };
        let region = d.region.clone().unwrap_or_else(|| "nyc3".to_owned());
        json!({
            "id": d.id,
            "name": d.name,
            "memory": 1024,
            "vcpus": 1,
            "disk": 25,
            "locked": false,
            "status": status,
            "kernel": null,
            "created_at": core::rfc3339(d.created_at),
            "features": ["droplet_agent", "private_networking"],
            "backup_ids": [],
            "next_backup_window": null,
            "snapshot_ids": [],
            "image": image,
            "volume_ids": [],
            "size": {"slug": d.size, "memory": 1024, "vcpus": 1, "disk": 25, "transfer": 1.0,
                     "price_monthly": 6.0, "price_hourly": 0.00893, "regions": [region],
                     "available": true},
            "size_slug": d.size,
            "networks": {"v4": v4, "v6": []},
            "region": {"slug": region, "name": region, "available": true, "features": [],
                       "sizes": [d.size]},
            "tags": d.tags,
            "vpc_uuid": d.vpc_uuid.clone().unwrap_or_else(|| format!(
                "{}-0000-4000-8000-{:012x}", core::sha256_hex(d.account.as_bytes(), 8),
                d.seq % 7)),
        })
    }

    fn action_json(&self, d: &Droplet, now: Instant) -> Value {
        let done = self.status(d, now) == "active";
        json!({
            "id": d.action_id,
            "status": if done { "completed" } else { "in-progress" },
            "type": "create",
            "started_at": core::rfc3339(d.created_at),
            "completed_at": if done {
                Value::String(core::rfc3339(d.created_at + self.config.active_after))
            } else { Value::Null },
            "resource_id": d.id,
            "resource_type": "droplet",
            "region_slug": d.region.clone().unwrap_or_else(|| "nyc3".to_owned()),
        })
    }
}

fn private_ip(seq: u64) -> String {
    format!("10.110.{}.{}", (seq / 250) % 250, 2 + seq % 250)
}

/// DigitalOcean's error answer.
#[derive(Debug)]
struct DoError {
    status: StatusCode,
    id: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl DoError {
    fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
            retry_after: None,
        }
    }

    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "The resource you were accessing could not be found.",
        )
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            message,
        )
    }

    fn bad_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unexpected end of JSON input or invalid JSON in the request body",
        )
    }

    fn too_many(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "API Rate limit exceeded.",
            )
        }
    }
}

impl IntoResponse for DoError {
    fn into_response(self) -> Response {
        let request_id = {
            let mut b = [0u8; 16];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
            let h = core::hex(&b);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        };
        let body = json!({"id": self.id, "message": self.message, "request_id": request_id});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

fn render_fault(fault: Fault, retry_after: u64) -> Response {
    match fault {
        Fault::TooMany => DoError::too_many(retry_after).into_response(),
        Fault::ServerError(status) => DoError::new(
            status,
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                "server_error"
            } else {
                "service_unavailable"
            },
            "Server was unable to give you a response.",
        )
        .into_response(),
        Fault::Drop => core::dropped(),
    }
}

fn router(state: Arc<DoState>) -> Router {
    Router::new()
        .route(
            "/v2/droplets",
            get(list_droplets)
                .post(create_droplet)
                .delete(delete_by_tag),
        )
        .route("/v2/droplets/{id}", get(get_droplet).delete(delete_droplet))
        .route("/v2/actions/{id}", get(get_action))
        .route("/v2/account/keys", get(list_keys).post(create_key))
        .route("/v2/account/keys/{key}", get(get_key).delete(delete_key))
        .fallback(|| async { DoError::not_found() })
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticates, limits, injects faults, runs the handler, stamps the rate-limit headers.
async fn gate(State(s): State<Arc<DoState>>, mut req: Request, next: Next) -> Response {
    let arrived = Instant::now();
    let route = s.core.count(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();

    let token = bearer(req.headers())
        .filter(|t| s.config.tokens.iter().any(|known| known == t))
        .map(str::to_owned);
    let mut response = match token {
        None => {
            s.core.stats().auth_failures += 1;
            let snapshot = lock(&s.limits).hour.peek("");
            let mut r = DoError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unable to authenticate you",
            )
            .into_response();
            stamp(&mut r, snapshot);
            r
        }
        Some(token) => {
            let limited = {
                let mut limits = lock(&s.limits);
                let minute = limits.minute.count(&token);
                let hour = if minute.allowed {
                    limits.hour.count(&token)
                } else {
                    limits.hour.peek(&token)
                };
                let keys = if route == "GET /v2/account/keys" && minute.allowed && hour.allowed {
                    Some(limits.key_list.count(&token))
                } else {
                    None
                };
                let refused = [Some(minute), Some(hour), keys]
                    .into_iter()
                    .flatten()
                    .find(|c| !c.allowed);
                (hour, refused)
            };
            let (hour, refused) = limited;
            let mut r = if let Some(refused) = refused {
                s.core.stats().rate_limited += 1;
                DoError::too_many(refused.retry_after()).into_response()
            } else {
                req.extensions_mut().insert(Caller(token));
                s.core
                    .run_with_faults(&route, req, next, render_fault)
                    .await
            };
            stamp(&mut r, hour);
            r
        }
    };
    if response.status() == StatusCode::NO_CONTENT {
        response.headers_mut().remove(header::CONTENT_TYPE);
    }
    s.core.log(&method, &route, &path, &response, arrived);
    response
}

fn stamp(response: &mut Response, c: Count) {
    let reset = OffsetDateTime::now_utc().unix_timestamp() + c.reset_in.as_secs() as i64 + 1;
    let (limit, remaining) = if c.limit == u32::MAX || c.limit == 0 {
        (5000, 5000)
    } else {
        (c.limit, c.remaining())
    };
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("ratelimit-limit"),
        HeaderValue::from(limit),
    );
    headers.insert(
        HeaderName::from_static("ratelimit-remaining"),
        HeaderValue::from(remaining),
    );
    headers.insert(
        HeaderName::from_static("ratelimit-reset"),
        HeaderValue::from(reset),
    );
}

fn ok(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Validates a create body; returns the droplet's fields.
fn validate_create(
    body: &Map<String, Value>,
    keys: &[Key],
    account: &str,
) -> Result<Droplet, DoError> {
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        None | Some(Value::Null) => {
            if body.contains_key("names") {
                return Err(DoError::unprocessable(
                    "This emulator supports single Droplet creation only (\"name\").",
                ));
            }
            return Err(DoError::unprocessable("Name is required."));
        }
        _ => return Err(DoError::unprocessable("Name is required.")),
    };
    if name.len() > 255
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(DoError::unprocessable(
            "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)",
        ));
    }
    let slug_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    let size = match body.get("size") {
        Some(Value::String(s)) if slug_ok(s) => s.clone(),
        _ => {
            return Err(DoError::unprocessable(
                "You specified an invalid size for Droplet creation.",
            ));
        }
    };
    let image = match body.get("image") {
        Some(Value::String(s)) if slug_ok(s) => Value::String(s.clone()),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => Value::Number(n.clone()),
        _ => {
            return Err(DoError::unprocessable(
                "You specified an invalid image for Droplet creation.",
            ));
        }
    };
    let region = match body.get("region") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if slug_ok(r) => Some(r.clone()),
        _ => {
            return Err(DoError::unprocessable(
                "You specified an invalid region for Droplet creation.",
            ));
        }
    };
    let ssh_keys = match body.get("ssh_keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                let id = match item {
                    Value::Number(n) if n.as_u64().is_some() => n.to_string(),
                    Value::String(s) if !s.is_empty() => s.clone(),
                    _ => {
                        return Err(DoError::unprocessable(
                            "ssh_keys must be a list of SSH key ids or fingerprints.",
                        ));
                    }
                };
                let known = keys.iter().any(|k| {
                    !k.deleted
                        && k.account == account
                        && (k.id.to_string() == id || k.fingerprint == id)
                });
                if !known {
                    return Err(DoError::unprocessable(format!(
                        "You specified an invalid SSH key: {id}."
                    )));
                }
                out.push(id);
            }
            out
        }
        Some(_) => {
            return Err(DoError::unprocessable(
                "ssh_keys must be a list of SSH key ids or fingerprints.",
            ));
        }
    };
    let tags = match body.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::String(t) if valid_tag(t) => {
                        if !out.contains(t) {
                            out.push(t.clone());
                        }
                    }
                    _ => {
                        return Err(DoError::unprocessable(
                            "Tag names may only contain letters, numbers, colons, dashes and \
                             underscores, and must be at most 255 characters long.",
                        ));
                    }
                }
            }
            out
        }
        Some(_) => return Err(DoError::unprocessable("tags must be a list of strings.")),
    };
    let user_data = match body.get("user_data") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if u.len() <= USER_DATA_MAX => Some(u.clone()),
        Some(Value::String(_)) => {
            return Err(DoError::unprocessable(
                "user_data is too long: the limit is 64 KiB.",
            ));
        }
        Some(_) => return Err(DoError::unprocessable("user_data must be a string.")),
    };
    for flag in [
        "ipv6",
        "monitoring",
        "backups",
        "private_networking",
        "with_droplet_agent",
    ] {
        if !matches!(body.get(flag), None | Some(Value::Null | Value::Bool(_))) {
            return Err(DoError::unprocessable(format!("{flag} must be a boolean.")));
        }
    }
    let vpc_uuid = match body.get("vpc_uuid") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => return Err(DoError::unprocessable("vpc_uuid must be a string.")),
    };
    Ok(Droplet {
        id: 0,
        seq: 0,
        account: account.to_owned(),
        name,
        size,
        image,
        region,
        tags,
        user_data,
        ssh_keys,
        vpc_uuid,
        body: Value::Object(body.clone()),
        created: Instant::now(),
        created_at: OffsetDateTime::now_utc(),
        deleted: false,
        polls_404_left: 0,
        action_id: 0,
        host: None,
    })
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 255
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_'))
}

async fn create_droplet(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, DoError> {
    let body = core::parse_object(&body).map_err(|()| DoError::bad_json())?;
    let mut world = lock(&s.world);
    let mut droplet = validate_create(&body, &world.keys, &token)?;
    let live = world
        .droplets
        .iter()
        .filter(|d| !d.deleted && d.account == token)
        .count();
    if s.config.droplet_limit > 0 && live >= s.config.droplet_limit {
        return Err(DoError::unprocessable(
            "creating this/these droplet(s) will exceed your droplet limit",
        ));
    }
    world.next_seq += 1;
    let seq = world.next_seq;
    droplet.seq = seq;
    droplet.id = 3_164_400 + seq * 7;
    droplet.action_id = 1_800_000_000 + seq * 3;
    droplet.polls_404_left = s.config.transient_404_polls;
    let now = Instant::now();
    let mut body = json!({
        "droplet": s.droplet_json(&droplet, now),
        "links": {"actions": [{
            "id": droplet.action_id,
            "rel": "create",
            "href": format!("{}/v2/actions/{}", s.url, droplet.action_id),
        }]},
    });
    // The create answer is always "new" with no networks, however short active_after is.
    body["droplet"]["status"] = json!("new");
    body["droplet"]["networks"] = json!({"v4": [], "v6": []});
    droplet.host = s.boot(&droplet);
    world.droplets.push(droplet);
    Ok(ok(StatusCode::ACCEPTED, body))
}

fn page_params(q: &std::collections::HashMap<String, String>) -> Result<(usize, usize), DoError> {
    let page = match q.get("page") {
        None => 1,
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| DoError::unprocessable("page must be a positive integer."))?,
    };
    let per_page = match q.get("per_page") {
        None => 20,
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| DoError::unprocessable("per_page must be a positive integer."))?
            .min(200),
    };
    Ok((page, per_page))
}

/// DigitalOcean's `links.pages` (absent members on the first / last page; `{}` for one page).
fn links(base: &str, path: &str, extra: &str, page: usize, pages: usize, per_page: usize) -> Value {
    let at = |p: usize| format!("{base}{path}?page={p}&per_page={per_page}{extra}");
    let mut m = Map::new();
    if page > 1 {
        m.insert("first".to_owned(), json!(at(1)));
        m.insert("prev".to_owned(), json!(at((page - 1).min(pages))));
    }
    if page < pages {
        m.insert("next".to_owned(), json!(at(page + 1)));
        m.insert("last".to_owned(), json!(at(pages)));
    }
    if m.is_empty() {
        json!({})
    } else {
        json!({"pages": m})
    }
}

async fn list_droplets(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, DoError> {
    let q = core::query_map(query.as_deref());
    let (page, per_page) = page_params(&q)?;
    let tag = q.get("tag_name").filter(|t| !t.is_empty());
    let name = q.get("name").filter(|n| !n.is_empty());
    if tag.is_some() && name.is_some() {
        return Err(DoError::unprocessable(
            "tag_name and name cannot be combined.",
        ));
    }
    let now = Instant::now();
    let world = lock(&s.world);
    let all: Vec<Value> = world
        .droplets
        .iter()
        .filter(|d| !d.deleted && d.account == token)
        .filter(|d| tag.is_none_or(|t| d.tags.contains(t)))
        .filter(|d| name.is_none_or(|n| &d.name == n))
        .map(|d| s.droplet_json(d, now))
        .collect();
    let (items, pages) = core::paginate(&all, page, per_page);
    let extra = match (tag, name) {
        (Some(t), _) => format!("&tag_name={t}"),
        (_, Some(n)) => format!("&name={n}"),
        _ => String::new(),
    };
    Ok(ok(
        StatusCode::OK,
        json!({
            "droplets": items,
            "links": links(&s.url, "/v2/droplets", &extra, page, pages, per_page),
            "meta": {"total": all.len()},
        }),
    ))
}

fn parse_id(id: &str) -> Result<u64, DoError> {
    id.parse().map_err(|_| DoError::not_found())
}

async fn get_droplet(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, DoError> {
    let id = parse_id(&id)?;
    let mut world = lock(&s.world);
    let d = world
        .droplets
        .iter_mut()
        .find(|d| d.id == id && d.account == token && !d.deleted)
        .ok_or_else(DoError::not_found)?;
    if d.polls_404_left > 0 {
        d.polls_404_left -= 1;
        return Err(DoError::not_found());
    }
    Ok(ok(
        StatusCode::OK,
        json!({"droplet": s.droplet_json(d, Instant::now())}),
    ))
}

async fn delete_droplet(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, DoError> {
    let id = parse_id(&id)?;
    let mut world = lock(&s.world);
    let d = world
        .droplets
        .iter_mut()
        .find(|d| d.id == id && d.account == token && !d.deleted)
        .ok_or_else(DoError::not_found)?;
    d.deleted = true;
    d.host = None;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_by_tag(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, DoError> {
    let q = core::query_map(query.as_deref());
    let tag = q
        .get("tag_name")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| DoError::unprocessable("tag_name is required."))?;
    let mut world = lock(&s.world);
    for d in world
        .droplets
        .iter_mut()
        .filter(|d| !d.deleted && d.account == token && d.tags.contains(tag))
    {
        d.deleted = true;
        d.host = None;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_action(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, DoError> {
    let id = parse_id(&id)?;
    let world = lock(&s.world);
    let d = world
        .droplets
        .iter()
        .find(|d| d.action_id == id && d.account == token)
        .ok_or_else(DoError::not_found)?;
    Ok(ok(
        StatusCode::OK,
        json!({"action": s.action_json(d, Instant::now())}),
    ))
}

fn key_json(k: &Key) -> Value {
    json!({
        "id": k.id,
        "fingerprint": k.fingerprint,
        "public_key": k.public_key,
        "name": k.name,
    })
}

async fn create_key(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, DoError> {
    let body = core::parse_object(&body).map_err(|()| DoError::bad_json())?;
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
        _ => return Err(DoError::unprocessable("Name is required.")),
    };
    let public_key = match body.get("public_key") {
        Some(Value::String(k)) => k.trim().to_owned(),
        _ => return Err(DoError::unprocessable("Public key is required.")),
    };
    let parsed = PublicKey::parse(&public_key).ok_or_else(|| {
        DoError::unprocessable(
            "Key invalid type, we support 'ssh-rsa', 'ssh-dss', 'ecdsa-sha2-nistp256', \
             'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521', or 'ssh-ed25519'",
        )
    })?;
    let mut world = lock(&s.world);
    if world
        .keys
        .iter()
        .any(|k| !k.deleted && k.account == token && k.blob == parsed.blob)
    {
        return Err(DoError::unprocessable(
            "SSH Key is already in use on your account",
        ));
    }
    let id = 512_190 + world.keys.len() as u64 * 11;
    let key = Key {
        id,
        account: token,
        name,
        fingerprint: parsed.md5_fingerprint(),
        public_key,
        blob: parsed.blob,
        deleted: false,
    };
    let body = json!({"ssh_key": key_json(&key)});
    world.keys.push(key);
    Ok(ok(StatusCode::CREATED, body))
}

async fn list_keys(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, DoError> {
    let q = core::query_map(query.as_deref());
    let (page, per_page) = page_params(&q)?;
    let world = lock(&s.world);
    let all: Vec<Value> = world
        .keys
        .iter()
        .filter(|k| !k.deleted && k.account == token)
        .map(key_json)
        .collect();
    let (items, pages) = core::paginate(&all, page, per_page);
    Ok(ok(
        StatusCode::OK,
        json!({
            "ssh_keys": items,
            "links": links(&s.url, "/v2/account/keys", "", page, pages, per_page),
            "meta": {"total": all.len()},
        }),
    ))
}

fn find_key<'a>(world: &'a mut World, token: &str, key: &str) -> Result<&'a mut Key, DoError> {
    world
        .keys
        .iter_mut()
        .find(|k| {
            !k.deleted && k.account == token && (k.id.to_string() == key || k.fingerprint == key)
        })
        .ok_or_else(DoError::not_found)
}

async fn get_key(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Response, DoError> {
    let mut world = lock(&s.world);
    let k = find_key(&mut world, &token, &key)?;
    Ok(ok(StatusCode::OK, json!({"ssh_key": key_json(k)})))
}

async fn delete_key(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Response, DoError> {
    let mut world = lock(&s.world);
    find_key(&mut world, &token, &key)?.deleted = true;
    Ok(StatusCode::NO_CONTENT.into_response())
}
