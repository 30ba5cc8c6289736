//! Background rewrap: moves ciphertexts from demoted data keys to the primary one, in batches:
//! read, checked against their audit records and re-encrypted, then stored in chunks, each a
//! concurrent ledger write (a transaction of its own, each row stored only if unchanged since it
//! was read, and audited with its new digest). So it survives a crash (the next run picks up
//! what is left), runs safely on several replicas (a row another replica rewrapped first is left
//! alone) and never holds the audit writer, which reads' records wait for: it takes the audit
//! head only to append a chunk's records and commit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use orchestrator_audit::Entry;
use orchestrator_store::{Dialect, now_us};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::audit::{Action, target};
use crate::config::RewrapPace;
use crate::crypto::{RowRef, ciphertext_key_id, digest};
use crate::db::{self, Rewrapped, RowKey, StoredValue};
use crate::state::{Progress, Vault};

/// Most rows per transaction when a batch is stored. A transaction holds the audit head only to
/// count, append and commit, so reads' records wait for that, not for its UPDATEs: 1,000 rows
/// measured 8-15 % faster than 250 (one head, count and commit instead of four), with as many
/// reads meanwhile (BENCHMARKS).
const STORE_CHUNK: usize = 1_000;

/// Batches in flight at once on PostgreSQL, each checked and re-encrypted, then stored in
/// transactions of its own on its own rows: one batch's UPDATE runs while another is prepared
/// or waits for the audit head to append its records and commit. SQLite's write lock is the
/// whole database (taken by BEGIN) and its pool four connections, so one there.
const BATCHES_IN_FLIGHT: usize = 2;

/// Runs for the life of the process: a pass whenever woken (a rotation here) or every
/// `pace.interval` (a rotation on another replica), each pass until no row is left on a
/// demoted key.
pub(crate) async fn run(vault: Vault, pace: RewrapPace) {
    let depth = match vault.db.dialect() {
        Dialect::Postgres => BATCHES_IN_FLIGHT,
        Dialect::Sqlite => 1,
    };
    loop {
        let started = Instant::now();
        let mut done = 0;
        // Sweeps in primary-key order, each from the start, until one needs no other
        // ([`Sweep::again`]).
        let mut sweep = Sweep::new();
        // Batches are read one after another, then checked, re-encrypted and stored up to
        // `depth` at once.
        let mut batches = VecDeque::new();
        'pass: loop {
            let read = read_stale(&vault, &sweep.after, pace.batch).await;
            // Room for this batch; at the end of a sweep (or on failure), every batch finished,
            // so the sweep knows what it stored.
            let more = matches!(&read, Ok(stale) if !stale.rows.is_empty());
            while batches.len() >= depth || !more {
                let Some(batch) = batches.pop_front() else {
                    break;
                };
                let Some(batch) = stored(batch).await else {
                    break 'pass;
                };
                sweep.stored(batch);
                done += batch.stored;
                progressed(&vault, done, started);
            }
            match read {
                Ok(stale) if more => {
                    sweep.read(&stale);
                    batches.push_back(tokio::spawn(rewrap(vault.clone(), stale)));
                }
                Ok(end) if sweep.again(end.primary_id) => sweep = Sweep::new(),
                Ok(_) => break,
                Err(status) => {
                    tracing::warn!(error = %status.message(), "rewrap batch failed; retrying later");
                    break;
                }
            }
        }
        // A failed pass leaves no batch of its own running into the next one.
        for batch in batches {
            done += stored(batch).await.map_or(0, |batch| batch.stored);
        }
        if done > 0 {
            if let Err(e) = db::retire_empty_keys(vault.db.pool()).await {
                tracing::warn!(error = %e, "could not retire emptied data keys");
            }
            vault.rewrap.update(|p| {
                p.running = false;
                p.ended = Some(now_us());
            });
            tracing::info!(
                rows = done,
                seconds = started.elapsed().as_secs_f64(),
                "rewrap finished"
            );
        }
        let _ = tokio::time::timeout(pace.interval, vault.rewrap.woken()).await;
    }
}

/// One sweep over the table, as far as it has got.
#[derive(Debug)]
struct Sweep {
    /// The last row read.
    after: RowKey,
    /// The primary data key when its first batch was read.
    primary: Option<i64>,
    /// Rows stored.
    stored: i64,
    /// Whether a batch stored fewer rows than it sent: a row changed under it.
    short: bool,
}

impl Sweep {
    /// From the start.
    fn new() -> Self {
        Self {
            after: RowKey::start(),
            primary: None,
            stored: 0,
            short: false,
        }
    }

    /// A batch read: the sweep goes on after its last row.
    fn read(&mut self, stale: &Stale) {
        if let Some(last) = stale.rows.last() {
            self.after = RowKey {
                user_id: last.user_id.clone(),
                key: last.key.clone(),
                version: last.version,
            };
        }
        self.primary.get_or_insert(stale.primary_id);
    }

    fn stored(&mut self, batch: Stored) {
        self.stored += batch.stored;
        self.short |= batch.stored < batch.sent;
    }

