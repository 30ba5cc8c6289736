//! Where a project's secret is kept at GitHub (the contract's `GitHubSecretLocation`), parsed
//! once at the edge, stored as one short key, and mapped to GitHub's paths and to the token
//! permissions each kind needs.
//!
//! Architecture Invariant: a push uses a token narrowed to exactly what its location needs
//! (`permissions`); creating a missing environment uses a second token, `administration:
//! write` on that one repository, only when the environment is missing.

use orchestrator_fields::ProjectId;
use orchestrator_github::{EnvironmentName, RepoRef, SecretsAt};
use orchestrator_mesh::status::Violations;
use orchestrator_proto::common::v1 as common;

/// The most projects an organization secret may be shared with (an orchestrator bound; GitHub
/// takes more).
pub(crate) const MAX_SELECTED: usize = 100;
/// GitHub's limit of secrets per organization.
pub(crate) const MAX_ORG_SECRETS: usize = 1000;

/// Where a secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    Repository,
    Environment(EnvironmentName),
    Dependabot,
    Organization,
}

/// Who may use an organization secret (writes only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Visibility {
    All,
    Private,
    /// Projects registered at the broker, whose repositories get the secret.
    Selected(Vec<ProjectId>),
}

/// The stored key of `Location::Repository`, the default of rows written before locations.
pub(crate) const REPOSITORY_KEY: &str = "repository";
const ENVIRONMENT_PREFIX: &str = "environment:";

impl Location {
    /// How the location is stored (`secret_refs.location`, `write_requests.location`).
    pub(crate) fn key(&self) -> String {
        match self {
            Location::Repository => REPOSITORY_KEY.to_owned(),
            Location::Environment(env) => format!("{ENVIRONMENT_PREFIX}{env}"),
            Location::Dependabot => "dependabot".to_owned(),
            Location::Organization => "organization".to_owned(),
        }
    }

    /// A stored key; `None` for one this version cannot read.
    pub(crate) fn from_key(key: &str) -> Option<Self> {
        match key {
            REPOSITORY_KEY => Some(Location::Repository),
            "dependabot" => Some(Location::Dependabot),
            "organization" => Some(Location::Organization),
            _ => key
                .strip_prefix(ENVIRONMENT_PREFIX)
                .and_then(|env| EnvironmentName::new(env).ok())
                .map(Location::Environment),
        }
    }

    /// The location in the contract's form (no visibility: it is not recorded).
    pub(crate) fn proto(&self) -> common::GitHubSecretLocation {
        use common::git_hub_secret_location::Kind;
        let kind = match self {
            Location::Repository => Kind::Repository(common::RepositorySecretLocation {}),
            Location::Environment(env) => Kind::Environment(common::EnvironmentSecretLocation {
                name: env.to_string(),
            }),
            Location::Dependabot => Kind::Dependabot(common::DependabotSecretLocation {}),
            Location::Organization => {
                Kind::Organization(common::OrganizationSecretLocation::default())
            }
        };
        common::GitHubSecretLocation { kind: Some(kind) }
    }

    /// The secrets at GitHub for the project's repository `repo` in organization `org`.
    pub(crate) fn at(&self, repo: &RepoRef) -> SecretsAt {
        match self {
            Location::Repository => SecretsAt::Repository(repo.clone()),
            Location::Environment(env) => SecretsAt::Environment(repo.clone(), env.clone()),
            Location::Dependabot => SecretsAt::Dependabot(repo.clone()),
            // Registered repositories are all of the broker's organization.
            Location::Organization => SecretsAt::Organization(repo.owner().to_owned()),
        }
    }

    /// The permissions a token for these secrets needs, and nothing more. Environment secrets:
    /// GitHub documents both `environments` and `secrets` (write) for their endpoints.
    pub(crate) fn permissions(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Location::Repository => &[("secrets", "write")],
            Location::Environment(_) => &[("environments", "write"), ("secrets", "write")],
            Location::Dependabot => &[("dependabot_secrets", "write")],
            Location::Organization => &[("organization_secrets", "write")],
        }
    }

    /// Whether the token is narrowed to the project's repository (organization secrets are an
    /// organization permission: a repository list does not narrow them).
    pub(crate) fn narrowed_to_repository(&self) -> bool {
        !matches!(self, Location::Organization)
    }

    /// GitHub's limit of secrets in one set.
    pub(crate) fn max_secrets(&self) -> usize {
        match self {
            Location::Organization => MAX_ORG_SECRETS,
            _ => crate::validate::MAX_SECRETS,
        }
    }

    /// What GitHub calls the set, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Location::Repository => "the repository".to_owned(),
            Location::Environment(env) => format!("the environment `{env}`"),
            Location::Dependabot => "the repository's Dependabot secrets".to_owned(),
            Location::Organization => "the organization".to_owned(),
        }
    }
}

