//! Every query of the scaffolder: the `projects` table (`migrations/scaffolder/<dialect>`).
//!
//! Reads take the pool; writes take the ledger's connection, so that each change commits with
//! its audit record.

use std::collections::BTreeMap;

use orchestrator_fields::{ProjectId, RequestId, UserId};
use orchestrator_proto::common::v1 as common;
use orchestrator_store::{Database, Dialect, StoreError};
use sqlx::AnyConnection;
use sqlx::migrate::Migrator;

use crate::project::{Failure, Project, ProjectSpec, State, Step, Template, Visibility, name_key};

/// The scaffolder's own tables (versions from 100; the audit tables come first).
pub(crate) fn migrations(dialect: Dialect) -> Migrator {
    match dialect {
        Dialect::Postgres => sqlx::migrate!("../../migrations/scaffolder/postgres"),
        Dialect::Sqlite => sqlx::migrate!("../../migrations/scaffolder/sqlite"),
    }
}

/// The columns of [`ProjectRow`], in its order; a macro so it can be `concat!`ed into static
/// SQL.
macro_rules! project_columns {
    () => {
        "id, request_id, name, user_id, template, description, visibility, owner, \
         repository_id, secrets_ref, state, step, failure_code, failure_reason, \
         failure_message, created_us, updated_us, ready_us"
    };
}

/// A `projects` row as stored; [`Project`] is what it means.
#[derive(sqlx::FromRow)]
struct ProjectRow {
    id: String,
    request_id: String,
    name: String,
    user_id: String,
    template: String,
    description: String,
    visibility: String,
    owner: String,
    repository_id: Option<i64>,
    secrets_ref: String,
    state: String,
    step: String,
    failure_code: Option<i64>,
    failure_reason: Option<String>,
    failure_message: Option<String>,
    created_us: i64,
    updated_us: i64,
    ready_us: Option<i64>,
}

/// A stored value this version cannot read: a bug or a foreign write, never silently another
/// value.
fn corrupt(column: &str, problem: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(&format!("projects.{column}"), problem)
}

impl TryFrom<ProjectRow> for Project {
    type Error = StoreError;

    fn try_from(row: ProjectRow) -> Result<Self, StoreError> {
        let failure = row
            .failure_code
            .map(|code| {
                Ok::<_, StoreError>(Failure {
                    code: i32::try_from(code).map_err(|e| corrupt("failure_code", e))?,
                    reason: row.failure_reason.unwrap_or_default(),
                    message: row.failure_message.unwrap_or_default(),
                })
            })
            .transpose()?;
        Ok(Project {
            id: ProjectId::parse(&row.id).map_err(|e| corrupt("id", e))?,
            spec: ProjectSpec {
                request_id: RequestId::parse(&row.request_id)
                    .map_err(|e| corrupt("request_id", e))?,
                name: row.name,
                user_id: UserId::parse(&row.user_id).map_err(|e| corrupt("user_id", e))?,
                template: Template::parse(&row.template).map_err(|e| corrupt("template", e))?,
                description: row.description,
                visibility: Visibility::parse(&row.visibility)
                    .map_err(|e| corrupt("visibility", e))?,
                secrets_ref: secrets_ref_from_json(&row.secrets_ref)?,
            },
            owner: row.owner,
            repository_id: row.repository_id,
            state: State::parse(&row.state).map_err(|e| corrupt("state", e))?,
            step: Step::parse(&row.step).map_err(|e| corrupt("step", e))?,
            failure,
            created_us: row.created_us,
            updated_us: row.updated_us,
            ready_us: row.ready_us,
        })
    }
}

const PROJECT_BY_ID: &str = concat!(
    "SELECT ",
    project_columns!(),
    " FROM projects WHERE id = $1"
);
const PROJECT_BY_REQUEST_ID: &str = concat!(
    "SELECT ",
    project_columns!(),
    " FROM projects WHERE request_id = $1"
);

pub(crate) async fn project_by_id(
    db: &Database,
    id: &ProjectId,
) -> Result<Option<Project>, StoreError> {
    project_where(db, PROJECT_BY_ID, id.as_str()).await
}

/// The project created by the CreateProject call with `request_id`.
pub(crate) async fn project_by_request_id(
    db: &Database,
    request_id: &RequestId,
) -> Result<Option<Project>, StoreError> {
    project_where(db, PROJECT_BY_REQUEST_ID, request_id.as_str()).await
}

/// [`project_by_request_id`] inside a write: a replica's earlier commit is seen, as ledger
/// writes are serialized across replicas.
pub(crate) async fn project_by_request_id_in(
    conn: &mut AnyConnection,
    request_id: &RequestId,
) -> Result<Option<Project>, StoreError> {
    let row: Option<ProjectRow> = sqlx::query_as(PROJECT_BY_REQUEST_ID)
        .bind(request_id.as_str())
        .fetch_optional(conn)
        .await?;
    row.map(Project::try_from).transpose()
}

/// The project `sql` selects by its one parameter, `key`.
async fn project_where(
    db: &Database,
    sql: &'static str,
    key: &str,
) -> Result<Option<Project>, StoreError> {
    let row: Option<ProjectRow> = sqlx::query_as(sql)
        .bind(key)
        .fetch_optional(db.pool())
        .await?;
    row.map(Project::try_from).transpose()
}

/// Which projects a list returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProjectFilter {
    /// Only this user's; empty = every user's.
    pub(crate) user_id: String,
    /// Only projects in this state; `None` = all.
    pub(crate) state: Option<State>,
}

