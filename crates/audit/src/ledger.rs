//! The group-commit writer: state changes and their audit records, many per transaction.

use std::any::Any as StdAny;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use orchestrator_store::{Database, Dialect, HeldConnection, PackedBytes, StoreError, now_us};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::chain::{AuditKey, Entry, GENESIS, Record};

/// A head of the chain: the sequence number of its newest record and that record's MAC.
pub(crate) type Head = (i64, Vec<u8>);

/// Why the ledger could not record (and so could not let the change or the read happen: the
/// log fails closed). Callers map it to their own errors; [`tonic::Status`] has a `From`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The batch's transaction failed in the database (unreachable, a conflict, a bug).
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The writer task is gone (the process is stopping) or dropped this request.
    #[error("the audit writer has stopped")]
    Stopped,
    /// The chain is not what this process wrote or what the key proves: the head moved
    /// backwards, or a record is missing or fails its MAC.
    #[error("{0}")]
    Tampered(String),
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        AuditError::Store(Arc::new(e))
    }
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<AuditError> for tonic::Status {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Store(e) => tonic::Status::from(&*e),
            AuditError::Stopped => tonic::Status::unavailable("the audit writer has stopped"),
            AuditError::Tampered(message) => tonic::Status::data_loss(message),
        }
    }
}

/// A work item's own error, boxed while it crosses the writer task.
type WorkError = Box<dyn StdAny + Send>;

/// Work run inside a batch transaction. It returns its result and the audit entries that
/// describe what it changed; an `Err` rolls back just this work (a savepoint) and is returned
/// to its caller without an audit record.
pub type Work = Box<
    dyn for<'c> FnOnce(
            &'c mut AnyConnection,
        )
            -> BoxFuture<'c, Result<(Box<dyn StdAny + Send>, Vec<Entry>), WorkError>>
        + Send,
>;

/// What a work item's caller gets back: its value, its own error, or the ledger's.
enum Failure {
    Work(WorkError),
    Audit(AuditError),
}

type WorkReply = oneshot::Sender<Result<Box<dyn StdAny + Send>, Failure>>;

enum Job {
    /// A record alone (a read of a secret): durable before the caller proceeds.
    Record(Entry, oneshot::Sender<Result<(), AuditError>>),
    Work(Work, WorkReply),
}

/// Most requests one transaction carries; more wait for the next one.
const MAX_BATCH: usize = 256;
/// Records per INSERT statement on SQLite (10 parameters each, far below its limit).
/// PostgreSQL takes a whole batch in one statement (one JSON parameter).
const INSERT_CHUNK: usize = 100;

/// Appends audit records, and runs the changes they describe, in shared transactions. `E` is
/// the error type of the service's work (its gRPC status, say): [`Ledger::write`] passes it
/// through, and the ledger's own failures become an `E` by `From<AuditError>`.
pub struct Ledger<E> {
    jobs: mpsc::Sender<Job>,
    pub(crate) shared: Arc<Shared>,
    error: PhantomData<fn() -> E>,
}

impl<E> Clone for Ledger<E> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
            shared: self.shared.clone(),
            error: PhantomData,
        }
    }
}

