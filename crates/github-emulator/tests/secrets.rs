//! Actions secrets: real decryption, GitHub's validation rules and limits, pagination.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Gh, ORG, assert_rate_headers, header, message};
use reqwest::Method;
use serde_json::{Value, json};

const NAME_RULES: &str = "Secret names can only contain alphanumeric characters ([a-z], [A-Z], [0-9]) or underscores (_). Spaces are not allowed. Must start with a letter ([a-z], [A-Z]) or underscores (_).";

async fn setup() -> (Gh, String) {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "app");
    let token = gh
        .mint(
            inst,
            json!({"repositories": ["app"], "permissions": {"secrets": "write"}}),
        )
        .await;
    (gh, token)
}

#[tokio::test]
async fn sealed_value_decrypts_to_the_exact_bytes() {
    let (gh, token) = setup().await;
    let value: Vec<u8> = b"line one\nline \xff two\0\r\n".to_vec();
    let resp = gh
        .put_secret(&token, ORG, "app", "telegram_token", &value)
        .await;
    assert_eq!(resp.status(), 201);
    assert_rate_headers(&resp);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({}));
    assert_eq!(
        gh.emu.secret(ORG, "app", "TELEGRAM_TOKEN"),
        Some(value.clone())
    );
    assert_eq!(gh.emu.secret_names(ORG, "app"), vec!["TELEGRAM_TOKEN"]);

    // Read back: name and timestamps only.
    let resp = gh
        .tok(
            Method::GET,
            "/repos/acme/app/actions/secrets/Telegram_Token",
            &token,
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let first: Value = resp.json().await.unwrap();
    assert_eq!(first["name"], "TELEGRAM_TOKEN");
    assert_eq!(first.as_object().unwrap().len(), 3, "{first}");

    // Update: 204, new value, updated_at moves even within the same second.
    let resp = gh
        .put_secret(&token, ORG, "app", "TELEGRAM_TOKEN", b"second")
        .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        gh.emu.secret(ORG, "app", "telegram_token").unwrap(),
        b"second"
    );
    let second: Value = gh
        .tok(
            Method::GET,
            "/repos/acme/app/actions/secrets/TELEGRAM_TOKEN",
            &token,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["created_at"], first["created_at"]);
    assert_ne!(second["updated_at"], first["updated_at"]);
    assert_eq!(
        gh.emu
            .secret_updated_at(ORG, "app", "TELEGRAM_TOKEN")
            .as_deref(),
        second["updated_at"].as_str()
    );

    let stats = gh.emu.stats();
    assert_eq!(stats.public_key_fetches, 2);
    assert_eq!(stats.secret_writes.len(), 2);
    assert_eq!(stats.secret_writes[0].0, "acme/app");
    assert_eq!(
        stats.requests["PUT /repos/{owner}/{repo}/actions/secrets/{name}"],
        2
    );

    // Delete: 204, then 404.
    let path = "/repos/acme/app/actions/secrets/telegram_token";
    assert_eq!(
        gh.tok(Method::DELETE, path, &token, None).await.status(),
        204
    );
    assert_eq!(
        gh.tok(Method::DELETE, path, &token, None).await.status(),
        404
    );
    assert_eq!(gh.tok(Method::GET, path, &token, None).await.status(), 404);
    assert_eq!(gh.emu.secret(ORG, "app", "TELEGRAM_TOKEN"), None);
}

#[tokio::test]
async fn stale_key_garbage_and_missing_fields_are_422() {
    let (gh, token) = setup().await;
    let (key_id, sealed) = gh.seal(&token, ORG, "app", b"value").await;
    let put = |body: Value| {
        let gh = &gh;
        let token = token.clone();
        async move {
            gh.tok(
                Method::PUT,
                "/repos/acme/app/actions/secrets/S",
                &token,
                Some(body),
            )
            .await
        }
    };

    gh.emu.rotate_public_key(ORG, "app");
    let resp = put(json!({"encrypted_value": sealed, "key_id": key_id})).await;
    assert_eq!(resp.status(), 422, "a stale key_id is refused");
    // The right key_id with a value sealed for the old key does not decrypt.
    let (new_id, _) = gh.seal(&token, ORG, "app", b"x").await;
    assert_ne!(new_id, key_id);
    let resp = put(json!({"encrypted_value": sealed, "key_id": new_id})).await;
    assert_eq!(resp.status(), 422);
    assert!(message(resp).await.contains("could not be decrypted"));
    // Not padded standard base64.
    let unpadded = sealed.trim_end_matches('=').to_owned();
    if unpadded != sealed {
        assert_eq!(
            put(json!({"encrypted_value": unpadded, "key_id": new_id}))
                .await
                .status(),
            422
        );
    }
    assert_eq!(
        put(json!({"encrypted_value": "!!", "key_id": new_id}))
            .await
            .status(),
        422
    );
    // Both fields are required.
    let resp = put(json!({"encrypted_value": sealed})).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        message(resp).await,
        "Invalid request.\n\n\"key_id\" wasn't supplied."
    );
    assert_eq!(put(json!({"key_id": new_id})).await.status(), 422);
    // Not JSON.
    let resp = gh
        .client
        .put(format!("{}/repos/acme/app/actions/secrets/S", gh.emu.url()))
        .bearer_auth(&token)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(gh.emu.secret_names(ORG, "app").is_empty());
}

