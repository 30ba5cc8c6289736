//! The rewrap's queries: claiming values still on a demoted data key, storing them re-encrypted,
//! and looking up the audit records that vouch for them.

use orchestrator_store::{Dialect, StoreError};
use sqlx::{AnyConnection, AnyPool, Row};

use super::Attestation;

/// Rows per UPDATE statement (4 parameters each).
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

/// Claims up to `limit` values that are not encrypted under the primary data key. On PostgreSQL the rows
/// stay locked until the transaction ends and other replicas skip them.
pub(crate) async fn claim_stale(
    conn: &mut AnyConnection,
    dialect: Dialect,
    limit: i64,
) -> Result<Vec<StoredValue>, StoreError> {
    let sql = format!(
        "SELECT user_id, key, version, encrypted_value FROM user_vault \
         WHERE encrypted_value IS NOT NULL AND data_key_id <> (SELECT id FROM data_keys WHERE state = 'primary') \
         LIMIT $1{}",
        dialect.skip_locked()
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?)
}

/// Stores `rows` as encrypted under data key `data_key_id`: one UPDATE per chunk of rows, not
/// one per row.
pub(crate) async fn store_rewrapped(
    conn: &mut AnyConnection,
    dialect: Dialect,
    data_key_id: i64,
    rows: &[StoredValue],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(UPDATE_CHUNK) {
        let values = (0..chunk.len())
            .map(|i| {
                let p = 2 + i * 4;
                format!(
                    "(CAST(${} AS TEXT), CAST(${} AS TEXT), CAST(${} AS BIGINT), CAST(${} AS {}))",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    dialect.blob()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        // Only placeholders are generated; every value is bound.
        let sql = format!(
            "UPDATE user_vault SET encrypted_value = v.column4, data_key_id = $1 FROM (VALUES {values}) AS v \
             WHERE user_vault.user_id = v.column1 AND user_vault.key = v.column2 AND user_vault.version = v.column3"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(data_key_id);
        for row in chunk {
            query = query
                .bind(row.user_id.clone())
                .bind(row.key.clone())
                .bind(row.version)
                .bind(row.ciphertext.clone());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The newest audit record with a digest for each of `targets` that has one, with its target:
/// one query per chunk of targets rather than one per row.
pub(crate) async fn attestations(
    pool: &AnyPool,
    targets: &[String],
) -> Result<Vec<(String, Attestation)>, StoreError> {
    let mut found = Vec::with_capacity(targets.len());
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
            query = query.bind(target.as_str());
        }
        for row in query.fetch_all(pool).await? {
            found.push((row.try_get("a_target")?, Attestation(row)));
        }
    }
    Ok(found)
}
