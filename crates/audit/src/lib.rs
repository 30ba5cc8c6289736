//! The audit log every service keeps of its state changes and secret reads.
//!
//! - **Same transaction, fail closed.** A change and its record commit together; a read of a
//!   secret returns only after its record is durable. If the record cannot be written, the
//!   operation fails.
//! - **Group commit.** One writer task per process takes whatever requests are queued, runs
//!   them in one transaction (each behind a savepoint, so one failure does not sink the
//!   others), appends their records and commits once: one fsync for many requests.
//! - **Hash chain.** Record `n` carries `HMAC-SHA256(AUDIT_KEY, mac(n-1) || fields(n))`; the key
//!   never reaches the database, so an edit, a deletion in the middle or a forged record is
//!   found by [`verify`], which names the first broken record. `audit_head` holds the newest
//!   `(seq, mac)`: each batch locks it, so replicas append to one linear chain, and a head that
//!   moves backwards (a database restored under a running service) is refused.
//! - **Checkpoints.** A head in the same database can be set back by the database's owner; a
//!   [`Checkpoint`] (the head MACed with the key, printed to the service's log) anchors it
//!   outside, and [`check_checkpoint`] finds a database behind it.
//! - Records never hold a secret value: callers put names, versions and digests in them.

/// The select list for [`Ledger::attested`]: an audit record joined as `a` and the record
/// before it as `p`, under `a_`-prefixed aliases. A macro so it can be `concat!`ed into static
/// SQL next to a service's own columns.
#[macro_export]
macro_rules! attested_columns {
    () => {
        "a.seq AS a_seq, a.at_us AS a_at_us, a.caller AS a_caller, a.method AS a_method, \
         a.target AS a_target, a.outcome AS a_outcome, a.request_id AS a_request_id, \
         a.detail AS a_detail, a.digest AS a_digest, a.mac AS a_mac, p.mac AS a_prev_mac"
    };
}

mod chain;
mod checkpoint;
mod ledger;
mod retry;
mod verify;

pub use chain::{AuditKey, AuditKeyError, Entry, Record};
pub use checkpoint::{Checkpoint, CheckpointError, check as check_checkpoint};
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
