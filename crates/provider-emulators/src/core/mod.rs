//! What the three provider emulators share beyond `orchestrator-emulator-kit` (the accept loop,
//! the server handle, the fault table): the gate every request passes (count, admit, inject
//! faults, log), the handles' fault and counter controls, fixed rate-limit windows
//! ([`window`]) and the request and answer helpers ([`http`]).

mod http;
mod window;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use orchestrator_emulator_kit::{FaultTable, Seeded};

pub(crate) use http::{
    QueryMap, bearer, json, page_number, paginate, parse_object, per_page, refusal,
};
pub(crate) use orchestrator_emulator_kit::{DropConnection, Running, bind, dropped, hex, lock};
pub(crate) use window::{Count, Window};

use crate::{Faults, Stats};

impl Seeded for Faults {
    fn seed(&self) -> u64 {
        self.seed
    }
}

/// The bearer token the gate accepted; each token is its own account.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) String);

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

/// What an emulator's own checks (credentials, configured rate limits) make of a request.
#[derive(Debug)]
pub(crate) enum Admission {
    /// On to the faults and the handler.
    Admitted,
    /// Bad credentials: counted in [`Stats::auth_failures`], answered with this.
    Unauthenticated(Response),
    /// Over a configured rate limit: counted in [`Stats::rate_limited`], answered with this.
    RateLimited(Response),
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
    name: &'static str,
    faults: Mutex<FaultTable<Faults>>,
    stats: Mutex<Stats>,
}

impl Core {
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            faults: Mutex::new(FaultTable::default()),
            stats: Mutex::new(Stats::default()),
        }
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        lock(&self.faults).set_default(faults);
    }

    pub(crate) fn set_faults_for(&self, route: &str, faults: Faults) {
        lock(&self.faults).set_route(route, faults);
    }

    pub(crate) fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    /// The middleware of every provider emulator: counts the request by route, lets the
    /// emulator `admit` it (its credentials and rate limits; it may leave its [`Caller`] in
    /// the request), runs the handler under the route's faults (`render` shapes an injected
    /// error the provider's way), and logs one line.
    pub(crate) async fn gate(
        &self,
        mut req: Request,
        next: Next,
        render: fn(Fault, u64) -> Response,
        admit: impl FnOnce(&mut Request, &str) -> Admission,
    ) -> Response {
        let arrived = Instant::now();
        let route = self.count(&req);
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let response = match admit(&mut req, &route) {
            Admission::Admitted => self.run_with_faults(&route, req, next, render).await,
            Admission::Unauthenticated(refusal) => {
                self.stats().auth_failures += 1;
                refusal
            }
            Admission::RateLimited(refusal) => {
                self.stats().rate_limited += 1;
                refusal
            }
        };
        self.log(&method, &route, &path, &response, arrived);
        response
    }

    /// Draws this request's fate: always four numbers, so the sequence depends only on the
    /// seed and the number of requests on that generator.
    fn draw(&self, route: &str) -> Drawn {
        let mut table = lock(&self.faults);
        let (f, rng) = table.for_route(route);
        let (pick, code, slow, after) = (
            rng.next_f64(),
            rng.next_f64(),
            rng.next_f64(),
            rng.next_f64(),
        );
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
    async fn run_with_faults(
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
    fn count(&self, req: &Request) -> String {
        let template = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("<unmatched>", MatchedPath::as_str);
        let route = format!("{} {template}", req.method());
        *self.stats().requests.entry(route.clone()).or_default() += 1;
        route
    }

    /// One line per request: method, route, path, status; never a header, a token or a body.
    fn log(&self, method: &Method, route: &str, path: &str, response: &Response, arrived: Instant) {
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

/// The methods every emulator's public handle shares (start, URL, stop, faults, counters), for
/// a handle with fields `state.core: Core` and `running: Arc<Running>` and a `start_on(addr,
/// config)`. `api` is the path clients append to the URL, `route` one of its route keys (both
/// for the docs).
macro_rules! handle_methods {
    (config: $config:ty, api: $api:literal, route: $route:literal) => {
        /// Starts on `127.0.0.1:0`.
        pub async fn start(config: $config) -> anyhow::Result<Self> {
            Self::start_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), config).await
        }

        #[doc = concat!(
            "The server's base, e.g. `http://127.0.0.1:41234` (clients append `",
            $api,
            "`)."
        )]
        pub fn url(&self) -> String {
            self.running.url.clone()
        }

        /// Stops the server.
        pub fn shutdown(&self) {
            self.running.stop();
        }

        /// Faults for every route without its own; restarts the generator from `faults.seed`.
        pub fn set_faults(&self, faults: $crate::Faults) {
            self.state.core.set_faults(faults);
        }

        #[doc = concat!(
            "Faults for one route, keyed like [`Stats::requests`](crate::Stats::requests) (`\"",
            $route,
            "\"`)."
        )]
        pub fn set_faults_for(&self, route: &str, faults: $crate::Faults) {
            self.state.core.set_faults_for(route, faults);
        }

        /// No faults anywhere.
        pub fn clear_faults(&self) {
            self.state.core.clear_faults();
        }

        /// A snapshot of the counters.
        pub fn stats(&self) -> $crate::Stats {
            self.state.core.stats().clone()
        }

        /// Clears the counters (not the rate-limit windows).
        pub fn reset_stats(&self) {
            *self.state.core.stats() = $crate::Stats::default();
        }
    };
}
pub(crate) use handle_methods;

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

/// `N` random bytes.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system generator only fails where nothing would work anyway.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes
}
