//! Cloudflare API v4: zones and DNS records, with the v4 envelope, Cloudflare's error codes and
//! its rate limit.
//!
//! What it models, each after Cloudflare's API docs (<https://developers.cloudflare.com/api/>
//! and <https://developers.cloudflare.com/fundamentals/api/>):
//! - The v4 envelope (`success`, `errors`, `messages`, `result`, `result_info`) on every answer.
//! - Zones ("List Zones", "Zone Details") and DNS records ("List DNS Records", "DNS Record
//!   Details", "Create DNS Record", "Update DNS Record" (PATCH), "Overwrite DNS Record" (PUT),
//!   "Delete DNS Record"). Names are stored as lower-case FQDNs; a relative name (`www`, `@`)
//!   is expanded with the zone, as Cloudflare does. A record's fields are checked as Cloudflare
//!   does (`validate`): `ttl` 1 (automatic) or 60-86400, content per type (an IPv4 for A, an
//!   IPv6 for AAAA, a host name for CNAME), `proxied` only on proxiable types.
//! - "Already exists" (HTTP 400): a CNAME beside an A/AAAA/CNAME of the same name, or an A/AAAA
//!   beside a CNAME, is 81053; an identical record is 81058. Several A (or AAAA) records of one
//!   name with other contents are accepted, as Cloudflare does (round-robin: the hazard a blind
//!   POST creates; "Create DNS record", DNS docs "Round-robin DNS").
//! - Record attributes ("Record attributes"): a `comment` and `tags` with the plan's limits and
//!   the list filters on them (`attributes`).
//! - Tokens ("Verify Token", `GET /user/tokens/verify`): a missing or malformed header or
//!   token is 400 with code 6003 and 6111 in its chain; an unknown token is 403, code 10000.
//! - Rate limits ("Rate limits": 1,200 requests per 5 minutes per token): `rate_limit` per
//!   `rate_window`, reported on every answer in `Ratelimit` and `Ratelimit-Policy`; over it,
//!   429 with `Retry-After` until the window ends.
//!
//! What it does not model: what proxying does (answers, the enterprise TTL floor), content
//! rules of the other record types, zone creation and settings, token permissions and
//! account-level tokens (every token may use every zone), batch and import/export endpoints.
//!
//! Modules: `state` (zones, records), `gate` (tokens, the window, `tokens/verify`),
//! `envelope` (the v4 envelope, refusals, page parameters), `validate` (record bodies and
//! conflicts), `attributes` (comments and tags), and one per resource: `zones`, `records`.

mod attributes;
mod envelope;
mod gate;
mod records;
mod state;
mod validate;
mod zones;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use axum::routing::get;
use time::OffsetDateTime;

use crate::core::{self, Core, Running, Window, lock};
use envelope::CfError;
use state::{CfState, World, Zone};

pub use attributes::CfPlan;

/// How the Cloudflare emulator behaves.
#[derive(Debug, Clone)]
pub struct CfConfig {
    /// Accepted API tokens (each may use every zone).
    pub tokens: Vec<String>,
    /// Zone names, e.g. `"example.com"`.
    pub zones: Vec<String>,
    /// Requests per `rate_window` per token (0 = unlimited). Cloudflare: 1200 per 5 minutes.
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// The zones' plan: how long a comment may be, whether tags are allowed.
    pub plan: CfPlan,
    /// Whether a proxiable record (A, AAAA, CNAME) created or replaced without `proxied` goes
    /// through Cloudflare's proxy, as the dashboard's default does for a new record. Off by
    /// default (the API's documented default); on in tests that a client says `proxied: false`
    /// itself (SSH and a server's own TLS do not pass the HTTP proxy).
    pub proxied_by_default: bool,
}

impl Default for CfConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            zones: Vec::new(),
            rate_limit: 1200,
            rate_window: Duration::from_secs(300),
            plan: CfPlan::Free,
            proxied_by_default: false,
        }
    }
}

