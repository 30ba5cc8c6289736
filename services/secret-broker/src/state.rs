//! The broker's shared state, which every RPC works with.

use std::sync::Arc;

use orchestrator_audit::Ledger;
use orchestrator_github::GitHub;
use orchestrator_store::Database;
use tonic::Status;

use crate::minted::MintedTokens;
use crate::pacing::Pacer;

#[derive(Debug)]
pub(crate) struct Broker {
    pub db: Database,
    pub ledger: Ledger<Status>,
    pub github: Arc<GitHub>,
    pub pacer: Arc<Pacer>,
    /// The organization where the scaffolder creates repositories (`GITHUB_ORG`).
    pub org: Option<String>,
    /// The tokens minted per request id, so a retried mint revokes the earlier token.
    pub minted: Arc<MintedTokens>,
}
