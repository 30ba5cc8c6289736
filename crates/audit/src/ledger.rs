//! The group-commit writer: state changes and their audit records, many per transaction.

use std::any::Any as StdAny;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use orchestrator_store::{Database, Dialect, StoreError, now_us};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::chain::{AuditKey, Entry, Record};

/// Work run inside a batch transaction. It returns its result and the audit entries that
/// describe what it changed; an `Err` rolls back just this work (a savepoint) and is returned
/// to its caller without an audit record.
pub type Work = Box<
    dyn for<'c> FnOnce(
            &'c mut AnyConnection,
        )
            -> BoxFuture<'c, Result<(Box<dyn StdAny + Send>, Vec<Entry>), Status>>
        + Send,
>;

enum Job {
    /// A record alone (a read of a secret): durable before the caller proceeds.
    Record(Entry, oneshot::Sender<Result<(), Status>>),
    Work(
        Work,
        oneshot::Sender<Result<Box<dyn StdAny + Send>, Status>>,
    ),
}

/// Most requests one transaction carries; more wait for the next one.
const MAX_BATCH: usize = 256;
/// Records per INSERT statement (10 parameters each, far below either database's limit).
const INSERT_CHUNK: usize = 100;

/// Appends audit records, and runs the changes they describe, in shared transactions.
#[derive(Clone)]
pub struct Ledger {
    jobs: mpsc::Sender<Job>,
    key: Arc<AuditKey>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Starts the writer task for `db` with the service's `key`.
    pub fn start(db: Database, key: AuditKey) -> Self {
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let key = Arc::new(key);
        let writer = Writer {
            db,
            key: key.clone(),
            high_water: AtomicI64::new(0),
        };
        tokio::spawn(writer.run(rx));
        Self { jobs, key }
    }

    /// Records `entry` durably; returns once it is committed. For reads of secrets: the value is
    /// released to the caller only after this returns `Ok`.
    pub async fn record(&self, entry: Entry) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Record(entry, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs `work` in a batch transaction and commits it with its audit records.
    pub async fn write<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<(T, Vec<Entry>), Status>>
            + Send
            + 'static,
    {
        let work: Work = Box::new(move |conn| {
            Box::pin(async move {
                let (value, entries) = work(conn).await?;
                Ok((Box::new(value) as Box<dyn StdAny + Send>, entries))
            })
        });
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Work(work, tx))
            .await
            .map_err(|_| stopped())?;
        let value = rx.await.map_err(|_| stopped())??;
        value
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| Status::internal("audit ledger returned the wrong type"))
    }
}

impl Ledger {
    /// The digest of the audit record selected with [`attested_columns!`] in `row` (aliases
    /// `a` for the record, `p` for its predecessor), after checking its MAC; `None` when the
    /// row has no record (`a_seq` is NULL).
    pub fn attested(&self, row: &AnyRow) -> Result<Option<Vec<u8>>, Status> {
        let get = |e: sqlx::Error| Status::from(StoreError::from(e));
        let Some(seq) = row.try_get::<Option<i64>, _>("a_seq").map_err(get)? else {
            return Ok(None);
        };
        let record = Record {
            seq,
            at_us: row.try_get("a_at_us").map_err(get)?,
            entry: Entry {
                caller: row.try_get("a_caller").map_err(get)?,
                method: row.try_get("a_method").map_err(get)?,
                target: row.try_get("a_target").map_err(get)?,
                outcome: row.try_get("a_outcome").map_err(get)?,
                request_id: row.try_get("a_request_id").map_err(get)?,
                detail: row.try_get("a_detail").map_err(get)?,
                digest: row.try_get("a_digest").map_err(get)?,
            },
        };
        let mac: Vec<u8> = row.try_get("a_mac").map_err(get)?;
        let prev: Option<Vec<u8>> = row.try_get("a_prev_mac").map_err(get)?;
        let prev = match (record.seq, prev) {
            (1, _) => crate::chain::GENESIS.to_vec(),
            (_, Some(prev)) => prev,
            (seq, None) => {
                return Err(Status::data_loss(format!(
                    "audit record {} is missing: the audit log was tampered with",
                    seq - 1
                )));
            }
        };
        if !self.key.verify(&prev, &record, &mac) {
            return Err(Status::data_loss(format!(
                "audit record {} fails its MAC: the audit log was tampered with",
                record.seq
            )));
        }
        Ok(record.entry.digest)
    }
}

fn stopped() -> Status {
    Status::unavailable("the audit writer has stopped")
}

struct Writer {
    db: Database,
    key: Arc<AuditKey>,
    /// The highest sequence number this process has committed or seen: the head must never be
    /// below it.
    high_water: AtomicI64,
}

