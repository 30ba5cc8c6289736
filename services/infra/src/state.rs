//! What the handlers and the background operations share.

use orchestrator_audit::Ledger;
use orchestrator_mesh::client::PeerChannel;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_store::Database;
use tonic::Status;

use crate::config::{Peers, Settings};
use crate::db;
use crate::model::{Operation, Server};
use crate::watch::Watchers;

/// Infra's state: its database and audit ledger, its settings and its peers.
#[derive(Debug)]
pub(crate) struct Infra {
    pub(crate) db: Database,
    pub(crate) ledger: Ledger<Status>,
    /// This service's SPIFFE ID: the caller in the audit records of background work.
    pub(crate) self_id: String,
    pub(crate) settings: Settings,
    pub(crate) peers: Peers,
    /// This replica's leases on unfinished operations.
    pub(crate) leases: crate::operation::Leases,
    /// The open WatchOperation streams, bounded per caller.
    pub(crate) watchers: Watchers,
    /// GitHub, without any credential of infra's own: only to revoke the clone tokens the
    /// broker minted for it, with those tokens.
    pub(crate) github: orchestrator_github::GitHub,
}

impl Infra {
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
    pub(crate) fn broker(&self) -> SecretBrokerServiceClient<PeerChannel> {
        SecretBrokerServiceClient::new(self.peers.broker.clone())
    }
}
