//! Writes in transactions of their own, beside the writer's batches: the work runs first, and
//! the audit head is taken last, only to append the work's records and commit. Two such writes
//! overlap their work on two database backends; only their appends and commits take turns.
//!
//! The order of locks is what makes this safe. A concurrent write takes its rows, then the
//! head, then (for work that must follow the head) the rows a head-first work also takes after
//! the head, such as the primary data key. The writer's works take the head first. A cycle is
//! possible only between a concurrent write and a head-first transaction that changes the same
//! rows: the concurrent write's lock wait then times out ([`LOCK_TIMEOUT`]), so the writer's
//! batch (which may carry many callers' requests) is never the one aborted, and the write runs
//! again head first, as the writer's works do, without a timeout: no cycle can include it then,
//! and it lands.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use orchestrator_store::Dialect;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::chain::Entry;
use crate::ledger::{AnyQuery, AuditError, Head, Ledger, Shared};
use crate::retry::{Retryable, WRITE_ATTEMPTS, pause};

/// How long a concurrent write waits for any lock before it gives up and runs again. Far above
/// a batch's time holding the head (milliseconds); a wait this long is a cycle with a writer's
/// work (see the module's documentation).
pub const LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// Records bound by [`Concurrent::bind_append`]: where they move the head.
#[must_use = "once the statement appended, `Concurrent::appended` must be told, or the commit appends the records again"]
pub struct Appending(Head);

impl std::fmt::Debug for Appending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Appending")
            .field(&self.0.0)
            .finish_non_exhaustive()
    }
}

/// A concurrent write's transaction, as its work sees it.
pub struct Concurrent {
    tx: Transaction<'static, Any>,
    shared: Arc<Shared>,
    head: Option<Head>,
}

impl std::fmt::Debug for Concurrent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concurrent")
            .field("head_locked", &self.head.is_some())
            .finish_non_exhaustive()
    }
}

impl Concurrent {
    /// Begins a transaction: rows first, with the lock timeout; or `head_first`, without one.
    async fn begin(shared: Arc<Shared>, head_first: bool) -> Result<Self, AuditError> {
        let dialect = shared.db.dialect();
        let begin = dialect.begin_write();
        // SQLite's write lock is the whole database, taken by its BEGIN: no cycle is possible
        // there, so only PostgreSQL's rows-first attempt gets the timeout (same round trip).
        let begin = if dialect == Dialect::Postgres && !head_first {
            format!(
                "{begin}; SET LOCAL lock_timeout = '{}ms'",
                LOCK_TIMEOUT.as_millis()
            )
        } else {
            begin.to_owned()
        };
        let tx = shared
            .db
            .pool()
            .begin_with(sqlx::AssertSqlSafe(begin))
            .await?;
        let mut this = Self {
            tx,
            shared,
            head: None,
        };
        if head_first {
            this.lock_head().await?;
        }
        Ok(this)
    }

    /// The transaction's connection, for the work's statements.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Takes the audit head now, if this write has not yet. Until the commit, other writes wait
    /// for it; work that must not interleave with a writer's work done under the head (counting
    /// on the data key a rotation replaces, say) comes after this call.
    pub async fn lock_head(&mut self) -> Result<(), AuditError> {
        if self.head.is_none() {
            self.head = Some(self.shared.lock_head(&mut self.tx).await?);
        }
        Ok(())
    }

    /// Takes the audit head as a statement of the work's own locked and read it, with
    /// [`lock_head_cte!`](crate::lock_head_cte) (PostgreSQL only): `row` holds its `head_seq`
    /// and `head_mac`. For a work whose first step under the head is a statement of its own:
    /// one round trip instead of two.
    pub fn head_locked(&mut self, row: &AnyRow) -> Result<(), AuditError> {
        let head = (row.try_get("head_seq")?, row.try_get("head_mac")?);
        self.head = Some(self.shared.check_head(head)?);
        Ok(())
    }

    /// PostgreSQL, for a work whose statement appends its records itself (it begins with
    /// [`append_if_head_cte!`](crate::append_if_head_cte)): `query` with `entries` chained
    /// after the head this process last committed and bound as `$1`-`$6`. `None` on SQLite,
    /// once this write holds the head, or when no committed head is known: the work takes the
    /// head as usual. The statement appends nothing when another write moved the head first;
    /// if it did append, [`Concurrent::appended`] says so.
    pub fn bind_append<'q>(
        &self,
        query: AnyQuery<'q>,
        entries: &[Entry],
    ) -> Result<Option<(AnyQuery<'q>, Appending)>, AuditError> {
        if self.head.is_some() {
            return Ok(None);
        }
        let bound = self.shared.bind_append_if_head(query, entries)?;
        Ok(bound.map(|(query, head)| (query, Appending(head))))
    }

    /// The statement of [`Concurrent::bind_append`] moved the head: this write holds it, after
    /// the records it appended, and the commit appends only what comes after them.
    pub fn appended(&mut self, appending: Appending) {
        self.head = Some(appending.0);
    }

    /// Appends `entries` after the head (taking it if the work did not) and commits.
    async fn commit(mut self, entries: Vec<Entry>) -> Result<(), AuditError> {
        if entries.is_empty() && self.head.is_none() {
            self.tx.commit().await?;
            return Ok(());
        }
        let head = match self.head.take() {
            Some(head) => head,
            None => self.shared.lock_head(&mut self.tx).await?,
        };
        let new_head = self.shared.append(&mut self.tx, head, entries).await?;
        self.tx.commit().await?;
        self.shared.committed_head(new_head);
        Ok(())
    }
}

impl<E: From<AuditError> + Retryable> Ledger<E> {
    /// Runs `work` in a transaction of its own, beside the writer's batches, and commits it
    /// with its audit records, which are appended after the work, under the head (see the
    /// module's documentation for the order of locks this relies on). A work that loses to a
    /// concurrent transaction (a deadlock, a lock wait past [`LOCK_TIMEOUT`]) runs again, head
    /// first, up to [`WRITE_ATTEMPTS`] times in all; its own other errors are returned, nothing
    /// committed.
    // Architecture Invariant: every state change is audited in the same transaction, fail
    // closed (as for `Ledger::write`).
    pub async fn write_concurrently<T, F>(&self, mut work: F) -> Result<T, E>
    where
        F: for<'c> FnMut(&'c mut Concurrent) -> BoxFuture<'c, Result<(T, Vec<Entry>), E>>,
    {
        let mut attempt = 1;
        loop {
            let outcome: Result<T, E> = async {
                let mut tx = Concurrent::begin(self.shared.clone(), attempt > 1).await?;
                let (value, entries) = work(&mut tx).await?;
                tx.commit(entries).await?;
                Ok(value)
            }
            .await;
            match outcome {
                Err(e) if e.is_retryable() && attempt < WRITE_ATTEMPTS => {
                    pause(attempt).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}
