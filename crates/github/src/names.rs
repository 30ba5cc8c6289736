//! GitHub's naming rules, checked once at the edge.

use std::fmt;

/// An owner (user or organization) and repository name. Identity is case-insensitive, as on
/// GitHub (`Acme/App` and `acme/app` are one repository: equal, same hash, same order); the
/// spelling it was given is kept for display.
#[derive(Debug, Clone)]
pub struct RepoRef {
    owner: String,
    name: String,
}

impl RepoRef {
    /// The case-folded (owner, name): what identifies the repository.
    fn identity(&self) -> (String, String) {
        (
            self.owner.to_ascii_lowercase(),
            self.name.to_ascii_lowercase(),
        )
    }

    /// Whether the repository belongs to `owner` (case-insensitively).
    pub fn is_owned_by(&self, owner: &str) -> bool {
        self.owner.eq_ignore_ascii_case(owner)
    }
}

impl PartialEq for RepoRef {
    fn eq(&self, other: &Self) -> bool {
        self.owner.eq_ignore_ascii_case(&other.owner) && self.name.eq_ignore_ascii_case(&other.name)
    }
}

impl Eq for RepoRef {}

impl std::hash::Hash for RepoRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl PartialOrd for RepoRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RepoRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.identity().cmp(&other.identity())
    }
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
    fn repository_identity_ignores_case_as_github_does() {
        let a = RepoRef::new("Acme", "My-App").unwrap();
        let b = RepoRef::new("acme", "my-app").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        let set: std::collections::HashSet<RepoRef> = [a.clone(), b].into();
        assert_eq!(set.len(), 1);
        assert_eq!(a.to_string(), "Acme/My-App", "the spelling is kept");
        assert!(a.is_owned_by("ACME") && !a.is_owned_by("acme2"));
        assert_ne!(a, RepoRef::new("acme", "my-app2").unwrap());
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
