//! Changes with their audit records: each runs in a ledger transaction (the writer's batch, or a
//! concurrent write of its own for a batch of Puts without request ids) and returns the audit
//! entries that describe it, so a change and its records commit together or not at all.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_audit::{Concurrent, Entry};
use orchestrator_proto::vault::v1 as pb;
use orchestrator_status::with_reason;
use orchestrator_store::now_us;
use sqlx::AnyConnection;
use tonic::{Code, Status};

use crate::audit::{Action, Gone, current_version_digest, data_key_target, key_target, target};
use crate::batcher::Batcher;
use crate::crypto::{DataKey, RowRef, digest};
use crate::db::{self, KeyHead, NewVersion, NextVersion, PrimaryUse, SecretMeta, Stored, Wrapping};
use crate::state::Vault;
use crate::validate::{DeleteSecret, PutSecret, SecretName};

/// Most Puts one batch (one ledger work item) carries.
const PUTS_PER_BATCH: usize = 64;

/// A Put waiting for its batch, with the vault it writes to.
pub(crate) struct QueuedPut {
    vault: Vault,
    caller: String,
    put: PutSecret,
}

/// Puts, batched: concurrent Puts share one transaction, so one count of encryptions, one
/// statement per step and one commit serve them all.
pub(crate) type Puts = Batcher<QueuedPut, Result<SecretMeta, Status>>;

/// How long a batch of Puts may wait for the callers answered with the batch before it.
/// Measured: Puts +31-35 % (32 callers), and +10-20 % more once two groups of callers merge
/// ([`Batcher::start_lingering`]); reads do not wait, it cost them 5 % (BENCHMARKS).
const PUTS_LINGER: Duration = Duration::from_micros(1500);

/// Starts the batching of Puts.
pub(crate) fn puts() -> Puts {
    Batcher::start_lingering(
        PUTS_PER_BATCH,
        PUTS_LINGER,
        |batch: Vec<QueuedPut>| async move {
            let Some(vault) = batch.first().map(|q| q.vault.clone()) else {
                return Vec::new();
            };
            let n = batch.len();
            let puts: Vec<BatchPut> = batch
                .into_iter()
                .map(|q| (q.caller, q.put))
                .enumerate()
                .collect();
            let written = if puts.iter().any(|(_, (_, put))| put.request_id.is_some()) {
                let v = vault.clone();
                vault
                    .ledger
                    .write(move |conn| Box::pin(async move { puts_in_tx(&v, conn, &puts).await }))
                    .await
            } else {
                puts_concurrently(&vault, puts).await
            };
            match written {
                Ok((answers, rotated)) => {
                    // Only now that the rotation committed: a rewrap woken earlier would find the
                    // old key still primary and nothing to do.
                    if rotated {
                        vault.rewrap.wake();
                    }
                    answers
                }
                Err(status) => (0..n).map(|_| Err(status.clone())).collect(),
            }
        },
    )
}

/// PutUserSecret: the key's metadata after the write (or, for a repeated request id, as the
/// first call answered it).
pub(crate) async fn put(
    vault: &Vault,
    caller: String,
    put: PutSecret,
) -> Result<pb::UserSecretMetadata, Status> {
    let queued = QueuedPut {
        vault: vault.clone(),
        caller,
        put,
    };
    let written = vault.puts.call(queued).await;
    let meta = written.unwrap_or_else(|| Err(Status::unavailable("the vault is stopping")))?;
    Ok(meta.into_pb())
}

/// Each Put's answer, and whether the batch rotated the primary data key.
type PutAnswers = (Vec<Result<SecretMeta, Status>>, bool);

/// A Put of a batch, with its place in the batch and its caller.
type BatchPut = (usize, (String, PutSecret));

/// A batch's Puts.
type Batch = [BatchPut];

