//! Time4VPS: not a cloud API — servers are bought in advance and taken over by reinstalling
//! them with the orchestrator's admin key for root, then polling the reinstall task.

use std::time::{Duration, Instant};

use reqwest::Method;
use secrecy::SecretString;

use crate::http::{Answer, Credentials, Http, ProviderError, Retry};

const P: &str = "Time4VPS";

#[derive(Debug, Clone)]
pub struct Time4Vps {
    http: Http,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Time4VpsServer {
    pub id: u64,
    pub ip: String,
    pub os: String,
    /// The name of the task running on it (a reinstall someone, perhaps we, already started,
    /// or a reboot...): the billing system runs one task at a time, so the server is busy.
    pub active_task: Option<String>,
}

/// The task the details' `active_task` describes: an object (`{"name": "Reinstall OS",
/// "activated": ..., "completed": ""}`) while a task runs, null when idle. Anything else that
/// is not null (an older shape) still means busy: starting a reinstall over a running task is
/// the one mistake to avoid.
fn active_task(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::Object(task) => Some(
            task.get("name")
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
                .unwrap_or("a task")
                .to_owned(),
        ),
        serde_json::Value::String(name) if !name.is_empty() => Some(name.clone()),
        serde_json::Value::String(_) | serde_json::Value::Bool(false) => None,
        _ => Some("a task".to_owned()),
    }
}

/// Time4VPS errors are `{"error": ["wronglogin"]}`-shaped.
fn error(answer: &Answer) -> ProviderError {
    let reason = answer.body["error"].as_array().map_or_else(
        || answer.body.to_string(),
        |e| {
            e.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    if answer.status.as_u16() == 401 || reason.contains("wronglogin") {
        ProviderError::Auth {
            provider: P,
            reason,
        }
    } else {
        ProviderError::Status {
            provider: P,
            status: answer.status.as_u16(),
            reason,
        }
    }
}

fn ok(answer: Answer) -> Result<serde_json::Value, ProviderError> {
    if answer.status.is_success() && answer.body.get("error").is_none() {
        Ok(answer.body)
    } else {
        Err(error(&answer))
    }
}

impl Time4Vps {
    /// `base`: `https://billing.time4vps.com` (`TIME4VPS_API_URL`) or an emulator.
    pub fn new(
        base: &str,
        user: &str,
        password: SecretString,
        retry: Retry,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            http: Http::new(
                P,
                base,
                Credentials::Basic {
                    user: user.to_owned(),
                    password,
                },
                retry,
            )?,
        })
    }

    pub async fn server(&self, id: u64) -> Result<Time4VpsServer, ProviderError> {
        let body = ok(self
            .http
            .send(Method::GET, &format!("/api/server/{id}"), None, true)
            .await?)?;
        Ok(Time4VpsServer {
            id,
            ip: body["ip"].as_str().unwrap_or_default().to_owned(),
            os: body["os"].as_str().unwrap_or_default().to_owned(),
            active_task: active_task(&body["active_task"]),
        })
    }

    /// Reinstalls (wipes) the server with `os` and root's `ssh_key`; returns the task id.
    /// Not retried: a second reinstall would start over.
    pub async fn reinstall(&self, id: u64, os: &str, ssh_key: &str) -> Result<u64, ProviderError> {
        let body = serde_json::json!({ "os": os, "ssh_key": ssh_key });
        let answer = ok(self
            .http
            .send(
                Method::POST,
                &format!("/api/server/{id}/reinstall"),
                Some(&body),
                false,
            )
            .await?)?;
        answer["task_id"]
            .as_u64()
            .ok_or_else(|| ProviderError::Decode {
                provider: P,
                reason: "task_id".into(),
            })
    }

    /// Polls the task until `completed` is set.
    pub async fn wait_for_task(
        &self,
        id: u64,
        task: u64,
        timeout: Duration,
        poll: Duration,
    ) -> Result<(), ProviderError> {
        let started = Instant::now();
        loop {
            let body = ok(self
                .http
                .send(
                    Method::GET,
                    &format!("/api/server/{id}/task/{task}"),
                    None,
                    true,
                )
                .await?)?;
            if body["completed"].as_str().is_some_and(|c| !c.is_empty()) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(ProviderError::Unavailable {
                    provider: P,
                    reason: format!("reinstall task {task} not completed after {timeout:?}"),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::active_task;

    #[test]
    fn a_running_task_is_an_object_and_idle_is_null() {
        let running = json!({"name": "Reboot", "activated": "2026-11-30T05:20:00+00:00",
            "assigned": "", "completed": "", "results": ""});
        assert_eq!(active_task(&running).as_deref(), Some("Reboot"));
        assert_eq!(active_task(&json!(null)), None);
        assert_eq!(active_task(&json!({})).as_deref(), Some("a task"));
        assert_eq!(
            active_task(&json!("reinstall")).as_deref(),
            Some("reinstall")
        );
        assert_eq!(active_task(&json!(7_000_001)).as_deref(), Some("a task"));
    }
}
