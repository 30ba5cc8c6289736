//! Operation leases: which replica runs an unfinished operation, until when. Bookkeeping of
//! who works, not a change of any server or operation, so not audited.

use orchestrator_store::{Database, StoreError};

use crate::model::OperationState;

/// Takes (or renews) the lease on an unfinished operation for `owner` until `until_us`: when
/// nobody holds it, `owner` does, or its holder let it run out. One statement, so two replicas
/// asking at once cannot both get it. False when another replica holds it or it has ended.
pub(crate) async fn claim(
    db: &Database,
    id: &str,
    owner: &str,
    now_us: i64,
    until_us: i64,
) -> Result<bool, StoreError> {
    let claimed = sqlx::query(
        "UPDATE operations SET lease_owner = $1, lease_until_us = $2 \
         WHERE id = $3 AND state IN ($4, $5) \
         AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until_us < $6)",
    )
    .bind(owner)
    .bind(until_us)
    .bind(id)
    .bind(OperationState::Pending.as_str())
    .bind(OperationState::Running.as_str())
    .bind(now_us)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// Gives the lease back (the operation ended, or this replica stops), so another replica need
/// not wait for it to run out.
pub(crate) async fn release(db: &Database, id: &str, owner: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE operations SET lease_owner = NULL, lease_until_us = NULL \
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Unfinished operations nobody holds a live lease on: left by a process that died, or never
/// started.
pub(crate) async fn claimable(db: &Database, now_us: i64) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM operations WHERE state IN ($1, $2) \
         AND (lease_owner IS NULL OR lease_until_us < $3) ORDER BY created_us",
    )
    .bind(OperationState::Pending.as_str())
    .bind(OperationState::Running.as_str())
    .bind(now_us)
    .fetch_all(db.pool())
    .await?)
}
