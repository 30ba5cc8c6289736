//! The secrets GitHub keeps besides a repository's Actions secrets, each set with its own
//! X25519 key pair and the same shapes and rules as `secrets` (names, 48 KB values, `key_id`,
//! real decryption):
//!
//! - a deployment environment's (`/repos/{owner}/{repo}/environments/{env}/secrets`):
//!   `environments` and `secrets` permissions; 404 while the environment does not exist
//!   (`PUT /repos/{owner}/{repo}/environments/{env}` creates it, `administration: write`);
//!   at most 100 secrets per environment; names up to 255 characters, compared ignoring case.
//! - Dependabot's (`/repos/{owner}/{repo}/dependabot/secrets`): `dependabot_secrets`; at most
//!   100 per repository.
//! - an organization's (`/orgs/{org}/actions/secrets`): `organization_secrets`, on a token of
//!   that organization's installation; a PUT needs `visibility` (`all`, `private`, `selected`;
//!   `selected_repository_ids` only with `selected`, each a repository of the organization);
//!   at most 1,000 per organization.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::Arrived;
use super::secrets::{MAX_SECRETS, Page, PutBody, listing, sealed_put, secret_json, store_sealed};
use crate::auth::{Identity, authorize_repo, require_installation, require_permission};
use crate::error::{ApiError, parse_body};
use crate::model::{self, Level, OrgAccess, SecretStore, World};

/// GitHub's limit of secrets per organization.
const MAX_ORG_SECRETS: usize = 1000;
/// GitHub's limit on an environment name's length.
const MAX_ENVIRONMENT_NAME: usize = 255;

/// Which set of secrets a request is about.
enum Place {
    Environment {
        owner: String,
        repo: String,
        env: String,
    },
    Dependabot {
        owner: String,
        repo: String,
    },
    Organization {
        org: String,
    },
}

impl Place {
    /// GitHub's permission rules for this set at `level`.
    fn authorize(&self, identity: &Identity, world: &World, level: Level) -> Result<(), ApiError> {
        match self {
            Place::Environment { owner, repo, .. } => {
                authorize_repo(identity, world, owner, repo, "environments", level)?;
                require_permission(require_installation(identity)?, "secrets", level)
            }
            Place::Dependabot { owner, repo } => {
                authorize_repo(identity, world, owner, repo, "dependabot_secrets", level)
                    .map(|_| ())
            }
            Place::Organization { org } => {
                let grant = require_installation(identity)?;
                // An organization's secrets are reached only with its own installation's token.
                if grant.account != org.to_ascii_lowercase() {
                    return Err(ApiError::not_accessible());
                }
                require_permission(grant, "organization_secrets", level)
            }
        }
    }

    /// The set's secrets and key; 404 for a repository or environment that does not exist.
    fn store<'w>(&self, world: &'w mut World) -> Result<&'w mut SecretStore, ApiError> {
        match self {
            Place::Environment { owner, repo, env } => world
                .repo_mut(owner, repo)
                .and_then(|r| r.environments.get_mut(&env.to_ascii_lowercase()))
                .map(|e| &mut e.store)
                .ok_or_else(ApiError::not_found),
            Place::Dependabot { owner, repo } => world
                .repo_mut(owner, repo)
                .map(|r| &mut r.dependabot)
                .ok_or_else(ApiError::not_found),
            Place::Organization { org } => Ok(&mut world.org_secrets(org).store),
        }
    }

    fn limit(&self) -> (usize, &'static str) {
        match self {
            Place::Environment { .. } => (MAX_SECRETS, "An environment"),
            Place::Dependabot { .. } => (MAX_SECRETS, "A repository"),
            Place::Organization { .. } => (MAX_ORG_SECRETS, "An organization"),
        }
    }

    fn path(&self, base: &str) -> String {
        match self {
            Place::Environment { owner, repo, env } => {
                format!("{base}/repos/{owner}/{repo}/environments/{env}/secrets")
            }
            Place::Dependabot { owner, repo } => {
                format!("{base}/repos/{owner}/{repo}/dependabot/secrets")
            }
            Place::Organization { org } => format!("{base}/orgs/{org}/actions/secrets"),
        }
    }
}

fn public_key(
    state: &model::State,
    identity: &Identity,
    place: &Place,
) -> Result<Json<Value>, ApiError> {
    let body = {
        let mut world = state.world();
        place.authorize(identity, &world, Level::Read)?;
        let store = place.store(&mut world)?;
        json!({
            "key_id": store.key.id,
            "key": STANDARD.encode(store.key.secret.public_key().as_bytes()),
        })
    };
    state.stats().public_key_fetches += 1;
    Ok(Json(body))
}