impl<E> std::fmt::Debug for Ledger<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl<E: From<AuditError> + Send + 'static> Ledger<E> {
    /// Starts the writer task for `db` with the service's `key`.
    pub fn start(db: Database, key: AuditKey) -> Self {
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let shared = Arc::new(Shared {
            db,
            key,
            high_water: AtomicI64::new(0),
            latest: Mutex::new((0, GENESIS.to_vec())),
            committed: Mutex::new(None),
        });
        let writer = Writer {
            shared: shared.clone(),
        };
        tokio::spawn(writer.run(rx));
        Self {
            jobs,
            shared,
            error: PhantomData,
        }
    }

    /// Records `entry` durably; returns once it is committed. For reads of secrets: the value is
    /// released to the caller only after this returns `Ok`.
    pub async fn record(&self, entry: Entry) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Record(entry, tx))
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Runs `work` in a batch transaction and commits it with its audit records. The work's
    /// own error passes through unchanged; the ledger's failures become an `E` by `From`.
    // Architecture Invariant: every state change is audited in the same transaction, fail
    // closed. Services change their tables only inside this (or, for reads of secrets, release
    // a value only after `record` returned).
    pub async fn write<T, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<(T, Vec<Entry>), E>>
            + Send
            + 'static,
    {
        let work: Work = Box::new(move |conn| {
            Box::pin(async move {
                let (value, entries) = work(conn).await.map_err(|e| Box::new(e) as WorkError)?;
                Ok((Box::new(value) as Box<dyn StdAny + Send>, entries))
            })
        });
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Work(work, tx))
            .await
            .map_err(|_| AuditError::Stopped)?;
        match rx.await.map_err(|_| AuditError::Stopped)? {
            // Both downcasts name the types this function boxed above.
            Ok(value) => value
                .downcast::<T>()
                .map(|b| *b)
                .map_err(|_| AuditError::Stopped.into()),
            Err(Failure::Work(e)) => Err(e
                .downcast::<E>()
                .map(|b| *b)
                .unwrap_or_else(|_| AuditError::Stopped.into())),
            Err(Failure::Audit(e)) => Err(e.into()),
        }
    }
}

impl<E> Ledger<E> {
    /// The digest of the audit record selected with [`attested_columns!`] in `row` (aliases
    /// `a` for the record, `p` for its predecessor), after checking its MAC; `None` when the
    /// row has no record (`a_seq` is NULL).
    pub fn attested(&self, row: &AnyRow) -> Result<Option<Vec<u8>>, AuditError> {
        self.attested_as(row, "a")
    }

    /// [`Ledger::attested`] for a record selected with `attested_columns!(r, p)` under the
    /// aliases prefixed `{prefix}_` (`prefix` is `r`'s name).
    pub fn attested_as(&self, row: &AnyRow, prefix: &str) -> Result<Option<Vec<u8>>, AuditError> {
        let col = |name: &str| format!("{prefix}_{name}");
        let Some(seq) = row.try_get::<Option<i64>, _>(col("seq").as_str())? else {
            return Ok(None);
        };
        let record = Record {
            seq,
            at_us: row.try_get(col("at_us").as_str())?,
            entry: Entry {
                caller: row.try_get(col("caller").as_str())?,
                method: row.try_get(col("method").as_str())?,
                target: row.try_get(col("target").as_str())?,
                outcome: row.try_get(col("outcome").as_str())?,
                request_id: row.try_get(col("request_id").as_str())?,
                detail: row.try_get(col("detail").as_str())?,
                digest: row.try_get(col("digest").as_str())?,
            },
        };
        let mac: Vec<u8> = row.try_get(col("mac").as_str())?;
        let prev: Option<Vec<u8>> = row.try_get(col("prev_mac").as_str())?;
        let prev = match (record.seq, prev) {
            (1, _) => crate::chain::GENESIS.to_vec(),
            (_, Some(prev)) => prev,
            (seq, None) => {
                return Err(AuditError::Tampered(format!(
                    "audit record {} is missing: the audit log was tampered with",
                    seq - 1
                )));
            }
        };
        if !self.shared.key.verify(&prev, &record, &mac) {
            return Err(AuditError::Tampered(format!(
                "audit record {} fails its MAC: the audit log was tampered with",
                record.seq
            )));
        }
        Ok(record.entry.digest)
    }
}

/// What the writer and the concurrent writes ([`crate::Concurrent`]) share: the database, the
/// key, and what this process knows of the chain's head.
pub(crate) struct Shared {
    pub(crate) db: Database,
    pub(crate) key: AuditKey,
    /// The highest sequence number this process has committed or seen: the head must never be
    /// below it.
    high_water: AtomicI64,
    /// The newest head committed or seen, for checkpoints.
    pub(crate) latest: Mutex<Head>,
    /// The head this process last committed, while nothing says it moved since (cleared on
    /// the writer's failures). A batch of records alone appends from it in one statement that
    /// moves the head only if it is still exactly there (PostgreSQL), instead of locking it
    /// first.
    committed: Mutex<Option<Head>>,
}

