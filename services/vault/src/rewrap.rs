//! Background rewrap: moves ciphertexts from demoted data keys to the primary one, in small
//! batches through the audit ledger (each batch one transaction, each row audited with its new
//! digest), so it survives a crash (the next run picks up what is left), runs safely on several
//! replicas (rows are claimed with `SKIP LOCKED` on PostgreSQL) and never blocks reads for long.

use std::collections::HashMap;
use std::time::Instant;

use orchestrator_audit::Entry;
use orchestrator_store::now_us;
use tonic::Status;

use crate::audit::{Action, target};
use crate::config::RewrapPace;
use crate::crypto::{RowRef, ciphertext_key_id, digest};
use crate::db::{self, StoredValue};
use crate::state::{Progress, Vault};

/// Runs for the life of the process: a pass whenever woken (a rotation here) or every
/// `pace.interval` (a rotation on another replica), each pass until no row is left on a
/// demoted key.
pub(crate) async fn run(vault: Vault, pace: RewrapPace) {
    loop {
        let started = Instant::now();
        let mut done = 0;
        loop {
            match rewrap_batch(&vault, pace.batch).await {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
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
                Err(status) => {
                    tracing::warn!(error = %status.message(), "rewrap batch failed; retrying later");
                    break;
                }
            }
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

/// Re-encrypts up to `limit` rows under the primary data key; returns how many.
async fn rewrap_batch(vault: &Vault, limit: i64) -> Result<i64, Status> {
    let v = vault.clone();
    vault
        .ledger.write(move |conn| {
            Box::pin(async move {
                let stale = db::claim_stale(conn, v.db.dialect(), limit).await?;
                if stale.is_empty() {
                    return Ok((0, Vec::new()));
                }
                let primary = db::count_encryptions(conn, stale.len() as i64).await?;
                let new_key = v
                    .keys
                    .get_or_load(&mut *conn, primary.id)
                    .await?
                    .ok_or_else(|| Status::internal("primary data key missing"))?;
                let targets: Vec<String> = stale
                    .iter()
                    .map(|row| target(&row.user_id, &row.key, row.version))
                    .collect();
                let attested = attested_digests(&v, &targets).await?;
                let mut rewrapped = Vec::with_capacity(stale.len());
                let mut entries = Vec::with_capacity(stale.len());
                for (row, target) in stale.into_iter().zip(targets) {
                    let StoredValue {
                        user_id,
                        key,
                        version,
                        ciphertext: old,
                    } = row;
                    // Architecture Invariant: a rolled-back or replaced row is never served,
                    // nor laundered into a fresh ciphertext.
                    if attested.get(&target) != Some(&digest(&old)) {
                        tracing::error!(%target, "not rewrapped: the row does not match its audit record");
                        continue;
                    }
                    let row_ref = RowRef {
                        user_id: &user_id,
                        key: &key,
                        version,
                    };
                    let plaintext = ciphertext_key_id(&old)
                        .and_then(|id| v.keys.get(id))
                        .and_then(|old_key| old_key.decrypt(row_ref, &old));
                    let Some(plaintext) = plaintext else {
                        tracing::error!(%target, "not rewrapped: the ciphertext does not decrypt for its row");
                        continue;
                    };
                    let ciphertext = new_key.encrypt(v.keys.rng(), row_ref, &plaintext);
                    drop(plaintext);
                    entries.push(
                        Entry::new(&v.self_id, Action::Rewrap.as_str(), target)
                            .detail(format!("data_key={}", primary.id))
                            .digest(digest(&ciphertext)),
                    );
                    rewrapped.push(StoredValue {
                        user_id,
                        key,
                        version,
                        ciphertext,
                    });
                }
                db::store_rewrapped(conn, v.db.dialect(), primary.id, &rewrapped).await?;
                Ok((entries.len() as i64, entries))
            })
        })
        .await
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
