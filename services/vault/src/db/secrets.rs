//! The secrets: `user_vault_keys` (one row per user and key, the version counter),
//! `user_vault` (one row per kept version, its ciphertext) and `put_requests` (idempotent Put).

use std::collections::{BTreeMap, HashMap};

use orchestrator_fields::Page;
use orchestrator_proto::timestamp as ts;
use orchestrator_proto::vault::v1 as pb;
use orchestrator_store::{Dialect, PackedBytes, StoreError};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use super::Attestation;
use crate::crypto::RowRef;

/// A key's row: its newest version number and times.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct KeyHead {
    pub(crate) current_version: i64,
    pub(crate) created_us: i64,
    pub(crate) updated_us: i64,
}

/// One kept version, without its value.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct VersionRow {
    pub(crate) version: i64,
    pub(crate) created_us: i64,
    pub(crate) deleted_us: Option<i64>,
    destroyed: i64,
}

impl VersionRow {
    /// A version just stored at `now`.
    fn new(version: i64, now: i64) -> Self {
        Self {
            version,
            created_us: now,
            deleted_us: None,
            destroyed: 0,
        }
    }

    pub(crate) fn is_destroyed(&self) -> bool {
        self.destroyed != 0
    }

    /// Readable: neither deleted nor destroyed.
    pub(crate) fn is_live(&self) -> bool {
        self.deleted_us.is_none() && !self.is_destroyed()
    }

    fn into_pb(self) -> pb::UserSecretVersion {
        pb::UserSecretVersion {
            version: self.version,
            create_time: Some(ts(self.created_us)),
            delete_time: self.deleted_us.map(ts),
            destroyed: self.is_destroyed(),
        }
    }
}

/// A key with its kept versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretMeta {
    pub(crate) user_id: String,
    pub(crate) key: String,
    pub(crate) head: KeyHead,
    pub(crate) versions: Vec<VersionRow>,
}

impl SecretMeta {
    pub(crate) fn has_live_version(&self) -> bool {
        self.versions.iter().any(VersionRow::is_live)
    }

    pub(crate) fn into_pb(self) -> pb::UserSecretMetadata {
        pb::UserSecretMetadata {
            user_id: self.user_id,
            key: self.key,
            current_version: self.head.current_version,
            versions: self.versions.into_iter().map(VersionRow::into_pb).collect(),
            create_time: Some(ts(self.head.created_us)),
            update_time: Some(ts(self.head.updated_us)),
        }
    }
}

/// The key's metadata, or `None` if it does not exist.
pub(crate) async fn metadata(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
) -> Result<Option<SecretMeta>, StoreError> {
    let head: Option<KeyHead> = sqlx::query_as(
        "SELECT current_version, created_us, updated_us FROM user_vault_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(head) = head else {
        return Ok(None);
    };
    Ok(Some(SecretMeta {
        user_id: user_id.to_owned(),
        key: key.to_owned(),
        head,
        versions: versions(conn, user_id, key).await?,
    }))
}

/// The kept versions of a key, newest first.
pub(crate) async fn versions(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
) -> Result<Vec<VersionRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT version, created_us, deleted_us, destroyed FROM user_vault WHERE user_id = $1 AND key = $2 ORDER BY version DESC",
    )
    .bind(user_id)
    .bind(key)
    .fetch_all(&mut *conn)
    .await?)
}

#[derive(sqlx::FromRow)]
struct ListedKey {
    key: String,
    #[sqlx(flatten)]
    head: KeyHead,
}

#[derive(sqlx::FromRow)]
struct ListedVersion {
    key: String,
    #[sqlx(flatten)]
    version: VersionRow,
}