/// How a secret is named in audit records: its name for the repository's Actions secrets (as
/// before locations existed), `<location>/<name>` elsewhere.
pub(crate) fn audited(location_key: &str, name: impl std::fmt::Display) -> String {
    if location_key == REPOSITORY_KEY {
        name.to_string()
    } else {
        format!("{location_key}/{name}")
    }
}

/// Parses an optional `location` (unset = the repository). `write` asks for an organization
/// secret's visibility too. Violations are named under `field`.
pub(crate) fn parse(
    v: &mut Violations,
    field: &str,
    location: Option<&common::GitHubSecretLocation>,
    write: bool,
) -> Option<(Location, Option<Visibility>)> {
    use common::git_hub_secret_location::Kind;
    let kind = location.and_then(|l| l.kind.as_ref());
    match kind {
        None | Some(Kind::Repository(_)) => Some((Location::Repository, None)),
        Some(Kind::Dependabot(_)) => Some((Location::Dependabot, None)),
        Some(Kind::Environment(e)) => match EnvironmentName::new(&e.name) {
            Ok(env) => Some((Location::Environment(env), None)),
            Err(rule) => {
                v.add(format!("{field}.environment.name"), rule);
                None
            }
        },
        Some(Kind::Organization(_)) if !write => Some((Location::Organization, None)),
        Some(Kind::Organization(o)) => {
            let field = format!("{field}.organization");
            let visibility = visibility(v, &field, o)?;
            Some((Location::Organization, Some(visibility)))
        }
    }
}

fn visibility(
    v: &mut Violations,
    field: &str,
    o: &common::OrganizationSecretLocation,
) -> Option<Visibility> {
    use common::OrganizationSecretVisibility as V;
    let ids = &o.selected_project_ids;
    match V::try_from(o.visibility).unwrap_or(V::Unspecified) {
        V::Unspecified => {
            v.add(
                format!("{field}.visibility"),
                "required: ALL, PRIVATE or SELECTED",
            );
            None
        }
        V::All | V::Private if !ids.is_empty() => {
            v.add(
                format!("{field}.selected_project_ids"),
                "must be empty unless visibility is SELECTED",
            );
            None
        }
        V::All => Some(Visibility::All),
        V::Private => Some(Visibility::Private),
        V::Selected => {
            if !v.count(
                ids.len(),
                1..=MAX_SELECTED,
                format!("{field}.selected_project_ids"),
            ) {
                return None;
            }
            let mut out: Vec<ProjectId> = Vec::with_capacity(ids.len());
            let before = v.len();
            for (i, raw) in ids.iter().enumerate() {
                let at = format!("{field}.selected_project_ids[{i}]");
                match ProjectId::parse(raw) {
                    Ok(p) if out.contains(&p) => v.add(at, "named twice"),
                    Ok(p) => out.push(p),
                    Err(e) => v.add(at, e.to_string()),
                }
            }
            (v.len() == before).then_some(Visibility::Selected(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_keys_round_trip() {
        for l in [
            Location::Repository,
            Location::Dependabot,
            Location::Organization,
            Location::Environment(EnvironmentName::new("Production").unwrap()),
        ] {
            assert_eq!(Location::from_key(&l.key()), Some(l));
        }
        assert_eq!(Location::from_key("environment:"), None);
        assert_eq!(Location::from_key("elsewhere"), None);
    }

    #[test]
    fn each_kind_asks_for_its_own_permission_only() {
        assert_eq!(Location::Repository.permissions(), [("secrets", "write")]);
        assert_eq!(
            Location::Dependabot.permissions(),
            [("dependabot_secrets", "write")]
        );
        assert_eq!(
            Location::Organization.permissions(),
            [("organization_secrets", "write")]
        );
        assert!(!Location::Organization.narrowed_to_repository());
    }
}
