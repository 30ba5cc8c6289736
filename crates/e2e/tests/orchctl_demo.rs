//! `orchctl demo` narrates the seed's four flows against a mesh `orchctl up --port 0` runs, in
//! well under a minute, and shows the vault refusing `api` a plaintext.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::process::Stdio;
use std::time::Duration;

use orchestrator_e2e::{bin, printed, repo_root};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn demo_runs_the_four_flows_against_orchctl_up() {
    let state = tempfile::tempdir().unwrap();
    let bin_dir = bin("orchctl").parent().unwrap().to_owned();
    let mut up = Command::new(bin("orchctl"))
        .args(["up", "--no-build", "--port", "0", "--admin-port", "0"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--policy")
        .arg(repo_root().join("config/policy.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("Press Ctrl-C") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(ready, "orchctl up ended early");
    // Keep draining orchctl up's output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let demo = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(bin("orchctl"))
            .arg("demo")
            .arg("--state-dir")
            .arg(state.path())
            .output(),
    )
    .await
    .expect("the demo took over a minute")
    .unwrap();
    let text = printed(&demo);
    assert!(demo.status.success(), "{text}");
    for expected in [
        "1/4",
        "2/4",
        "3/4",
        "4/4",
        "BOT_TOKEN created",
        "done",
        "DEPLOY_SSH_KEY",
        "[RPC_NOT_ALLOWED]",
        "Done in",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    // The values pushed (`bot-token-...`) and stored (`dop_v1_demo_...`) are never printed.
    assert!(
        !text.contains("bot-token-") && !text.contains("dop_v1_demo"),
        "{text}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().unwrap().to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), up.wait()).await;
}