/// One page of a user's keys in key order, each with its versions, and the next page's token.
/// Two queries whatever the page size: the keys, then all their versions.
pub(crate) async fn list_secrets(
    pool: &AnyPool,
    user_id: &str,
    page: &Page,
) -> Result<(Vec<SecretMeta>, String), StoreError> {
    let after = page
        .after()
        .and_then(<[String]>::first)
        .map_or("", String::as_str);
    let mut keys: Vec<ListedKey> = sqlx::query_as(
        "SELECT key, current_version, created_us, updated_us FROM user_vault_keys \
         WHERE user_id = $1 AND key > $2 ORDER BY key LIMIT $3",
    )
    .bind(user_id)
    .bind(after)
    .bind(page.limit())
    .fetch_all(pool)
    .await?;
    let next_page_token = page.finish(&mut keys, |k| vec![k.key.clone()]);
    let mut by_key: BTreeMap<String, Vec<VersionRow>> = BTreeMap::new();
    if let Some(last) = keys.last() {
        let rows: Vec<ListedVersion> = sqlx::query_as(
            "SELECT key, version, created_us, deleted_us, destroyed FROM user_vault \
             WHERE user_id = $1 AND key > $2 AND key <= $3 ORDER BY key, version DESC",
        )
        .bind(user_id)
        .bind(after)
        .bind(&last.key)
        .fetch_all(pool)
        .await?;
        for row in rows {
            by_key.entry(row.key).or_default().push(row.version);
        }
    }
    let secrets = keys
        .into_iter()
        .map(|k| SecretMeta {
            user_id: user_id.to_owned(),
            versions: by_key.remove(&k.key).unwrap_or_default(),
            key: k.key,
            head: k.head,
        })
        .collect();
    Ok((secrets, next_page_token))
}

/// What [`next_version`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NextVersion {
    /// The version this write takes, and when the key was created.
    Taken { version: i64, created_us: i64 },
    /// The check-and-set failed; nothing changed. `current` is 0 for a missing key.
    Mismatch { current: i64 },
}

#[derive(sqlx::FromRow)]
struct Bumped {
    current_version: i64,
    created_us: i64,
}

/// Takes the next version number of a key, applying check-and-set (`expected`: `None` =
/// unconditional, `Some(0)` = create only, `Some(n)` = only if the current version is n): one
/// statement, an upsert for an unconditional write, an `UPDATE` or an `INSERT` otherwise
/// (plus a `SELECT` of the current version when the check fails).
pub(crate) async fn next_version(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    expected: Option<i64>,
    now: i64,
) -> Result<NextVersion, StoreError> {
    const UPSERT: &str = "INSERT INTO user_vault_keys (user_id, key, current_version, created_us, updated_us) \
         VALUES ($1, $2, 1, $3, $3) ON CONFLICT (user_id, key) DO UPDATE SET \
         current_version = user_vault_keys.current_version + 1, updated_us = $3 \
         RETURNING current_version, created_us";
    const UPDATE: &str = "UPDATE user_vault_keys SET current_version = current_version + 1, updated_us = $3 \
         WHERE user_id = $1 AND key = $2 AND current_version = $4 RETURNING current_version, created_us";
    const INSERT: &str = "INSERT INTO user_vault_keys (user_id, key, current_version, created_us, updated_us) \
         VALUES ($1, $2, 1, $3, $3) ON CONFLICT DO NOTHING RETURNING current_version, created_us";
    let sql = match expected {
        None => UPSERT,
        Some(0) => INSERT,
        Some(_) => UPDATE,
    };
    let taken: Option<Bumped> = sqlx::query_as(sql)
        .bind(user_id)
        .bind(key)
        .bind(now)
        .bind(expected.unwrap_or(-1))
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = taken {
        return Ok(NextVersion::Taken {
            version: row.current_version,
            created_us: row.created_us,
        });
    }
    let current: Option<(i64,)> = sqlx::query_as(
        "SELECT current_version FROM user_vault_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(NextVersion::Mismatch {
        current: current.map_or(0, |(n,)| n),
    })
}

