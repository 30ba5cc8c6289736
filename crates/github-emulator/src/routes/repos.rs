//! Repositories: create in an organization, generate from a template (asynchronously, as
//! GitHub does), read, list the default branch's commits.
//!
//! Creating needs `administration: write` from a token of the organization's installation that
//! is not narrowed to selected repositories (a new repository cannot be in the selection).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
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

/// The name GitHub gives a repository asked for as `name`: every character other than ASCII
/// letters, digits, `.`, `-` and `_` becomes `-`, and a `.git` suffix is dropped (the answer
/// carries the name it got; "Create an organization repository": "The name of the repository").
pub(crate) fn normalized_name(name: &str) -> String {
    let replaced: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    match replaced.strip_suffix(".git") {
        Some(stem) if !stem.is_empty() => stem.to_owned(),
        _ => replaced,
    }
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
    let name = normalized_name(&body.name.ok_or_else(|| ApiError::missing_field("name"))?);
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
        repo.commit("Initial commit");
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
    if template.commits.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "{} is empty: a repository cannot be generated from an empty template.",
            template.full_name()
        )));
    }
    let template_key = model::repo_key(&template_owner, &template_repo);
    let template_full = template.full_name();
    let owner = body.owner.ok_or_else(|| ApiError::missing_field("owner"))?;
    let name = normalized_name(&body.name.ok_or_else(|| ApiError::missing_field("name"))?);
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
    repo.template = Some(template_full);
    let repo = world.repo(&owner, &name).ok_or_else(ApiError::not_found)?;
    let json = super::repo_json(&state.base_url, &world, repo);
    drop(world);
    // GitHub answers first and copies the template's files afterwards: until then the new
    // repository is empty (no commit, no branch). The copy is the branch's first commit and
    // replaces whatever was written meanwhile, so a client must wait for it before writing.
    let delay = state.config.template_copy_delay;
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut world = state.world();
        let Some(files) = world
            .repo_by_key_mut(&template_key)
            .map(|t| t.files.clone())
        else {
            return;
        };
        if let Some(repo) = world.repo_by_key_mut(&key) {
            repo.files = files;
            repo.commits.clear();
            repo.commit("Initial commit");
        }
    });
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

#[derive(Debug, Deserialize)]
pub(super) struct CommitsQuery {
    per_page: Option<usize>,
}

/// `GET /repos/{owner}/{repo}/commits`: the default branch's commits, newest first; 409 "Git
/// Repository is empty." while it has none (as a generated repository before its copy lands).
pub(super) async fn commits(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<CommitsQuery>,
) -> Result<Json<Value>, ApiError> {
    let world = state.world();
    authorize_repo(&identity, &world, &owner, &repo, "contents", Level::Read)?;
    let repo = world.repo(&owner, &repo).ok_or_else(ApiError::not_found)?;
    if repo.commits.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Git Repository is empty.",
        ));
    }
    let full = repo.full_name();
    let per_page = query.per_page.unwrap_or(30).clamp(1, 100);
    let list: Vec<Value> = repo
        .commits
        .iter()
        .rev()
        .take(per_page)
        .map(|(sha, message)| {
            json!({
                "sha": sha,
                "url": format!("{}/repos/{full}/commits/{sha}", state.base_url),
                "commit": {"message": message},
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}
