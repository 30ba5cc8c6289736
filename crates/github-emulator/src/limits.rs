//! The one middleware every request passes: count it, authenticate it, apply the primary and
//! secondary rate limits, inject faults, then run the handler and stamp GitHub's rate-limit
//! headers on whatever comes back.
//!
//! Limits are kept per bucket: one per installation (all its tokens share it, as on GitHub),
//! one for the App's JWT and one for unauthenticated callers (60 an hour). Windows are fixed
//! hours starting at a bucket's first request. The minimum write interval is measured between
//! arrivals of content-creating requests of one installation, before any injected latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use crate::Faults;
use crate::auth::{self, Identity};
use crate::error::ApiError;
use crate::model;

use orchestrator_emulator_kit::{DropConnection, Rng, dropped};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bucket {
    Anonymous,
    App,
    Installation(u64),
}

#[derive(Debug)]
struct BucketState {
    reset: i64,
    used: u32,
    in_flight: usize,
    last_write: Option<Instant>,
}

/// The rate-limit windows and in-flight counts.
#[derive(Debug)]
pub(crate) struct Limits {
    buckets: BTreeMap<Bucket, BucketState>,
    /// A window's length in seconds (`Config::primary_window`, at least one).
    window: i64,
}

/// What the headers say about a bucket after counting a request.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    limit: u32,
    used: u32,
    reset: i64,
}

impl Limits {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            buckets: BTreeMap::new(),
            window: i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1),
        }
    }

    fn bucket(&mut self, bucket: Bucket, now: i64) -> &mut BucketState {
        let window = self.window;
        let state = self.buckets.entry(bucket).or_insert(BucketState {
            reset: now.saturating_add(window),
            used: 0,
            in_flight: 0,
            last_write: None,
        });
        if now >= state.reset {
            state.reset = now.saturating_add(window);
            state.used = 0;
        }
        state
    }

    /// Counts a request; `Err` when the window is exhausted.
    fn count(&mut self, bucket: Bucket, limit: u32) -> Result<Snapshot, Snapshot> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let state = self.bucket(bucket, now);
        if state.used >= limit {
            return Err(Snapshot {
                limit,
                used: limit,
                reset: state.reset,
            });
        }
        state.used += 1;
        Ok(Snapshot {
            limit,
            used: state.used,
            reset: state.reset,
        })
    }
}

/// Decrements a bucket's in-flight count when the request ends, however it ends.
struct InFlight {
    state: Arc<model::State>,
    bucket: Bucket,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut limits = self.state.limits();
        let b = limits.bucket(self.bucket, now);
        b.in_flight = b.in_flight.saturating_sub(1);
    }
}

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

/// The configured faults: a default and per-route overrides, each with its own generator.
#[derive(Debug)]
pub(crate) struct FaultState {
    default: Configured,
    routes: BTreeMap<String, Configured>,
}

impl Default for FaultState {
    fn default() -> Self {
        Self {
            default: Configured::new(Faults::default()),
            routes: BTreeMap::new(),
        }
    }
}

impl FaultState {
    pub(crate) fn set_default(&mut self, faults: Faults) {
        self.default = Configured::new(faults);
    }

    pub(crate) fn set_route(&mut self, route: &str, faults: Faults) {
        self.routes
            .insert(route.to_owned(), Configured::new(faults));
    }

