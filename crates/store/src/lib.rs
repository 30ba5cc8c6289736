//! Database access shared by the services.
//!
//! One code path for PostgreSQL (production, and what the tests run against) and SQLite (the
//! embedded default for `orchctl up`): sqlx's `Any` driver with portable SQL (`$n` parameters,
//! integers, text and bytes only). The few dialect differences (locking, `BEGIN IMMEDIATE`) are
//! behind [`Dialect`]; schema differences live in the per-dialect migration folders.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Executor, Transaction};

mod roles;
#[cfg(feature = "testing")]
pub mod testing;

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// ` FOR UPDATE` on PostgreSQL, nothing on SQLite (whose write transactions lock the whole
    /// database up front, see [`Database::begin_write`]). Appended to a `SELECT`.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }

    /// ` FOR UPDATE SKIP LOCKED` on PostgreSQL (replicas claim disjoint rows), nothing on SQLite
    /// (one writer at a time).
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    /// The statement that opens a write transaction: on SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`), so two writers never deadlock upgrading read locks.
    pub fn begin_write(self) -> &'static str {
        match self {
            Dialect::Postgres => "BEGIN",
            Dialect::Sqlite => "BEGIN IMMEDIATE",
        }
    }

    /// The type of a byte string column, for `CAST($n AS ...)`.
    pub fn blob(self) -> &'static str {
        match self {
            Dialect::Postgres => "BYTEA",
            Dialect::Sqlite => "BLOB",
        }
    }
}

/// Errors from the database, already sorted by what the caller should tell its client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, or timed out: retry later (UNAVAILABLE).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The row exists already (a unique constraint): what that means (a name taken, a request
    /// seen before) is the caller's to say; unhandled, ABORTED.
    #[error("duplicate: {0}")]
    Duplicate(String),
    /// A concurrent transaction won (serialization failure, deadlock, a lock wait past the
    /// transaction's `lock_timeout`): nothing was wrong with the request, so it is retried
    /// ([`StoreError::is_retryable`]); if retries run out, ABORTED with reason
    /// `CONCURRENT_CHANGE`.
    #[error("concurrent modification: {0}")]
    Conflict(String),
    /// Anything else: a bug or a schema problem (INTERNAL, without detail for the client).
    #[error("database error: {0}")]
    Other(String),
    #[error("DATABASE_URL must start with postgres:// or sqlite:")]
    UnsupportedUrl,
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                match code.as_ref() {
                    // unique_violation; SQLite's UNIQUE and PRIMARY KEY constraints
                    "23505" | "2067" | "1555" => StoreError::Duplicate(db.message().to_owned()),
                    // serialization_failure, deadlock_detected, lock_not_available (a lock
                    // wait past the transaction's lock_timeout)
                    "40001" | "40P01" | "55P03" => StoreError::Conflict(db.message().to_owned()),
                    // admin_shutdown, crash_shutdown, cannot_connect_now; SQLite BUSY/LOCKED
                    "57P01" | "57P02" | "57P03" | "5" | "6" => {
                        StoreError::Unavailable(db.message().to_owned())
                    }
                    _ => StoreError::Other(db.message().to_owned()),
                }
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        Self::from(&e)
    }
}

impl From<&StoreError> for tonic::Status {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tonic::Status::unavailable("the database is unavailable; retry later")
            }
            StoreError::Duplicate(_) => tonic::Status::aborted("a concurrent change won; retry"),
            StoreError::Conflict(_) => concurrent_change(),
            other => {
                // The detail stays in the log; the client gets no internals.
                tracing::error!(error = %other, "database error");
                tonic::Status::internal("internal storage error")
            }
        }
    }
}

/// ABORTED with reason `CONCURRENT_CHANGE`: a transaction lost to a concurrent one more often
/// than it was retried. The client may retry the call as it is.
pub fn concurrent_change() -> tonic::Status {
    orchestrator_status::with_reason(
        tonic::Code::Aborted,
        "CONCURRENT_CHANGE",
        "a concurrent change won, more often than retried; retry the call",
        &[],
    )
}

/// Whether a status is [`concurrent_change`]'s: the one failure a write retries.
pub fn is_concurrent_change(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Aborted
        && orchestrator_status::reason_of(status)
            .is_some_and(|(reason, _)| reason == "CONCURRENT_CHANGE")
}

impl StoreError {
    /// A conflict between transactions, not a fault of the request: running the same work
    /// again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }

    /// A stored value this version cannot read (a bug, or a write from outside the service):
    /// reported, never silently taken for another value.
    pub fn corrupt(column: &str, problem: impl std::fmt::Display) -> Self {
        StoreError::Other(format!("{column}: {problem}"))
    }
}

/// A stored text that is none of its enum's values (see [`stored_enum!`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

impl From<UnknownValue> for StoreError {
    fn from(e: UnknownValue) -> Self {
        StoreError::corrupt(e.what, &e)
    }
}

