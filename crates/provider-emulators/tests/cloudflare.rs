//! The Cloudflare emulator over real HTTP: auth, zones, create-or-update of DNS records, the
//! "already exists" and "does not exist" codes, validation, rate limit.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::time::Duration;

use common::{CF_TOKEN, call, client, header, json};
use orchestrator_provider_emulators::{CfConfig, Cloudflare};
use reqwest::{Method, Response};
use serde_json::{Value, json};

const ZONE: &str = "example.com";

fn config() -> CfConfig {
    CfConfig {
        tokens: vec![CF_TOKEN.to_owned()],
        zones: vec![ZONE.to_owned(), "other.test".to_owned()],
        ..CfConfig::default()
    }
}

struct Cf {
    emu: Cloudflare,
    client: reqwest::Client,
    zone: String,
}

impl Cf {
    async fn start(config: CfConfig) -> Self {
        let client = client();
        let emu = Cloudflare::start(config).await.unwrap();
        let zone = emu.zone_id(ZONE).unwrap();
        Self { emu, client, zone }
    }

    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        call(
            &self.client,
            method,
            &format!("{}/client/v4{path}", self.emu.url()),
            Some(CF_TOKEN),
            body.as_ref(),
        )
        .await
    }

    fn records(&self) -> String {
        format!("/zones/{}/dns_records", self.zone)
    }

    async fn list(&self, query: &str) -> Response {
        self.req(Method::GET, &format!("{}?{query}", self.records()), None)
            .await
    }

    async fn create(&self, body: Value) -> Response {
        self.req(Method::POST, &self.records(), Some(body)).await
    }
}

fn a(name: &str, ip: &str) -> Value {
    json!({"type": "A", "name": name, "content": ip, "ttl": 60, "proxied": false})
}

/// Asserts a failed envelope with `code` first; returns the message.
async fn error_code(resp: Response, status: u16, code: u64) -> String {
    assert_eq!(resp.status(), status, "{}", resp.url());
    let v = json(resp).await;
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["result"], Value::Null);
    assert_eq!(v["messages"], json!([]));
    assert_eq!(v["errors"][0]["code"], code, "{v}");
    v["errors"][0]["message"].as_str().unwrap().to_owned()
}

/// Cloudflare's answers to a bad token: no or a malformed `Authorization` header (or a token
/// not of a token's form) is 400 with 6003 and 6111 in its chain; a well-formed token it does
/// not know is 403 with 10000. Every admitted answer reports the token's window in the
/// `Ratelimit` and `Ratelimit-Policy` headers (1200 per 5 minutes).
#[tokio::test]
async fn refuses_bad_tokens_and_reports_the_rate_limit_as_cloudflare_does() {
    let cf = Cf::start(config()).await;
    let url = format!("{}/client/v4/zones?name={ZONE}", cf.emu.url());
    for token in [None, Some("not a token!")] {
        let refused = call(&cf.client, Method::GET, &url, token, None).await;
        assert_eq!(refused.status(), 400);
        let v = json(refused).await;
        assert_eq!(v["errors"][0]["code"], 6003, "{v}");
        assert_eq!(v["errors"][0]["message"], "Invalid request headers");
        assert_eq!(v["errors"][0]["error_chain"][0]["code"], 6111, "{v}");
    }
    let wrong = call(&cf.client, Method::GET, &url, Some("nope"), None).await;
    assert_eq!(error_code(wrong, 403, 10000).await, "Authentication error");
    let ok = call(&cf.client, Method::GET, &url, Some(CF_TOKEN), None).await;
    assert_eq!(ok.status(), 200);
    let limit = header(&ok, "ratelimit").unwrap();
    assert!(limit.starts_with("\"default\";r=1199;t="), "{limit}");
    assert_eq!(
        header(&ok, "ratelimit-policy"),
        Some("\"default\";q=1200;w=300")
    );
    assert_eq!(cf.emu.stats().auth_failures, 3);
    let verify = json(cf.req(Method::GET, "/user/tokens/verify", None).await).await;
    assert_eq!(verify["result"]["status"], "active");
}

