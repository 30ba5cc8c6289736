//! Repository contents on the default branch (`main`): read a file or a directory, create or
//! update a file. Writing under `.github/workflows/` also needs `workflows: write`, and an
//! update must name the current blob `sha` (409 otherwise), as on GitHub.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Identity, authorize_repo, require_installation, require_permission};
use crate::error::{ApiError, parse_body};
use crate::model::{self, Level, Repo};

const BRANCH: &str = "main";
const WORKFLOWS: &str = ".github/workflows/";

#[derive(Debug, Deserialize)]
pub(super) struct RefQuery {
    #[serde(rename = "ref")]
    reference: Option<String>,
}

fn is_default_branch(r: &str) -> bool {
    matches!(r, BRANCH | "heads/main" | "refs/heads/main")
}

/// A file's metadata as the contents API shows it (without the content).
fn file_meta(base: &str, repo: &Repo, path: &str, content: &[u8]) -> Value {
    let full = repo.full_name();
    let sha = model::blob_sha(content);
    let name = path.rsplit('/').next().unwrap_or(path);
    let url = format!("{base}/repos/{full}/contents/{path}?ref={BRANCH}");
    let git_url = format!("{base}/repos/{full}/git/blobs/{sha}");
    let html_url = format!("{base}/{full}/blob/{BRANCH}/{path}");
    json!({
        "type": "file",
        "name": name,
        "path": path,
        "sha": sha,
        "size": content.len(),
        "url": url,
        "git_url": git_url,
        "html_url": html_url,
        "download_url": format!("{base}/{full}/raw/{BRANCH}/{path}"),
        "_links": {"self": url, "git": git_url, "html": html_url},
    })
}

/// Base64 wrapped at 60 columns with a trailing newline, like GitHub's `content`.
fn wrapped_base64(content: &[u8]) -> String {
    let encoded = STANDARD.encode(content);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 60 + 1);
    for chunk in encoded.as_bytes().chunks(60) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out
}

pub(super) async fn get_root(
    state: State<Arc<model::State>>,
    identity: Extension<Identity>,
    Path((owner, repo)): Path<(String, String)>,
    query: Query<RefQuery>,
) -> Result<Json<Value>, ApiError> {
    get(state, identity, Path((owner, repo, String::new())), query).await
}

pub(super) async fn get(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    Query(query): Query<RefQuery>,
) -> Result<Json<Value>, ApiError> {
    let world = state.world();
    authorize_repo(&identity, &world, &owner, &repo, "contents", Level::Read)?;
    let repo = world.repo(&owner, &repo).ok_or_else(ApiError::not_found)?;
    if let Some(r) = query.reference.as_deref()
        && !is_default_branch(r)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No commit found for the ref {r}"),
        ));
    }
    if repo.files.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "This repository is empty.",
        ));
    }
    let path = path.trim_end_matches('/');
    if let Some(content) = repo.files.get(path) {
        let mut meta = file_meta(&state.base_url, repo, path, content);
        if let Some(map) = meta.as_object_mut() {
            map.insert("encoding".to_owned(), "base64".into());
            map.insert("content".to_owned(), wrapped_base64(content).into());
        }
        return Ok(Json(meta));
    }
    // A directory: its immediate children.
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    for (file, content) in repo.files.range(prefix.clone()..) {
        let Some(rest) = file.strip_prefix(&prefix) else {
            break;
        };
        match rest.split_once('/') {
            None => {
                entries.insert(
                    rest.to_owned(),
                    file_meta(&state.base_url, repo, file, content),
                );
            }
            Some((dir, _)) => {
                let dir_path = format!("{prefix}{dir}");
                entries.entry(dir.to_owned()).or_insert_with(|| {
                    json!({
                        "type": "dir",
                        "name": dir,
                        "path": dir_path,
                        "url": format!("{}/repos/{}/contents/{dir_path}?ref={BRANCH}", state.base_url, repo.full_name()),
                    })
                });
            }
        }
    }
    if entries.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Json(Value::Array(entries.into_values().collect())))
}

#[derive(Debug, Deserialize)]
struct PutBody {
    message: Option<String>,
    content: Option<String>,
    sha: Option<String>,
    branch: Option<String>,
}

fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.ends_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

pub(super) async fn put(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    {
        let world = state.world();
        authorize_repo(&identity, &world, &owner, &repo, "contents", Level::Write)?;
    }
    if path.starts_with(WORKFLOWS) {
        let grant = require_installation(&identity)?;
        require_permission(grant, "workflows", Level::Write).map_err(|_| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "refusing to allow a GitHub App to create or update workflow `{path}` without `workflows` permission"
                ),
            )
        })?;
    }
    let body: PutBody = parse_body(&body)?;
    let message = body
        .message
        .ok_or_else(|| ApiError::missing_field("message"))?;
    let encoded = body
        .content
        .ok_or_else(|| ApiError::missing_field("content"))?;
    let cleaned: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let content = STANDARD
        .decode(cleaned)
        .map_err(|_| ApiError::unprocessable("content is not valid Base64"))?;
    if let Some(branch) = body.branch.as_deref()
        && !is_default_branch(branch)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Branch {branch} not found"),
        ));
    }
    if !valid_path(&path) {
        return Err(ApiError::unprocessable(
            "path contains a malformed path component",
        ));
    }

    let mut world = state.world();
    let repo = world
        .repo_mut(&owner, &repo)
        .ok_or_else(ApiError::not_found)?;
    let created = match (repo.files.get(&path), body.sha.as_deref()) {
        (Some(_), None) => return Err(ApiError::missing_field("sha")),
        (Some(old), Some(sha)) if model::blob_sha(old) != sha => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{path} does not match {sha}"),
            ));
        }
        (None, Some(sha)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{path} does not match {sha}"),
            ));
        }
        (Some(_), Some(_)) => false,
        (None, None) => true,
    };
    let meta = file_meta(&state.base_url, repo, &path, &content);
    repo.files.insert(path, content);
    let commit_sha = repo.commit(&message);
    let full = repo.full_name();
    let body = json!({
        "content": meta,
        "commit": {
            "sha": commit_sha,
            "message": message,
            "url": format!("{}/repos/{full}/git/commits/{commit_sha}", state.base_url),
            "html_url": format!("{}/{full}/commit/{commit_sha}", state.base_url),
        },
    });
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}
