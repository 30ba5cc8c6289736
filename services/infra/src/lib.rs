//! The infra service: servers, DNS and deploy keys. Holds the provider tokens and the
//! orchestrator's SSH key, and never an application (L2) secret: it hands the deploy
//! credentials to the broker and keeps public keys only.
//!
//! Its environment: `DATABASE_URL`, `AUDIT_KEY`, `ORCHESTRATOR_SSH_PRIVATE_KEY` (each also as
//! `_FILE`); `DIGITALOCEAN_TOKEN`, `TIME4VPS_USER` + `TIME4VPS_PASSWORD`, `CLOUDFLARE_API_TOKEN`
//! (L1, each optional: a user's own key from the vault can stand in); `DIGITALOCEAN_API_URL`,
//! `TIME4VPS_API_URL`, `TIME4VPS_DEFAULT_OS`, `CLOUDFLARE_API_URL`, `CLOUDFLARE_ZONE` (no zone =
//! no DNS step); `INFRA_SSH_PORT` (22), `INFRA_READY_TIMEOUT_SECS` (900), `INFRA_GIT_URL`
//! (`https://github.com`, where servers clone from); `GITHUB_API_URL` (`https://api.github.com`,
//! where a clone token is revoked, with itself, once the checkout is over); `INFRA_BROKER_ADDR`,
//! `INFRA_VAULT_ADDR` and `INFRA_SCAFFOLDER_ADDR` (default: the peer's default port on 127.0.0.1).
//!
//! Modules, from the edge inwards: `api` (the handlers) validates with `validate`, reads and
//! records through `db` (every query) in the ledger's transactions held by `state`, and
//! starts `operation`s, which run in the background on `state`, `model` and `db` alone.

use std::sync::Arc;

use orchestrator_mesh::Startup;
use orchestrator_proto::infra::v1::infra_service_server::InfraServiceServer;
use orchestrator_store::Dialect;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

/// The largest request infra takes: its requests are a few ids and names (tonic's default,
/// 4 MiB, would let one caller make it buffer 4 MiB per call).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

mod api;
mod audit;
mod config;
mod db;
mod model;
mod operation;
mod owner;
mod state;
mod validate;
mod watch;

/// Infra's own tables (versions from 100; the audit tables come first).
fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/infra/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/infra/sqlite"),
    }
}

/// Infra's routes: settings, database and ledger, the operations an earlier process left
/// unfinished resumed, and the gRPC service.
pub async fn routes(startup: Startup) -> anyhow::Result<Routes> {
    let settings = config::Settings::from_env(&startup.env)?;
    let peers = config::Peers::from_startup(&startup)?;
    let github = orchestrator_github::GitHub::with_tokens_only(
        &settings.github_api_url,
        orchestrator_github::RetryPolicy {
            deadline: std::time::Duration::from_secs(30),
            ..orchestrator_github::RetryPolicy::default()
        },
    )?;
    let (db, ledger) = startup.open_database(migrations).await?;
    let infra = Arc::new(state::Infra {
        db,
        ledger,
        self_id: startup.self_id(),
        watchers: watch::Watchers::new(settings.max_watches_per_caller),
        leases: operation::Leases::new(settings.operation_lease),
        settings,
        peers,
        github,
    });
    // Operations a previous process left unfinished resume from their recorded step.
    operation::resume_unfinished(&infra).await?;
    Ok(Routes::new(
        InfraServiceServer::new(api::Api(infra)).max_decoding_message_size(MAX_REQUEST_BYTES),
    ))
}
