//! Cloudflare API v4: zones and DNS records, with the v4 envelope, Cloudflare's error codes and
//! its rate limit.
//!
//! - Names are stored as lower-case FQDNs; a relative name (`www`, `@`) is expanded with the
//!   zone, as Cloudflare does.
//! - "Already exists" (HTTP 400): a CNAME beside an A/AAAA/CNAME of the same name, or an A/AAAA
//!   beside a CNAME, is 81053; an identical record is 81058; a second record of the same type
//!   and name with other content is 81053 too unless [`CfConfig::multiple_records_per_name`]
//!   (Cloudflare itself allows it: round-robin, the hazard a blind POST creates).
//! - Bad or missing token: 400 (missing or not `Bearer`) or 403 (unknown), code 10000.
//! - `rate_limit` requests per `rate_window` per token; over it, 429 with `Retry-After` until
//!   the window ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::core::{self, Core, Fault, Running, Window, lock};
use crate::{Faults, Stats};

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
    /// Allow several records of one type and name with different content (Cloudflare's real
    /// behaviour); off: such a POST is refused with 81053.
    pub multiple_records_per_name: bool,
}

impl Default for CfConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            zones: Vec::new(),
            rate_limit: 1200,
            rate_window: Duration::from_secs(300),
            multiple_records_per_name: false,
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
    /// The token that last wrote it.
    pub token_used: String,
}

#[derive(Debug, Clone)]
struct Zone {
    id: String,
    name: String,
    created_on: OffsetDateTime,
}

#[derive(Debug, Clone)]
struct Record {
    id: String,
    zone_id: String,
    type_: String,
    name: String,
    content: String,
    ttl: u32,
    proxied: bool,
    comment: Option<String>,
    created_on: OffsetDateTime,
    modified_on: OffsetDateTime,
    token_used: String,
}

#[derive(Debug, Default)]
struct World {
    next: u64,
    records: Vec<Record>,
}

#[derive(Debug)]
struct CfState {
    config: CfConfig,
    zones: Vec<Zone>,
    core: Core,
    world: Mutex<World>,
    limits: Mutex<Window>,
}

#[derive(Debug, Clone)]
struct Caller(String);

/// A running Cloudflare emulator. Clones share it; the server stops when the last handle drops
/// or on [`Cloudflare::shutdown`].
#[derive(Debug, Clone)]
pub struct Cloudflare {
    state: Arc<CfState>,
    running: Arc<Running>,
}

impl Cloudflare {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: CfConfig) -> anyhow::Result<Self> {
        Self::start_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

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
                id: zone_id(&name),
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

    /// The server's base, e.g. `http://127.0.0.1:41234` (clients append `/client/v4/...`).
    pub fn url(&self) -> String {
        self.running.url.clone()
    }

    /// The API base as Cloudflare names it: `{url}/client/v4`.
    pub fn api_base(&self) -> String {
        format!("{}/client/v4", self.running.url)
    }

    /// Stops the server.
    pub fn shutdown(&self) {
        self.running.stop();
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
                token_used: r.token_used.clone(),
            })
            .collect()
    }

    /// Faults for every route without its own; restarts the generator from `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        self.state.core.set_faults(faults);
    }

    /// Faults for one route, keyed like [`Stats::requests`]
    /// (`"POST /client/v4/zones/{zone_id}/dns_records"`).
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

fn zone_id(name: &str) -> String {
    core::sha256_hex(format!("zone:{name}").as_bytes(), 32)
}

impl CfState {
    fn zone(&self, id: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.id == id)
    }
}

fn zone_json(z: &Zone) -> Value {
    json!({
        "id": z.id,
        "name": z.name,
        "status": "active",
        "paused": false,
        "type": "full",
        "development_mode": 0,
        "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "created_on": core::rfc3339(z.created_on),
        "modified_on": core::rfc3339(z.created_on),
        "account": {"id": core::sha256_hex(b"account", 32), "name": "Emulated account"},
        "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
    })
}