struct Writer {
    shared: Arc<Shared>,
}

enum Outcome {
    Recorded(oneshot::Sender<Result<(), AuditError>>),
    Worked(WorkReply, Result<Box<dyn StdAny + Send>, Failure>),
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        // One connection for every batch, one after the other: taking it from the pool and
        // giving it back each time cost two round trips per batch (sqlx pings both ways).
        let mut conn = self.shared.db.hold();
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
            let committed = std::panic::AssertUnwindSafe(self.commit(&mut conn, batch))
                .catch_unwind()
                .await;
            let Ok(committed) = committed else {
                conn.discard();
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
                Err((error, replies)) => {
                    tracing::error!(batch = size, %error, "audit batch failed; every request in it fails");
                    for reply in replies {
                        match reply {
                            Outcome::Recorded(tx) => drop(tx.send(Err(error.clone()))),
                            Outcome::Worked(tx, _) => {
                                drop(tx.send(Err(Failure::Audit(error.clone()))))
                            }
                        }
                    }
                }
            }
        }
    }

    /// One transaction for the whole batch. On failure every request gets the error (fail
    /// closed), with the reply channels handed back so none is left hanging.
    async fn commit(
        &self,
        conn: &mut HeldConnection,
        batch: Vec<Job>,
    ) -> Result<Vec<Outcome>, (AuditError, Vec<Outcome>)> {
        let result = self.commit_batch(conn, batch).await;
        if result.is_err() {
            conn.discard();
            self.shared.forget_head();
        }
        result
    }

    /// Records alone (reads of secrets), on PostgreSQL, while this writer knows the head: one
    /// statement in its own implicit transaction appends the records chained from that head and
    /// moves the head, only if the head is still exactly there (`Ok(Some)`: committed, one
    /// round trip and one fsync). `Ok(None)`: the head moved (another replica) or is not
    /// known; nothing was written and the batch takes the locking path, which also checks the
    /// head against the high-water mark.
    async fn append_known_head(
        &self,
        conn: &mut HeldConnection,
        entries: &[Entry],
    ) -> Result<Option<Head>, AuditError> {
        let query = sqlx::query(APPEND_IF_HEAD);
        let Some((query, new_head)) = self.shared.bind_append_if_head(query, entries)? else {
            return Ok(None);
        };
        let appended = query.execute(conn.get().await?).await?.rows_affected();
        if appended == entries.len() as u64 {
            Ok(Some(new_head))
        } else {
            Ok(None)
        }
    }

    async fn commit_batch(
        &self,
        conn: &mut HeldConnection,
        batch: Vec<Job>,
    ) -> Result<Vec<Outcome>, (AuditError, Vec<Outcome>)> {
        if batch.iter().all(|job| matches!(job, Job::Record(..))) {
            let entries: Vec<Entry> = batch
                .iter()
                .filter_map(|job| match job {
                    Job::Record(entry, _) => Some(entry.clone()),
                    Job::Work(..) => None,
                })
                .collect();
            match self.append_known_head(conn, &entries).await {
                Ok(Some(new_head)) => {
                    self.shared.committed_head(new_head);
                    return Ok(batch.into_iter().map(pending).collect());
                }
                Ok(None) => {}
                Err(error) => return Err((error, batch.into_iter().map(pending).collect())),
            }
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        let mut tx = match conn.begin_write().await {
            Ok(tx) => tx,
            Err(e) => return Err((e.into(), batch.into_iter().map(pending).collect())),
        };
        let head = match self.shared.lock_head(&mut tx).await {
            Ok(head) => head,
            Err(error) => return Err((error, batch.into_iter().map(pending).collect())),
        };
        // A work alone in its batch runs without a savepoint (two round trips fewer): if it
        // fails, the whole transaction is its own to roll back.
        let alone = batch.len() == 1;
        let mut failed_alone = false;
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            match job {
                Job::Record(entry, reply) => {
                    entries.push(entry);
                    outcomes.push(Outcome::Recorded(reply));
                }
                Job::Work(work, reply) => {
                    let ran = if alone {
                        Ok(work(&mut tx).await)
                    } else {
                        run_isolated(&mut tx, work).await
                    };
                    match ran {
                        Ok(Ok((value, new_entries))) => {
                            entries.extend(new_entries);
                            outcomes.push(Outcome::Worked(reply, Ok(value)));
                        }
                        Ok(Err(error)) => {
                            failed_alone = alone;
                            outcomes.push(Outcome::Worked(reply, Err(Failure::Work(error))))
                        }
                        Err(e) => {
                            outcomes.push(Outcome::Worked(
                                reply,
                                Err(Failure::Audit(AuditError::Stopped)),
                            ));
                            outcomes.extend(jobs.map(pending));
                            return Err((e.into(), outcomes));
                        }
                    }
                }
            }
        }
        if failed_alone {
            // Nothing to record: its changes go with the transaction.
            return match tx.rollback().await {
                Ok(()) => Ok(outcomes),
                Err(e) => Err((e.into(), outcomes)),
            };
        }
        match self.shared.append(&mut tx, head, entries).await {
            Ok(new_head) => match tx.commit().await {
                Ok(()) => {
                    self.shared.committed_head(new_head);
                    Ok(outcomes)
                }
                Err(e) => Err((e.into(), outcomes)),
            },
            Err(error) => Err((error, outcomes)),
        }
    }
}