/// The next version of each of `keys` (user id, key), taken unconditionally as
/// [`next_version`] does with no expected version: the version each takes and when its key was
/// created, in order. A key may come more than once: each time takes the version after the one
/// before. One statement on PostgreSQL whatever the number of keys, one per entry on SQLite.
pub(crate) async fn next_versions(
    conn: &mut AnyConnection,
    dialect: Dialect,
    keys: &[(&str, &str)],
    now: i64,
) -> Result<Vec<(i64, i64)>, StoreError> {
    if dialect == Dialect::Sqlite {
        let mut taken = Vec::with_capacity(keys.len());
        for (user_id, key) in keys {
            match next_version(conn, user_id, key, None, now).await? {
                NextVersion::Taken {
                    version,
                    created_us,
                } => taken.push((version, created_us)),
                NextVersion::Mismatch { .. } => {
                    return Err(StoreError::Other(
                        "an unconditional version refused".to_owned(),
                    ));
                }
            }
        }
        return Ok(taken);
    }
    // One statement text whatever the number of keys (a JSON parameter); each key's row is
    // found through the unique index the conflict checks, and moves once by the number of
    // versions it takes (an upsert may not change one row twice).
    const UPSERT_MANY: &str = "INSERT INTO user_vault_keys (user_id, key, current_version, created_us, updated_us) \
         SELECT r.user_id, r.key, r.n, $2, $2 FROM json_to_recordset(CAST($1 AS json)) AS r (user_id TEXT, key TEXT, n BIGINT) \
         ON CONFLICT (user_id, key) DO UPDATE SET \
         current_version = user_vault_keys.current_version + EXCLUDED.current_version, updated_us = $2 \
         RETURNING user_id, key, current_version, created_us";
    // Each key once, in the order first seen (the order its row is locked in), with its count.
    let (names, of) = distinct_keys(keys.iter().copied());
    let mut counts = vec![0_i64; names.len()];
    for &k in &of {
        counts[k] += 1;
    }
    #[derive(serde::Serialize)]
    struct Count<'a> {
        user_id: &'a str,
        key: &'a str,
        n: i64,
    }
    let json: Vec<Count<'_>> = names
        .iter()
        .zip(&counts)
        .map(|(&(user_id, key), &n)| Count { user_id, key, n })
        .collect();
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(UPSERT_MANY)
        .bind(orchestrator_store::json_param(&json)?)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    let mut by_key: HashMap<(String, String), (i64, i64)> = rows
        .into_iter()
        .map(|(user_id, key, newest, created_us)| ((user_id, key), (newest, created_us)))
        .collect();
    // Each key's next version to hand out (its first new one), and when it was created.
    let mut next: Vec<(i64, i64)> = names
        .iter()
        .zip(&counts)
        .map(|((user_id, key), n)| {
            by_key
                .remove(&((*user_id).to_owned(), (*key).to_owned()))
                .map(|(newest, created_us)| (newest - n + 1, created_us))
                .ok_or_else(|| StoreError::Other("a key's version was not taken".to_owned()))
        })
        .collect::<Result<_, _>>()?;
    Ok(of
        .into_iter()
        .map(|k| {
            let (version, created_us) = &mut next[k];
            *version += 1;
            (*version - 1, *created_us)
        })
        .collect())
}

/// Each distinct (user id, key) of `names` once, in the order first seen, and the place of
/// each of `names` among them.
fn distinct_keys<'a>(
    names: impl Iterator<Item = (&'a str, &'a str)>,
) -> (Vec<(&'a str, &'a str)>, Vec<usize>) {
    let (mut distinct, mut index) = (Vec::new(), HashMap::new());
    let of = names
        .map(|name| {
            *index.entry(name).or_insert_with(|| {
                distinct.push(name);
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, of)
}

/// A new version to store: its row, its ciphertext, and the versions up to `prune_up_to` to
/// delete with it (0: none).
pub(crate) struct NewVersion<'a> {
    pub(crate) row: RowRef<'a>,
    pub(crate) ciphertext: &'a [u8],
    pub(crate) prune_up_to: i64,
}

/// What [`store_versions`] did for one new version: its key's kept versions after it, newest
/// first, and the versions it pruned.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    pub(crate) versions: Vec<VersionRow>,
    pub(crate) pruned: Vec<i64>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    k: i64,
    #[sqlx(flatten)]
    version: VersionRow,
    /// 0: an earlier version, as the statement began; 1: deleted; 2: found to delete.
    kind: i64,
}

/// One key of a [`store_versions`] call: the first and the last of its new versions' prune
/// points.
struct KeyPrunes<'a> {
    user_id: &'a str,
    key: &'a str,
    first: i64,
    last: i64,
}