fn record_json(zone: &Zone, r: &Record) -> Value {
    json!({
        "id": r.id,
        "zone_id": zone.id,
        "zone_name": zone.name,
        "name": r.name,
        "type": r.type_,
        "content": r.content,
        "proxiable": matches!(r.type_.as_str(), "A" | "AAAA" | "CNAME"),
        "proxied": r.proxied,
        "ttl": r.ttl,
        "locked": false,
        "comment": r.comment,
        "tags": [],
        "settings": {},
        "meta": {"auto_added": false, "managed_by_apps": false, "managed_by_argo_tunnel": false},
        "created_on": core::rfc3339(r.created_on),
        "modified_on": core::rfc3339(r.modified_on),
    })
}

/// Cloudflare's refusal: a status and `errors: [{code, message}]` in the envelope.
#[derive(Debug)]
struct CfError {
    status: StatusCode,
    errors: Vec<(u32, String)>,
    retry_after: Option<u64>,
}

impl CfError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            errors: vec![(code, message.into())],
            retry_after: None,
        }
    }

    fn bad(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn auth(status: StatusCode) -> Self {
        Self::new(status, 10000, "Authentication error")
    }

    fn no_record() -> Self {
        Self::new(StatusCode::NOT_FOUND, 81044, "Record does not exist.")
    }

    fn no_route(path: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            errors: vec![
                (
                    7003,
                    format!(
                        "Could not route to {path}, perhaps your object identifier is invalid?"
                    ),
                ),
                (7000, "No route for that URI".to_owned()),
            ],
            retry_after: None,
        }
    }

    fn too_many(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                971,
                "Please wait and consider throttling your request speed",
            )
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::bad(1004, format!("DNS Validation Error: {}", message.into()))
    }
}

impl IntoResponse for CfError {
    fn into_response(self) -> Response {
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|(code, message)| json!({"code": code, "message": message}))
            .collect();
        let body = json!({"success": false, "errors": errors, "messages": [], "result": null});
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
        Fault::TooMany => CfError::too_many(retry_after).into_response(),
        Fault::ServerError(status) => {
            CfError::new(status, 10002, "An unknown error has occurred").into_response()
        }
        Fault::Drop => core::dropped(),
    }
}

fn success(result: Value) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"success": true, "errors": [], "messages": [], "result": result})),
    )
        .into_response()
}

fn success_list(items: Vec<Value>, total: usize, page: usize, per_page: usize) -> Response {
    let count = items.len();
    (
        StatusCode::OK,
        axum::Json(json!({
            "success": true,
            "errors": [],
            "messages": [],
            "result": items,
            "result_info": {
                "page": page,
                "per_page": per_page,
                "count": count,
                "total_count": total,
                "total_pages": total.div_ceil(per_page).max(1),
            },
        })),
    )
        .into_response()
}

fn router(state: Arc<CfState>) -> Router {
    Router::new()
        .route("/client/v4/user/tokens/verify", get(verify_token))
        .route("/client/v4/zones", get(list_zones))
        .route("/client/v4/zones/{zone_id}", get(get_zone))
        .route(
            "/client/v4/zones/{zone_id}/dns_records",
            get(list_records).post(create_record),
        )
        .route(
            "/client/v4/zones/{zone_id}/dns_records/{record_id}",
            get(get_record)
                .patch(patch_record)
                .put(put_record)
                .delete(delete_record),
        )
        .fallback(|req: Request| async move { CfError::no_route(req.uri().path()) })
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// `Ok(token)`, or the status to refuse with: 400 for a missing or malformed header, 403 for
/// a token we don't know.
fn authenticate(headers: &HeaderMap, tokens: &[String]) -> Result<String, StatusCode> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(StatusCode::BAD_REQUEST)?;
    let (scheme, token) = value.split_once(' ').ok_or(StatusCode::BAD_REQUEST)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(StatusCode::BAD_REQUEST);
    }
    let token = token.trim();
    if tokens.iter().any(|t| t == token) {
        Ok(token.to_owned())
    } else {
        Err(StatusCode::FORBIDDEN)
    }
}

