//! DigitalOcean's admission: a known bearer token, then the per-token windows (per minute, per
//! hour, and for `GET /v2/account/keys`); every answer carries the hour's `ratelimit-*`
//! headers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::error::{DoError, render_fault};
use super::state::DoState;
use crate::core::{self, Admission, Caller, Count, lock};

/// Authenticates, limits, injects faults, runs the handler, stamps the rate-limit headers.
pub(super) async fn gate(State(s): State<Arc<DoState>>, req: Request, next: Next) -> Response {
    let mut hour = None;
    let mut response = s
        .core
        .gate(req, next, render_fault, |req, route| {
            let (admission, window) = admit(&s, req, route);
            hour = Some(window);
            admission
        })
        .await;
    if let Some(hour) = hour {
        stamp(&mut response, hour);
    }
    if response.status() == StatusCode::NO_CONTENT {
        response.headers_mut().remove(header::CONTENT_TYPE);
    }
    response
}

/// The admission and the hour's window to report in the headers.
fn admit(s: &DoState, req: &mut Request, route: &str) -> (Admission, Count) {
    let token = core::bearer(req.headers())
        .filter(|t| s.config.tokens.iter().any(|known| known == t))
        .map(str::to_owned);
    let Some(token) = token else {
        let hour = lock(&s.limits).hour.peek("");
        let refusal = DoError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unable to authenticate you",
        );
        return (Admission::Unauthenticated(refusal.into_response()), hour);
    };
    let (hour, refused) = {
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
    if let Some(refused) = refused {
        let refusal = DoError::too_many(refused.retry_after()).into_response();
        return (Admission::RateLimited(refusal), hour);
    }
    req.extensions_mut().insert(Caller(token));
    (Admission::Admitted, hour)
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
