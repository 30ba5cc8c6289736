//! A repository generated from a template, against the GitHub emulator (which copies the
//! template after answering, as GitHub does): files written at once are lost to the copy;
//! written after `wait_for_first_commit`, they update the template's with its `sha`.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::{Duration, Instant};

use orchestrator_github::{AppAuth, GitHub, GitHubError, RepoRef, RetryPolicy};
use orchestrator_github_emulator::testing::{APP_ID, ORG, app_key, trusting_test_app};
use orchestrator_github_emulator::{Config, Emulator};
use secrecy::SecretString;

const DELAY: Duration = Duration::from_millis(400);

async fn setup() -> (Emulator, GitHub, SecretString) {
    let emu = Emulator::start(trusting_test_app(Config {
        template_copy_delay: DELAY,
        ..Config::default()
    }))
    .await
    .unwrap();
    let installation = emu.install(ORG);
    emu.create_template_repository(ORG, "template");
    emu.put_file_directly(ORG, "template", "deploy.yml", b"template\n");
    let app = AppAuth::from_pem(APP_ID, &SecretString::from(app_key().0.clone())).unwrap();
    let github = GitHub::new(&emu.url(), app, RetryPolicy::default()).unwrap();
    let (token, _) = github
        .token(
            installation,
            &[],
            &[("administration", "write"), ("contents", "write")],
        )
        .await
        .unwrap();
    (emu, github, token.token.clone())
}

async fn generate(github: &GitHub, token: &SecretString, name: &str) -> RepoRef {
    let template = RepoRef::new(ORG, "template").unwrap();
    github
        .generate_repository(token, &template, ORG, name, "d", true)
        .await
        .unwrap();
    RepoRef::new(ORG, name).unwrap()
}

#[tokio::test]
async fn files_are_written_after_the_template_copy_landed_and_stay() {
    let (emu, github, token) = setup().await;

    // Written at once: the copy lands afterwards and replaces it (the hazard).
    let early = generate(&github, &token, "early").await;
    assert!(
        github
            .put_file(&token, &early, "deploy.yml", b"ours\n", "m")
            .await
            .unwrap()
    );
    tokio::time::sleep(DELAY * 2).await;
    assert_eq!(emu.file(ORG, "early", "deploy.yml").unwrap(), b"template\n");

    // Waited for: the first commit is the copy, and ours updates the template's file.
    let started = Instant::now();
    let repo = generate(&github, &token, "waited").await;
    assert_eq!(github.head_commit(&token, &repo).await.unwrap(), None);
    let first = github
        .wait_for_first_commit(&token, &repo, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(started.elapsed() >= DELAY);
    assert_eq!(first.len(), 40);
    assert!(
        github
            .put_file(&token, &repo, "deploy.yml", b"ours\n", "m")
            .await
            .unwrap()
    );
    tokio::time::sleep(DELAY * 2).await;
    assert_eq!(emu.file(ORG, "waited", "deploy.yml").unwrap(), b"ours\n");
}

#[tokio::test]
async fn a_repository_that_stays_empty_is_unavailable_after_the_limit() {
    let (emu, github, token) = setup().await;
    emu.create_repository(ORG, "empty");
    let repo = RepoRef::new(ORG, "empty").unwrap();
    let started = Instant::now();
    let err = github
        .wait_for_first_commit(&token, &repo, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, GitHubError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
