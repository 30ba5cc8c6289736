//! Requests into typed values, before any GitHub call: every violation of a request is reported
//! at once (INVALID_ARGUMENT with one field violation each).

use std::collections::HashSet;

use orchestrator_fields::{Invalid, Page, ProjectId, RequestId};
use orchestrator_github::{RepoRef, SecretName};
use orchestrator_mesh::status::{At as _, Fields as _, Violations};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;
use tonic::Status;
use zeroize::Zeroizing;

use crate::location::{self, Location, Visibility};

/// GitHub's limit on secrets per repository (and so on one batch, and on a list page).
pub(crate) const MAX_SECRETS: usize = 100;
/// GitHub's limit on one secret value.
const MAX_VALUE: usize = 48 * 1024;
/// The names of the deploy credentials, which only SetDeployCredentials writes.
const DEPLOY_PREFIX: &str = "DEPLOY_";

/// Whether `name` is one of the deploy credentials (`DEPLOY_*`).
pub(crate) fn is_deploy_credential(name: &SecretName) -> bool {
    name.as_str().starts_with(DEPLOY_PREFIX)
}

/// One secret to write: a valid name and a value of GitHub's size.
///
/// Architecture Invariant: no L2 value is stored or logged. The value lives in a zeroizing
/// buffer from the request to the sealed box, and Debug shows the name only.
pub(crate) struct Secret {
    pub name: SecretName,
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A validated SetProjectSecrets or SetDeployCredentials request.
#[derive(Debug)]
pub(crate) struct SecretsRequest {
    pub request_id: RequestId,
    pub project_id: ProjectId,
    pub secrets: Vec<Secret>,
    /// Where the secrets go.
    pub location: Location,
    /// An organization secret's visibility (`None` for the other locations).
    pub visibility: Option<Visibility>,
}

/// A validated RegisterRepository request.
#[derive(Debug, Clone)]
pub(crate) struct RegisterRequest {
    pub request_id: RequestId,
    pub project_id: ProjectId,
    pub repo: RepoRef,
}

/// What a MintRepositoryToken request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenScope {
    /// Creating repositories in `GITHUB_ORG` (generated from a template or not); the project,
    /// if named, is only recorded.
    RepositoryCreation {
        project_id: Option<ProjectId>,
        from_template: bool,
    },
    /// Reading the project's registered repository.
    Clone { project_id: ProjectId },
    /// Committing the template to the project's registered repository.
    InitialCommit { project_id: ProjectId },
}

impl TokenScope {
    pub(crate) fn proto(&self) -> pb::RepositoryTokenScope {
        match self {
            TokenScope::RepositoryCreation { .. } => pb::RepositoryTokenScope::RepositoryCreation,
            TokenScope::Clone { .. } => pb::RepositoryTokenScope::Clone,
            TokenScope::InitialCommit { .. } => pb::RepositoryTokenScope::InitialCommit,
        }
    }

    /// The project the token is for, `""` when none was named.
    pub(crate) fn project_id(&self) -> &str {
        match self {
            TokenScope::RepositoryCreation { project_id, .. } => {
                project_id.as_ref().map_or("", ProjectId::as_str)
            }
            TokenScope::Clone { project_id } | TokenScope::InitialCommit { project_id } => {
                project_id.as_str()
            }
        }
    }
}

pub(crate) fn register_repository(
    req: pb::RegisterRepositoryRequest,
) -> Result<RegisterRequest, Status> {
    let repo = match &req.repository {
        Some(r) => RepoRef::new(&r.owner, &r.name).map_err(|e| e.to_string()),
        None => Err("required".to_owned()),
    };
    let (request_id, project_id, repo) = Violations::new().collect((
        RequestId::parse(&req.request_id).at("request_id"),
        ProjectId::parse(&req.project_id).at("project_id"),
        repo.at("repository"),
    ))?;
    Ok(RegisterRequest {
        request_id,
        project_id,
        repo,
    })
}

pub(crate) fn set_project_secrets(
    req: pb::SetProjectSecretsRequest,
) -> Result<SecretsRequest, Status> {
    let mut v = Violations::new();
    let ids = ids(&mut v, &req.request_id, &req.project_id);
    let place = location::parse(&mut v, "location", req.location.as_ref(), true);
    let secrets = batch(&mut v, req.secrets, BatchOf::ProjectSecrets);
    let mut request = secrets_request(v, ids, secrets)?;
    // Checked above: the violations would have refused the request.
    let (location, visibility) =
        place.ok_or_else(|| Status::internal("the location was not checked"))?;
    request.location = location;
    request.visibility = visibility;
    Ok(request)
}

