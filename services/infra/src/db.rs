//! Every query of infra. Reads take the pool; writes take the connection of the audit
//! ledger's transaction, so each change commits with its audit record.

use orchestrator_store::{Database, StoreError};
use sqlx::any::{AnyTypeInfo, AnyValueRef};
use sqlx::error::BoxDynError;
use sqlx::{Any, AnyConnection};

use crate::model::{
    CredentialSource, Failure, NewOperation, NewServer, Operation, OperationKind, OperationState,
    Provider, Server, ServerState, Steps,
};

mod leases;
#[cfg(test)]
mod tests;

pub(crate) use leases::{
    claim as claim_lease, claimable as claimable_operations, release as release_lease,
};

/// The stored enums and JSON documents read straight into their types; an unknown value is a
/// decoding error, never silently another value.
macro_rules! text_columns {
    ($($ty:ty: $parse:path;)+) => {$(
        impl sqlx::Type<Any> for $ty {
            fn type_info() -> AnyTypeInfo {
                <String as sqlx::Type<Any>>::type_info()
            }
        }

        impl<'r> sqlx::Decode<'r, Any> for $ty {
            fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok($parse(<&str as sqlx::Decode<'r, Any>>::decode(value)?)?)
            }
        }
    )+};
}

text_columns! {
    Provider: str::parse;
    ServerState: str::parse;
    OperationKind: str::parse;
    OperationState: str::parse;
    CredentialSource: serde_json::from_str;
    Steps: serde_json::from_str;
    Failure: serde_json::from_str;
}

/// A JSON document as stored.
fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Other(e.to_string()))
}

macro_rules! server_columns {
    () => {
        "id, project_id, provider, provider_server_id, state, hostname, ipv4, region, size, \
         image, deploy_user, deploy_public_key, host_public_key, dns_record_id, \
         provider_task_id, provider_credentials, dns_credentials, operation_id, created_us, \
         updated_us, ready_us, destroyed_us"
    };
}

macro_rules! operation_columns {
    () => {
        "id, request_id, kind, server_id, project_id, state, steps, message, error, created_us, \
         updated_us, ended_us"
    };
}

// ---- servers ----

pub(crate) async fn server(db: &Database, id: &str) -> Result<Option<Server>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        server_columns!(),
        " FROM servers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?)
}

/// Which servers a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServerFilter {
    /// Empty: every project's.
    pub(crate) project_id: String,
    pub(crate) provider: Option<Provider>,
    pub(crate) show_destroyed: bool,
}

/// Where a page of servers starts: after this `(created_us, id)`, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct After {
    pub(crate) created_us: i64,
    pub(crate) id: String,
}

impl After {
    /// Before every server: the first page.
    pub(crate) fn start() -> Self {
        Self {
            created_us: i64::MAX,
            id: String::new(),
        }
    }
}

/// Up to `limit` servers of `filter` after `after`, newest first.
pub(crate) async fn list_servers(
    db: &Database,
    filter: &ServerFilter,
    after: &After,
    limit: i64,
) -> Result<Vec<Server>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        server_columns!(),
        " FROM servers \
         WHERE ($1 = '' OR project_id = $1) AND ($2 = '' OR provider = $2) \
         AND ($3 = 1 OR state <> $4) \
         AND (created_us < $5 OR (created_us = $5 AND $6 <> '' AND id < $6)) \
         ORDER BY created_us DESC, id DESC LIMIT $7"
    ))
    .bind(&filter.project_id)
    .bind(filter.provider.map_or("", Provider::as_str))
    .bind(i64::from(filter.show_destroyed))
    .bind(ServerState::Destroyed.as_str())
    .bind(after.created_us)
    .bind(&after.id)
    .bind(limit)
    .fetch_all(db.pool())
    .await?)
}

/// The server, not destroyed, that has `hostname` (its A record and DEPLOY_HOST are that
/// server's).
pub(crate) async fn live_server_named(
    conn: &mut AnyConnection,
    hostname: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM servers WHERE hostname = $1 AND state <> $2")
            .bind(hostname)
            .bind(ServerState::Destroyed.as_str())
            .fetch_optional(conn)
            .await?,
    )
}

/// The server, not destroyed, that took Time4VPS server `provider_server_id` over.
pub(crate) async fn live_time4vps_server(
    conn: &mut AnyConnection,
    provider_server_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM servers WHERE provider = $1 AND provider_server_id = $2 AND state <> $3",
    )
    .bind(Provider::Time4Vps.as_str())
    .bind(provider_server_id)
    .bind(ServerState::Destroyed.as_str())
    .fetch_optional(conn)
    .await?)
}

