//! App JWT rules and installation-token narrowing, through real HTTP.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use common::{APP_ID, Gh, ORG, app_key, assert_rate_headers, config, message};
use orchestrator_github_emulator::{Config, Emulator, TokenMint, generate_app_key, sign_jwt};
use reqwest::Method;
use rsa::pkcs1::EncodeRsaPublicKey as _;
use rsa::pkcs8::{DecodePublicKey as _, LineEnding};
use serde_json::{Value, json};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn org_installation(gh: &Gh, jwt: &str) -> reqwest::Response {
    gh.call(
        Method::GET,
        &format!("/orgs/{ORG}/installation"),
        Some(&format!("Bearer {jwt}")),
        None,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn jwt_accepted_and_installation_found() {
    let gh = Gh::start().await;
    let id = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "app");

    let resp = org_installation(&gh, &gh.jwt()).await;
    assert_eq!(resp.status(), 200);
    assert_rate_headers(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["id"], id);
    assert_eq!(v["account"]["login"], ORG);

    let jwt = gh.jwt();
    let resp = gh
        .call(
            Method::GET,
            "/repos/ACME/App/installation",
            Some(&format!("Bearer {jwt}")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "names are case-insensitive");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["id"], id);

    // Not installed / no such repository.
    for path in ["/orgs/other/installation", "/repos/acme/nope/installation"] {
        let resp = gh
            .call(Method::GET, path, Some(&format!("Bearer {jwt}")), None)
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }

    // `iss` as a string is accepted too.
    let t = now();
    let jwt = sign_jwt(
        &app_key().0,
        &json!({"iat": t - 60, "exp": t + 500, "iss": APP_ID.to_string()}),
    )
    .unwrap();
    assert_eq!(org_installation(&gh, &jwt).await.status(), 200);
}

#[tokio::test]
async fn jwt_refusals_are_401_with_githubs_messages() {
    let gh = Gh::start().await;
    gh.emu.install(ORG);
    let t = now();
    let private = &app_key().0;
    let (other_private, _) = generate_app_key();

    let cases: Vec<(String, &str)> = vec![
        (
            sign_jwt(
                &other_private,
                &json!({"iat": t - 60, "exp": t + 500, "iss": APP_ID}),
            )
            .unwrap(),
            "A JSON web token could not be decoded",
        ),
        (
            sign_jwt(
                private,
                &json!({"iat": t - 700, "exp": t - 100, "iss": APP_ID}),
            )
            .unwrap(),
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        ),
        (
            sign_jwt(
                private,
                &json!({"iat": t - 60, "exp": t + 600, "iss": APP_ID}),
            )
            .unwrap(),
            "'Expiration time' claim ('exp') is too far in the future",
        ),
        (
            sign_jwt(
                private,
                &json!({"iat": t + 120, "exp": t + 300, "iss": APP_ID}),
            )
            .unwrap(),
            "'Issued at' claim ('iat') must be an Integer representing a time in the past",
        ),
        (
            sign_jwt(
                private,
                &json!({"iat": t - 60, "exp": t + 300, "iss": "my-app"}),
            )
            .unwrap(),
            "'Issuer' claim ('iss') must be an Integer",
        ),
        (
            sign_jwt(
                private,
                &json!({"iat": t - 60, "exp": t + 300, "iss": APP_ID + 1}),
            )
            .unwrap(),
            "Integration not found",
        ),
        (
            "not.a.jwt".to_owned(),
            "A JSON web token could not be decoded",
        ),
    ];
    for (jwt, expected) in cases {
        let resp = org_installation(&gh, &jwt).await;
        assert_eq!(resp.status(), 401, "{expected}");
        assert_rate_headers(&resp);
        assert_eq!(message(resp).await, expected);
    }

    // An installation token is not a JWT.
    let token = gh.mint(gh.emu.install(ORG), json!({})).await;
    let resp = org_installation(&gh, &token).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(message(resp).await, "A JSON web token could not be decoded");
}

#[tokio::test]
async fn pkcs1_public_key_and_private_key_pems_are_accepted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let spki = &app_key().1;
    let pkcs1 = rsa::RsaPublicKey::from_public_key_pem(spki)
        .unwrap()
        .to_pkcs1_pem(LineEnding::LF)
        .unwrap();
    for pem in [pkcs1, app_key().0.clone()] {
        let gh = Gh::with(Config {
            app_public_key_pem: pem,
            ..config()
        })
        .await;
        gh.emu.install(ORG);
        assert_eq!(org_installation(&gh, &gh.jwt()).await.status(), 200);
    }
    let err = Emulator::start(Config::default()).await.unwrap_err();
    assert!(format!("{err:#}").contains("no App public key"), "{err:#}");
}