/// A batch of Puts without request ids in a transaction of its own, beside the writer and the
/// other batches ([`orchestrator_audit::Concurrent`]): the versions are taken and stored first,
/// each under its key's row lock, and the audit head is taken only to count the encryptions,
/// append the records and commit. (A request id is looked up before its key is locked, so
/// those batches run in the writer's order, under the head from the start.)
async fn puts_concurrently(vault: &Vault, mut puts: Vec<BatchPut>) -> Result<PutAnswers, Status> {
    // Every batch takes its keys' rows in the same order, so two batches sharing keys wait for
    // each other instead of deadlocking. (A key's Puts keep their order: the sort is stable.)
    puts.sort_by(|(_, (_, a)), (_, (_, b))| {
        (a.name.user_id.as_str(), a.name.key.as_str())
            .cmp(&(b.name.user_id.as_str(), b.name.key.as_str()))
    });
    // Kept, not consumed, by each attempt: a batch that lost to a concurrent transaction runs
    // again with the same values.
    let puts = Arc::new(puts);
    vault
        .ledger
        .write_concurrently(|tx| {
            let (vault, puts) = (vault.clone(), puts.clone());
            Box::pin(async move { puts_in_concurrent_tx(&vault, tx, &puts).await })
        })
        .await
}

async fn puts_in_concurrent_tx(
    vault: &Vault,
    tx: &mut Concurrent,
    puts: &Batch,
) -> Result<(PutAnswers, Vec<Entry>), Status> {
    // Sealed under the primary this vault last counted on; checked under the head below.
    let primary_id = match vault.keys.primary_hint() {
        Some(id) => id,
        None => db::primary_data_key_id(tx.conn()).await?,
    };
    let (answers, mut entries) = seal_and_store(vault, tx.conn(), primary_id, puts).await?;
    // From here to the commit a rotation (which runs under the head) cannot slip in: the count
    // lands on the key the values were sealed with, or the batch runs again. A Put refused
    // above was counted in vain: the count errs on the safe side, never below the truth.
    // While no other write moved the head since this process last committed, the records go
    // in with the count, one round trip instead of two; the commit appends only a rotation's.
    let n = puts.len() as i64;
    let primary = db::count_and_append(tx, vault.db.dialect(), n, &mut entries).await?;
    vault.keys.set_primary_hint(primary.id);
    if primary.id != primary_id {
        // A rotation committed after this batch sealed its values: the next attempt seals
        // them under the new primary.
        return Err(orchestrator_store::concurrent_change());
    }
    let rotated = rotate_if_due(vault, tx.conn(), primary, &mut entries).await?;
    Ok(((answers, rotated), entries))
}

/// A batch of Puts in the writer's transaction, under the head from its start: each Put's
/// answer (a refusal changed nothing, so it does not roll back the others) and the audit
/// entries of those that wrote. A database failure fails the whole batch, rolled back.
async fn puts_in_tx(
    vault: &Vault,
    conn: &mut AnyConnection,
    puts: &Batch,
) -> Result<(PutAnswers, Vec<Entry>), Status> {
    // The encryptions counted once for the batch, on the primary data key, in the same
    // transaction (locking it, so a rotation waits for this one). A Put refused below was
    // counted in vain: the count errs on the safe side, never below the truth.
    let primary = db::count_encryptions(conn, puts.len() as i64).await?;
    let (answers, mut entries) = seal_and_store(vault, conn, primary.id, puts).await?;
    let rotated = rotate_if_due(vault, conn, primary, &mut entries).await?;
    Ok(((answers, rotated), entries))
}

/// A batch's Puts sealed under data key `data_key_id` and stored: each Put's answer, in the
/// batch's order, and the audit entries of those that wrote.
async fn seal_and_store(
    vault: &Vault,
    conn: &mut AnyConnection,
    data_key_id: i64,
    puts: &Batch,
) -> Result<(Vec<Result<SecretMeta, Status>>, Vec<Entry>), Status> {
    let data_key = vault
        .keys
        .get_or_load(&mut *conn, data_key_id)
        .await?
        .ok_or_else(|| Status::internal("the primary data key cannot be loaded"))?;
    let sealing = Sealing {
        vault,
        primary_id: data_key_id,
        data_key: &data_key,
        now: now_us(),
    };
    // The plain Puts (no check-and-set, no request id) take their versions and store their
    // rows together, a key written several times taking its versions in the batch's order;
    // the others follow one by one, as if they had come after them.
    let (plain, others): (Vec<_>, Vec<_>) = puts
        .iter()
        .partition(|(_, (_, put))| put.expected_version.is_none() && put.request_id.is_none());
    let mut entries = Vec::new();
    let mut answers = plain_puts(conn, &plain, &sealing, &mut entries).await?;
    for (i, (caller, put)) in others {
        answers.push((
            *i,
            put_one(conn, caller, put, &sealing, &mut entries).await?,
        ));
    }
    answers.sort_unstable_by_key(|(i, _)| *i);
    let answers = answers.into_iter().map(|(_, answer)| answer).collect();
    Ok((answers, entries))
}

