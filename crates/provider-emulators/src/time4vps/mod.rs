//! Time4VPS's billing API (`/api/...`, HTTP Basic): servers bought in advance, reinstalled
//! with a deploy key and polled through their task.
//!
//! - Every error is a JSON body with an `error` list; bad credentials are
//!   `401 {"error": ["wronglogin"]}` (Time4VPS documents no status codes; these are ours).
//! - A reinstall wipes the server: the IP stays, the OS becomes the requested one when its task
//!   completes, `task_after` after the request. While it runs the task's `completed` is empty
//!   and a second reinstall is refused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::core::{self, Core, Fault, Running, Window, lock};
use crate::host::{self, Exec, Host, HostsConfig};
use crate::keys::PublicKey;
use crate::{Faults, Stats};

/// How the Time4VPS emulator behaves.
#[derive(Debug, Clone)]
pub struct T4Config {
    /// The account's API user and password (HTTP Basic).
    pub user: String,
    pub password: String,
    /// Servers bought in advance: (id, main IPv4).
    pub servers: Vec<(u64, String)>,
    /// Time from a reinstall request to its task's `completed`.
    pub task_after: Duration,
    /// OS codes offered by `GET /api/server/{id}/oses`; the first is installed at start.
    pub oses: Vec<String>,
    /// Init scripts (id, name) for `GET /api/scripts` and `reinstall {script}`.
    pub scripts: Vec<(u64, String)>,
    /// Requests per minute for the account (0 = unlimited; Time4VPS documents none).
    pub rate_limit_per_minute: u32,
    /// Boot reinstalled servers for real SSH on their (then loopback) IPs: root with the
    /// reinstall's `ssh_key` and a fresh host key, no cloud-init. `None` = no SSH.
    pub hosts: Option<HostsConfig>,
}

impl Default for T4Config {
    fn default() -> Self {
        Self {
            user: String::new(),
            password: String::new(),
            servers: Vec::new(),
            task_after: Duration::from_millis(300),
            oses: vec![
                "kvm-ubuntu-24.04-gpt-x86_64".to_owned(),
                "kvm-ubuntu-22.04-gpt-x86_64".to_owned(),
                "kvm-debian-12-gpt-x86_64".to_owned(),
            ],
            scripts: Vec::new(),
            rate_limit_per_minute: 0,
            hosts: None,
        }
    }
}

/// A server as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub id: u64,
    pub ip: String,
    /// The installed OS (changes when a reinstall completes).
    pub os: String,
    /// A reinstall in progress.
    pub reinstalling: bool,
    /// Reinstalls requested so far.
    pub reinstalls: usize,
}

/// One reinstall request, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReinstallRecord {
    pub task_id: u64,
    pub os: String,
    pub ssh_key: Option<String>,
    pub script: Option<u64>,
}

#[derive(Debug)]
struct Task {
    id: u64,
    name: &'static str,
    requested: Instant,
    requested_at: OffsetDateTime,
    /// The reinstall behind it.
    reinstall: ReinstallRecord,
}

#[derive(Debug)]
struct Server {
    id: u64,
    ip: String,
    initial_os: String,
    tasks: Vec<Task>,
    /// Its SSH side since the last reinstall (with [`T4Config::hosts`]).
    host: Option<Host>,
}

#[derive(Debug)]
struct T4State {
    config: T4Config,
    core: Core,
    servers: Mutex<Vec<Server>>,
    next_task: Mutex<u64>,
    limits: Mutex<Window>,
}

impl T4State {
    fn done(&self, t: &Task, now: Instant) -> bool {
        now.saturating_duration_since(t.requested) >= self.config.task_after
    }

    fn os(&self, s: &Server, now: Instant) -> String {
        s.tasks
            .iter()
            .rev()
            .find(|t| self.done(t, now))
            .map_or_else(|| s.initial_os.clone(), |t| t.reinstall.os.clone())
    }

    fn active(&self, s: &Server, now: Instant) -> Option<u64> {
        s.tasks.iter().find(|t| !self.done(t, now)).map(|t| t.id)
    }

