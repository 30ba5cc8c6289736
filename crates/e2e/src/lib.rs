//! Test harness for cross-process tests: the real service binaries started as child processes
//! on port 0, with real mTLS, and clients that present any identity (or a hostile certificate).
//! Nothing here mocks our own code: every call crosses a process boundary.
//!
//! - `mesh`: [`TestMesh`], what most tests run against: PKI, database, emulators, the services
//!   in dependency order with their peers wired, typed clients. `dba` adds the database as a
//!   DBA sees it.
//! - `launch`: one service process, [`Launch`] (its environment, from `orchestrator-devenv`, as
//!   `orchctl up` builds it) and [`Proc`] (the running process, its logs, a crash).
//! - `pki`: a throwaway [`Pki`] and channels presenting any of its certificates.
//! - `providers`: the provider emulators of a mesh and the credentials they accept.
//! - `raw`: any RPC as bytes, a bare TLS handshake, a minimal HTTP client.
//! - `otlp`: an in-process OTLP trace receiver, [`OtlpReceiver`], for the services' exported spans.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use orchestrator_mesh::Identity;

mod dba;
mod launch;
mod mesh;
mod operations;
mod otlp;
mod pki;
mod providers;
pub mod raw;

pub use launch::{Launch, Proc};
pub use mesh::{MeshBuilder, TestMesh};
pub use operations::{droplet_provision, watch_operation};
pub use orchestrator_devenv::{Secret, StateDir, VAULT_KEY_ID, random_key};
pub use orchestrator_github_emulator::testing::{APP_ID, ORG, app_key};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use pki::{Pki, channel, channel_with};
pub use providers::{
    CF_TOKEN, DNS_ZONE, DO_TOKEN, ProviderEmulators, ProviderSetup, T4_PASSWORD, T4_SERVER,
    T4_USER, USERS_OWN_CF_TOKEN, USERS_OWN_DO_TOKEN,
};

pub const TRUST_DOMAIN: &str = "orchestrator.local";

/// The repository root (for `config/policy.toml` and friends).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A built binary of the workspace: next to the running executable (a benchmark in
/// `target/release`) or next to its `deps/` folder (a test).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [dir.join(name), dir.parent().unwrap_or(dir).join(name)];
    let found = candidates.iter().find(|p| p.exists()).cloned();
    found.unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: build the binaries first \
             (`cargo build --workspace --bins`, as scripts/test does)",
            exe.display()
        )
    })
}

/// `orchctl up` as a user runs it, on free ports, with its state in `state_dir`, the binaries
/// already built and the repository's policy; its stdout (the address table) piped, and killed
/// when dropped.
pub fn orchctl_up(state_dir: &Path) -> std::io::Result<tokio::process::Child> {
    let orchctl = bin("orchctl");
    let bin_dir = orchctl.parent().map(Path::to_owned).unwrap_or_default();
    tokio::process::Command::new(&orchctl)
        .args(["up", "--no-build", "--port", "0", "--admin-port", "0"])
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--policy")
        .arg(repo_root().join("config/policy.toml"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// `spiffe://orchestrator.local/<name>`.
pub fn identity(name: &str) -> Identity {
    format!("spiffe://{TRUST_DOMAIN}/{name}")
        .parse()
        .expect("valid identity")
}

/// A GitHub emulator that trusts the tests' App, installed on `org`.
pub async fn github_emulator(
    org: &str,
    config: orchestrator_github_emulator::Config,
) -> anyhow::Result<orchestrator_github_emulator::Emulator> {
    let config = orchestrator_github_emulator::testing::trusting_test_app(config);
    let emulator = orchestrator_github_emulator::Emulator::start(config).await?;
    emulator.install(org);
    Ok(emulator)
}

/// Writes a secret to a 0600 file and returns its path, for a `<NAME>_FILE` variable or a
/// `--*-file` flag.
pub fn write_secret(dir: &Path, name: &str, value: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    orchestrator_pki::write_private(&path, value.as_bytes())?;
    Ok(path.display().to_string())
}

/// What a finished command printed, stdout then stderr.
pub fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits until `condition` holds, looking every 5 ms; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The fields an INVALID_ARGUMENT's BadRequest names, in its order.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|f| f.field.clone())
                .collect()
        })
        .unwrap_or_default()
}
