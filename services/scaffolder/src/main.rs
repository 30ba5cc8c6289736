//! The scaffolder service: projects, their GitHub repositories and the deploy template. Holds
//! no L1 secret beyond its certificate, database and audit key: GitHub access comes from
//! tokens the secret broker mints for it, narrowed to repository creation.
//!
//! Its environment: `DATABASE_URL`, `AUDIT_KEY` (also as `_FILE`), `GITHUB_API_URL`
//! (`https://api.github.com`), `GITHUB_ORG` (required), `SCAFFOLDER_TEMPLATE_REPOSITORY`
//! (`owner/name`, optional), `SCAFFOLDER_BROKER_ADDR` (`127.0.0.1:50052`).

// A binary crate: `pub` marks what the modules share, nothing is exported.
#![allow(unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_github::{GitHub, RepoRef, RetryPolicy};
use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::scaffolder::v1::scaffolder_service_server::ScaffolderServiceServer;
use orchestrator_store::Dialect;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

use orchestrator_store::now_us;

mod api;

fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/scaffolder/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/scaffolder/sqlite"),
    }
}

fn main() -> std::process::ExitCode {
    service_main(Service::Scaffolder, |startup| async move {
        let env = &startup.env;
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
        let github = Arc::new(GitHub::with_tokens_only(
            env.get("GITHUB_API_URL")
                .unwrap_or("https://api.github.com"),
            RetryPolicy {
                deadline: Duration::from_secs(60),
                ..RetryPolicy::default()
            },
        )?);
        let broker = startup.peer(Service::SecretBroker, "SCAFFOLDER_BROKER_ADDR")?;
        let (db, ledger) = startup.open_database(migrations).await?;
        let scaffolder = api::Scaffolder {
            db,
            ledger,
            github,
            org,
            template_repository,
            broker,
        };
        Ok(Routes::new(ScaffolderServiceServer::new(scaffolder)))
    })
}
