//! `github-emulator`: the emulator as a process, for `orchctl up` and manual runs.
//!
//! Environment: `GITHUB_EMULATOR_ADDR` (default `127.0.0.1:0`), `GITHUB_EMULATOR_APP_ID`
//! (default 1), `GITHUB_EMULATOR_APP_PUBLIC_KEY_FILE` (required; a public or private RSA key
//! PEM), `GITHUB_EMULATOR_ORG` (installs the App on that organization),
//! `GITHUB_EMULATOR_ADDR_FILE` (receives `{"url": "http://..."}` once listening). Logs one line
//! per request, never a token or a value. Exits on SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context as _;
use orchestrator_github_emulator::{Config, Emulator};
use tracing_subscriber::EnvFilter;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

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
        // Write then rename, so a reader never sees half a file.
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, serde_json::json!({ "url": url }).to_string())
            .with_context(|| format!("writing {tmp}"))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {path}"))?;
    }
    tracing::info!(%url, app_id, "github-emulator listening");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("github-emulator stopping");
    emulator.shutdown();
    Ok(())
}
