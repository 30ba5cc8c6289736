//! The identifiers that cross service boundaries.

use std::fmt;

/// Why a field was refused: the rule it breaks, never the value (which may be anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Invalid {}

fn printable(raw: &str, max: usize) -> bool {
    (1..=max).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $rule:expr, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The rule a valid value follows, as field violations state it.
            pub const RULE: &'static str = $rule;

            pub fn parse(raw: &str) -> Result<Self, Invalid> {
                let valid: fn(&str) -> bool = $valid;
                if valid(raw) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(Invalid(Self::RULE))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self, Invalid> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// The caller's idempotency key: a retry with the same id resumes or repeats the first
    /// call's answer instead of acting twice. 1-128 printable ASCII characters.
    RequestId,
    "required, 1-128 printable ASCII characters",
    |raw| printable(raw, 128)
);

id_type!(
    /// A project, as the scaffolder names it (`prj-` and 16 hex digits) and every other
    /// service refers to it. 1-128 characters of `[A-Za-z0-9_-]`.
    ProjectId,
    "1-128 characters of [A-Za-z0-9_-]",
    |raw| {
        (1..=128).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    }
);

id_type!(
    /// A user of the orchestrator (the owner of projects and of vault entries). 1-128
    /// printable ASCII characters without spaces.
    UserId,
    "1-128 printable ASCII characters without spaces",
    |raw| printable(raw, 128)
);

impl RequestId {
    /// An optional request id: empty means none.
    pub fn optional(raw: &str) -> Result<Option<Self>, Invalid> {
        if raw.is_empty() {
            Ok(None)
        } else {
            Self::parse(raw).map(Some)
        }
    }
}

impl ProjectId {
    /// A fresh project id, `prj-` and 16 random hex digits.
    pub fn generate() -> Self {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 8];
        // A failing system RNG leaves zeros; ids are also unique by their database constraints.
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        Self(format!(
            "prj-{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_their_rules() {
        assert!(RequestId::parse("a").is_ok());
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse("has space").is_err());
        assert!(RequestId::parse(&"x".repeat(129)).is_err());
        assert_eq!(RequestId::optional("").unwrap(), None);
        assert!(ProjectId::parse("prj-0123_A").is_ok());
        assert!(ProjectId::parse("prj/1").is_err());
        assert!(ProjectId::parse("").is_err());
        assert!(UserId::parse("u1@example.com").is_ok());
        assert!(UserId::parse("u 1").is_err());
        assert!(UserId::parse("ü").is_err());
    }

    #[test]
    fn generated_project_ids_are_valid_and_distinct() {
        let a = ProjectId::generate();
        let b = ProjectId::generate();
        assert!(ProjectId::parse(a.as_str()).is_ok());
        assert!(a.as_str().starts_with("prj-") && a.as_str().len() == 20);
        assert_ne!(a, b);
    }

    #[test]
    fn a_refusal_states_the_rule_not_the_value() {
        let e = UserId::parse("secret value with spaces").unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }
}
