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
    /// A task still running on it (a reinstall someone, perhaps we, already started).
    pub active_task: Option<u64>,
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
            active_task: body["last_tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["completed"].as_str().is_none_or(str::is_empty))
                .and_then(|t| t["id"].as_u64()),
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
