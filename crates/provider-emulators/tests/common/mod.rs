//! Shared helpers: a real HTTP client, fake (well-formed) SSH keys, header access.

#![allow(dead_code, unreachable_pub, unused_imports)] // Each test binary uses a subset.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, Response};
use serde_json::Value;

pub use orchestrator_emulator_kit::testing::header;

pub const DO_TOKEN: &str = "dop_v1_emulator_token";
pub const CF_TOKEN: &str = "cf_emulator_token";
pub const T4_USER: &str = "api-user";
pub const T4_PASSWORD: &str = "api-password";

/// A reqwest client; installs ring as the rustls provider first (reqwest is built without one).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

/// Sends `method url` with an optional bearer token and JSON body; panics on a transport error.
pub async fn call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Response {
    try_call(client, method, url, bearer, body).await.unwrap()
}

pub async fn try_call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Result<Response> {
    let mut req = client.request(method, url);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    req.send().await
}

pub async fn json(resp: Response) -> Value {
    resp.json().await.unwrap()
}

/// A well-formed `ssh-ed25519` public key line, distinct per `n`.
pub fn ssh_key(n: u8) -> String {
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&[n; 32]);
    format!(
        "ssh-ed25519 {} deploy@test",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met in {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
