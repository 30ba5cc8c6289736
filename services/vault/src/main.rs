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

use anyhow::Context as _;
use orchestrator_audit::{AuditKey, Ledger};
use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::vault::v1::vault_service_server::VaultServiceServer;
use orchestrator_store::{Database, Dialect};
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
    service_main(Service::Vault, |startup| {
        let env = startup.env.clone();
        let self_id = startup.config.identity().to_string();
        let readiness = startup.readiness.clone();
        async move {
            let url = env.required_secret("DATABASE_URL")?;
            let keyring = crypto::Keyring::parse(&env.required_secret("VAULT_MASTER_KEY")?)?;
            let audit_key = AuditKey::from_base64(&env.required_secret("AUDIT_KEY")?)?;
            let settings = api::Settings {
                keep_versions: parse_setting(&env, "VAULT_KEEP_VERSIONS", 10)?,
                rotate_after: parse_setting(&env, "VAULT_ROTATE_AFTER", 1 << 30)?,
            };
            let rewrap_batch = parse_setting(&env, "VAULT_REWRAP_BATCH", 200)?;
            let rewrap_idle = match env.get("VAULT_REWRAP_INTERVAL") {
                None => Duration::from_secs(30),
                Some(raw) => orchestrator_mesh::config::parse_duration(raw)
                    .context("VAULT_REWRAP_INTERVAL must be a duration like 500ms or 30s")?,
            };
            let db = Database::connect(&url, Duration::from_secs(30))
                .await
                .context("DATABASE_URL")?;
            db.migrate([
                orchestrator_audit::migrations(db.dialect()),
                migrations(db.dialect()),
            ])
            .await?;
            let keys = Arc::new(keys::DataKeys::open(&db, keyring).await?);
            let probe = db.clone();
            readiness.add_check(
                "database",
                Arc::new(move || {
                    let db = probe.clone();
                    Box::pin(async move { db.ping().await })
                }),
            );
            let ledger = Ledger::start(db.clone(), audit_key);
            let rewrap = Arc::new(rewrap::Rewrap::default());
            let vault = api::Vault {
                db,
                ledger,
                keys,
                settings,
                self_id,
                rewrap,
            };
            // Rows left on a demoted key by a crash or another replica are picked up at start.
            tokio::spawn(rewrap::run(vault.clone(), rewrap_batch, rewrap_idle));
            Ok(Routes::new(VaultServiceServer::new(vault)))
        }
    })
}

fn parse_setting(env: &orchestrator_mesh::Env, var: &str, default: i64) -> anyhow::Result<i64> {
    match env.get(var) {
        None => Ok(default),
        Some(raw) => {
            let n: i64 = raw
                .parse()
                .with_context(|| format!("{var} must be a positive integer"))?;
            anyhow::ensure!(n > 0, "{var} must be a positive integer");
            Ok(n)
        }
    }
}
