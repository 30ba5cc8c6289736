//! Time4VPS's error answer, `{"error": [message]}` with a status (Time4VPS documents none;
//! these are ours), and the injected faults in that shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::core::{self, Fault};

#[derive(Debug)]
pub(super) struct T4Error {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl T4Error {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn no_server() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Server not found")
    }

    pub(super) fn too_many(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
        }
    }
}

impl IntoResponse for T4Error {
    fn into_response(self) -> Response {
        let body = json!({"error": [self.message]});
        core::refusal(self.status, body, self.retry_after)
    }
}

/// An injected fault as Time4VPS would answer it.
pub(super) fn render_fault(fault: Fault, retry_after: u64) -> Response {
    match fault {
        Fault::TooMany => T4Error::too_many(retry_after).into_response(),
        Fault::ServerError(status) => T4Error::new(status, "Internal error").into_response(),
        Fault::Drop => core::dropped(),
    }
}

/// A server id that is not a number names no server.
pub(super) fn parse_id(id: &str) -> Result<u64, T4Error> {
    id.parse().map_err(|_| T4Error::no_server())
}
