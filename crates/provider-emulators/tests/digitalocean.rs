//! The DigitalOcean emulator over real HTTP: auth, droplet lifecycle and its races, listing,
//! delete, SSH keys, rate limits.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::time::{Duration, Instant};

use common::{DO_TOKEN, call, client, eventually, header, json, ssh_key};
use orchestrator_provider_emulators::{DigitalOcean, DoConfig, Faults};
use reqwest::{Method, Response};
use serde_json::{Value, json};

const OTHER_TOKEN: &str = "dop_v1_someone_else";

fn config() -> DoConfig {
    DoConfig {
        tokens: vec![DO_TOKEN.to_owned(), OTHER_TOKEN.to_owned()],
        active_after: Duration::from_millis(50),
        address_after: Duration::from_millis(50),
        ..DoConfig::default()
    }
}

struct Do {
    emu: DigitalOcean,
    client: reqwest::Client,
}

impl Do {
    async fn start(config: DoConfig) -> Self {
        let client = client();
        let emu = DigitalOcean::start(config).await.unwrap();
        Self { emu, client }
    }

    async fn req(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        call(
            &self.client,
            method,
            &format!("{}{path}", self.emu.url()),
            token,
            body.as_ref(),
        )
        .await
    }

    async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path, Some(DO_TOKEN), None).await
    }

    async fn create(&self, token: &str, body: Value) -> Response {
        self.req(Method::POST, "/v2/droplets", Some(token), Some(body))
            .await
    }
}

fn droplet(name: &str, tag: &str) -> Value {
    json!({
        "name": name,
        "region": "fra1",
        "size": "s-1vcpu-1gb",
        "image": "ubuntu-24-04-x64",
        "ssh_keys": null,
        "tags": [tag],
        "user_data": "#cloud-config\nusers: []\n",
        "ipv6": false,
        "monitoring": true,
    })
}

fn assert_rate_headers(resp: &Response) {
    for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        let v = header(resp, name).unwrap_or_else(|| panic!("{name} missing ({})", resp.url()));
        v.parse::<u64>().unwrap();
    }
}

#[tokio::test]
async fn refuses_missing_and_unknown_tokens_with_digitaloceans_shape() {
    let d = Do::start(config()).await;
    for token in [None, Some("dop_v1_wrong")] {
        let resp = d.req(Method::GET, "/v2/droplets", token, None).await;
        assert_eq!(resp.status(), 401);
        assert_rate_headers(&resp);
        let body = json(resp).await;
        assert_eq!(body["id"], "unauthorized");
        assert_eq!(body["message"], "Unable to authenticate you");
    }
    // Basic auth with the right token is not a bearer token.
    let resp = d
        .client
        .get(format!("{}/v2/droplets", d.emu.url()))
        .basic_auth(DO_TOKEN, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(d.emu.stats().auth_failures, 3);
    assert!(d.emu.droplets().is_empty());
}

#[tokio::test]
async fn droplet_is_active_before_it_has_a_public_address_and_may_404_at_first() {
    let d = Do::start(DoConfig {
        active_after: Duration::from_millis(300),
        address_after: Duration::from_millis(1000),
        transient_404_polls: 2,
        ..config()
    })
    .await;
    let body = droplet("web-1", "orch:p1");
    let resp = d.create(DO_TOKEN, body.clone()).await;
    assert_eq!(resp.status(), 202);
    assert_rate_headers(&resp);
    let created = json(resp).await;
    assert_eq!(created["droplet"]["status"], "new");
    assert_eq!(created["droplet"]["networks"], json!({"v4": [], "v6": []}));
    assert_eq!(created["droplet"]["tags"], json!(["orch:p1"]));
    assert_eq!(created["links"]["actions"][0]["rel"], "create");
    let id = created["droplet"]["id"].as_u64().unwrap();
    let path = format!("/v2/droplets/{id}");

    // Transient 404s while the droplet is placed; listing already shows it.
    for _ in 0..2 {
        let resp = d.get(&path).await;
        assert_eq!(resp.status(), 404);
        assert_eq!(json(resp).await["id"], "not_found");
    }
    let listed = json(d.get("/v2/droplets?tag_name=orch:p1").await).await;
    assert_eq!(listed["meta"]["total"], 1);

    let first = json(d.get(&path).await).await;
    assert_eq!(first["droplet"]["status"], "new");

    // Active, with a private address only.
    let active = eventually(Duration::from_secs(5), || async {
        let v = json(d.get(&path).await).await;
        (v["droplet"]["status"] == "active").then_some(v)
    })
    .await;
    let v4 = active["droplet"]["networks"]["v4"].as_array().unwrap();
    assert!(v4.iter().all(|n| n["type"] != "public"), "{v4:?}");
    assert!(v4.iter().any(|n| n["type"] == "private"));
    assert_eq!(d.emu.droplets()[0].ipv4, None);

    // Then the public address.
    let ip = eventually(Duration::from_secs(5), || async {
        let v = json(d.get(&path).await).await;
        v["droplet"]["networks"]["v4"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "public")
            .map(|n| n["ip_address"].as_str().unwrap().to_owned())
    })
    .await;
    ip.parse::<std::net::Ipv4Addr>().unwrap();

    // The create action completed.
    let action_id = created["links"]["actions"][0]["id"].as_u64().unwrap();
    let action = json(d.get(&format!("/v2/actions/{action_id}")).await).await;
    assert_eq!(action["action"]["status"], "completed");
    assert_eq!(action["action"]["resource_id"], id);

    let records = d.emu.droplets();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.id, id);
    assert_eq!(r.name, "web-1");
    assert_eq!(r.tags, ["orch:p1"]);
    assert_eq!(r.user_data.as_deref(), Some("#cloud-config\nusers: []\n"));
    assert_eq!(r.token_used, DO_TOKEN);
    assert_eq!(r.ipv4.as_deref(), Some(ip.as_str()));
    assert_eq!(r.status, "active");
    assert!(!r.deleted);
    assert_eq!(r.create_body, body);
}

