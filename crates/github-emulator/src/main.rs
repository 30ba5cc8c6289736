//! `github-emulator`: the emulator as a process, for `orchctl up` and manual runs.
//!
//! Environment: `GITHUB_EMULATOR_ADDR` (default `127.0.0.1:0`), `GITHUB_EMULATOR_APP_ID`
//! (default 1), `GITHUB_EMULATOR_APP_PUBLIC_KEY_FILE` (required; a public or private RSA key
//! PEM), `GITHUB_EMULATOR_ORG` (installs the App on that organization),
//! `GITHUB_EMULATOR_ADDR_FILE` (receives `{"url": "http://..."}` once listening),
//! `GITHUB_EMULATOR_PUBLIC_URL` (the base URL written into answers when it listens on a wildcard
//! address, as in a container: `http://github-emulator:8080`). Logs one line
//! per request, never a token or a value. Exits on SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context as _;
use orchestrator_emulator_kit::process::{env, init_logging, stop_requested, write_address_file};
use orchestrator_github_emulator::{Config, Emulator};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();

    let addr: SocketAddr = env("GITHUB_EMULATOR_ADDR")
        .as_deref()
        .unwrap_or("127.0.0.1:0")
        .parse()
        .context("GITHUB_EMULATOR_ADDR")?;
    let app_id: u64 = env("GITHUB_EMULATOR_APP_ID")
        .as_deref()
        .unwrap_or("1")
        .parse()
        .context("GITHUB_EMULATOR_APP_ID")?;
    let key_file = env("GITHUB_EMULATOR_APP_PUBLIC_KEY_FILE")
        .context("GITHUB_EMULATOR_APP_PUBLIC_KEY_FILE must name the App's key PEM")?;
    let app_public_key_pem =
        std::fs::read_to_string(&key_file).with_context(|| format!("reading {key_file}"))?;

    let emulator = Emulator::start_on(
        addr,
        Config {
            app_id,
            app_public_key_pem,
            public_url: env("GITHUB_EMULATOR_PUBLIC_URL"),
            ..Config::default()
        },
    )
    .await?;
    if let Some(org) = env("GITHUB_EMULATOR_ORG") {
        let id = emulator.install(&org);
        tracing::info!(org, installation_id = id, "App installed");
    }
    let url = emulator.url();
    if let Some(path) = env("GITHUB_EMULATOR_ADDR_FILE") {
        write_address_file(&path, &serde_json::json!({ "url": url }).to_string())?;
    }
    tracing::info!(%url, app_id, "github-emulator listening");
    stop_requested().await?;
    tracing::info!("github-emulator stopping");
    emulator.shutdown();
    Ok(())
}
