//! The rewrap's queries: finding values still on a demoted data key, storing them re-encrypted
//! where unchanged since, and looking up the audit records that vouch for them.

use orchestrator_store::{Dialect, StoreError};
use sqlx::{AnyConnection, AnyPool, Row};

use super::Attestation;

/// Rows per UPDATE statement (5 parameters each).
const UPDATE_CHUNK: usize = 250;
/// Targets per audit lookup.
const LOOKUP_CHUNK: usize = 500;

/// A stored value: the ciphertext of one version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StoredValue {
    pub(crate) user_id: String,
    pub(crate) key: String,
    pub(crate) version: i64,
    #[sqlx(rename = "encrypted_value")]
    pub(crate) ciphertext: Vec<u8>,
}

/// Where a rewrap pass has got to: the last row it read, in primary-key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowKey {
    pub(crate) user_id: String,
    pub(crate) key: String,
    pub(crate) version: i64,
}

impl RowKey {
    /// Before every row (user ids are never empty).
    pub(crate) fn start() -> Self {
        Self {
            user_id: String::new(),
            key: String::new(),
            version: i64::MIN,
        }
    }
}

/// Up to `limit` values not encrypted under data key `primary_id` (the primary, read first),
/// after `after` in primary-key order, read without a lock: the rewrap re-encrypts them
/// outside the writer and [`store_rewrapped`] stores each only if the row still holds what was
/// read. Walking the
/// primary key from where the last batch ended reads each row once per pass, instead of
/// stepping over every row already rewrapped again at each batch.
pub(crate) async fn stale_values(
    conn: &mut AnyConnection,
    primary_id: i64,
    after: &RowKey,
    limit: i64,
) -> Result<Vec<StoredValue>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT user_id, key, version, encrypted_value FROM user_vault \
         WHERE (user_id, key, version) > ($1, $2, $3) AND encrypted_value IS NOT NULL \
         AND data_key_id <> $4 ORDER BY user_id, key, version LIMIT $5",
    )
    .bind(after.user_id.as_str())
    .bind(after.key.as_str())
    .bind(after.version)
    .bind(primary_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// A value re-encrypted: the row, the ciphertext it held when read, and its new one.
#[derive(Debug)]
pub(crate) struct Rewrapped {
    pub(crate) user_id: String,
    pub(crate) key: String,
    pub(crate) version: i64,
    pub(crate) old: Vec<u8>,
    pub(crate) new: Vec<u8>,
}

/// Stores each of `rows` as encrypted under data key `data_key_id`, only where the row still
/// holds the ciphertext the rewrap read (a Put, a delete or another replica's rewrap since
/// then wins): one UPDATE per chunk of rows. Returns the rows it changed.
pub(crate) async fn store_rewrapped(
    conn: &mut AnyConnection,
    dialect: Dialect,
    data_key_id: i64,
    rows: &[Rewrapped],
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let mut stored = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(UPDATE_CHUNK) {
        let values = (0..chunk.len())
            .map(|i| {
                let p = 2 + i * 5;
                format!(
                    "(CAST(${} AS TEXT), CAST(${} AS TEXT), CAST(${} AS BIGINT), CAST(${} AS {blob}), CAST(${} AS {blob}))",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    blob = dialect.blob()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        // Only placeholders are generated; every value is bound.
        let sql = format!(
            "UPDATE user_vault SET encrypted_value = v.column5, data_key_id = $1 FROM (VALUES {values}) AS v \
             WHERE user_vault.user_id = v.column1 AND user_vault.key = v.column2 AND user_vault.version = v.column3 \
             AND user_vault.encrypted_value = v.column4 \
             RETURNING user_vault.user_id, user_vault.key, user_vault.version"
        );
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(data_key_id);
        for row in chunk {
            query = query
                .bind(row.user_id.clone())
                .bind(row.key.clone())
                .bind(row.version)
                .bind(row.old.clone())
                .bind(row.new.clone());
        }
        stored.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(stored)
}

/// The newest audit record with a digest for each of `targets` that has one, with its target:
/// one query per chunk of targets rather than one per row, each target's record found through
/// the index on (target, seq).
pub(crate) async fn attestations(
    pool: &AnyPool,
    targets: &[String],
) -> Result<Vec<(String, Attestation)>, StoreError> {
    let mut found = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(LOOKUP_CHUNK) {
        let params = (1..=chunk.len())
            .map(|i| format!("(CAST(${i} AS TEXT))"))
            .collect::<Vec<_>>()
            .join(", ");
        // Only placeholders are generated; every value is bound.
        let sql = format!(
            "WITH t (target) AS (VALUES {params}) SELECT {} FROM t \
             JOIN audit_log a ON a.seq = \
               (SELECT MAX(seq) FROM audit_log WHERE target = t.target AND digest IS NOT NULL) \
             LEFT JOIN audit_log p ON p.seq = a.seq - 1",
            orchestrator_audit::attested_columns!()
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for target in chunk {
            query = query.bind(target.as_str());
        }
        for row in query.fetch_all(pool).await? {
            found.push((row.try_get("a_target")?, Attestation(row, "a")));
        }
    }
    Ok(found)
}