/// Stores new versions, each encrypted under data key `data_key_id`, prunes each key's
/// versions as its [`NewVersion`] says, and lists the versions kept: what happened to each, in
/// order, as if each was stored after the one before (a key's versions come in increasing
/// order). One statement on PostgreSQL whatever the number of versions, three per version on
/// SQLite.
pub(crate) async fn store_versions(
    conn: &mut AnyConnection,
    dialect: Dialect,
    new: &[NewVersion<'_>],
    data_key_id: i64,
    now: i64,
) -> Result<Vec<Stored>, StoreError> {
    if dialect == Dialect::Sqlite {
        let mut all = Vec::with_capacity(new.len());
        for n in new {
            let (row, up_to) = (n.row, n.prune_up_to);
            insert_version(conn, row, data_key_id, n.ciphertext, now).await?;
            let pruned = if up_to > 0 {
                prune_versions(conn, row.user_id, row.key, up_to).await?
            } else {
                Vec::new()
            };
            let versions = versions(conn, row.user_id, row.key).await?;
            all.push(Stored { versions, pruned });
        }
        return Ok(all);
    }
    // The keys, each once, with the prune points of their first and last new versions (a
    // key's versions come in order, so its prune points do too).
    let (names, key_of) = distinct_keys(new.iter().map(|n| (n.row.user_id, n.row.key)));
    let mut keys: Vec<KeyPrunes<'_>> = names
        .into_iter()
        .map(|(user_id, key)| KeyPrunes {
            user_id,
            key,
            first: i64::MAX,
            last: 0,
        })
        .collect();
    for (n, &k) in new.iter().zip(&key_of) {
        keys[k].first = keys[k].first.min(n.prune_up_to);
        keys[k].last = keys[k].last.max(n.prune_up_to);
    }
    // The keys and the versions travel as JSON parameters, so the text (and its cached plan)
    // is the same for any batch; the ciphertexts as one binary parameter, each found by its
    // place in it (as base64 inside the JSON, parsing them took a quarter of the statement's
    // time). A version its own batch prunes (a key written more times than it keeps) is not
    // stored at all. The SELECT sees the table as it was before the statement: each key's
    // earlier versions from its first new version's prune point on, and the DELETE's
    // RETURNING says which of them the last one pruned; from these the answer of each new
    // version is worked out below. The table is only ever reached by an index probe per key:
    // `OFFSET 0` keeps each LATERAL subquery from being flattened into a join the planner may
    // hash over the whole table (it did, with a plan cached while the table was small), and
    // the DELETE takes the rows the probes found (`doomed`, returned too) by their ctid. A row
    // a rewrap changes meanwhile is skipped by it (its ctid moved): a second statement below
    // deletes that key's versions by their numbers, so what the answer and the records say is
    // pruned is gone (the CI once saw a key keep a version more than it should).
    // The DELETE is a TID scan only because sessions run with `enable_seqscan = off`
    // (`orchestrator-store`): a plan cached while the table was nearly empty scanned it whole
    // instead, and kept doing so as it grew.
    const STORE_MANY: &str = "WITH k AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) \
           AS k (k BIGINT, user_id TEXT, key TEXT, first BIGINT, last BIGINT)), \
         ins AS (INSERT INTO user_vault \
           (user_id, key, version, data_key_id, encrypted_value, created_us, destroyed) \
           SELECT r.user_id, r.key, r.version, $3, substring($5 FROM r.at FOR r.len), $4, 0 \
           FROM json_to_recordset(CAST($2 AS json)) \
             AS r (user_id TEXT, key TEXT, version BIGINT, at INTEGER, len INTEGER)), \
         doomed AS (SELECT k.k, p.ctid, p.version FROM k CROSS JOIN LATERAL \
           (SELECT ctid, version FROM user_vault v WHERE v.user_id = k.user_id AND v.key = k.key AND v.version <= k.last \
            OFFSET 0) p), \
         gone AS (DELETE FROM user_vault WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed)) \
           RETURNING user_id, key, version) \
         SELECT k.k, e.version, e.created_us, e.deleted_us, e.destroyed, CAST(0 AS BIGINT) AS kind FROM k \
           CROSS JOIN LATERAL (SELECT version, created_us, deleted_us, destroyed FROM user_vault v \
             WHERE v.user_id = k.user_id AND v.key = k.key AND v.version > k.first OFFSET 0) e \
         UNION ALL SELECT k.k, g.version, CAST(0 AS BIGINT), CAST(NULL AS BIGINT), CAST(0 AS BIGINT), CAST(1 AS BIGINT) \
           FROM gone g JOIN k ON g.user_id = k.user_id AND g.key = k.key \
         UNION ALL SELECT d.k, d.version, CAST(0 AS BIGINT), CAST(NULL AS BIGINT), CAST(0 AS BIGINT), CAST(2 AS BIGINT) \
           FROM doomed d";
    #[derive(serde::Serialize)]
    struct KeyJson<'a> {
        k: usize,
        user_id: &'a str,
        key: &'a str,
        first: i64,
        last: i64,
    }
    #[derive(serde::Serialize)]
    struct RowJson<'a> {
        user_id: &'a str,
        key: &'a str,
        version: i64,
        at: usize,
        len: usize,
    }
    let keys_json: Vec<KeyJson<'_>> = keys
        .iter()
        .enumerate()
        .map(|(k, p)| KeyJson {
            k,
            user_id: p.user_id,
            key: p.key,
            first: p.first,
            last: p.last,
        })
        .collect();
    let mut ciphertexts = PackedBytes::with_capacity(new.iter().map(|n| n.ciphertext.len()).sum());
    let mut rows_json = Vec::with_capacity(new.len());
    for (n, &k) in new.iter().zip(&key_of) {
        if n.row.version <= keys[k].last {
            continue;
        }
        let (at, len) = ciphertexts.push(n.ciphertext);
        rows_json.push(RowJson {
            user_id: n.row.user_id,
            key: n.row.key,
            version: n.row.version,
            at,
            len,
        });
    }
    let found: Vec<KeyRow> = sqlx::query_as(STORE_MANY)
        .bind(orchestrator_store::json_param(&keys_json)?)
        .bind(orchestrator_store::json_param(&rows_json)?)
        .bind(data_key_id)
        .bind(now)
        .bind(ciphertexts.into_param())
        .fetch_all(&mut *conn)
        .await?;
    // Each key's earlier versions (after its first prune point), those the DELETE removed, and
    // how many it found to remove.
    let mut earlier: Vec<Vec<VersionRow>> = keys.iter().map(|_| Vec::new()).collect();
    let mut gone: Vec<Vec<i64>> = keys.iter().map(|_| Vec::new()).collect();
    let mut doomed: Vec<usize> = keys.iter().map(|_| 0).collect();
    for row in found {
        let k = usize::try_from(row.k)
            .ok()
            .filter(|k| *k < keys.len())
            .ok_or_else(|| StoreError::Other("a stored version of no new key".to_owned()))?;
        match row.kind {
            0 => earlier[k].push(row.version),
            1 => gone[k].push(row.version.version),
            _ => doomed[k] += 1,
        }
    }
    // A row changed since the statement began (a rewrap committed), skipped by the DELETE. The
    // key's row lock keeps its versions from changing number, so deleting by number now
    // removes exactly what was left.
    for (k, key) in keys.iter().enumerate() {
        if gone[k].len() < doomed[k] {
            let left = prune_versions(conn, key.user_id, key.key, key.last).await?;
            gone[k].extend(left);
        }
    }
    // Each new version's answer, as if stored after the ones before it: the key's versions
    // after its prune point, and those pruned since the version before it of the same key
    // (earlier versions the DELETE removed, and new versions of this call that never were
    // stored).
    let mut pruned_up_to: Vec<i64> = keys.iter().map(|_| 0).collect();
    let mut added: Vec<Vec<i64>> = keys.iter().map(|_| Vec::new()).collect();
    let mut all = Vec::with_capacity(new.len());
    for (n, &k) in new.iter().zip(&key_of) {
        let (from, to) = (pruned_up_to[k], n.prune_up_to.max(pruned_up_to[k]));
        added[k].push(n.row.version);
        let mut versions: Vec<VersionRow> = earlier[k]
            .iter()
            .filter(|v| v.version > to)
            .cloned()
            .chain(
                added[k]
                    .iter()
                    .filter(|v| **v > to)
                    .map(|v| VersionRow::new(*v, now)),
            )
            .collect();
        versions.sort_unstable_by_key(|v| std::cmp::Reverse(v.version));
        let mut pruned: Vec<i64> = gone[k]
            .iter()
            .chain(&added[k])
            .copied()
            .filter(|v| *v > from && *v <= to)
            .collect();
        pruned.sort_unstable();
        pruned_up_to[k] = to;
        all.push(Stored { versions, pruned });
    }
    Ok(all)
}

