//! `/v2/account/keys`: register (422 for a key the account already has), list, get and delete
//! by id or fingerprint.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::DoError;
use super::paging::Page;
use super::state::{DoState, Key};
use crate::core::{self, Caller, QueryMap, lock};
use crate::keys::PublicKey;

fn key_json(k: &Key) -> Value {
    json!({
        "id": k.id,
        "fingerprint": k.fingerprint,
        "public_key": k.public_key,
        "name": k.name,
    })
}

pub(super) async fn create(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, DoError> {
    let body = core::parse_object(&body).map_err(|()| DoError::bad_json())?;
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
        _ => return Err(DoError::unprocessable("Name is required.")),
    };
    let public_key = match body.get("public_key") {
        Some(Value::String(k)) => k.trim().to_owned(),
        _ => return Err(DoError::unprocessable("Public key is required.")),
    };
    let parsed = PublicKey::parse(&public_key).ok_or_else(|| {
        DoError::unprocessable(
            "Key invalid type, we support 'ssh-rsa', 'ssh-dss', 'ecdsa-sha2-nistp256', \
             'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521', or 'ssh-ed25519'",
        )
    })?;
    let mut world = lock(&s.world);
    if world
        .keys
        .iter()
        .any(|k| !k.deleted && k.account == token && k.blob == parsed.blob)
    {
        return Err(DoError::unprocessable(
            "SSH Key is already in use on your account",
        ));
    }
    let id = 512_190 + world.keys.len() as u64 * 11;
    let key = Key {
        id,
        account: token,
        name,
        fingerprint: parsed.md5_fingerprint(),
        public_key,
        blob: parsed.blob,
        deleted: false,
    };
    let body = json!({"ssh_key": key_json(&key)});
    world.keys.push(key);
    Ok(core::json(StatusCode::CREATED, body))
}

pub(super) async fn list(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    QueryMap(q): QueryMap,
) -> Result<Response, DoError> {
    let page = Page::parse(&q)?;
    let world = lock(&s.world);
    let all: Vec<Value> = world
        .keys
        .iter()
        .filter(|k| !k.deleted && k.account == token)
        .map(key_json)
        .collect();
    let body = page.answer("ssh_keys", &all, &s.url, "/v2/account/keys", "");
    Ok(core::json(StatusCode::OK, body))
}

pub(super) async fn get(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Response, DoError> {
    let mut world = lock(&s.world);
    let k = world.key_mut(&token, &key).ok_or_else(DoError::not_found)?;
    Ok(core::json(StatusCode::OK, json!({"ssh_key": key_json(k)})))
}

pub(super) async fn delete(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Response, DoError> {
    let mut world = lock(&s.world);
    world
        .key_mut(&token, &key)
        .ok_or_else(DoError::not_found)?
        .deleted = true;
    Ok(StatusCode::NO_CONTENT.into_response())
}
