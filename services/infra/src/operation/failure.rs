//! Why a step stopped: worth another attempt (the provider is busy, the server still boots),
//! or final, with the reason the operation fails with.

use std::time::Duration;

use orchestrator_mesh::retry::{self, Call, Outcome};
use orchestrator_providers::ProviderError;
use orchestrator_ssh::SshError;
use orchestrator_status::with_reason;
use orchestrator_store::StoreError;
use tonic::{Code, Status};

#[derive(Debug)]
pub(super) enum StepError {
    Transient(String),
    Final(Status),
}

impl StepError {
    /// A final failure with `reason`: the server or the provider said no.
    pub(super) fn refused(reason: &str, message: impl Into<String>) -> Self {
        StepError::Final(with_reason(Code::FailedPrecondition, reason, message, &[]))
    }

    /// A final failure that is infra's own (key generation, a template).
    pub(super) fn internal(e: impl std::fmt::Display) -> Self {
        StepError::Final(Status::internal(e.to_string()))
    }

    /// A final failure without a reason of its own (what is missing is in the message).
    pub(super) fn precondition(message: impl Into<String>) -> Self {
        StepError::Final(Status::failed_precondition(message))
    }
}

/// A provider's refusal keeps its reason (`PROVIDER_*`); rate limits and outages are retried.
impl From<ProviderError> for StepError {
    fn from(e: ProviderError) -> Self {
        let code = match e.reason() {
            "PROVIDER_RATE_LIMITED" | "PROVIDER_UNAVAILABLE" => {
                return StepError::Transient(e.to_string());
            }
            "PROVIDER_AUTH_FAILED" => Code::PermissionDenied,
            "PROVIDER_QUOTA_EXCEEDED" => Code::ResourceExhausted,
            "PROVIDER_NOT_FOUND" => Code::NotFound,
            "PROVIDER_BAD_ANSWER" => Code::Unknown,
            _ => Code::FailedPrecondition,
        };
        StepError::Final(with_reason(code, e.reason(), e.to_string(), &[]))
    }
}

/// A peer's or the database's answer, classified once for the whole mesh
/// ([`orchestrator_mesh::retry`]): the peer down or restarting, the call cut in flight, a lost
/// race or (every call of an operation is idempotent: it carries a request id or only reads) a
/// deadline is retried; anything else is final.
impl From<Status> for StepError {
    fn from(s: Status) -> Self {
        match retry::classify(&s, Call::Idempotent) {
            Outcome::Transient => StepError::Transient(s.message().to_owned()),
            Outcome::Permanent => StepError::Final(s),
        }
    }
}

impl StepError {
    /// A failed call to `peer`: retried when transient; final with a reason naming the peer
    /// (`<PEER>_FAILED`) where its answer has none.
    pub(super) fn peer(peer: &'static str) -> impl Fn(Status) -> StepError {
        move |s| match StepError::from(s) {
            StepError::Final(s) => StepError::Final(retry::recorded(s, peer)),
            transient => transient,
        }
    }
}

/// The database: unreachable or a lost race is retried, anything else is final.
impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        Status::from(e).into()
    }
}

/// SSH failures: transient ones (still booting) are retried; a host key that does not match
/// the pinned one never is.
impl From<SshError> for StepError {
    fn from(e: SshError) -> Self {
        match &e {
            // Architecture Invariant: nobody trusts the first host key that answers; a
            // mismatch with the pinned key fails the operation.
            SshError::HostKeyMismatch { .. } => {
                StepError::refused("HOST_KEY_MISMATCH", e.to_string())
            }
            SshError::AuthRefused { .. } => StepError::refused("ADMIN_KEY_REFUSED", e.to_string()),
            _ if e.is_transient() => StepError::Transient(e.to_string()),
            _ => StepError::internal(e),
        }
    }
}

/// A login that did not happen within the readiness deadline, or was refused for good.
pub(super) fn not_ready(e: SshError, deadline: Duration) -> StepError {
    if e.is_transient() && !matches!(e, SshError::AuthRefused { .. }) {
        StepError::Final(with_reason(
            Code::DeadlineExceeded,
            "SERVER_NOT_READY",
            format!("{e} (gave up after {deadline:?})"),
            &[],
        ))
    } else {
        e.into()
    }
}