/// A version's ciphertext, encrypted under data key `data_key_id`.
pub(crate) async fn insert_version(
    conn: &mut AnyConnection,
    row: RowRef<'_>,
    data_key_id: i64,
    ciphertext: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO user_vault (user_id, key, version, data_key_id, encrypted_value, created_us, destroyed) \
         VALUES ($1, $2, $3, $4, $5, $6, 0)",
    )
    .bind(row.user_id)
    .bind(row.key)
    .bind(row.version)
    .bind(data_key_id)
    .bind(ciphertext)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes the versions up to `up_to`; returns their numbers.
pub(crate) async fn prune_versions(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    up_to: i64,
) -> Result<Vec<i64>, StoreError> {
    let pruned: Vec<(i64,)> = sqlx::query_as(
        "DELETE FROM user_vault WHERE user_id = $1 AND key = $2 AND version <= $3 RETURNING version",
    )
    .bind(user_id)
    .bind(key)
    .bind(up_to)
    .fetch_all(&mut *conn)
    .await?;
    Ok(pruned.into_iter().map(|(v,)| v).collect())
}

/// Destroys a version: its ciphertext is gone for good. `row` changes as the stored row did.
pub(crate) async fn destroy_version(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    row: &mut VersionRow,
    now: i64,
) -> Result<(), StoreError> {
    const DESTROY: &str = "UPDATE user_vault SET encrypted_value = NULL, data_key_id = NULL, destroyed = 1, \
         deleted_us = COALESCE(deleted_us, $4) WHERE user_id = $1 AND key = $2 AND version = $3";
    update_version(conn, DESTROY, user_id, key, row.version, now).await?;
    row.deleted_us.get_or_insert(now);
    row.destroyed = 1;
    Ok(())
}