/// An enum stored as text. `as_str` is the stored value; `parse` (and `FromStr`) refuse any
/// other value with [`UnknownValue`], so an unknown state or kind is an error, never silently
/// another variant; `ALL` lists the variants in order. With `: pb::Type` and `=> Variant` per
/// variant it also converts to the contract's enum (`to_pb`, `From`).
///
/// ```
/// orchestrator_store::stored_enum! {
///     /// A server's life.
///     pub enum State { Ready = "ready", Gone = "gone" }
/// }
/// assert_eq!(State::parse("gone"), Ok(State::Gone));
/// assert!(State::parse("other").is_err());
/// ```
#[macro_export]
macro_rules! stored_enum {
    (
        $(#[$doc:meta])* $vis:vis enum $name:ident : $pb:ty {
            $($(#[$vdoc:meta])* $variant:ident = $stored:literal => $pb_variant:ident),+ $(,)?
        }
    ) => {
        $crate::stored_enum! {
            $(#[$doc])* $vis enum $name { $($(#[$vdoc])* $variant = $stored),+ }
        }

        impl $name {
            /// The contract's value.
            $vis fn to_pb(self) -> $pb {
                match self {
                    $(Self::$variant => <$pb>::$pb_variant,)+
                }
            }
        }

        impl From<$name> for $pb {
            fn from(value: $name) -> Self {
                value.to_pb()
            }
        }
    };
    (
        $(#[$doc:meta])* $vis:vis enum $name:ident {
            $($(#[$vdoc:meta])* $variant:ident = $stored:literal),+ $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            #[allow(dead_code)]
            $vis const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The value stored in the database.
            $vis fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $stored,)+
                }
            }

            /// The variant stored as `raw`; any other value is an error.
            $vis fn parse(raw: &str) -> Result<Self, $crate::UnknownValue> {
                match raw {
                    $($stored => Ok(Self::$variant),)+
                    _ => Err($crate::UnknownValue {
                        what: stringify!($name),
                        value: raw.to_owned(),
                    }),
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::UnknownValue;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Self::parse(raw)
            }
        }

        // For typed rows: `#[sqlx(try_from = "String")]`.
        impl TryFrom<String> for $name {
            type Error = $crate::UnknownValue;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A connection pool to the service's own database.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    dialect: Dialect,
}

impl Database {
    /// Connects (retrying until `patience` runs out, so a service can start alongside its
    /// database) and returns a pool whose acquisitions fail fast when the database goes away.
    pub async fn connect(url: &SecretString, patience: Duration) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let raw = url.expose_secret();
        let dialect = if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Dialect::Postgres
        } else if raw.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let options: AnyConnectOptions = raw
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Other(redact(&e.to_string(), raw)))?;
        let pool_options = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::Postgres => 16,
                Dialect::Sqlite => 4,
            })
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            // A connection idle for a second is pinged before use, so one that saw the server
            // restart is replaced instead of failing a call. A busy one is not: a ping is a
            // round trip, and after a restart its next call fails once (UNAVAILABLE), as the
            // calls in flight then do anyway.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL for concurrent readers; FULL so a commit (and its audit record) is durable.
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
                            .await?;
                    } else {
                        // Our statements are short; JIT compiling one the planner over-estimates
                        // (a count over a table whose statistics lag) took 100 ms to save none.
                        conn.execute("SET jit = off").await?;
                        // Every statement of ours finds its rows by an index (or by ctid). A
                        // prepared statement keeps the plan made at its sixth execution: made
                        // while a table was nearly empty, that plan scans the whole table, and
                        // went on doing so as it grew (the vault's batched Puts fell to a third
                        // on a connection kept from start-up). A scan stays where nothing else
                        // can answer.
                        conn.execute("SET enable_seqscan = off").await?;
                    }
                    Ok(())
                })
            });
        let deadline = tokio::time::Instant::now() + patience;
        let mut wait = Duration::from_millis(100);
        loop {
            match pool_options.clone().connect_with(options.clone()).await {
                Ok(pool) => return Ok(Self { pool, dialect }),
                Err(e) => {
                    let e = StoreError::from(e);
                    if !matches!(e, StoreError::Unavailable(_))
                        || tokio::time::Instant::now() + wait > deadline
                    {
                        return Err(match e {
                            StoreError::Other(msg) => StoreError::Other(redact(&msg, raw)),
                            other => other,
                        });
                    }
                    tracing::warn!(error = %e, "database not reachable yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies each set of migrations in order. The sets share sqlx's version table and use
    /// disjoint version numbers (the audit tables 1-99, a service's own tables from 100), so each
    /// ignores the others' versions. Safe with several replicas starting at once: on PostgreSQL
    /// the migrator holds an advisory lock.
    pub async fn migrate(
        &self,
        migrations: impl IntoIterator<Item = Migrator>,
    ) -> Result<(), StoreError> {
        for mut migrator in migrations {
            migrator.set_ignore_missing(true);
            migrator.run(&self.pool).await?;
        }
        Ok(())
    }

    /// A write transaction (see [`Dialect::begin_write`]).
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(self.pool.begin_with(self.dialect.begin_write()).await?)
    }

    /// A connection for one task's serial work (a writer, a batcher), kept between its units
    /// of work instead of taken from the pool for each.
    pub fn hold(&self) -> HeldConnection {
        HeldConnection {
            db: self.clone(),
            conn: None,
            last_used: Instant::now(),
        }
    }

    /// Whether the database answers now (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// How long a connection may sit unused before it is pinged ahead of its next use.
const PING_IF_IDLE: Duration = Duration::from_secs(1);

/// A pooled connection that one task keeps across its units of work (see [`Database::hold`]).
/// sqlx pings every connection that goes back to the pool: a round trip per batch (with the
/// ping on taking one, a tenth of the vault's CPU while reads were served). Taken from the pool at first
/// use; after a failure the task [`discard`](HeldConnection::discard)s it (it may be broken or
/// mid-transaction) and the next use takes a fresh one; pinged first when idle for a while, as
/// the pool's own are, so a database restarted meanwhile costs no failed call.
pub struct HeldConnection {
    db: Database,
    conn: Option<PoolConnection<Any>>,
    last_used: Instant,
}

impl std::fmt::Debug for HeldConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldConnection")
            .field("held", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl HeldConnection {
    /// The connection, taken from the pool if none is held (or the one held fails its ping).
    pub async fn get(&mut self) -> Result<&mut AnyConnection, StoreError> {
        let idle = self.last_used.elapsed() >= PING_IF_IDLE;
        self.last_used = Instant::now();
        if idle
            && let Some(conn) = self.conn.as_mut()
            && conn.ping().await.is_err()
        {
            self.discard();
        }
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.db.pool.acquire().await?,
        };
        Ok(&mut **self.conn.insert(conn))
    }

    /// A write transaction on the held connection, as [`Database::begin_write`].
    pub async fn begin_write(&mut self) -> Result<Transaction<'_, Any>, StoreError> {
        let begin = self.db.dialect.begin_write();
        Ok(self.get().await?.begin_with(begin).await?)
    }

    /// Lets go of the connection after a failure: closed, not returned to the pool.
    pub fn discard(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

/// Now, in microseconds since the Unix epoch: how the services store times.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `bytes` random bytes as lowercase hex, for ids (`prj-…`, `op-…`).
pub fn random_hex(bytes: usize) -> String {
    use std::fmt::Write as _;
    let mut buf = vec![0u8; bytes];
    // A failing system RNG leaves zeros; ids are also unique by their database constraints.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf);
    buf.iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Many byte strings end to end in one `bytea` parameter, each found by its place in it with
/// `substring($n FROM at FOR len)` (PostgreSQL): a batch's binary values travel beside its
/// JSON parameter instead of as base64 inside it, and the statement's text stays the same for
/// any batch.
#[derive(Debug, Default)]
pub struct PackedBytes(Vec<u8>);

impl PackedBytes {
    pub fn with_capacity(bytes: usize) -> Self {
        Self(Vec::with_capacity(bytes))
    }

    /// Appends `bytes`; returns their `at` (counted from 1, as `substring` counts) and `len`.
    pub fn push(&mut self, bytes: &[u8]) -> (usize, usize) {
        let at = self.0.len() + 1;
        self.0.extend_from_slice(bytes);
        (at, bytes.len())
    }

    /// The parameter to bind.
    pub fn into_param(self) -> Vec<u8> {
        self.0
    }
}

/// `rows` as a JSON parameter (for PostgreSQL's `json_to_recordset`), serialized straight from
/// borrowed structs: building a `serde_json::Value` per field first cost the vault a few per
/// cent of its CPU per batch (BENCHMARKS).
pub fn json_param<T: serde::Serialize + ?Sized>(rows: &T) -> Result<String, StoreError> {
    serde_json::to_string(rows)
        .map_err(|e| StoreError::Other(format!("a statement's JSON parameter: {e}")))
}

/// `($1, ..., $c), ($c+1, ...), ...`: the placeholders of a multi-row `VALUES` list of `rows`
/// rows of `columns` values each, numbered from `$1`. Only placeholders go into SQL; every
/// value is bound.
pub fn placeholder_rows(rows: usize, columns: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            let sep = if column == 0 { "" } else { ", " };
            let _ = write!(sql, "{sep}${}", row * columns + column + 1);
        }
        sql.push(')');
    }
    sql
}

/// Removes a connection URL (which may hold a password) from an error message.
fn redact(message: &str, url: &str) -> String {
    message.replace(url, "<DATABASE_URL>")
}

#[cfg(test)]
mod tests {
    #[test]
    fn packed_bytes_are_found_where_substring_looks() {
        let mut packed = super::PackedBytes::default();
        assert_eq!(packed.push(b"abc"), (1, 3));
        assert_eq!(packed.push(b""), (4, 0));
        assert_eq!(packed.push(b"de"), (4, 2));
        let bytes = packed.into_param();
        // `substring(b FROM at FOR len)` is `b[at - 1..at - 1 + len]`.
        assert_eq!(&bytes[3..5], b"de");
        assert_eq!(&bytes[0..3], b"abc");
    }

    #[test]
    fn placeholder_rows_number_every_value_once_in_order() {
        assert_eq!(super::placeholder_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::placeholder_rows(1, 1), "($1)");
        assert_eq!(super::placeholder_rows(0, 4), "");
    }
}
