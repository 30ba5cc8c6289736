//! Time4VPS's admission: HTTP Basic with the account's API user (`401 {"error":
//! ["wronglogin"]}` otherwise), then the account's window.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::error::{T4Error, render_fault};
use super::state::T4State;
use crate::core::{Admission, lock};

pub(super) async fn gate(State(s): State<Arc<T4State>>, req: Request, next: Next) -> Response {
    s.core
        .gate(req, next, render_fault, |req, _route| {
            if !basic_ok(req.headers(), &s.config.user, &s.config.password) {
                let refusal = T4Error::new(StatusCode::UNAUTHORIZED, "wronglogin");
                return Admission::Unauthenticated(refusal.into_response());
            }
            let count = lock(&s.limits).count(&s.config.user);
            if count.allowed {
                Admission::Admitted
            } else {
                Admission::RateLimited(T4Error::too_many(count.retry_after()).into_response())
            }
        })
        .await
}

/// Constant-time-ish comparison is not needed here: this is a test double.
fn basic_ok(headers: &HeaderMap, user: &str, password: &str) -> bool {
    if user.is_empty() {
        return false;
    }
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    text.split_once(':')
        .is_some_and(|(u, p)| u == user && p == password)
}