/// The infra server a SetDeployCredentials comes from: 1-128 characters of `[A-Za-z0-9_-]`
/// (infra's `srv-` ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerId(String);

impl ServerId {
    const RULE: &'static str = "required: the infra server's id, 1-128 characters of [A-Za-z0-9_-]";

    fn parse(raw: &str) -> Option<Self> {
        let valid = (1..=128).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        valid.then(|| Self(raw.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A SetDeployCredentials: the secrets, and the server they come from.
pub(crate) fn set_deploy_credentials(
    req: pb::SetDeployCredentialsRequest,
) -> Result<(SecretsRequest, ServerId), Status> {
    let mut v = Violations::new();
    let ids = ids(&mut v, &req.request_id, &req.project_id);
    let server_id = ServerId::parse(&req.server_id);
    v.check(server_id.is_some(), "server_id", ServerId::RULE);
    let creds = req.credentials.unwrap_or_default();
    // Any non-empty subset: the key is handed over as soon as infra generates it.
    let values: Vec<common::ProjectSecretValue> = [
        ("DEPLOY_HOST", creds.host.into_bytes()),
        ("DEPLOY_USER", creds.user.into_bytes()),
        ("DEPLOY_SSH_KEY", creds.ssh_private_key),
        ("DEPLOY_KNOWN_HOSTS", creds.known_hosts.into_bytes()),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(name, value)| common::ProjectSecretValue {
        name: name.into(),
        value,
    })
    .collect();
    v.check(
        !values.is_empty(),
        "credentials",
        "at least one of host, user, ssh_private_key, known_hosts",
    );
    let secrets = if values.is_empty() {
        Vec::new()
    } else {
        batch(&mut v, values, BatchOf::DeployCredentials)
    };
    let request = secrets_request(v, ids, secrets)?;
    // Checked above: the violations would have refused the request.
    let server_id = server_id.ok_or_else(|| Status::internal("server_id was not checked"))?;
    Ok((request, server_id))
}

/// ListProjectSecrets' project and page. The page sizes are the contract's (0 = 100, at most
/// 100: a repository holds no more); the token is the shared one, positioned after the last
/// name.
pub(crate) fn list_project_secrets(
    req: &pb::ListProjectSecretsRequest,
) -> Result<(ProjectId, Page, Location), Status> {
    let max = MAX_SECRETS as i32;
    let size = match req.page_size {
        0 => max,
        n => n.min(max),
    };
    let mut v = Violations::new();
    let place = location::parse(&mut v, "location", req.location.as_ref(), false);
    let (project_id, page) = v.collect((
        ProjectId::parse(&req.project_id).at("project_id"),
        Page::parse(size, &req.page_token, 1),
    ))?;
    Ok((project_id, page, found(place)?))
}

pub(crate) fn delete_project_secret(
    req: &pb::DeleteProjectSecretRequest,
) -> Result<(ProjectId, SecretName, Location), Status> {
    let mut v = Violations::new();
    let place = location::parse(&mut v, "location", req.location.as_ref(), false);
    let (project_id, name) = v.collect((
        ProjectId::parse(&req.project_id).at("project_id"),
        SecretName::new(&req.name).at("name"),
    ))?;
    Ok((project_id, name, found(place)?))
}

pub(crate) fn reconcile_project_secrets(
    req: &pb::ReconcileProjectSecretsRequest,
) -> Result<(ProjectId, Location), Status> {
    let mut v = Violations::new();
    let place = location::parse(&mut v, "location", req.location.as_ref(), false);
    let project_id = v.collect(ProjectId::parse(&req.project_id).at("project_id"))?;
    Ok((project_id, found(place)?))
}

/// A location `location::parse` accepted (its violations, if any, refused the request first).
fn found(place: Option<(Location, Option<Visibility>)>) -> Result<Location, Status> {
    place
        .map(|(location, _)| location)
        .ok_or_else(|| Status::internal("the location was not checked"))
}

/// A MintRepositoryToken request, validated.
#[derive(Debug)]
pub(crate) struct MintRequest {
    pub scope: TokenScope,
    /// Names the call, so that a retry leaves one live token (see `minted`).
    pub request_id: Option<RequestId>,
}

/// The scope a MintRepositoryToken request asks for (whether its caller may have it is
/// decided by `tokens`, after validation), and its request id.
pub(crate) fn mint_repository_token(
    req: &pb::MintRepositoryTokenRequest,
) -> Result<MintRequest, Status> {
    let scope = pb::RepositoryTokenScope::try_from(req.scope)
        .unwrap_or(pb::RepositoryTokenScope::Unspecified);
    let mut v = Violations::new();
    v.check(
        scope != pb::RepositoryTokenScope::Unspecified,
        "scope",
        "required",
    );
    let project_id = if req.project_id.is_empty() {
        Ok(None)
    } else {
        ProjectId::parse(&req.project_id).map(Some)
    };
    let wanted = match (scope, project_id) {
        (pb::RepositoryTokenScope::Clone, Ok(None)) => Err(Invalid("required for CLONE")),
        (pb::RepositoryTokenScope::Clone, Ok(Some(project_id))) => {
            Ok(TokenScope::Clone { project_id })
        }
        (pb::RepositoryTokenScope::InitialCommit, Ok(None)) => {
            Err(Invalid("required for INITIAL_COMMIT"))
        }
        (pb::RepositoryTokenScope::InitialCommit, Ok(Some(project_id))) => {
            Ok(TokenScope::InitialCommit { project_id })
        }
        (_, project_id) => project_id.map(|project_id| TokenScope::RepositoryCreation {
            project_id,
            from_template: req.from_template,
        }),
    };
    let (scope, request_id) = v.collect((
        wanted.at("project_id"),
        RequestId::optional(&req.request_id).at("request_id"),
    ))?;
    Ok(MintRequest { scope, request_id })
}

/// `request_id` and `project_id`, checked ahead of the rest of a write so that their violations
/// are listed first.
fn ids(v: &mut Violations, request_id: &str, project_id: &str) -> Option<(RequestId, ProjectId)> {
    (
        RequestId::parse(request_id).at("request_id"),
        ProjectId::parse(project_id).at("project_id"),
    )
        .split(v)
}

fn secrets_request(
    v: Violations,
    ids: Option<(RequestId, ProjectId)>,
    secrets: Vec<Secret>,
) -> Result<SecretsRequest, Status> {
    let (request_id, project_id) = v.finish_with(ids)?;
    Ok(SecretsRequest {
        request_id,
        project_id,
        secrets,
        location: Location::Repository,
        visibility: None,
    })
}

/// Which RPC a batch comes from, which decides whether `DEPLOY_*` names are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchOf {
    /// SetProjectSecrets: any name but the deploy credentials'.
    ProjectSecrets,
    /// SetDeployCredentials: the typed message's `DEPLOY_*` names.
    DeployCredentials,
}

/// Validates the names and values of a batch: every violation at once.
fn batch(v: &mut Violations, values: Vec<common::ProjectSecretValue>, of: BatchOf) -> Vec<Secret> {
    if !v.count(values.len(), 1..=MAX_SECRETS, "secrets") {
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(values.len());
    for (i, mut s) in values.into_iter().enumerate() {
        let value = Zeroizing::new(std::mem::take(&mut s.value));
        v.check(
            (1..=MAX_VALUE).contains(&value.len()),
            format!("secrets[{i}].value"),
            "1-49,152 bytes (GitHub's limit)",
        );
        match SecretName::new(&s.name) {
            Ok(name) => {
                if !seen.insert(name.clone()) {
                    v.add(
                        format!("secrets[{i}].name"),
                        format!("`{}` appears twice (names are case-insensitive)", s.name),
                    );
                } else if of == BatchOf::ProjectSecrets && is_deploy_credential(&name) {
                    // Architecture Invariant: only infra writes DEPLOY_* secrets (through the
                    // typed SetDeployCredentials).
                    v.add(
                        format!("secrets[{i}].name"),
                        "DEPLOY_* names are reserved for the deploy credentials",
                    );
                } else {
                    out.push(Secret { name, value });
                }
            }
            Err(e) => v.add(format!("secrets[{i}].name"), e.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests;
