//! Every query of the vault, and the rows they return.
//!
//! Portable SQL for PostgreSQL and SQLite through sqlx's `Any` driver (`$n` parameters,
//! integers, text, bytes; booleans stored as 0/1); the few differences through [`Dialect`].
//! Writes take the connection of the ledger's batch transaction (`&mut AnyConnection`), so a
//! change commits with its audit records; reads outside a write take the pool.

mod data_keys;
mod grants;
mod rewrap;
mod secrets;
#[cfg(test)]
mod tests;

use orchestrator_audit::{AuditError, Ledger};
use orchestrator_store::Dialect;
use sqlx::any::AnyRow;
use sqlx::migrate::Migrator;

pub(crate) use data_keys::{
    DataKeyStatus, KeyState, PrimaryUse, StoredKey, Wrapping, count_and_append, count_encryptions,
    data_key_status, demote_primary, insert_first_data_key, insert_primary_data_key,
    next_data_key_id, primary_data_key_id, retire_empty_keys, rewrap_data_key, stored_data_keys,
};
pub(crate) use grants::{GrantRow, grant, insert_grant, revoke_grant};
pub(crate) use rewrap::{
    Rewrapped, RowKey, StoredValue, attestations, stale_values, store_rewrapped,
};
pub(crate) use secrets::{
    GrantedRead, KeyHead, Lookup, NewVersion, NextVersion, SecretMeta, Stored, destroy_version,
    find_put_request, insert_put_request, list_secrets, metadata, next_version, next_versions,
    read_granted_many, soft_delete_version, store_versions, touch_key,
};

/// The vault's own tables (versions from 100; the audit tables' come first).
pub(crate) fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/vault/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/vault/sqlite"),
    }
}

/// The newest audit record with a digest for a row, selected with
/// [`orchestrator_audit::attested_columns!`] under the aliases prefixed `{.1}_`, not yet checked.
pub(crate) struct Attestation(AnyRow, &'static str);

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attestation(..)")
    }
}

impl Attestation {
    /// The record's digest once its MAC checks out; `None` when the row has no record.
    pub(crate) fn verify<E>(&self, ledger: &Ledger<E>) -> Result<Option<Vec<u8>>, AuditError> {
        ledger.attested_as(&self.0, self.1)
    }
}