impl Shared {
    /// The batch's records chained from `head`, and the new head.
    fn chain(&self, head: &Head, entries: Vec<Entry>) -> (Vec<Chained>, Head) {
        let (mut seq, mut prev) = head.clone();
        let at_us = now_us();
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            seq += 1;
            let record = Record { seq, at_us, entry };
            let mac = self.key.mac(&prev, &record).to_vec();
            prev.clone_from(&mac);
            records.push((record, mac));
        }
        (records, (seq, prev))
    }

    /// Notes a committed head: the high-water mark, the newest for checkpoints, and the head
    /// the next batch of records appends from.
    pub(crate) fn committed_head(&self, new_head: Head) {
        self.high_water.fetch_max(new_head.0, Ordering::SeqCst);
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if new_head.0 > latest.0 {
            *latest = new_head.clone();
        }
        drop(latest);
        // Only forward: a concurrent write may have committed a newer head meanwhile.
        let mut committed = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if committed.as_ref().is_none_or(|(seq, _)| new_head.0 > *seq) {
            *committed = Some(new_head);
        }
    }

    /// Forgets the committed head after a failure: the next batch of records locks the head.
    fn forget_head(&self) {
        *self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// PostgreSQL: `query`, whose text begins with [`head_if_cte!`] and then
    /// [`insert_records!`], with `entries` chained after the head this process last committed
    /// and bound as `$1`-`$6`, and the head they move it to. The statement moves the head and
    /// appends only if the head is still exactly there. `None` on SQLite, for no entries, when
    /// no committed head is known, or when a higher one was seen since.
    pub(crate) fn bind_append_if_head<'q>(
        &self,
        query: AnyQuery<'q>,
        entries: &[Entry],
    ) -> Result<Option<(AnyQuery<'q>, Head)>, AuditError> {
        if self.db.dialect() != Dialect::Postgres || entries.is_empty() {
            return Ok(None);
        }
        let Some(head) = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return Ok(None);
        };
        // A head seen since (a concurrent write that locked it, then rolled back) is higher:
        // should the database now hold the one this process committed, records were lost, and
        // only the locking path's check says so.
        if head.0 < self.high_water.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let (records, new_head) = self.chain(&head, entries.to_vec());
        let (json, bytes) = records_json(&records)?;
        let query = query
            .bind(new_head.0)
            .bind(new_head.1.clone())
            .bind(json)
            .bind(bytes)
            .bind(head.0)
            .bind(head.1);
        Ok(Some((query, new_head)))
    }

    pub(crate) async fn lock_head(&self, conn: &mut AnyConnection) -> Result<Head, AuditError> {
        let sql = format!(
            "SELECT seq, mac FROM audit_head WHERE id = 1{}",
            self.db.dialect().for_update()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        self.check_head((row.try_get("seq")?, row.try_get("mac")?))
    }

    /// A head just locked, if it is not behind what this process wrote (a database rolled
    /// back).
    pub(crate) fn check_head(&self, (seq, mac): Head) -> Result<Head, AuditError> {
        let seen = self.high_water.load(Ordering::SeqCst);
        if seq < seen {
            tracing::error!(
                head = seq,
                seen,
                "the audit log moved backwards: the database was rolled back"
            );
            return Err(AuditError::Tampered(format!(
                "the audit log moved backwards (head {seq}, this process wrote up to {seen}): the database was rolled back; refusing to continue"
            )));
        }
        self.high_water.fetch_max(seq, Ordering::SeqCst);
        Ok((seq, mac))
    }

    /// Appends `entries` after the locked `head` and moves the head, inside the batch's
    /// transaction: one statement on PostgreSQL, a multi-row INSERT per chunk and an UPDATE on
    /// SQLite.
    pub(crate) async fn append(
        &self,
        conn: &mut AnyConnection,
        head: Head,
        entries: Vec<Entry>,
    ) -> Result<Head, AuditError> {
        if entries.is_empty() {
            return Ok(head);
        }
        let (records, new_head) = self.chain(&head, entries);
        if self.db.dialect() == Dialect::Postgres {
            let (json, bytes) = records_json(&records)?;
            sqlx::query(APPEND)
                .bind(new_head.0)
                .bind(new_head.1.clone())
                .bind(json)
                .bind(bytes)
                .execute(&mut *conn)
                .await?;
            return Ok(new_head);
        }
        for chunk in records.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO audit_log (seq, at_us, caller, method, target, outcome, request_id, detail, digest, mac) VALUES ",
            );
            sql.push_str(&orchestrator_store::placeholder_rows(chunk.len(), 10));
            bind_records(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1")
            .bind(new_head.0)
            .bind(&new_head.1[..])
            .execute(&mut *conn)
            .await?;
        Ok(new_head)
    }
}