    fn task_json(&self, t: &Task, now: Instant) -> Value {
        let done = self.done(t, now);
        // Assigned to a worker halfway through.
        let assigned = now.saturating_duration_since(t.requested) >= self.config.task_after / 2;
        let at = |d: Duration| stamp(t.requested_at + d);
        json!({
            "name": t.name,
            "activated": at(Duration::ZERO),
            "assigned": if assigned || done { at(self.config.task_after / 2) } else { String::new() },
            "completed": if done { at(self.config.task_after) } else { String::new() },
            "results": if done { format!("Server reinstalled with {}", t.reinstall.os) } else { String::new() },
        })
    }

    fn server_json(&self, s: &Server, now: Instant, details: bool) -> Value {
        let mut v = json!({
            "id": s.id,
            "domain": format!("server{}.time4vps.test", s.id),
            "ip": s.ip,
            "status": "Active",
            "product": "Linux 4",
            "os": self.os(s, now),
        });
        if details {
            let last: Vec<Value> = s
                .tasks
                .iter()
                .rev()
                .take(5)
                .map(|t| {
                    let mut j = self.task_json(t, now);
                    j["id"] = json!(t.id);
                    j
                })
                .collect();
            v["label"] = json!(format!("server{}", s.id));
            v["additional_ip"] = json!([]);
            v["cpu_cores"] = json!(2);
            v["ram_limit"] = json!(4096);
            v["disk_limit"] = json!(81920);
            v["active_task"] = match self.active(s, now) {
                Some(_) => json!("reinstall"),
                None => Value::Null,
            };
            v["last_tasks"] = json!(last);
        }
        v
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), as the billing system writes dates.
fn stamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A running Time4VPS emulator. Clones share it; the server stops when the last handle drops
/// or on [`Time4Vps::shutdown`].
#[derive(Debug, Clone)]
pub struct Time4Vps {
    state: Arc<T4State>,
    running: Arc<Running>,
}

impl Time4Vps {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: T4Config) -> anyhow::Result<Self> {
        Self::start_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr` (plain HTTP).
    pub async fn start_on(addr: std::net::SocketAddr, config: T4Config) -> anyhow::Result<Self> {
        anyhow::ensure!(!config.oses.is_empty(), "T4Config::oses must not be empty");
        let initial = config.oses[0].clone();
        let mut servers: Vec<Server> = Vec::new();
        for (id, ip) in &config.servers {
            anyhow::ensure!(
                *id > 0 && !servers.iter().any(|s| s.id == *id),
                "server id {id}: zero or listed twice"
            );
            anyhow::ensure!(
                ip.parse::<std::net::Ipv4Addr>().is_ok(),
                "server {id}: {ip:?} is not an IPv4 address"
            );
            servers.push(Server {
                id: *id,
                ip: ip.clone(),
                initial_os: initial.clone(),
                tasks: Vec::new(),
                host: None,
            });
        }
        let (listener, url) = core::bind(addr).await?;
        let limits = Window::new(config.rate_limit_per_minute, Duration::from_secs(60));
        let state = Arc::new(T4State {
            config,
            core: Core::new("time4vps"),
            servers: Mutex::new(servers),
            next_task: Mutex::new(7_000_000),
            limits: Mutex::new(limits),
        });
        let running = Running::spawn("time4vps", listener, url, router(state.clone()));
        Ok(Self {
            state,
            running: Arc::new(running),
        })
    }

    /// The server's base, e.g. `http://127.0.0.1:41234` (clients append `/api/...`).
    pub fn url(&self) -> String {
        self.running.url.clone()
    }

    /// Stops the server.
    pub fn shutdown(&self) {
        self.running.stop();
    }

    /// The servers, in configuration order.
    pub fn servers(&self) -> Vec<ServerView> {
        let now = Instant::now();
        lock(&self.state.servers)
            .iter()
            .map(|s| ServerView {
                id: s.id,
                ip: s.ip.clone(),
                os: self.state.os(s, now),
                reinstalling: self.state.active(s, now).is_some(),
                reinstalls: s.tasks.len(),
            })
            .collect()
    }

    /// The last reinstall requested for server `id`.
    pub fn last_reinstall(&self, id: u64) -> Option<ReinstallRecord> {
        lock(&self.state.servers)
            .iter()
            .find(|s| s.id == id)?
            .tasks
            .last()
            .map(|t| t.reinstall.clone())
    }

