//! The data keys (`data_keys`): stored wrapped by a master key, exactly one primary (it encrypts
//! new values), the demoted ones `decrypt_only` until no ciphertext uses them, then `retired`.

use orchestrator_audit::{AuditError, Concurrent, Entry};
use orchestrator_store::{Dialect, StoreError};
use sqlx::{AnyConnection, AnyPool, Row};

orchestrator_store::stored_enum! {
    /// A data key's state. The SQL in this module spells the states as these strings.
    pub(crate) enum KeyState {
        Primary = "primary",
        DecryptOnly = "decrypt_only",
        Retired = "retired",
    }
}

/// A data key as stored: wrapped by master key `master_key_id`, whose key check value is `kcv`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StoredKey {
    pub(crate) id: i64,
    pub(crate) master_key_id: String,
    pub(crate) wrapped: Vec<u8>,
    pub(crate) kcv: Vec<u8>,
}

/// Every data key, by id.
pub(crate) async fn stored_data_keys(
    conn: &mut AnyConnection,
) -> Result<Vec<StoredKey>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, master_key_id, wrapped, kcv FROM data_keys ORDER BY id")
            .fetch_all(&mut *conn)
            .await?,
    )
}

/// A data key's stored form: wrapped by master key `master_key_id`, whose key check value is
/// `kcv`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wrapping<'a> {
    pub(crate) master_key_id: &'a str,
    pub(crate) wrapped: &'a [u8],
    pub(crate) kcv: &'a [u8],
}

/// Data key 1, the first primary, unless it exists: replicas starting together race here, one
/// insert wins.
pub(crate) async fn insert_first_data_key(
    conn: &mut AnyConnection,
    key: Wrapping<'_>,
    now: i64,
) -> Result<(), StoreError> {
    insert_primary(conn, 1, key, now, " ON CONFLICT DO NOTHING").await
}

/// A new primary data key (after [`demote_primary`]).
pub(crate) async fn insert_primary_data_key(
    conn: &mut AnyConnection,
    id: i64,
    key: Wrapping<'_>,
    now: i64,
) -> Result<(), StoreError> {
    insert_primary(conn, id, key, now, "").await
}

