//! The npm package `@orchestrator/mesh`, installed from its tarball as a user installs it
//! (`sdk/typescript/build.sh`), passes its node tests (`sdk/typescript/tests`) against a mesh
//! started by `orchctl up --port 0`: vault put/list as `api`, refusals decoded to their reason and
//! field violations, no client certificate refused, a server with another SPIFFE ID refused.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::path::PathBuf;

use orchestrator_e2e::{printed, repo_root};

/// The folder where `sdk/typescript/build.sh` installed the packed tarball (`scripts/test` runs
/// it).
fn consumer() -> PathBuf {
    let dir = std::env::var_os("ORCH_SDK_NPM_CONSUMER").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/orchestrator/sdk-npm-consumer")
        },
        PathBuf::from,
    );
    assert!(
        dir.join("node_modules/@orchestrator/mesh/package.json")
            .exists()
            && dir.join("tests").exists(),
        "the @orchestrator/mesh package is not installed: run sdk/generate.sh and \
         sdk/typescript/build.sh (scripts/test does) before this test"
    );
    dir
}

#[tokio::test]
async fn the_installed_npm_package_passes_its_tests_against_orchctl_up() {
    let dir = consumer();
    let output = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=spec", "tests/"])
        .current_dir(&dir)
        .env("ORCH_ORCHCTL", orchestrator_e2e::bin("orchctl"))
        .env("ORCH_POLICY", repo_root().join("config/policy.toml"))
        .env_remove("ORCH_STATE_DIR")
        .output()
        .await
        .unwrap();
    let text = printed(&output);
    assert!(output.status.success(), "node --test failed:\n{text}");
    assert!(
        text.contains("ℹ fail 0") && !text.contains("ℹ pass 0"),
        "{text}"
    );
}
