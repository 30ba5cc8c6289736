//! Background rewrap: moves ciphertexts from demoted data keys to the primary one, in small
//! batches through the audit ledger (each batch one transaction, each row audited with its new
//! digest), so it survives a crash (the next run picks up what is left), runs safely on several
//! replicas (rows are claimed with `SKIP LOCKED` on PostgreSQL) and never blocks reads for long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orchestrator_audit::Entry;
use orchestrator_store::Dialect;
use sqlx::Row;
use tokio::sync::Notify;
use tonic::Status;

use crate::api::{Vault, store, target};
use crate::crypto::{RowRef, ciphertext_key_id, digest};

const REWRAP: &str = "vault/rewrap";
/// Rows per UPDATE statement (4 parameters each).
const UPDATE_CHUNK: usize = 250;
/// Targets per audit lookup.
const LOOKUP_CHUNK: usize = 500;

/// Progress of the current (or last) rewrap run, for GetKeyStatus.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    pub running: bool,
    pub started: Option<i64>,
    pub updated: Option<i64>,
    pub ended: Option<i64>,
    pub rows_done: i64,
    pub rows_per_second: f64,
}

/// Wakes the rewrap loop and reports its progress.
#[derive(Debug, Default)]
pub struct Rewrap {
    wake: Notify,
    progress: Mutex<Progress>,
}

impl Rewrap {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Runs for the life of the process: a pass whenever woken (a rotation here) or every `idle`
/// (a rotation on another replica), each pass until no row is left on a demoted key.
pub async fn run(vault: Vault, batch: i64, idle: Duration) {
    loop {
        let started = Instant::now();
        let mut done = 0;
        loop {
            match rewrap_batch(&vault, batch).await {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-6);
                    vault.rewrap.update(|p| {
                        if !p.running {
                            *p = Progress {
                                running: true,
                                started: Some(crate::now_us()),
                                ..Progress::default()
                            };
                        }
                        p.rows_done = done;
                        p.rows_per_second = rate;
                        p.updated = Some(crate::now_us());
                    });
                }
                Err(status) => {
                    tracing::warn!(error = %status.message(), "rewrap batch failed; retrying later");
                    break;
                }
            }
        }
        if done > 0 {
            retire_empty_keys(&vault).await;
            vault.rewrap.update(|p| {
                p.running = false;
                p.ended = Some(crate::now_us());
            });
            tracing::info!(
                rows = done,
                seconds = started.elapsed().as_secs_f64(),
                "rewrap finished"
            );
        }
        let _ = tokio::time::timeout(idle, vault.rewrap.wake.notified()).await;
    }
}