/// A record and its chain MAC.
type Chained = (Record, Vec<u8>);

pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// PostgreSQL: the records of a batch as one JSON document (`[{"seq": .., "mac_at": ..},
/// ..]`) and their MACs and digests end to end in one binary parameter, each found by its
/// place in it, so that the append is one statement of the same text whatever the batch's
/// size: parsed and planned once per connection, instead of once per batch size (which, with
/// batches of 1 to 256 records, kept every connection's statement cache cold). (As base64
/// inside the JSON, the MACs and digests were a third of what PostgreSQL parsed.)
fn records_json(records: &[Chained]) -> Result<(String, Vec<u8>), StoreError> {
    /// One record's row of the JSON document: serialized straight from the record, without
    /// building a `serde_json::Value` per field first.
    #[derive(serde::Serialize)]
    struct Row<'a> {
        seq: i64,
        at_us: i64,
        caller: &'a str,
        method: &'a str,
        target: &'a str,
        outcome: &'a str,
        request_id: &'a str,
        detail: &'a str,
        digest_at: Option<usize>,
        digest_len: Option<usize>,
        mac_at: usize,
        mac_len: usize,
    }
    let mut bytes = PackedBytes::with_capacity(records.len() * 64);
    let rows: Vec<Row<'_>> = records
        .iter()
        .map(|(record, mac)| {
            let (mac_at, mac_len) = bytes.push(mac);
            let digest = record.entry.digest.as_deref().map(|d| bytes.push(d));
            Row {
                seq: record.seq,
                at_us: record.at_us,
                caller: &record.entry.caller,
                method: &record.entry.method,
                target: &record.entry.target,
                outcome: &record.entry.outcome,
                request_id: &record.entry.request_id,
                detail: &record.entry.detail,
                digest_at: digest.map(|(at, _)| at),
                digest_len: digest.map(|(_, len)| len),
                mac_at,
                mac_len,
            }
        })
        .collect();
    Ok((orchestrator_store::json_param(&rows)?, bytes.into_param()))
}

