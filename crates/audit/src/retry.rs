//! Writes that lost to a concurrent transaction (a deadlock, a serialization failure) run
//! again: nothing was wrong with the request, so its caller should not see the conflict.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::AnyConnection;

use crate::chain::Entry;
use crate::ledger::{AuditError, Ledger};

/// How often [`Ledger::write_retrying`] runs a work that lost to a concurrent transaction.
pub const WRITE_ATTEMPTS: u32 = 3;

/// An error that says the work lost to a concurrent transaction (a deadlock, a serialization
/// failure), so running it again may succeed: nothing was wrong with the request.
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}

impl Retryable for tonic::Status {
    fn is_retryable(&self) -> bool {
        orchestrator_store::is_concurrent_change(self)
    }
}

impl Retryable for AuditError {
    fn is_retryable(&self) -> bool {
        matches!(self, AuditError::Store(e) if e.is_retryable())
    }
}

impl<E: From<AuditError> + Retryable + Send + 'static> Ledger<E> {
    /// [`Ledger::write`] for work that can run again: when it (or its batch) loses to a
    /// concurrent transaction it is run again, up to [`WRITE_ATTEMPTS`] times in all, after a
    /// short random pause; any other error, or the last conflict, is returned.
    pub async fn write_retrying<T, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, Result<(T, Vec<Entry>), E>>
            + Send
            + Sync
            + 'static,
    {
        let work = Arc::new(work);
        let mut attempt = 1;
        loop {
            let this = work.clone();
            match self.write(move |conn| this(conn)).await {
                Err(e) if e.is_retryable() && attempt < WRITE_ATTEMPTS => {
                    pause(attempt).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

/// A short random pause before attempt `attempt + 1`: apart, so the two losers of a deadlock
/// do not meet again.
pub(crate) async fn pause(attempt: u32) {
    let pause = 5 + u64::from(rand_byte()) % (20 * u64::from(attempt));
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
}

/// A random byte, for jitter.
fn rand_byte() -> u8 {
    let mut byte = [0u8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte)
        .map(|()| byte[0])
        .unwrap_or(7)
}