/// Soft-deletes a version: kept, no longer readable. `row` changes as the stored row did.
pub(crate) async fn soft_delete_version(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    row: &mut VersionRow,
    now: i64,
) -> Result<(), StoreError> {
    const DELETE: &str =
        "UPDATE user_vault SET deleted_us = $4 WHERE user_id = $1 AND key = $2 AND version = $3";
    update_version(conn, DELETE, user_id, key, row.version, now).await?;
    row.deleted_us = Some(now);
    Ok(())
}

/// Runs `sql` with the parameters user id, key, version, now.
async fn update_version(
    conn: &mut AnyConnection,
    sql: &'static str,
    user_id: &str,
    key: &str,
    version: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(sql)
        .bind(user_id)
        .bind(key)
        .bind(version)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Marks the key as changed now. `meta` changes as the stored row did.
pub(crate) async fn touch_key(
    conn: &mut AnyConnection,
    meta: &mut SecretMeta,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE user_vault_keys SET updated_us = $3 WHERE user_id = $1 AND key = $2")
        .bind(&meta.user_id)
        .bind(&meta.key)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    meta.head.updated_us = now;
    Ok(())
}

/// The secret a Put request id was first used for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PutRequest {
    pub(crate) user_id: String,
    pub(crate) key: String,
    pub(crate) version: i64,
}

