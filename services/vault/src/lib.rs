//! The vault service: L3 user secrets (a user's own provider keys), AES-256-GCM encrypted under
//! data keys that `VAULT_MASTER_KEY` wraps, readable in plaintext by the infra identity only.
//!
//! Its environment: `DATABASE_URL` (PostgreSQL or SQLite), `VAULT_MASTER_KEY` (a keyring of
//! `id:base64` entries, first = primary), `AUDIT_KEY` (base64, 32 bytes), each also as `_FILE`;
//! `VAULT_KEEP_VERSIONS` (10), `VAULT_ROTATE_AFTER` (2^30 encryptions), `VAULT_REWRAP_BATCH`
//! (200 rows) and `VAULT_REWRAP_INTERVAL` (30s).
//!
//! Modules, each depending only on those above it:
//! - `config`, `crypto`, `audit`, `validate`: settings, envelope encryption, the audit
//!   vocabulary, request validation; no I/O.
//! - `db`: every query. `keys`: the data keys in memory. `batcher`: concurrent requests
//!   gathered into shared batches. `state`: the shared `Vault`.
//! - `grants` (a user's key lent to one project: Grant, Revoke, and the check every read
//!   passes), `read` (checked reads of values), `write` (Put, Delete, Rotate as ledger work),
//!   `key_status` (what GetKeyStatus reports), `rewrap` (background re-encryption).
//! - `api`: the gRPC handlers, thin: validate, call one of the above, answer.

use std::sync::Arc;

use orchestrator_mesh::Startup;
use orchestrator_proto::vault::v1::vault_service_server::VaultServiceServer;
use tonic::service::Routes;

/// The largest request the vault takes: a PutUserSecret of a 64 KiB value, or a BatchGet of
/// 100 reads.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

mod api;
mod audit;
mod batcher;
mod config;
mod crypto;
mod db;
mod grants;
mod key_status;
mod keys;
mod read;
mod rewrap;
mod state;
mod validate;
mod write;

/// Reads the settings, opens the database (checking the master keyring against the stored data
/// keys), starts the background rewrap and returns the vault's gRPC routes.
pub async fn routes(startup: Startup) -> anyhow::Result<Routes> {
    let settings = config::Settings::from_env(&startup.env)?;
    let (db, ledger) = startup.open_database(db::migrations).await?;
    let keys = Arc::new(keys::DataKeys::open(&db, settings.keyring).await?);
    let vault = state::Vault {
        lookups: read::lookups(db.clone()),
        puts: write::puts(),
        db,
        ledger,
        keys,
        limits: settings.limits,
        self_id: startup.self_id(),
        rewrap: Arc::default(),
    };
    // Rows left on a demoted key by a crash or another replica are picked up at start.
    tokio::spawn(rewrap::run(vault.clone(), settings.rewrap));
    Ok(Routes::new(
        VaultServiceServer::new(vault).max_decoding_message_size(MAX_REQUEST_BYTES),
    ))
}
