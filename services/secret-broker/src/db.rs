//! Every query of the broker: the repository registry, the secret references and their states,
//! the recorded writes (request-id idempotency) and the pacing rows.
//!
//! Architecture Invariant: no L2 value is stored. These tables hold names, states, key ids and
//! GitHub's times only; no function here takes a value.

use orchestrator_fields::{ProjectId, RequestId};
use orchestrator_github::{PutOutcome, RepoRef, SecretName};
use orchestrator_store::{Dialect, StoreError};
use sqlx::{AnyConnection, AnyPool};

#[cfg(test)]
mod tests;

orchestrator_store::stored_enum! {
    /// Where a secret reference stands. States are spelled only by [`SecretState::as_str`] (the
    /// queries bind them); an unknown stored state is an error, never taken for another.
    pub(crate) enum SecretState {
        /// Recorded before the PUT; GitHub may or may not have the value (a crash in between is
        /// settled by reconcile).
        Pending = "pending",
        /// GitHub accepted the value.
        Present = "present",
        /// The last write failed with a final error, and GitHub had no earlier value from us.
        Failed = "failed",
    }
}

orchestrator_store::stored_enum! {
    /// What a recorded write did at GitHub.
    pub(crate) enum WriteOutcome {
        Created = "created",
        Updated = "updated",
    }
}

impl From<PutOutcome> for WriteOutcome {
    fn from(put: PutOutcome) -> Self {
        match put {
            PutOutcome::Created => WriteOutcome::Created,
            PutOutcome::Updated => WriteOutcome::Updated,
        }
    }
}

/// A project's registered repository, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct RepositoryRow {
    pub owner: String,
    pub name: String,
    pub installation_id: i64,
    pub created_us: i64,
}

/// A reference to a secret the broker wrote.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct SecretRef {
    pub name: String,
    /// Where the secret is kept ([`crate::location::Location::key`]).
    pub location: String,
    #[sqlx(try_from = "String")]
    pub state: SecretState,
    /// GitHub's `updated_at` of the value we wrote, as GitHub spells it.
    pub github_updated_at: Option<String>,
    pub key_id: Option<String>,
    pub recorded_us: i64,
    /// The SPIFFE ID of the last writer.
    pub written_by: String,
    /// 1 for a deploy credential (written through SetDeployCredentials), else 0.
    pub deploy: i64,
    pub last_error: Option<String>,
}

impl SecretRef {
    pub(crate) fn is_deploy_credential(&self) -> bool {
        self.deploy != 0
    }
}

/// What one write of a request did, kept so that a retry of the request answers the same.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct WriteRecord {
    #[sqlx(try_from = "String")]
    pub outcome: WriteOutcome,
    /// The public key the value was sealed for.
    pub key_id: String,
    pub github_updated_at: Option<String>,
    pub recorded_us: i64,
}

/// The columns of a [`SecretRef`], for `concat!` into static SQL.
macro_rules! secret_ref_columns {
    () => {
        "name, location, state, github_updated_at, key_id, recorded_us, written_by, deploy, last_error"
    };
}

// ---- the repository registry ----

pub(crate) async fn find_repository<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    project_id: &ProjectId,
) -> Result<Option<RepositoryRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT owner, name, installation_id, created_us FROM repositories WHERE project_id = $1",
    )
    .bind(project_id.as_str())
    .fetch_optional(db)
    .await?)
}