pub(crate) async fn find_put_request(
    conn: &mut AnyConnection,
    request_id: &str,
) -> Result<Option<PutRequest>, StoreError> {
    Ok(
        sqlx::query_as("SELECT user_id, key, version FROM put_requests WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

pub(crate) async fn insert_put_request(
    conn: &mut AnyConnection,
    request_id: &str,
    row: RowRef<'_>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO put_requests (request_id, user_id, key, version, created_us) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(request_id)
    .bind(row.user_id)
    .bind(row.key)
    .bind(row.version)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A live version as read, with the audit record that should vouch for it.
#[derive(Debug)]
pub(crate) struct LiveVersion {
    pub(crate) version: i64,
    pub(crate) ciphertext: Option<Vec<u8>>,
    pub(crate) created_us: i64,
    pub(crate) attestation: Attestation,
}

/// What [`read_granted_many`] found for one read.
#[derive(Debug)]
pub(crate) enum GrantedRead {
    /// No live grant of the key to the project: nothing else was looked at.
    NotGranted,
    Granted {
        /// The live version asked for, with its newest attested audit record.
        row: Option<LiveVersion>,
        /// For a read of the newest version: the key's newest attested record.
        newest: Option<Attestation>,
    },
}

/// One read's lookup, owned so that it can wait for its batch: the key of `user_id` read for
/// `project_id`, its newest live version (`version` 0) or version `version` if live;
/// `target_prefix` is the audit target of the key's versions without the number,
/// `key_target` what [`crate::audit::key_target`] names the key as a whole.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    pub(crate) user_id: String,
    pub(crate) key: String,
    pub(crate) version: i64,
    pub(crate) project_id: String,
    pub(crate) target_prefix: String,
    pub(crate) key_target: String,
}

/// PostgreSQL: the lookups of `$1` (a JSON array of objects), each row found by index in a
/// nested loop of its own (every join LATERAL with a LIMIT, so no estimate of the batch's size
/// can turn one into a hash join over a whole table).
const READ_GRANTED_PG: &str = concat!(
    "WITH r AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) AS r (i BIGINT, user_id TEXT, \
       key TEXT, version BIGINT, prefix TEXT, project_id TEXT, key_target TEXT)) \
     SELECT r.i, g.granted, v.version, v.encrypted_value, v.created_us, ",
    orchestrator_audit::attested_columns!(a, p),
    ", ",
    orchestrator_audit::attested_columns!(k, kp),
    " FROM r CROSS JOIN LATERAL (SELECT COUNT(*) AS granted FROM user_secret_grants s \
       WHERE s.user_id = r.user_id AND s.key = r.key AND s.project_id = r.project_id \
       AND s.revoked_us IS NULL) g \
     LEFT JOIN LATERAL (SELECT x.version, x.encrypted_value, x.created_us FROM user_vault x \
       WHERE g.granted > 0 AND x.user_id = r.user_id AND x.key = r.key \
       AND x.deleted_us IS NULL AND x.destroyed = 0 AND (r.version = 0 OR x.version = r.version) \
       ORDER BY x.version DESC LIMIT 1) v ON TRUE \
     LEFT JOIN LATERAL (SELECT * FROM audit_log \
       WHERE target = r.prefix || CAST(v.version AS TEXT) AND digest IS NOT NULL \
       ORDER BY seq DESC LIMIT 1) a ON TRUE \
     LEFT JOIN LATERAL (SELECT mac FROM audit_log WHERE seq = a.seq - 1 LIMIT 1) p ON TRUE \
     LEFT JOIN LATERAL (SELECT * FROM audit_log \
       WHERE g.granted > 0 AND r.version = 0 AND target = r.key_target AND digest IS NOT NULL \
       ORDER BY seq DESC LIMIT 1) k ON TRUE \
     LEFT JOIN LATERAL (SELECT mac FROM audit_log WHERE seq = k.seq - 1 LIMIT 1) kp ON TRUE"
);

/// SQLite (no LATERAL; it joins in nested loops anyway): what follows the lookups' `VALUES`.
const READ_GRANTED_SQLITE: &str = concat!(
    "), q AS (SELECT r.*, (SELECT COUNT(*) FROM user_secret_grants s \
       WHERE s.user_id = r.user_id AND s.key = r.key AND s.project_id = r.project_id \
       AND s.revoked_us IS NULL) AS granted FROM r) \
     SELECT q.i, q.granted, v.version, v.encrypted_value, v.created_us, ",
    orchestrator_audit::attested_columns!(a, p),
    ", ",
    orchestrator_audit::attested_columns!(k, kp),
    " FROM q \
     LEFT JOIN user_vault v ON q.granted > 0 AND v.user_id = q.user_id AND v.key = q.key \
       AND v.version = (SELECT MAX(x.version) FROM user_vault x \
         WHERE x.user_id = q.user_id AND x.key = q.key AND x.deleted_us IS NULL \
         AND x.destroyed = 0 AND (q.version = 0 OR x.version = q.version)) \
     LEFT JOIN audit_log a ON a.seq = \
       (SELECT MAX(seq) FROM audit_log WHERE target = q.prefix || CAST(v.version AS TEXT) AND digest IS NOT NULL) \
     LEFT JOIN audit_log p ON p.seq = a.seq - 1 \
     LEFT JOIN audit_log k ON q.granted > 0 AND q.version = 0 AND k.seq = \
       (SELECT MAX(seq) FROM audit_log WHERE target = q.key_target AND digest IS NOT NULL) \
     LEFT JOIN audit_log kp ON kp.seq = k.seq - 1"
);

/// Parameters per lookup in [`read_granted_many`].
const LOOKUP_PARAMS: usize = 7;

/// Many reads' whole lookups in one statement (one round trip, one snapshot), answered in the
/// order asked. For each: whether the key is granted to the project; if so, the newest live
/// version of the key (`version` 0) or the version asked for if it is live, with the newest
/// audit record with a digest for it; and, for a read of the newest version, the newest audit
/// record with a digest for the key as a whole, which says its newest live version (none for a
/// key written before such records existed). Concurrent reads share it (`crate::lookups`), so
/// a busy vault sends the database one query per batch of reads instead of one per read.
pub(crate) async fn read_granted_many(
    conn: &mut AnyConnection,
    dialect: Dialect,
    lookups: &[Lookup],
) -> Result<Vec<GrantedRead>, StoreError> {
    if lookups.is_empty() {
        return Ok(Vec::new());
    }
    // The grant is counted per lookup, and the version and the records are looked at only when
    // it is live, so a refused read says nothing about the key.
    let found = match dialect {
        // One statement text whatever the batch's size (the lookups as one JSON parameter): it
        // is parsed and planned once per connection, where a statement per batch size was
        // planned at nearly every execution, at several times the cost of running it.
        Dialect::Postgres => {
            #[derive(serde::Serialize)]
            struct LookupJson<'a> {
                i: usize,
                user_id: &'a str,
                key: &'a str,
                version: i64,
                prefix: &'a str,
                project_id: &'a str,
                key_target: &'a str,
            }
            let rows: Vec<LookupJson<'_>> = lookups
                .iter()
                .enumerate()
                .map(|(i, l)| LookupJson {
                    i,
                    user_id: &l.user_id,
                    key: &l.key,
                    version: l.version,
                    prefix: &l.target_prefix,
                    project_id: &l.project_id,
                    key_target: &l.key_target,
                })
                .collect();
            sqlx::query(READ_GRANTED_PG)
                .bind(orchestrator_store::json_param(&rows)?)
                .fetch_all(&mut *conn)
                .await?
        }
        Dialect::Sqlite => {
            let mut sql = String::from(
                "WITH r (i, user_id, key, version, prefix, project_id, key_target) AS (VALUES ",
            );
            sql.push_str(&orchestrator_store::placeholder_rows(
                lookups.len(),
                LOOKUP_PARAMS,
            ));
            sql.push_str(READ_GRANTED_SQLITE);
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, l) in lookups.iter().enumerate() {
                query = query
                    .bind(i as i64)
                    .bind(l.user_id.as_str())
                    .bind(l.key.as_str())
                    .bind(l.version)
                    .bind(l.target_prefix.as_str())
                    .bind(l.project_id.as_str())
                    .bind(l.key_target.as_str());
            }
            query.fetch_all(&mut *conn).await?
        }
    };
    let mut answers: Vec<Option<GrantedRead>> = std::iter::repeat_with(|| None)
        .take(lookups.len())
        .collect();
    for found in found {
        let i = usize::try_from(found.try_get::<i64, _>("i")?)
            .ok()
            .filter(|i| *i < lookups.len())
            .ok_or_else(missing_lookup)?;
        answers[i] = Some(granted_read(found)?);
    }
    // Every lookup yields exactly one row (its grant count): a missing one is a bug, not a
    // refusal.
    answers
        .into_iter()
        .map(|a| a.ok_or_else(missing_lookup))
        .collect()
}

fn missing_lookup() -> StoreError {
    StoreError::Other("a read's lookup returned no row of its own".to_owned())
}

/// One lookup's row of [`read_granted_many`].
fn granted_read(found: AnyRow) -> Result<GrantedRead, StoreError> {
    if found.try_get::<i64, _>("granted")? == 0 {
        return Ok(GrantedRead::NotGranted);
    }
    let newest = found
        .try_get::<Option<i64>, _>("k_seq")?
        .map(|_| Attestation(found.clone(), "k"));
    let row = match found.try_get::<Option<i64>, _>("version")? {
        Some(version) => Some(LiveVersion {
            version,
            ciphertext: found.try_get("encrypted_value")?,
            created_us: found.try_get("created_us")?,
            attestation: Attestation(found, "a"),
        }),
        None => None,
    };
    Ok(GrantedRead::Granted { row, newest })
}
