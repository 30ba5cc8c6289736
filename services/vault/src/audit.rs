//! What the vault writes into its audit log: the action names, the targets, and the digests of
//! versions that no longer hold a readable value. Records never carry a value.

use crate::crypto::digest;

/// An audited action. RPC-driven records carry the full gRPC method path, background work its
/// job name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Put,
    Get,
    BatchGet,
    Delete,
    Grant,
    Revoke,
    Rotate,
    Rewrap,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Put => "/orchestrator.vault.v1.VaultService/PutUserSecret",
            Action::Get => "/orchestrator.vault.v1.VaultService/GetUserSecret",
            Action::BatchGet => "/orchestrator.vault.v1.VaultService/BatchGetUserSecrets",
            Action::Delete => "/orchestrator.vault.v1.VaultService/DeleteUserSecret",
            Action::Grant => "/orchestrator.vault.v1.VaultService/GrantUserSecret",
            Action::Revoke => "/orchestrator.vault.v1.VaultService/RevokeUserSecretGrant",
            Action::Rotate => "/orchestrator.vault.v1.VaultService/RotateDataKey",
            Action::Rewrap => "vault/rewrap",
        }
    }
}

/// The audit target of one version. `/` and `%` are escaped so ids cannot collide.
pub(crate) fn target(user_id: &str, key: &str, version: i64) -> String {
    format!("{}{version}", target_prefix(user_id, key))
}

/// The audit target of a key's versions, without the version number.
pub(crate) fn target_prefix(user_id: &str, key: &str) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('/', "%2F");
    format!("users/{}/secrets/{}/versions/", esc(user_id), esc(key))
}

/// The audit target of a grant of a key to a project.
pub(crate) fn grant_target(user_id: &str, key: &str, project_id: &str) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('/', "%2F");
    format!(
        "users/{}/secrets/{}/grants/{}",
        esc(user_id),
        esc(key),
        esc(project_id)
    )
}

/// The audit target of a data key.
pub(crate) fn data_key_target(id: i64) -> String {
    format!("data_keys/{id}")
}

/// Why a version has no readable value any more, as its last audit record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    Deleted,
    Destroyed,
    Pruned,
}

impl Gone {
    /// The record's detail.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Gone::Deleted => "deleted",
            Gone::Destroyed => "destroyed",
            Gone::Pruned => "pruned",
        }
    }

    /// The digest the record carries in place of a ciphertext's: it matches no ciphertext, so
    /// a row restored from a copy after this record is refused.
    pub(crate) fn tombstone(self) -> Vec<u8> {
        digest(format!("orchestrator.vault tombstone: {}", self.as_str()).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_escape_separators_so_ids_cannot_collide() {
        assert_eq!(
            target("u1", "do/token", 3),
            "users/u1/secrets/do%2Ftoken/versions/3"
        );
        assert_ne!(target("a/b", "c", 1), target("a", "b/c", 1));
        assert_eq!(target("%2F", "k", 1), "users/%252F/secrets/k/versions/1");
        assert_eq!(data_key_target(4), "data_keys/4");
    }

    #[test]
    fn tombstones_differ_by_kind() {
        assert_ne!(Gone::Deleted.tombstone(), Gone::Destroyed.tombstone());
        assert_eq!(Gone::Pruned.tombstone().len(), 32);
    }
}