/// Rotates the primary data key, in `conn`'s transaction, if `primary` (counted in it) has
/// reached its limit of encryptions; the rotation's audit entry goes into `entries`.
async fn rotate_if_due(
    vault: &Vault,
    conn: &mut AnyConnection,
    primary: PrimaryUse,
    entries: &mut Vec<Entry>,
) -> Result<bool, Status> {
    if primary.encryptions < vault.limits.rotate_after {
        return Ok(false);
    }
    let why = format!(
        "automatic: data key {} reached {} encryptions",
        primary.id, primary.encryptions
    );
    let (new_id, entry) = rotate_in_tx(vault, conn, &vault.self_id, &why).await?;
    tracing::info!(
        data_key = new_id,
        previous = primary.id,
        encryptions = primary.encryptions,
        "data key rotated automatically"
    );
    entries.push(entry);
    Ok(true)
}

/// How a batch's Puts are sealed and stored: with the primary data key, at the batch's time.
struct Sealing<'a> {
    vault: &'a Vault,
    primary_id: i64,
    data_key: &'a DataKey,
    now: i64,
}

impl Sealing<'_> {
    /// `value` sealed for `row`.
    // Architecture Invariant: no L3 value is stored unencrypted. The plaintext is dropped
    // (zeroized) with its request once the batch has its answer: kept until then, so that a
    // batch that lost to a concurrent transaction can seal it again.
    fn seal(&self, row: RowRef<'_>, value: &[u8]) -> Vec<u8> {
        self.data_key.encrypt(self.vault.keys.rng(), row, value)
    }

    /// The versions a new version `version` prunes: those beyond the newest N kept.
    fn prune_up_to(&self, version: i64) -> i64 {
        (version - self.vault.limits.keep_versions).max(0)
    }
}

/// A batch's answers, each with its index in the batch.
type Indexed = Vec<(usize, Result<SecretMeta, Status>)>;

/// Plain Puts, in order: their versions taken in one statement, their rows stored in another,
/// on PostgreSQL, whatever their number (a key's Puts take its versions in their order).
async fn plain_puts(
    conn: &mut AnyConnection,
    puts: &[&BatchPut],
    sealing: &Sealing<'_>,
    entries: &mut Vec<Entry>,
) -> Result<Indexed, Status> {
    if puts.is_empty() {
        return Ok(Vec::new());
    }
    let dialect = sealing.vault.db.dialect();
    let names: Vec<(&str, &str)> = puts
        .iter()
        .map(|(_, (_, put))| (put.name.user_id.as_str(), put.name.key.as_str()))
        .collect();
    let taken = db::next_versions(conn, dialect, &names, sealing.now).await?;
    let sealed: Vec<Vec<u8>> = puts
        .iter()
        .zip(&taken)
        .map(|((_, (_, put)), &(version, _))| sealing.seal(row(&put.name, version), &put.value))
        .collect();
    let new: Vec<_> = puts
        .iter()
        .zip(&taken)
        .zip(&sealed)
        .map(|(((_, (_, put)), &(version, _)), ciphertext)| NewVersion {
            row: row(&put.name, version),
            ciphertext,
            prune_up_to: sealing.prune_up_to(version),
        })
        .collect();
    let stored = db::store_versions(conn, dialect, &new, sealing.primary_id, sealing.now).await?;
    let mut answers = Vec::with_capacity(puts.len());
    for ((((i, (caller, put)), (version, created_us)), ciphertext), stored) in
        puts.iter().zip(taken).zip(sealed).zip(stored)
    {
        let written = Written {
            row: row(&put.name, version),
            request_id: None,
            ciphertext: &ciphertext,
            created_us,
            stored,
        };
        answers.push((*i, Ok(written.record(caller, sealing, entries))));
    }
    Ok(answers)
}

/// The row of `name`'s version `version`.
fn row(name: &SecretName, version: i64) -> RowRef<'_> {
    RowRef {
        user_id: name.user_id.as_str(),
        key: name.key.as_str(),
        version,
    }
}