async fn gate(State(s): State<Arc<CfState>>, mut req: Request, next: Next) -> Response {
    let arrived = Instant::now();
    let route = s.core.count(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match authenticate(req.headers(), &s.config.tokens) {
        Err(status) => {
            s.core.stats().auth_failures += 1;
            CfError::auth(status).into_response()
        }
        Ok(token) => {
            let count = lock(&s.limits).count(&token);
            if count.allowed {
                req.extensions_mut().insert(Caller(token));
                s.core
                    .run_with_faults(&route, req, next, render_fault)
                    .await
            } else {
                s.core.stats().rate_limited += 1;
                CfError::too_many(count.retry_after()).into_response()
            }
        }
    };
    s.core.log(&method, &route, &path, &response, arrived);
    response
}

fn page_params(
    q: &HashMap<String, String>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<(usize, usize), CfError> {
    let page = match q.get("page") {
        None => 1,
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| CfError::bad(1001, "Invalid page number"))?,
    };
    let per_page = match q.get("per_page") {
        None => default,
        Some(p) => p
            .parse::<usize>()
            .ok()
            .ok_or_else(|| CfError::bad(1001, "Invalid per_page value"))?
            .clamp(min, max),
    };
    Ok((page, per_page))
}

async fn verify_token(Extension(Caller(token)): Extension<Caller>) -> Response {
    success(json!({
        "id": core::sha256_hex(format!("token:{token}").as_bytes(), 32),
        "status": "active",
    }))
}

async fn list_zones(
    State(s): State<Arc<CfState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, CfError> {
    let q = core::query_map(query.as_deref());
    let (page, per_page) = page_params(&q, 20, 5, 50)?;
    let name = q
        .get("name")
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let all: Vec<Value> = s
        .zones
        .iter()
        .filter(|z| name.as_ref().is_none_or(|n| &z.name == n))
        .map(zone_json)
        .collect();
    let (items, _) = core::paginate(&all, page, per_page);
    Ok(success_list(items, all.len(), page, per_page))
}

fn zone_or_404<'a>(s: &'a CfState, id: &str, path: &str) -> Result<&'a Zone, CfError> {
    s.zone(id).ok_or_else(|| CfError::no_route(path))
}

async fn get_zone(
    State(s): State<Arc<CfState>>,
    Path(zone_id): Path<String>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    Ok(success(zone_json(zone)))
}

/// Cloudflare's name rules: lower-case FQDN; `@` is the apex; a name outside the zone gets the
/// zone appended.
fn full_name(zone: &Zone, name: &str) -> String {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name == "@" || name == zone.name {
        zone.name.clone()
    } else if name.ends_with(&format!(".{}", zone.name)) {
        name
    } else {
        format!("{name}.{}", zone.name)
    }
}

async fn list_records(
    State(s): State<Arc<CfState>>,
    Path(zone_id): Path<String>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let q = core::query_map(query.as_deref());
    let (page, per_page) = page_params(&q, 100, 5, 5000)?;
    let type_ = q.get("type").map(|t| t.to_ascii_uppercase());
    let name = q
        .get("name.exact")
        .or_else(|| q.get("name"))
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let content = q.get("content.exact").or_else(|| q.get("content"));
    let world = lock(&s.world);
    let all: Vec<Value> = world
        .records
        .iter()
        .filter(|r| r.zone_id == zone.id)
        .filter(|r| type_.as_ref().is_none_or(|t| &r.type_ == t))
        .filter(|r| name.as_ref().is_none_or(|n| &r.name == n))
        .filter(|r| content.is_none_or(|c| &r.content == c))
        .map(|r| record_json(zone, r))
        .collect();
    let (items, _) = core::paginate(&all, page, per_page);
    Ok(success_list(items, all.len(), page, per_page))
}