    /// Server `id`'s host key (OpenSSH public line) since its last reinstall, with hosts.
    pub fn host_key(&self, id: u64) -> Option<String> {
        let servers = lock(&self.state.servers);
        let host = servers.iter().find(|s| s.id == id)?.host.as_ref()?;
        Some(host.host_public.clone())
    }

    /// The commands server `id` was asked to run over SSH since its last reinstall.
    pub fn commands(&self, id: u64) -> Vec<Exec> {
        let servers = lock(&self.state.servers);
        servers
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.host.as_ref())
            .map(|h| lock(&h.log).clone())
            .unwrap_or_default()
    }

    /// Every reinstall requested for server `id`, oldest first.
    pub fn reinstalls(&self, id: u64) -> Vec<ReinstallRecord> {
        lock(&self.state.servers)
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.tasks.iter().map(|t| t.reinstall.clone()).collect())
            .unwrap_or_default()
    }

    /// Faults for every route without its own; restarts the generator from `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        self.state.core.set_faults(faults);
    }

    /// Faults for one route, keyed like [`Stats::requests`]
    /// (`"POST /api/server/{id}/reinstall"`).
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

    /// Clears the counters (not the rate-limit window).
    pub fn reset_stats(&self) {
        *self.state.core.stats() = Stats::default();
    }
}

/// `{"error": [message]}` with a status.
#[derive(Debug)]
struct T4Error {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl T4Error {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn no_server() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Server not found")
    }

    fn too_many(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
        }
    }
}

impl IntoResponse for T4Error {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({"error": [self.message]}))).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

fn render_fault(fault: Fault, retry_after: u64) -> Response {
    match fault {
        Fault::TooMany => T4Error::too_many(retry_after).into_response(),
        Fault::ServerError(status) => T4Error::new(status, "Internal error").into_response(),
        Fault::Drop => core::dropped(),
    }
}

