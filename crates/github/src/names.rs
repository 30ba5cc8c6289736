//! GitHub's naming rules, checked once at the edge.

use std::fmt;

/// An owner (user or organization) and repository name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoRef {
    owner: String,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "owner must be 1-39 characters of letters, digits and single hyphens, not starting or ending with a hyphen"
    )]
    Owner,
    #[error(
        "repository name must be 1-100 characters of letters, digits, `.`, `-` and `_`, and not `.` or `..`"
    )]
    Repository,
    #[error(
        "secret names may contain only letters, digits and underscores, must not start with a digit, and must not start with GITHUB_"
    )]
    SecretName,
}

impl RepoRef {
    pub fn new(owner: &str, name: &str) -> Result<Self, NameError> {
        let owner_ok = (1..=39).contains(&owner.len())
            && owner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !owner.starts_with('-')
            && !owner.ends_with('-')
            && !owner.contains("--");
        if !owner_ok {
            return Err(NameError::Owner);
        }
        let name_ok = (1..=100).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            && name != "."
            && name != "..";
        if !name_ok {
            return Err(NameError::Repository);
        }
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// An Actions secret name, upper-cased as GitHub stores it (names are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretName(String);

impl SecretName {
    pub fn new(raw: &str) -> Result<Self, NameError> {
        let ok = !raw.is_empty()
            && raw.len() <= 255
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !raw.as_bytes()[0].is_ascii_digit()
            && !raw.to_ascii_uppercase().starts_with("GITHUB_");
        if ok {
            Ok(Self(raw.to_ascii_uppercase()))
        } else {
            Err(NameError::SecretName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_follow_githubs_rules() {
        assert_eq!(
            SecretName::new("telegram_token").unwrap().as_str(),
            "TELEGRAM_TOKEN"
        );
        assert!(SecretName::new("_X1").is_ok());
        for bad in ["", "1ABC", "A-B", "A B", "github_token", "GITHUB_X", "ÄB"] {
            assert!(SecretName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repository_names_follow_githubs_rules() {
        assert!(RepoRef::new("acme-org", "my.app_v2").is_ok());
        for (owner, name) in [
            ("-acme", "a"),
            ("acme", ".."),
            ("ac me", "a"),
            ("acme", "a/b"),
            ("", "a"),
            ("a--b", "x"),
        ] {
            assert!(RepoRef::new(owner, name).is_err(), "{owner}/{name}");
        }
    }
}