/// Records `server` as `id`, provisioning under operation `operation_id`.
pub(crate) async fn insert_server(
    conn: &mut AnyConnection,
    id: &str,
    operation_id: &str,
    server: &NewServer,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO servers (id, project_id, provider, provider_server_id, state, hostname, \
         region, size, image, deploy_user, provider_credentials, dns_credentials, operation_id, \
         created_us, updated_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
    )
    .bind(id)
    .bind(server.project_id.as_str())
    .bind(server.provider.as_str())
    .bind(&server.provider_server_id)
    .bind(ServerState::Provisioning.as_str())
    .bind(&server.hostname)
    .bind(&server.region)
    .bind(&server.size)
    .bind(&server.image)
    .bind(&server.deploy_user)
    .bind(json(&server.credentials)?)
    .bind(json(&server.dns_credentials)?)
    .bind(operation_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The columns of a server row that operations record as they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    ProviderServerId,
    ProviderTaskId,
    Ipv4,
    DnsRecordId,
    DeployPublicKey,
    HostPublicKey,
}

impl Column {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Column::ProviderServerId => "provider_server_id",
            Column::ProviderTaskId => "provider_task_id",
            Column::Ipv4 => "ipv4",
            Column::DnsRecordId => "dns_record_id",
            Column::DeployPublicKey => "deploy_public_key",
            Column::HostPublicKey => "host_public_key",
        }
    }

    fn update(self) -> &'static str {
        match self {
            Column::ProviderServerId => {
                "UPDATE servers SET provider_server_id = $2, updated_us = $3 WHERE id = $1"
            }
            Column::ProviderTaskId => {
                "UPDATE servers SET provider_task_id = $2, updated_us = $3 WHERE id = $1"
            }
            Column::Ipv4 => "UPDATE servers SET ipv4 = $2, updated_us = $3 WHERE id = $1",
            Column::DnsRecordId => {
                "UPDATE servers SET dns_record_id = $2, updated_us = $3 WHERE id = $1"
            }
            Column::DeployPublicKey => {
                "UPDATE servers SET deploy_public_key = $2, updated_us = $3 WHERE id = $1"
            }
            Column::HostPublicKey => {
                "UPDATE servers SET host_public_key = $2, updated_us = $3 WHERE id = $1"
            }
        }
    }
}

/// Sets (or, with `None`, clears) one column of a server.
pub(crate) async fn set_server_column(
    conn: &mut AnyConnection,
    server_id: &str,
    column: Column,
    value: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(column.update())
        .bind(server_id)
        .bind(value)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a server to `state`, stamping when it became ready or destroyed. Once a destroy
/// started, only `destroyed` is taken: a provision that ends meanwhile does not undo it.
pub(crate) async fn set_server_state(
    conn: &mut AnyConnection,
    server_id: &str,
    state: ServerState,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE servers SET state = $2, updated_us = $3, \
         ready_us = CASE WHEN $2 = $4 AND ready_us IS NULL THEN $3 ELSE ready_us END, \
         destroyed_us = CASE WHEN $2 = $5 THEN $3 ELSE destroyed_us END \
         WHERE id = $1 AND ($2 = $5 OR state NOT IN ($6, $5))",
    )
    .bind(server_id)
    .bind(state.as_str())
    .bind(now)
    .bind(ServerState::Ready.as_str())
    .bind(ServerState::Destroyed.as_str())
    .bind(ServerState::Destroying.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// A destroy was accepted: the server is `destroying` whatever it was doing.
pub(crate) async fn mark_destroying(
    conn: &mut AnyConnection,
    server_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE servers SET state = $2, updated_us = $3 WHERE id = $1")
        .bind(server_id)
        .bind(ServerState::Destroying.as_str())
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

// ---- operations ----

pub(crate) async fn operation(db: &Database, id: &str) -> Result<Option<Operation>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        operation_columns!(),
        " FROM operations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?)
}

/// The operation a request id was first accepted as.
pub(crate) async fn operation_by_request(
    db: &Database,
    request_id: &str,
) -> Result<Option<Operation>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        operation_columns!(),
        " FROM operations WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_optional(db.pool())
    .await?)
}

/// The newest operation of `kind` on a server.
pub(crate) async fn latest_operation(
    db: &Database,
    server_id: &str,
    kind: OperationKind,
) -> Result<Option<Operation>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        operation_columns!(),
        " FROM operations WHERE server_id = $1 AND kind = $2 ORDER BY created_us DESC LIMIT 1"
    ))
    .bind(server_id)
    .bind(kind.as_str())
    .fetch_optional(db.pool())
    .await?)
}

/// An operation on the server that has not ended.
pub(crate) async fn running_operation_on(
    conn: &mut AnyConnection,
    server_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM operations WHERE server_id = $1 AND state IN ($2, $3)")
            .bind(server_id)
            .bind(OperationState::Pending.as_str())
            .bind(OperationState::Running.as_str())
            .fetch_optional(conn)
            .await?,
    )
}

/// Records `operation`, pending, with the message `accepted`.
pub(crate) async fn insert_operation(
    conn: &mut AnyConnection,
    operation: &NewOperation,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO operations (id, request_id, kind, server_id, project_id, state, steps, \
         message, created_us, updated_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'accepted', $8, $8)",
    )
    .bind(&operation.id)
    .bind(operation.request_id.as_ref().map(|r| r.as_str()))
    .bind(operation.kind.as_str())
    .bind(&operation.server_id)
    .bind(&operation.project_id)
    .bind(OperationState::Pending.as_str())
    .bind(json(&operation.steps)?)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// An operation's steps, read in the transaction that will change them.
pub(crate) async fn operation_steps(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Steps, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT steps FROM operations WHERE id = $1")
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

/// Progress: the operation is running, with these steps and this message.
pub(crate) async fn record_progress(
    conn: &mut AnyConnection,
    id: &str,
    steps: &Steps,
    message: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE operations SET steps = $2, message = $3, state = $4, updated_us = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(json(steps)?)
    .bind(message)
    .bind(OperationState::Running.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The operation ended in `state`, with `error` when it failed.
pub(crate) async fn end_operation(
    conn: &mut AnyConnection,
    id: &str,
    state: OperationState,
    error: Option<&Failure>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE operations SET state = $2, error = $3, updated_us = $4, ended_us = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(error.map(json).transpose()?)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
