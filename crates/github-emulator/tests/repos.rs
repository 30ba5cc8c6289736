//! Repositories and contents: creation, templates, files, the workflows permission.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::time::Duration;

use common::{Gh, ORG, message};
use orchestrator_github_emulator::Config;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn create_and_get_repositories() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    let admin = gh
        .mint(
            inst,
            json!({"permissions": {"administration": "write", "contents": "write"}}),
        )
        .await;

    let resp = gh
        .tok(
            Method::POST,
            "/orgs/acme/repos",
            &admin,
            Some(json!({"name": "bot-1", "description": "a bot", "private": true})),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["name"], "bot-1");
    assert_eq!(v["full_name"], "acme/bot-1");
    assert_eq!(v["owner"]["login"], "acme");
    assert_eq!(v["private"], true);
    assert_eq!(v["default_branch"], "main");
    assert!(v["id"].as_u64().unwrap() > 0);
    assert!(v["html_url"].as_str().unwrap().ends_with("/acme/bot-1"));

    // Duplicate, case-insensitively.
    let resp = gh
        .tok(
            Method::POST,
            "/orgs/acme/repos",
            &admin,
            Some(json!({"name": "BOT-1"})),
        )
        .await;
    assert_eq!(resp.status(), 422);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["errors"][0]["message"],
        "name already exists on this account"
    );

    // GET: 200 / 404.
    let resp = gh.tok(Method::GET, "/repos/acme/Bot-1", &admin, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        gh.tok(Method::GET, "/repos/acme/nope", &admin, None)
            .await
            .status(),
        404
    );

    // Without administration: 403; in another organization: 403.
    let contents = gh
        .mint(inst, json!({"permissions": {"contents": "write"}}))
        .await;
    let resp = gh
        .tok(
            Method::POST,
            "/orgs/acme/repos",
            &contents,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(resp.status(), 403);
    let resp = gh
        .tok(
            Method::POST,
            "/orgs/other/repos",
            &admin,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(resp.status(), 403);
    // Missing name.
    let resp = gh
        .tok(Method::POST, "/orgs/acme/repos", &admin, Some(json!({})))
        .await;
    assert_eq!(resp.status(), 422);
}

#[tokio::test]
async fn generate_from_template_copies_files_after_answering() {
    let gh = Gh::with(Config {
        template_copy_delay: Duration::from_millis(300),
        ..common::config()
    })
    .await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_template_repository(ORG, "template");
    gh.emu
        .put_file_directly(ORG, "template", "README.md", b"# template\n");
    gh.emu
        .put_file_directly(ORG, "template", ".github/workflows/ci.yml", b"on: push\n");
    gh.emu.create_repository(ORG, "plain");
    let token = gh
        .mint(
            inst,
            json!({"permissions": {"administration": "write", "contents": "read"}}),
        )
        .await;

    let resp = gh
        .tok(
            Method::POST,
            "/repos/acme/template/generate",
            &token,
            Some(json!({"owner": "acme", "name": "bot", "private": true})),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["full_name"], "acme/bot");
    assert_eq!(v["template_repository"]["full_name"], "acme/template");
    // GitHub copies the files after answering: until then the repository is empty.
    assert_eq!(gh.emu.file(ORG, "bot", "README.md"), None);
    let commits = "/repos/acme/bot/commits?per_page=1";
    let resp = gh.tok(Method::GET, commits, &token, None).await;
    assert_eq!(resp.status(), 409);
    assert_eq!(message(resp).await, "Git Repository is empty.");
    let resp = gh
        .tok(
            Method::GET,
            "/repos/acme/bot/contents/README.md",
            &token,
            None,
        )
        .await;
    assert_eq!(resp.status(), 404);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = gh.tok(Method::GET, commits, &token, None).await;
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["sha"].as_str().unwrap().len(), 40);
    assert_eq!(
        gh.emu.file(ORG, "bot", "README.md").unwrap(),
        b"# template\n"
    );
    assert_eq!(
        gh.emu.file(ORG, "bot", ".github/workflows/ci.yml").unwrap(),
        b"on: push\n"
    );

    // Again: the name is taken. A plain repository is not a template.
    let body = json!({"owner": "acme", "name": "bot"});
    let resp = gh
        .tok(
            Method::POST,
            "/repos/acme/template/generate",
            &token,
            Some(body.clone()),
        )
        .await;
    assert_eq!(resp.status(), 422);
    let resp = gh
        .tok(
            Method::POST,
            "/repos/acme/plain/generate",
            &token,
            Some(json!({"owner": "acme", "name": "b2"})),
        )
        .await;
    assert_eq!(resp.status(), 422);
    let resp = gh
        .tok(
            Method::POST,
            "/repos/acme/missing/generate",
            &token,
            Some(body),
        )
        .await;
    assert_eq!(resp.status(), 404);

    // An empty template is refused: there is nothing to generate from.
    gh.emu.create_template_repository(ORG, "empty-template");
    let resp = gh
        .tok(
            Method::POST,
            "/repos/acme/empty-template/generate",
            &token,
            Some(json!({"owner": "acme", "name": "b3"})),
        )
        .await;
    assert_eq!(resp.status(), 422);
    assert!(message(resp).await.contains("empty"));
}

