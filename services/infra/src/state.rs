//! What the handlers and the background operations share.

use std::future::Future;
use std::pin::Pin;

use orchestrator_audit::{Entry, Ledger};
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_store::Database;
use sqlx::AnyConnection;
use tonic::Status;
use tonic::transport::Channel;

use crate::config::{Peers, Settings};
use crate::db;
use crate::model::{Operation, Server};

/// A change run in the ledger's transaction: its result and the audit entries describing it.
pub(crate) type Change<'c, T> =
    Pin<Box<dyn Future<Output = Result<(T, Vec<Entry>), Status>> + Send + 'c>>;

/// Infra's state: its database and audit ledger, its settings and its peers.
#[derive(Debug)]
pub(crate) struct Infra {
    pub(crate) db: Database,
    pub(crate) ledger: Ledger,
    /// This service's SPIFFE ID: the caller in the audit records of background work.
    pub(crate) self_id: String,
    pub(crate) settings: Settings,
    pub(crate) peers: Peers,
}

impl Infra {
    /// Runs `change` in the ledger's transaction and commits it with its audit entries.
    // Architecture Invariant: every state change is audited in the same transaction, fail
    // closed (no record, no change).
    pub(crate) async fn write<T, F>(&self, change: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> Change<'c, T> + Send + 'static,
    {
        self.ledger.write(change).await
    }

    /// A server by id; NOT_FOUND when there is none.
    pub(crate) async fn server(&self, id: &str) -> Result<Server, Status> {
        db::server(&self.db, id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no server `{id}`")))
    }

    /// An operation by id; NOT_FOUND when there is none.
    pub(crate) async fn operation(&self, id: &str) -> Result<Operation, Status> {
        db::operation(&self.db, id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no operation `{id}`")))
    }

    /// A client on the one (lazily connecting) channel to the broker.
    pub(crate) fn broker(&self) -> SecretBrokerServiceClient<Channel> {
        SecretBrokerServiceClient::new(self.peers.broker.clone())
    }
}
