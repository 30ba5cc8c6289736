//! The scaffolder's settings, read once at start.

use anyhow::Context as _;
use orchestrator_github::RepoRef;
use orchestrator_mesh::Env;

/// The secret broker's address (`host:port`); unset = its default port on 127.0.0.1
/// (`Startup::peer` resolves it).
pub(crate) const BROKER_ADDR: &str = "SCAFFOLDER_BROKER_ADDR";

/// The vault's address, where the scaffolder records a user's grants of vault entries to a new
/// project; unset = its default port on 127.0.0.1.
pub(crate) const VAULT_ADDR: &str = "SCAFFOLDER_VAULT_ADDR";

const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Where repositories are created (`GITHUB_ORG`, required).
    pub(crate) org: String,
    /// GitHub's REST API (`GITHUB_API_URL`).
    pub(crate) github_api_url: String,
    /// A template repository to generate repositories from instead of creating empty ones
    /// (`SCAFFOLDER_TEMPLATE_REPOSITORY`, `owner/name`, optional).
    pub(crate) template_repository: Option<RepoRef>,
}

impl Settings {
    pub(crate) fn from_env(env: &Env) -> anyhow::Result<Self> {
        let org = env
            .required(
                "GITHUB_ORG",
                "the organization where projects' repositories are created",
            )?
            .to_owned();
        let template_repository = match env.get("SCAFFOLDER_TEMPLATE_REPOSITORY") {
            None => None,
            Some(raw) => {
                let (owner, name) = raw
                    .split_once('/')
                    .context("SCAFFOLDER_TEMPLATE_REPOSITORY must be owner/name")?;
                Some(RepoRef::new(owner, name).context("SCAFFOLDER_TEMPLATE_REPOSITORY")?)
            }
        };
        let github_api_url = env
            .get("GITHUB_API_URL")
            .unwrap_or(DEFAULT_GITHUB_API_URL)
            .to_owned();
        Ok(Self {
            org,
            github_api_url,
            template_repository,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_and_a_template_repository() {
        let settings = Settings::from_env(&Env::from_pairs([("GITHUB_ORG", "acme")])).unwrap();
        assert_eq!(settings.org, "acme");
        assert_eq!(settings.github_api_url, DEFAULT_GITHUB_API_URL);
        assert_eq!(settings.template_repository, None);
        let settings = Settings::from_env(&Env::from_pairs([
            ("GITHUB_ORG", "acme"),
            ("GITHUB_API_URL", "http://127.0.0.1:9"),
            ("SCAFFOLDER_TEMPLATE_REPOSITORY", "acme/service-template"),
        ]))
        .unwrap();
        assert_eq!(settings.github_api_url, "http://127.0.0.1:9");
        assert_eq!(
            settings.template_repository.unwrap().to_string(),
            "acme/service-template"
        );
    }

    #[test]
    fn a_missing_org_or_a_malformed_template_repository_is_named() {
        let e = Settings::from_env(&Env::default()).unwrap_err();
        assert!(format!("{e:#}").contains("GITHUB_ORG"), "{e:#}");
        for bad in ["no-slash", "acme/bad name"] {
            let e = Settings::from_env(&Env::from_pairs([
                ("GITHUB_ORG", "acme"),
                ("SCAFFOLDER_TEMPLATE_REPOSITORY", bad),
            ]))
            .unwrap_err();
            assert!(
                format!("{e:#}").contains("SCAFFOLDER_TEMPLATE_REPOSITORY"),
                "{e:#}"
            );
        }
    }
}
