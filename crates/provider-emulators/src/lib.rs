//! Local stand-ins for the three server and DNS providers the infra service drives, faithful
//! where infra depends on their behaviour (see `shared/reference/providers.md`):
//!
//! - **[`DigitalOcean`]** (API v2, bearer tokens): droplets that report `active` before they have
//!   a public address, an optional transient 404 while a fresh droplet is polled, listing by tag
//!   or name with DigitalOcean's pagination, delete then 404, account SSH keys with the 422 for a
//!   key already registered, `ratelimit-*` headers on every answer and 429 with `retry-after`.
//!   Each token is its own account: droplets and keys made with one token are invisible to
//!   another.
//! - **[`Cloudflare`]** (API v4, bearer tokens): zones, DNS records with the v4 envelope, the
//!   81053 / 81058 "already exists" refusals, 81044 for an unknown record, 10000 for a bad token,
//!   `ttl` and `proxied` validation, 429 with `Retry-After`.
//! - **[`Time4Vps`]** (HTTP Basic): servers bought in advance, reinstall with a task to poll,
//!   `{"error": ["wronglogin"]}`.
//!
//! All three inject seeded faults ([`Faults`]: 5xx, 429, dropped connections, latency, and
//! failures *after* the change was made, the case that makes a retried create dangerous), with
//! per-route overrides, and log one line per request without headers, tokens or bodies.
//! Each emulator is an axum router on its own `127.0.0.1` port behind a middleware that
//! authenticates, limits and injects faults; the accept loop (`orchestrator-emulator-kit`) lets
//! a fault close a connection without an answer.
//!
//! Layout: `core` holds what the three share (the gate every request passes, the handles'
//! common methods, rate-limit windows, request and answer helpers); each provider is a folder
//! (`digitalocean/`, `cloudflare/`, `time4vps/`) with `mod.rs` (config, public handle, router),
//! `state`, `gate` (its credentials and limits), its error shape, and one module per resource.
//! `host` is the SSH side of booted servers, `keys` the OpenSSH public keys they are given.

mod cloudflare;
mod core;
mod digitalocean;
mod host;
mod keys;
mod time4vps;

use std::collections::BTreeMap;
use std::time::Duration;

pub use cloudflare::{CfConfig, CfPlan, Cloudflare, DnsRecordView};
pub use digitalocean::{DigitalOcean, DoConfig, DropletRecord, SshKeyRecord};
pub use host::{Exec, HostsConfig, RunCommands};
pub use time4vps::{ReinstallRecord, ServerView, T4Config, Time4Vps};

/// Faults injected into requests that passed authentication and the rate limits. Probabilities
/// are per request (0.0-1.0) and exclusive: one draw picks at most one of dropped connection,
/// server error, 429 (in that order, so their sum should stay <= 1).
#[derive(Debug, Clone)]
pub struct Faults {
    /// Seed of the generator: the same seed and request order give the same faults.
    pub seed: u64,
    /// 500, 502 or 503 (chosen uniformly), in the provider's error shape.
    pub server_error: f64,
    /// 429 with `retry-after` (the request is not carried out).
    pub rate_limited_429: f64,
    /// The connection is closed without an answer.
    pub dropped_connection: f64,
    /// Share of injected server errors and dropped connections that strike *after* the
    /// handler ran: the droplet is created, the record written, but the client never learns.
    pub after_handler: f64,
    /// Added to every request before it is answered (faulted ones included).
    pub latency: Duration,
    /// `retry-after` sent with an injected 429.
    pub retry_after_secs: u64,
    /// Probability that a request is additionally delayed by `slow_response_delay`.
    pub slow_response: f64,
    /// See `slow_response`.
    pub slow_response_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            seed: 0,
            server_error: 0.0,
            rate_limited_429: 0.0,
            dropped_connection: 0.0,
            after_handler: 0.0,
            latency: Duration::ZERO,
            retry_after_secs: 1,
            slow_response: 0.0,
            slow_response_delay: Duration::from_secs(2),
        }
    }
}

impl Faults {
    /// `rate` of all requests faulted, split evenly between server errors, 429s and dropped
    /// connections; half of the errors and drops strike after the change was made.
    pub fn mixed(seed: u64, rate: f64) -> Self {
        Self {
            seed,
            server_error: rate / 3.0,
            rate_limited_429: rate / 3.0,
            dropped_connection: rate / 3.0,
            after_handler: 0.5,
            ..Self::default()
        }
    }
}

/// Counters for assertions.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Requests by `"METHOD /route/{template}"` (`"METHOD <unmatched>"` for unknown paths).
    pub requests: BTreeMap<String, usize>,
    /// Refused for bad credentials.
    pub auth_failures: usize,
    /// Refused by the configured rate limits (not injected faults).
    pub rate_limited: usize,
    /// Injected faults by kind: `server_error`, `rate_limited_429`, `dropped_connection`,
    /// `slow_response`.
    pub faults_injected: BTreeMap<String, usize>,
    /// Injected faults that struck after the handler ran (also counted above).
    pub faults_after_handler: usize,
}

impl Stats {
    /// Requests on one route key, e.g. `"POST /v2/droplets"`.
    pub fn count(&self, route: &str) -> usize {
        self.requests.get(route).copied().unwrap_or(0)
    }
}

/// The three emulators' configurations, for [`ProviderEmulators::start`].
#[derive(Debug, Clone, Default)]
pub struct ProvidersConfig {
    pub digitalocean: DoConfig,
    pub cloudflare: CfConfig,
    pub time4vps: T4Config,
}

/// All three emulators, each on its own port.
#[derive(Debug, Clone)]
pub struct ProviderEmulators {
    pub digitalocean: DigitalOcean,
    pub cloudflare: Cloudflare,
    pub time4vps: Time4Vps,
}

impl ProviderEmulators {
    /// Starts the three on `127.0.0.1:0`.
    pub async fn start(config: ProvidersConfig) -> anyhow::Result<Self> {
        let free = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(config, free, free, free).await
    }

    /// Starts the three on the given addresses (fixed ports, for a container).
    pub async fn start_on(
        config: ProvidersConfig,
        digitalocean: std::net::SocketAddr,
        cloudflare: std::net::SocketAddr,
        time4vps: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            digitalocean: DigitalOcean::start_on(digitalocean, config.digitalocean).await?,
            cloudflare: Cloudflare::start_on(cloudflare, config.cloudflare).await?,
            time4vps: Time4Vps::start_on(time4vps, config.time4vps).await?,
        })
    }

    /// `{"digitalocean": url, "cloudflare": url, "time4vps": url}`.
    pub fn urls_json(&self) -> serde_json::Value {
        serde_json::json!({
            "digitalocean": self.digitalocean.url(),
            "cloudflare": self.cloudflare.url(),
            "time4vps": self.time4vps.url(),
        })
    }

    /// The same faults on all three.
    pub fn set_faults(&self, faults: Faults) {
        self.digitalocean.set_faults(faults.clone());
        self.cloudflare.set_faults(faults.clone());
        self.time4vps.set_faults(faults);
    }

    /// Stops the three servers.
    pub fn shutdown(&self) {
        self.digitalocean.shutdown();
        self.cloudflare.shutdown();
        self.time4vps.shutdown();
    }
}
