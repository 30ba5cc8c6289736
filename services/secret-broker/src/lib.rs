//! The secret broker: the only holder of the GitHub App key. Pushes L2 project secrets into
//! GitHub Actions repository secrets (sealed for the repository, paced per installation) and
//! keeps only references; mints narrowed installation tokens for the other services.
//!
//! The modules, from the edge inwards:
//! - `api`: the gRPC handlers (validate, call the module that does the work, answer);
//! - `validate`: requests into typed values, every violation at once, before any GitHub call;
//! - `registry`, `push`, `delete`, `reconcile`, `tokens`: the work of each RPC family;
//! - `settle`: the background pass that settles `pending` references a crash left;
//! - `messages`: the broker's records as its gRPC messages;
//! - `state` (the shared `Broker`), `audit` (its actions and targets), `pacing` (writes per
//!   installation), `db` (every query), `config` (every setting).

use std::sync::Arc;

use orchestrator_github::GitHub;
use orchestrator_mesh::Startup;
use orchestrator_proto::secretbroker::v1::secret_broker_service_server::SecretBrokerServiceServer;
use orchestrator_store::Dialect;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

/// The largest request the broker takes: 100 secrets of 48 KiB (4.7 MiB) and their names.
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;

mod api;
mod audit;
mod config;
mod db;
mod delete;
mod location;
mod messages;
mod minted;
mod pacing;
mod push;
mod reconcile;
mod registry;
mod settle;
mod state;
mod tokens;
mod validate;

/// The broker's own tables (versions from 100; the audit tables come first).
fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/secret-broker/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/secret-broker/sqlite"),
    }
}

/// Reads the settings, opens the database and serves the broker.
pub async fn routes(startup: Startup) -> anyhow::Result<Routes> {
    let settings = config::Settings::from_env(&startup.env)?;
    let github = Arc::new(GitHub::new(
        &settings.github_api_url,
        settings.github_app,
        settings.retry,
    )?);
    let (db, ledger) = startup.open_database(migrations).await?;
    let pacer = Arc::new(pacing::Pacer::new(db.clone(), settings.min_write_interval));
    let broker = state::Broker {
        db,
        ledger,
        github,
        pacer,
        org: settings.github_org,
        minted: Arc::default(),
    };
    // Pending references a crash left are settled in the background (see `settle`).
    let settler = state::Broker {
        db: broker.db.clone(),
        ledger: broker.ledger.clone(),
        github: broker.github.clone(),
        pacer: broker.pacer.clone(),
        org: broker.org.clone(),
        minted: broker.minted.clone(),
    };
    tokio::spawn(settle::run(
        settler,
        settings.settle_every,
        settings.settle_pending_after,
    ));
    Ok(Routes::new(
        SecretBrokerServiceServer::new(broker).max_decoding_message_size(MAX_REQUEST_BYTES),
    ))
}
