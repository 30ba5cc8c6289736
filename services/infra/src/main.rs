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
use orchestrator_audit::{AuditKey, Ledger};
use orchestrator_mesh::{Identity, Service, service_main};
use orchestrator_proto::infra::v1::infra_service_server::InfraServiceServer;
use orchestrator_ssh::AdminKey;
use orchestrator_store::{Database, Dialect};
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
    service_main(Service::Infra, |startup| {
        let env = startup.env.clone();
        let readiness = startup.readiness.clone();
        let tls = startup.tls.clone();
        let trust_domain = startup.config.trust_domain.clone();
        let self_id = startup.config.identity().to_string();
        async move {
            let url = env.required_secret("DATABASE_URL")?;
            let audit_key = AuditKey::from_base64(&env.required_secret("AUDIT_KEY")?)?;
            let admin_key =
                AdminKey::from_openssh(&env.required_secret("ORCHESTRATOR_SSH_PRIVATE_KEY")?)
                    .context("ORCHESTRATOR_SSH_PRIVATE_KEY")?;
            let t4_login = match (env.get("TIME4VPS_USER"), env.secret("TIME4VPS_PASSWORD")?) {
                (Some(user), Some(password)) => Some((user.to_owned(), password)),
                (None, None) => None,
                _ => anyhow::bail!("TIME4VPS_USER and TIME4VPS_PASSWORD go together"),
            };
            let number = |name: &str, default: u64| -> anyhow::Result<u64> {
                env.get(name).map_or(Ok(default), |v| {
                    v.parse().with_context(|| format!("{name}: not a number"))
                })
            };
            let ssh_port =
                u16::try_from(number("INFRA_SSH_PORT", 22)?).context("INFRA_SSH_PORT")?;
            let ready_timeout = Duration::from_secs(number("INFRA_READY_TIMEOUT_SECS", 900)?);
            let db = Database::connect(&url, Duration::from_secs(30))
                .await
                .context("DATABASE_URL")?;
            db.migrate([
                orchestrator_audit::migrations(db.dialect()),
                migrations(db.dialect()),
            ])
            .await?;
            let probe = db.clone();
            readiness.add_check(
                "database",
                Arc::new(move || {
                    let db = probe.clone();
                    Box::pin(async move { db.ping().await })
                }),
            );
            let ledger = Ledger::start(db.clone(), audit_key);
            let infra = Arc::new(api::Infra {
                db,
                ledger,
                self_id,
                broker: orchestrator_mesh::client::connect_lazy(
                    tls.clone(),
                    env.get("INFRA_BROKER_ADDR").unwrap_or("127.0.0.1:50052"),
                    Identity::new(trust_domain.clone(), Service::SecretBroker.identity_name()),
                )
                .context("INFRA_BROKER_ADDR")?,
                vault: orchestrator_mesh::client::connect_lazy(
                    tls,
                    env.get("INFRA_VAULT_ADDR").unwrap_or("127.0.0.1:50053"),
                    Identity::new(trust_domain, Service::Vault.identity_name()),
                )
                .context("INFRA_VAULT_ADDR")?,
                do_url: env
                    .get("DIGITALOCEAN_API_URL")
                    .unwrap_or("https://api.digitalocean.com")
                    .to_owned(),
                do_token: env.secret("DIGITALOCEAN_TOKEN")?,
                t4_url: env
                    .get("TIME4VPS_API_URL")
                    .unwrap_or("https://billing.time4vps.com")
                    .to_owned(),
                t4_login,
                t4_default_os: env
                    .get("TIME4VPS_DEFAULT_OS")
                    .unwrap_or("kvm-ubuntu-24.04-gpt-x86_64")
                    .to_owned(),
                cf_url: env
                    .get("CLOUDFLARE_API_URL")
                    .unwrap_or("https://api.cloudflare.com/client/v4")
                    .to_owned(),
                cf_token: env.secret("CLOUDFLARE_API_TOKEN")?,
                cf_zone: env.get("CLOUDFLARE_ZONE").map(str::to_owned),
                admin_key,
                ssh_port,
                ready_timeout,
                git_url: env
                    .get("INFRA_GIT_URL")
                    .unwrap_or("https://github.com")
                    .trim_end_matches('/')
                    .to_owned(),
            });
            // Operations a previous process left unfinished resume from their recorded step.
            for id in infra.unfinished().await? {
                let infra = infra.clone();
                tokio::spawn(async move { infra.run(id).await });
            }
            Ok(Routes::new(InfraServiceServer::new(api::Api(infra))))
        }
    })
}
