//! One HTTP helper for the three providers: JSON in and out, the provider's reason kept, and
//! retries only where they are safe (reads and deletes; a create is never blindly repeated).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument as _;

/// Why a provider call failed. Never carries a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the credentials (401/403 or its own auth error).
    #[error("{provider} refused the credentials: {reason}")]
    Auth {
        provider: &'static str,
        reason: String,
    },
    /// The provider answered with an error status; `reason` is its own message.
    #[error("{provider} answered {status}: {reason}")]
    Status {
        provider: &'static str,
        status: u16,
        reason: String,
    },
    /// Still rate limited (or failing) at the deadline.
    #[error("{provider} is rate limiting: retry after {retry_after:?}")]
    RateLimited {
        provider: &'static str,
        retry_after: Option<Duration>,
    },
    #[error("{provider} is unavailable: {reason}")]
    Unavailable {
        provider: &'static str,
        reason: String,
    },
    #[error("unexpected answer from {provider}: {reason}")]
    Decode {
        provider: &'static str,
        reason: String,
    },
}

impl ProviderError {
    /// A stable, machine-readable reason for operation records and error details.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::Auth { .. } => "PROVIDER_AUTH_FAILED",
            ProviderError::RateLimited { .. } => "PROVIDER_RATE_LIMITED",
            ProviderError::Unavailable { .. } => "PROVIDER_UNAVAILABLE",
            ProviderError::Decode { .. } => "PROVIDER_BAD_ANSWER",
            ProviderError::Status { status, reason, .. } => {
                let said = reason.to_ascii_lowercase();
                match status {
                    429 => "PROVIDER_RATE_LIMITED",
                    s if *s >= 500 => "PROVIDER_UNAVAILABLE",
                    404 => "PROVIDER_NOT_FOUND",
                    // DigitalOcean: 422 "... will exceed your droplet limit".
                    403 | 422 if said.contains("limit") || said.contains("quota") => {
                        "PROVIDER_QUOTA_EXCEEDED"
                    }
                    _ => "PROVIDER_REJECTED",
                }
            }
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How a request authenticates.
#[derive(Clone)]
pub(crate) enum Credentials {
    Bearer(SecretString),
    Basic {
        user: String,
        password: SecretString,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// Retry settings shared by the clients.
#[derive(Debug, Clone)]
pub struct Retry {
    pub deadline: Duration,
    pub base_backoff: Duration,
    pub attempt_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(60),
            base_backoff: Duration::from_millis(250),
            attempt_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Http {
    pub(crate) provider: &'static str,
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) credentials: Credentials,
    pub(crate) retry: Retry,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: serde_json::Value,
}

impl Http {
    pub(crate) fn new(
        provider: &'static str,
        base: &str,
        credentials: Credentials,
        retry: Retry,
    ) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .timeout(retry.attempt_timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent("orchestrator-infra")
            .build()
            .map_err(|e| ProviderError::Unavailable {
                provider,
                reason: e.to_string(),
            })?;
        Ok(Self {
            provider,
            base: base.trim_end_matches('/').to_owned(),
            client,
            credentials,
            retry,
        })
    }

    /// Sends once or, when `retry_safe`, retries 429 (honouring `retry-after`), 5xx and
    /// transport errors with backoff until the deadline. Returns any answer that is final.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        retry_safe: bool,
    ) -> Result<Answer, ProviderError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", self.base));
            request = match &self.credentials {
                Credentials::Bearer(token) => request.bearer_auth(token.expose_secret()),
                Credentials::Basic { user, password } => {
                    request.basic_auth(user, Some(password.expose_secret()))
                }
            };
            if let Some(body) = body {
                request = request.json(body);
            }
            let span = self.span(&method, path);
            let (wait, failure) = match request.send().instrument(span.clone()).await {
                Ok(response) => {
                    let status = response.status();
                    span.record("http.response.status_code", status.as_u16());
                    if status.is_client_error() || status.is_server_error() {
                        span.record("otel.status_code", "error");
                    }
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let bytes = response.bytes().instrument(span).await.map_err(|e| {
                        ProviderError::Unavailable {
                            provider: self.provider,
                            reason: e.to_string(),
                        }
                    })?;
                    let body = if bytes.is_empty() {
                        serde_json::Value::Null
                    } else {
                        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
                    };
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        (
                            retry_after.unwrap_or_else(|| self.backoff(attempt)),
                            ProviderError::RateLimited {
                                provider: self.provider,
                                retry_after,
                            },
                        )
                    } else if status.is_server_error() {
                        (
                            retry_after.unwrap_or_else(|| self.backoff(attempt)),
                            ProviderError::Unavailable {
                                provider: self.provider,
                                reason: format!("answered {status}"),
                            },
                        )
                    } else {
                        return Ok(Answer { status, body });
                    }
                }
                Err(e) => (
                    {
                        span.record("otel.status_code", "error");
                        self.backoff(attempt)
                    },
                    ProviderError::Unavailable {
                        provider: self.provider,
                        reason: e.to_string(),
                    },
                ),
            };
            // Saturating: `retry-after` is the provider's number (u64::MAX seconds overflowed).
            if !retry_safe || started.elapsed().saturating_add(wait) > self.retry.deadline {
                return Err(failure);
            }
            tracing::warn!(provider = self.provider, %method, attempt, wait_ms = wait.as_millis() as u64, error = %failure, "provider call will be retried");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// The exported span of one HTTP request (target `otel`: see `orchestrator_mesh::telemetry`):
    /// method, host and path without its query, and later the status; never a header or a body.
    /// No trace context is sent to the provider: a third party has no use for our trace IDs.
    fn span(&self, method: &Method, path: &str) -> tracing::Span {
        let path = path.split('?').next().unwrap_or(path);
        let host = reqwest::Url::parse(&self.base)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default();
        tracing::info_span!(
            target: "otel",
            "http.client",
            otel.name = %format_args!("{method} {}", self.provider),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            server.address = host,
            url.path = path,
            http.response.status_code = tracing::field::Empty,
            orchestrator.provider = self.provider,
        )
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .retry
            .base_backoff
            .saturating_mul(1 << attempt.min(8))
            .min(Duration::from_secs(10));
        let mut r = [0u8; 2];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
        step.mul_f64(0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0)
    }
}