async fn get_record(
    State(s): State<Arc<CfState>>,
    Path((zone_id, record_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let world = lock(&s.world);
    let r = world
        .records
        .iter()
        .find(|r| r.zone_id == zone.id && r.id == record_id)
        .ok_or_else(CfError::no_record)?;
    Ok(success(record_json(zone, r)))
}

/// The fields of a record body; `None` where absent (PATCH).
#[derive(Debug, Default)]
struct Fields {
    type_: Option<String>,
    name: Option<String>,
    content: Option<String>,
    ttl: Option<u32>,
    proxied: Option<bool>,
    comment: Option<Option<String>>,
}

const TYPES: [&str; 8] = ["A", "AAAA", "CNAME", "TXT", "MX", "NS", "CAA", "SRV"];

fn parse_fields(body: &Map<String, Value>, zone: &Zone) -> Result<Fields, CfError> {
    let mut f = Fields::default();
    match body.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if TYPES.contains(&t.to_ascii_uppercase().as_str()) => {
            f.type_ = Some(t.to_ascii_uppercase());
        }
        Some(_) => return Err(CfError::validation("Invalid record type.")),
    }
    match body.get("name") {
        None | Some(Value::Null) => {}
        Some(Value::String(n)) if !n.trim().is_empty() && n.len() <= 255 => {
            f.name = Some(full_name(zone, n));
        }
        Some(_) => return Err(CfError::bad(9007, "DNS record name is invalid.")),
    }
    match body.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(c)) => f.content = Some(c.trim().to_owned()),
        Some(_) => return Err(CfError::bad(9005, "Content for the record is invalid.")),
    }
    match body.get("ttl") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ttl @ (1 | 60..=86400)) => f.ttl = u32::try_from(ttl).ok(),
            _ => return Err(bad_ttl()),
        },
        Some(_) => return Err(bad_ttl()),
    }
    match body.get("proxied") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => f.proxied = Some(*b),
        Some(_) => {
            return Err(CfError::bad(
                9003,
                "Invalid 'proxied' value, must be a boolean",
            ));
        }
    }
    match body.get("comment") {
        None => {}
        Some(Value::Null) => f.comment = Some(None),
        Some(Value::String(c)) => f.comment = Some(Some(c.clone())),
        Some(_) => return Err(CfError::validation("comment must be a string.")),
    }
    Ok(f)
}

fn bad_ttl() -> CfError {
    CfError::bad(
        9021,
        "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.",
    )
}

/// Checks a complete record: content for its type, proxied only where proxiable.
fn check_record(r: &Record) -> Result<(), CfError> {
    match r.type_.as_str() {
        "A" if r.content.parse::<std::net::Ipv4Addr>().is_err() => Err(CfError::bad(
            9005,
            "Content for A record must be a valid IPv4 address.",
        )),
        "AAAA" if r.content.parse::<std::net::Ipv6Addr>().is_err() => Err(CfError::bad(
            9006,
            "Content for AAAA record must be a valid IPv6 address.",
        )),
        "CNAME"
            if r.content.is_empty()
                || !r
                    .content
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
        {
            Err(CfError::bad(9007, "Content for CNAME record is invalid."))
        }
        "TXT" | "MX" | "NS" | "CAA" | "SRV" if r.proxied => {
            Err(CfError::bad(9004, "This record type cannot be proxied."))
        }
        _ if r.content.is_empty() => Err(CfError::validation("content is required.")),
        _ => Ok(()),
    }
}

/// Refuses a record that collides with another of the zone (`except` = itself, on update).
fn check_conflicts(
    records: &[Record],
    r: &Record,
    except: Option<&str>,
    multiple: bool,
) -> Result<(), CfError> {
    let address = |t: &str| matches!(t, "A" | "AAAA");
    for other in records
        .iter()
        .filter(|o| o.zone_id == r.zone_id && o.name == r.name && Some(o.id.as_str()) != except)
    {
        let host_clash = (r.type_ == "CNAME" && (address(&other.type_) || other.type_ == "CNAME"))
            || (address(&r.type_) && other.type_ == "CNAME");
        if host_clash {
            return Err(exists());
        }
        if other.type_ == r.type_ {
            if other.content == r.content {
                return Err(CfError::bad(81058, "An identical record already exists."));
            }
            if address(&r.type_) && !multiple {
                return Err(exists());
            }
        }
    }
    Ok(())
}

fn exists() -> CfError {
    CfError::bad(
        81053,
        "An A, AAAA, or CNAME record with that host already exists.",
    )
}

