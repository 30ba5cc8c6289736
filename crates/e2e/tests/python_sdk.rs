//! The Python SDK against real processes: the generated modules call a real vault over mTLS
//! (health, an allowed RPC, a refused one with its ErrorInfo, a channel without a client
//! certificate), and the installed `orchestrator-mesh` wheel passes its pytest suite
//! (`sdk/python/tests`) against a mesh started by `orchctl up --port 0`.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::path::PathBuf;

use orchestrator_e2e::{TestMesh, printed, repo_root};
use orchestrator_mesh::Service;

/// The SDK venv's Python (`sdk/generate.sh` creates it; `scripts/test` runs that first).
fn sdk_python() -> PathBuf {
    let venv = std::env::var_os("ORCH_SDK_VENV").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/orchestrator/sdk-venv"),
        PathBuf::from,
    );
    let python =
        std::env::var_os("ORCH_SDK_PYTHON").map_or_else(|| venv.join("bin/python"), PathBuf::from);
    assert!(
        python.exists() && repo_root().join("sdk/python/gen/orchestrator").exists(),
        "the Python SDK is not generated: run sdk/generate.sh (scripts/test does) before this test"
    );
    python
}

#[tokio::test]
async fn the_generated_python_client_talks_mtls_to_a_live_service() {
    let python = sdk_python();
    let mesh = TestMesh::builder().service(Service::Vault).start().await;
    let api = mesh.pki().files("api");
    let output = tokio::process::Command::new(python)
        .arg(repo_root().join("sdk/python/smoke_test.py"))
        .env("ORCH_TARGET", mesh.proc(Service::Vault).grpc.to_string())
        .env("ORCH_CA", &api.ca)
        .env("ORCH_CERT", &api.cert)
        .env("ORCH_KEY", &api.key)
        .output()
        .await
        .unwrap();
    let text = printed(&output);
    assert!(output.status.success(), "smoke test failed:\n{text}");
    assert!(text.contains("4 passed, 0 failed"), "{text}");
}

/// The venv where `sdk/python/build.sh` installed the wheel (`scripts/test` runs it).
fn wheel_python() -> PathBuf {
    let venv = std::env::var_os("ORCH_SDK_WHEEL_VENV").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/orchestrator/sdk-wheel-venv")
        },
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the orchestrator-mesh wheel is not installed: run sdk/generate.sh and sdk/python/build.sh \
         (scripts/test does) before this test"
    );
    python
}

#[tokio::test]
async fn the_installed_python_package_passes_its_tests_against_orchctl_up() {
    let python = wheel_python();
    let tests = repo_root().join("sdk/python/tests");
    // Run from outside the source tree, so `orchestrator` and `orchestrator_mesh` are the wheel's.
    let cwd = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(python)
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--import-mode=importlib",
            "-c",
        ])
        .arg(repo_root().join("sdk/python/pyproject.toml"))
        .arg("--rootdir")
        .arg(cwd.path())
        .arg(&tests)
        .current_dir(cwd.path())
        .env("ORCH_ORCHCTL", orchestrator_e2e::bin("orchctl"))
        .env("ORCH_POLICY", repo_root().join("config/policy.toml"))
        .env_remove("ORCH_STATE_DIR")
        .output()
        .await
        .unwrap();
    let text = printed(&output);
    assert!(output.status.success(), "pytest failed:\n{text}");
    assert!(
        text.contains(" passed") && !text.contains(" failed"),
        "{text}"
    );
}
