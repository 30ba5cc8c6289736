//! The gRPC surface of the vault: validation at the edge, then storage through the audit
//! ledger (writes and reads of values are audited, fail closed).

use std::collections::BTreeMap;
use std::sync::Arc;

use orchestrator_audit::{Entry, Ledger};
use orchestrator_mesh::caller;
use orchestrator_mesh::status::{Violations, with_reason};
use orchestrator_proto::timestamp as ts;
use orchestrator_proto::vault::v1::{self as pb, vault_service_server::VaultService};
use orchestrator_store::{Database, StoreError};
use sqlx::{AnyConnection, Row};
use tonic::{Code, Request, Response, Status};
use zeroize::Zeroizing;

use crate::crypto::{RowRef, ciphertext_key_id, digest};
use crate::keys::DataKeys;
use crate::now_us;

const PUT: &str = "/orchestrator.vault.v1.VaultService/PutUserSecret";
const GET: &str = "/orchestrator.vault.v1.VaultService/GetUserSecret";
const BATCH_GET: &str = "/orchestrator.vault.v1.VaultService/BatchGetUserSecrets";
const DELETE: &str = "/orchestrator.vault.v1.VaultService/DeleteUserSecret";
const ROTATE: &str = "/orchestrator.vault.v1.VaultService/RotateDataKey";

const MAX_VALUE: usize = 65_536;
const MAX_BATCH: usize = 100;

/// Settings of the vault beyond the mesh's.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Versions kept per key (`VAULT_KEEP_VERSIONS`); older ones are pruned on write.
    pub keep_versions: i64,
    /// Encryptions after which a data key is rotated (`VAULT_ROTATE_AFTER`), well below the
    /// 2^32 random-nonce limit of AES-GCM.
    pub rotate_after: i64,
}

#[derive(Debug, Clone)]
pub struct Vault {
    pub db: Database,
    pub ledger: Ledger,
    pub keys: Arc<DataKeys>,
    pub settings: Settings,
    /// This service's own SPIFFE ID, the caller of its background work in audit records.
    pub self_id: String,
    pub rewrap: Arc<crate::rewrap::Rewrap>,
}

/// The audit target of one version. `/` and `%` are escaped so ids cannot collide.
pub fn target(user_id: &str, key: &str, version: i64) -> String {
    format!("{}{version}", target_prefix(user_id, key))
}

fn target_prefix(user_id: &str, key: &str) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('/', "%2F");
    format!("users/{}/secrets/{}/versions/", esc(user_id), esc(key))
}

/// The digest an audit record carries for a version that no longer has a readable value.
fn tombstone(kind: &str) -> Vec<u8> {
    digest(format!("orchestrator.vault tombstone: {kind}").as_bytes())
}