#[tokio::test]
async fn create_validates_the_body() {
    let d = Do::start(config()).await;
    let base = droplet("ok", "t");
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    let cases = [
        (with("name", Value::Null), 422),
        (with("name", json!("bad_name!")), 422),
        (with("size", Value::Null), 422),
        (with("image", Value::Null), 422),
        (with("image", json!(12345)), 202),
        (with("tags", json!(["ok", "not ok"])), 422),
        (with("tags", Value::Null), 202),
        (with("ssh_keys", json!([424242])), 422),
        (with("ssh_keys", json!("nope")), 422),
        (with("user_data", json!("x".repeat(64 * 1024))), 202),
        (with("user_data", json!("x".repeat(64 * 1024 + 1))), 422),
        (with("monitoring", json!("yes")), 422),
    ];
    for (i, (body, status)) in cases.into_iter().enumerate() {
        let resp = d.create(DO_TOKEN, body).await;
        assert_eq!(resp.status(), status, "case {i}");
        if status == 422 {
            let v = json(resp).await;
            assert_eq!(v["id"], "unprocessable_entity", "case {i}");
            assert!(v["message"].as_str().unwrap().len() > 5);
        }
    }
    let resp = d
        .client
        .post(format!("{}/v2/droplets", d.emu.url()))
        .bearer_auth(DO_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(json(resp).await["id"], "bad_request");
    assert_eq!(d.emu.droplets().len(), 3);
}

#[tokio::test]
async fn lists_by_tag_or_name_with_pagination_per_account() {
    let d = Do::start(config()).await;
    for i in 0..5 {
        assert_eq!(
            d.create(DO_TOKEN, droplet(&format!("a-{i}"), "orch:a"))
                .await
                .status(),
            202
        );
    }
    assert_eq!(
        d.create(DO_TOKEN, droplet("b-0", "orch:b")).await.status(),
        202
    );
    assert_eq!(
        d.create(OTHER_TOKEN, droplet("a-0", "orch:a"))
            .await
            .status(),
        202
    );

    let page1 = json(d.get("/v2/droplets?tag_name=orch:a&per_page=2").await).await;
    assert_eq!(page1["meta"]["total"], 5);
    let names: Vec<&str> = page1["droplets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-0", "a-1"]);
    let pages = &page1["links"]["pages"];
    assert!(pages.get("prev").is_none());
    let next = pages["next"].as_str().unwrap();
    assert!(
        next.contains("page=2") && next.contains("tag_name=orch:a"),
        "{next}"
    );
    assert!(pages["last"].as_str().unwrap().contains("page=3"));

    // Following `next` links walks every droplet once.
    let mut seen = Vec::new();
    let mut url = Some(format!(
        "{}/v2/droplets?tag_name=orch:a&per_page=2",
        d.emu.url()
    ));
    while let Some(u) = url {
        let v = json(call(&d.client, Method::GET, &u, Some(DO_TOKEN), None).await).await;
        for droplet in v["droplets"].as_array().unwrap() {
            seen.push(droplet["name"].as_str().unwrap().to_owned());
        }
        url = v["links"]["pages"]["next"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ["a-0", "a-1", "a-2", "a-3", "a-4"]);

    let last = json(
        d.get("/v2/droplets?tag_name=orch:a&per_page=2&page=3")
            .await,
    )
    .await;
    assert_eq!(last["droplets"].as_array().unwrap().len(), 1);
    assert!(
        last["links"]["pages"]["prev"]
            .as_str()
            .unwrap()
            .contains("page=2")
    );
    assert!(last["links"]["pages"].get("next").is_none());

    let single = json(d.get("/v2/droplets?tag_name=orch:b").await).await;
    assert_eq!(single["meta"]["total"], 1);
    assert_eq!(single["links"], json!({}));

    let by_name = json(d.get("/v2/droplets?name=a-3").await).await;
    assert_eq!(by_name["meta"]["total"], 1);
    assert_eq!(by_name["droplets"][0]["name"], "a-3");

    let none = json(d.get("/v2/droplets?tag_name=orch:none").await).await;
    assert_eq!(none["meta"]["total"], 0);
    assert_eq!(none["droplets"], json!([]));

    let resp = d.get("/v2/droplets?tag_name=orch:a&name=a-1").await;
    assert_eq!(resp.status(), 422);

    // The other account sees only its own.
    let other = json(
        d.req(
            Method::GET,
            "/v2/droplets?tag_name=orch:a",
            Some(OTHER_TOKEN),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(other["meta"]["total"], 1);
    let all = json(d.get("/v2/droplets?per_page=200").await).await;
    assert_eq!(all["meta"]["total"], 6);
}

#[tokio::test]
async fn delete_answers_204_then_404() {
    let d = Do::start(config()).await;
    let created = json(d.create(DO_TOKEN, droplet("gone", "orch:g")).await).await;
    let id = created["droplet"]["id"].as_u64().unwrap();
    let path = format!("/v2/droplets/{id}");

    // Another account cannot delete it.
    let resp = d.req(Method::DELETE, &path, Some(OTHER_TOKEN), None).await;
    assert_eq!(resp.status(), 404);

    // Right after the create its create action still runs: DigitalOcean's 422, then a retry.
    let resp = d.req(Method::DELETE, &path, Some(DO_TOKEN), None).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        json(resp).await["message"],
        "Droplet already has a pending event."
    );
    tokio::time::sleep(config().active_after).await;
    let resp = d.req(Method::DELETE, &path, Some(DO_TOKEN), None).await;
    assert_eq!(resp.status(), 204);
    assert_rate_headers(&resp);
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_eq!(d.get(&path).await.status(), 404);
    let again = d.req(Method::DELETE, &path, Some(DO_TOKEN), None).await;
    assert_eq!(again.status(), 404);
    assert_eq!(json(again).await["id"], "not_found");
    let listed = json(d.get("/v2/droplets?tag_name=orch:g").await).await;
    assert_eq!(listed["meta"]["total"], 0);
    let records = d.emu.droplets();
    assert!(records[0].deleted);
    assert!(d.emu.live_droplets().is_empty());

    // Delete by tag.
    for i in 0..2 {
        d.create(DO_TOKEN, droplet(&format!("t{i}"), "orch:t"))
            .await;
    }
    let resp = d
        .req(
            Method::DELETE,
            "/v2/droplets?tag_name=orch:t",
            Some(DO_TOKEN),
            None,
        )
        .await;
    assert_eq!(resp.status(), 204);
    assert!(d.emu.live_droplets().is_empty());
}

#[tokio::test]
async fn ssh_keys_register_once_per_account() {
    let d = Do::start(config()).await;
    let key = ssh_key(1);
    let body = json!({"name": "orchestrator", "public_key": key});
    let resp = d
        .req(
            Method::POST,
            "/v2/account/keys",
            Some(DO_TOKEN),
            Some(body.clone()),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let created = json(resp).await;
    let id = created["ssh_key"]["id"].as_u64().unwrap();
    let fingerprint = created["ssh_key"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fingerprint.len(), 47);
    assert_eq!(fingerprint.matches(':').count(), 15);
    assert_eq!(created["ssh_key"]["public_key"], key);

    // The same key material, even with another comment and name: 422.
    let renamed = json!({"name": "again", "public_key": key.replace("deploy@test", "other")});
    for body in [body.clone(), renamed] {
        let resp = d
            .req(Method::POST, "/v2/account/keys", Some(DO_TOKEN), Some(body))
            .await;
        assert_eq!(resp.status(), 422);
        let v = json(resp).await;
        assert_eq!(v["id"], "unprocessable_entity");
        assert_eq!(v["message"], "SSH Key is already in use on your account");
    }
    // Another account may register it.
    let resp = d
        .req(
            Method::POST,
            "/v2/account/keys",
            Some(OTHER_TOKEN),
            Some(body),
        )
        .await;
    assert_eq!(resp.status(), 201);

    let resp = d
        .req(
            Method::POST,
            "/v2/account/keys",
            Some(DO_TOKEN),
            Some(json!({"name": "bad", "public_key": "ssh-ed25519 AAAA"})),
        )
        .await;
    assert_eq!(resp.status(), 422);

    let list = json(d.get("/v2/account/keys").await).await;
    assert_eq!(list["meta"]["total"], 1);
    assert_eq!(list["ssh_keys"][0]["id"], id);
    let by_fp = d.get(&format!("/v2/account/keys/{fingerprint}")).await;
    assert_eq!(by_fp.status(), 200);
    assert_eq!(json(by_fp).await["ssh_key"]["id"], id);

    // Droplets may reference it by id or fingerprint.
    let mut body = droplet("with-key", "orch:k");
    body["ssh_keys"] = json!([id, fingerprint]);
    assert_eq!(d.create(DO_TOKEN, body).await.status(), 202);
    assert_eq!(
        d.emu.droplets()[0].ssh_keys,
        [id.to_string(), fingerprint.clone()]
    );

    let resp = d
        .req(
            Method::DELETE,
            &format!("/v2/account/keys/{id}"),
            Some(DO_TOKEN),
            None,
        )
        .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(d.get(&format!("/v2/account/keys/{id}")).await.status(), 404);
    let keys = d.emu.ssh_keys();
    assert_eq!(keys.len(), 2);
    assert!(keys[0].deleted);
    assert_eq!(keys[0].token_used, DO_TOKEN);
    assert_eq!(keys[1].token_used, OTHER_TOKEN);
}

#[tokio::test]
async fn rate_limit_headers_and_429_with_retry_after() {
    let d = Do::start(DoConfig {
        rate_limit_per_minute: 3,
        rate_limit_per_hour: 100,
        ..config()
    })
    .await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let resp = d.get("/v2/droplets").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "ratelimit-limit"), Some("100"));
        remaining.push(header(&resp, "ratelimit-remaining").unwrap().to_owned());
        let reset: i64 = header(&resp, "ratelimit-reset").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(reset > now && reset <= now + 3601, "{reset} vs {now}");
    }
    assert_eq!(remaining, ["99", "98", "97"]);
    let resp = d.get("/v2/droplets").await;
    assert_eq!(resp.status(), 429);
    assert_rate_headers(&resp);
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(json(resp).await["id"], "too_many_requests");
    // Per token: the other account is not limited.
    let resp = d
        .req(Method::GET, "/v2/droplets", Some(OTHER_TOKEN), None)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(d.emu.stats().rate_limited, 1);
}

