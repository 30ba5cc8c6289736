//! `/zones/{zone_id}/dns_records`: list (by type, name, content, comment, tag), read, create,
//! replace (PUT), update (PATCH), delete.

use std::sync::Arc;

use axum::extract::{Extension, Path, Request, State};
use axum::response::Response;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::attributes::Filters;
use super::envelope::{CfError, Page, success};
use super::state::{CfState, Record, Zone};
use super::validate::{check_conflicts, check_record, parse_fields};
use super::zones::zone_or_404;
use crate::core::{self, Caller, QueryMap, lock};

fn record_json(zone: &Zone, r: &Record) -> Value {
    json!({
        "id": r.id,
        "zone_id": zone.id,
        "zone_name": zone.name,
        "name": r.name,
        "type": r.type_,
        "content": r.content,
        "proxiable": matches!(r.type_.as_str(), "A" | "AAAA" | "CNAME"),
        "proxied": r.proxied,
        "ttl": r.ttl,
        "locked": false,
        "comment": r.comment,
        "tags": r.tags,
        "settings": {},
        "meta": {"auto_added": false, "managed_by_apps": false, "managed_by_argo_tunnel": false},
        "created_on": core::rfc3339(r.created_on),
        "modified_on": core::rfc3339(r.modified_on),
    })
}

/// The request's JSON object body (at most 1 MiB).
async fn read_body(req: Request) -> Result<Map<String, Value>, CfError> {
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|_| CfError::bad_body())?;
    core::parse_object(&body).map_err(|()| CfError::bad_body())
}

pub(super) async fn list(
    State(s): State<Arc<CfState>>,
    Path(zone_id): Path<String>,
    QueryMap(q): QueryMap,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let page = Page::parse(&q, 100, 5, 5000)?;
    let type_ = q.get("type").map(|t| t.to_ascii_uppercase());
    let name = q
        .get("name.exact")
        .or_else(|| q.get("name"))
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let content = q.get("content.exact").or_else(|| q.get("content"));
    let attributes = Filters::from_query(&q);
    let world = lock(&s.world);
    let all: Vec<Value> = world
        .records
        .iter()
        .filter(|r| r.zone_id == zone.id)
        .filter(|r| type_.as_ref().is_none_or(|t| &r.type_ == t))
        .filter(|r| name.as_ref().is_none_or(|n| &r.name == n))
        .filter(|r| content.is_none_or(|c| &r.content == c))
        .filter(|r| attributes.matches(r))
        .map(|r| record_json(zone, r))
        .collect();
    Ok(page.success(&all))
}

pub(super) async fn get(
    State(s): State<Arc<CfState>>,
    Path((zone_id, record_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let world = lock(&s.world);
    let index = world
        .position(zone, &record_id)
        .ok_or_else(CfError::no_record)?;
    Ok(success(record_json(zone, &world.records[index])))
}

pub(super) async fn create(
    State(s): State<Arc<CfState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path(zone_id): Path<String>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let fields = parse_fields(&read_body(req).await?, zone, s.config.plan)?;
    let now = OffsetDateTime::now_utc();
    let mut record = Record {
        id: String::new(),
        zone_id: zone.id.clone(),
        type_: String::new(),
        name: String::new(),
        content: String::new(),
        ttl: 1,
        proxied: false,
        comment: None,
        tags: Vec::new(),
        created_on: now,
        modified_on: now,
        token_used: token,
    };
    fields.apply(&mut record, true, s.config.proxied_by_default)?;
    check_record(&record)?;
    let mut world = lock(&s.world);
    check_conflicts(&world.records, &record, None)?;
    world.next += 1;
    record.id = core::sha256_hex(format!("record:{}:{}", zone.id, world.next).as_bytes(), 32);
    let json = record_json(zone, &record);
    world.records.push(record);
    Ok(success(json))
}

/// PUT (`REPLACE`: every field) or PATCH (the fields given) of a record.
pub(super) async fn update<const REPLACE: bool>(
    State(s): State<Arc<CfState>>,
    Extension(Caller(token)): Extension<Caller>,
    Path((zone_id, record_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let fields = parse_fields(&read_body(req).await?, zone, s.config.plan)?;
    let mut world = lock(&s.world);
    let index = world
        .position(zone, &record_id)
        .ok_or_else(CfError::no_record)?;
    let mut record = world.records[index].clone();
    fields.apply(&mut record, REPLACE, s.config.proxied_by_default)?;
    record.modified_on = OffsetDateTime::now_utc();
    record.token_used = token;
    check_record(&record)?;
    check_conflicts(&world.records, &record, Some(&record_id))?;
    let json = record_json(zone, &record);
    world.records[index] = record;
    Ok(success(json))
}

pub(super) async fn delete(
    State(s): State<Arc<CfState>>,
    Path((zone_id, record_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, CfError> {
    let zone = zone_or_404(&s, &zone_id, req.uri().path())?;
    let mut world = lock(&s.world);
    let index = world
        .position(zone, &record_id)
        .ok_or_else(CfError::no_record)?;
    world.records.remove(index);
    Ok(success(json!({"id": record_id})))
}