fn valid_user_id(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_key(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
}

fn check_user_key(v: &mut Violations, prefix: &str, user_id: &str, key: &str) {
    v.check(
        valid_user_id(user_id),
        format!("{prefix}user_id"),
        "1-128 printable ASCII characters without spaces",
    );
    v.check(
        valid_key(key),
        format!("{prefix}key"),
        "1-256 characters of [A-Za-z0-9_.-/]",
    );
}

pub fn store(e: sqlx::Error) -> Status {
    StoreError::from(e).into()
}

fn version_mismatch(current: i64) -> Status {
    with_reason(
        Code::FailedPrecondition,
        "VERSION_MISMATCH",
        format!("expected_version does not match the current version {current}"),
        &[("current_version", current.to_string())],
    )
}

/// The key's metadata, or `None` if it does not exist.
async fn metadata(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
) -> Result<Option<pb::UserSecretMetadata>, Status> {
    let Some(head) = sqlx::query(
        "SELECT current_version, created_us, updated_us FROM user_vault_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(store)?
    else {
        return Ok(None);
    };
    Ok(Some(pb::UserSecretMetadata {
        user_id: user_id.to_owned(),
        key: key.to_owned(),
        current_version: head.try_get("current_version").map_err(store)?,
        versions: versions(conn, user_id, key).await?,
        create_time: Some(ts(head.try_get("created_us").map_err(store)?)),
        update_time: Some(ts(head.try_get("updated_us").map_err(store)?)),
    }))
}

/// The kept versions of a key, newest first.
async fn versions(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
) -> Result<Vec<pb::UserSecretVersion>, Status> {
    let rows = sqlx::query(
        "SELECT version, created_us, deleted_us, destroyed FROM user_vault WHERE user_id = $1 AND key = $2 ORDER BY version DESC",
    )
    .bind(user_id)
    .bind(key)
    .fetch_all(&mut *conn)
    .await
    .map_err(store)?;
    rows.iter()
        .map(version_of)
        .collect::<Result<_, sqlx::Error>>()
        .map_err(store)
}

fn version_of(r: &sqlx::any::AnyRow) -> Result<pb::UserSecretVersion, sqlx::Error> {
    Ok(pb::UserSecretVersion {
        version: r.try_get("version")?,
        create_time: Some(ts(r.try_get("created_us")?)),
        delete_time: r.try_get::<Option<i64>, _>("deleted_us")?.map(ts),
        destroyed: r.try_get::<i64, _>("destroyed")? != 0,
    })
}

/// Takes the next version number of a key, applying check-and-set: one `UPDATE` for an
/// existing key, one `INSERT` for a new one. Refusals change nothing.
async fn next_version(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    expected: Option<i64>,
    now: i64,
) -> Result<(i64, i64), Status> {
    if expected != Some(0) {
        let bumped = sqlx::query(
            "UPDATE user_vault_keys SET current_version = current_version + 1, updated_us = $3 \
             WHERE user_id = $1 AND key = $2 AND ($4 < 0 OR current_version = $4) RETURNING current_version, created_us",
        )
        .bind(user_id)
        .bind(key)
        .bind(now)
        .bind(expected.unwrap_or(-1))
        .fetch_optional(&mut *conn)
        .await
        .map_err(store)?;
        if let Some(row) = bumped {
            return Ok((
                row.try_get("current_version").map_err(store)?,
                row.try_get("created_us").map_err(store)?,
            ));
        }
    }
    if expected.is_none_or(|n| n == 0) {
        let created = sqlx::query(
            "INSERT INTO user_vault_keys (user_id, key, current_version, created_us, updated_us) \
             VALUES ($1, $2, 1, $3, $3) ON CONFLICT DO NOTHING RETURNING created_us",
        )
        .bind(user_id)
        .bind(key)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(store)?;
        if created.is_some() {
            return Ok((1, now));
        }
    }
    let current: i64 =
        sqlx::query("SELECT current_version FROM user_vault_keys WHERE user_id = $1 AND key = $2")
            .bind(user_id)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(store)?
            .map(|r| r.try_get("current_version"))
            .transpose()
            .map_err(store)?
            .unwrap_or(0);
    Err(version_mismatch(current))
}

struct Put {
    caller: String,
    request_id: String,
    user_id: String,
    key: String,
    expected_version: Option<i64>,
    value: Zeroizing<Vec<u8>>,
}

impl Vault {
    async fn put_in_tx(
        &self,
        conn: &mut AnyConnection,
        put: Put,
    ) -> Result<(pb::UserSecretMetadata, Vec<Entry>), Status> {
        let Put {
            caller,
            request_id,
            user_id,
            key,
            expected_version,
            value,
        } = put;
        if !request_id.is_empty() {
            let seen =
                sqlx::query("SELECT user_id, key, version FROM put_requests WHERE request_id = $1")
                    .bind(&request_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(store)?;
            if let Some(seen) = seen {
                let same = seen.try_get::<String, _>("user_id").map_err(store)? == user_id
                    && seen.try_get::<String, _>("key").map_err(store)? == key;
                if !same {
                    return Err(with_reason(
                        Code::FailedPrecondition,
                        "REQUEST_ID_REUSED",
                        "request_id was already used for another secret",
                        &[("request_id", request_id)],
                    ));
                }
                // The answer the first call gave: the version it wrote, even if others came since.
                let mut meta = metadata(conn, &user_id, &key)
                    .await?
                    .ok_or_else(|| Status::not_found("secret not found"))?;
                meta.current_version = seen.try_get("version").map_err(store)?;
                return Ok((meta, Vec::new()));
            }
        }
        let now = now_us();
        let (version, created_us) =
            next_version(conn, &user_id, &key, expected_version, now).await?;

        // Count the encryption on the primary data key in the same transaction.
        let primary = sqlx::query("UPDATE data_keys SET encryptions = encryptions + 1 WHERE state = 'primary' RETURNING id, encryptions")
            .fetch_one(&mut *conn)
            .await
            .map_err(store)?;
        let (key_id, count): (i64, i64) = (
            primary.try_get("id").map_err(store)?,
            primary.try_get("encryptions").map_err(store)?,
        );
        let data_key = match self.keys.get(key_id) {
            Some(k) => k,
            None => {
                // Another replica rotated: learn the new key.
                self.keys.load(conn).await?;
                self.keys
                    .get(key_id)
                    .ok_or_else(|| Status::internal("the primary data key cannot be loaded"))?
            }
        };
        let row = RowRef {
            user_id: &user_id,
            key: &key,
            version,
        };
        let ciphertext = data_key.encrypt(self.keys.rng(), row, &value);
        drop(value);

        sqlx::query(
            "INSERT INTO user_vault (user_id, key, version, data_key_id, encrypted_value, created_us, destroyed) \
             VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(&user_id)
        .bind(&key)
        .bind(version)
        .bind(key_id)
        .bind(&ciphertext[..])
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(store)?;
        if !request_id.is_empty() {
            sqlx::query("INSERT INTO put_requests (request_id, user_id, key, version, created_us) VALUES ($1, $2, $3, $4, $5)")
                .bind(&request_id)
                .bind(&user_id)
                .bind(&key)
                .bind(version)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(store)?;
        }
        let mut entries = vec![
            Entry::new(&caller, PUT, target(&user_id, &key, version))
                .request_id(&request_id)
                .detail(format!("data_key={key_id}"))
                .digest(digest(&ciphertext)),
        ];

        // Keep the newest N versions.
        let pruned = if version > self.settings.keep_versions {
            sqlx::query("DELETE FROM user_vault WHERE user_id = $1 AND key = $2 AND version <= $3 RETURNING version")
                .bind(&user_id)
                .bind(&key)
                .bind(version - self.settings.keep_versions)
                .fetch_all(&mut *conn)
                .await
                .map_err(store)?
        } else {
            Vec::new()
        };
        for row in pruned {
            let v: i64 = row.try_get("version").map_err(store)?;
            entries.push(
                Entry::new(&caller, PUT, target(&user_id, &key, v))
                    .detail("pruned")
                    .digest(tombstone("pruned")),
            );
        }

        if count >= self.settings.rotate_after {
            let (new_id, entry) = self
                .rotate_in_tx(
                    conn,
                    &self.self_id,
                    &format!("automatic: data key {key_id} reached {count} encryptions"),
                )
                .await?;
            tracing::info!(
                data_key = new_id,
                previous = key_id,
                encryptions = count,
                "data key rotated automatically"
            );
            self.rewrap.wake();
            entries.push(entry);
        }
        // The response from what this transaction knows, plus the version list.
        let versions = versions(conn, &user_id, &key).await?;
        let meta = pb::UserSecretMetadata {
            current_version: version,
            versions,
            create_time: Some(ts(created_us)),
            update_time: Some(ts(now)),
            user_id,
            key,
        };
        Ok((meta, entries))
    }

    /// Demotes the primary data key and creates a new primary, in `conn`'s transaction.
    async fn rotate_in_tx(
        &self,
        conn: &mut AnyConnection,
        caller: &str,
        why: &str,
    ) -> Result<(i64, Entry), Status> {
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM data_keys")
            .fetch_one(&mut *conn)
            .await
            .map_err(store)?
            .try_get("next")
            .map_err(store)?;
        let (_, wrapped, kcv) = self.keys.keyring().new_data_key(self.keys.rng(), next);
        sqlx::query("UPDATE data_keys SET state = 'decrypt_only' WHERE state = 'primary'")
            .execute(&mut *conn)
            .await
            .map_err(store)?;
        sqlx::query(
            "INSERT INTO data_keys (id, master_key_id, wrapped, kcv, state, encryptions, created_us) VALUES ($1, $2, $3, $4, 'primary', 0, $5)",
        )
        .bind(next)
        .bind(self.keys.keyring().primary_id())
        .bind(&wrapped[..])
        .bind(&kcv[..])
        .bind(now_us())
        .execute(&mut *conn)
        .await
        .map_err(store)?;
        // Not loaded into the shared key cache here: this transaction may still roll back.
        // The first use after the commit finds the id missing and loads it then.
        Ok((
            next,
            Entry::new(caller, ROTATE, format!("data_keys/{next}")).detail(why),
        ))
    }

    /// Reads one live version's plaintext, checking its binding and its audit record. The
    /// caller must record the read before releasing the value.
    async fn read(
        &self,
        user_id: &str,
        key: &str,
        wanted: i64,
    ) -> Result<(pb::UserSecret, Entry), Status> {
        // One round trip: the row, and the newest audit record that carries a digest for it.
        const READ: &str = concat!(
            "SELECT v.version, v.encrypted_value, v.created_us, ",
            orchestrator_audit::attested_columns!(),
            " FROM (SELECT version, encrypted_value, created_us FROM user_vault \
               WHERE user_id = $1 AND key = $2 AND deleted_us IS NULL AND destroyed = 0 AND ($3 = 0 OR version = $3) \
               ORDER BY version DESC LIMIT 1) v \
             LEFT JOIN audit_log a ON a.seq = \
               (SELECT MAX(seq) FROM audit_log WHERE target = $4 || CAST(v.version AS TEXT) AND digest IS NOT NULL) \
             LEFT JOIN audit_log p ON p.seq = a.seq - 1"
        );
        // Rollback detection: the row must be what its newest (authentic) audit record says. A
        // write (or rewrap) committed between the row and the record being read looks like a
        // mismatch once, so a mismatch is read again before it is reported.
        let prefix = target_prefix(user_id, key);
        let mut attempt = 0;
        let (version, ciphertext, created_us, target) = loop {
            let row = sqlx::query(READ)
                .bind(user_id)
                .bind(key)
                .bind(wanted)
                .bind(&prefix)
                .fetch_optional(self.db.pool())
                .await
                .map_err(store)?
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "no live version of secret `{key}` for user `{user_id}`"
                    ))
                })?;
            let version: i64 = row.try_get("version").map_err(store)?;
            let ciphertext = row
                .try_get::<Option<Vec<u8>>, _>("encrypted_value")
                .map_err(store)?
                .ok_or_else(|| Status::data_loss("a live version has no ciphertext"))?;
            let target = format!("{prefix}{version}");
            match self.ledger.attested(&row)? {
                Some(expected) if expected == digest(&ciphertext) => {
                    break (
                        version,
                        ciphertext,
                        row.try_get::<i64, _>("created_us").map_err(store)?,
                        target,
                    );
                }
                _ if attempt == 0 => attempt += 1,
                _ => {
                    tracing::error!(%target, "stored ciphertext does not match its audit record: rolled back or replaced");
                    return Err(Status::data_loss(format!(
                        "{target} does not match its newest audit record: the row was rolled back or replaced"
                    )));
                }
            }
        };
        let key_id = ciphertext_key_id(&ciphertext)
            .ok_or_else(|| Status::data_loss(format!("{target}: malformed ciphertext")))?;
        let data_key = match self.keys.get(key_id) {
            Some(k) => k,
            None => {
                let mut conn = self.db.pool().acquire().await.map_err(store)?;
                self.keys.load(&mut conn).await?;
                self.keys.get(key_id).ok_or_else(|| {
                    Status::data_loss(format!("{target}: unknown data key {key_id}"))
                })?
            }
        };
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
        Ok((secret, Entry::new("", GET, target)))
    }
}

