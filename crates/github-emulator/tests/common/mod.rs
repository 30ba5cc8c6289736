//! Shared helpers: the tests' App (`orchestrator_github_emulator::testing`), an emulator per
//! test, a real HTTP client.

#![allow(dead_code, unreachable_pub)] // Each test binary uses a subset.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_box::aead::OsRng;
#[allow(unused_imports)] // Each test binary uses a subset.
pub use orchestrator_github_emulator::testing::{APP_ID, ORG, app_key};
use orchestrator_github_emulator::{Config, Emulator, app_jwt, testing};
use reqwest::{Method, Response};
use serde_json::{Value, json};

pub struct Gh {
    pub emu: Emulator,
    pub client: reqwest::Client,
}

pub fn config() -> Config {
    testing::trusting_test_app(Config::default())
}

impl Gh {
    pub async fn start() -> Self {
        Self::with(config()).await
    }

    pub async fn with(config: Config) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let emu = Emulator::start(config).await.unwrap();
        let client = reqwest::Client::builder().build().unwrap();
        Self { emu, client }
    }

    pub fn jwt(&self) -> String {
        app_jwt(&app_key().0, APP_ID).unwrap()
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Result<Response> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.emu.url()))
            .header("accept", "application/vnd.github+json")
            .header("user-agent", "emulator-tests");
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await
    }

    /// Calls with an installation token; panics on a transport error.
    pub async fn tok(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Response {
        self.call(method, path, Some(&format!("Bearer {token}")), body)
            .await
            .unwrap()
    }

    /// Mints an installation token with `body` (narrowing); asserts 201.
    pub async fn mint(&self, installation: u64, body: Value) -> String {
        let jwt = self.jwt();
        let resp = self
            .call(
                Method::POST,
                &format!("/app/installations/{installation}/access_tokens"),
                Some(&format!("Bearer {jwt}")),
                Some(body),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// Fetches the repository's public key and seals `value` for it: (key_id, encrypted_value).
    pub async fn seal(
        &self,
        token: &str,
        owner: &str,
        repo: &str,
        value: &[u8],
    ) -> (String, String) {
        let base = format!("/repos/{owner}/{repo}/actions/secrets");
        self.seal_at(token, &base, value)
            .await
            .unwrap_or_else(|status| panic!("the public key's GET answered {status}"))
    }

    /// Seals `value` for the public key of any secret location (`base`: its `.../secrets`
    /// path): (key_id, encrypted_value), or the status the key's GET answered.
    pub async fn seal_at(
        &self,
        token: &str,
        base: &str,
        value: &[u8],
    ) -> Result<(String, String), u16> {
        let resp = self
            .tok(Method::GET, &format!("{base}/public-key"), token, None)
            .await;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(status);
        }
        let v: Value = resp.json().await.unwrap();
        let key: [u8; 32] = STANDARD
            .decode(v["key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let sealed = crypto_box::PublicKey::from(key)
            .seal(&mut OsRng, value)
            .unwrap();
        Ok((
            v["key_id"].as_str().unwrap().to_owned(),
            STANDARD.encode(sealed),
        ))
    }

    /// Seals and PUTs a secret; returns the response.
    pub async fn put_secret(
        &self,
        token: &str,
        owner: &str,
        repo: &str,
        name: &str,
        value: &[u8],
    ) -> Response {
        let (key_id, encrypted_value) = self.seal(token, owner, repo, value).await;
        self.tok(
            Method::PUT,
            &format!("/repos/{owner}/{repo}/actions/secrets/{name}"),
            token,
            Some(json!({"encrypted_value": encrypted_value, "key_id": key_id})),
        )
        .await
    }
}

pub async fn message(resp: Response) -> String {
    let v: Value = resp.json().await.unwrap();
    v["message"].as_str().unwrap_or_default().to_owned()
}

#[allow(unused_imports)] // Not every test binary uses it.
pub use orchestrator_emulator_kit::testing::header;

/// Every GitHub response carries these.
pub fn assert_rate_headers(resp: &Response) {
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-used",
    ] {
        let value = header(resp, name).unwrap_or_else(|| panic!("{name} missing ({})", resp.url()));
        value.parse::<u64>().unwrap();
    }
    assert_eq!(header(resp, "x-ratelimit-resource"), Some("core"));
}