fn list(
    state: &model::State,
    identity: &Identity,
    place: &Place,
    page: Page,
) -> Result<Response, ApiError> {
    let mut world = state.world();
    place.authorize(identity, &world, Level::Read)?;
    let base = place.path(&state.base_url);
    let access = match place {
        Place::Organization { org } => Some(world.org_secrets(org).access.clone()),
        _ => None,
    };
    let store = place.store(&mut world)?;
    Ok(listing(&base, &store.secrets, page, |name| {
        access
            .as_ref()
            .and_then(|a| a.get(name))
            .map_or_else(|| json!({}), |a| json!({ "visibility": a.visibility }))
    }))
}

fn get(
    state: &model::State,
    identity: &Identity,
    place: &Place,
    name: &str,
) -> Result<Json<Value>, ApiError> {
    let mut world = state.world();
    place.authorize(identity, &world, Level::Read)?;
    let name = name.to_ascii_uppercase();
    let access = match place {
        Place::Organization { org } => world.org_secrets(org).access.get(&name).cloned(),
        _ => None,
    };
    let store = place.store(&mut world)?;
    let secret = store.secrets.get(&name).ok_or_else(ApiError::not_found)?;
    let mut body = secret_json(&name, secret);
    if let Some(access) = access {
        body["visibility"] = json!(access.visibility);
    }
    Ok(Json(body))
}

/// An organization secret's access from a PUT body, as GitHub checks it.
fn org_access(world: &World, org: &str, body: &PutBody) -> Result<OrgAccess, ApiError> {
    let visibility = body
        .visibility
        .clone()
        .ok_or_else(|| ApiError::missing_field("visibility"))?;
    let ids = body.selected_repository_ids.clone().unwrap_or_default();
    match visibility.as_str() {
        "all" | "private" if ids.is_empty() => {}
        "all" | "private" => {
            return Err(ApiError::unprocessable(
                "selected_repository_ids can only be set when visibility is `selected`",
            ));
        }
        "selected" => {
            for id in &ids {
                let of_org = world
                    .repo_by_id(*id)
                    .is_some_and(|r| r.owner.eq_ignore_ascii_case(org));
                if !of_org {
                    return Err(ApiError::unprocessable(format!(
                        "Repository {id} is not a repository of the organization {org}"
                    )));
                }
            }
        }
        _ => {
            return Err(ApiError::unprocessable(
                "Invalid request.\n\nvisibility must be one of: all, private, selected.",
            ));
        }
    }
    Ok(OrgAccess {
        visibility,
        selected: ids.into_iter().collect::<BTreeSet<u64>>(),
    })
}

fn put(
    state: &model::State,
    identity: &Identity,
    arrived: Option<Extension<Arrived>>,
    place: &Place,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let arrived = arrived.map_or_else(Instant::now, |Extension(Arrived(at))| at);
    {
        let world = state.world();
        place.authorize(identity, &world, Level::Write)?;
    }
    let body: PutBody = parse_body(body)?;
    let (key_id, sealed) = sealed_put(name, &body)?;
    let mut world = state.world();
    let access = match place {
        Place::Organization { org } => Some(org_access(&world, org, &body)?),
        _ => None,
    };
    let store = place.store(&mut world)?;
    let created = store_sealed(store, name, &key_id, &sealed, place.limit())?;
    let upper = name.to_ascii_uppercase();
    if let (Place::Organization { org }, Some(access)) = (place, access) {
        world.org_secrets(org).access.insert(upper, access);
    }
    let at = place.path("");
    drop(world);
    state.stats().secret_writes.push((at, arrived));
    Ok(if created {
        (StatusCode::CREATED, Json(json!({}))).into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    })
}

