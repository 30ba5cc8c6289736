//! The broker's shared state, which every RPC works with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use orchestrator_audit::{Entry, Ledger};
use orchestrator_github::GitHub;
use orchestrator_store::Database;
use sqlx::AnyConnection;
use tonic::Status;

use crate::pacing::Pacer;

#[derive(Debug)]
pub(crate) struct Broker {
    pub db: Database,
    pub ledger: Ledger,
    pub github: Arc<GitHub>,
    pub pacer: Arc<Pacer>,
    /// The organization where the scaffolder creates repositories (`GITHUB_ORG`).
    pub org: Option<String>,
}

/// A state change run by the ledger: its result and the audit records that describe it.
pub(crate) type Work<'c, T> =
    Pin<Box<dyn Future<Output = Result<(T, Vec<Entry>), Status>> + Send + 'c>>;

impl Broker {
    /// Runs `work` on a connection inside the ledger's transaction.
    ///
    /// Architecture Invariant: every state change is audited in the same transaction, fail
    /// closed: the change commits with its records, or neither does.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> Work<'c, T> + Send + 'static,
    {
        self.ledger.write(work).await
    }
}
