//! Secrets beside a repository's Actions secrets: a deployment environment's, Dependabot's and an
//! organization's, each with its own key pair and permission, and GitHub's rules for each.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use common::{Gh, ORG};
use reqwest::Method;
use serde_json::{Value, json};

/// Seals `value` for the public key at `base` (`.../secrets`): the PUT body, or the status
/// the key's GET answered.
async fn seal(gh: &Gh, token: &str, base: &str, value: &[u8]) -> (u16, Option<Value>) {
    match gh.seal_at(token, base, value).await {
        Ok((key_id, sealed)) => (
            200,
            Some(json!({"encrypted_value": sealed, "key_id": key_id})),
        ),
        Err(status) => (status, None),
    }
}

async fn put(gh: &Gh, token: &str, base: &str, name: &str, body: Value) -> u16 {
    gh.tok(Method::PUT, &format!("{base}/{name}"), token, Some(body))
        .await
        .status()
        .as_u16()
}

async fn token(gh: &Gh, installation: u64, permissions: Value) -> String {
    gh.mint(
        installation,
        json!({"repositories": ["app"], "permissions": permissions}),
    )
    .await
}

#[tokio::test]
async fn an_environment_exists_once_created_with_administration_and_has_its_own_key() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "app");
    let base = "/repos/acme/app/environments/Production/secrets";
    let writer = token(
        &gh,
        inst,
        json!({"environments": "write", "secrets": "write"}),
    )
    .await;

    // No environment yet: 404.
    assert_eq!(seal(&gh, &writer, base, b"v").await.0, 404);
    // Creating one needs administration.
    let env_path = "/repos/acme/app/environments/Production";
    let resp = gh
        .tok(Method::PUT, env_path, &writer, Some(json!({})))
        .await;
    assert_eq!(resp.status(), 403);
    let admin = token(&gh, inst, json!({"administration": "write"})).await;
    let resp = gh.tok(Method::PUT, env_path, &admin, Some(json!({}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(gh.emu.environments(ORG, "app"), ["Production"]);
    let long = format!("/repos/acme/app/environments/{}", "e".repeat(256));
    assert_eq!(
        gh.tok(Method::PUT, &long, &admin, Some(json!({})))
            .await
            .status(),
        422
    );

    // Its secrets need both environments and secrets.
    let secrets_only = token(&gh, inst, json!({"secrets": "write"})).await;
    assert_eq!(seal(&gh, &secrets_only, base, b"v").await.0, 403);
    let envs_only = token(&gh, inst, json!({"environments": "write"})).await;
    assert_eq!(seal(&gh, &envs_only, base, b"v").await.0, 403);
    let (status, body) = seal(&gh, &writer, base, b"production value").await;
    assert_eq!(status, 200);
    // Names of environments ignore case.
    let lower = "/repos/acme/app/environments/production/secrets";
    assert_eq!(
        put(&gh, &writer, lower, "api_key", body.unwrap()).await,
        201
    );
    assert_eq!(
        gh.emu
            .environment_secret(ORG, "app", "PRODUCTION", "API_KEY")
            .unwrap(),
        b"production value"
    );
    assert_eq!(gh.emu.secret(ORG, "app", "API_KEY"), None);

    // A value sealed for the repository's key does not open with the environment's.
    let (_, repo_sealed) = seal(&gh, &writer, "/repos/acme/app/actions/secrets", b"x").await;
    let mut body = repo_sealed.unwrap();
    let (_, env_body) = seal(&gh, &writer, base, b"x").await;
    body["key_id"] = env_body.unwrap()["key_id"].clone();
    assert_eq!(put(&gh, &writer, base, "OTHER", body).await, 422);

    // Listed with their times, deleted with the same permissions.
    let listed: Value = gh
        .tok(Method::GET, base, &writer, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total_count"], 1);
    let resp = gh
        .tok(
            Method::DELETE,
            &format!("{base}/API_KEY"),
            &secrets_only,
            None,
        )
        .await;
    assert_eq!(resp.status(), 403);
    let resp = gh
        .tok(Method::DELETE, &format!("{base}/API_KEY"), &writer, None)
        .await;
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn dependabot_secrets_need_their_own_permission() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "app");
    let base = "/repos/acme/app/dependabot/secrets";
    let actions = token(&gh, inst, json!({"secrets": "write"})).await;
    assert_eq!(seal(&gh, &actions, base, b"v").await.0, 403);
    let bot = token(&gh, inst, json!({"dependabot_secrets": "write"})).await;
    let (_, body) = seal(&gh, &bot, base, b"npm").await;
    assert_eq!(put(&gh, &bot, base, "NPM_TOKEN", body.unwrap()).await, 201);
    assert_eq!(
        gh.emu.dependabot_secret(ORG, "app", "NPM_TOKEN").unwrap(),
        b"npm"
    );
    assert_eq!(gh.emu.secret(ORG, "app", "NPM_TOKEN"), None);
    // The Actions secrets' key is another one.
    let (_, repo_body) = seal(&gh, &actions, "/repos/acme/app/actions/secrets", b"x").await;
    assert_eq!(put(&gh, &bot, base, "X", repo_body.unwrap()).await, 422);
}

#[tokio::test]
async fn organization_secrets_need_the_organizations_own_token_and_a_visibility() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "app");
    gh.emu.create_repository(ORG, "other");
    let elsewhere = gh.emu.install("someone-else");
    gh.emu.create_repository("someone-else", "theirs");
    let base = "/orgs/acme/actions/secrets";
    let org_secrets = json!({"permissions": {"organization_secrets": "write"}});
    let without = gh
        .mint(inst, json!({"permissions": {"secrets": "write"}}))
        .await;
    assert_eq!(seal(&gh, &without, base, b"v").await.0, 403);
    let foreign = gh.mint(elsewhere, org_secrets.clone()).await;
    assert_eq!(
        seal(&gh, &foreign, base, b"v").await.0,
        403,
        "another organization's token"
    );

    let ours = gh.mint(inst, org_secrets).await;
    let (_, body) = seal(&gh, &ours, base, b"shared").await;
    let body = body.unwrap();
    // `visibility` is required, and repository ids go with `selected` only, of the organization.
    assert_eq!(put(&gh, &ours, base, "SHARED", body.clone()).await, 422);
    let app = gh.emu.repository_id(ORG, "app").unwrap();
    let theirs = gh.emu.repository_id("someone-else", "theirs").unwrap();
    let with = |extra: Value| {
        let mut b = body.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for refused in [
        json!({"visibility": "everyone"}),
        json!({"visibility": "all", "selected_repository_ids": [app]}),
        json!({"visibility": "selected", "selected_repository_ids": [app, theirs]}),
    ] {
        let status = put(&gh, &ours, base, "SHARED", with(refused.clone())).await;
        assert_eq!(status, 422, "{refused}");
    }
    assert_eq!(gh.emu.org_secret(ORG, "SHARED"), None, "nothing stored");
    assert_eq!(
        put(
            &gh,
            &ours,
            base,
            "SHARED",
            with(json!({"visibility": "selected", "selected_repository_ids": [app]}))
        )
        .await,
        201
    );
    assert_eq!(
        gh.emu.org_secret(ORG, "shared").unwrap(),
        (b"shared".to_vec(), "selected".to_owned(), vec![app])
    );
    let one: Value = gh
        .tok(Method::GET, &format!("{base}/SHARED"), &ours, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["visibility"], "selected");
}