/// Up to `limit` projects matching `filter` with ids after `after` (`None` = from the start),
/// in id order.
pub(crate) async fn list_projects(
    db: &Database,
    filter: &ProjectFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Project>, StoreError> {
    let rows: Vec<ProjectRow> = sqlx::query_as(concat!(
        "SELECT ",
        project_columns!(),
        " FROM projects WHERE id > $1 AND ($2 = '' OR user_id = $2) AND ($3 = '' OR state = $3) \
         ORDER BY id LIMIT $4"
    ))
    .bind(after.unwrap_or_default())
    .bind(&filter.user_id)
    .bind(filter.state.map_or("", State::as_str))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(Project::try_from).collect()
}

/// Records a new project. A name (case-insensitively) or request id already recorded is a
/// [`StoreError::Duplicate`].
pub(crate) async fn insert_project(
    conn: &mut AnyConnection,
    project: &Project,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO projects (id, request_id, name, name_key, user_id, template, description, \
         visibility, owner, secrets_ref, state, step, created_us, updated_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(project.id.as_str())
    .bind(project.spec.request_id.as_str())
    .bind(&project.spec.name)
    .bind(name_key(&project.spec.name))
    .bind(project.spec.user_id.as_str())
    .bind(project.spec.template.as_str())
    .bind(&project.spec.description)
    .bind(project.spec.visibility.as_str())
    .bind(&project.owner)
    .bind(secrets_ref_to_json(&project.spec.secrets_ref))
    .bind(project.state.as_str())
    .bind(project.step.as_str())
    .bind(project.created_us)
    .bind(project.updated_us)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records `step` as done at `now_us` (and the repository's id, when given), clearing the last
/// failure; at [`Step::Done`] the project becomes ready. [`Project::advance`] mirrors this.
pub(crate) async fn record_step(
    conn: &mut AnyConnection,
    id: &ProjectId,
    step: Step,
    repository_id: Option<i64>,
    now_us: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE projects SET step = $2, repository_id = COALESCE($3, repository_id), updated_us = $4, \
         state = CASE WHEN $5 = 1 THEN $6 ELSE state END, ready_us = CASE WHEN $5 = 1 THEN $4 ELSE ready_us END, \
         failure_code = NULL, failure_reason = NULL, failure_message = NULL WHERE id = $1",
    )
    .bind(id.as_str())
    .bind(step.as_str())
    .bind(repository_id)
    .bind(now_us)
    .bind(i64::from(step == Step::Done))
    .bind(State::Ready.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records why the last attempt stopped; the step stays, so a retry resumes there.
pub(crate) async fn record_failure(
    conn: &mut AnyConnection,
    id: &ProjectId,
    failure: &Failure,
    now_us: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE projects SET failure_code = $2, failure_reason = $3, failure_message = $4, \
         updated_us = $5 WHERE id = $1",
    )
    .bind(id.as_str())
    .bind(i64::from(failure.code))
    .bind(&failure.reason)
    .bind(&failure.message)
    .bind(now_us)
    .execute(conn)
    .await?;
    Ok(())
}

/// `secrets_ref` as stored: a JSON object, abstract key -> `{"github_secret": NAME}` (with
/// `"location": KEY` for a secret kept elsewhere than the repository's Actions secrets, see
/// `project::secret_location_key`) or
/// `{"vault_entry": {"user_id", "key", "version"}}` (or `null` for an entry without a target).
fn secrets_ref_to_json(secrets_ref: &common::SecretsRef) -> String {
    let map: BTreeMap<&String, serde_json::Value> = secrets_ref
        .entries
        .iter()
        .map(|(key, target)| {
            let value = match &target.target {
                Some(common::secret_target::Target::GithubSecret(g)) => {
                    let place = crate::project::secret_location_key(g.location.as_ref());
                    if place == crate::project::REPOSITORY {
                        serde_json::json!({ "github_secret": g.name })
                    } else {
                        serde_json::json!({ "github_secret": g.name, "location": place })
                    }
                }
                Some(common::secret_target::Target::VaultEntry(v)) => serde_json::json!({
                    "vault_entry": { "user_id": v.user_id, "key": v.key, "version": v.version }
                }),
                None => serde_json::Value::Null,
            };
            (key, value)
        })
        .collect();
    serde_json::json!(map).to_string()
}

fn secrets_ref_from_json(text: &str) -> Result<common::SecretsRef, StoreError> {
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| corrupt("secrets_ref", e))?;
    let entries = map
        .into_iter()
        .map(|(key, value)| {
            let target = if let Some(name) = value.get("github_secret").and_then(|n| n.as_str()) {
                Some(common::secret_target::Target::GithubSecret(
                    common::GitHubSecretTarget {
                        name: name.to_owned(),
                        location: value
                            .get("location")
                            .and_then(|l| l.as_str())
                            .and_then(crate::project::secret_location),
                    },
                ))
            } else {
                value.get("vault_entry").map(|e| {
                    common::secret_target::Target::VaultEntry(common::VaultEntryRef {
                        user_id: e["user_id"].as_str().unwrap_or_default().to_owned(),
                        key: e["key"].as_str().unwrap_or_default().to_owned(),
                        version: e["version"].as_i64().unwrap_or_default(),
                    })
                })
            };
            (key, common::SecretTarget { target })
        })
        .collect();
    Ok(common::SecretsRef { entries })
}

#[cfg(test)]
mod tests;
