//! The vault service: L3 user secrets (a user's own provider keys), AES-256-GCM encrypted under
//! data keys that `VAULT_MASTER_KEY` wraps, readable in plaintext by the infra identity only.
//!
//! Its environment: `DATABASE_URL` (PostgreSQL or SQLite), `VAULT_MASTER_KEY` (a keyring of
//! `id:base64` entries, first = primary), `AUDIT_KEY` (base64, 32 bytes), each also as `_FILE`;
//! `VAULT_KEEP_VERSIONS` (10) and `VAULT_ROTATE_AFTER` (2^30 encryptions).

// A binary crate: `pub` marks what the modules share, nothing is exported.
#![allow(unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::vault::v1::vault_service_server::VaultServiceServer;
use orchestrator_store::Dialect;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

use orchestrator_store::now_us;

mod api;
mod crypto;
mod keys;
mod rewrap;

fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/vault/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/vault/sqlite"),
    }
}

fn main() -> std::process::ExitCode {
    service_main(Service::Vault, |startup| async move {
        let env = &startup.env;
        let keyring = crypto::Keyring::parse(&env.required_secret("VAULT_MASTER_KEY")?)?;
        let settings = api::Settings {
            keep_versions: env.positive("VAULT_KEEP_VERSIONS", 10)? as i64,
            rotate_after: env.positive("VAULT_ROTATE_AFTER", 1 << 30)? as i64,
        };
        let rewrap_batch = env.positive("VAULT_REWRAP_BATCH", 200)? as i64;
        let rewrap_idle =
            env.positive_duration("VAULT_REWRAP_INTERVAL", Duration::from_secs(30))?;
        let (db, ledger) = startup.open_database(migrations).await?;
        let keys = Arc::new(keys::DataKeys::open(&db, keyring).await?);
        let rewrap = Arc::new(rewrap::Rewrap::default());
        let vault = api::Vault {
            db,
            ledger,
            keys,
            settings,
            self_id: startup.self_id(),
            rewrap,
        };
        // Rows left on a demoted key by a crash or another replica are picked up at start.
        tokio::spawn(rewrap::run(vault.clone(), rewrap_batch, rewrap_idle));
        Ok(Routes::new(VaultServiceServer::new(vault)))
    })
}
