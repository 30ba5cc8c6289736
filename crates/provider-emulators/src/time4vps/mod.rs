//! Time4VPS's billing API (`/api/...`, HTTP Basic): servers bought in advance, reinstalled
//! with a deploy key and polled through their task.
//!
//! What it models, following the API reference at <https://billing.time4vps.com/api/> and the
//! official PHP client (github.com/time4vps/time4vps-lib, `src/API/Server.php`):
//! - `GET /api/server`: the account's servers, each named by `server_id` (the details use `id`).
//! - `GET /api/server/{id}`: `ip`, `os`, `active_task` (the running task as an object — `name`,
//!   `activated`, `assigned`, `completed`, `results` — or null when idle: the one field that
//!   tells a busy server), and `last_tasks` (the same objects, newest first, without task ids).
//! - `POST /api/server/{id}/reinstall {os, ssh_key?, script?}` -> `{task_id}`: wipes the server;
//!   the IP stays, the OS becomes the requested one when its task completes, `task_after` after
//!   the request. `POST /api/server/{id}/reboot` -> `{task_id}`: a task of its own. One task at
//!   a time: another request while one runs is refused (`Server has an active task`).
//! - `GET /api/server/{id}/task/{task_id}`: the task; dates are ISO 8601 with the offset
//!   (`2026-11-30T05:20:00+00:00`), empty strings until reached; `Invalid task ID` otherwise.
//! - `GET /api/server/{id}/oses`, `GET /api/scripts`.
//! - Every error is a JSON body with an `error` list; bad credentials are
//!   `401 {"error": ["wronglogin"]}` (Time4VPS documents no status codes; these are ours), and
//!   a request window per account.
//!
//! What it does not model: ordering new servers (`POST /order/...`, a billing purchase), the
//! other server actions (rename, PTR, firewall, web console), graphs and history.
//!
//! Modules: `state` (servers, tasks), `gate` (HTTP Basic, the window), `error`, `servers`
//! (the reads) and `reinstall` (reinstall and reboot).

mod error;
mod gate;
mod reinstall;
mod servers;
mod state;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};

use crate::core::{self, Core, Running, Window, lock};
use crate::host::{Exec, HostsConfig};
use error::T4Error;
use state::{Server, T4State};

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

/// A running Time4VPS emulator. Clones share it; the server stops when the last handle drops
/// or on [`Time4Vps::shutdown`].
#[derive(Debug, Clone)]
pub struct Time4Vps {
    state: Arc<T4State>,
    running: Arc<Running>,
}

impl Time4Vps {
    // start, url, shutdown, set_faults, set_faults_for, clear_faults, stats, reset_stats.
    core::handle_methods!(
        config: T4Config,
        api: "/api/...",
        route: "POST /api/server/{id}/reinstall"
    );

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

    /// The servers, in configuration order.
    pub fn servers(&self) -> Vec<ServerView> {
        let now = Instant::now();
        lock(&self.state.servers)
            .iter()
            .map(|s| ServerView {
                id: s.id,
                ip: s.ip.clone(),
                os: self.state.os(s, now),
                reinstalling: self
                    .state
                    .active(s, now)
                    .is_some_and(|t| t.reinstall.is_some()),
                reinstalls: s.tasks.iter().filter(|t| t.reinstall.is_some()).count(),
            })
            .collect()
    }

    /// The last reinstall requested for server `id`.
    pub fn last_reinstall(&self, id: u64) -> Option<ReinstallRecord> {
        lock(&self.state.servers)
            .iter()
            .find(|s| s.id == id)?
            .tasks
            .iter()
            .rev()
            .find_map(|t| t.reinstall.clone())
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
            .map(|s| s.tasks.iter().filter_map(|t| t.reinstall.clone()).collect())
            .unwrap_or_default()
    }
}

fn router(state: Arc<T4State>) -> Router {
    Router::new()
        .route("/api/server", get(servers::list))
        .route("/api/server/{id}", get(servers::get))
        .route("/api/server/{id}/reinstall", post(reinstall::reinstall))
        .route("/api/server/{id}/reboot", post(reinstall::reboot))
        .route("/api/server/{id}/task/{task_id}", get(servers::task))
        .route("/api/server/{id}/oses", get(servers::oses))
        .route("/api/scripts", get(servers::scripts))
        .fallback(|| async { T4Error::new(StatusCode::NOT_FOUND, "Invalid endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), gate::gate))
        .with_state(state)
}
