//! The infra service: servers, DNS and deploy keys. Holds the provider tokens and the
//! orchestrator's SSH key, and never an application (L2) secret: it hands the deploy
//! credentials to the broker and keeps public keys only.
//!
//! Its environment: `DATABASE_URL`, `AUDIT_KEY`, `ORCHESTRATOR_SSH_PRIVATE_KEY` (each also as
//! `_FILE`); `DIGITALOCEAN_TOKEN`, `TIME4VPS_USER` + `TIME4VPS_PASSWORD`, `CLOUDFLARE_API_TOKEN`
//! (L1, each optional: a user's own key from the vault can stand in); `DIGITALOCEAN_API_URL`,
//! `TIME4VPS_API_URL`, `TIME4VPS_DEFAULT_OS`, `CLOUDFLARE_API_URL`, `CLOUDFLARE_ZONE` (no zone =
//! no DNS step); `INFRA_SSH_PORT` (22), `INFRA_READY_TIMEOUT_SECS` (900), `INFRA_GIT_URL`
//! (`https://github.com`, where servers clone from);
//! `INFRA_BROKER_ADDR` (`127.0.0.1:50052`), `INFRA_VAULT_ADDR` (`127.0.0.1:50053`).

// A binary crate: `pub` marks what the modules share, nothing is exported.
#![allow(unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::infra::v1::infra_service_server::InfraServiceServer;
use orchestrator_ssh::AdminKey;
use orchestrator_store::Dialect;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

use orchestrator_store::now_us;

mod api;
mod ops;

fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/infra/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/infra/sqlite"),
    }
}

fn main() -> std::process::ExitCode {
    service_main(Service::Infra, |startup| async move {
        let env = &startup.env;
        let admin_key =
            AdminKey::from_openssh(&env.required_secret("ORCHESTRATOR_SSH_PRIVATE_KEY")?)
                .context("ORCHESTRATOR_SSH_PRIVATE_KEY")?;
        let t4_login = match (env.get("TIME4VPS_USER"), env.secret("TIME4VPS_PASSWORD")?) {
            (Some(user), Some(password)) => Some((user.to_owned(), password)),
            (None, None) => None,
            _ => anyhow::bail!("TIME4VPS_USER and TIME4VPS_PASSWORD go together"),
        };
        let ssh_port = env.parse::<u16>("INFRA_SSH_PORT", 22)?;
        let ready_timeout = Duration::from_secs(env.parse("INFRA_READY_TIMEOUT_SECS", 900)?);
        let broker = startup.peer(Service::SecretBroker, "INFRA_BROKER_ADDR")?;
        let vault = startup.peer(Service::Vault, "INFRA_VAULT_ADDR")?;
        let (db, ledger) = startup.open_database(migrations).await?;
        let url = |var: &str, default: &str| env.get(var).unwrap_or(default).to_owned();
        let infra = Arc::new(api::Infra {
            db,
            ledger,
            self_id: startup.self_id(),
            broker,
            vault,
            do_url: url("DIGITALOCEAN_API_URL", "https://api.digitalocean.com"),
            do_token: env.secret("DIGITALOCEAN_TOKEN")?,
            t4_url: url("TIME4VPS_API_URL", "https://billing.time4vps.com"),
            t4_login,
            t4_default_os: url("TIME4VPS_DEFAULT_OS", "kvm-ubuntu-24.04-gpt-x86_64"),
            cf_url: url("CLOUDFLARE_API_URL", "https://api.cloudflare.com/client/v4"),
            cf_token: env.secret("CLOUDFLARE_API_TOKEN")?,
            cf_zone: env.get("CLOUDFLARE_ZONE").map(str::to_owned),
            admin_key,
            ssh_port,
            ready_timeout,
            git_url: url("INFRA_GIT_URL", "https://github.com")
                .trim_end_matches('/')
                .to_owned(),
        });
        // Operations a previous process left unfinished resume from their recorded step.
        for id in infra.unfinished().await? {
            let infra = infra.clone();
            tokio::spawn(async move { infra.run(id).await });
        }
        Ok(Routes::new(InfraServiceServer::new(api::Api(infra))))
    })
}
