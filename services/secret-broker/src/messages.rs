//! The broker's records as its gRPC messages.

use orchestrator_github::{InstallationToken, SecretName};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;
use orchestrator_proto::timestamp;
use secrecy::ExposeSecret;
use tonic::Status;

use crate::db::{SecretRef, SecretState, WriteOutcome, WriteRecord};
use crate::registry::Registered;

/// A time as GitHub gives it (RFC 3339), `None` if it is not one.
pub(crate) fn github_time(s: &str) -> Option<prost_types::Timestamp> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

pub(crate) fn registration(reg: &Registered) -> pb::ProjectRepository {
    pb::ProjectRepository {
        project_id: reg.project_id.to_string(),
        repository: Some(common::RepositoryRef {
            owner: reg.repo.owner().to_owned(),
            name: reg.repo.name().to_owned(),
            id: 0,
        }),
        installation_id: reg.installation,
        create_time: Some(timestamp(reg.created_us)),
    }
}

/// A write GitHub accepted (now or for an earlier attempt of the same request).
pub(crate) fn written(name: &SecretName, write: &WriteRecord) -> common::SecretWriteResult {
    let outcome = match write.outcome {
        WriteOutcome::Created => common::SecretWriteOutcome::Created,
        WriteOutcome::Updated => common::SecretWriteOutcome::Updated,
    };
    common::SecretWriteResult {
        name: name.to_string(),
        outcome: outcome as i32,
        error: None,
        github_update_time: write.github_updated_at.as_deref().and_then(github_time),
        key_id: write.key_id.clone(),
        record_time: Some(timestamp(write.recorded_us)),
    }
}

/// A write that failed with `status`.
pub(crate) fn failed(name: &SecretName, status: &Status) -> common::SecretWriteResult {
    common::SecretWriteResult {
        name: name.to_string(),
        outcome: common::SecretWriteOutcome::Failed as i32,
        error: Some(common::Failure {
            code: status.code() as i32,
            reason: String::new(),
            message: status.message().to_owned(),
            metadata: Default::default(),
        }),
        ..Default::default()
    }
}

pub(crate) fn secret_reference(r: SecretRef) -> pb::ProjectSecretReference {
    let presence = match r.state {
        SecretState::Present => common::SecretPresence::Present,
        SecretState::Pending => common::SecretPresence::Pending,
        SecretState::Failed => common::SecretPresence::Failed,
    };
    pb::ProjectSecretReference {
        deploy_credential: r.is_deploy_credential(),
        presence: presence as i32,
        github_update_time: r.github_updated_at.as_deref().and_then(github_time),
        key_id: r.key_id.unwrap_or_default(),
        record_time: Some(timestamp(r.recorded_us)),
        written_by: r.written_by,
        // The reason a recorded message ends with (`... [LOST_IN_CRASH]`), as the failure's.
        last_error: r.last_error.map(|message| common::Failure {
            reason: reason_in(&message).unwrap_or_default().to_owned(),
            message,
            ..Default::default()
        }),
        location: crate::location::Location::from_key(&r.location).map(|l| l.proto()),
        name: r.name,
    }
}

/// A minted token, for the caller it was minted for: the token itself, what it may do, and
/// the repositories (of `owner`) it may do it on.
pub(crate) fn minted(
    token: &InstallationToken,
    scope: pb::RepositoryTokenScope,
    owner: &str,
) -> pb::MintRepositoryTokenResponse {
    pb::MintRepositoryTokenResponse {
        token: token.token.expose_secret().to_owned(),
        expire_time: Some(prost_types::Timestamp {
            seconds: token.expires_at,
            nanos: 0,
        }),
        scope: scope as i32,
        permissions: token
            .permissions
            .iter()
            .map(|(p, a)| pb::TokenPermission {
                permission: p.clone(),
                access: match a.as_str() {
                    "read" => pb::PermissionAccess::Read,
                    "write" => pb::PermissionAccess::Write,
                    "admin" => pb::PermissionAccess::Admin,
                    _ => pb::PermissionAccess::Unspecified,
                } as i32,
            })
            .collect(),
        repositories: token
            .repositories
            .iter()
            .map(|n| common::RepositoryRef {
                owner: owner.to_owned(),
                name: n.clone(),
                id: 0,
            })
            .collect(),
    }
}

/// The `[REASON]` a recorded message ends with (as `with_reason` writes it), if any.
fn reason_in(message: &str) -> Option<&str> {
    let inner = message.strip_suffix(']')?;
    let reason = &inner[inner.rfind('[')? + 1..];
    (!reason.is_empty()
        && reason
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
    .then_some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_message_gives_the_reason_it_ends_with() {
        assert_eq!(
            reason_in(crate::settle::LOST_IN_CRASH),
            Some("LOST_IN_CRASH")
        );
        assert_eq!(
            reason_in("GitHub refused it [SECRET_TOO_LARGE]"),
            Some("SECRET_TOO_LARGE")
        );
        assert_eq!(reason_in("no reason here"), None);
        assert_eq!(reason_in("odd [not a reason]"), None);
        assert_eq!(reason_in("empty []"), None);
    }
}