#[tonic::async_trait]
impl VaultService for Vault {
    async fn put_user_secret(
        &self,
        request: Request<pb::PutUserSecretRequest>,
    ) -> Result<Response<pb::PutUserSecretResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let mut req = request.into_inner();
        let value = Zeroizing::new(std::mem::take(&mut req.value));
        let mut v = Violations::new();
        check_user_key(&mut v, "", &req.user_id, &req.key);
        v.check(
            (1..=MAX_VALUE).contains(&value.len()),
            "value",
            "1-65,536 bytes",
        );
        v.check(
            req.expected_version.is_none_or(|n| n >= 0),
            "expected_version",
            "must not be negative",
        );
        v.check(
            req.request_id.len() <= 128,
            "request_id",
            "at most 128 characters",
        );
        v.finish()?;
        let put = Put {
            caller,
            request_id: req.request_id,
            user_id: req.user_id,
            key: req.key,
            expected_version: req.expected_version,
            value,
        };
        let vault = self.clone();
        let secret = self
            .ledger
            .write(move |conn| Box::pin(async move { vault.put_in_tx(conn, put).await }))
            .await?;
        Ok(Response::new(pb::PutUserSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn get_user_secret(
        &self,
        request: Request<pb::GetUserSecretRequest>,
    ) -> Result<Response<pb::GetUserSecretResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        check_user_key(&mut v, "", &req.user_id, &req.key);
        v.check(req.version >= 0, "version", "must not be negative");
        v.finish()?;
        let (secret, mut entry) = self.read(&req.user_id, &req.key, req.version).await?;
        entry.caller = caller;
        self.ledger.record(entry).await?;
        Ok(Response::new(pb::GetUserSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn batch_get_user_secrets(
        &self,
        request: Request<pb::BatchGetUserSecretsRequest>,
    ) -> Result<Response<pb::BatchGetUserSecretsResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        v.check(
            (1..=MAX_BATCH).contains(&req.requests.len()),
            "requests",
            "1-100 requests",
        );
        for (i, r) in req.requests.iter().enumerate() {
            check_user_key(&mut v, &format!("requests[{i}]."), &r.user_id, &r.key);
            v.check(
                r.version >= 0,
                format!("requests[{i}].version"),
                "must not be negative",
            );
        }
        v.finish()?;
        let mut secrets = Vec::with_capacity(req.requests.len());
        let mut entries = Vec::with_capacity(req.requests.len());
        for (i, r) in req.requests.iter().enumerate() {
            let (secret, mut entry) = self
                .read(&r.user_id, &r.key, r.version)
                .await
                .map_err(|s| Status::new(s.code(), format!("requests[{i}]: {}", s.message())))?;
            entry.caller = caller.clone();
            entry.method = BATCH_GET.to_owned();
            secrets.push(secret);
            entries.push(entry);
        }
        // Every read is recorded before any value is released.
        futures::future::try_join_all(entries.into_iter().map(|e| self.ledger.record(e))).await?;
        Ok(Response::new(pb::BatchGetUserSecretsResponse { secrets }))
    }

    async fn list_user_secrets(
        &self,
        request: Request<pb::ListUserSecretsRequest>,
    ) -> Result<Response<pb::ListUserSecretsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.check(
            valid_user_id(&req.user_id),
            "user_id",
            "1-128 printable ASCII characters without spaces",
        );
        v.check(req.page_size >= 0, "page_size", "must not be negative");
        let after = decode_token(&req.page_token);
        v.check(
            after.is_some(),
            "page_token",
            "not a token this service issued",
        );
        v.finish()?;
        let after = after.unwrap_or_default();
        let page = match req.page_size {
            0 => 50,
            n => i64::from(n).min(1000),
        };
        // Two queries for a page, whatever its size: the keys, then all their versions.
        let rows = sqlx::query(
            "SELECT key, current_version, created_us, updated_us FROM user_vault_keys \
             WHERE user_id = $1 AND key > $2 ORDER BY key LIMIT $3",
        )
        .bind(&req.user_id)
        .bind(&after)
        .bind(page + 1)
        .fetch_all(self.db.pool())
        .await
        .map_err(store)?;
        let mut heads = rows
            .iter()
            .map(|r| {
                Ok(pb::UserSecretMetadata {
                    user_id: req.user_id.clone(),
                    key: r.try_get("key")?,
                    current_version: r.try_get("current_version")?,
                    versions: Vec::new(),
                    create_time: Some(ts(r.try_get("created_us")?)),
                    update_time: Some(ts(r.try_get("updated_us")?)),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(store)?;
        let next_page_token = if heads.len() as i64 > page {
            heads.truncate(page as usize);
            heads
                .last()
                .map(|h| encode_token(&h.key))
                .unwrap_or_default()
        } else {
            String::new()
        };
        if let Some(last) = heads.last().map(|h| h.key.clone()) {
            let rows = sqlx::query(
                "SELECT key, version, created_us, deleted_us, destroyed FROM user_vault \
                 WHERE user_id = $1 AND key > $2 AND key <= $3 ORDER BY key, version DESC",
            )
            .bind(&req.user_id)
            .bind(&after)
            .bind(&last)
            .fetch_all(self.db.pool())
            .await
            .map_err(store)?;
            let mut by_key: BTreeMap<String, Vec<pb::UserSecretVersion>> = BTreeMap::new();
            for r in &rows {
                by_key
                    .entry(r.try_get("key").map_err(store)?)
                    .or_default()
                    .push(version_of(r).map_err(store)?);
            }
            for head in &mut heads {
                head.versions = by_key.remove(&head.key).unwrap_or_default();
            }
        }
        let secrets = heads
            .into_iter()
            .filter(|meta| {
                req.show_deleted
                    || meta
                        .versions
                        .iter()
                        .any(|v| v.delete_time.is_none() && !v.destroyed)
            })
            .collect();
        Ok(Response::new(pb::ListUserSecretsResponse {
            secrets,
            next_page_token,
        }))
    }

    async fn delete_user_secret(
        &self,
        request: Request<pb::DeleteUserSecretRequest>,
    ) -> Result<Response<pb::DeleteUserSecretResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let mut v = Violations::new();
        check_user_key(&mut v, "", &req.user_id, &req.key);
        for (i, version) in req.versions.iter().enumerate() {
            v.check(*version > 0, format!("versions[{i}]"), "must be positive");
        }
        v.finish()?;
        let secret = self
            .ledger
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    let rows = sqlx::query("SELECT version, deleted_us, destroyed FROM user_vault WHERE user_id = $1 AND key = $2")
                        .bind(&req.user_id)
                        .bind(&req.key)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(store)?;
                    if metadata(conn, &req.user_id, &req.key).await?.is_none() {
                        return Err(Status::not_found(format!("no secret `{}` for user `{}`", req.key, req.user_id)));
                    }
                    let mut present = Vec::new();
                    for r in &rows {
                        let version: i64 = r.try_get("version").map_err(store)?;
                        let deleted = r.try_get::<Option<i64>, _>("deleted_us").map_err(store)?.is_some();
                        let destroyed = r.try_get::<i64, _>("destroyed").map_err(store)? != 0;
                        present.push((version, deleted, destroyed));
                    }
                    if let Some(missing) = req.versions.iter().find(|v| !present.iter().any(|p| p.0 == **v)) {
                        return Err(Status::not_found(format!("secret `{}` has no version {missing}", req.key)));
                    }
                    let mut entries = Vec::new();
                    for (version, deleted, destroyed) in present {
                        if !req.versions.is_empty() && !req.versions.contains(&version) {
                            continue;
                        }
                        let (sql, kind) = if req.destroy && !destroyed {
                            (
                                "UPDATE user_vault SET encrypted_value = NULL, data_key_id = NULL, destroyed = 1, \
                                 deleted_us = COALESCE(deleted_us, $4) WHERE user_id = $1 AND key = $2 AND version = $3",
                                "destroyed",
                            )
                        } else if !req.destroy && !deleted && !destroyed {
                            ("UPDATE user_vault SET deleted_us = $4 WHERE user_id = $1 AND key = $2 AND version = $3", "deleted")
                        } else {
                            continue; // Already in the requested state: idempotent.
                        };
                        sqlx::query(sql).bind(&req.user_id).bind(&req.key).bind(version).bind(now).execute(&mut *conn).await.map_err(store)?;
                        entries.push(Entry::new(&caller, DELETE, target(&req.user_id, &req.key, version)).detail(kind).digest(tombstone(kind)));
                    }
                    if !entries.is_empty() {
                        sqlx::query("UPDATE user_vault_keys SET updated_us = $3 WHERE user_id = $1 AND key = $2")
                            .bind(&req.user_id)
                            .bind(&req.key)
                            .bind(now)
                            .execute(&mut *conn)
                            .await
                            .map_err(store)?;
                    }
                    let meta = metadata(conn, &req.user_id, &req.key).await?.ok_or_else(|| Status::internal("secret vanished"))?;
                    Ok((meta, entries))
                })
            })
            .await?;
        Ok(Response::new(pb::DeleteUserSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn rotate_data_key(
        &self,
        request: Request<pb::RotateDataKeyRequest>,
    ) -> Result<Response<pb::RotateDataKeyResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = request.into_inner();
        let vault = self.clone();
        let (previous, next) = self
            .ledger
            .write(move |conn| {
                Box::pin(async move {
                    let current: i64 =
                        sqlx::query("SELECT id FROM data_keys WHERE state = 'primary'")
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(store)?
                            .try_get("id")
                            .map_err(store)?;
                    if !req.expected_primary_key_id.is_empty()
                        && req.expected_primary_key_id != current.to_string()
                    {
                        return Err(with_reason(
                            Code::FailedPrecondition,
                            "PRIMARY_KEY_MISMATCH",
                            format!(
                                "the primary data key is {current}, not {}",
                                req.expected_primary_key_id
                            ),
                            &[("primary_key_id", current.to_string())],
                        ));
                    }
                    let (next, entry) = vault.rotate_in_tx(conn, &caller, "requested").await?;
                    Ok(((current, next), vec![entry]))
                })
            })
            .await?;
        self.rewrap.wake();
        let keys = self.data_key_status().await?;
        let find = |id: i64| keys.iter().find(|k| k.id == id.to_string()).cloned();
        Ok(Response::new(pb::RotateDataKeyResponse {
            primary_key: find(next),
            previous_primary_key: find(previous),
        }))
    }

    async fn get_key_status(
        &self,
        _request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::GetKeyStatusResponse>, Status> {
        let data_keys = self.data_key_status().await?;
        let keyring = self.keys.keyring();
        let master_keys = keyring
            .ids()
            .map(|id| pb::MasterKey {
                id: id.to_owned(),
                primary: id == keyring.primary_id(),
                wrapped_data_key_count: data_keys.iter().filter(|k| k.master_key_id == id).count()
                    as i64,
            })
            .collect();
        let pending: i64 = data_keys
            .iter()
            .filter(|k| k.state != pb::DataKeyState::Primary as i32)
            .map(|k| k.ciphertext_count)
            .sum();
        let total: i64 = data_keys.iter().map(|k| k.ciphertext_count).sum();
        let primary = data_keys
            .iter()
            .find(|k| k.state == pb::DataKeyState::Primary as i32);
        let progress = self.rewrap.progress();
        let rewrap = pb::RewrapProgress {
            running: progress.running || pending > 0,
            target_data_key_id: primary.map(|k| k.id.clone()).unwrap_or_default(),
            rows_total: total,
            rows_done: total - pending,
            rows_per_second: progress.rows_per_second,
            start_time: progress.started.map(ts),
            update_time: progress.updated.map(ts),
            end_time: progress.ended.filter(|_| pending == 0).map(ts),
        };
        Ok(Response::new(pb::GetKeyStatusResponse {
            master_keys,
            data_keys,
            rewrap: Some(rewrap),
        }))
    }
}

impl Vault {
    async fn data_key_status(&self) -> Result<Vec<pb::DataKey>, Status> {
        let rows = sqlx::query(
            "SELECT d.id, d.state, d.master_key_id, d.encryptions, d.created_us, \
                    (SELECT COUNT(*) FROM user_vault v WHERE v.data_key_id = d.id AND v.encrypted_value IS NOT NULL) AS ciphertexts \
             FROM data_keys d ORDER BY d.id",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(store)?;
        rows.iter()
            .map(|r| {
                let state = match r.try_get::<String, _>("state")?.as_str() {
                    "primary" => pb::DataKeyState::Primary,
                    "decrypt_only" => pb::DataKeyState::DecryptOnly,
                    _ => pb::DataKeyState::Retired,
                };
                Ok(pb::DataKey {
                    id: r.try_get::<i64, _>("id")?.to_string(),
                    state: state as i32,
                    master_key_id: r.try_get("master_key_id")?,
                    encryption_count: r.try_get("encryptions")?,
                    rotation_threshold: self.settings.rotate_after,
                    ciphertext_count: r.try_get("ciphertexts")?,
                    create_time: Some(ts(r.try_get("created_us")?)),
                    demote_time: None,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(store)
    }
}

/// Page tokens are opaque to clients: the last key of the page, base64url.
fn encode_token(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_token(token: &str) -> Option<String> {
    use base64::Engine as _;
    if token.is_empty() {
        return Some(String::new());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes).ok().filter(|k| valid_key(k))
}