#[tokio::test]
async fn tokens_are_narrowed_and_enforced() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "a");
    gh.emu.create_repository(ORG, "b");

    let secrets_a = gh
        .mint(
            inst,
            json!({"repositories": ["a"], "permissions": {"secrets": "write"}}),
        )
        .await;
    assert!(secrets_a.starts_with("ghs_") && secrets_a.len() > 200);
    // Allowed: secrets on a.
    assert_eq!(
        gh.put_secret(&secrets_a, ORG, "a", "TOKEN", b"v")
            .await
            .status(),
        201
    );
    // Repository b is outside the token.
    let resp = gh
        .tok(
            Method::GET,
            "/repos/acme/b/actions/secrets/public-key",
            &secrets_a,
            None,
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        message(resp).await,
        "Resource not accessible by integration"
    );
    // Contents are outside its permissions.
    let resp = gh
        .tok(
            Method::PUT,
            "/repos/acme/a/contents/README.md",
            &secrets_a,
            Some(json!({"message": "m", "content": "aGk="})),
        )
        .await;
    assert_eq!(resp.status(), 403);
    let resp = gh
        .tok(
            Method::GET,
            "/repos/acme/a/contents/README.md",
            &secrets_a,
            None,
        )
        .await;
    assert_eq!(resp.status(), 403);

    // contents:read cannot write contents nor touch secrets.
    let read = gh
        .mint(inst, json!({"permissions": {"contents": "read"}}))
        .await;
    gh.emu.put_file_directly(ORG, "b", "README.md", b"hello");
    let resp = gh
        .tok(Method::GET, "/repos/acme/b/contents/README.md", &read, None)
        .await;
    assert_eq!(resp.status(), 200);
    let resp = gh
        .tok(
            Method::PUT,
            "/repos/acme/b/contents/new.txt",
            &read,
            Some(json!({"message": "m", "content": "aGk="})),
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        message(resp).await,
        "Resource not accessible by integration"
    );
    let resp = gh.put_secret_raw(&read, "b").await;
    assert_eq!(resp.status(), 403);
    let resp = gh
        .tok(Method::GET, "/repos/acme/b/actions/secrets", &read, None)
        .await;
    assert_eq!(resp.status(), 403);

    // Another organization's repository is outside any token of this installation.
    gh.emu.create_repository("other", "x");
    let all = gh.mint(inst, json!({})).await;
    let resp = gh.tok(Method::GET, "/repos/other/x", &all, None).await;
    assert_eq!(resp.status(), 403);
    let resp = gh.tok(Method::GET, "/repos/acme/missing", &all, None).await;
    assert_eq!(resp.status(), 404);

    let mints = gh.emu.stats().token_mints;
    assert_eq!(mints.len(), 3);
    assert_eq!(
        mints[0],
        TokenMint {
            token: mints[0].token.clone(),
            installation_id: inst,
            repositories: vec!["a".to_owned()],
            permissions: [("secrets".to_owned(), "write".to_owned())].into(),
            granted_permissions: [("secrets".to_owned(), "write".to_owned())].into(),
            granted_repositories: Some(vec!["a".to_owned()]),
            revoked: false,
        }
    );
}

impl Gh {
    async fn put_secret_raw(&self, token: &str, repo: &str) -> reqwest::Response {
        self.tok(
            Method::PUT,
            &format!("/repos/acme/{repo}/actions/secrets/X"),
            token,
            Some(json!({"encrypted_value": "AAAA", "key_id": "1"})),
        )
        .await
    }
}

#[tokio::test]
async fn narrowing_cannot_widen_and_tokens_expire() {
    let gh = Gh::start().await;
    let inst = gh
        .emu
        .install_with_permissions(ORG, &[("contents", "read"), ("secrets", "write")]);
    gh.emu.create_repository(ORG, "a");
    let jwt = gh.jwt();
    let mint = |body: Value| {
        let jwt = jwt.clone();
        let gh = &gh;
        async move {
            gh.call(
                Method::POST,
                &format!("/app/installations/{inst}/access_tokens"),
                Some(&format!("Bearer {jwt}")),
                Some(body),
            )
            .await
            .unwrap()
        }
    };
    let resp = mint(json!({"permissions": {"contents": "write"}})).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        message(resp).await,
        "The permissions requested are not granted to this installation."
    );
    assert_eq!(
        mint(json!({"permissions": {"administration": "write"}}))
            .await
            .status(),
        422
    );
    assert_eq!(mint(json!({"repositories": ["nope"]})).await.status(), 422);
    assert_eq!(mint(json!({"repository_ids": [1]})).await.status(), 422);
    let resp = gh
        .call(
            Method::POST,
            "/app/installations/999/access_tokens",
            Some(&format!("Bearer {jwt}")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // A full answer.
    let resp = mint(json!({"repositories": ["a"], "permissions": {"secrets": "write"}})).await;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["permissions"], json!({"secrets": "write"}));
    assert_eq!(v["repositories"][0]["full_name"], "acme/a");
    let expires = time::OffsetDateTime::parse(
        v["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ttl = expires - time::OffsetDateTime::now_utc();
    assert!(
        ttl > time::Duration::minutes(59) && ttl <= time::Duration::hours(1),
        "{ttl}"
    );

    // Unknown and expired tokens are bad credentials; `token x` works like `Bearer x`.
    let token = v["token"].as_str().unwrap().to_owned();
    let resp = gh
        .call(
            Method::GET,
            "/repos/acme/a/actions/secrets/public-key",
            Some(&format!("token {token}")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gh
        .tok(Method::GET, "/repos/acme/a", "ghs_unknown", None)
        .await;
    assert_eq!(resp.status(), 401);
    assert_rate_headers(&resp);
    assert_eq!(message(resp).await, "Bad credentials");
    gh.emu.expire_tokens();
    let resp = gh.tok(Method::GET, "/repos/acme/a", &token, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(message(resp).await, "Bad credentials");
}
