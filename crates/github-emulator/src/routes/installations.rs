//! App endpoints (JWT only): installation lookup and installation access tokens, which can
//! only narrow the installation's repositories and permissions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::TokenMint;
use crate::auth::{Identity, credential, require_app, require_installation};
use crate::error::{ApiError, parse_body};
use crate::model::{self, Grant, Installation, Level, World};

const MAX_REPOSITORIES: usize = 500;

fn installation_json(base: &str, world: &World, app_id: u64, inst: &Installation) -> Value {
    let account = world.account_by_lower(&inst.account);
    let created = model::rfc3339(inst.created_at);
    json!({
        "id": inst.id,
        "account": {"login": account.login, "id": account.id, "type": "Organization"},
        "app_id": app_id,
        "target_id": account.id,
        "target_type": "Organization",
        "repository_selection": if inst.repositories.is_some() { "selected" } else { "all" },
        "permissions": model::permissions_json(&inst.permissions),
        "events": [],
        "access_tokens_url": format!("{base}/app/installations/{}/access_tokens", inst.id),
        "repositories_url": format!("{base}/installation/repositories"),
        "html_url": format!("{base}/organizations/{}/settings/installations/{}", account.login, inst.id),
        "created_at": created,
        "updated_at": created,
        "suspended_at": null,
    })
}

pub(super) async fn for_repository(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_app(&identity)?;
    let world = state.world();
    let found = world.repo(&owner, &repo).ok_or_else(ApiError::not_found)?;
    // An installation on selected repositories does not cover the others.
    let inst = world
        .installation_for(&owner.to_ascii_lowercase())
        .filter(|i| {
            i.repositories
                .as_ref()
                .is_none_or(|r| r.contains(&found.id))
        })
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(installation_json(
        &state.base_url,
        &world,
        state.config.app_id,
        inst,
    )))
}

pub(super) async fn for_org(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_app(&identity)?;
    let world = state.world();
    let inst = world
        .installation_for(&org.to_ascii_lowercase())
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(installation_json(
        &state.base_url,
        &world,
        state.config.app_id,
        inst,
    )))
}

#[derive(Debug, Deserialize)]
struct MintBody {
    repositories: Option<Vec<String>>,
    repository_ids: Option<Vec<u64>>,
    permissions: Option<BTreeMap<String, String>>,
}

fn inaccessible_repositories() -> ApiError {
    ApiError::unprocessable(
        "There is at least one repository that does not exist or is not accessible to the parent installation.",
    )
}

pub(super) async fn access_token(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path(installation_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_app(&identity)?;
    let installation_id: u64 = installation_id.parse().map_err(|_| ApiError::not_found())?;
    let body: MintBody = parse_body(&body)?;
    let names = body.repositories.unwrap_or_default();
    let ids = body.repository_ids.unwrap_or_default();
    let requested = body.permissions.unwrap_or_default();

    let mut world = state.world();
    let inst = world
        .installations
        .get(&installation_id)
        .cloned()
        .ok_or_else(ApiError::not_found)?;
    if names.len() + ids.len() > MAX_REPOSITORIES {
        return Err(ApiError::unprocessable(format!(
            "Too many repositories specified (maximum {MAX_REPOSITORIES})."
        )));
    }
    let mut selected = BTreeSet::new();
    let mut selected_names = Vec::new();
    // A repository outside the installation (another account's, or one an installation on
    // selected repositories was not given) is refused like a missing one.
    let in_installation = |id: u64| inst.repositories.as_ref().is_none_or(|r| r.contains(&id));
    for name in &names {
        let repo = world
            .repo(&inst.account, name)
            .filter(|r| in_installation(r.id))
            .ok_or_else(inaccessible_repositories)?;
        selected.insert(repo.id);
        selected_names.push(repo.name.clone());
    }
    for id in &ids {
        let repo = world
            .repo_by_id(*id)
            .filter(|r| r.owner.eq_ignore_ascii_case(&inst.account) && in_installation(r.id))
            .ok_or_else(inaccessible_repositories)?;
        selected.insert(repo.id);
        selected_names.push(repo.name.clone());
    }
    let permissions = if requested.is_empty() {
        inst.permissions.clone()
    } else {
        let mut narrowed = BTreeMap::new();
        for (name, level) in &requested {
            let level = Level::parse(level).ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "The permission level '{level}' for '{name}' is not valid."
                ))
            })?;
            match inst.permissions.get(name) {
                Some(have) if *have >= level => {
                    narrowed.insert(name.clone(), level);
                }
                _ => {
                    return Err(ApiError::unprocessable(
                        "The permissions requested are not granted to this installation.",
                    ));
                }
            }
        }
        narrowed
    };

    let token = model::new_token(state.config.app_id);
    // `Config::token_lifetime` (an hour, as on GitHub, unless a test shortens it).
    let expires_at = model::now_s()
        + time::Duration::try_from(state.config.token_lifetime).unwrap_or(time::Duration::HOUR);
    // Not narrowed: every repository of the installation (all of the account's, or its
    // selection).
    let repositories = if selected.is_empty() {
        inst.repositories.clone()
    } else {
        Some(selected)
    };
    let repos_json: Option<Vec<Value>> = repositories.as_ref().map(|ids| {
        ids.iter()
            .filter_map(|id| world.repo_by_id(*id))
            .map(|r| super::repo_json(&state.base_url, &world, r))
            .collect()
    });
    world.tokens.insert(
        token.clone(),
        Grant {
            installation_id,
            account: inst.account.clone(),
            repositories: repositories.clone(),
            permissions: permissions.clone(),
            expires_at,
        },
    );
    let granted_repositories = repositories.as_ref().map(|ids| {
        ids.iter()
            .filter_map(|id| world.repo_by_id(*id))
            .map(|r| r.name.clone())
            .collect()
    });
    drop(world);

    state.stats().token_mints.push(TokenMint {
        token: token.clone(),
        installation_id,
        repositories: selected_names,
        permissions: requested,
        granted_permissions: permissions
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
            .collect(),
        granted_repositories,
        revoked: false,
    });

    let mut body = json!({
        "token": token,
        "expires_at": model::rfc3339(expires_at),
        "permissions": model::permissions_json(&permissions),
        "repository_selection": if repositories.is_some() { "selected" } else { "all" },
    });
    if let (Some(repos), Some(map)) = (repos_json, body.as_object_mut()) {
        map.insert("repositories".to_owned(), Value::Array(repos));
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /installation/token`: revokes the installation token the request is made with
/// (204). Only an installation token can call it; once revoked, the token is refused like an
/// unknown one (401 "Bad credentials"), and revoking it again is a 401 for that reason.
pub(super) async fn revoke_token(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    require_installation(&identity)?;
    let token = credential(&headers).ok_or_else(ApiError::bad_credentials)?;
    if !state.world().revoke(&token) {
        return Err(ApiError::bad_credentials());
    }
    if let Some(mint) = state
        .stats()
        .token_mints
        .iter_mut()
        .find(|m| m.token == token)
    {
        mint.revoked = true;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
