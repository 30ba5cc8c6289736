//! The REST routes, with GitHub's paths, JSON shapes and status codes. Every handler gets the
//! caller's [`Identity`](crate::auth::Identity) from the gate middleware and checks it first.

mod contents;
mod installations;
mod places;
mod repos;
mod secrets;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::model::{self, Repo, State, World};

/// When the gate saw the request (before injected latency), for [`crate::Stats`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived(pub(crate) Instant);

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/repos/{owner}/{repo}/installation",
            get(installations::for_repository),
        )
        .route("/orgs/{org}/installation", get(installations::for_org))
        .route(
            "/app/installations/{installation_id}/access_tokens",
            post(installations::access_token),
        )
        .route("/installation/token", delete(installations::revoke_token))
        .route("/orgs/{org}/repos", post(repos::create))
        .route("/repos/{owner}/{repo}/generate", post(repos::generate))
        .route("/repos/{owner}/{repo}", get(repos::get))
        .route("/repos/{owner}/{repo}/commits", get(repos::commits))
        .route("/repos/{owner}/{repo}/contents", get(contents::get_root))
        .route(
            "/repos/{owner}/{repo}/contents/{*path}",
            get(contents::get).put(contents::put),
        )
        .route("/repos/{owner}/{repo}/actions/secrets", get(secrets::list))
        .route(
            "/repos/{owner}/{repo}/actions/secrets/public-key",
            get(secrets::public_key),
        )
        .route(
            "/repos/{owner}/{repo}/actions/secrets/{name}",
            get(secrets::get).put(secrets::put).delete(secrets::delete),
        )
        .route(
            "/repos/{owner}/{repo}/environments/{env}",
            get(places::environment_get).put(places::environment_put),
        )
        .route(
            "/repos/{owner}/{repo}/environments/{env}/secrets",
            get(places::env_list),
        )
        .route(
            "/repos/{owner}/{repo}/environments/{env}/secrets/public-key",
            get(places::env_public_key),
        )
        .route(
            "/repos/{owner}/{repo}/environments/{env}/secrets/{name}",
            get(places::env_get)
                .put(places::env_put)
                .delete(places::env_delete),
        )
        .route(
            "/repos/{owner}/{repo}/dependabot/secrets",
            get(places::dependabot_list),
        )
        .route(
            "/repos/{owner}/{repo}/dependabot/secrets/public-key",
            get(places::dependabot_public_key),
        )
        .route(
            "/repos/{owner}/{repo}/dependabot/secrets/{name}",
            get(places::dependabot_get)
                .put(places::dependabot_put)
                .delete(places::dependabot_delete),
        )
        .route("/orgs/{org}/actions/secrets", get(places::org_list))
        .route(
            "/orgs/{org}/actions/secrets/public-key",
            get(places::org_public_key),
        )
        .route(
            "/orgs/{org}/actions/secrets/{name}",
            get(places::org_get)
                .put(places::org_put)
                .delete(places::org_delete),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::limits::gate,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::not_found().into_response()
}

/// A repository as GitHub's repository endpoints return it (the fields clients read).
pub(crate) fn repo_json(base: &str, world: &World, repo: &Repo) -> Value {
    let full = repo.full_name();
    let created = model::rfc3339(repo.created_at);
    let template = repo.template.as_ref().and_then(|t| {
        let (o, n) = t.split_once('/')?;
        let r = world.repo(o, n)?;
        Some(json!({
            "id": r.id,
            "name": r.name,
            "full_name": r.full_name(),
            "owner": {"login": r.owner, "id": r.owner_id, "type": "Organization"},
            "private": r.private,
        }))
    });
    json!({
        "id": repo.id,
        "node_id": format!("R_{}", repo.id),
        "name": repo.name,
        "full_name": full,
        "owner": {
            "login": repo.owner,
            "id": repo.owner_id,
            "type": "Organization",
            "url": format!("{base}/users/{}", repo.owner),
        },
        "private": repo.private,
        "visibility": if repo.private { "private" } else { "public" },
        "description": repo.description,
        "fork": false,
        "is_template": repo.is_template,
        "template_repository": template,
        "default_branch": "main",
        "html_url": format!("{base}/{full}"),
        "url": format!("{base}/repos/{full}"),
        "clone_url": format!("{base}/{full}.git"),
        "created_at": created,
        "updated_at": created,
        "pushed_at": created,
    })
}
