//! An installation token's life as on GitHub: long tokens, revocation by the token itself
//! (`DELETE /installation/token`), refusal after revocation or expiry, and installations on
//! selected repositories, through real HTTP.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use common::{APP_ID, Gh, ORG, message};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_revoked_token_is_bad_credentials_from_then_on() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "a");
    let token = gh
        .mint(
            inst,
            json!({"repositories": ["a"], "permissions": {"contents": "read"}}),
        )
        .await;
    let other = gh.mint(inst, json!({"repositories": ["a"]})).await;
    let resp = gh.tok(Method::GET, "/repos/acme/a", &token, None).await;
    assert_eq!(resp.status(), 200);

    let resp = gh
        .tok(Method::DELETE, "/installation/token", &token, None)
        .await;
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());

    // The second use fails, whatever it is; revoking again too.
    let resp = gh.tok(Method::GET, "/repos/acme/a", &token, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(message(resp).await, "Bad credentials");
    let resp = gh
        .tok(Method::DELETE, "/installation/token", &token, None)
        .await;
    assert_eq!(resp.status(), 401);

    // Only that token: another of the same installation still works.
    let resp = gh.tok(Method::GET, "/repos/acme/a", &other, None).await;
    assert_eq!(resp.status(), 200);

    let mints = gh.emu.stats().token_mints;
    assert_eq!(mints.len(), 2);
    assert!(mints[0].revoked && mints[0].token == token);
    assert!(!mints[1].revoked);
    assert_eq!(
        mints[0].granted_permissions,
        [("contents".to_owned(), "read".to_owned())].into()
    );
    // Debug never shows a token.
    assert!(!format!("{mints:?}").contains(&token));
}

#[tokio::test]
async fn only_an_installation_token_revokes_and_only_itself() {
    let gh = Gh::start().await;
    gh.emu.install(ORG);
    let resp = gh
        .call(Method::DELETE, "/installation/token", None, None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(message(resp).await, "Requires authentication");
    let jwt = gh.jwt();
    let resp = gh
        .call(
            Method::DELETE,
            "/installation/token",
            Some(&format!("Bearer {jwt}")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = gh
        .tok(Method::DELETE, "/installation/token", "ghs_unknown", None)
        .await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn an_expired_token_is_bad_credentials_and_tokens_are_long() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "a");
    let token = gh.mint(inst, json!({})).await;
    // GitHub's tokens are growing: nothing may assume 40 characters.
    assert!(
        token.starts_with(&format!("ghs_{APP_ID}_")),
        "{}",
        &token[..8]
    );
    assert!(token.len() > 200, "{}", token.len());
    assert!(!token.contains('.'));
    let resp = gh.tok(Method::GET, "/repos/acme/a", &token, None).await;
    assert_eq!(resp.status(), 200);
    gh.emu.expire_tokens();
    let resp = gh.tok(Method::GET, "/repos/acme/a", &token, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(message(resp).await, "Bad credentials");
}

#[tokio::test]
async fn an_installation_on_selected_repositories_reaches_only_them() {
    let gh = Gh::start().await;
    let inst = gh.emu.install_on_selected(ORG, &["chosen"]);
    gh.emu.create_repository(ORG, "other");
    let jwt = gh.jwt();

    // A token asked for a repository outside the installation is refused, as GitHub does.
    let resp = gh
        .call(
            Method::POST,
            &format!("/app/installations/{inst}/access_tokens"),
            Some(&format!("Bearer {jwt}")),
            Some(json!({"repositories": ["other"]})),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(
        message(resp)
            .await
            .contains("not accessible to the parent installation")
    );

    // A token without a list reaches the selection only, and cannot create repositories.
    let token = gh.mint(inst, json!({})).await;
    let resp = gh
        .tok(Method::GET, "/repos/acme/chosen", &token, None)
        .await;
    assert_eq!(resp.status(), 200);
    let resp = gh.tok(Method::GET, "/repos/acme/other", &token, None).await;
    assert_eq!(resp.status(), 403);
    let resp = gh
        .tok(
            Method::POST,
            "/orgs/acme/repos",
            &token,
            Some(json!({"name": "new"})),
        )
        .await;
    assert_eq!(resp.status(), 403);
    let mints = gh.emu.stats().token_mints;
    assert_eq!(
        mints.last().unwrap().granted_repositories,
        Some(vec!["chosen".to_owned()])
    );
    let resp = gh
        .call(
            Method::GET,
            &format!("/orgs/{ORG}/installation"),
            Some(&format!("Bearer {jwt}")),
            None,
        )
        .await
        .unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["repository_selection"], "selected");
    // The repository's installation: found for a selected one only.
    for (repo, status) in [("chosen", 200), ("other", 404)] {
        let resp = gh
            .call(
                Method::GET,
                &format!("/repos/{ORG}/{repo}/installation"),
                Some(&format!("Bearer {jwt}")),
                None,
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{repo}");
    }
}