enum Outcome {
    Recorded(oneshot::Sender<Result<(), Status>>),
    Worked(
        oneshot::Sender<Result<Box<dyn StdAny + Send>, Status>>,
        Result<Box<dyn StdAny + Send>, Status>,
    ),
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let size = batch.len();
            // A panic in one request's work must not stop the writer for good: the batch's
            // transaction is dropped (rolled back), its callers see their replies vanish
            // (UNAVAILABLE), and the next batch goes on.
            let committed = std::panic::AssertUnwindSafe(self.commit(batch))
                .catch_unwind()
                .await;
            let Ok(committed) = committed else {
                tracing::error!(
                    batch = size,
                    "audit batch panicked; its requests fail, the writer goes on"
                );
                continue;
            };
            match committed {
                Ok(outcomes) => {
                    for outcome in outcomes {
                        match outcome {
                            Outcome::Recorded(tx) => drop(tx.send(Ok(()))),
                            Outcome::Worked(tx, result) => drop(tx.send(result)),
                        }
                    }
                }
                Err((status, replies)) => {
                    tracing::error!(batch = size, error = %status.message(), "audit batch failed; every request in it fails");
                    for reply in replies {
                        match reply {
                            Outcome::Recorded(tx) => drop(tx.send(Err(status.clone()))),
                            Outcome::Worked(tx, _) => drop(tx.send(Err(status.clone()))),
                        }
                    }
                }
            }
        }
    }

    /// One transaction for the whole batch. On failure every request gets the error (fail
    /// closed), with the reply channels handed back so none is left hanging.
    async fn commit(&self, batch: Vec<Job>) -> Result<Vec<Outcome>, (Status, Vec<Outcome>)> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        let mut tx = match self.db.begin_write().await {
            Ok(tx) => tx,
            Err(e) => return Err((e.into(), batch.into_iter().map(pending).collect())),
        };
        let head = match self.lock_head(&mut tx).await {
            Ok(head) => head,
            Err(status) => return Err((status, batch.into_iter().map(pending).collect())),
        };
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            match job {
                Job::Record(entry, reply) => {
                    entries.push(entry);
                    outcomes.push(Outcome::Recorded(reply));
                }
                Job::Work(work, reply) => match run_isolated(&mut tx, work).await {
                    Ok(Ok((value, new_entries))) => {
                        entries.extend(new_entries);
                        outcomes.push(Outcome::Worked(reply, Ok(value)));
                    }
                    Ok(Err(status)) => outcomes.push(Outcome::Worked(reply, Err(status))),
                    Err(e) => {
                        outcomes.push(Outcome::Worked(reply, Err(Status::unavailable(""))));
                        outcomes.extend(jobs.map(pending));
                        return Err((e.into(), outcomes));
                    }
                },
            }
        }
        match self.append(&mut tx, head, entries).await {
            Ok(new_head) => match tx.commit().await {
                Ok(()) => {
                    self.high_water.fetch_max(new_head, Ordering::SeqCst);
                    Ok(outcomes)
                }
                Err(e) => Err((StoreError::from(e).into(), outcomes)),
            },
            Err(status) => Err((status, outcomes)),
        }
    }

    async fn lock_head(&self, conn: &mut AnyConnection) -> Result<(i64, Vec<u8>), Status> {
        let sql = match self.db.dialect() {
            Dialect::Postgres => "SELECT seq, mac FROM audit_head WHERE id = 1 FOR UPDATE",
            Dialect::Sqlite => "SELECT seq, mac FROM audit_head WHERE id = 1",
        };
        let row = sqlx::query(sql)
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::from)?;
        let seq: i64 = row.try_get("seq").map_err(StoreError::from)?;
        let mac: Vec<u8> = row.try_get("mac").map_err(StoreError::from)?;
        let seen = self.high_water.load(Ordering::SeqCst);
        if seq < seen {
            tracing::error!(
                head = seq,
                seen,
                "the audit log moved backwards: the database was rolled back"
            );
            return Err(Status::data_loss(format!(
                "the audit log moved backwards (head {seq}, this process wrote up to {seen}): the database was rolled back; refusing to continue"
            )));
        }
        self.high_water.store(seq, Ordering::SeqCst);
        Ok((seq, mac))
    }

    async fn append(
        &self,
        conn: &mut AnyConnection,
        head: (i64, Vec<u8>),
        entries: Vec<Entry>,
    ) -> Result<i64, Status> {
        let (mut seq, mut prev) = head;
        if entries.is_empty() {
            return Ok(seq);
        }
        let at_us = now_us();
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            seq += 1;
            let record = Record { seq, at_us, entry };
            let mac = self.key.mac(&prev, &record);
            prev = mac.to_vec();
            records.push((record, mac));
        }
        // One multi-row INSERT per chunk: a round trip per batch, not per record.
        for chunk in records.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO audit_log (seq, at_us, caller, method, target, outcome, request_id, detail, digest, mac) VALUES ",
            );
            for i in 0..chunk.len() {
                let p = i * 10;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7,
                    p + 8,
                    p + 9,
                    p + 10
                ));
            }
            // Only placeholders are generated; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (record, mac) in chunk {
                query = query
                    .bind(record.seq)
                    .bind(record.at_us)
                    .bind(record.entry.caller.clone())
                    .bind(record.entry.method.clone())
                    .bind(record.entry.target.clone())
                    .bind(record.entry.outcome.clone())
                    .bind(record.entry.request_id.clone())
                    .bind(record.entry.detail.clone())
                    .bind(record.entry.digest.clone())
                    .bind(mac.to_vec());
            }
            query.execute(&mut *conn).await.map_err(StoreError::from)?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1")
            .bind(seq)
            .bind(&prev[..])
            .execute(&mut *conn)
            .await
            .map_err(StoreError::from)?;
        Ok(seq)
    }
}

/// Runs one work item behind a savepoint. The outer `Err` is a database failure that poisons the
/// transaction; the inner one is the work's own refusal, already rolled back.
async fn run_isolated(
    conn: &mut AnyConnection,
    work: Work,
) -> Result<Result<(Box<dyn StdAny + Send>, Vec<Entry>), Status>, StoreError> {
    sqlx::query("SAVEPOINT work").execute(&mut *conn).await?;
    let result = work(conn).await;
    if result.is_err() {
        sqlx::query("ROLLBACK TO SAVEPOINT work")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("RELEASE SAVEPOINT work")
        .execute(&mut *conn)
        .await?;
    Ok(result)
}

fn pending(job: Job) -> Outcome {
    match job {
        Job::Record(_, tx) => Outcome::Recorded(tx),
        Job::Work(_, tx) => Outcome::Worked(tx, Err(Status::unavailable(""))),
    }
}
