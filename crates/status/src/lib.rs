//! Building precise gRPC errors: INVALID_ARGUMENT with every field violation at once, and
//! statuses with one `ErrorInfo` (AIP-193), so clients can branch on `reason`.
//!
//! A crate of its own so that the libraries below the services (the GitHub client, storage,
//! the audit log) speak the same error language without depending on the mesh.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of errors the services produce about their own resources.
pub const DOMAIN: &str = "orchestrator";

/// How many violations one INVALID_ARGUMENT lists; the rest are counted, so a request with a
/// million bad items costs a bounded answer (and bounded memory while it is checked).
pub const MAX_LISTED: usize = 20;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// Attaches a field name to a parse result: `RequestId::parse(raw).at("request_id")`.
pub trait At<T> {
    fn at(self, field: impl Into<String>) -> Result<T, Violation>;
}

impl<T, E: std::fmt::Display> At<T> for Result<T, E> {
    fn at(self, field: impl Into<String>) -> Result<T, Violation> {
        self.map_err(|e| Violation {
            field: field.into(),
            description: e.to_string(),
        })
    }
}

/// `value` when `ok`, else a violation of `field` saying `description`: a check that is not a
/// parse, in a tuple for [`Violations::collect`].
pub fn checked<T>(
    value: T,
    ok: bool,
    field: impl Into<String>,
    description: impl Into<String>,
) -> Result<T, Violation> {
    if ok {
        Ok(value)
    } else {
        Err(Violation {
            field: field.into(),
            description: description.into(),
        })
    }
}

/// Parsed fields, one `Result` or a tuple of them, for [`Violations::collect`].
pub trait Fields {
    type Values;
    /// The values when every field parsed; otherwise `None`, with each failure added to `v`.
    fn split(self, v: &mut Violations) -> Option<Self::Values>;
}

impl<T> Fields for Result<T, Violation> {
    type Values = T;
    fn split(self, v: &mut Violations) -> Option<T> {
        self.map_err(|e| v.push(e)).ok()
    }
}

macro_rules! tuple_fields {
    ($($name:ident),+) => {
        impl<$($name),+> Fields for ($(Result<$name, Violation>,)+) {
            type Values = ($($name,)+);
            #[allow(non_snake_case)]
            fn split(self, v: &mut Violations) -> Option<Self::Values> {
                let ($($name,)+) = self;
                $(let $name = $name.split(v);)+
                Some(($($name?,)+))
            }
        }
    };
}
tuple_fields!(A);
tuple_fields!(A, B);
tuple_fields!(A, B, C);
tuple_fields!(A, B, C, D);
tuple_fields!(A, B, C, D, E);
tuple_fields!(A, B, C, D, E, F);
tuple_fields!(A, B, C, D, E, F, G);
tuple_fields!(A, B, C, D, E, F, G, H);