#[tokio::test]
async fn name_rules_size_and_count_limits() {
    let (gh, token) = setup().await;
    for bad in ["1ABC", "GITHUB_TOKEN", "github_x", "A-B", "A%20B", "ÄB"] {
        let resp = gh.put_secret(&token, ORG, "app", bad, b"v").await;
        assert_eq!(resp.status(), 422, "{bad}");
        assert_eq!(message(resp).await, NAME_RULES, "{bad}");
    }
    for good in ["_private", "a1", "GITHUBX"] {
        assert_eq!(
            gh.put_secret(&token, ORG, "app", good, b"v").await.status(),
            201,
            "{good}"
        );
    }
    assert_eq!(
        gh.emu.secret_names(ORG, "app"),
        vec!["A1", "GITHUBX", "_PRIVATE"]
    );

    // 48 KB exactly is fine, one byte more is not.
    let max = vec![b'x'; 49_152];
    assert_eq!(
        gh.put_secret(&token, ORG, "app", "BIG", &max)
            .await
            .status(),
        201
    );
    assert_eq!(gh.emu.secret(ORG, "app", "BIG").unwrap().len(), 49_152);
    let over = vec![b'x'; 49_153];
    assert_eq!(
        gh.put_secret(&token, ORG, "app", "BIGGER", &over)
            .await
            .status(),
        422
    );

    // Fill up to 100 ("someone else" created most), then the 101st is refused.
    let existing = gh.emu.secret_names(ORG, "app").len();
    for i in existing..100 {
        gh.emu
            .put_secret_directly(ORG, "app", &format!("FILL_{i}"), b"f");
    }
    assert_eq!(gh.emu.secret_names(ORG, "app").len(), 100);
    let resp = gh
        .put_secret(&token, ORG, "app", "ONE_TOO_MANY", b"v")
        .await;
    assert_eq!(resp.status(), 422);
    // Updating an existing one is still fine.
    assert_eq!(
        gh.put_secret(&token, ORG, "app", "fill_50", b"new")
            .await
            .status(),
        204
    );
    assert_eq!(gh.emu.secret(ORG, "app", "FILL_50").unwrap(), b"new");
}

fn links(resp: &reqwest::Response) -> Vec<(String, u64)> {
    let Some(link) = header(resp, "link") else {
        return Vec::new();
    };
    link.split(", ")
        .map(|part| {
            let (url, rel) = part.split_once("; ").unwrap();
            let page = url
                .trim_matches(|c| c == '<' || c == '>')
                .rsplit("page=")
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (
                rel.trim_start_matches("rel=").trim_matches('"').to_owned(),
                page,
            )
        })
        .collect()
}

#[tokio::test]
async fn listing_is_paginated_with_link_headers() {
    let (gh, token) = setup().await;
    for i in 0..65 {
        gh.emu
            .put_secret_directly(ORG, "app", &format!("S{i:03}"), b"v");
    }
    let list = |query: &'static str| {
        let gh = &gh;
        let token = token.clone();
        async move {
            gh.tok(
                Method::GET,
                &format!("/repos/acme/app/actions/secrets{query}"),
                &token,
                None,
            )
            .await
        }
    };

    let resp = list("").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(links(&resp), vec![("next".into(), 2), ("last".into(), 3)]);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["total_count"], 65);
    assert_eq!(
        v["secrets"].as_array().unwrap().len(),
        30,
        "default per_page is 30"
    );
    assert_eq!(v["secrets"][0]["name"], "S000");
    assert!(
        v["secrets"][0]["updated_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(v["secrets"][0].get("value").is_none());

    let resp = list("?per_page=30&page=2").await;
    assert_eq!(
        links(&resp),
        vec![
            ("prev".into(), 1),
            ("next".into(), 3),
            ("last".into(), 3),
            ("first".into(), 1)
        ]
    );
    let resp = list("?per_page=30&page=3").await;
    assert_eq!(links(&resp), vec![("prev".into(), 2), ("first".into(), 1)]);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["secrets"].as_array().unwrap().len(), 5);
    assert_eq!(v["secrets"][4]["name"], "S064");

    // per_page is capped at 100: everything on one page, no Link.
    let resp = list("?per_page=500").await;
    assert!(links(&resp).is_empty());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["secrets"].as_array().unwrap().len(), 65);

    // Following the links visits every secret once.
    let mut url = Some(format!(
        "{}/repos/acme/app/actions/secrets?per_page=20",
        gh.emu.url()
    ));
    let mut seen = Vec::new();
    while let Some(u) = url {
        let resp = gh.client.get(&u).bearer_auth(&token).send().await.unwrap();
        url = header(&resp, "link").and_then(|l| {
            l.split(", ")
                .find(|p| p.ends_with("rel=\"next\""))
                .map(|p| {
                    p.split_once('>')
                        .unwrap()
                        .0
                        .trim_start_matches('<')
                        .to_owned()
                })
        });
        let v: Value = resp.json().await.unwrap();
        seen.extend(
            v["secrets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].clone()),
        );
    }
    assert_eq!(seen.len(), 65);
}

#[tokio::test]
async fn public_key_is_a_real_x25519_key() {
    let (gh, token) = setup().await;
    let resp = gh
        .tok(
            Method::GET,
            "/repos/acme/app/actions/secrets/public-key",
            &token,
            None,
        )
        .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        STANDARD.decode(v["key"].as_str().unwrap()).unwrap().len(),
        32
    );
    assert!(!v["key_id"].as_str().unwrap().is_empty());
    // The same key until rotated.
    let again: Value = gh
        .tok(
            Method::GET,
            "/repos/acme/app/actions/secrets/public-key",
            &token,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, v);
}
