//! The secret broker: the only holder of the GitHub App key. Pushes L2 project secrets into
//! GitHub Actions repository secrets (sealed for the repository, paced per installation) and
//! keeps only references; mints narrowed installation tokens for the other services.
//!
//! Its environment: `DATABASE_URL`, `AUDIT_KEY`, `GITHUB_APP_ID`, `GITHUB_APP_PRIVATE_KEY`
//! (each secret also as `_FILE`), `GITHUB_API_URL` (default `https://api.github.com`),
//! `GITHUB_ORG` (where the scaffolder creates repositories), `BROKER_MIN_WRITE_INTERVAL` (1s).

// A binary crate: `pub` marks what the modules share, nothing is exported.
#![allow(unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_github::{AppAuth, GitHub, RetryPolicy};
use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::secretbroker::v1::secret_broker_service_server::SecretBrokerServiceServer;
use orchestrator_store::Dialect;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

use orchestrator_store::now_us;

mod api;
mod pacing;

fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/secret-broker/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/secret-broker/sqlite"),
    }
}

fn main() -> std::process::ExitCode {
    service_main(Service::SecretBroker, |startup| async move {
        let env = &startup.env;
        let app_id: u64 = env
            .required("GITHUB_APP_ID", "the GitHub App's id")?
            .parse()
            .context("GITHUB_APP_ID must be a number")?;
        let app = AppAuth::from_pem(app_id, &env.required_secret("GITHUB_APP_PRIVATE_KEY")?)?;
        let api_url = env
            .get("GITHUB_API_URL")
            .unwrap_or("https://api.github.com");
        let retry = RetryPolicy {
            deadline: env.duration("BROKER_GITHUB_DEADLINE", Duration::from_secs(120))?,
            secondary_wait: env.duration("BROKER_SECONDARY_WAIT", Duration::from_secs(60))?,
            base_backoff: env.duration("BROKER_BACKOFF", Duration::from_millis(500))?,
            attempt_timeout: env
                .duration("BROKER_GITHUB_ATTEMPT_TIMEOUT", Duration::from_secs(20))?,
            ..RetryPolicy::default()
        };
        let github = Arc::new(GitHub::new(api_url, app, retry)?);
        let interval = env.duration("BROKER_MIN_WRITE_INTERVAL", Duration::from_secs(1))?;
        let (db, ledger) = startup.open_database(migrations).await?;
        let pacer = Arc::new(pacing::Pacer::new(db.clone(), interval));
        let broker = api::Broker {
            db,
            ledger,
            github,
            pacer,
            org: env.get("GITHUB_ORG").map(str::to_owned),
        };
        Ok(Routes::new(SecretBrokerServiceServer::new(broker)))
    })
}