/// One Put of a batch, after its plain ones: `Ok(Err)` is a refusal, decided before anything
/// changed; `Err` a failure of the transaction. Its audit entries go into `entries`.
async fn put_one(
    conn: &mut AnyConnection,
    caller: &str,
    put: &PutSecret,
    sealing: &Sealing<'_>,
    entries: &mut Vec<Entry>,
) -> Result<Result<SecretMeta, Status>, Status> {
    let PutSecret {
        request_id,
        name,
        expected_version,
        value,
    } = put;
    let expected_version = *expected_version;
    let (user_id, key) = (name.user_id.as_str(), name.key.as_str());
    if let Some(request_id) = &request_id
        && let Some(seen) = db::find_put_request(conn, request_id).await?
    {
        if (seen.user_id.as_str(), seen.key.as_str()) != (user_id, key) {
            return Ok(Err(with_reason(
                Code::FailedPrecondition,
                "REQUEST_ID_REUSED",
                "request_id was already used for another secret",
                &[("request_id", request_id.clone())],
            )));
        }
        // The answer the first call gave: the version it wrote, even if others came since.
        let Some(mut meta) = db::metadata(conn, user_id, key).await? else {
            return Ok(Err(Status::not_found("secret not found")));
        };
        meta.head.current_version = seen.version;
        return Ok(Ok(meta));
    }
    let next = db::next_version(conn, user_id, key, expected_version, sealing.now).await?;
    let (version, created_us) = match next {
        NextVersion::Taken {
            version,
            created_us,
        } => (version, created_us),
        NextVersion::Mismatch { current } => return Ok(Err(version_mismatch(current))),
    };
    let row = row(name, version);
    let ciphertext = sealing.seal(row, value);
    let new = NewVersion {
        row,
        ciphertext: &ciphertext,
        prune_up_to: sealing.prune_up_to(version),
    };
    let dialect = sealing.vault.db.dialect();
    let mut stored =
        db::store_versions(conn, dialect, &[new], sealing.primary_id, sealing.now).await?;
    let stored = stored
        .pop()
        .ok_or_else(|| Status::internal("a stored version went missing"))?;
    if let Some(request_id) = &request_id {
        db::insert_put_request(conn, request_id, row, sealing.now).await?;
    }
    let written = Written {
        row,
        request_id: request_id.as_deref(),
        ciphertext: &ciphertext,
        created_us,
        stored,
    };
    Ok(Ok(written.record(caller, sealing, entries)))
}

/// A version a Put stored, and what storing it did.
struct Written<'a> {
    row: RowRef<'a>,
    request_id: Option<&'a str>,
    ciphertext: &'a [u8],
    /// When the key was created.
    created_us: i64,
    stored: Stored,
}

impl Written<'_> {
    /// The Put's audit entries into `entries`, and its answer: the key's metadata as this
    /// transaction knows it.
    fn record(self, caller: &str, sealing: &Sealing<'_>, entries: &mut Vec<Entry>) -> SecretMeta {
        let RowRef {
            user_id,
            key,
            version,
        } = self.row;
        entries.push(
            Entry::new(caller, Action::Put.as_str(), target(user_id, key, version))
                .request_id(self.request_id.unwrap_or_default())
                .detail(format!("data_key={}", sealing.primary_id))
                .digest(digest(self.ciphertext)),
        );
        for pruned in self.stored.pruned {
            let pruned = target(user_id, key, pruned);
            entries.push(gone(caller, Action::Put, pruned, Gone::Pruned));
        }
        entries.push(current(caller, Action::Put, user_id, key, version));
        SecretMeta {
            versions: self.stored.versions,
            user_id: user_id.to_owned(),
            key: key.to_owned(),
            head: KeyHead {
                current_version: version,
                created_us: self.created_us,
                updated_us: sealing.now,
            },
        }
    }
}

fn version_mismatch(current: i64) -> Status {
    with_reason(
        Code::FailedPrecondition,
        "VERSION_MISMATCH",
        format!("expected_version does not match the current version {current}"),
        &[("current_version", current.to_string())],
    )
}

/// The record of a version (its audit target) that no longer has a readable value.
fn gone(caller: &str, action: Action, target: String, why: Gone) -> Entry {
    Entry::new(caller, action.as_str(), target)
        .detail(why.as_str())
        .digest(why.tombstone())
}

/// The record of a key's newest live version (0: none) after a change, which a read of the
/// newest version checks (Architecture Invariant: a rolled-back or replaced row is never served).
fn current(caller: &str, action: Action, user_id: &str, key: &str, version: i64) -> Entry {
    Entry::new(caller, action.as_str(), key_target(user_id, key))
        .detail(format!("current_version={version}"))
        .digest(current_version_digest(version))
}

