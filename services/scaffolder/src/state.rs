//! What every request shares: the database and audit ledger, the GitHub client, the settings
//! and the channels to the secret broker and the vault.

use std::time::Duration;

use orchestrator_audit::{Entry, Ledger};
use orchestrator_fields::ProjectId;
use orchestrator_github::{GitHub, RetryPolicy};
use orchestrator_mesh::client::PeerChannel;
use orchestrator_mesh::{Service, Startup};
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use orchestrator_store::Database;
use tonic::Status;

use crate::config::{self, Settings};
use crate::db;

#[derive(Debug)]
pub(crate) struct Scaffolder {
    pub(crate) db: Database,
    pub(crate) ledger: Ledger<Status>,
    pub(crate) github: GitHub,
    pub(crate) settings: Settings,
    /// The secret broker: one channel, connected on first use and reconnected as needed.
    broker: PeerChannel,
    /// The vault (grants only): one channel, connected on first use.
    vault: PeerChannel,
}

impl Scaffolder {
    pub(crate) async fn start(startup: &Startup) -> anyhow::Result<Self> {
        let settings = Settings::from_env(&startup.env)?;
        let github = GitHub::with_tokens_only(
            &settings.github_api_url,
            RetryPolicy {
                deadline: Duration::from_secs(60),
                ..RetryPolicy::default()
            },
        )?;
        let broker = startup.peer(Service::SecretBroker, config::BROKER_ADDR)?;
        let vault = startup.peer(Service::Vault, config::VAULT_ADDR)?;
        let (db, ledger) = startup.open_database(db::migrations).await?;
        Ok(Self {
            db,
            ledger,
            github,
            settings,
            broker,
            vault,
        })
    }

    /// A client on the one (lazily connecting) channel to the broker.
    pub(crate) fn broker(&self) -> SecretBrokerServiceClient<PeerChannel> {
        SecretBrokerServiceClient::new(self.broker.clone())
    }

    /// A client on the one (lazily connecting) channel to the vault.
    pub(crate) fn vault(&self) -> VaultServiceClient<PeerChannel> {
        VaultServiceClient::new(self.vault.clone())
    }
}

/// What the scaffolder records in its audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// A step of a project's creation (recorded, each step done, a failure).
    CreateProject,
}

impl Action {
    /// The name in audit records: the full gRPC method path.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::CreateProject => "/orchestrator.scaffolder.v1.ScaffolderService/CreateProject",
        }
    }

    /// An entry for this action on `project` by `caller`.
    pub(crate) fn on(self, caller: &str, project: &ProjectId) -> Entry {
        Entry::new(caller, self.as_str(), format!("projects/{project}"))
    }
}
