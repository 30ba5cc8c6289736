//! Grants: a user lends one of their keys to one of their projects, and infra reads the key
//! only for a project it was lent to. Recorded by the scaffolder (GrantUserSecret) when it
//! creates a project owned by that user whose `secrets_ref` names the key; revoked by the user
//! through the API (RevokeUserSecretGrant). Each change runs in the ledger with its audit record.

use orchestrator_audit::Entry;
use orchestrator_proto::vault::v1 as pb;
use orchestrator_status::with_reason;
use orchestrator_store::now_us;
use tonic::{Code, Status};

use crate::audit::{Action, grant_target};
use crate::db::{self, GrantRow};
use crate::state::Vault;
use crate::validate::{GrantName, SecretVersion};

/// GrantUserSecret: the grant, live. Granting a live grant again changes nothing (and records
/// nothing); a revoked one becomes live again.
pub(crate) async fn grant(
    vault: &Vault,
    caller: String,
    wanted: GrantName,
) -> Result<pb::UserSecretGrant, Status> {
    let row = vault
        .ledger
        .write(move |conn| {
            Box::pin(async move {
                let (user_id, key, project_id) = parts(&wanted);
                let before = db::grant(conn, user_id, key, project_id).await?;
                if let Some(live) = before.filter(GrantRow::is_live) {
                    return Ok((live, Vec::new()));
                }
                db::insert_grant(conn, user_id, key, project_id, now_us()).await?;
                let row = db::grant(conn, user_id, key, project_id)
                    .await?
                    .ok_or_else(|| Status::internal("a grant just recorded is missing"))?;
                let entry = Entry::new(
                    &caller,
                    Action::Grant.as_str(),
                    grant_target(user_id, key, project_id),
                );
                Ok((row, vec![entry]))
            })
        })
        .await?;
    Ok(row.into_pb())
}

/// RevokeUserSecretGrant: the grant, revoked. Revoking a revoked grant succeeds (and records
/// nothing); a grant never made is NOT_FOUND `GRANT_NOT_FOUND`.
pub(crate) async fn revoke(
    vault: &Vault,
    caller: String,
    wanted: GrantName,
) -> Result<pb::UserSecretGrant, Status> {
    let row = vault
        .ledger
        .write(move |conn| {
            Box::pin(async move {
                let (user_id, key, project_id) = parts(&wanted);
                let before = db::grant(conn, user_id, key, project_id)
                    .await?
                    .ok_or_else(|| {
                        with_reason(
                            Code::NotFound,
                            "GRANT_NOT_FOUND",
                            format!(
                                "user `{user_id}` never granted key `{key}` to project `{project_id}`"
                            ),
                            &[
                                ("key", key.to_owned()),
                                ("project_id", project_id.to_owned()),
                            ],
                        )
                    })?;
                if !before.is_live() {
                    return Ok((before, Vec::new()));
                }
                db::revoke_grant(conn, user_id, key, project_id, now_us()).await?;
                let row = db::grant(conn, user_id, key, project_id)
                    .await?
                    .ok_or_else(|| Status::internal("a grant just revoked is missing"))?;
                let entry = Entry::new(
                    &caller,
                    Action::Revoke.as_str(),
                    grant_target(user_id, key, project_id),
                );
                Ok((row, vec![entry]))
            })
        })
        .await?;
    Ok(row.into_pb())
}

/// The refusal of a read that names no project, or a project the user has not granted the
/// key to (PERMISSION_DENIED `GRANT_MISSING`), decided before the row is even looked at
/// ([`crate::db::read_granted_many`] reads the row only for a live grant): a refused read says
/// nothing about whether the key exists.
pub(crate) fn refusal(wanted: &SecretVersion) -> Status {
    let key = wanted.name.key.as_str();
    let user_id = wanted.name.user_id.as_str();
    let project_id = wanted.project.as_ref().map(|p| p.as_str());
    let message = match project_id {
        Some(project_id) => format!(
            "user `{user_id}` has not granted key `{key}` to project `{project_id}` (or revoked it)"
        ),
        None => format!("a read of key `{key}` must name the project it is for (project_id)"),
    };
    with_reason(
        Code::PermissionDenied,
        "GRANT_MISSING",
        message,
        &[
            ("key", key.to_owned()),
            ("project_id", project_id.unwrap_or_default().to_owned()),
        ],
    )
}

fn parts(wanted: &GrantName) -> (&str, &str, &str) {
    (
        wanted.name.user_id.as_str(),
        wanted.name.key.as_str(),
        wanted.project.as_str(),
    )
}