/// Binds `server_id` to `project_id` unless it is bound already; the project it is bound to.
pub(crate) async fn bind_server(
    conn: &mut AnyConnection,
    server_id: &str,
    project_id: &ProjectId,
    now: i64,
) -> Result<String, StoreError> {
    sqlx::query(
        "INSERT INTO deploy_servers (server_id, project_id, bound_us) VALUES ($1, $2, $3) \
         ON CONFLICT (server_id) DO NOTHING",
    )
    .bind(server_id)
    .bind(project_id.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT project_id FROM deploy_servers WHERE server_id = $1")
            .bind(server_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The project `server_id` is bound to, if any.
pub(crate) async fn server_project(
    pool: &AnyPool,
    server_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT project_id FROM deploy_servers WHERE server_id = $1")
            .bind(server_id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Registers the project's repository; a project or repository registered already is
/// [`StoreError::Duplicate`].
pub(crate) async fn insert_repository(
    conn: &mut AnyConnection,
    project_id: &ProjectId,
    repo: &RepoRef,
    installation_id: i64,
    created_us: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO repositories (project_id, owner, name, installation_id, created_us) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(project_id.as_str())
    .bind(repo.owner())
    .bind(repo.name())
    .bind(installation_id)
    .bind(created_us)
    .execute(conn)
    .await?;
    Ok(())
}

// ---- secret references ----

/// Records a write about to happen: a new reference is `pending`; an existing one keeps its
/// state (a `present` one: GitHub still holds the old value until it is replaced) and names
/// its new writer.
pub(crate) async fn record_pending(
    conn: &mut AnyConnection,
    project_id: &ProjectId,
    location: &str,
    name: &SecretName,
    written_by: &str,
    deploy: bool,
    now_us: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO secret_refs (project_id, name, state, recorded_us, written_by, deploy, location) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (project_id, location, name) DO UPDATE SET written_by = $5",
    )
    .bind(project_id.as_str())
    .bind(name.as_str())
    .bind(SecretState::Pending.as_str())
    .bind(now_us)
    .bind(written_by)
    .bind(i64::from(deploy))
    .bind(location)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that GitHub accepted a write: the reference is `present`, and the request's write
/// is kept for its retries (the first record of a request id stands).
pub(crate) async fn record_present(
    conn: &mut AnyConnection,
    request_id: &RequestId,
    project_id: &ProjectId,
    location: &str,
    name: &SecretName,
    write: &WriteRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE secret_refs SET state = $3, github_updated_at = $4, key_id = $5, recorded_us = $6, \
         last_error = NULL WHERE project_id = $1 AND name = $2 AND location = $7",
    )
    .bind(project_id.as_str())
    .bind(name.as_str())
    .bind(SecretState::Present.as_str())
    .bind(write.github_updated_at.as_deref())
    .bind(&write.key_id)
    .bind(write.recorded_us)
    .bind(location)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO write_requests \
         (request_id, project_id, name, outcome, key_id, github_updated_at, recorded_us, location) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(request_id.as_str())
    .bind(project_id.as_str())
    .bind(name.as_str())
    .bind(write.outcome.as_str())
    .bind(&write.key_id)
    .bind(write.github_updated_at.as_deref())
    .bind(write.recorded_us)
    .bind(location)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a write's final error: the reference becomes `failed`, unless it is `present`
/// (GitHub still holds the earlier value).
pub(crate) async fn record_failed(
    conn: &mut AnyConnection,
    project_id: &ProjectId,
    location: &str,
    name: &SecretName,
    last_error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE secret_refs SET state = CASE WHEN state = $3 THEN state ELSE $4 END, \
         last_error = $5 WHERE project_id = $1 AND name = $2 AND location = $6",
    )
    .bind(project_id.as_str())
    .bind(name.as_str())
    .bind(SecretState::Present.as_str())
    .bind(SecretState::Failed.as_str())
    .bind(last_error)
    .bind(location)
    .execute(conn)
    .await?;
    Ok(())
}

/// Settles a `pending` reference that GitHub has (a crash between the PUT and its record) as
/// `present` with GitHub's time. Any other state is left alone.
pub(crate) async fn recover_pending(
    conn: &mut AnyConnection,
    project_id: &ProjectId,
    location: &str,
    name: &str,
    github_updated_at: &str,
    now_us: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE secret_refs SET state = $3, github_updated_at = $4, recorded_us = $5, \
         last_error = NULL WHERE project_id = $1 AND name = $2 AND state = $6 AND location = $7",
    )
    .bind(project_id.as_str())
    .bind(name)
    .bind(SecretState::Present.as_str())
    .bind(github_updated_at)
    .bind(now_us)
    .bind(SecretState::Pending.as_str())
    .bind(location)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the broker's reference to the project's secret `name` is a deploy credential;
/// `None` when the broker wrote no such secret for the project.
pub(crate) async fn find_deploy_flag(
    pool: &AnyPool,
    project_id: &ProjectId,
    location: &str,
    name: &SecretName,
) -> Result<Option<bool>, StoreError> {
    let deploy: Option<i64> = sqlx::query_scalar(
        "SELECT deploy FROM secret_refs WHERE project_id = $1 AND name = $2 AND location = $3",
    )
    .bind(project_id.as_str())
    .bind(name.as_str())
    .bind(location)
    .fetch_optional(pool)
    .await?;
    Ok(deploy.map(|d| d != 0))
}

pub(crate) async fn delete_secret_ref(
    conn: &mut AnyConnection,
    project_id: &ProjectId,
    location: &str,
    name: &SecretName,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM secret_refs WHERE project_id = $1 AND name = $2 AND location = $3")
        .bind(project_id.as_str())
        .bind(name.as_str())
        .bind(location)
        .execute(conn)
        .await?;
    Ok(())
}

/// Up to `limit` of the project's references with names after `after` (`""`: from the
/// first), by name.
pub(crate) async fn list_secret_refs(
    pool: &AnyPool,
    project_id: &ProjectId,
    location: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<SecretRef>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        secret_ref_columns!(),
        " FROM secret_refs WHERE project_id = $1 AND name > $2 AND location = $4 \
         ORDER BY name LIMIT $3"
    ))
    .bind(project_id.as_str())
    .bind(after)
    .bind(limit)
    .bind(location)
    .fetch_all(pool)
    .await?)
}

/// All of the project's references, by name.
pub(crate) async fn all_secret_refs(
    pool: &AnyPool,
    project_id: &ProjectId,
    location: &str,
) -> Result<Vec<SecretRef>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        secret_ref_columns!(),
        " FROM secret_refs WHERE project_id = $1 AND location = $2 ORDER BY name"
    ))
    .bind(project_id.as_str())
    .bind(location)
    .fetch_all(pool)
    .await?)
}

