//! MintRepositoryToken: installation tokens narrowed per caller, each mint audited; a retry
//! under the same request id revokes what the earlier attempt minted (see `minted`).

use orchestrator_fields::RequestId;
use orchestrator_mesh::Identity;
use orchestrator_mesh::status::{Violations, checked, with_reason};
use orchestrator_proto::secretbroker::v1 as pb;
use secrecy::SecretString;
use tonic::{Code, Status};

use crate::audit::Action;
use crate::messages;
use crate::minted::Reused;
use crate::state::Broker;
use crate::validate::{MintRequest, TokenScope};

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a token is minted for: an installation, the repositories (of `owner`) and the
/// permissions.
struct Grant {
    installation: u64,
    owner: String,
    repositories: Vec<String>,
    permissions: &'static [(&'static str, &'static str)],
}

/// Whether `caller` may have a token of `scope`. The policy file says who may call; this says
/// what for.
///
/// Architecture Invariant: infra gets only clone tokens; only the scaffolder creates
/// repositories.
fn allowed(caller: &Identity, scope: pb::RepositoryTokenScope) -> bool {
    matches!(
        (caller.name().as_str(), scope),
        (
            "scaffolder",
            pb::RepositoryTokenScope::RepositoryCreation | pb::RepositoryTokenScope::InitialCommit
        ) | ("infra", pb::RepositoryTokenScope::Clone)
    )
}

/// What creating a repository needs, and nothing more: `administration: write`; generating it
/// from a (possibly private) template also needs to read the template. The token cannot be
/// narrowed to repositories (the new one does not exist yet), so it carries no write
/// permission on contents, workflows or secrets: those would reach every repository.
fn creation_permissions(from_template: bool) -> &'static [(&'static str, &'static str)] {
    if from_template {
        &[("administration", "write"), ("contents", "read")]
    } else {
        &[("administration", "write")]
    }
}

impl Broker {
    pub(crate) async fn mint_token(
        &self,
        caller: &Identity,
        mint: MintRequest,
    ) -> Result<pb::MintRepositoryTokenResponse, Status> {
        let MintRequest { scope, request_id } = mint;
        let proto_scope = scope.proto();
        if !allowed(caller, proto_scope) {
            return Err(with_reason(
                Code::PermissionDenied,
                "SCOPE_NOT_ALLOWED",
                format!("{caller} may not mint a {proto_scope:?} token"),
                &[
                    ("caller", caller.to_string()),
                    ("scope", format!("{proto_scope:?}")),
                ],
            ));
        }
        let grant = self.grant(&scope).await?;
        let caller_id = caller.to_string();
        // A retry of a request whose answer was lost: the token it minted is revoked first.
        if let Some(request_id) = &request_id {
            match self.minted.take(&caller_id, request_id, &scope) {
                Ok(None) => {}
                Ok(Some(earlier)) => self.revoke_superseded(&earlier, request_id).await,
                Err(Reused) => Violations::new().collect(checked(
                    (),
                    false,
                    "request_id",
                    "already used for a different scope or project",
                ))?,
            }
        }
        let repositories: Vec<&str> = grant.repositories.iter().map(String::as_str).collect();
        let token = self
            .github
            .mint_uncached(grant.installation, &repositories, grant.permissions)
            .await
            .map_err(|e| e.to_grpc())?;
        if let Some(request_id) = &request_id {
            let replaced = self.minted.remember(
                &caller_id,
                request_id,
                scope.clone(),
                token.token.clone(),
                token.expires_at,
                unix_now(),
            );
            if let Some(replaced) = replaced {
                self.revoke_superseded(&replaced, request_id).await;
            }
        }
        // Audited: who, what for, until when, under which request id. Never the token.
        let entry = Action::MintRepositoryToken
            .on_tokens(&caller_id, scope.project_id())
            .detail(format!(
                "scope={proto_scope:?} expires_at={} repositories={} request_id={}",
                token.expires_at,
                token.repositories.join(","),
                request_id.as_ref().map_or("", |r| r.as_str())
            ));
        self.ledger
            .write(move |_conn| Box::pin(async move { Ok(((), vec![entry])) }))
            .await?;
        Ok(messages::minted(&token, proto_scope, &grant.owner))
    }

    /// Revokes a token an earlier attempt of `request_id` minted, whose answer was lost. Not
    /// fatal when GitHub cannot be told now: the token reached nobody and expires within the
    /// hour.
    async fn revoke_superseded(&self, token: &SecretString, request_id: &RequestId) {
        if let Err(e) = self.github.revoke_token(token).await {
            tracing::warn!(
                request_id = %request_id.as_str(),
                error = %e,
                "could not revoke the token a retried mint superseded (it expires within the hour)"
            );
        }
    }

    /// The installation, repositories and permissions of a token of `scope`; the owner comes
    /// from the same lookup as the installation.
    async fn grant(&self, scope: &TokenScope) -> Result<Grant, Status> {
        match scope {
            TokenScope::Clone { project_id } => {
                let reg = self.registered(project_id).await?;
                Ok(Grant {
                    installation: reg.installation as u64,
                    owner: reg.repo.owner().to_owned(),
                    repositories: vec![reg.repo.name().to_owned()],
                    permissions: &[("contents", "read")],
                })
            }
            // The template is committed to the project's own repository, and only there.
            TokenScope::InitialCommit { project_id } => {
                let reg = self.registered(project_id).await?;
                Ok(Grant {
                    installation: reg.installation as u64,
                    owner: reg.repo.owner().to_owned(),
                    repositories: vec![reg.repo.name().to_owned()],
                    permissions: &[("contents", "write"), ("workflows", "write")],
                })
            }
            TokenScope::RepositoryCreation { from_template, .. } => {
                let org = self.organization()?.to_owned();
                let installation = self
                    .github
                    .installation_for_org(&org)
                    .await
                    .map_err(|e| e.to_grpc())?;
                Ok(Grant {
                    installation,
                    owner: org,
                    repositories: Vec::new(),
                    permissions: creation_permissions(*from_template),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_gets_only_its_own_scope() {
        let id =
            |name: &str| -> Identity { format!("spiffe://test.local/{name}").parse().unwrap() };
        use pb::RepositoryTokenScope as S;
        assert!(allowed(&id("scaffolder"), S::RepositoryCreation));
        assert!(allowed(&id("scaffolder"), S::InitialCommit));
        assert!(allowed(&id("infra"), S::Clone));
        for (caller, scope) in [
            ("scaffolder", S::Clone),
            ("infra", S::RepositoryCreation),
            ("infra", S::InitialCommit),
            ("api", S::InitialCommit),
            ("api", S::Clone),
            ("api", S::RepositoryCreation),
            ("operator", S::Clone),
        ] {
            assert!(!allowed(&id(caller), scope), "{caller} {scope:?}");
        }
    }

    #[test]
    fn a_creation_token_writes_no_repository() {
        for from_template in [false, true] {
            let permissions = creation_permissions(from_template);
            assert!(permissions.contains(&("administration", "write")));
            assert!(
                permissions
                    .iter()
                    .all(|(name, level)| *name == "administration" || *level == "read"),
                "{permissions:?}"
            );
            assert!(!permissions.iter().any(|(name, _)| *name == "workflows"));
        }
    }
}
