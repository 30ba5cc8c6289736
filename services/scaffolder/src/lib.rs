//! The scaffolder service: projects, their GitHub repositories and the deploy template. Holds
//! no L1 secret beyond its certificate, database and audit key: GitHub access comes from
//! tokens the secret broker mints for it, one per job (creating the repository; committing the
//! template to that repository only), each revoked when its job is done.
//!
//! Its environment: `DATABASE_URL`, `AUDIT_KEY` (also as `_FILE`), `GITHUB_API_URL`
//! (`https://api.github.com`), `GITHUB_ORG` (required), `SCAFFOLDER_TEMPLATE_REPOSITORY`
//! (`owner/name`, optional), `SCAFFOLDER_BROKER_ADDR` (`127.0.0.1:50052`),
//! `SCAFFOLDER_VAULT_ADDR` (`127.0.0.1:50053`, where it records a new project's grants).
//!
//! Modules: `config` (settings), `state` (what requests share, the audit actions), `project`
//! (the model), `db` (every query), `validate` (requests into typed values), `create` (the
//! CreateProject steps), `tokens` (a token per GitHub job, revoked after it), `view` (a
//! project as reads return it), `api` (the gRPC handlers).

use orchestrator_mesh::Startup;
use orchestrator_proto::scaffolder::v1::scaffolder_service_server::ScaffolderServiceServer;
use tonic::service::Routes;

/// The largest request the scaffolder takes: a CreateProject with 100 initial secrets of
/// 48 KiB (4.7 MiB) and 100 `secrets_ref` entries.
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;

mod api;
mod config;
mod create;
mod db;
mod project;
mod state;
mod tokens;
mod validate;
mod view;

/// The scaffolder's gRPC routes, once its settings, database and peers are set up.
pub async fn routes(startup: Startup) -> anyhow::Result<Routes> {
    let scaffolder = state::Scaffolder::start(&startup).await?;
    Ok(Routes::new(
        ScaffolderServiceServer::new(scaffolder).max_decoding_message_size(MAX_REQUEST_BYTES),
    ))
}
