//! `orchctl completions bash|zsh|fish` prints a completion script naming the subcommands; bash's
//! parses (`bash -n`).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{bin, printed};
use tokio::process::Command;

#[tokio::test]
async fn completions_for_bash_zsh_and_fish_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(bin("orchctl"))
            .args(["completions", shell])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{shell}: {}", printed(&output));
        let script = String::from_utf8(output.stdout).unwrap();
        for sub in ["vault", "project", "infra", "secrets", "up", "completions"] {
            assert!(script.contains(sub), "{shell} completions lack `{sub}`");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("orchctl.bash");
            std::fs::write(&file, &script).unwrap();
            let check = Command::new("bash")
                .arg("-n")
                .arg(&file)
                .output()
                .await
                .unwrap();
            assert!(check.status.success(), "bash -n: {}", printed(&check));
        }
    }
    let refused = Command::new(bin("orchctl"))
        .args(["completions", "powershell-7"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
}