    /// Draws this request's fate (always three numbers, so the sequence depends only on the
    /// seed and the number of requests).
    fn draw(&mut self, route: &str) -> Drawn {
        let c = self.routes.get_mut(route).unwrap_or(&mut self.default);
        let (pick, code, slow) = (c.rng.next_f64(), c.rng.next_f64(), c.rng.next_f64());
        let f = &c.faults;
        let mut edge = f.dropped_connection;
        let fault = if pick < edge {
            Some(Fault::Drop)
        } else if pick < {
            edge += f.server_error;
            edge
        } {
            let status = match code {
                x if x < 1.0 / 3.0 => StatusCode::INTERNAL_SERVER_ERROR,
                x if x < 2.0 / 3.0 => StatusCode::BAD_GATEWAY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            Some(Fault::ServerError(status))
        } else if pick < {
            edge += f.rate_limited_429;
            edge
        } {
            Some(Fault::TooMany)
        } else if pick < edge + f.secondary_403 {
            Some(Fault::Secondary)
        } else {
            None
        };
        Drawn {
            fault,
            latency: f.latency,
            slow: (slow < f.slow_response).then_some(f.slow_response_delay),
            retry_after: (f.retry_after_secs > 0).then_some(f.retry_after_secs),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Drop,
    ServerError(StatusCode),
    TooMany,
    Secondary,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Drop => "dropped_connection",
            Self::ServerError(_) => "server_error",
            Self::TooMany => "rate_limited_429",
            Self::Secondary => "secondary_403",
        }
    }
}

#[derive(Debug)]
struct Drawn {
    fault: Option<Fault>,
    latency: Duration,
    slow: Option<Duration>,
    retry_after: Option<u64>,
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The middleware (see the module docs).
pub(crate) async fn gate(
    State(state): State<Arc<model::State>>,
    req: Request,
    next: Next,
) -> Response {
    let arrived = Instant::now();
    let arrived_unix_ms =
        i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request = format!(
        "{method} {}",
        req.uri()
            .path_and_query()
            .map_or(path.as_str(), |p| p.as_str())
    );
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("<unmatched>", MatchedPath::as_str);
    let route = format!("{method} {template}");
    *state.stats().requests.entry(route.clone()).or_default() += 1;

    let (response, snapshot) = admit_and_run(&state, &route, &method, arrived, req, next).await;
    let mut response = response;
    if let Some(s) = snapshot {
        stamp(&mut response, s);
    }
    let status = response.status().as_u16();
    let dropped = response.extensions().get::<DropConnection>().is_some();
    record_attempt(
        &state,
        request,
        arrived,
        arrived_unix_ms,
        &response,
        dropped,
    );
    tracing::info!(
        %method,
        route = template_of(&route),
        path = %path,
        status,
        dropped,
        elapsed_ms = u64::try_from(arrived.elapsed().as_millis()).unwrap_or(u64::MAX),
        "github-emulator request"
    );
    response
}

/// Keeps the request and the waits its answer asked for (see `Stats::attempts`).
fn record_attempt(
    state: &model::State,
    request: String,
    arrived: Instant,
    arrived_unix_ms: i64,
    response: &Response,
    dropped: bool,
) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let refused = matches!(response.status().as_u16(), 403 | 429);
    let attempt = crate::Attempt {
        request,
        arrived,
        answered: Instant::now(),
        status: if dropped {
            0
        } else {
            response.status().as_u16()
        },
        retry_after: header("retry-after").and_then(|s| u64::try_from(s).ok()),
        wait_until_reset: (refused && header("x-ratelimit-remaining") == Some(0))
            .then(|| header("x-ratelimit-reset"))
            .flatten(),
        arrived_unix_ms,
    };
    let mut stats = state.stats();
    // Bounded, for a long-running `orchctl up`: tests make far fewer requests.
    if stats.attempts.len() < crate::MAX_ATTEMPTS_KEPT {
        stats.attempts.push(attempt);
    }
}

fn template_of(route: &str) -> &str {
    route.split_once(' ').map_or(route, |(_, t)| t)
}

async fn admit_and_run(
    state: &Arc<model::State>,
    route: &str,
    method: &Method,
    arrived: Instant,
    mut req: Request,
    next: Next,
) -> (Response, Option<Snapshot>) {
    let identity = {
        let world = state.world();
        auth::identify(req.headers(), &state.app_key, state.config.app_id, &world)
    };
    let (identity, bucket, limit) = match identity {
        Ok(Identity::Anonymous) => (Identity::Anonymous, Bucket::Anonymous, 60),
        Ok(Identity::App) => (
            Identity::App,
            Bucket::App,
            state.config.primary_limit_per_hour,
        ),
        Ok(Identity::Installation(grant)) => {
            let bucket = Bucket::Installation(grant.installation_id);
            (
                Identity::Installation(grant),
                bucket,
                state.config.primary_limit_per_hour,
            )
        }
        Err(e) => {
            // GitHub answers bad credentials with the unauthenticated caller's headers.
            let snapshot = state
                .limits()
                .count(Bucket::Anonymous, 60)
                .unwrap_or_else(|s| s);
            return (e.into_response(), Some(snapshot));
        }
    };

    // Primary limit.
    let snapshot = match state.limits().count(bucket, limit) {
        Ok(s) => s,
        Err(s) => {
            state.stats().rate_limited += 1;
            let message = match bucket {
                Bucket::Installation(id) => {
                    format!("API rate limit exceeded for installation ID {id}.")
                }
                Bucket::App => format!(
                    "API rate limit exceeded for app ID {}.",
                    state.config.app_id
                ),
                Bucket::Anonymous => "API rate limit exceeded for 127.0.0.1.".to_owned(),
            };
            // GitHub answers the primary limit with 403 or 429, never with `retry-after`: the
            // client waits for `x-ratelimit-reset` (stamped below, `remaining` 0).
            let status =
                StatusCode::from_u16(state.config.primary_status).unwrap_or(StatusCode::FORBIDDEN);
            return (ApiError::new(status, message).into_response(), Some(s));
        }
    };

    // Secondary limits: concurrency, then write spacing.
    let secondary =
        StatusCode::from_u16(state.config.secondary_status).unwrap_or(StatusCode::FORBIDDEN);
    let now_epoch = OffsetDateTime::now_utc().unix_timestamp();
    let (in_flight, write_wait) = {
        let mut limits = state.limits();
        let b = limits.bucket(bucket, now_epoch);
        b.in_flight += 1;
        let in_flight = b.in_flight;
        let mut wait = None;
        let interval = state.config.min_write_interval;
        if is_write(method) && matches!(bucket, Bucket::Installation(_)) && !interval.is_zero() {
            match b.last_write {
                Some(last) if arrived.saturating_duration_since(last) < interval => {
                    wait = Some(interval - arrived.saturating_duration_since(last));
                }
                _ => b.last_write = Some(arrived),
            }
        }
        (in_flight, wait)
    };
    let _guard = InFlight {
        state: state.clone(),
        bucket,
    };
    {
        let mut stats = state.stats();
        stats.max_concurrent = stats.max_concurrent.max(in_flight);
    }
    let max = state.config.max_concurrent_per_installation;
    if max > 0 && in_flight > max {
        state.stats().rate_limited += 1;
        return (
            ApiError::secondary_limit(secondary, Some(1)).into_response(),
            Some(snapshot),
        );
    }
    if let Some(wait) = write_wait {
        state.stats().rate_limited += 1;
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return (
            ApiError::secondary_limit(secondary, Some(secs.max(1))).into_response(),
            Some(snapshot),
        );
    }

    // Faults.
    let drawn = state.faults().draw(route);
    if !drawn.latency.is_zero() {
        tokio::time::sleep(drawn.latency).await;
    }
    if let Some(delay) = drawn.slow {
        *state
            .stats()
            .faults_injected
            .entry("slow_response".to_owned())
            .or_default() += 1;
        tokio::time::sleep(delay).await;
    }
    if let Some(fault) = drawn.fault {
        *state
            .stats()
            .faults_injected
            .entry(fault.name().to_owned())
            .or_default() += 1;
        let response = match fault {
            Fault::Drop => dropped(),
            Fault::ServerError(status) => {
                let message = match status {
                    StatusCode::BAD_GATEWAY => "Bad Gateway",
                    StatusCode::SERVICE_UNAVAILABLE => "Service Unavailable",
                    _ => "Server Error",
                };
                ApiError::new(status, message).into_response()
            }
            Fault::TooMany => {
                ApiError::secondary_limit(StatusCode::TOO_MANY_REQUESTS, drawn.retry_after)
                    .into_response()
            }
            Fault::Secondary => {
                ApiError::secondary_limit(StatusCode::FORBIDDEN, drawn.retry_after).into_response()
            }
        };
        return (response, Some(snapshot));
    }

    req.extensions_mut().insert(identity);
    req.extensions_mut().insert(crate::routes::Arrived(arrived));
    (next.run(req).await, Some(snapshot))
}

fn stamp(response: &mut Response, s: Snapshot) {
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: HeaderValue| {
        headers.insert(HeaderName::from_static(name), value);
    };
    set("x-ratelimit-limit", HeaderValue::from(s.limit));
    set(
        "x-ratelimit-remaining",
        HeaderValue::from(s.limit.saturating_sub(s.used)),
    );
    set("x-ratelimit-reset", HeaderValue::from(s.reset));
    set("x-ratelimit-used", HeaderValue::from(s.used));
    set("x-ratelimit-resource", HeaderValue::from_static("core"));
    let id = orchestrator_emulator_kit::hex(&model::random_bytes::<8>()).to_ascii_uppercase();
    if let Ok(v) = HeaderValue::from_str(&id) {
        set("x-github-request-id", v);
    }
}