async fn create_record(
    State(s): State<Arc<CfState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(zone_id): Path<String>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|_| CfError::bad(9207, "Request body is invalid."))?;
    let body =
        core::parse_object(&body).map_err(|()| CfError::bad(9207, "Request body is invalid."))?;
    let f = parse_fields(&body, zone)?;
    let now = OffsetDateTime::now_utc();
    let mut record = Record {
        id: String::new(),
        zone_id: zone.id.clone(),
        type_: f
            .type_
            .ok_or_else(|| CfError::validation("type is required."))?,
        name: f
            .name
            .ok_or_else(|| CfError::bad(9007, "DNS record name is required."))?,
        content: f
            .content
            .ok_or_else(|| CfError::validation("content is required."))?,
        ttl: f.ttl.unwrap_or(1),
        proxied: f.proxied.unwrap_or(false),
        comment: f.comment.flatten(),
        created_on: now,
        modified_on: now,
        token_used: token,
    };
    check_record(&record)?;
    let mut world = lock(&s.world);
    check_conflicts(
        &world.records,
        &record,
        None,
        s.config.multiple_records_per_name,
    )?;
    world.next += 1;
    record.id = core::sha256_hex(format!("record:{}:{}", zone.id, world.next).as_bytes(), 32);
    let json = record_json(zone, &record);
    world.records.push(record);
    Ok(success(json))
}

async fn update(
    s: &CfState,
    token: String,
    zone_id: &str,
    record_id: &str,
    req: Request,
    replace: bool,
) -> Result<Response, CfError> {
    let zone = zone_or_404(s, zone_id, req.uri().path())?;
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|_| CfError::bad(9207, "Request body is invalid."))?;
    let body =
        core::parse_object(&body).map_err(|()| CfError::bad(9207, "Request body is invalid."))?;
    let f = parse_fields(&body, zone)?;
    let mut world = lock(&s.world);
    let index = world
        .records
        .iter()
        .position(|r| r.zone_id == zone.id && r.id == record_id)
        .ok_or_else(CfError::no_record)?;
    let mut record = world.records[index].clone();
    if replace {
        record.type_ = f
            .type_
            .ok_or_else(|| CfError::validation("type is required."))?;
        record.name = f
            .name
            .ok_or_else(|| CfError::bad(9007, "DNS record name is required."))?;
        record.content = f
            .content
            .ok_or_else(|| CfError::validation("content is required."))?;
        record.ttl = f.ttl.unwrap_or(1);
        record.proxied = f.proxied.unwrap_or(false);
        record.comment = f.comment.flatten();
    } else {
        if let Some(t) = f.type_ {
            record.type_ = t;
        }
        if let Some(n) = f.name {
            record.name = n;
        }
        if let Some(c) = f.content {
            record.content = c;
        }
        if let Some(t) = f.ttl {
            record.ttl = t;
        }
        if let Some(p) = f.proxied {
            record.proxied = p;
        }
        if let Some(c) = f.comment {
            record.comment = c;
        }
    }
    record.modified_on = OffsetDateTime::now_utc();
    record.token_used = token;
    check_record(&record)?;
    check_conflicts(
        &world.records,
        &record,
        Some(record_id),
        s.config.multiple_records_per_name,
    )?;
    let json = record_json(zone, &record);
    world.records[index] = record;
    Ok(success(json))
}

async fn patch_record(
    State(s): State<Arc<CfState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path((zone_id, record_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, CfError> {
    update(&s, token, &zone_id, &record_id, req, false).await
}

async fn put_record(
    State(s): State<Arc<CfState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path((zone_id, record_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, CfError> {
    update(&s, token, &zone_id, &record_id, req, true).await
}

async fn delete_record(
    State(s): State<Arc<CfState>>,
    Path((zone_id, record_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let mut world = lock(&s.world);
    let index = world
        .records
        .iter()
        .position(|r| r.zone_id == zone.id && r.id == record_id)
        .ok_or_else(CfError::no_record)?;
    world.records.remove(index);
    Ok(success(json!({"id": record_id})))
}
