//! What the three provider emulators share beyond `orchestrator-emulator-kit` (the accept loop,
//! the server handle, the generator): the seeded faults with per-route overrides, fixed
//! rate-limit windows, counters, and the one log line per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

pub(crate) use orchestrator_emulator_kit::{DropConnection, Rng, Running, bind, dropped, lock};

use crate::{Faults, Stats};

#[derive(Debug, Clone)]
struct Configured {
    faults: Faults,
    rng: Rng,
}

impl Configured {
    fn new(faults: Faults) -> Self {
        let rng = Rng::new(faults.seed);
        Self { faults, rng }
    }
}

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Drop,
    ServerError(StatusCode),
    TooMany,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Drop => "dropped_connection",
            Self::ServerError(_) => "server_error",
            Self::TooMany => "rate_limited_429",
        }
    }
}

/// One request's fate.
#[derive(Debug)]
struct Drawn {
    fault: Option<Fault>,
    /// The fault hits the answer after the handler ran (its change is made).
    after_handler: bool,
    latency: Duration,
    slow: Option<Duration>,
    retry_after: u64,
}

/// Counters, faults and logging of one emulator.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) name: &'static str,
    default: Mutex<Configured>,
    routes: Mutex<BTreeMap<String, Configured>>,
    stats: Mutex<Stats>,
}

impl Core {
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            default: Mutex::new(Configured::new(Faults::default())),
            routes: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(Stats::default()),
        }
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        *lock(&self.default) = Configured::new(faults);
    }

    pub(crate) fn set_faults_for(&self, route: &str, faults: Faults) {
        lock(&self.routes).insert(route.to_owned(), Configured::new(faults));
    }

    pub(crate) fn clear_faults(&self) {
        *lock(&self.default) = Configured::new(Faults::default());
        lock(&self.routes).clear();
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    /// Draws this request's fate: always four numbers, so the sequence depends only on the
    /// seed and the number of requests on that generator.
    fn draw(&self, route: &str) -> Drawn {
        let mut routes = lock(&self.routes);
        let mut default = lock(&self.default);
        let c = match routes.get_mut(route) {
            Some(c) => c,
            None => &mut default,
        };
        let (pick, code, slow, after) = (
            c.rng.next_f64(),
            c.rng.next_f64(),
            c.rng.next_f64(),
            c.rng.next_f64(),
        );
        let f = &c.faults;
        let drop_edge = f.dropped_connection;
        let error_edge = drop_edge + f.server_error;
        let many_edge = error_edge + f.rate_limited_429;
        let fault = if pick < drop_edge {
            Some(Fault::Drop)
        } else if pick < error_edge {
            Some(Fault::ServerError(match code {
                x if x < 1.0 / 3.0 => StatusCode::INTERNAL_SERVER_ERROR,
                x if x < 2.0 / 3.0 => StatusCode::BAD_GATEWAY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            }))
        } else if pick < many_edge {
            Some(Fault::TooMany)
        } else {
            None
        };
        // A 429 always means "not done"; drops and 5xx may come after the change was made.
        let after_handler =
            matches!(fault, Some(Fault::Drop | Fault::ServerError(_))) && after < f.after_handler;
        Drawn {
            fault,
            after_handler,
            latency: f.latency,
            slow: (slow < f.slow_response).then_some(f.slow_response_delay),
            retry_after: f.retry_after_secs,
        }
    }

    /// Runs the handler under this route's faults; `render` shapes an injected error the way
    /// the provider does (a [`Fault::Drop`] never reaches it).
    pub(crate) async fn run_with_faults(
        &self,
        route: &str,
        req: Request,
        next: Next,
        render: fn(Fault, u64) -> Response,
    ) -> Response {
        let drawn = self.draw(route);
        if !drawn.latency.is_zero() {
            tokio::time::sleep(drawn.latency).await;
        }
        if let Some(delay) = drawn.slow {
            *self
                .stats()
                .faults_injected
                .entry("slow_response".to_owned())
                .or_default() += 1;
            tokio::time::sleep(delay).await;
        }
        let Some(fault) = drawn.fault else {
            return next.run(req).await;
        };
        {
            let mut stats = self.stats();
            *stats
                .faults_injected
                .entry(fault.name().to_owned())
                .or_default() += 1;
            if drawn.after_handler {
                stats.faults_after_handler += 1;
            }
        }
        if drawn.after_handler {
            // The change is made; the answer is lost.
            let _ = next.run(req).await;
        }
        match fault {
            Fault::Drop => dropped(),
            other => render(other, drawn.retry_after),
        }
    }

    /// Counts a request by route; returns the route key (`"GET /v2/droplets/{id}"`).
    pub(crate) fn count(&self, req: &Request) -> String {
        let template = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("<unmatched>", MatchedPath::as_str);
        let route = format!("{} {template}", req.method());
        *self.stats().requests.entry(route.clone()).or_default() += 1;
        route
    }

    /// One line per request: method, route, path, status; never a header, a token or a body.
    pub(crate) fn log(
        &self,
        method: &Method,
        route: &str,
        path: &str,
        response: &Response,
        arrived: Instant,
    ) {
        let template = route.split_once(' ').map_or(route, |(_, t)| t);
        tracing::info!(
            emulator = self.name,
            %method,
            route = template,
            path,
            status = response.status().as_u16(),
            dropped = response.extensions().get::<DropConnection>().is_some(),
            elapsed_ms = u64::try_from(arrived.elapsed().as_millis()).unwrap_or(u64::MAX),
            "provider-emulator request"
        );
    }
}

