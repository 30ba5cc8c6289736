//! Building precise gRPC errors: INVALID_ARGUMENT with every field violation at once, and
//! statuses with one `ErrorInfo` (AIP-193), so clients can branch on `reason`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of errors the services produce about their own resources.
pub const DOMAIN: &str = "orchestrator";

/// Collects validation failures; [`Violations::finish`] turns them into one INVALID_ARGUMENT.
#[derive(Debug, Default)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// Adds a violation unless `ok`.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was wrong, else INVALID_ARGUMENT with a `BadRequest` listing all.
    pub fn finish(self) -> Result<(), Status> {
        if self.0.is_empty() {
            return Ok(());
        }
        let message = self
            .0
            .iter()
            .map(|(f, d)| format!("{f}: {d}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut details = ErrorDetails::new();
        for (field, description) in self.0 {
            details.add_bad_request_violation(field, description);
        }
        Err(Status::with_error_details(
            Code::InvalidArgument,
            message,
            details,
        ))
    }
}

/// A status with one `ErrorInfo` of [`DOMAIN`].
pub fn with_reason(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: &[(&str, String)],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

/// A peer's status as this service answers it: UNAVAILABLE (the peer is down or unreachable)
/// becomes UNAVAILABLE with reason `<PEER>_UNAVAILABLE`, so a caller can tell which dependency
/// is missing; any other status passes through unchanged (the peer's own answer).
pub fn from_peer(peer: &'static str) -> impl Fn(Status) -> Status {
    move |status| {
        if status.code() != Code::Unavailable || reason_of(&status).is_some() {
            return status;
        }
        let reason = format!(
            "{}_UNAVAILABLE",
            peer.to_ascii_uppercase().replace([' ', '-'], "_")
        );
        with_reason(
            Code::Unavailable,
            &reason,
            format!("the {peer} is unavailable: {}", status.message()),
            &[],
        )
    }
}

/// The `ErrorInfo` reason and metadata a status carries, if any.
pub fn reason_of(status: &Status) -> Option<(String, HashMap<String, String>)> {
    status
        .get_error_details()
        .error_info()
        .map(|info| (info.reason.clone(), info.metadata.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_are_reported_together() {
        let mut v = Violations::new();
        v.check(true, "a", "fine");
        v.add("user_id", "must not be empty");
        v.add("key", "too long");
        let status = v.finish().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_error_details().bad_request().cloned().unwrap();
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[0].field, "user_id");
        assert!(Violations::new().finish().is_ok());
    }

    #[test]
    fn a_peer_down_names_the_peer() {
        let down = from_peer("secret broker")(Status::unavailable("tcp connect error"));
        assert_eq!(down.code(), Code::Unavailable);
        assert_eq!(reason_of(&down).unwrap().0, "SECRET_BROKER_UNAVAILABLE");
        assert!(down.message().contains("tcp connect error"));
        let refused = from_peer("secret broker")(Status::permission_denied("no"));
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(reason_of(&refused).is_none());
    }

    #[test]
    fn reasons_round_trip() {
        let status = with_reason(
            Code::ResourceExhausted,
            "QUOTA",
            "full",
            &[("n", "1".into())],
        );
        let (reason, metadata) = reason_of(&status).unwrap();
        assert_eq!(reason, "QUOTA");
        assert_eq!(metadata["n"], "1");
        assert!(reason_of(&Status::internal("x")).is_none());
    }
}
