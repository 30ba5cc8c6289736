//! What every part of the vault shares: the database, the audit ledger, the data keys, the
//! limits, and the handle through which the rewrap is woken and reports its progress.

use std::sync::{Arc, Mutex};

use orchestrator_audit::Ledger;
use orchestrator_store::Database;
use tokio::sync::Notify;
use tonic::Status;

use crate::config::Limits;
use crate::keys::DataKeys;
use crate::read::Lookups;
use crate::write::Puts;

#[derive(Debug, Clone)]
pub(crate) struct Vault {
    pub(crate) db: Database,
    pub(crate) ledger: Ledger<Status>,
    /// Reads' lookups, batched.
    pub(crate) lookups: Lookups,
    /// Puts, batched.
    pub(crate) puts: Puts,
    pub(crate) keys: Arc<DataKeys>,
    pub(crate) limits: Limits,
    /// This service's own SPIFFE ID, the caller of its background work in audit records.
    pub(crate) self_id: String,
    pub(crate) rewrap: Arc<RewrapHandle>,
}

/// Progress of the current (or last) rewrap run, for GetKeyStatus.
#[derive(Debug, Default, Clone)]
pub(crate) struct Progress {
    pub(crate) running: bool,
    pub(crate) started: Option<i64>,
    pub(crate) updated: Option<i64>,
    pub(crate) ended: Option<i64>,
    pub(crate) rows_per_second: f64,
}

/// Wakes the rewrap loop (after a rotation) and holds its progress.
#[derive(Debug, Default)]
pub(crate) struct RewrapHandle {
    wake: Notify,
    progress: Mutex<Progress>,
}

impl RewrapHandle {
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Returns when [`RewrapHandle::wake`] was called (now or since the last return).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    pub(crate) fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(|p| p.into_inner()));
    }
}
