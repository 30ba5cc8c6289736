//! `/v2/actions/{id}`: a droplet's create action, `completed` once the droplet is active.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::error::{DoError, parse_id};
use super::state::{DoState, Droplet};
use crate::core::{self, Caller, lock};

fn action_json(s: &DoState, d: &Droplet, now: Instant) -> Value {
    let done = s.status(d, now) == "active";
    json!({
        "id": d.action_id,
        "status": if done { "completed" } else { "in-progress" },
        "type": "create",
        "started_at": core::rfc3339(d.created_at),
        "completed_at": if done {
            Value::String(core::rfc3339(d.created_at + s.config.active_after))
        } else { Value::Null },
        "resource_id": d.id,
        "resource_type": "droplet",
        "region_slug": d.region.clone().unwrap_or_else(|| "nyc3".to_owned()),
    })
}

/// Deleted droplets keep their actions.
pub(super) async fn get(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, DoError> {
    let id = parse_id(&id)?;
    let world = lock(&s.world);
    let d = world
        .droplets
        .iter()
        .find(|d| d.action_id == id && d.account == token)
        .ok_or_else(DoError::not_found)?;
    let body = json!({"action": action_json(&s, d, Instant::now())});
    Ok(core::json(StatusCode::OK, body))
}