    /// Whether another sweep from the start may find a row this one left on a demoted key,
    /// given the primary data key now. Only after one that stored anything (so rows refused by
    /// their checks are not read again and again), and only if the primary changed since it
    /// began (what it stored is stale again) or a row changed under a batch. A row cannot
    /// appear on a demoted key behind it: a write counts its encryptions on the primary under
    /// the audit head, and runs again on the new one if a rotation came first (`write`), so a
    /// second sweep over a large table would read every row again to find nothing.
    fn again(&self, primary_now: i64) -> bool {
        self.stored > 0 && (self.short || self.primary != Some(primary_now))
    }
}

/// A batch stored: how many rows it sent to be stored (those that passed their checks), and
/// how many of them still held what was read and were stored.
#[derive(Debug, Clone, Copy)]
struct Stored {
    sent: i64,
    stored: i64,
}

/// A batch's [`Stored`], once it has finished; `None` (logged) if it failed or the process is
/// stopping.
async fn stored(batch: JoinHandle<Result<Stored, Status>>) -> Option<Stored> {
    match batch.await {
        Ok(Ok(stored)) => Some(stored),
        Ok(Err(status)) => {
            tracing::warn!(error = %status.message(), "rewrap batch failed; retrying later");
            None
        }
        Err(_) => None, // The process is stopping.
    }
}

/// Reports a pass's progress: `done` rows since `started`.
fn progressed(vault: &Vault, done: i64, started: Instant) {
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-6);
    vault.rewrap.update(|p| {
        if !p.running {
            *p = Progress {
                running: true,
                started: Some(now_us()),
                ..Progress::default()
            };
        }
        p.rows_per_second = rate;
        p.updated = Some(now_us());
    });
}

/// Stale rows read (none at the end of a sweep), not yet checked nor re-encrypted, with the
/// primary data key they were chosen against.
struct Stale {
    rows: Vec<StoredValue>,
    primary_id: i64,
}

/// A batch re-encrypted, not yet stored: the rows, and the primary data key they are now
/// encrypted under.
struct Prepared {
    rows: Vec<Rewrapped>,
    primary_id: i64,
}

/// Reads up to `limit` rows after `after` not on the primary data key. The primary is read
/// first and the rows chosen against it, so a sweep's first batch names the primary its rows
/// were chosen against, and its empty last read the primary then ([`Sweep::again`]).
async fn read_stale(vault: &Vault, after: &RowKey, limit: i64) -> Result<Stale, Status> {
    let mut conn = vault.db.pool().acquire().await.map_err(db_error)?;
    let primary_id = db::primary_data_key_id(&mut conn).await?;
    let rows = db::stale_values(&mut conn, primary_id, after, limit).await?;
    Ok(Stale { rows, primary_id })
}

/// One batch, read: checked, re-encrypted and stored.
async fn rewrap(vault: Vault, stale: Stale) -> Result<Stored, Status> {
    let prepared = prepare(&vault, stale).await?;
    let sent = prepared.rows.len() as i64;
    let stored = store(vault, prepared).await?;
    Ok(Stored { sent, stored })
}

/// Checks each stale row against its audit record and re-encrypts it under the primary data
/// key, outside the audit writer.
async fn prepare(vault: &Vault, stale: Stale) -> Result<Prepared, Status> {
    let Stale {
        rows: stale,
        primary_id,
    } = stale;
    let new_key = vault
        .keys
        .get_or_load_from(&vault.db, primary_id)
        .await?
        .ok_or_else(|| Status::internal("primary data key missing"))?;
    let targets: Vec<String> = stale
        .iter()
        .map(|row| target(&row.user_id, &row.key, row.version))
        .collect();
    let attested = attested_digests(vault, &targets).await?;
    // The keys the rows were sealed under (one, after a single rotation), loaded before the
    // loop, which then only computes: a thousand rows' digests, decryptions and encryptions
    // take milliseconds, kept off the workers that answer reads.
    let mut old_keys = HashMap::new();
    for id in stale
        .iter()
        .filter_map(|row| ciphertext_key_id(&row.ciphertext))
    {
        if let std::collections::hash_map::Entry::Vacant(slot) = old_keys.entry(id) {
            slot.insert(vault.keys.get_or_load_from(&vault.db, id).await?);
        }
    }
    let keys = vault.keys.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let mut rewrapped = Vec::with_capacity(stale.len());
        for (row, target) in stale.into_iter().zip(targets) {
            let StoredValue {
                user_id,
                key,
                version,
                ciphertext: old,
            } = row;
            // Architecture Invariant: a rolled-back or replaced row is never served, nor
            // laundered into a fresh ciphertext.
            if attested.get(&target) != Some(&digest(&old)) {
                tracing::error!(%target, "not rewrapped: the row does not match its audit record");
                continue;
            }
            let row_ref = RowRef {
                user_id: &user_id,
                key: &key,
                version,
            };
            let old_key = ciphertext_key_id(&old).and_then(|id| old_keys.get(&id)?.as_ref());
            let Some(plaintext) = old_key.and_then(|k| k.decrypt(row_ref, &old)) else {
                tracing::error!(%target, "not rewrapped: the ciphertext does not decrypt for its row");
                continue;
            };
            let new = new_key.encrypt(keys.rng(), row_ref, &plaintext);
            drop(plaintext);
            rewrapped.push(Rewrapped {
                user_id,
                key,
                version,
                old,
                new,
            });
        }
        rewrapped
    })
    .await
    .map_err(|_| Status::unavailable("the vault is stopping"))?;
    Ok(Prepared { rows, primary_id })
}