#[tokio::test]
async fn listing_keys_has_its_own_limit() {
    let d = Do::start(DoConfig {
        key_list_limit_per_minute: 2,
        ..config()
    })
    .await;
    for _ in 0..2 {
        assert_eq!(d.get("/v2/account/keys").await.status(), 200);
    }
    let resp = d.get("/v2/account/keys").await;
    assert_eq!(resp.status(), 429);
    assert!(header(&resp, "retry-after").is_some());
    assert_eq!(d.get("/v2/droplets").await.status(), 200);
}

#[tokio::test]
async fn a_fault_after_the_handler_creates_the_droplet_anyway() {
    let d = Do::start(config()).await;
    d.emu.set_faults_for(
        "POST /v2/droplets",
        Faults {
            server_error: 1.0,
            after_handler: 1.0,
            ..Faults::default()
        },
    );
    let resp = d.create(DO_TOKEN, droplet("lost", "orch:lost")).await;
    assert!(resp.status().is_server_error());
    assert_rate_headers(&resp);
    let v = json(resp).await;
    assert!(v["id"].is_string() && v["message"].is_string());
    // Listing by tag finds what the failed create made.
    let listed = json(d.get("/v2/droplets?tag_name=orch:lost").await).await;
    assert_eq!(listed["meta"]["total"], 1);
    let stats = d.emu.stats();
    assert_eq!(stats.faults_after_handler, 1);
    assert_eq!(stats.count("POST /v2/droplets"), 1);

    // Dropped after the handler: the client sees a transport error, the droplet exists.
    d.emu.set_faults_for(
        "POST /v2/droplets",
        Faults {
            dropped_connection: 1.0,
            after_handler: 1.0,
            ..Faults::default()
        },
    );
    let started = Instant::now();
    let err = common::try_call(
        &d.client,
        Method::POST,
        &format!("{}/v2/droplets", d.emu.url()),
        Some(DO_TOKEN),
        Some(&droplet("lost-2", "orch:lost")),
    )
    .await;
    assert!(err.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(d.emu.live_droplets().len(), 2);
}