/// `pending` references recorded before `cutoff_us` (a crash left them): (project, location,
/// name).
pub(crate) async fn stale_pending(
    pool: &AnyPool,
    cutoff_us: i64,
) -> Result<Vec<(String, String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT project_id, location, name FROM secret_refs WHERE state = $1 AND recorded_us < $2 \
         ORDER BY recorded_us LIMIT 500",
    )
    .bind(SecretState::Pending.as_str())
    .bind(cutoff_us)
    .fetch_all(pool)
    .await?)
}

/// Claims a still `pending` reference for the transaction that settles it: on PostgreSQL its
/// row stays locked until then, and a row another replica holds is skipped. False when there
/// is nothing (left) to settle.
pub(crate) async fn claim_pending(
    conn: &mut AnyConnection,
    dialect: Dialect,
    project_id: &ProjectId,
    location: &str,
    name: &str,
) -> Result<bool, StoreError> {
    const CLAIM: &str = "SELECT name FROM secret_refs \
         WHERE project_id = $1 AND name = $2 AND state = $3 AND location = $4";
    let sql = match dialect {
        Dialect::Postgres => concat!(
            "SELECT name FROM secret_refs WHERE project_id = $1 AND name = $2 AND state = $3",
            " AND location = $4 FOR UPDATE SKIP LOCKED"
        ),
        Dialect::Sqlite => CLAIM,
    };
    let row: Option<(String,)> = sqlx::query_as(sql)
        .bind(project_id.as_str())
        .bind(name)
        .bind(SecretState::Pending.as_str())
        .bind(location)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Settles a `pending` reference GitHub never got as `failed` with `message`.
pub(crate) async fn lose_pending(
    conn: &mut AnyConnection,
    project_id: &ProjectId,
    location: &str,
    name: &str,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE secret_refs SET state = $3, last_error = $4 \
         WHERE project_id = $1 AND name = $2 AND state = $5 AND location = $6",
    )
    .bind(project_id.as_str())
    .bind(name)
    .bind(SecretState::Failed.as_str())
    .bind(message)
    .bind(SecretState::Pending.as_str())
    .bind(location)
    .execute(conn)
    .await?;
    Ok(())
}

/// The project that owns the organization secret `name` (the first to write it), if any.
pub(crate) async fn organization_secret_owner(
    pool: &AnyPool,
    name: &SecretName,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT project_id FROM secret_refs WHERE location = $1 AND name = $2")
            .bind(crate::location::Location::Organization.key())
            .bind(name.as_str())
            .fetch_optional(pool)
            .await?,
    )
}

// ---- recorded writes ----

/// What request `request_id` already wrote to the project's secret `name`, if anything. Per
/// project: two projects may well pick the same request id.
pub(crate) async fn find_write(
    pool: &AnyPool,
    request_id: &RequestId,
    project_id: &ProjectId,
    location: &str,
    name: &SecretName,
) -> Result<Option<WriteRecord>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT outcome, key_id, github_updated_at, recorded_us FROM write_requests \
         WHERE request_id = $1 AND project_id = $2 AND name = $3 AND location = $4",
    )
    .bind(request_id.as_str())
    .bind(project_id.as_str())
    .bind(name.as_str())
    .bind(location)
    .fetch_optional(pool)
    .await?)
}

// ---- pacing (PostgreSQL only: SQLite paces in process) ----

/// Locks the installation's pacing row (created at 0 the first time) until the transaction
/// ends, and returns the start time of its last recorded write.
pub(crate) async fn lock_pacing(
    conn: &mut AnyConnection,
    installation_id: i64,
) -> Result<i64, StoreError> {
    sqlx::query(
        "INSERT INTO installation_pacing (installation_id, last_write_us) VALUES ($1, 0) \
         ON CONFLICT DO NOTHING",
    )
    .bind(installation_id)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_scalar(
        "SELECT last_write_us FROM installation_pacing WHERE installation_id = $1 FOR UPDATE",
    )
    .bind(installation_id)
    .fetch_one(conn)
    .await?)
}

pub(crate) async fn record_pacing(
    conn: &mut AnyConnection,
    installation_id: i64,
    ended_us: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE installation_pacing SET last_write_us = $2 WHERE installation_id = $1")
        .bind(installation_id)
        .bind(ended_us)
        .execute(conn)
        .await?;
    Ok(())
}
