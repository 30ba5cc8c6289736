//! Where GitHub keeps a secret: a repository's Actions secrets, one of its deployment
//! environments, its Dependabot secrets, or an organization's Actions secrets. Each has its own
//! public key and endpoints, with the same shapes (GitHub's "REST API endpoints for GitHub
//! Actions Secrets" and "... for Dependabot secrets").

use std::fmt;

use crate::names::RepoRef;

/// A deployment environment's name: 1-255 characters of `[A-Za-z0-9_.-]`, lower-cased.
///
/// GitHub allows up to 255 characters and compares names ignoring case; it also accepts other
/// characters (spaces, `/` sent as `%2F`), which we refuse so that a name is a path segment as
/// it stands and can never change the path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvironmentName(String);

/// The rule [`EnvironmentName::new`] enforces, for field violations.
pub const ENVIRONMENT_NAME_RULE: &str =
    "an environment name is 1-255 characters of letters, digits, `_`, `.` and `-`";

impl EnvironmentName {
    pub fn new(raw: &str) -> Result<Self, &'static str> {
        let ok = (1..=255).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && raw != "."
            && raw != "..";
        if ok {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(ENVIRONMENT_NAME_RULE)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvironmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of secrets at GitHub, with its own public key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretsAt {
    /// `/repos/{owner}/{repo}/actions/secrets`
    Repository(RepoRef),
    /// `/repos/{owner}/{repo}/environments/{name}/secrets`
    Environment(RepoRef, EnvironmentName),
    /// `/repos/{owner}/{repo}/dependabot/secrets`
    Dependabot(RepoRef),
    /// `/orgs/{org}/actions/secrets`
    Organization(String),
}

impl SecretsAt {
    /// The collection's path: `{base}/public-key`, `{base}/{name}`, `{base}?per_page=`.
    pub(crate) fn base(&self) -> String {
        match self {
            SecretsAt::Repository(r) => {
                format!("/repos/{}/{}/actions/secrets", r.owner(), r.name())
            }
            SecretsAt::Environment(r, env) => {
                format!(
                    "/repos/{}/{}/environments/{env}/secrets",
                    r.owner(),
                    r.name()
                )
            }
            SecretsAt::Dependabot(r) => {
                format!("/repos/{}/{}/dependabot/secrets", r.owner(), r.name())
            }
            SecretsAt::Organization(org) => format!("/orgs/{org}/actions/secrets"),
        }
    }
}

/// Who may use an organization secret (GitHub's `visibility`, and with `selected` the
/// repositories' numeric ids, `selected_repository_ids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgVisibility {
    All,
    Private,
    Selected(Vec<i64>),
}

impl OrgVisibility {
    pub(crate) fn body(&self) -> serde_json::Value {
        match self {
            OrgVisibility::All => serde_json::json!({ "visibility": "all" }),
            OrgVisibility::Private => serde_json::json!({ "visibility": "private" }),
            OrgVisibility::Selected(ids) => {
                serde_json::json!({ "visibility": "selected", "selected_repository_ids": ids })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_are_path_safe_and_ignore_case() {
        assert_eq!(
            EnvironmentName::new("Production").unwrap().as_str(),
            "production"
        );
        assert!(EnvironmentName::new("staging-eu_1.b").is_ok());
        assert!(EnvironmentName::new(&"e".repeat(255)).is_ok());
        let long = "e".repeat(256);
        for bad in ["", "a/b", "a b", "..", ".", "prod%2F", "é", long.as_str()] {
            assert!(EnvironmentName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_location_has_githubs_path() {
        let r = RepoRef::new("acme", "app").unwrap();
        let env = EnvironmentName::new("prod").unwrap();
        assert_eq!(
            SecretsAt::Repository(r.clone()).base(),
            "/repos/acme/app/actions/secrets"
        );
        assert_eq!(
            SecretsAt::Environment(r.clone(), env).base(),
            "/repos/acme/app/environments/prod/secrets"
        );
        assert_eq!(
            SecretsAt::Dependabot(r).base(),
            "/repos/acme/app/dependabot/secrets"
        );
        assert_eq!(
            SecretsAt::Organization("acme".into()).base(),
            "/orgs/acme/actions/secrets"
        );
    }
}
