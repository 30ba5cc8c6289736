//! DigitalOcean API v2: droplets, actions and account SSH keys, with DigitalOcean's shapes,
//! status codes, rate-limit headers and timing hazards.
//!
//! What it models, each after the API reference at <https://docs.digitalocean.com/reference/api/>:
//! - Droplets ("Create a New Droplet", "Retrieve an Existing Droplet", "List All Droplets",
//!   "Delete an Existing Droplet", "Deleting Droplets by Tag"): a droplet is `new` until
//!   `active_after`, then `active` with only a private address; its public IPv4 appears
//!   `address_after` later. The first `transient_404_polls` GETs of a fresh droplet answer 404
//!   (capacity placement), though listing shows it. The create body is checked as DigitalOcean
//!   does (`validate`: its 422 messages), and a create beyond `droplet_limit` is its 422.
//! - `DELETE /v2/droplets/{id}` while its create action runs (before `active_after`) is 422
//!   "Droplet already has a pending event." (what DigitalOcean answers; the reference lists 422
//!   without this case; a later retry works), then 204, then 404.
//! - Actions ("Retrieve an Existing Action"): each create's action, `in-progress` then
//!   `completed`.
//! - SSH keys ("SSH Keys": create, list, retrieve and delete by id or fingerprint): 422 for a
//!   key the account already has.
//! - Pagination ("Links & Pagination"): `page`, `per_page` (20 by default, at most 200), `links`
//!   and `meta.total`.
//! - Rate limits ("Rate Limits"): per token, `rate_limit_per_hour` (5,000, reported in
//!   `ratelimit-limit`, `ratelimit-remaining`, `ratelimit-reset`), `rate_limit_per_minute` (250)
//!   and `key_list_limit_per_minute` for `GET /v2/account/keys`; over any, 429 with
//!   `retry-after`. An unknown token is 401 `unauthorized`.
//! - Each token is its own account (droplets, keys, actions).
//! - With `hosts`, droplets boot for real: each gets a loopback address where an SSH daemon
//!   serves what its cloud-init (`user_data`) says.
//!
//! What it does not model: droplet actions other than create (power, resize, snapshots),
//! volumes, firewalls, VPCs, projects, tags as resources, regions' and sizes' availability, and
//! billing.
//!
//! Modules: `state` (the accounts, the droplets' timeline), `gate` (tokens, limits, headers),
//! `error`, `paging`, `validate` (the create body) and one per resource: `droplets`,
//! `actions`, `ssh_keys`.

mod actions;
mod droplets;
mod error;
mod gate;
mod paging;
mod ssh_keys;
mod state;
mod validate;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware;
use axum::routing::get;
use serde_json::Value;

use crate::core::{self, Core, Running, lock};
use crate::host::{Exec, HostsConfig};
use error::DoError;
use state::{DoState, Limits, World};

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

/// A running DigitalOcean emulator. Clones share it; the server stops when the last handle
/// drops or on [`DigitalOcean::shutdown`].
#[derive(Debug, Clone)]
pub struct DigitalOcean {
    state: Arc<DoState>,
    running: Arc<Running>,
}

impl DigitalOcean {
    // start, url, shutdown, set_faults, set_faults_for, clear_faults, stats, reset_stats.
    core::handle_methods!(
        config: DoConfig,
        api: "/v2/...",
        route: "POST /v2/droplets"
    );

    /// Starts on `addr` (plain HTTP).
    pub async fn start_on(addr: std::net::SocketAddr, config: DoConfig) -> anyhow::Result<Self> {
        let (listener, url) = core::bind(addr).await?;
        let state = Arc::new(DoState {
            limits: Mutex::new(Limits::new(&config)),
            config,
            url: url.clone(),
            core: Core::new("digitalocean"),
            world: Mutex::new(World::default()),
            loopback_net: core::random_bytes::<2>(),
        });
        let running = Running::spawn("digitalocean", listener, url, router(state.clone()));
        Ok(Self {
            state,
            running: Arc::new(running),
        })
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

    /// What cloud-init did on a droplet's server, in its modules' order (see
    /// `host::Boot::boot_log`); empty without `hosts`.
    pub fn boot_log(&self, id: u64) -> Vec<String> {
        let world = lock(&self.state.world);
        world
            .droplets
            .iter()
            .find(|d| d.id == id)
            .and_then(|d| d.host.as_ref())
            .map(|h| h.boot_log.clone())
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
                d.delete();
                true
            }
            None => false,
        }
    }
}

fn router(state: Arc<DoState>) -> Router {
    Router::new()
        .route(
            "/v2/droplets",
            get(droplets::list)
                .post(droplets::create)
                .delete(droplets::delete_by_tag),
        )
        .route(
            "/v2/droplets/{id}",
            get(droplets::get).delete(droplets::delete),
        )
        .route("/v2/actions/{id}", get(actions::get))
        .route(
            "/v2/account/keys",
            get(ssh_keys::list).post(ssh_keys::create),
        )
        .route(
            "/v2/account/keys/{key}",
            get(ssh_keys::get).delete(ssh_keys::delete),
        )
        .fallback(|| async { DoError::not_found() })
        .layer(middleware::from_fn_with_state(state.clone(), gate::gate))
        .with_state(state)
}
