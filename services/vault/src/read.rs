//! Reads of values: the row and its newest audit digest in one round trip, the digest checked,
//! the ciphertext decrypted for its row, and the value released only after the read is recorded.

use std::sync::Arc;

use orchestrator_audit::Entry;
use orchestrator_proto::timestamp as ts;
use orchestrator_proto::vault::v1 as pb;
use tonic::Status;

use orchestrator_store::Database;

use crate::audit::{Action, current_version_digest, key_target, target_prefix};
use crate::batcher::Batcher;
use crate::crypto::{RowRef, ciphertext_key_id, digest};
use crate::db;
use crate::state::Vault;
use crate::validate::SecretVersion;

/// Most lookups one statement carries (7 parameters each).
const LOOKUPS_PER_STATEMENT: usize = 64;

/// Reads' lookups, batched: concurrent reads share a statement.
pub(crate) type Lookups = Batcher<db::Lookup, Result<db::GrantedRead, Status>>;

/// Starts the batching of reads' lookups against `db`.
pub(crate) fn lookups(db: Database) -> Lookups {
    // The batches run one at a time, so they share one connection (the lock is never
    // contended): no round trip to take it from the pool and give it back per batch.
    let held = Arc::new(tokio::sync::Mutex::new(db.hold()));
    Batcher::start(LOOKUPS_PER_STATEMENT, move |lookups: Vec<db::Lookup>| {
        let (dialect, held) = (db.dialect(), held.clone());
        async move {
            let mut held = held.lock().await;
            let found = async {
                let conn = held.get().await?;
                db::read_granted_many(conn, dialect, &lookups).await
            };
            match found.await {
                Ok(found) => found.into_iter().map(Ok).collect(),
                Err(e) => {
                    held.discard();
                    tracing::warn!(error = %e, reads = lookups.len(), "a batch of reads' lookups failed; each of its reads fails");
                    let status = Status::from(&e);
                    lookups.iter().map(|_| Err(status.clone())).collect()
                }
            }
        }
    })
}

/// GetUserSecret: one value, returned once its read is recorded.
pub(crate) async fn get(
    vault: &Vault,
    caller: &str,
    wanted: &SecretVersion,
) -> Result<pb::UserSecret, Status> {
    let (secret, entry) = checked_read(vault, caller, Action::Get, wanted).await?;
    // Architecture Invariant: every read of a secret is audited, fail closed: the value is
    // released only after its record committed.
    vault.ledger.record(entry).await?;
    Ok(secret)
}

/// BatchGetUserSecrets: every value read and checked, then every read recorded, before any
/// value is released. An error names the request it is about.
pub(crate) async fn batch_get(
    vault: &Vault,
    caller: &str,
    wanted: &[SecretVersion],
) -> Result<Vec<pb::UserSecret>, Status> {
    // All at once, so their lookups share a statement.
    let reads = wanted.iter().enumerate().map(|(i, one)| async move {
        checked_read(vault, caller, Action::BatchGet, one)
            .await
            .map_err(|s| Status::new(s.code(), format!("requests[{i}]: {}", s.message())))
    });
    let (secrets, entries): (Vec<_>, Vec<_>) = futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .unzip();
    // Architecture Invariant: every read of a secret is audited, fail closed.
    futures::future::try_join_all(entries.into_iter().map(|e| vault.ledger.record(e))).await?;
    Ok(secrets)
}