#[tokio::test]
async fn zones_by_name() {
    let cf = Cf::start(config()).await;
    let v = json(
        cf.req(Method::GET, &format!("/zones?name={ZONE}"), None)
            .await,
    )
    .await;
    assert_eq!(v["success"], true);
    assert_eq!(v["errors"], json!([]));
    assert_eq!(v["result"].as_array().unwrap().len(), 1);
    assert_eq!(v["result"][0]["id"], cf.zone.as_str());
    assert_eq!(v["result"][0]["name"], ZONE);
    assert_eq!(v["result_info"]["total_count"], 1);
    assert_eq!(cf.zone.len(), 32);
    let none = json(cf.req(Method::GET, "/zones?name=nope.test", None).await).await;
    assert_eq!(none["result"], json!([]));
    let all = json(cf.req(Method::GET, "/zones", None).await).await;
    assert_eq!(all["result_info"]["total_count"], 2);
    let one = json(
        cf.req(Method::GET, &format!("/zones/{}", cf.zone), None)
            .await,
    )
    .await;
    assert_eq!(one["result"]["name"], ZONE);
    let unknown = cf
        .req(
            Method::GET,
            "/zones/0123456789abcdef0123456789abcdef/dns_records",
            None,
        )
        .await;
    error_code(unknown, 400, 7003).await;
}