/// DeleteUserSecret: soft-deletes or destroys the requested versions (all kept ones when none
/// are named); versions already in that state are left as they are.
pub(crate) async fn delete(
    vault: &Vault,
    caller: String,
    req: DeleteSecret,
) -> Result<pb::UserSecretMetadata, Status> {
    let meta = vault
        .ledger
        .write(move |conn| Box::pin(async move { delete_in_tx(conn, &caller, &req).await }))
        .await?;
    Ok(meta.into_pb())
}

async fn delete_in_tx(
    conn: &mut AnyConnection,
    caller: &str,
    req: &DeleteSecret,
) -> Result<(SecretMeta, Vec<Entry>), Status> {
    let (user_id, key) = (req.name.user_id.as_str(), req.name.key.as_str());
    let now = now_us();
    let mut meta = db::metadata(conn, user_id, key)
        .await?
        .ok_or_else(|| Status::not_found(format!("no secret `{key}` for user `{user_id}`")))?;
    if let Some(missing) = req
        .versions
        .iter()
        .find(|v| !meta.versions.iter().any(|kept| kept.version == **v))
    {
        return Err(Status::not_found(format!(
            "secret `{key}` has no version {missing}"
        )));
    }
    let mut entries = Vec::new();
    // Oldest first, so the records come in version order.
    for row in meta.versions.iter_mut().rev() {
        if !req.versions.is_empty() && !req.versions.contains(&row.version) {
            continue;
        }
        let why = if req.destroy && !row.is_destroyed() {
            db::destroy_version(conn, user_id, key, row, now).await?;
            Gone::Destroyed
        } else if !req.destroy && row.is_live() {
            db::soft_delete_version(conn, user_id, key, row, now).await?;
            Gone::Deleted
        } else {
            continue; // Already in the requested state: idempotent.
        };
        let target = target(user_id, key, row.version);
        entries.push(gone(caller, Action::Delete, target, why));
    }
    if !entries.is_empty() {
        db::touch_key(conn, &mut meta, now).await?;
        let newest_live = meta
            .versions
            .iter()
            .find(|row| row.is_live())
            .map_or(0, |row| row.version);
        entries.push(current(caller, Action::Delete, user_id, key, newest_live));
    }
    Ok((meta, entries))
}

/// RotateDataKey: a new primary data key; returns (previous, new) primary ids. With
/// `expected_primary`, only if that is still the primary's id.
pub(crate) async fn rotate(
    vault: &Vault,
    caller: String,
    expected_primary: Option<String>,
) -> Result<(i64, i64), Status> {
    let v = vault.clone();
    let ids = vault
        .ledger
        .write(move |conn| {
            Box::pin(async move {
                let current = db::primary_data_key_id(conn).await?;
                if let Some(expected) = expected_primary
                    && expected != current.to_string()
                {
                    return Err(with_reason(
                        Code::FailedPrecondition,
                        "PRIMARY_KEY_MISMATCH",
                        format!("the primary data key is {current}, not {expected}"),
                        &[("primary_key_id", current.to_string())],
                    ));
                }
                let (next, entry) = rotate_in_tx(&v, conn, &caller, "requested").await?;
                Ok(((current, next), vec![entry]))
            })
        })
        .await?;
    vault.keys.set_primary_hint(ids.1);
    vault.rewrap.wake();
    Ok(ids)
}

/// Demotes the primary data key and creates a new primary, in `conn`'s transaction.
async fn rotate_in_tx(
    vault: &Vault,
    conn: &mut AnyConnection,
    caller: &str,
    why: &str,
) -> Result<(i64, Entry), Status> {
    let next = db::next_data_key_id(conn).await?;
    let keyring = vault.keys.keyring();
    let (_, wrapped, kcv) = keyring.new_data_key(vault.keys.rng(), next);
    db::demote_primary(conn).await?;
    let wrapping = Wrapping {
        master_key_id: keyring.primary_id(),
        wrapped: &wrapped,
        kcv: &kcv,
    };
    db::insert_primary_data_key(conn, next, wrapping, now_us()).await?;
    // Not loaded into the shared key cache here: this transaction may still roll back.
    // The first use after the commit finds the id missing and loads it then.
    let entry = Entry::new(caller, Action::Rotate.as_str(), data_key_target(next)).detail(why);
    Ok((next, entry))
}