/// Re-encrypts up to `limit` rows under the primary data key; returns how many.
pub async fn rewrap_batch(vault: &Vault, limit: i64) -> Result<i64, Status> {
    let v = vault.clone();
    vault
        .ledger
        .write(move |conn| {
            Box::pin(async move {
                let claim = match v.db.dialect() {
                    Dialect::Postgres => {
                        "SELECT user_id, key, version, encrypted_value FROM user_vault \
                         WHERE encrypted_value IS NOT NULL AND data_key_id <> (SELECT id FROM data_keys WHERE state = 'primary') \
                         LIMIT $1 FOR UPDATE SKIP LOCKED"
                    }
                    Dialect::Sqlite => {
                        "SELECT user_id, key, version, encrypted_value FROM user_vault \
                         WHERE encrypted_value IS NOT NULL AND data_key_id <> (SELECT id FROM data_keys WHERE state = 'primary') \
                         LIMIT $1"
                    }
                };
                let rows = sqlx::query(claim).bind(limit).fetch_all(&mut *conn).await.map_err(store)?;
                if rows.is_empty() {
                    return Ok((0, Vec::new()));
                }
                let primary = sqlx::query(
                    "UPDATE data_keys SET encryptions = encryptions + $1 WHERE state = 'primary' RETURNING id",
                )
                .bind(rows.len() as i64)
                .fetch_one(&mut *conn)
                .await
                .map_err(store)?;
                let primary_id: i64 = primary.try_get("id").map_err(store)?;
                if v.keys.get(primary_id).is_none() {
                    v.keys.load(conn).await?;
                }
                let new_key = v.keys.get(primary_id).ok_or_else(|| Status::internal("primary data key missing"))?;
                let mut claimed = Vec::with_capacity(rows.len());
                for row in &rows {
                    let user_id: String = row.try_get("user_id").map_err(store)?;
                    let key: String = row.try_get("key").map_err(store)?;
                    let version: i64 = row.try_get("version").map_err(store)?;
                    let old: Vec<u8> = row.try_get("encrypted_value").map_err(store)?;
                    claimed.push((target(&user_id, &key, version), user_id, key, version, old));
                }
                let attested = attested_digests(&v, claimed.iter().map(|c| c.0.as_str())).await?;
                let mut rewrapped = Vec::with_capacity(claimed.len());
                for (target, user_id, key, version, old) in claimed {
                    // Never launder a rolled-back or foreign ciphertext into a fresh one.
                    if attested.get(&target) != Some(&digest(&old)) {
                        tracing::error!(%target, "not rewrapped: the row does not match its audit record");
                        continue;
                    }
                    let row_ref = RowRef { user_id: &user_id, key: &key, version };
                    let plaintext = ciphertext_key_id(&old)
                        .and_then(|id| v.keys.get(id))
                        .and_then(|old_key| old_key.decrypt(row_ref, &old));
                    let Some(plaintext) = plaintext else {
                        tracing::error!(%target, "not rewrapped: the ciphertext does not decrypt for its row");
                        continue;
                    };
                    let new = new_key.encrypt(v.keys.rng(), row_ref, &plaintext);
                    drop(plaintext);
                    rewrapped.push((target, user_id, key, version, new));
                }
                // One UPDATE per chunk of rows, not one per row.
                for chunk in rewrapped.chunks(UPDATE_CHUNK) {
                    let blob = match v.db.dialect() {
                        Dialect::Postgres => "BYTEA",
                        Dialect::Sqlite => "BLOB",
                    };
                    let values = (0..chunk.len())
                        .map(|i| {
                            let p = 2 + i * 4;
                            format!(
                                "(CAST(${} AS TEXT), CAST(${} AS TEXT), CAST(${} AS BIGINT), CAST(${} AS {blob}))",
                                p,
                                p + 1,
                                p + 2,
                                p + 3
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    // Only placeholders are generated; every value is bound.
                    let sql = format!(
                        "UPDATE user_vault SET encrypted_value = v.column4, data_key_id = $1 FROM (VALUES {values}) AS v \
                         WHERE user_vault.user_id = v.column1 AND user_vault.key = v.column2 AND user_vault.version = v.column3"
                    );
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(primary_id);
                    for (_, user_id, key, version, new) in chunk {
                        query = query.bind(user_id.clone()).bind(key.clone()).bind(*version).bind(new.clone());
                    }
                    query.execute(&mut *conn).await.map_err(store)?;
                }
                let entries: Vec<Entry> = rewrapped
                    .into_iter()
                    .map(|(target, _, _, _, new)| {
                        Entry::new(&v.self_id, REWRAP, target).detail(format!("data_key={primary_id}")).digest(digest(&new))
                    })
                    .collect();
                Ok((entries.len() as i64, entries))
            })
        })
        .await
}

/// The newest authentic digest the audit log holds for each of `targets`, in one query per
/// chunk rather than one per row.
async fn attested_digests<'a>(
    vault: &Vault,
    targets: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, Vec<u8>>, Status> {
    let targets: Vec<&str> = targets.collect();
    let mut found = HashMap::with_capacity(targets.len());
    for chunk in targets.chunks(LOOKUP_CHUNK) {
        let params = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Only placeholders are generated; every value is bound.
        let sql = format!(
            "SELECT {} FROM audit_log a LEFT JOIN audit_log p ON p.seq = a.seq - 1 \
             WHERE a.seq IN (SELECT MAX(seq) FROM audit_log WHERE target IN ({params}) AND digest IS NOT NULL GROUP BY target)",
            orchestrator_audit::attested_columns!()
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for target in chunk {
            query = query.bind(*target);
        }
        for row in query.fetch_all(vault.db.pool()).await.map_err(store)? {
            let target: String = row.try_get("a_target").map_err(store)?;
            if let Some(digest) = vault.ledger.attested(&row)? {
                found.insert(target, digest);
            }
        }
    }
    Ok(found)
}

/// Demoted keys that no ciphertext uses any more are retired (kept, never used again).
async fn retire_empty_keys(vault: &Vault) {
    let result = sqlx::query(
        "UPDATE data_keys SET state = 'retired' WHERE state = 'decrypt_only' \
         AND NOT EXISTS (SELECT 1 FROM user_vault v WHERE v.data_key_id = data_keys.id AND v.encrypted_value IS NOT NULL)",
    )
    .execute(vault.db.pool())
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not retire emptied data keys");
    }
}
