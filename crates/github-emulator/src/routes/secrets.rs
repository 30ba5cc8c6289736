//! Actions repository secrets. A `PUT` is validated like GitHub does (name rules, both fields,
//! the current `key_id`) and then really unsealed with the repository's X25519 key: a value
//! that does not decrypt, is over 48 KB, or would be the 101st secret is refused with 422.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::Arrived;
use crate::auth::{Identity, authorize_repo};
use crate::error::{ApiError, parse_body};
use crate::model::{self, Level, SecretStore};

/// GitHub's limits. "Secrets are limited to 48 KB in size" (GitHub Docs, "Secrets reference",
/// "Limits for secrets") does not say which size: we measure the value itself (the decrypted
/// plaintext), 48 KiB = 49,152 bytes, not the sealed box nor its base64 (48 bytes and a third
/// more). Not confirmed against GitHub; the broker and the scaffolder check the same measure.
pub(super) const MAX_VALUE_BYTES: usize = 48 * 1024;
pub(super) const MAX_SECRETS: usize = 100;
pub(super) const DEFAULT_PER_PAGE: usize = 30;
pub(super) const MAX_PER_PAGE: usize = 100;

pub(super) const NAME_RULES: &str = "Secret names can only contain alphanumeric characters ([a-z], [A-Z], [0-9]) or underscores (_). Spaces are not allowed. Must start with a letter ([a-z], [A-Z]) or underscores (_).";

pub(super) fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.to_ascii_uppercase().starts_with("GITHUB_")
}

pub(super) fn secret_json(name: &str, secret: &model::Secret) -> Value {
    json!({
        "name": name,
        "created_at": model::rfc3339(secret.created_at),
        "updated_at": model::rfc3339(secret.updated_at),
    })
}

