//! Cloudflare's admission: a known API token (400 for a missing or malformed header, 403 for
//! an unknown token, code 10000), then the token's window; and `tokens/verify`, which reports
//! on the token.

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::envelope::{CfError, render_fault, success};
use super::state::CfState;
use crate::core::{self, Admission, Caller, lock};

pub(super) async fn gate(State(s): State<Arc<CfState>>, req: Request, next: Next) -> Response {
    s.core
        .gate(req, next, render_fault, |req, _route| {
            match authenticate(req.headers(), &s.config.tokens) {
                Err(status) => Admission::Unauthenticated(CfError::auth(status).into_response()),
                Ok(token) => {
                    let count = lock(&s.limits).count(&token);
                    if count.allowed {
                        req.extensions_mut().insert(Caller(token));
                        Admission::Admitted
                    } else {
                        let refusal = CfError::too_many(count.retry_after());
                        Admission::RateLimited(refusal.into_response())
                    }
                }
            }
        })
        .await
}

/// `Ok(token)`, or the status to refuse with: 400 for a missing or malformed header, 403 for
/// a token we don't know.
fn authenticate(headers: &HeaderMap, tokens: &[String]) -> Result<String, StatusCode> {
    let token = core::bearer(headers)
        .filter(|t| !t.is_empty())
        .ok_or(StatusCode::BAD_REQUEST)?;
    if tokens.iter().any(|t| t == token) {
        Ok(token.to_owned())
    } else {
        Err(StatusCode::FORBIDDEN)
    }
}

pub(super) async fn verify_token(Extension(Caller(token)): Extension<Caller>) -> Response {
    success(json!({
        "id": core::sha256_hex(format!("token:{token}").as_bytes(), 32),
        "status": "active",
    }))
}
