//! Cloudflare's v4 envelope (`success`, `errors`, `messages`, `result`, `result_info`), its
//! refusals with their error codes, and its page parameters.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::core::{self, Fault};

/// Cloudflare's refusal: a status and `errors: [{code, message}]` in the envelope.
#[derive(Debug)]
pub(super) struct CfError {
    status: StatusCode,
    errors: Vec<(u32, String)>,
    /// The first error's `error_chain`: what underlies it.
    chain: Option<(u32, String)>,
    retry_after: Option<u64>,
}

impl CfError {
    pub(super) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            errors: vec![(code, message.into())],
            chain: None,
            retry_after: None,
        }
    }

    pub(super) fn bad(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// An API token Cloudflare does not know: 403, 10000.
    pub(super) fn unknown_token() -> Self {
        Self::new(StatusCode::FORBIDDEN, 10000, "Authentication error")
    }

    /// No `Authorization: Bearer <token>`, or a token not of a token's form: 400, 6003, with
    /// 6111 in its chain.
    pub(super) fn malformed_token() -> Self {
        Self {
            chain: Some((6111, "Invalid format for Authorization header".to_owned())),
            ..Self::bad(6003, "Invalid request headers")
        }
    }

    pub(super) fn no_record() -> Self {
        Self::new(StatusCode::NOT_FOUND, 81044, "Record does not exist.")
    }

    pub(super) fn no_route(path: &str) -> Self {
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
            chain: None,
            retry_after: None,
        }
    }

    pub(super) fn too_many(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                971,
                "Please wait and consider throttling your request speed",
            )
        }
    }

    pub(super) fn validation(message: impl Into<String>) -> Self {
        Self::bad(1004, format!("DNS Validation Error: {}", message.into()))
    }

    pub(super) fn bad_body() -> Self {
        Self::bad(9207, "Request body is invalid.")
    }
}

impl IntoResponse for CfError {
    fn into_response(self) -> Response {
        let mut errors: Vec<Value> = self
            .errors
            .iter()
            .map(|(code, message)| json!({"code": code, "message": message}))
            .collect();
        if let (Some((code, message)), Some(first)) = (&self.chain, errors.first_mut()) {
            first["error_chain"] = json!([{"code": code, "message": message}]);
        }
        let body = json!({"success": false, "errors": errors, "messages": [], "result": null});
        core::refusal(self.status, body, self.retry_after)
    }
}

/// An injected fault as Cloudflare would answer it.
pub(super) fn render_fault(fault: Fault, retry_after: u64) -> Response {
    match fault {
        Fault::TooMany => CfError::too_many(retry_after).into_response(),
        Fault::ServerError(status) => {
            CfError::new(status, 10002, "An unknown error has occurred").into_response()
        }
        Fault::Drop => core::dropped(),
    }
}

pub(super) fn success(result: Value) -> Response {
    core::json(
        StatusCode::OK,
        json!({"success": true, "errors": [], "messages": [], "result": result}),
    )
}

/// One page of a listing: `page` (from 1) and `per_page` (`default`, clamped to the
/// endpoint's bounds).
#[derive(Debug, Clone, Copy)]
pub(super) struct Page {
    number: usize,
    per_page: usize,
}

impl Page {
    pub(super) fn parse(
        q: &HashMap<String, String>,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<Self, CfError> {
        let number =
            core::page_number(q).ok_or_else(|| CfError::bad(1001, "Invalid page number"))?;
        let per_page = core::per_page(q, default)
            .ok_or_else(|| CfError::bad(1001, "Invalid per_page value"))?
            .clamp(min, max);
        Ok(Self { number, per_page })
    }

    /// This page of `all` in the envelope, with `result_info`.
    pub(super) fn success(self, all: &[Value]) -> Response {
        let (items, _) = core::paginate(all, self.number, self.per_page);
        let (count, total, per_page) = (items.len(), all.len(), self.per_page);
        core::json(
            StatusCode::OK,
            json!({
                "success": true,
                "errors": [],
                "messages": [],
                "result": items,
                "result_info": {
                    "page": self.number,
                    "per_page": per_page,
                    "count": count,
                    "total_count": total,
                    "total_pages": total.div_ceil(per_page).max(1),
                },
            }),
        )
    }
}
