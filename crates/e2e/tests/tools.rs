//! The debugging tools people point at the mesh. grpcurl resolves error details through server
//! reflection, which serves the `google.rpc` types (checked here at the reflection service);
//! `buf curl` prints details as base64 whatever the server serves, so a refusal's reason also
//! ends its message (`[RPC_NOT_ALLOWED]`) and field violations are listed in it, in plain text.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::process::Output;

use orchestrator_e2e::TestMesh;
use orchestrator_mesh::Service;

/// `buf curl --protocol grpc` as `identity` against a vault method, with `body` as the request.
async fn buf_curl(mesh: &TestMesh, identity: &str, method: &str, body: &str) -> Output {
    let path = format!("/orchestrator.vault.v1.VaultService/{method}");
    buf_curl_as(mesh, identity, &path, body).await
}

/// `buf curl` as `api` against any path of the vault.
async fn buf_curl_path(mesh: &TestMesh, path: &str, body: &str) -> Output {
    buf_curl_as(mesh, "api", path, body).await
}

async fn buf_curl_as(mesh: &TestMesh, identity: &str, path: &str, body: &str) -> Output {
    let pki = mesh.pki();
    let files = pki.files(identity);
    let url = format!("https://{}{path}", mesh.proc(Service::Vault).grpc);
    let out = tokio::process::Command::new("buf")
        .args(["curl", "--protocol", "grpc", "--cacert"])
        .arg(pki.ca_file())
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .args([&url, "-d", body])
        .output()
        .await;
    out.unwrap_or_else(|e| {
        panic!("cannot run buf ({e}): scripts/test puts the SDK's pinned buf on PATH")
    })
}

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn buf_curl_shows_a_refusals_reason_and_field_violations_in_plain_text() {
    let mesh = TestMesh::builder().service(Service::Vault).start().await;

    // A read of a value as `api`: PERMISSION_DENIED with an ErrorInfo naming caller and method.
    let out = buf_curl(
        &mesh,
        "api",
        "GetUserSecret",
        r#"{"user_id":"u1","key":"do"}"#,
    )
    .await;
    let text = printed(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("permission_denied"), "{text}");
    assert!(text.contains("[RPC_NOT_ALLOWED]"), "{text}");
    assert!(text.contains("google.rpc.ErrorInfo"), "{text}");

    // A bad write: INVALID_ARGUMENT with each field violation in the message.
    let out = buf_curl(
        &mesh,
        "api",
        "PutUserSecret",
        r#"{"user_id":"u 1","key":""}"#,
    )
    .await;
    let text = printed(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("invalid_argument"), "{text}");
    assert!(text.contains("google.rpc.BadRequest"), "{text}");
    assert!(text.contains("user_id: 1-128 printable ASCII"), "{text}");
    assert!(text.contains("key: 1-256 characters"), "{text}");
}

#[tokio::test]
async fn reflection_serves_the_error_detail_types_grpcurl_resolves() {
    let mesh = TestMesh::builder().service(Service::Vault).start().await;
    for (request, file) in [
        (
            r#"{"file_containing_symbol":"google.rpc.ErrorInfo"}"#,
            "error_details.proto",
        ),
        (
            r#"{"file_containing_symbol":"google.rpc.BadRequest"}"#,
            "error_details.proto",
        ),
        (
            r#"{"file_by_filename":"google/protobuf/duration.proto"}"#,
            "google/protobuf/duration.proto",
        ),
    ] {
        let out = buf_curl_path(
            &mesh,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request,
        )
        .await;
        let text = printed(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("fileDescriptorProto"), "{text}");
        // The descriptor names its file: decode the first one and look for the name.
        let encoded = text
            .split('"')
            .find(|s| s.len() > 100)
            .unwrap_or_else(|| panic!("{text}"));
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert!(
            String::from_utf8_lossy(&bytes).contains(file),
            "{request}: {text}"
        );
    }
}