/// Stores a prepared batch; returns how many rows it stored.
///
/// Beside the audit writer (which every read's record waits for), not in it: each chunk is a
/// transaction of its own ([`orchestrator_audit::Concurrent`]) that stores each new ciphertext
/// where the row still holds the one read, then takes the audit head only to count the
/// encryptions on the primary key (so a rotation cannot slip in), record exactly the rows
/// stored, and commit.
async fn store(vault: Vault, batch: Prepared) -> Result<i64, Status> {
    let Prepared {
        mut rows,
        primary_id,
    } = batch;
    let mut stored = 0;
    while !rows.is_empty() {
        let chunk = rows.drain(..rows.len().min(STORE_CHUNK)).collect();
        stored += store_chunk(&vault, chunk, primary_id).await?;
    }
    Ok(stored)
}

/// One chunk in one transaction: nothing if the primary key changed since the batch was
/// prepared (the next pass re-encrypts under the new one); otherwise the rows that still hold
/// the ciphertext read are updated, and each gets its record. Returns how many were stored.
async fn store_chunk(
    vault: &Vault,
    rewrapped: Arc<[Rewrapped]>,
    primary_id: i64,
) -> Result<i64, Status> {
    vault
        .ledger
        .write_concurrently(|tx| {
            let (vault, rewrapped) = (vault.clone(), rewrapped.clone());
            Box::pin(async move {
                if db::primary_data_key_id(tx.conn()).await? != primary_id {
                    return Ok((0, Vec::new()));
                }
                let dialect = vault.db.dialect();
                let stored =
                    db::store_rewrapped(tx.conn(), dialect, primary_id, &rewrapped).await?;
                let by_row: HashMap<(&str, &str, i64), &Rewrapped> = rewrapped
                    .iter()
                    .map(|r| ((r.user_id.as_str(), r.key.as_str(), r.version), r))
                    .collect();
                let mut entries = Vec::with_capacity(stored.len());
                for (user_id, key, version) in &stored {
                    let Some(row) = by_row.get(&(user_id.as_str(), key.as_str(), *version)) else {
                        return Err(Status::internal("the rewrap stored a row it did not send"));
                    };
                    entries.push(
                        Entry::new(
                            &vault.self_id,
                            Action::Rewrap.as_str(),
                            target(user_id, key, *version),
                        )
                        .detail(format!("data_key={primary_id}"))
                        .digest(digest(&row.new)),
                    );
                }
                let n = stored.len() as i64;
                let primary = db::count_and_append(tx, dialect, n, &mut entries).await?;
                vault.keys.set_primary_hint(primary.id);
                if primary.id != primary_id {
                    // Rotated since the batch was prepared: this attempt rolls back (records
                    // and all), and the next one finds the new primary above and stores nothing.
                    return Err(orchestrator_store::concurrent_change());
                }
                Ok((n, entries))
            })
        })
        .await
}

fn db_error(e: sqlx::Error) -> Status {
    Status::from(&orchestrator_store::StoreError::from(e))
}

/// The newest authentic digest the audit log holds for each of `targets`.
async fn attested_digests(
    vault: &Vault,
    targets: &[String],
) -> Result<HashMap<String, Vec<u8>>, Status> {
    let mut found = HashMap::with_capacity(targets.len());
    for (target, attestation) in db::attestations(vault.db.pool(), targets).await? {
        if let Some(digest) = attestation.verify(&vault.ledger)? {
            found.insert(target, digest);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep whose batches were read under `primaries` and stored `(sent, stored)` rows.
    fn swept(primaries: &[i64], batches: &[(i64, i64)]) -> Sweep {
        let mut sweep = Sweep::new();
        for &primary_id in primaries {
            let stale = Stale {
                rows: Vec::new(),
                primary_id,
            };
            sweep.read(&stale);
        }
        for &(sent, stored) in batches {
            sweep.stored(Stored { sent, stored });
        }
        sweep
    }

    #[test]
    fn a_sweep_is_followed_by_another_only_if_it_may_have_left_a_row() {
        // Every row sent stored, under the primary it began with: the pass is done, without
        // reading every row again.
        assert!(!swept(&[2, 2], &[(1_000, 1_000), (500, 500)]).again(2));
        // Nothing stored (what is left was refused by its checks): done, whatever else.
        assert!(!swept(&[2], &[(3, 0)]).again(3));
        // A rotation since it began, seen by a later batch or only now: stale again.
        assert!(swept(&[2, 3], &[(1_000, 1_000), (10, 10)]).again(3));
        assert!(swept(&[2], &[(1_000, 1_000)]).again(3));
        // A row changed under a batch.
        assert!(swept(&[2], &[(1_000, 999)]).again(2));
    }
}