fn delete(
    state: &model::State,
    identity: &Identity,
    place: &Place,
    name: &str,
) -> Result<StatusCode, ApiError> {
    let mut world = state.world();
    place.authorize(identity, &world, Level::Write)?;
    let upper = name.to_ascii_uppercase();
    place
        .store(&mut world)?
        .secrets
        .remove(&upper)
        .ok_or_else(ApiError::not_found)?;
    if let Place::Organization { org } = place {
        world.org_secrets(org).access.remove(&upper);
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- the routes ----

type St = State<Arc<model::State>>;
type Id = Extension<Identity>;

fn env(owner: String, repo: String, env: String) -> Place {
    Place::Environment { owner, repo, env }
}

pub(super) async fn env_public_key(
    State(s): St,
    Extension(i): Id,
    Path((o, r, e)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    public_key(&s, &i, &env(o, r, e))
}
pub(super) async fn env_list(
    State(s): St,
    Extension(i): Id,
    Path((o, r, e)): Path<(String, String, String)>,
    Query(p): Query<Page>,
) -> Result<Response, ApiError> {
    list(&s, &i, &env(o, r, e), p)
}
pub(super) async fn env_get(
    State(s): St,
    Extension(i): Id,
    Path((o, r, e, n)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    get(&s, &i, &env(o, r, e), &n)
}
pub(super) async fn env_put(
    State(s): St,
    Extension(i): Id,
    a: Option<Extension<Arrived>>,
    Path((o, r, e, n)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    put(&s, &i, a, &env(o, r, e), &n, &body)
}
pub(super) async fn env_delete(
    State(s): St,
    Extension(i): Id,
    Path((o, r, e, n)): Path<(String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&s, &i, &env(o, r, e), &n)
}

fn dependabot(owner: String, repo: String) -> Place {
    Place::Dependabot { owner, repo }
}

pub(super) async fn dependabot_public_key(
    State(s): St,
    Extension(i): Id,
    Path((o, r)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    public_key(&s, &i, &dependabot(o, r))
}
pub(super) async fn dependabot_list(
    State(s): St,
    Extension(i): Id,
    Path((o, r)): Path<(String, String)>,
    Query(p): Query<Page>,
) -> Result<Response, ApiError> {
    list(&s, &i, &dependabot(o, r), p)
}
pub(super) async fn dependabot_get(
    State(s): St,
    Extension(i): Id,
    Path((o, r, n)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    get(&s, &i, &dependabot(o, r), &n)
}
pub(super) async fn dependabot_put(
    State(s): St,
    Extension(i): Id,
    a: Option<Extension<Arrived>>,
    Path((o, r, n)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    put(&s, &i, a, &dependabot(o, r), &n, &body)
}
pub(super) async fn dependabot_delete(
    State(s): St,
    Extension(i): Id,
    Path((o, r, n)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&s, &i, &dependabot(o, r), &n)
}

fn org(org: String) -> Place {
    Place::Organization { org }
}

pub(super) async fn org_public_key(
    State(s): St,
    Extension(i): Id,
    Path(o): Path<String>,
) -> Result<Json<Value>, ApiError> {
    public_key(&s, &i, &org(o))
}
pub(super) async fn org_list(
    State(s): St,
    Extension(i): Id,
    Path(o): Path<String>,
    Query(p): Query<Page>,
) -> Result<Response, ApiError> {
    list(&s, &i, &org(o), p)
}
pub(super) async fn org_get(
    State(s): St,
    Extension(i): Id,
    Path((o, n)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    get(&s, &i, &org(o), &n)
}
pub(super) async fn org_put(
    State(s): St,
    Extension(i): Id,
    a: Option<Extension<Arrived>>,
    Path((o, n)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    put(&s, &i, a, &org(o), &n, &body)
}
pub(super) async fn org_delete(
    State(s): St,
    Extension(i): Id,
    Path((o, n)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&s, &i, &org(o), &n)
}

// ---- environments ----

fn environment_json(owner: &str, repo: &str, e: &model::Environment) -> Value {
    json!({
        "id": e.id,
        "node_id": format!("EN_{}", e.id),
        "name": e.name,
        "url": format!("/repos/{owner}/{repo}/environments/{}", e.name),
        "created_at": model::rfc3339(e.created_at),
        "updated_at": model::rfc3339(e.created_at),
        "protection_rules": [],
        "deployment_branch_policy": null,
    })
}

/// `GET /repos/{owner}/{repo}/environments/{env}` (`actions: read`, as GitHub documents).
pub(super) async fn environment_get(
    State(s): St,
    Extension(i): Id,
    Path((o, r, e)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let world = s.world();
    authorize_repo(&i, &world, &o, &r, "actions", Level::Read)?;
    let repo = world.repo(&o, &r).ok_or_else(ApiError::not_found)?;
    let found = repo
        .environments
        .get(&e.to_ascii_lowercase())
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(environment_json(&o, &r, found)))
}

/// `PUT /repos/{owner}/{repo}/environments/{env}`: creates the environment (or leaves an
/// existing one as it is); `administration: write`. 200 with the environment either way.
pub(super) async fn environment_put(
    State(s): St,
    Extension(i): Id,
    Path((o, r, e)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let mut world = s.world();
    authorize_repo(&i, &world, &o, &r, "administration", Level::Write)?;
    if e.is_empty() || e.len() > MAX_ENVIRONMENT_NAME {
        return Err(ApiError::unprocessable(format!(
            "Name must be between 1 and {MAX_ENVIRONMENT_NAME} characters"
        )));
    }
    let id = world.new_id();
    let repo = world.repo_mut(&o, &r).ok_or_else(ApiError::not_found)?;
    let env = repo
        .environments
        .entry(e.to_ascii_lowercase())
        .or_insert_with(|| model::Environment {
            name: e.clone(),
            id,
            created_at: model::now_s(),
            store: SecretStore::new(),
        });
    Ok(Json(environment_json(&o, &r, env)))
}
