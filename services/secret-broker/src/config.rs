//! The broker's settings, read once at start.

use std::time::Duration;

use anyhow::Context as _;
use orchestrator_github::{AppAuth, RetryPolicy};
use orchestrator_mesh::Env;

/// Every setting of the broker (besides the mesh's `ORCH_*`, `DATABASE_URL` and `AUDIT_KEY`).
#[derive(Debug)]
pub(crate) struct Settings {
    /// `GITHUB_APP_ID` and `GITHUB_APP_PRIVATE_KEY` (or `_FILE`): the App the broker acts as.
    pub github_app: AppAuth,
    /// `GITHUB_API_URL`, default `https://api.github.com`.
    pub github_api_url: String,
    /// `GITHUB_ORG`: where the scaffolder creates repositories (no repository-creation tokens
    /// without it).
    pub github_org: Option<String>,
    /// How long and how often GitHub calls are retried: `BROKER_GITHUB_DEADLINE` (120s),
    /// `BROKER_SECONDARY_WAIT` (60s), `BROKER_BACKOFF` (500ms), `BROKER_GITHUB_ATTEMPT_TIMEOUT`
    /// (20s).
    pub retry: RetryPolicy,
    /// `BROKER_MIN_WRITE_INTERVAL` (1s): the spacing of writes to one installation.
    pub min_write_interval: Duration,
    /// `BROKER_SETTLE_PENDING_AFTER` (60s): how old a `pending` reference is before the
    /// background pass settles it as a crash's leftover; `BROKER_SETTLE_EVERY` (30s): how often
    /// the pass runs.
    pub settle_pending_after: Duration,
    pub settle_every: Duration,
}

impl Settings {
    pub(crate) fn from_env(env: &Env) -> anyhow::Result<Self> {
        let app_id: u64 = env
            .required("GITHUB_APP_ID", "the GitHub App's id")?
            .parse()
            .context("GITHUB_APP_ID must be a number")?;
        let github_app =
            AppAuth::from_pem(app_id, &env.required_secret("GITHUB_APP_PRIVATE_KEY")?)?;
        let retry = RetryPolicy {
            deadline: env.duration("BROKER_GITHUB_DEADLINE", Duration::from_secs(120))?,
            secondary_wait: env.duration("BROKER_SECONDARY_WAIT", Duration::from_secs(60))?,
            base_backoff: env.duration("BROKER_BACKOFF", Duration::from_millis(500))?,
            attempt_timeout: env
                .duration("BROKER_GITHUB_ATTEMPT_TIMEOUT", Duration::from_secs(20))?,
            ..RetryPolicy::default()
        };
        Ok(Self {
            github_app,
            github_api_url: env
                .get("GITHUB_API_URL")
                .unwrap_or("https://api.github.com")
                .to_owned(),
            github_org: env.get("GITHUB_ORG").map(str::to_owned),
            retry,
            min_write_interval: env
                .duration("BROKER_MIN_WRITE_INTERVAL", Duration::from_secs(1))?,
            settle_pending_after: env
                .positive_duration("BROKER_SETTLE_PENDING_AFTER", Duration::from_secs(60))?,
            settle_every: env.positive_duration("BROKER_SETTLE_EVERY", Duration::from_secs(30))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_id_is_required_and_a_number() {
        let missing = Settings::from_env(&Env::from_pairs([("GITHUB_ORG", "acme")])).unwrap_err();
        assert!(format!("{missing:#}").contains("GITHUB_APP_ID is required"));
        let text = Settings::from_env(&Env::from_pairs([("GITHUB_APP_ID", "twelve")])).unwrap_err();
        assert!(format!("{text:#}").contains("GITHUB_APP_ID must be a number"));
        let no_key = Settings::from_env(&Env::from_pairs([("GITHUB_APP_ID", "12")])).unwrap_err();
        assert!(format!("{no_key:#}").contains("GITHUB_APP_PRIVATE_KEY"));
    }
}
