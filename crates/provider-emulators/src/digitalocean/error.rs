//! DigitalOcean's error answer (`{"id", "message", "request_id"}`) and the injected faults in
//! its shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::core::{self, Fault};

#[derive(Debug)]
pub(super) struct DoError {
    status: StatusCode,
    id: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl DoError {
    pub(super) fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "The resource you were accessing could not be found.",
        )
    }

    pub(super) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            message,
        )
    }

    pub(super) fn bad_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unexpected end of JSON input or invalid JSON in the request body",
        )
    }

    pub(super) fn too_many(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "API Rate limit exceeded.",
            )
        }
    }
}

impl IntoResponse for DoError {
    fn into_response(self) -> Response {
        let h = core::hex(&core::random_bytes::<16>());
        let request_id = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        let body = json!({"id": self.id, "message": self.message, "request_id": request_id});
        core::refusal(self.status, body, self.retry_after)
    }
}

/// An injected fault as DigitalOcean would answer it.
pub(super) fn render_fault(fault: Fault, retry_after: u64) -> Response {
    match fault {
        Fault::TooMany => DoError::too_many(retry_after).into_response(),
        Fault::ServerError(status) => DoError::new(
            status,
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                "server_error"
            } else {
                "service_unavailable"
            },
            "Server was unable to give you a response.",
        )
        .into_response(),
        Fault::Drop => core::dropped(),
    }
}

/// A path id that is not a number names nothing.
pub(super) fn parse_id(id: &str) -> Result<u64, DoError> {
    id.parse().map_err(|_| DoError::not_found())
}
