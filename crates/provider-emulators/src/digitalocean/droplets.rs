//! `/v2/droplets`: create (always answered `new`, with no networks), list by tag or name, get
//! (the transient 404s of a fresh droplet), delete, delete by tag.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{DoError, parse_id};
use super::paging::Page;
use super::state::{DoState, Droplet, private_ip};
use super::validate::validate_create;
use crate::core::{self, Caller, QueryMap, lock};

/// A droplet as the API shows it now: networks appear as it becomes active, then public.
pub(super) fn droplet_json(s: &DoState, d: &Droplet, now: Instant) -> Value {
    let status = s.status(d, now);
    let mut v4 = Vec::new();
    if status == "active" {
        v4.push(json!({
            "ip_address": private_ip(d.seq),
            "netmask": "255.255.240.0",
            "gateway": "<nil>",
            "type": "private",
        }));
    }
    if s.has_public(d, now) {
        v4.push(json!({
            "ip_address": s.public_ip(d.seq),
            "netmask": "255.255.255.0",
            "gateway": "198.51.100.1",
            "type": "public",
        }));
    }
    let image = match &d.image {
        Value::String(slug) => json!({
            "id": 100_000_000 + (d.seq % 1000),
            "name": slug,
            "distribution": slug.split('-').next().unwrap_or_default(),
            "slug": slug,
            "public": true,
            "type": "base",
        }),
        other => json!({"id": other, "slug": null, "public": false, "type": "snapshot"}),
    };
    let region = d.region.clone().unwrap_or_else(|| "nyc3".to_owned());
    json!({
        "id": d.id,
        "name": d.name,
        "memory": 1024,
        "vcpus": 1,
        "disk": 25,
        "locked": false,
        "status": status,
        "kernel": null,
        "created_at": core::rfc3339(d.created_at),
        "features": ["droplet_agent", "private_networking"],
        "backup_ids": [],
        "next_backup_window": null,
        "snapshot_ids": [],
        "image": image,
        "volume_ids": [],
        "size": {"slug": d.size, "memory": 1024, "vcpus": 1, "disk": 25, "transfer": 1.0,
                 "price_monthly": 6.0, "price_hourly": 0.00893, "regions": [region],
                 "available": true},
        "size_slug": d.size,
        "networks": {"v4": v4, "v6": []},
        "region": {"slug": region, "name": region, "available": true, "features": [],
                   "sizes": [d.size]},
        "tags": d.tags,
        "vpc_uuid": d.vpc_uuid.clone().unwrap_or_else(|| format!(
            "{}-0000-4000-8000-{:012x}", core::sha256_hex(d.account.as_bytes(), 8),
            d.seq % 7)),
    })
}

pub(super) async fn create(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, DoError> {
    let body = core::parse_object(&body).map_err(|()| DoError::bad_json())?;
    let mut world = lock(&s.world);
    let mut droplet = validate_create(&body, &world.keys, &token)?;
    let live = world.live_droplets(&token).count();
    if s.config.droplet_limit > 0 && live >= s.config.droplet_limit {
        return Err(DoError::unprocessable(
            "creating this/these droplet(s) will exceed your droplet limit",
        ));
    }
    world.next_seq += 1;
    let seq = world.next_seq;
    droplet.seq = seq;
    droplet.id = 3_164_400 + seq * 7;
    droplet.action_id = 1_800_000_000 + seq * 3;
    droplet.polls_404_left = s.config.transient_404_polls;
    let now = Instant::now();
    let mut body = json!({
        "droplet": droplet_json(&s, &droplet, now),
        "links": {"actions": [{
            "id": droplet.action_id,
            "rel": "create",
            "href": format!("{}/v2/actions/{}", s.url, droplet.action_id),
        }]},
    });
    // The create answer is always "new" with no networks, however short active_after is.
    body["droplet"]["status"] = json!("new");
    body["droplet"]["networks"] = json!({"v4": [], "v6": []});
    droplet.host = s.boot(&droplet);
    world.droplets.push(droplet);
    Ok(core::json(StatusCode::ACCEPTED, body))
}

pub(super) async fn list(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    QueryMap(q): QueryMap,
) -> Result<Response, DoError> {
    let page = Page::parse(&q)?;
    let tag = q.get("tag_name").filter(|t| !t.is_empty());
    let name = q.get("name").filter(|n| !n.is_empty());
    if tag.is_some() && name.is_some() {
        return Err(DoError::unprocessable(
            "tag_name and name cannot be combined.",
        ));
    }
    let now = Instant::now();
    let world = lock(&s.world);
    let all: Vec<Value> = world
        .live_droplets(&token)
        .filter(|d| tag.is_none_or(|t| d.tags.contains(t)))
        .filter(|d| name.is_none_or(|n| &d.name == n))
        .map(|d| droplet_json(&s, d, now))
        .collect();
    let extra = match (tag, name) {
        (Some(t), _) => format!("&tag_name={t}"),
        (_, Some(n)) => format!("&name={n}"),
        _ => String::new(),
    };
    let body = page.answer("droplets", &all, &s.url, "/v2/droplets", &extra);
    Ok(core::json(StatusCode::OK, body))
}

pub(super) async fn get(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, DoError> {
    let id = parse_id(&id)?;
    let mut world = lock(&s.world);
    let d = world
        .live_droplet_mut(&token, id)
        .ok_or_else(DoError::not_found)?;
    if d.polls_404_left > 0 {
        d.polls_404_left -= 1;
        return Err(DoError::not_found());
    }
    let body = json!({"droplet": droplet_json(&s, d, Instant::now())});
    Ok(core::json(StatusCode::OK, body))
}

pub(super) async fn delete(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, DoError> {
    let id = parse_id(&id)?;
    let now = Instant::now();
    let mut world = lock(&s.world);
    let droplet = world
        .live_droplet_mut(&token, id)
        .ok_or_else(DoError::not_found)?;
    // While its create action runs, DigitalOcean refuses to delete it (a retry later works).
    if now.saturating_duration_since(droplet.created) < s.config.active_after {
        return Err(DoError::unprocessable(
            "Droplet already has a pending event.",
        ));
    }
    droplet.delete();
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn delete_by_tag(
    State(s): State<Arc<DoState>>,
    Extension(Caller(token)): Extension<Caller>,
    QueryMap(q): QueryMap,
) -> Result<Response, DoError> {
    let tag = q
        .get("tag_name")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| DoError::unprocessable("tag_name is required."))?;
    let mut world = lock(&s.world);
    for d in world
        .droplets
        .iter_mut()
        .filter(|d| !d.deleted && d.account == token && d.tags.contains(tag))
    {
        d.delete();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