pub(super) async fn public_key(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let body = {
        let world = state.world();
        authorize_repo(&identity, &world, &owner, &repo, "secrets", Level::Read)?;
        let repo = world.repo(&owner, &repo).ok_or_else(ApiError::not_found)?;
        json!({
            "key_id": repo.actions.key.id,
            "key": STANDARD.encode(repo.actions.key.secret.public_key().as_bytes()),
        })
    };
    state.stats().public_key_fetches += 1;
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
pub(super) struct Page {
    pub(super) per_page: Option<String>,
    pub(super) page: Option<String>,
}

pub(super) async fn list(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let world = state.world();
    authorize_repo(&identity, &world, &owner, &repo, "secrets", Level::Read)?;
    let r = world.repo(&owner, &repo).ok_or_else(ApiError::not_found)?;
    Ok(listing(
        &format!("{}/repos/{owner}/{repo}/actions/secrets", state.base_url),
        &r.actions.secrets,
        page,
        |_| json!({}),
    ))
}

/// One page of `secrets` as GitHub lists them (`total_count`, `secrets`, a `Link` header);
/// `extra` adds fields to each secret (an organization secret's `visibility`).
pub(super) fn listing(
    base: &str,
    secrets: &std::collections::BTreeMap<String, model::Secret>,
    page: Page,
    extra: impl Fn(&str) -> Value,
) -> Response {
    let per_page = page
        .per_page
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_PER_PAGE)
        .min(MAX_PER_PAGE);
    let number = page
        .page
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .unwrap_or(1);
    let total = secrets.len();
    let listed: Vec<Value> = secrets
        .iter()
        .skip((number - 1).saturating_mul(per_page))
        .take(per_page)
        .map(|(name, s)| {
            let mut one = secret_json(name, s);
            if let (Some(one), Value::Object(more)) = (one.as_object_mut(), extra(name)) {
                one.extend(more);
            }
            one
        })
        .collect();
    let last = total.div_ceil(per_page).max(1);
    let link = link_header(base, per_page, number, last);
    let mut response = Json(json!({"total_count": total, "secrets": listed})).into_response();
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

/// GitHub's `Link` header: prev/next/last/first as they apply; none for a single page.
pub(super) fn link_header(base: &str, per_page: usize, page: usize, last: usize) -> Option<String> {
    let url = |n: usize| format!("<{base}?per_page={per_page}&page={n}>");
    let mut parts = Vec::new();
    if page > 1 {
        parts.push(format!("{}; rel=\"prev\"", url((page - 1).min(last))));
    }
    if page < last {
        parts.push(format!("{}; rel=\"next\"", url(page + 1)));
        parts.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        parts.push(format!("{}; rel=\"first\"", url(1)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

pub(super) async fn get(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let world = state.world();
    authorize_repo(&identity, &world, &owner, &repo, "secrets", Level::Read)?;
    let r = world.repo(&owner, &repo).ok_or_else(ApiError::not_found)?;
    let name = name.to_ascii_uppercase();
    let secret = r
        .actions
        .secrets
        .get(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(secret_json(&name, secret)))
}

#[derive(Debug, Deserialize)]
pub(super) struct PutBody {
    pub(super) encrypted_value: Option<String>,
    pub(super) key_id: Option<String>,
    /// Organization secrets only.
    pub(super) visibility: Option<String>,
    pub(super) selected_repository_ids: Option<Vec<u64>>,
}

/// The key id and the sealed value of a secret PUT, checked as GitHub checks them before
/// anything is opened: the secret's name, both fields present, standard Base64.
pub(super) fn sealed_put(name: &str, body: &PutBody) -> Result<(String, Vec<u8>), ApiError> {
    if !valid_name(name) {
        return Err(ApiError::unprocessable(NAME_RULES));
    }
    let encrypted = body
        .encrypted_value
        .as_deref()
        .ok_or_else(|| ApiError::missing_field("encrypted_value"))?;
    let key_id = body
        .key_id
        .clone()
        .ok_or_else(|| ApiError::missing_field("key_id"))?;
    let sealed = STANDARD.decode(encrypted.as_bytes()).map_err(|_| {
        ApiError::unprocessable(
            "Invalid request.\n\nInvalid property /encrypted_value: not padded standard Base64.",
        )
    })?;
    Ok((key_id, sealed))
}

/// Opens `sealed` with `store`'s key and keeps it under `name`, as GitHub takes a secret: the
/// key id is the store's current one, the value opens and fits 48 KB, and a new name finds room
/// (`limit`: at most that many secrets, and who holds them, for the refusal). True if created.
pub(super) fn store_sealed(
    store: &mut SecretStore,
    name: &str,
    key_id: &str,
    sealed: &[u8],
    (limit, holder): (usize, &str),
) -> Result<bool, ApiError> {
    if key_id != store.key.id {
        return Err(ApiError::unprocessable(
            "Bad request: the key_id does not match the current public key.",
        ));
    }
    let value = Zeroizing::new(store.key.secret.unseal(sealed).map_err(|_| {
        ApiError::unprocessable(
            "Bad request: the encrypted_value could not be decrypted with the public key.",
        )
    })?);
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::unprocessable(format!(
            "Secret value is too large: the limit is 48 KB ({MAX_VALUE_BYTES} bytes)."
        )));
    }
    let upper = name.to_ascii_uppercase();
    if !store.secrets.contains_key(&upper) && store.secrets.len() >= limit {
        return Err(ApiError::unprocessable(format!(
            "{holder} can have at most {limit} secrets."
        )));
    }
    Ok(store.store_secret(&upper, value))
}

pub(super) async fn put(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    arrived: Option<Extension<Arrived>>,
    Path((owner, repo, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let arrived = arrived.map_or_else(Instant::now, |Extension(Arrived(at))| at);
    {
        let world = state.world();
        authorize_repo(&identity, &world, &owner, &repo, "secrets", Level::Write)?;
    }
    let body: PutBody = parse_body(&body)?;
    let (key_id, sealed) = sealed_put(&name, &body)?;
    let mut world = state.world();
    let r = world
        .repo_mut(&owner, &repo)
        .ok_or_else(ApiError::not_found)?;
    let created = store_sealed(
        &mut r.actions,
        &name,
        &key_id,
        &sealed,
        (MAX_SECRETS, "A repository"),
    )?;
    let full = r.full_name();
    drop(world);
    state.stats().secret_writes.push((full, arrived));
    Ok(if created {
        (StatusCode::CREATED, Json(json!({}))).into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    })
}

pub(super) async fn delete(
    State(state): State<Arc<model::State>>,
    Extension(identity): Extension<Identity>,
    Path((owner, repo, name)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let mut world = state.world();
    authorize_repo(&identity, &world, &owner, &repo, "secrets", Level::Write)?;
    let r = world
        .repo_mut(&owner, &repo)
        .ok_or_else(ApiError::not_found)?;
    r.actions
        .secrets
        .remove(&name.to_ascii_uppercase())
        .ok_or_else(ApiError::not_found)?;
    Ok(StatusCode::NO_CONTENT)
}