#[tokio::test]
async fn create_list_exact_patch_put_delete() {
    let cf = Cf::start(config()).await;
    let resp = cf.create(a("app.example.com", "198.51.100.7")).await;
    assert_eq!(resp.status(), 200);
    let created = json(resp).await;
    assert_eq!(created["success"], true);
    let record = &created["result"];
    let id = record["id"].as_str().unwrap().to_owned();
    assert_eq!(record["name"], "app.example.com");
    assert_eq!(record["zone_id"], cf.zone.as_str());
    assert_eq!(record["proxied"], false);
    assert_eq!(record["ttl"], 60);
    // A relative name is expanded; an AAAA beside the A is fine.
    let resp = cf
        .create(json!({"type": "AAAA", "name": "app", "content": "2001:db8::7"}))
        .await;
    assert_eq!(resp.status(), 200);
    let aaaa = json(resp).await;
    assert_eq!(aaaa["result"]["name"], "app.example.com");
    assert_eq!(aaaa["result"]["ttl"], 1);
    cf.create(a("other.example.com", "198.51.100.8")).await;

    let exact = json(cf.list("type=A&name.exact=app.example.com").await).await;
    assert_eq!(exact["result"].as_array().unwrap().len(), 1);
    assert_eq!(exact["result"][0]["id"], id.as_str());
    assert_eq!(exact["result_info"]["total_count"], 1);
    assert_eq!(exact["result_info"]["page"], 1);
    let older = json(cf.list("type=A&name=APP.example.com").await).await;
    assert_eq!(older["result"][0]["id"], id.as_str());
    let by_name = json(cf.list("name.exact=app.example.com").await).await;
    assert_eq!(by_name["result"].as_array().unwrap().len(), 2);
    let none = json(cf.list("type=A&name.exact=app").await).await;
    assert_eq!(none["result"], json!([]));

    let path = format!("{}/{id}", cf.records());
    let patched = cf
        .req(
            Method::PATCH,
            &path,
            Some(json!({"content": "198.51.100.9"})),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let patched = json(patched).await;
    assert_eq!(patched["result"]["content"], "198.51.100.9");
    assert_eq!(patched["result"]["ttl"], 60);
    let put = cf
        .req(
            Method::PUT,
            &path,
            Some(json!({"type": "A", "name": "app.example.com", "content": "198.51.100.10"})),
        )
        .await;
    assert_eq!(put.status(), 200);
    assert_eq!(json(put).await["result"]["ttl"], 1);
    let put_partial = cf
        .req(
            Method::PUT,
            &path,
            Some(json!({"content": "198.51.100.11"})),
        )
        .await;
    assert_eq!(put_partial.status(), 400);
    let got = json(cf.req(Method::GET, &path, None).await).await;
    assert_eq!(got["result"]["content"], "198.51.100.10");

    let view = cf.emu.records().into_iter().find(|r| r.id == id).unwrap();
    assert_eq!(view.zone, ZONE);
    assert_eq!(view.type_, "A");
    assert_eq!(view.name, "app.example.com");
    assert_eq!(view.content, "198.51.100.10");
    assert!(!view.proxied);
    assert_eq!(view.token_used, CF_TOKEN);

    let deleted = cf.req(Method::DELETE, &path, None).await;
    assert_eq!(deleted.status(), 200);
    let deleted = json(deleted).await;
    assert_eq!(deleted["success"], true);
    assert_eq!(deleted["result"], json!({"id": id}));
    assert_eq!(cf.emu.records().len(), 2);
    error_code(cf.req(Method::GET, &path, None).await, 404, 81044).await;
}

#[tokio::test]
async fn duplicates_are_refused_with_81053_style_codes() {
    let cf = Cf::start(config()).await;
    assert_eq!(cf.create(a("app", "198.51.100.1")).await.status(), 200);
    // Cloudflare's own rule: several A records per name (round-robin).
    assert_eq!(cf.create(a("app", "198.51.100.2")).await.status(), 200);
    error_code(cf.create(a("app", "198.51.100.1")).await, 400, 81058).await;
    let cname = json!({"type": "CNAME", "name": "app", "content": "elsewhere.test"});
    let message = error_code(cf.create(cname).await, 400, 81053).await;
    assert_eq!(
        message,
        "An A, AAAA, or CNAME record with that host already exists."
    );
    // A CNAME elsewhere, then an A on its host.
    let cname = json!({"type": "CNAME", "name": "www", "content": "app.example.com"});
    assert_eq!(cf.create(cname).await.status(), 200);
    error_code(cf.create(a("www", "198.51.100.3")).await, 400, 81053).await;
    // A PATCH that makes a record identical to another collides too.
    let other = json(cf.create(a("free", "198.51.100.4")).await).await;
    let path = format!(
        "{}/{}",
        cf.records(),
        other["result"]["id"].as_str().unwrap()
    );
    let resp = cf
        .req(
            Method::PATCH,
            &path,
            Some(json!({"name": "app", "content": "198.51.100.1"})),
        )
        .await;
    error_code(resp, 400, 81058).await;
    // The same name in another zone is another host.
    let other_zone = cf.emu.zone_id("other.test").unwrap();
    let resp = cf
        .req(
            Method::POST,
            &format!("/zones/{other_zone}/dns_records"),
            Some(a("app", "198.51.100.2")),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(cf.emu.records().len(), 5);
}

#[tokio::test]
async fn unknown_records_are_81044() {
    let cf = Cf::start(config()).await;
    let path = format!("{}/00000000000000000000000000000000", cf.records());
    let resp = cf
        .req(
            Method::PATCH,
            &path,
            Some(json!({"content": "198.51.100.1"})),
        )
        .await;
    assert_eq!(error_code(resp, 404, 81044).await, "Record does not exist.");
    error_code(cf.req(Method::DELETE, &path, None).await, 404, 81044).await;
    let put = cf
        .req(Method::PUT, &path, Some(a("x", "198.51.100.1")))
        .await;
    error_code(put, 404, 81044).await;
}

#[tokio::test]
async fn ttl_proxied_and_content_are_validated() {
    let cf = Cf::start(config()).await;
    let mut body = a("v", "198.51.100.1");
    for (ttl, ok) in [
        (json!(1), true),
        (json!(30), false),
        (json!(86401), false),
        (json!("60"), false),
    ] {
        body["ttl"] = ttl.clone();
        body["name"] = json!(format!("v{}", ttl.to_string().replace('"', "q")));
        let resp = cf.create(body.clone()).await;
        if ok {
            assert_eq!(resp.status(), 200, "ttl {ttl}");
        } else {
            error_code(resp, 400, 9021).await;
        }
    }
    body["ttl"] = json!(86400);
    body["name"] = json!("max");
    assert_eq!(cf.create(body.clone()).await.status(), 200);
    for proxied in [json!("false"), json!(0)] {
        body["name"] = json!("p");
        body["proxied"] = proxied;
        error_code(cf.create(body.clone()).await, 400, 9003).await;
    }
    body["proxied"] = json!(false);
    body["content"] = json!("not-an-ip");
    error_code(cf.create(body.clone()).await, 400, 9005).await;
    let txt = json!({"type": "TXT", "name": "t", "content": "hello", "proxied": true});
    error_code(cf.create(txt).await, 400, 9004).await;
    let no_type = json!({"name": "n", "content": "198.51.100.1"});
    error_code(cf.create(no_type).await, 400, 1004).await;
    let resp = cf
        .client
        .post(format!("{}/client/v4{}", cf.emu.url(), cf.records()))
        .bearer_auth(CF_TOKEN)
        .body("{")
        .send()
        .await
        .unwrap();
    error_code(resp, 400, 9207).await;
    // PATCH validates too.
    let id = cf.emu.records()[0].id.clone();
    let resp = cf
        .req(
            Method::PATCH,
            &format!("{}/{id}", cf.records()),
            Some(json!({"proxied": "yes"})),
        )
        .await;
    error_code(resp, 400, 9003).await;
}

#[tokio::test]
async fn comments_and_tags_are_kept_checked_and_filtered_as_cloudflare_does() {
    // Free plan: comments up to 100 characters, no tags.
    let free = Cf::start(config()).await;
    let mut body = a("c", "198.51.100.1");
    body["comment"] = json!("orchestrator server srv-1");
    let created = json(free.create(body.clone()).await).await;
    assert_eq!(created["result"]["comment"], "orchestrator server srv-1");
    assert_eq!(created["result"]["tags"], json!([]));
    body["name"] = json!("c2");
    body["comment"] = json!("x".repeat(101));
    error_code(free.create(body.clone()).await, 400, 1004).await;
    body["comment"] = json!("two\nlines");
    error_code(free.create(body.clone()).await, 400, 1004).await;
    body["comment"] = json!(7);
    error_code(free.create(body.clone()).await, 400, 1004).await;
    body["comment"] = Value::Null;
    body["tags"] = json!(["owner:me"]);
    let message = error_code(free.create(body.clone()).await, 400, 1004).await;
    assert!(message.contains("Free plan"), "{message}");

    // Paid plans: 500 characters, `name:value` tags with case-insensitive names.
    let paid = Cf::start(CfConfig {
        plan: orchestrator_provider_emulators::CfPlan::Paid,
        ..config()
    })
    .await;
    let mut body = a("t", "198.51.100.2");
    body["comment"] = json!("y".repeat(500));
    body["tags"] = json!(["Owner:Team A", "important"]);
    let created = json(paid.create(body.clone()).await).await;
    assert_eq!(
        created["result"]["tags"],
        json!(["owner:Team A", "important"])
    );
    let id = created["result"]["id"].as_str().unwrap().to_owned();
    for bad in [
        json!(["a b:c"]),
        json!([":v"]),
        json!(["n:v", "N:w"]),
        json!("n:v"),
        json!([1]),
    ] {
        body["name"] = json!("t2");
        body["tags"] = bad.clone();
        error_code(paid.create(body.clone()).await, 400, 1004).await;
    }
    body["comment"] = json!("z".repeat(501));
    body["tags"] = json!([]);
    error_code(paid.create(body.clone()).await, 400, 1004).await;
    let mut other = a("u", "198.51.100.3");
    other["comment"] = json!("Hand-made by ops");
    paid.create(other).await;
    paid.create(a("v", "198.51.100.4")).await;

    let ids = |v: Value| -> Vec<String> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["name"]
                    .as_str()
                    .unwrap()
                    .split('.')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    for (query, expect) in [
        ("tag=owner:Team%20A", vec!["t"]),
        ("tag=OWNER", vec!["t"]),
        ("tag.absent=owner", vec!["u", "v"]),
        ("tag.exact=owner:team%20a", vec!["t"]),
        ("tag.exact=owner:team", vec![]),
        ("comment=hand-made%20by%20ops", vec!["u"]),
        ("comment.contains=MADE", vec!["u"]),
        ("comment.startswith=yyy", vec!["t"]),
        ("comment.present=1", vec!["t", "u"]),
        ("comment.absent=1", vec!["v"]),
        ("type=A&name=u.example.com&comment.endswith=ops", vec!["u"]),
    ] {
        assert_eq!(ids(json(paid.list(query).await).await), expect, "{query}");
    }
    // PATCH replaces the tags and may clear the comment; other fields stay.
    let path = format!("{}/{id}", paid.records());
    let patched = json(
        paid.req(
            Method::PATCH,
            &path,
            Some(json!({"tags": ["k:v"], "comment": null})),
        )
        .await,
    )
    .await;
    assert_eq!(patched["result"]["tags"], json!(["k:v"]));
    assert_eq!(patched["result"]["comment"], Value::Null);
    assert_eq!(patched["result"]["content"], "198.51.100.2");
    let view = paid.emu.records().into_iter().find(|r| r.id == id).unwrap();
    assert_eq!((view.comment, view.tags), (None, vec!["k:v".to_owned()]));
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let cf = Cf::start(CfConfig {
        rate_limit: 3,
        rate_window: Duration::from_secs(300),
        ..config()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(cf.req(Method::GET, "/zones", None).await.status(), 200);
    }
    let resp = cf.req(Method::GET, "/zones", None).await;
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((250..=300).contains(&retry), "{retry}");
    error_code(resp, 429, 971).await;
    assert_eq!(cf.emu.stats().rate_limited, 1);
}

/// With `proxied_by_default` (a zone whose new records go through the proxy unless the writer
/// says otherwise), a proxiable record created without `proxied` is proxied, one created with
/// `proxied: false` is not, and a TXT record never is: so a client's own `proxied: false` is
/// what a test sees.
#[tokio::test]
async fn records_without_proxied_follow_the_zones_default() {
    let cf = Cf::start(CfConfig {
        proxied_by_default: true,
        ..config()
    })
    .await;
    let bare = json!({"type": "A", "name": "bare", "content": "198.51.100.1"});
    assert_eq!(cf.create(bare).await.status(), 200);
    assert_eq!(cf.create(a("said", "198.51.100.2")).await.status(), 200);
    let txt = json!({"type": "TXT", "name": "t", "content": "hello"});
    assert_eq!(cf.create(txt).await.status(), 200);
    let proxied = |name: &str| {
        cf.emu
            .records()
            .into_iter()
            .find(|r| r.name == format!("{name}.{ZONE}"))
            .map(|r| r.proxied)
    };
    assert_eq!(proxied("bare"), Some(true));
    assert_eq!(proxied("said"), Some(false));
    assert_eq!(proxied("t"), Some(false));

    // The API's own default (the emulator's unless told): not proxied.
    let cf = Cf::start(config()).await;
    let bare = json!({"type": "A", "name": "bare", "content": "198.51.100.1"});
    assert_eq!(cf.create(bare).await.status(), 200);
    assert!(!cf.emu.records()[0].proxied);
}
