//! `POST /api/server/{id}/reinstall`: wipes the server and starts a task; with hosts, the
//! server then answers SSH as root with the request's key and a fresh host key.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::ReinstallRecord;
use super::error::{T4Error, parse_id};
use super::state::{T4State, server_mut};
use crate::core::{self, lock};
use crate::host;
use crate::keys::PublicKey;

pub(super) async fn reinstall(
    State(s): State<Arc<T4State>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    let body = core::parse_object(&body).map_err(|()| T4Error::bad("Invalid request body"))?;
    let os = match body.get("os") {
        Some(Value::String(os)) if !os.is_empty() => os.clone(),
        _ => return Err(T4Error::bad("OS is required")),
    };
    if !s.config.oses.contains(&os) {
        return Err(T4Error::bad("Invalid OS"));
    }
    let ssh_key: Option<String> = match body.get("ssh_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if k.trim().is_empty() => None,
        Some(Value::String(k)) if PublicKey::parse(k).is_some() && !k.trim().contains('\n') => {
            Some(k.trim().to_owned())
        }
        Some(_) => return Err(T4Error::bad("Invalid SSH key")),
    };
    let script = match body.get("script") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) if v.is_empty() => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(Value::String(v)) if v.parse::<u64>().is_ok() => v.parse().ok(),
        Some(_) => return Err(T4Error::bad("Invalid init script")),
    };
    if let Some(script) = script
        && !s.config.scripts.iter().any(|(sid, _)| *sid == script)
    {
        return Err(T4Error::bad("Invalid init script"));
    }
    let now = Instant::now();
    let mut servers = lock(&s.servers);
    let srv = server_mut(&mut servers, id)?;
    if s.active(srv, now).is_some() {
        return Err(T4Error::bad("Server has an active task"));
    }
    // The reinstall wipes the server: the old SSH side goes now, the new one answers when the
    // task completes, with root's key from the request and a host key nobody knew before.
    srv.host = None;
    if let Some(hosts) = &s.config.hosts
        && let Ok(ip) = srv.ip.parse()
    {
        let up_at = now + s.config.task_after;
        let users = ssh_key
            .iter()
            .map(|k| ("root".to_owned(), vec![k.clone()]))
            .collect();
        let boot = host::Boot {
            ip,
            host_key: None,
            users,
            sudoers: vec!["root".to_owned()],
            up_at,
            ready_at: up_at,
            cloud_init: false,
            failed: false,
            boot_log: Vec::new(),
        };
        srv.host = host::start(boot, hosts.ssh_port, hosts.run_commands.clone())
            .inspect_err(|e| tracing::warn!(error = %e, "server could not boot"))
            .ok();
    }
    let reinstall = ReinstallRecord {
        task_id: 0,
        os,
        ssh_key,
        script,
    };
    let task_id = s.start_task(srv, "Reinstall OS", Some(reinstall), now);
    Ok(core::json(StatusCode::OK, json!({"task_id": task_id})))
}

/// `POST /api/server/{id}/reboot`: a task of its own (the server is busy while it runs); the
/// server keeps its OS and its SSH side.
pub(super) async fn reboot(
    State(s): State<Arc<T4State>>,
    Path(id): Path<String>,
) -> Result<Response, T4Error> {
    let id = parse_id(&id)?;
    let now = Instant::now();
    let mut servers = lock(&s.servers);
    let srv = server_mut(&mut servers, id)?;
    if s.active(srv, now).is_some() {
        return Err(T4Error::bad("Server has an active task"));
    }
    let task_id = s.start_task(srv, "Reboot", None, now);
    Ok(core::json(StatusCode::OK, json!({"task_id": task_id})))
}