/// Reads one live version's plaintext, checking its binding and its audit record; returns it
/// with the entry that records the read, which must commit before the value is released.
async fn checked_read(
    vault: &Vault,
    caller: &str,
    action: Action,
    wanted: &SecretVersion,
) -> Result<(pb::UserSecret, Entry), Status> {
    let (user_id, key) = (wanted.name.user_id.as_str(), wanted.name.key.as_str());
    // Architecture Invariant: the vault serves a user's key only for a project the user granted
    // it to. A read that names no project is refused before any query.
    let Some(project_id) = wanted.project.as_ref().map(|p| p.as_str()) else {
        return Err(crate::grants::refusal(wanted));
    };
    let prefix = target_prefix(user_id, key);
    let whole_key = key_target(user_id, key);
    // Rollback detection, per version: the row must be what its newest (authentic) audit record
    // says. Per key, for a read of the newest version: the version served must be the one the
    // key's newest record names, so a newer version deleted, removed or marked deleted behind
    // the vault's back does not make an older value "the newest". The grant, the row and both
    // records come from one statement (one snapshot); a write (or rewrap) committed between
    // the row's read and its record's (another replica) looks like a mismatch once, so a
    // mismatch is read again before it is reported.
    // Architecture Invariant: a rolled-back or replaced row is never served.
    let lookup = db::Lookup {
        user_id: user_id.to_owned(),
        key: key.to_owned(),
        version: wanted.version,
        project_id: project_id.to_owned(),
        target_prefix: prefix.clone(),
        key_target: whole_key.clone(),
    };
    let mut attempt = 0;
    let (version, created_us, ciphertext, target) = loop {
        let found = vault.lookups.call(lookup.clone()).await;
        let found = found.unwrap_or_else(|| Err(Status::unavailable("the vault is stopping")));
        let (row, newest) = match found? {
            db::GrantedRead::NotGranted => return Err(crate::grants::refusal(wanted)),
            db::GrantedRead::Granted { row, newest } => (row, newest),
        };
        let newest = match newest {
            Some(record) => record.verify(&vault.ledger)?,
            None => None, // Not written since such records exist: the per-version check only.
        };
        let Some(row) = row else {
            match newest {
                Some(d) if d != current_version_digest(0) && attempt == 0 => {
                    attempt += 1;
                    continue;
                }
                Some(d) if d != current_version_digest(0) => {
                    tracing::error!(target = %whole_key, "the key's newest live version is gone without an audit record");
                    return Err(Status::data_loss(format!(
                        "{whole_key}: its newest audit record names a live version the database does not hold: rolled back or removed"
                    )));
                }
                _ => {
                    return Err(Status::not_found(format!(
                        "no live version of secret `{key}` for user `{user_id}`"
                    )));
                }
            }
        };
        let ciphertext = row
            .ciphertext
            .ok_or_else(|| Status::data_loss("a live version has no ciphertext"))?;
        let target = format!("{prefix}{}", row.version);
        let row_ok = row.attestation.verify(&vault.ledger)? == Some(digest(&ciphertext));
        let key_ok = newest
            .as_ref()
            .is_none_or(|d| *d == current_version_digest(row.version));
        match (row_ok, key_ok) {
            (true, true) => break (row.version, row.created_us, ciphertext, target),
            _ if attempt == 0 => attempt += 1,
            (false, _) => {
                tracing::error!(%target, "stored ciphertext does not match its audit record: rolled back or replaced");
                return Err(Status::data_loss(format!(
                    "{target} does not match its newest audit record: the row was rolled back or replaced"
                )));
            }
            (true, false) => {
                tracing::error!(%target, key = %whole_key, "the newest live version is not the one the key's audit record names: rolled back");
                return Err(Status::data_loss(format!(
                    "{target} is not the newest live version its key's audit record names: a newer version was deleted or removed behind the vault's back"
                )));
            }
        }
    };
    let key_id = ciphertext_key_id(&ciphertext)
        .ok_or_else(|| Status::data_loss(format!("{target}: malformed ciphertext")))?;
    let data_key = vault
        .keys
        .get_or_load_from(&vault.db, key_id)
        .await?
        .ok_or_else(|| Status::data_loss(format!("{target}: unknown data key {key_id}")))?;
    let plaintext = data_key
        .decrypt(
            RowRef {
                user_id,
                key,
                version,
            },
            &ciphertext,
        )
        .ok_or_else(|| {
            Status::data_loss(format!(
                "{target}: the ciphertext does not belong to this row"
            ))
        })?;
    let secret = pb::UserSecret {
        user_id: user_id.to_owned(),
        key: key.to_owned(),
        version,
        value: plaintext.to_vec(),
        create_time: Some(ts(created_us)),
    };
    let project = wanted.project.as_ref().map_or("", |p| p.as_str());
    let entry =
        Entry::new(caller, action.as_str(), target).detail(format!("for project {project}"));
    Ok((secret, entry))
}