async fn insert_primary(
    conn: &mut AnyConnection,
    id: i64,
    key: Wrapping<'_>,
    now: i64,
    on_conflict: &'static str,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO data_keys (id, master_key_id, wrapped, kcv, state, encryptions, created_us) \
         VALUES ($1, $2, $3, $4, 'primary', 0, $5){on_conflict}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(key.master_key_id)
        .bind(key.wrapped)
        .bind(key.kcv)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Stores data key `id` wrapped another way, if it is still wrapped by master key `from` (a
/// replica that already did it wins).
pub(crate) async fn rewrap_data_key(
    conn: &mut AnyConnection,
    id: i64,
    from: &str,
    to: Wrapping<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE data_keys SET master_key_id = $1, wrapped = $2, kcv = $3 WHERE id = $4 AND master_key_id = $5",
    )
    .bind(to.master_key_id)
    .bind(to.wrapped)
    .bind(to.kcv)
    .bind(id)
    .bind(from)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The primary data key after counting encryptions on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct PrimaryUse {
    pub(crate) id: i64,
    /// Its encryptions, these included.
    pub(crate) encryptions: i64,
}

/// Counts `n` encryptions on the primary data key (which this locks until the transaction
/// ends, so a rotation cannot slip in between).
pub(crate) async fn count_encryptions(
    conn: &mut AnyConnection,
    n: i64,
) -> Result<PrimaryUse, StoreError> {
    Ok(sqlx::query_as(
        "UPDATE data_keys SET encryptions = encryptions + $1 WHERE state = 'primary' RETURNING id, encryptions",
    )
    .bind(n)
    .fetch_one(&mut *conn)
    .await?)
}

/// PostgreSQL: the audit head locked, then the encryptions counted (see
/// [`orchestrator_audit::lock_head_cte`]), in one statement. No row: the primary changed while
/// the statement waited for the head (see [`count_encryptions_under_head`]).
pub(super) const COUNT_UNDER_HEAD: &str = concat!(
    "WITH ",
    orchestrator_audit::lock_head_cte!(),
    ", counted AS (UPDATE data_keys SET encryptions = encryptions + $1 \
       WHERE state = 'primary' AND EXISTS (SELECT 1 FROM head) RETURNING id, encryptions) \
     SELECT head.head_seq, head.head_mac, counted.id, counted.encryptions FROM head, counted"
);

/// Takes the audit head for a concurrent write, then counts `n` encryptions on the primary
/// data key as [`count_encryptions`] does: one round trip on PostgreSQL, two on SQLite.
///
/// The statement reads the table as it was when it began. If it waited for the head behind a
/// rotation, the key it saw as primary is demoted by the time it counts and the new one is not
/// in its view: nothing is counted, and the write loses as to any concurrent transaction
/// ([`StoreError::Conflict`]). It runs again head first, so its statement begins after the
/// rotation and counts on the new primary.
pub(super) async fn count_encryptions_under_head(
    tx: &mut Concurrent,
    dialect: Dialect,
    n: i64,
) -> Result<PrimaryUse, AuditError> {
    if dialect == Dialect::Sqlite {
        tx.lock_head().await?;
        return Ok(count_encryptions(tx.conn(), n).await?);
    }
    let row = sqlx::query(COUNT_UNDER_HEAD)
        .bind(n)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| {
            StoreError::Conflict(
                "the primary data key changed while waiting for the audit head".into(),
            )
        })?;
    tx.head_locked(&row)?;
    Ok(PrimaryUse {
        id: row.try_get("id")?,
        encryptions: row.try_get("encryptions")?,
    })
}

/// PostgreSQL: a concurrent write's records appended after the head this process last
/// committed, and `$7` encryptions counted on the primary data key, in one statement, only if
/// that is still the head (see [`orchestrator_audit::append_if_head_cte`]). A row whenever the
/// head moved (with the count, if there was a primary to count on); none when another write
/// moved the head first, and nothing was written.
pub(super) const COUNT_AND_APPEND: &str = concat!(
    "WITH ",
    orchestrator_audit::append_if_head_cte!(),
    ", counted AS (UPDATE data_keys SET encryptions = encryptions + $7 \
       WHERE state = 'primary' AND EXISTS (SELECT 1 FROM head) RETURNING id, encryptions) \
     SELECT counted.id, counted.encryptions FROM head LEFT JOIN counted ON TRUE"
);

/// [`count_encryptions_under_head`], and the commit's append of `entries` with it in one round
/// trip (on PostgreSQL, while this process knows the head and no other write moved it since):
/// then the write holds the head after those records, and `entries` is left empty for the
/// commit. Otherwise the head is taken as [`count_encryptions_under_head`] takes it, and
/// `entries` left for the commit to append.
///
/// As there, the count lands on the key the statement sees as primary, which the caller
/// checks. A rotation runs under the head and appends a record, so one that committed since
/// the head was known makes the one-statement attempt write nothing.
pub(crate) async fn count_and_append(
    tx: &mut Concurrent,
    dialect: Dialect,
    n: i64,
    entries: &mut Vec<Entry>,
) -> Result<PrimaryUse, AuditError> {
    let Some((query, appending)) = tx.bind_append(sqlx::query(COUNT_AND_APPEND), entries)? else {
        return count_encryptions_under_head(tx, dialect, n).await;
    };
    let Some(row) = query.bind(n).fetch_optional(tx.conn()).await? else {
        return count_encryptions_under_head(tx, dialect, n).await;
    };
    tx.appended(appending);
    entries.clear();
    match (row.try_get("id")?, row.try_get("encryptions")?) {
        (Some(id), Some(encryptions)) => Ok(PrimaryUse { id, encryptions }),
        // The records are in: the write must fail, not take the head again and append them twice.
        _ => Err(StoreError::Other("no primary data key to count encryptions on".into()).into()),
    }
}

pub(crate) async fn primary_data_key_id(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM data_keys WHERE state = 'primary'")
        .fetch_one(&mut *conn)
        .await?;
    Ok(id)
}

/// The id a new data key takes.
pub(crate) async fn next_data_key_id(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    let (next,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM data_keys")
        .fetch_one(&mut *conn)
        .await?;
    Ok(next)
}

/// The primary data key becomes decrypt-only (a rotation inserts the new primary next).
pub(crate) async fn demote_primary(conn: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE data_keys SET state = 'decrypt_only' WHERE state = 'primary'")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A data key as GetKeyStatus reports it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct DataKeyStatus {
    pub(crate) id: i64,
    #[sqlx(try_from = "String")]
    pub(crate) state: KeyState,
    pub(crate) master_key_id: String,
    pub(crate) encryptions: i64,
    pub(crate) created_us: i64,
    /// The values encrypted under it now.
    pub(crate) ciphertexts: i64,
}

/// Every data key with the number of values it encrypts, by id.
pub(crate) async fn data_key_status(pool: &AnyPool) -> Result<Vec<DataKeyStatus>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT d.id, d.state, d.master_key_id, d.encryptions, d.created_us, \
                (SELECT COUNT(*) FROM user_vault v WHERE v.data_key_id = d.id AND v.encrypted_value IS NOT NULL) AS ciphertexts \
         FROM data_keys d ORDER BY d.id",
    )
    .fetch_all(pool)
    .await?)
}

/// Demoted keys that no ciphertext uses any more are retired (kept, never used again).
pub(crate) async fn retire_empty_keys(pool: &AnyPool) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE data_keys SET state = 'retired' WHERE state = 'decrypt_only' \
         AND NOT EXISTS (SELECT 1 FROM user_vault v WHERE v.data_key_id = data_keys.id AND v.encrypted_value IS NOT NULL)",
    )
    .execute(pool)
    .await?;
    Ok(())
}