/// The records of `$3` and `$4` (see [`records_json`]) inserted, only if the CTE `head`
/// (before it) moved the head. A record without a digest has none (`substring` of a NULL
/// position is NULL).
#[doc(hidden)]
#[macro_export]
macro_rules! insert_records {
    () => {
        "INSERT INTO audit_log (seq, at_us, caller, method, target, outcome, request_id, detail, digest, mac) \
         SELECT r.seq, r.at_us, r.caller, r.method, r.target, r.outcome, r.request_id, r.detail, \
           substring($4 FROM r.digest_at FOR r.digest_len), substring($4 FROM r.mac_at FOR r.mac_len) \
         FROM json_to_recordset(CAST($3 AS json)) AS r (seq BIGINT, at_us BIGINT, caller TEXT, \
           method TEXT, target TEXT, outcome TEXT, request_id TEXT, detail TEXT, \
           digest_at INTEGER, digest_len INTEGER, mac_at INTEGER, mac_len INTEGER) \
         WHERE EXISTS (SELECT 1 FROM head)"
    };
}

/// The CTE `head`: the head moved to `($1, $2)` only if it is still `($5, $6)` (no row
/// otherwise).
#[doc(hidden)]
#[macro_export]
macro_rules! head_if_cte {
    () => {
        "head AS (UPDATE audit_head SET seq = $1, mac = $2 \
           WHERE id = 1 AND seq = $5 AND mac = $6 RETURNING seq)"
    };
}

/// PostgreSQL, inside a transaction that locked the head: moves the head to `($1, $2)` and
/// appends the records of `$3` and `$4`, in one statement.
const APPEND: &str = concat!(
    "WITH head AS (UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1 RETURNING seq) ",
    insert_records!()
);

/// PostgreSQL, in its own implicit transaction: [`APPEND`] only if the head is still
/// `($5, $6)`; the records are inserted only if the head moved, all or nothing, and the
/// affected-row count says which.
const APPEND_IF_HEAD: &str = concat!("WITH ", head_if_cte!(), " ", insert_records!());

/// Binds each record's ten columns, in the `INSERT`'s order. Only placeholders are
/// generated into the SQL; every value is bound.
fn bind_records<'q>(mut query: AnyQuery<'q>, records: &[Chained]) -> AnyQuery<'q> {
    for (record, mac) in records {
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
            .bind(mac.clone());
    }
    query
}

/// Runs one work item behind a savepoint. The outer `Err` is a database failure that poisons the
/// transaction; the inner one is the work's own refusal, already rolled back.
async fn run_isolated(
    conn: &mut AnyConnection,
    work: Work,
) -> Result<Result<(Box<dyn StdAny + Send>, Vec<Entry>), WorkError>, StoreError> {
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

/// A job's reply channel, its work not run: the record's (sent `Ok` once its batch committed),
/// or a work's, answered `Stopped` if the batch fails before the work ran.
fn pending(job: Job) -> Outcome {
    match job {
        Job::Record(_, tx) => Outcome::Recorded(tx),
        Job::Work(_, tx) => Outcome::Worked(tx, Err(Failure::Audit(AuditError::Stopped))),
    }
}
