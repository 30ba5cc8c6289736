//! The `github-emulator` binary: environment, address file, App installed, SIGTERM.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::time::{Duration, Instant};

use common::{APP_ID, app_key};
use serde_json::Value;

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("gh-emu-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("app.pem");
    std::fs::write(&key_file, &app_key().1).unwrap();
    let addr_file = dir.join("addr.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_github-emulator"))
        .env("GITHUB_EMULATOR_APP_ID", APP_ID.to_string())
        .env("GITHUB_EMULATOR_APP_PUBLIC_KEY_FILE", &key_file)
        .env("GITHUB_EMULATOR_ORG", "acme")
        .env("GITHUB_EMULATOR_ADDR_FILE", &addr_file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            let v: Value = serde_json::from_str(&text).unwrap();
            break v["url"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no address file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(url.starts_with("http://127.0.0.1:"));

    let jwt = orchestrator_github_emulator::app_jwt(&app_key().0, APP_ID).unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{url}/orgs/acme/installation"))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    let _ = std::fs::remove_dir_all(&dir);
}
