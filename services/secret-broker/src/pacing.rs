//! Pacing of writes per GitHub installation, across replicas.
//!
//! GitHub asks for content-creating requests one at a time, at least a second apart (here:
//! from the end of one to the start of the next). On
//! PostgreSQL the writer holds the installation's `installation_pacing` row lock while it waits
//! out the interval and writes, so every replica queues behind the same lock; SQLite is
//! single-node, so an in-process lock is enough there.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator_store::{Database, Dialect, StoreError, now_us};

use crate::db;

#[derive(Debug)]
pub(crate) struct Pacer {
    db: Database,
    interval: Duration,
    /// Per installation: serializes this process's writers, and remembers the last write time
    /// (used as the record on SQLite).
    local: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<i64>>>>,
}

impl Pacer {
    pub(crate) fn new(db: Database, interval: Duration) -> Self {
        Self {
            db,
            interval,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `write` as the only writer to `installation`, no sooner than the interval after the
    /// previous write to it from any replica.
    ///
    /// Architecture Invariant: writes to one installation are paced, across replicas.
    pub(crate) async fn paced<T, F, Fut>(
        &self,
        installation: i64,
        write: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let slot = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(installation)
            .or_default()
            .clone();
        let mut last_local = slot.lock().await;
        match self.db.dialect() {
            Dialect::Sqlite => {
                wait_until(*last_local, self.interval).await;
                let out = write().await;
                *last_local = now_us();
                Ok(out)
            }
            Dialect::Postgres => {
                let mut tx = self.db.pool().begin().await?;
                let last = db::lock_pacing(&mut tx, installation).await?;
                // This process's own last write counts too (its record may have failed).
                wait_until(last.max(*last_local), self.interval).await;
                let out = write().await;
                // Spacing runs from the end of one write to the start of the next. GitHub
                // measures arrivals, and a write arrives somewhere before it ends (late, on a
                // loaded machine): only this spacing holds whatever the latency.
                let ended = now_us();
                *last_local = ended;
                // The write happened: its result stands even if recording its time fails (this
                // process still waits from its own clock; the row lock ends with the transaction).
                let recorded = match db::record_pacing(&mut tx, installation, ended).await {
                    Ok(()) => tx.commit().await.map_err(StoreError::from),
                    Err(e) => Err(e),
                };
                if let Err(e) = recorded {
                    tracing::warn!(installation, error = %e, "could not record a write's time for pacing");
                }
                Ok(out)
            }
        }
    }
}

/// Added to every interval: two requests sent exactly one interval apart can arrive a little
/// closer than that (scheduling and network jitter).
const MARGIN: Duration = Duration::from_millis(10);

async fn wait_until(last_us: i64, interval: Duration) {
    let due = last_us.saturating_add((interval + MARGIN).as_micros() as i64);
    let now = now_us();
    if due > now {
        tokio::time::sleep(Duration::from_micros((due - now) as u64)).await;
    }
}
