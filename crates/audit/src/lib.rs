//! The audit log every service keeps of its state changes and secret reads.
//!
//! - **Same transaction, fail closed.** A change and its record commit together; a read of a
//!   secret returns only after its record is durable. If the record cannot be written, the
//!   operation fails.
//! - **Group commit.** One writer task per process takes whatever requests are queued, runs
//!   them in one transaction (each behind a savepoint when it shares the batch, so one failure
//!   does not sink the others), appends their records and commits once: one fsync for many requests.
//! - **Concurrent writes.** [`Ledger::write_concurrently`] runs a work in a transaction of its
//!   own beside the writer and takes the head only to append and commit, so its work overlaps
//!   the writer's and reads' records never wait behind it.
//! - **Hash chain.** Record `n` carries `HMAC-SHA256(AUDIT_KEY, mac(n-1) || fields(n))`; the key
//!   never reaches the database, so an edit, a deletion in the middle or a forged record is
//!   found by [`verify`], which names the first broken record. `audit_head` holds the newest
//!   `(seq, mac)`: each batch locks it, so replicas append to one linear chain, and a head that
//!   moves backwards (a database restored under a running service) is refused.
//! - **Checkpoints.** A head in the same database can be set back by the database's owner; a
//!   [`Checkpoint`] (the head MACed with the key, printed to the service's log) anchors it
//!   outside, and [`check_checkpoint`] finds a database behind it.
//! - Records never hold a secret value: callers put names, versions and digests in them.

/// PostgreSQL: a common table expression `head` that locks the audit head and reads it as
/// `head_seq` and `head_mac`, for a concurrent write whose first statement under the head is
/// its own ([`Concurrent::head_locked`]). A data-modifying part of that statement that must
/// come after the head refers to `head` (`... AND EXISTS (SELECT 1 FROM head)`), so the head is
/// locked first, in the order every write takes them.
#[macro_export]
macro_rules! lock_head_cte {
    () => {
        "head AS (SELECT seq AS head_seq, mac AS head_mac FROM audit_head WHERE id = 1 FOR UPDATE)"
    };
}

/// PostgreSQL: the first CTEs of a concurrent write's statement that appends its records
/// itself, after the head this process last committed, if that is still the head: `head` (one
/// row once it moved the head; none if another write moved it first) and `appended` (the
/// records, inserted only if `head` has its row). [`Concurrent::bind_append`] binds `$1`-`$6`;
/// the work's own parameters start at `$7`. A data-modifying part of the statement that must
/// come after the head refers to `head`, as with [`lock_head_cte!`]. One round trip where
/// taking the head and appending are two.
#[macro_export]
macro_rules! append_if_head_cte {
    () => {
        concat!(
            $crate::head_if_cte!(),
            ", appended AS (",
            $crate::insert_records!(),
            ")"
        )
    };
}

/// The select list for [`Ledger::attested`]: an audit record joined as `a` and the record
/// before it as `p`, under `a_`-prefixed aliases. A macro so it can be `concat!`ed into static
/// SQL next to a service's own columns. `attested_columns!(k, kp)` selects a record joined as
/// `k` and its predecessor as `kp` under `k_`-prefixed aliases, for [`Ledger::attested_as`]
/// with prefix `"k"`: two records checked from one row.
#[macro_export]
macro_rules! attested_columns {
    () => {
        $crate::attested_columns!(a, p)
    };
    ($r:ident, $p:ident) => {
        concat!(
            stringify!($r),
            ".seq AS ",
            stringify!($r),
            "_seq, ",
            stringify!($r),
            ".at_us AS ",
            stringify!($r),
            "_at_us, ",
            stringify!($r),
            ".caller AS ",
            stringify!($r),
            "_caller, ",
            stringify!($r),
            ".method AS ",
            stringify!($r),
            "_method, ",
            stringify!($r),
            ".target AS ",
            stringify!($r),
            "_target, ",
            stringify!($r),
            ".outcome AS ",
            stringify!($r),
            "_outcome, ",
            stringify!($r),
            ".request_id AS ",
            stringify!($r),
            "_request_id, ",
            stringify!($r),
            ".detail AS ",
            stringify!($r),
            "_detail, ",
            stringify!($r),
            ".digest AS ",
            stringify!($r),
            "_digest, ",
            stringify!($r),
            ".mac AS ",
            stringify!($r),
            "_mac, ",
            stringify!($p),
            ".mac AS ",
            stringify!($r),
            "_prev_mac"
        )
    };
}

mod chain;
mod checkpoint;
mod concurrent;
mod ledger;
mod retry;
mod verify;

pub use chain::{AuditKey, AuditKeyError, Entry, Record};
pub use checkpoint::{Checkpoint, CheckpointError, check as check_checkpoint};
pub use concurrent::{Appending, Concurrent, LOCK_TIMEOUT};
pub use ledger::{AuditError, Ledger, Work};
pub use retry::{Retryable, WRITE_ATTEMPTS};
pub use verify::{Broken, VerifyReport, verify};

use orchestrator_store::Dialect;
use sqlx::migrate::Migrator;

/// The audit tables' migrations (versions 1-99) for `dialect`; every service applies them.
pub fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/audit/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/audit/sqlite"),
    }
}
