//! `/api/server...` reads: the servers (with their last tasks in detail), a task's progress,
//! the OSes a server can get, and the account's init scripts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::error::{T4Error, parse_id};
use super::state::{Server, T4State, Task, server};
use crate::core::{self, lock};

/// ISO 8601 with the offset (`2026-11-30T05:20:00+00:00`), as the API writes dates; a date
/// not reached yet is an empty string.
fn stamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn task_json(s: &T4State, t: &Task, now: Instant) -> Value {
    let done = s.done(t, now);
    let task_after = s.config.task_after;
    // Assigned to a worker halfway through.
    let assigned = now.saturating_duration_since(t.requested) >= task_after / 2;
    let at = |d: Duration| stamp(t.requested_at + d);
    let results = match (&t.reinstall, done) {
        (_, false) => String::new(),
        (Some(r), true) => format!("Server reinstalled with {}", r.os),
        (None, true) => "Server rebooted".to_owned(),
    };
    json!({
        "name": t.name,
        "activated": at(Duration::ZERO),
        "assigned": if assigned || done { at(task_after / 2) } else { String::new() },
        "completed": if done { at(task_after) } else { String::new() },
        "results": results,
    })
}

fn server_json(s: &T4State, srv: &Server, now: Instant, details: bool) -> Value {
    // The list and the details name the id differently, as the real API does.
    let id_field = if details { "id" } else { "server_id" };
    let mut v = json!({
        id_field: srv.id,
        "domain": format!("server{}.time4vps.test", srv.id),
        "ip": srv.ip,
        "status": "Active",
        "product": "Linux 4",
        "os": s.os(srv, now),
    });
    if details {
        // Tasks as the API lists them: name, dates and results; no task id.
        let last: Vec<Value> = srv
            .tasks
            .iter()
            .rev()
            .take(5)
            .map(|t| task_json(s, t, now))
            .collect();
        v["label"] = json!(format!("server{}", srv.id));
        v["additional_ip"] = json!([]);
        v["cpu_cores"] = json!(2);
        v["ram_limit"] = json!(4096);
        v["disk_limit"] = json!(81920);
        // The running task as an object (null when idle): what tells a busy server.
        v["active_task"] = s
            .active(srv, now)
            .map_or(Value::Null, |t| task_json(s, t, now));
        v["last_tasks"] = json!(last);
    }
    v
}

pub(super) async fn list(State(s): State<Arc<T4State>>) -> Response {
    let now = Instant::now();
    let servers = lock(&s.servers);
    let all = servers.iter().map(|srv| server_json(&s, srv, now, false));
    core::json(StatusCode::OK, Value::Array(all.collect()))
}

pub(super) async fn get(
    State(s): State<Arc<T4State>>,
    Path(id): Path<String>,
) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    let servers = lock(&s.servers);
    let srv = server(&servers, id)?;
    let body = server_json(&s, srv, Instant::now(), true);
    Ok(core::json(StatusCode::OK, body))
}

pub(super) async fn task(
    State(s): State<Arc<T4State>>,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    let servers = lock(&s.servers);
    let srv = server(&servers, id)?;
    let task = task_id
        .parse::<u64>()
        .ok()
        .and_then(|tid| srv.tasks.iter().find(|t| t.id == tid))
        .ok_or_else(|| T4Error::bad("Invalid task ID"))?;
    let body = task_json(&s, task, Instant::now());
    Ok(core::json(StatusCode::OK, body))
}

/// `kvm-ubuntu-24.04-gpt-x86_64` -> `Ubuntu 24.04`.
fn title(os: &str) -> String {
    os.trim_start_matches("kvm-")
        .trim_end_matches("-x86_64")
        .trim_end_matches("-gpt")
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) async fn oses(
    State(s): State<Arc<T4State>>,
    Path(id): Path<String>,
) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    server(&lock(&s.servers), id)?;
    let oses = s.config.oses.iter();
    let body = oses.map(|os| json!({"os": os, "title": title(os)}));
    Ok(core::json(StatusCode::OK, Value::Array(body.collect())))
}

pub(super) async fn scripts(State(s): State<Arc<T4State>>) -> Response {
    let scripts = s.config.scripts.iter();
    let body = scripts.map(|(id, name)| json!({"id": id, "name": name, "syntax": "bash"}));
    core::json(StatusCode::OK, Value::Array(body.collect()))
}
