//! The Time4VPS emulator over real HTTP: Basic auth, servers, reinstall and task polling.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::time::Duration;

use common::{T4_PASSWORD, T4_USER, client, eventually, json, ssh_key};
use orchestrator_provider_emulators::{T4Config, Time4Vps};
use reqwest::{Method, Response};
use serde_json::{Value, json};

fn config() -> T4Config {
    T4Config {
        user: T4_USER.to_owned(),
        password: T4_PASSWORD.to_owned(),
        servers: vec![
            (101, "203.0.113.10".to_owned()),
            (102, "203.0.113.11".to_owned()),
        ],
        task_after: Duration::from_millis(800),
        scripts: vec![(7, "docker".to_owned())],
        ..T4Config::default()
    }
}

struct T4 {
    emu: Time4Vps,
    client: reqwest::Client,
}

impl T4 {
    async fn start(config: T4Config) -> Self {
        Self {
            client: client(),
            emu: Time4Vps::start(config).await.unwrap(),
        }
    }

    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}/api{path}", self.emu.url()))
            .basic_auth(T4_USER, Some(T4_PASSWORD));
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }
}

async fn error(resp: Response, status: u16) -> String {
    assert_eq!(resp.status(), status, "{}", resp.url());
    let v = json(resp).await;
    v["error"][0].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn wrong_login_is_refused() {
    let t = T4::start(config()).await;
    let url = format!("{}/api/server", t.emu.url());
    let none = t.client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(json(none).await, json!({"error": ["wronglogin"]}));
    let wrong = t
        .client
        .get(&url)
        .basic_auth(T4_USER, Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(error(wrong, 401).await, "wronglogin");
    let bearer = t
        .client
        .get(&url)
        .bearer_auth(T4_PASSWORD)
        .send()
        .await
        .unwrap();
    assert_eq!(error(bearer, 401).await, "wronglogin");
    assert_eq!(t.emu.stats().auth_failures, 3);
}

#[tokio::test]
async fn servers_and_oses() {
    let t = T4::start(config()).await;
    let list = json(t.req(Method::GET, "/server", None).await).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    // The list names the id `server_id`; the details name it `id`.
    assert_eq!(list[0]["server_id"], 101);
    assert_eq!(list[0]["ip"], "203.0.113.10");
    let one = json(t.req(Method::GET, "/server/102", None).await).await;
    assert_eq!(one["ip"], "203.0.113.11");
    assert_eq!(one["active_task"], Value::Null);
    assert_eq!(one["last_tasks"], json!([]));
    assert_eq!(
        error(t.req(Method::GET, "/server/999", None).await, 404).await,
        "Server not found"
    );
    let oses = json(t.req(Method::GET, "/server/101/oses", None).await).await;
    let codes: Vec<&str> = oses
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["os"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"kvm-ubuntu-24.04-gpt-x86_64"), "{codes:?}");
    assert!(oses[0]["title"].as_str().unwrap().starts_with("Ubuntu"));
    let scripts = json(t.req(Method::GET, "/scripts", None).await).await;
    assert_eq!(scripts[0]["id"], 7);
}

#[tokio::test]
async fn reinstall_then_poll_the_task() {
    let t = T4::start(config()).await;
    let key = ssh_key(3);
    let resp = t
        .req(
            Method::POST,
            "/server/101/reinstall",
            Some(json!({"os": "kvm-debian-12-gpt-x86_64", "ssh_key": key, "script": 7})),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let task_id = json(resp).await["task_id"].as_u64().unwrap();
    let task_path = format!("/server/101/task/{task_id}");

    let pending = json(t.req(Method::GET, &task_path, None).await).await;
    assert_eq!(pending["completed"], "");
    assert_eq!(pending["results"], "");
    assert!(!pending["activated"].as_str().unwrap().is_empty());
    let details = json(t.req(Method::GET, "/server/101", None).await).await;
    // The running task is an object (null when idle); listed tasks carry no id.
    assert_eq!(details["active_task"]["name"], "Reinstall OS");
    assert_eq!(details["active_task"]["completed"], "");
    assert_eq!(details["last_tasks"][0]["name"], "Reinstall OS");
    assert!(details["last_tasks"][0].get("id").is_none());
    assert_eq!(details["os"], "kvm-ubuntu-24.04-gpt-x86_64");
    // One reinstall at a time.
    let again = t
        .req(
            Method::POST,
            "/server/101/reinstall",
            Some(json!({"os": "kvm-debian-12-gpt-x86_64"})),
        )
        .await;
    assert_eq!(error(again, 400).await, "Server has an active task");

    let done = eventually(Duration::from_secs(5), || async {
        let v = json(t.req(Method::GET, &task_path, None).await).await;
        (v["completed"] != "").then_some(v)
    })
    .await;
    // ISO 8601 with the offset: `2026-11-30T05:20:00+00:00`.
    let completed = done["completed"].as_str().unwrap();
    assert_eq!(completed.len(), 25, "{completed}");
    assert_eq!(&completed[10..11], "T");
    assert!(completed.ends_with("+00:00"), "{completed}");
    assert!(!done["assigned"].as_str().unwrap().is_empty());
    assert!(!done["results"].as_str().unwrap().is_empty());
    let details = json(t.req(Method::GET, "/server/101", None).await).await;
    assert_eq!(details["os"], "kvm-debian-12-gpt-x86_64");
    assert_eq!(details["ip"], "203.0.113.10");
    assert_eq!(details["active_task"], Value::Null);

    let last = t.emu.last_reinstall(101).unwrap();
    assert_eq!(last.task_id, task_id);
    assert_eq!(last.os, "kvm-debian-12-gpt-x86_64");
    assert_eq!(last.ssh_key.as_deref(), Some(key.as_str()));
    assert_eq!(last.script, Some(7));
    assert_eq!(t.emu.last_reinstall(102), None);
    let servers = t.emu.servers();
    assert_eq!(servers[0].os, "kvm-debian-12-gpt-x86_64");
    assert_eq!(servers[0].ip, "203.0.113.10");
    assert_eq!(servers[0].reinstalls, 1);
    assert!(!servers[0].reinstalling);

    // A task of another server, or none, is an invalid task id.
    let other = t
        .req(Method::GET, &format!("/server/102/task/{task_id}"), None)
        .await;
    assert_eq!(error(other, 400).await, "Invalid task ID");
    // The PHP client sends nulls for what it doesn't set.
    let resp = t
        .req(
            Method::POST,
            "/server/101/reinstall",
            Some(json!({"os": "kvm-ubuntu-22.04-gpt-x86_64", "ssh_key": null, "script": null})),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(t.emu.last_reinstall(101).unwrap().ssh_key, None);
    assert_eq!(t.emu.reinstalls(101).len(), 2);
}

#[tokio::test]
async fn reinstall_validates_its_body() {
    let t = T4::start(config()).await;
    let cases = [
        (json!({}), "OS is required"),
        (json!({"os": "windows-95"}), "Invalid OS"),
        (
            json!({"os": "kvm-debian-12-gpt-x86_64", "ssh_key": "not a key"}),
            "Invalid SSH key",
        ),
        (
            json!({"os": "kvm-debian-12-gpt-x86_64", "script": 99}),
            "Invalid init script",
        ),
    ];
    for (body, message) in cases {
        let resp = t
            .req(Method::POST, "/server/102/reinstall", Some(body))
            .await;
        assert_eq!(error(resp, 400).await, message);
    }
    let resp = t
        .req(
            Method::POST,
            "/server/999/reinstall",
            Some(json!({"os": "kvm-debian-12-gpt-x86_64"})),
        )
        .await;
    assert_eq!(error(resp, 404).await, "Server not found");
    assert_eq!(t.emu.servers()[1].reinstalls, 0);
}
