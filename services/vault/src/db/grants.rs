//! Grants: `user_secret_grants`, one row per (user, key, project), live while `revoked_us` is
//! unset. A revoked row is kept for the record; a new grant makes it live again.

use orchestrator_proto::timestamp as ts;
use orchestrator_proto::vault::v1 as pb;
use orchestrator_store::StoreError;
use sqlx::AnyConnection;

/// One grant row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct GrantRow {
    pub(crate) user_id: String,
    pub(crate) key: String,
    pub(crate) project_id: String,
    pub(crate) created_us: i64,
    pub(crate) revoked_us: Option<i64>,
}

impl GrantRow {
    pub(crate) fn is_live(&self) -> bool {
        self.revoked_us.is_none()
    }

    pub(crate) fn into_pb(self) -> pb::UserSecretGrant {
        pb::UserSecretGrant {
            user_id: self.user_id,
            key: self.key,
            project_id: self.project_id,
            create_time: Some(ts(self.created_us)),
            revoke_time: self.revoked_us.map(ts),
        }
    }
}

/// The grant of `key` of `user_id` to `project_id`, live or revoked; `None` if never granted.
pub(crate) async fn grant(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    project_id: &str,
) -> Result<Option<GrantRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT user_id, key, project_id, created_us, revoked_us FROM user_secret_grants \
         WHERE user_id = $1 AND key = $2 AND project_id = $3",
    )
    .bind(user_id)
    .bind(key)
    .bind(project_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Records a live grant: a new row, or a revoked one made live again (granted `now`); a live
/// one is left as it is.
pub(crate) async fn insert_grant(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    project_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO user_secret_grants (user_id, key, project_id, created_us, revoked_us) \
         VALUES ($1, $2, $3, $4, NULL) \
         ON CONFLICT (user_id, key, project_id) DO UPDATE SET \
         created_us = $4, revoked_us = NULL WHERE user_secret_grants.revoked_us IS NOT NULL",
    )
    .bind(user_id)
    .bind(key)
    .bind(project_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Revokes a live grant at `now`; a revoked or missing one is left as it is.
pub(crate) async fn revoke_grant(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    project_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE user_secret_grants SET revoked_us = $4 \
         WHERE user_id = $1 AND key = $2 AND project_id = $3 AND revoked_us IS NULL",
    )
    .bind(user_id)
    .bind(key)
    .bind(project_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
