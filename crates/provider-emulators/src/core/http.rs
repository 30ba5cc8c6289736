//! Reading requests and writing answers the way all three providers do: query strings, JSON
//! bodies, bearer credentials, page parameters, JSON answers.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A JSON answer.
pub(crate) fn json(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A provider's error answer: JSON, with `Retry-After` when it says when to come back.
pub(crate) fn refusal(status: StatusCode, body: Value, retry_after: Option<u64>) -> Response {
    let mut r = json(status, body);
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The token of an `Authorization: Bearer <token>` header (trimmed; may be empty).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The query's 1-based `page`: 1 when absent, `None` when not a positive number.
pub(crate) fn page_number(q: &HashMap<String, String>) -> Option<usize> {
    match q.get("page") {
        None => Some(1),
        Some(p) => p.parse::<usize>().ok().filter(|p| *p >= 1),
    }
}

/// The query's `per_page`: `default` when absent, `None` when not a number (bounds are the
/// provider's).
pub(crate) fn per_page(q: &HashMap<String, String>, default: usize) -> Option<usize> {
    match q.get("per_page") {
        None => Some(default),
        Some(p) => p.parse::<usize>().ok(),
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

/// The query string as a map (later duplicates win), for a handler.
#[derive(Debug)]
pub(crate) struct QueryMap(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self(query_map(parts.uri.query())))
    }
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
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