/// The template's copy is the branch's first commit and replaces what was written before it
/// landed: a client that writes into a generated repository at once loses its files.
#[tokio::test]
async fn a_file_written_before_the_template_copy_lands_is_replaced() {
    let gh = Gh::with(Config {
        template_copy_delay: Duration::from_millis(300),
        ..common::config()
    })
    .await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_template_repository(ORG, "template");
    gh.emu
        .put_file_directly(ORG, "template", "deploy.yml", b"template\n");
    let token = gh
        .mint(
            inst,
            json!({"permissions": {"administration": "write", "contents": "write"}}),
        )
        .await;
    let resp = gh
        .tok(
            Method::POST,
            "/repos/acme/template/generate",
            &token,
            Some(json!({"owner": "acme", "name": "early"})),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let resp = gh
        .tok(
            Method::PUT,
            "/repos/acme/early/contents/deploy.yml",
            &token,
            Some(json!({"message": "ours", "content": STANDARD.encode(b"ours\n")})),
        )
        .await;
    assert_eq!(resp.status(), 201);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gh.emu.file(ORG, "early", "deploy.yml").unwrap(),
        b"template\n"
    );
}

/// GitHub normalizes a requested name: characters outside letters, digits, `.`, `-`, `_`
/// become `-`, a `.git` suffix is dropped; the answer carries the name it got.
#[tokio::test]
async fn repository_names_are_normalized_as_github_does() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    let token = gh
        .mint(inst, json!({"permissions": {"administration": "write"}}))
        .await;
    for (asked, got) in [
        ("my bot", "my-bot"),
        ("bot@home!", "bot-home-"),
        ("tool.git", "tool"),
        ("ok_name.v2", "ok_name.v2"),
    ] {
        let resp = gh
            .tok(
                Method::POST,
                "/orgs/acme/repos",
                &token,
                Some(json!({"name": asked})),
            )
            .await;
        assert_eq!(resp.status(), 201, "{asked}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["name"], got, "{asked}");
        assert_eq!(v["full_name"], format!("acme/{got}"));
    }
}

#[tokio::test]
async fn contents_put_get_and_sha_rules() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "app");
    let token = gh
        .mint(inst, json!({"permissions": {"contents": "write"}}))
        .await;
    let path = "/repos/acme/app/contents/src/main.rs";

    // Empty repository.
    let resp = gh.tok(Method::GET, path, &token, None).await;
    assert_eq!(resp.status(), 404);

    let put = |body: Value| {
        let gh = &gh;
        let token = token.clone();
        async move { gh.tok(Method::PUT, path, &token, Some(body)).await }
    };
    let resp = put(json!({"message": "add", "content": STANDARD.encode("fn main() {}\n")})).await;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    let sha = v["content"]["sha"].as_str().unwrap().to_owned();
    assert_eq!(sha.len(), 40);
    assert_eq!(v["content"]["path"], "src/main.rs");
    assert_eq!(
        gh.emu.file(ORG, "app", "src/main.rs").unwrap(),
        b"fn main() {}\n"
    );

    // Update rules: sha required, must match.
    let new = STANDARD.encode("fn main() { run() }\n");
    let resp = put(json!({"message": "m", "content": new})).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        message(resp).await,
        "Invalid request.\n\n\"sha\" wasn't supplied."
    );
    let resp = put(json!({"message": "m", "content": new, "sha": "0".repeat(40)})).await;
    assert_eq!(resp.status(), 409);
    let resp = put(json!({"message": "m", "content": new, "sha": sha, "branch": "main"})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        gh.emu.file(ORG, "app", "src/main.rs").unwrap(),
        b"fn main() { run() }\n"
    );
    // Missing message / bad base64.
    assert_eq!(put(json!({"content": new})).await.status(), 422);
    assert_eq!(
        put(json!({"message": "m", "content": "***"}))
            .await
            .status(),
        422
    );

    // GET a file and a directory.
    let resp = gh.tok(Method::GET, path, &token, None).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["encoding"], "base64");
    let content: String = v["content"].as_str().unwrap().split_whitespace().collect();
    assert_eq!(STANDARD.decode(content).unwrap(), b"fn main() { run() }\n");
    let resp = gh
        .tok(Method::GET, "/repos/acme/app/contents/src", &token, None)
        .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v[0]["name"], "main.rs");
    let resp = gh
        .tok(Method::GET, "/repos/acme/app/contents", &token, None)
        .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v[0]["type"], "dir");
    let resp = gh
        .tok(
            Method::GET,
            "/repos/acme/app/contents/nope.txt",
            &token,
            None,
        )
        .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn workflow_files_need_the_workflows_permission() {
    let gh = Gh::start().await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "app");
    let body = json!({"message": "ci", "content": STANDARD.encode("on: push\n")});
    let path = "/repos/acme/app/contents/.github/workflows/deploy.yml";

    let contents_only = gh
        .mint(inst, json!({"permissions": {"contents": "write"}}))
        .await;
    let resp = gh
        .tok(Method::PUT, path, &contents_only, Some(body.clone()))
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        message(resp).await,
        "refusing to allow a GitHub App to create or update workflow `.github/workflows/deploy.yml` without `workflows` permission"
    );
    assert!(
        gh.emu
            .file(ORG, "app", ".github/workflows/deploy.yml")
            .is_none()
    );

    let with_workflows = gh
        .mint(
            inst,
            json!({"permissions": {"contents": "write", "workflows": "write"}}),
        )
        .await;
    let resp = gh.tok(Method::PUT, path, &with_workflows, Some(body)).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        gh.emu
            .file(ORG, "app", ".github/workflows/deploy.yml")
            .unwrap(),
        b"on: push\n"
    );
}
