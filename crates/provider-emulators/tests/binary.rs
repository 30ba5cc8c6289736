//! The `provider-emulators` binary: environment, address file, the three APIs, SIGTERM.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::time::Duration;

use common::client;
use orchestrator_emulator_kit::testing;
use serde_json::{Value, json};

#[tokio::test]
async fn binary_serves_all_three_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("provider-emu-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr_file = dir.join("addr.json");
    let log_file = dir.join("log.txt");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_provider-emulators"))
        .env("PROVIDER_EMULATORS_ADDR_FILE", &addr_file)
        .env("DIGITALOCEAN_EMULATOR_TOKEN", "do-secret-token")
        .env("DIGITALOCEAN_EMULATOR_ACTIVE_AFTER_MS", "10")
        .env("CLOUDFLARE_EMULATOR_TOKEN", "cf-secret-token")
        .env("TIME4VPS_EMULATOR_USER", "t4user")
        .env("TIME4VPS_EMULATOR_PASSWORD", "t4-secret-password")
        .env(
            "TIME4VPS_EMULATOR_SERVERS",
            "101=203.0.113.10,102=203.0.113.11",
        )
        .env("PROVIDER_EMULATORS_FAULTS", "seed=1,rate=0")
        .env("RUST_LOG", "info")
        .env_remove("CLOUDFLARE_EMULATOR_ZONE")
        .stdout(std::fs::File::create(&log_file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let urls = testing::address_file(&addr_file, Duration::from_secs(20)).await;
    let url = |k: &str| urls[k].as_str().unwrap().to_owned();
    for k in ["digitalocean", "cloudflare", "time4vps"] {
        assert!(url(k).starts_with("http://127.0.0.1:"), "{urls}");
    }

    let client = client();
    let resp = client
        .post(format!("{}/v2/droplets", url("digitalocean")))
        .bearer_auth("do-secret-token")
        .json(&json!({"name": "b", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let zones: Value = client
        .get(format!(
            "{}/client/v4/zones?name=orchestrator.test",
            url("cloudflare")
        ))
        .bearer_auth("cf-secret-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(zones["result"][0]["name"], "orchestrator.test");
    let servers: Value = client
        .get(format!("{}/api/server", url("time4vps")))
        .basic_auth("t4user", Some("t4-secret-password"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(servers[1]["ip"], "203.0.113.11");

    let exit = testing::stop_with_sigterm(&mut child).await;
    assert!(exit.success(), "{exit}");

    // One line per request, and no credential in the log.
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("/v2/droplets"), "{log}");
    assert!(log.contains("/api/server"), "{log}");
    for secret in [
        "do-secret-token",
        "cf-secret-token",
        "t4-secret-password",
        "dDR1c2Vy",
    ] {
        assert!(!log.contains(secret), "{secret} logged");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
