//! `/zones`: the configured zones, listed (by name) and read.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::envelope::{CfError, Page, success};
use super::state::{CfState, Zone};
use crate::core::{self, QueryMap};

/// A zone's id: stable for its name.
pub(super) fn zone_id(name: &str) -> String {
    core::sha256_hex(format!("zone:{name}").as_bytes(), 32)
}

/// Zone `id`, or Cloudflare's answer for an unknown one (no route for `path`).
pub(super) fn zone_or_404<'a>(s: &'a CfState, id: &str, path: &str) -> Result<&'a Zone, CfError> {
    s.zone(id).ok_or_else(|| CfError::no_route(path))
}

fn zone_json(z: &Zone) -> Value {
    json!({
        "id": z.id,
        "name": z.name,
        "status": "active",
        "paused": false,
        "type": "full",
        "development_mode": 0,
        "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "created_on": core::rfc3339(z.created_on),
        "modified_on": core::rfc3339(z.created_on),
        "account": {"id": core::sha256_hex(b"account", 32), "name": "Emulated account"},
        "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
    })
}

pub(super) async fn list(
    State(s): State<Arc<CfState>>,
    QueryMap(q): QueryMap,
) -> Result<Response, CfError> {
    let page = Page::parse(&q, 20, 5, 50)?;
    let name = q
        .get("name")
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let all: Vec<Value> = s
        .zones
        .iter()
        .filter(|z| name.as_ref().is_none_or(|n| &z.name == n))
        .map(zone_json)
        .collect();
    Ok(page.success(&all))
}

pub(super) async fn get(
    State(s): State<Arc<CfState>>,
    Path(zone_id): Path<String>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    Ok(success(zone_json(zone)))
}