/// A DNS record as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecordView {
    /// The zone's name.
    pub zone: String,
    pub id: String,
    /// `A`, `AAAA`, `CNAME`, ...
    pub type_: String,
    /// Lower-case FQDN.
    pub name: String,
    pub content: String,
    pub ttl: u32,
    pub proxied: bool,
    /// What the record's writer said it is for; `None` = no comment.
    pub comment: Option<String>,
    /// `name:value` tags, names lower-case.
    pub tags: Vec<String>,
    /// The token that last wrote it.
    pub token_used: String,
}

/// A running Cloudflare emulator. Clones share it; the server stops when the last handle drops
/// or on [`Cloudflare::shutdown`].
#[derive(Debug, Clone)]
pub struct Cloudflare {
    state: Arc<CfState>,
    running: Arc<Running>,
}

impl Cloudflare {
    // start, url, shutdown, set_faults, set_faults_for, clear_faults, stats, reset_stats.
    core::handle_methods!(
        config: CfConfig,
        api: "/client/v4/...",
        route: "POST /client/v4/zones/{zone_id}/dns_records"
    );

    /// Starts on `addr` (plain HTTP).
    pub async fn start_on(addr: std::net::SocketAddr, config: CfConfig) -> anyhow::Result<Self> {
        let mut zones = Vec::new();
        for name in &config.zones {
            let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
            anyhow::ensure!(
                name.contains('.') && !zones.iter().any(|z: &Zone| z.name == name),
                "zone {name:?}: not a domain or listed twice"
            );
            zones.push(Zone {
                id: zones::zone_id(&name),
                name,
                created_on: OffsetDateTime::now_utc(),
            });
        }
        let (listener, url) = core::bind(addr).await?;
        let limits = Window::new(config.rate_limit, config.rate_window);
        let state = Arc::new(CfState {
            config,
            zones,
            core: Core::new("cloudflare"),
            world: Mutex::new(World::default()),
            limits: Mutex::new(limits),
        });
        let running = Running::spawn("cloudflare", listener, url, router(state.clone()));
        Ok(Self {
            state,
            running: Arc::new(running),
        })
    }

    /// The API base as Cloudflare names it: `{url}/client/v4`.
    pub fn api_base(&self) -> String {
        format!("{}/client/v4", self.running.url)
    }

    /// A configured zone's id.
    pub fn zone_id(&self, zone: &str) -> Option<String> {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        self.state
            .zones
            .iter()
            .find(|z| z.name == zone)
            .map(|z| z.id.clone())
    }

    /// All records, in creation order.
    pub fn records(&self) -> Vec<DnsRecordView> {
        lock(&self.state.world)
            .records
            .iter()
            .map(|r| DnsRecordView {
                zone: self
                    .state
                    .zone(&r.zone_id)
                    .map(|z| z.name.clone())
                    .unwrap_or_default(),
                id: r.id.clone(),
                type_: r.type_.clone(),
                name: r.name.clone(),
                content: r.content.clone(),
                ttl: r.ttl,
                proxied: r.proxied,
                comment: r.comment.clone(),
                tags: r.tags.clone(),
                token_used: r.token_used.clone(),
            })
            .collect()
    }
}

fn router(state: Arc<CfState>) -> Router {
    Router::new()
        .route("/client/v4/user/tokens/verify", get(gate::verify_token))
        .route("/client/v4/zones", get(zones::list))
        .route("/client/v4/zones/{zone_id}", get(zones::get))
        .route(
            "/client/v4/zones/{zone_id}/dns_records",
            get(records::list).post(records::create),
        )
        .route(
            "/client/v4/zones/{zone_id}/dns_records/{record_id}",
            get(records::get)
                .patch(records::update::<false>)
                .put(records::update::<true>)
                .delete(records::delete),
        )
        .fallback(|req: Request| async move { CfError::no_route(req.uri().path()) })
        .layer(middleware::from_fn_with_state(state.clone(), gate::gate))
        .with_state(state)
}
