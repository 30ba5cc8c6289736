//! The generated Python SDK (`sdk/`) calls a real vault over mTLS: health, an allowed RPC, a
//! refused one with its ErrorInfo, and a channel without a client certificate.

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