fn router(state: Arc<T4State>) -> Router {
    Router::new()
        .route("/api/server", get(list_servers))
        .route("/api/server/{id}", get(get_server))
        .route("/api/server/{id}/reinstall", post(reinstall))
        .route("/api/server/{id}/task/{task_id}", get(get_task))
        .route("/api/server/{id}/oses", get(oses))
        .route("/api/scripts", get(scripts))
        .fallback(|| async { T4Error::new(StatusCode::NOT_FOUND, "Invalid endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// Constant-time-ish comparison is not needed here: this is a test double.
fn basic_ok(headers: &HeaderMap, user: &str, password: &str) -> bool {
    if user.is_empty() {
        return false;
    }
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    text.split_once(':')
        .is_some_and(|(u, p)| u == user && p == password)
}

async fn gate(State(s): State<Arc<T4State>>, req: Request, next: Next) -> Response {
    let arrived = Instant::now();
    let route = s.core.count(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = if !basic_ok(req.headers(), &s.config.user, &s.config.password) {
        s.core.stats().auth_failures += 1;
        T4Error::new(StatusCode::UNAUTHORIZED, "wronglogin").into_response()
    } else {
        let count = lock(&s.limits).count(&s.config.user);
        if count.allowed {
            s.core
                .run_with_faults(&route, req, next, render_fault)
                .await
        } else {
            s.core.stats().rate_limited += 1;
            T4Error::too_many(count.retry_after()).into_response()
        }
    };
    s.core.log(&method, &route, &path, &response, arrived);
    response
}

fn json_ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn parse_id(id: &str) -> Result<u64, T4Error> {
    id.parse().map_err(|_| T4Error::no_server())
}

async fn list_servers(State(s): State<Arc<T4State>>) -> Response {
    let now = Instant::now();
    let servers = lock(&s.servers);
    json_ok(Value::Array(
        servers
            .iter()
            .map(|srv| s.server_json(srv, now, false))
            .collect(),
    ))
}

async fn get_server(
    State(s): State<Arc<T4State>>,
    Path(id): Path<String>,
) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    let servers = lock(&s.servers);
    let srv = servers
        .iter()
        .find(|x| x.id == id)
        .ok_or_else(T4Error::no_server)?;
    Ok(json_ok(s.server_json(srv, Instant::now(), true)))
}

async fn reinstall(
    State(s): State<Arc<T4State>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    let body = core::parse_object(&body).map_err(|()| T4Error::bad("Invalid request body"))?;
    let os = match body.get("os") {
        Some(Value::String(os)) if !os.is_empty() => os.clone(),
        _ => return Err(T4Error::bad("OS is required")),
    };
    if !s.config.oses.contains(&os) {
        return Err(T4Error::bad("Invalid OS"));
    }
    let ssh_key: Option<String> = match body.get("ssh_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if k.trim().is_empty() => None,
        Some(Value::String(k)) if PublicKey::parse(k).is_some() && !k.trim().contains('\n') => {
            Some(k.trim().to_owned())
        }
        Some(_) => return Err(T4Error::bad("Invalid SSH key")),
    };
    let script = match body.get("script") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) if v.is_empty() => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(Value::String(v)) if v.parse::<u64>().is_ok() => v.parse().ok(),
        Some(_) => return Err(T4Error::bad("Invalid init script")),
    };
    if let Some(script) = script
        && !s.config.scripts.iter().any(|(sid, _)| *sid == script)
    {
        return Err(T4Error::bad("Invalid init script"));
    }
    let now = Instant::now();
    let mut servers = lock(&s.servers);
    let srv = servers
        .iter_mut()
        .find(|x| x.id == id)
        .ok_or_else(T4Error::no_server)?;
    if s.active(srv, now).is_some() {
        return Err(T4Error::bad("Server has an active task"));
    }
    let task_id = {
        let mut next = lock(&s.next_task);
        *next += 1;
        *next
    };
    // The reinstall wipes the server: the old SSH side goes now, the new one answers when the
    // task completes, with root's key from the request and a host key nobody knew before.
    srv.host = None;
    if let Some(hosts) = &s.config.hosts
        && let Ok(ip) = srv.ip.parse()
    {
        let up_at = now + s.config.task_after;
        let users = ssh_key
            .iter()
            .map(|k| ("root".to_owned(), vec![k.clone()]))
            .collect();
        let boot = host::Boot {
            ip,
            host_key: None,
            users,
            sudoers: vec!["root".to_owned()],
            up_at,
            ready_at: up_at,
            cloud_init: false,
            failed: false,
        };
        srv.host = host::start(boot, hosts.ssh_port)
            .inspect_err(|e| tracing::warn!(error = %e, "server could not boot"))
            .ok();
    }
    srv.tasks.push(Task {
        id: task_id,
        name: "reinstall",
        requested: now,
        requested_at: OffsetDateTime::now_utc(),
        reinstall: ReinstallRecord {
            task_id,
            os,
            ssh_key,
            script,
        },
    });
    Ok(json_ok(json!({"task_id": task_id})))
}

async fn get_task(
    State(s): State<Arc<T4State>>,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    let servers = lock(&s.servers);
    let srv = servers
        .iter()
        .find(|x| x.id == id)
        .ok_or_else(T4Error::no_server)?;
    let task = task_id
        .parse::<u64>()
        .ok()
        .and_then(|tid| srv.tasks.iter().find(|t| t.id == tid))
        .ok_or_else(|| T4Error::bad("Invalid task ID"))?;
    Ok(json_ok(s.task_json(task, Instant::now())))
}

fn title(os: &str) -> String {
    os.trim_start_matches("kvm-")
        .trim_end_matches("-x86_64")
        .trim_end_matches("-gpt")
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn oses(State(s): State<Arc<T4State>>, Path(id): Path<String>) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    if !lock(&s.servers).iter().any(|x| x.id == id) {
        return Err(T4Error::no_server());
    }
    Ok(json_ok(Value::Array(
        s.config
            .oses
            .iter()
            .map(|os| json!({"os": os, "title": title(os)}))
            .collect(),
    )))
}

async fn scripts(State(s): State<Arc<T4State>>) -> Response {
    json_ok(Value::Array(
        s.config
            .scripts
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name, "syntax": "bash"}))
            .collect(),
    ))
}
