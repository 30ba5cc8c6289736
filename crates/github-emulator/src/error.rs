//! GitHub's error answers: a status and `{"message", "documentation_url", "status"}`, sometimes
//! with `errors` and a `retry-after` header. Handlers return [`ApiError`] and never build error
//! bodies themselves, so every refusal has GitHub's shape.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const DOCS: &str = "https://docs.github.com/rest";

/// A refusal as GitHub words it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) errors: Option<Value>,
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: None,
            retry_after: None,
        }
    }

    pub(crate) fn with_errors(mut self, errors: Value) -> Self {
        self.errors = Some(errors);
        self
    }

    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub(crate) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found")
    }

    pub(crate) fn bad_credentials() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Bad credentials")
    }

    pub(crate) fn requires_authentication() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Requires authentication")
    }

    pub(crate) fn jwt(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub(crate) fn not_accessible() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Resource not accessible by integration",
        )
    }

    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// A body that is not JSON (or not an object where one is expected).
    pub(crate) fn problems_parsing_json() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Problems parsing JSON")
    }

    /// GitHub's schema-validation wording for a missing field.
    pub(crate) fn missing_field(field: &str) -> Self {
        Self::unprocessable(format!("Invalid request.\n\n\"{field}\" wasn't supplied."))
    }

    /// A secondary limit's refusal: 403 or 429, with `retry-after` or (as GitHub also does)
    /// without, when the client must wait at least a minute.
    pub(crate) fn secondary_limit(status: StatusCode, retry_after: Option<u64>) -> Self {
        let error = Self::new(
            status,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try \
             again. If you reach out to GitHub Support for help, please include the request ID.",
        );
        match retry_after {
            Some(secs) => error.with_retry_after(secs),
            None => error,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "message": self.message,
            "documentation_url": DOCS,
            "status": self.status.as_u16().to_string(),
        });
        if let (Some(errors), Some(map)) = (self.errors, body.as_object_mut()) {
            map.insert("errors".to_owned(), errors);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Parses a JSON object body; an empty body is `{}` (GitHub treats a missing body as no
/// parameters).
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let trimmed = body.iter().all(u8::is_ascii_whitespace);
    let value: Value = if trimmed {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|_| ApiError::problems_parsing_json())?
    };
    if !value.is_object() {
        return Err(ApiError::problems_parsing_json());
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable(format!("Invalid request.\n\n{}", field_error(&e))))
}

/// A serde error without echoing values (a body may carry ciphertext or file content).
fn field_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json: "invalid type: integer `5`, expected a string at line 1 column 9".
    match text.split_once(", expected") {
        Some((_, rest)) => format!("A field has the wrong type: expected{rest}"),
        None => "A field has the wrong type.".to_owned(),
    }
}