/// The state of one key's fixed window after counting (or refusing) a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Count {
    pub(crate) limit: u32,
    pub(crate) used: u32,
    pub(crate) reset_in: Duration,
    pub(crate) allowed: bool,
}

impl Count {
    pub(crate) fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.used)
    }

    /// Whole seconds until the window resets, at least 1.
    pub(crate) fn retry_after(&self) -> u64 {
        let d = self.reset_in;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// Fixed windows per key (a token, a user), starting at the key's first request.
#[derive(Debug)]
pub(crate) struct Window {
    limit: u32,
    length: Duration,
    keys: HashMap<String, (Instant, u32)>,
}

impl Window {
    /// `limit` 0 = unlimited.
    pub(crate) fn new(limit: u32, length: Duration) -> Self {
        Self {
            limit,
            length,
            keys: HashMap::new(),
        }
    }

    fn entry(&mut self, key: &str) -> &mut (Instant, u32) {
        let now = Instant::now();
        let length = self.length;
        let e = self.keys.entry(key.to_owned()).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= length {
            *e = (now, 0);
        }
        e
    }

    /// Counts a request unless the window is full.
    pub(crate) fn count(&mut self, key: &str) -> Count {
        let (limit, length) = (self.limit, self.length);
        let e = self.entry(key);
        let reset_in = length.saturating_sub(e.0.elapsed());
        if limit == 0 {
            e.1 = e.1.saturating_add(1);
            return Count {
                limit: u32::MAX,
                used: e.1,
                reset_in,
                allowed: true,
            };
        }
        let allowed = e.1 < limit;
        if allowed {
            e.1 += 1;
        }
        Count {
            limit,
            used: e.1,
            reset_in,
            allowed,
        }
    }

    /// The window's state without counting.
    pub(crate) fn peek(&mut self, key: &str) -> Count {
        let (limit, length) = (self.limit, self.length);
        let e = self.entry(key);
        Count {
            limit,
            used: e.1,
            reset_in: length.saturating_sub(e.0.elapsed()),
            allowed: limit == 0 || e.1 < limit,
        }
    }
}

/// `page` (1-based) of `items`, `per_page` each: (the page, the number of pages).
pub(crate) fn paginate<T: Clone>(items: &[T], page: usize, per_page: usize) -> (Vec<T>, usize) {
    let per_page = per_page.max(1);
    let pages = items.len().div_ceil(per_page).max(1);
    let start = (page.max(1) - 1).saturating_mul(per_page);
    let slice = items.iter().skip(start).take(per_page).cloned().collect();
    (slice, pages)
}

/// Parses a JSON object body; an empty body is `{}`. `Err` carries no value from the body.
pub(crate) fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ()> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(()),
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of `data`, hex, cut to `chars`.
pub(crate) fn sha256_hex(data: &[u8], chars: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut h = hex(digest.as_ref());
    h.truncate(chars);
    h
}

/// Now as RFC 3339 (UTC, seconds).
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The query string as a map (later duplicates win).
pub(crate) fn query_map(query: Option<&str>) -> HashMap<String, String> {
    let Some(q) = query else {
        return HashMap::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn digit(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(digit);
                let lo = bytes.get(i + 2).copied().and_then(digit);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi * 16 + lo);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `N` random bytes.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system generator only fails where nothing would work anyway.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes
}
