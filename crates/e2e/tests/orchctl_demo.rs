//! `orchctl demo` narrates the seed's four flows against a mesh `orchctl up --port 0` runs, in
//! well under a minute, and shows the vault refusing `api` a plaintext; then the read commands
//! give what the demo made as JSON with `--output json`.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{bin, orchctl_up, printed};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn demo_runs_the_four_flows_against_orchctl_up() {
    let state = tempfile::tempdir().unwrap();
    let mut up = orchctl_up(state.path()).unwrap();
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

    // --output json on the read commands, about what the demo made.
    let look = text.lines().find(|l| l.starts_with("Done in")).unwrap();
    let words: Vec<&str> = look.split_whitespace().collect();
    let project = words
        .iter()
        .find(|w| w.starts_with("prj-"))
        .unwrap()
        .to_string();
    let server = words
        .iter()
        .find(|w| w.starts_with("srv-"))
        .unwrap()
        .to_string();
    let target = |service: &str| {
        let file = state.path().join(format!("run/{service}.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        v["grpc"].as_str().unwrap().to_owned()
    };
    let pki = state.path().join("pki");
    let json = |args: Vec<String>| {
        let pki = pki.clone();
        async move {
            let out = Command::new(bin("orchctl"))
                .args(&args)
                .arg("--pki")
                .arg(&pki)
                .args(["--output", "json"])
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{args:?}: {}", printed(&out));
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", printed(&out)))
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let scaffolder = target("scaffolder");
    let got = json(s(&["project", "get", &project, "--target", &scaffolder])).await;
    assert_eq!(got["id"], project.as_str());
    assert_eq!(got["state"], "ready");
    assert_eq!(got["secret_presence"]["bot_token"], "present", "{got}");
    let listed = json(s(&[
        "project",
        "list",
        "--user",
        "u-demo",
        "--target",
        &scaffolder,
    ]))
    .await;
    assert!(
        listed["projects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == project.as_str())
    );
    let broker = target("secret-broker");
    let secrets = json(s(&["secrets", "list", &project, "--target", &broker])).await;
    let bot = secrets["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "BOT_TOKEN")
        .unwrap()
        .clone();
    assert_eq!(bot["presence"], "present");
    assert!(
        bot["github_update_time"].as_str().unwrap().ends_with('Z'),
        "{bot}"
    );
    let infra = target("infra");
    let got = json(s(&["infra", "get", &server, "--target", &infra])).await;
    assert_eq!(got["project_id"], project.as_str());
    assert_eq!(got["state"], "ready", "{got}");
    let vault = target("vault");
    let keys = json(s(&[
        "vault", "list", "--user", "u-demo", "--target", &vault,
    ]))
    .await;
    assert_eq!(keys["secrets"][0]["key"], "digitalocean/token", "{keys}");
    assert!(!keys.to_string().contains("dop_v1_demo"));

    let _ = Command::new("kill")
        .args(["-TERM", &up.id().unwrap().to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), up.wait()).await;
}
