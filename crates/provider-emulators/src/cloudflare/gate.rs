//! Cloudflare's admission: a known API token (400, code 6003 with 6111 in its chain, for a
//! missing or malformed header or token; 403, code 10000, for an unknown token), then the
//! token's window, reported on every answer in the `Ratelimit` and `Ratelimit-Policy` headers
//! ("Rate limits" in Cloudflare's API docs: 1200 per 5 minutes per token); and
//! `tokens/verify`, which reports on the token.

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::envelope::{CfError, render_fault, success};
use super::state::CfState;
use crate::core::{self, Admission, Caller, lock};

pub(super) async fn gate(State(s): State<Arc<CfState>>, req: Request, next: Next) -> Response {
    let mut window = None;
    let mut response = s
        .core
        .gate(req, next, render_fault, |req, _route| {
            match authenticate(req.headers(), &s.config.tokens) {
                Err(refusal) => Admission::Unauthenticated(refusal.into_response()),
                Ok(token) => {
                    let count = lock(&s.limits).count(&token);
                    let allowed = count.allowed;
                    let retry_after = count.retry_after();
                    window = Some(count);
                    if allowed {
                        req.extensions_mut().insert(Caller(token));
                        Admission::Admitted
                    } else {
                        let refusal = CfError::too_many(retry_after);
                        Admission::RateLimited(refusal.into_response())
                    }
                }
            }
        })
        .await;
    if let Some(count) = window.filter(|c| c.limit != u32::MAX) {
        let window_secs = s.config.rate_window.as_secs();
        let headers = response.headers_mut();
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set(
            "ratelimit",
            format!(
                "\"default\";r={};t={}",
                count.remaining(),
                count.reset_in.as_secs()
            ),
        );
        set(
            "ratelimit-policy",
            format!("\"default\";q={};w={window_secs}", count.limit),
        );
    }
    response
}

/// `Ok(token)`, or the refusal: a missing or malformed header or token (Cloudflare's tokens are
/// letters, digits, `-` and `_`), or a token we don't know.
fn authenticate(headers: &HeaderMap, tokens: &[String]) -> Result<String, CfError> {
    let token = core::bearer(headers)
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or_else(CfError::malformed_token)?;
    if tokens.iter().any(|t| t == token) {
        Ok(token.to_owned())
    } else {
        Err(CfError::unknown_token())
    }
}

pub(super) async fn verify_token(Extension(Caller(token)): Extension<Caller>) -> Response {
    success(json!({
        "id": core::sha256_hex(format!("token:{token}").as_bytes(), 32),
        "status": "active",
    }))
}