/// Collects validation failures; [`Violations::finish`] turns them into one INVALID_ARGUMENT
/// listing the first [`MAX_LISTED`] and counting the rest.
#[derive(Debug, Default)]
pub struct Violations {
    listed: Vec<Violation>,
    more: usize,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.push(Violation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Adds an already-built violation (a parsed field's), in its place in the list.
    pub fn push(&mut self, violation: Violation) {
        if self.listed.len() < MAX_LISTED {
            self.listed.push(violation);
        } else {
            self.more += 1;
        }
    }

    /// Adds a violation unless `ok`.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// Checks a repeated field's length against the contract's bounds before any per-item
    /// work: false (with a violation) when outside, and the caller then skips the items, so a
    /// request of millions of items costs no more than its length check.
    pub fn count(
        &mut self,
        len: usize,
        bounds: RangeInclusive<usize>,
        field: impl Into<String>,
    ) -> bool {
        let ok = bounds.contains(&len);
        if !ok {
            let (min, max) = (bounds.start(), bounds.end());
            let wanted = match min {
                0 => format!("at most {max}"),
                _ => format!("{min} to {max}"),
            };
            self.add(field, format!("{wanted} items (got {len})"));
        }
        ok
    }

    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// How many violations were found, listed or not.
    pub fn len(&self) -> usize {
        self.listed.len() + self.more
    }

    /// `Ok` when nothing was wrong, else INVALID_ARGUMENT with a `BadRequest` listing the first
    /// [`MAX_LISTED`] violations (the message counts the rest).
    pub fn finish(self) -> Result<(), Status> {
        if self.listed.is_empty() {
            return Ok(());
        }
        let mut message = self
            .listed
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        if self.more > 0 {
            message.push_str(&format!("; and {} more", self.more));
        }
        let mut details = ErrorDetails::new();
        for v in self.listed {
            details.add_bad_request_violation(v.field, v.description);
        }
        Err(Status::with_error_details(
            Code::InvalidArgument,
            message,
            details,
        ))
    }

    /// The value of a parsed field, its violation added in place when it failed: for
    /// validations that walk a list and must keep the violations in the order of the request.
    pub fn take<T>(&mut self, field: Result<T, Violation>) -> Option<T> {
        field.split(self)
    }

    /// Finishes a validation that gathered its values itself (with [`Violations::take`] or
    /// [`Fields::split`]): INVALID_ARGUMENT when anything was wrong, else the values.
    pub fn finish_with<T>(self, values: Option<T>) -> Result<T, Status> {
        self.finish()?;
        // Every field that failed added a violation, so finish() returned early.
        values.ok_or_else(|| Status::internal("validation failed without a violation"))
    }

    /// Splits parsed `fields` (one `Result` or a tuple of them), adds their failures to the
    /// violations already found, and returns the values only when nothing at all was wrong:
    ///
    /// ```
    /// # use orchestrator_status::{At, Violations};
    /// # fn parse(s: &str) -> Result<u32, std::num::ParseIntError> { s.parse() }
    /// let mut v = Violations::new();
    /// v.check(true, "page_size", "must not be negative");
    /// let (a, b) = v.collect((parse("1").at("a"), parse("2").at("b"))).unwrap();
    /// assert_eq!((a, b), (1, 2));
    /// ```
    pub fn collect<F: Fields>(mut self, fields: F) -> Result<F::Values, Status> {
        let values = fields.split(&mut self);
        self.finish_with(values)
    }
}

/// A status with one `ErrorInfo` of [`DOMAIN`].
pub fn with_reason(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: &[(&str, String)],
) -> Status {
    with_domain_reason(code, DOMAIN, reason, message, metadata)
}

/// A status with one `ErrorInfo` of `domain` (the mesh's own refusals use their own domain).
/// The message ends with `[REASON]` too: tools that cannot decode the details (buf curl prints
/// them as base64) still show the reason a client would branch on.
pub fn with_domain_reason(
    code: Code,
    domain: &str,
    reason: &str,
    message: impl Into<String>,
    metadata: &[(&str, String)],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let message = message.into();
    let suffix = format!("[{reason}]");
    let message = if message.ends_with(&suffix) {
        message
    } else {
        format!("{message} {suffix}")
    };
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, domain, metadata),
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
    fn a_million_violations_list_twenty_and_count_the_rest() {
        let mut v = Violations::new();
        for i in 0..1_000_000 {
            v.add(format!("versions[{i}]"), "must be positive");
        }
        assert_eq!(v.len(), 1_000_000);
        let status = v.finish().unwrap_err();
        let bad = status.get_error_details().bad_request().cloned().unwrap();
        assert_eq!(bad.field_violations.len(), MAX_LISTED);
        assert!(
            status.message().ends_with("; and 999980 more"),
            "{}",
            status.message()
        );
        assert!(status.message().len() < 2_000);
    }

    #[test]
    fn collect_reports_every_failed_field_and_returns_values_only_when_all_parsed() {
        let parse = |s: &str| s.parse::<u8>();
        let mut v = Violations::new();
        v.add("other", "bad");
        let status = v
            .collect((parse("1").at("a"), parse("x").at("b"), parse("300").at("c")))
            .unwrap_err();
        let bad = status.get_error_details().bad_request().cloned().unwrap();
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["other", "b", "c"]);
        assert_eq!(Violations::new().collect(parse("7").at("one")).unwrap(), 7);
        assert_eq!(
            Violations::new()
                .collect((parse("1").at("a"), parse("2").at("b")))
                .unwrap(),
            (1, 2)
        );
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
        assert_eq!(status.message(), "full [QUOTA]");
        assert_eq!(metadata["n"], "1");
        assert!(reason_of(&Status::internal("x")).is_none());
    }
}
