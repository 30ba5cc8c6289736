//! Repositories: create in an organization, generate from a template, read.
//!
//! Creating needs `administration: write` from a token of the organization's installation that
//! is not narrowed to selected repositories (a new repository cannot be in the selection).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Identity, authorize_repo, require_installation, require_permission};
use crate::error::{ApiError, parse_body};
use crate::model::{self, Grant, Level};

fn creation_failed(message: &str) -> ApiError {
    ApiError::unprocessable("Repository creation failed.").with_errors(json!([{
        "resource": "Repository",
        "code": "custom",
        "field": "name",
        "message": message,
    }]))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The caller may create repositories in `owner`.
fn may_create_in(grant: &Grant, owner: &str) -> Result<(), ApiError> {
    if !owner.eq_ignore_ascii_case(&grant.account) || grant.repositories.is_some() {
        return Err(ApiError::not_accessible());
    }
    require_permission(grant, "administration", Level::Write)
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    name: Option<String>,
    description: Option<String>,
    private: Option<bool>,
    visibility: Option<String>,
    auto_init: Option<bool>,
    is_template: Option<bool>,
}

pub(super) async fn create(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path(org): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let grant = require_installation(&identity)?;
    may_create_in(grant, &org)?;
    let body: CreateBody = parse_body(&body)?;
    let name = body.name.ok_or_else(|| ApiError::missing_field("name"))?;
    if !valid_name(&name) {
        return Err(creation_failed("name is invalid"));
    }
    let private = body.private.unwrap_or(matches!(
        body.visibility.as_deref(),
        Some("private" | "internal")
    ));
    let mut world = state.world();
    let (key, created) = world.create_repo(
        &org,
        &name,
        body.description,
        private,
        body.is_template.unwrap_or(false),
    );
    if !created {
        return Err(creation_failed("name already exists on this account"));
    }
    let repo = world
        .repo_by_key_mut(&key)
        .ok_or_else(ApiError::not_found)?;
    if body.auto_init.unwrap_or(false) {
        repo.files
            .insert("README.md".to_owned(), format!("# {name}\n").into_bytes());
    }
    let repo = world.repo(&org, &name).ok_or_else(ApiError::not_found)?;
    let json = super::repo_json(&state.base_url, &world, repo);
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

#[derive(Debug, Deserialize)]
struct GenerateBody {
    owner: Option<String>,
    name: Option<String>,
    description: Option<String>,
    private: Option<bool>,
    #[allow(dead_code)] // Accepted like GitHub; only the default branch exists here.
    include_all_branches: Option<bool>,
}

pub(super) async fn generate(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((template_owner, template_repo)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let grant = require_installation(&identity)?;
    let body: GenerateBody = parse_body(&body)?;
    let mut world = state.world();
    authorize_repo(
        &identity,
        &world,
        &template_owner,
        &template_repo,
        "contents",
        Level::Read,
    )?;
    let template = world
        .repo(&template_owner, &template_repo)
        .ok_or_else(ApiError::not_found)?;
    if !template.is_template {
        return Err(ApiError::unprocessable(format!(
            "{} is not a template repository.",
            template.full_name()
        )));
    }
    let files = template.files.clone();
    let template_full = template.full_name();
    let owner = body.owner.ok_or_else(|| ApiError::missing_field("owner"))?;
    let name = body.name.ok_or_else(|| ApiError::missing_field("name"))?;
    may_create_in(grant, &owner)?;
    if !valid_name(&name) {
        return Err(creation_failed("name is invalid"));
    }
    let (key, created) = world.create_repo(
        &owner,
        &name,
        body.description,
        body.private.unwrap_or(false),
        false,
    );
    if !created {
        return Err(creation_failed("name already exists on this account"));
    }
    let repo = world
        .repo_by_key_mut(&key)
        .ok_or_else(ApiError::not_found)?;
    repo.files = files;
    repo.template = Some(template_full);
    let repo = world.repo(&owner, &name).ok_or_else(ApiError::not_found)?;
    let json = super::repo_json(&state.base_url, &world, repo);
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

pub(super) async fn get(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let world = state.world();
    authorize_repo(&identity, &world, &owner, &repo, "metadata", Level::Read)?;
    let repo = world.repo(&owner, &repo).ok_or_else(ApiError::not_found)?;
    Ok(Json(super::repo_json(&state.base_url, &world, repo)))
}
