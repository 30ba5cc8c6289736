//! Mutual TLS and per-RPC authorization, against a real vault process.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{TRUST_DOMAIN, TestMesh, identity, raw};
use orchestrator_mesh::Service;
use orchestrator_mesh::tls::anonymous_client_config;
use orchestrator_pki::{Ca, Validity};
use std::sync::Arc;
use tonic::Code;
use tonic_types::StatusExt;

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// The vault's count of refused handshakes, from its admin port.
async fn refused_handshakes(vault: &orchestrator_e2e::Proc) -> u64 {
    let (_, metrics) = vault.admin_get("/metrics").await.unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("mesh_tls_handshake_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn assert_refused(
    vault: &orchestrator_e2e::Proc,
    config: Arc<rustls::ClientConfig>,
    what: &str,
) {
    let before = refused_handshakes(vault).await;
    let code = raw::health_check_with(config, vault.grpc).await;
    assert_ne!(code, Code::Ok, "{what}: the call went through");
    // The server, not just the client, refused the connection.
    for _ in 0..50 {
        if refused_handshakes(vault).await > before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{what}: the vault did not count a refused handshake (call ended with {code:?})");
}

#[tokio::test]
async fn handshakes_without_a_valid_client_certificate_are_refused() {
    let mesh = TestMesh::builder().service(Service::Vault).start().await;
    let (pki, vault) = (mesh.pki(), mesh.proc(Service::Vault));
    let server = identity("vault");

    // No client certificate at all.
    let anonymous = Arc::new(anonymous_client_config(&pki.ca_file(), &server).unwrap());
    assert_refused(vault, anonymous, "no client certificate").await;

    // A certificate for a real identity name, from another CA.
    let other_ca = Ca::generate(TRUST_DOMAIN, Validity::days(1)).unwrap();
    pki.write(
        "foreign-api",
        &other_ca
            .issue(TRUST_DOMAIN, "api", Validity::days(1))
            .unwrap(),
    )
    .unwrap();
    let foreign = pki.client_config("foreign-api", &server).unwrap();
    assert_refused(vault, foreign, "certificate from another CA").await;

    // Our CA, but expired.
    pki.write(
        "expired-api",
        &pki.issue("api", Validity::expired()).unwrap(),
    )
    .unwrap();
    let expired = pki.client_config("expired-api", &server).unwrap();
    assert_refused(vault, expired, "expired certificate").await;

    // Our CA, valid, but another trust domain.
    pki.write(
        "other-domain",
        &pki.ca()
            .issue("elsewhere.example", "api", Validity::days(1))
            .unwrap(),
    )
    .unwrap();
    let other_domain = pki.client_config("other-domain", &server).unwrap();
    assert_refused(vault, other_domain, "identity of another trust domain").await;

    // The same endpoint with a valid certificate works.
    let api = pki.client("api").unwrap();
    assert_eq!(
        raw::call(vault.channel(&api).await.unwrap(), CHECK).await,
        Code::Ok
    );
}

#[tokio::test]
async fn clients_verify_the_server_identity() {
    let mesh = TestMesh::builder().service(Service::Infra).start().await;
    let (pki, infra) = (mesh.pki(), mesh.proc(Service::Infra));
    let api = pki.client("api").unwrap();
    let call = |expected: &'static str| {
        let api = api.clone();
        let addr = infra.grpc;
        async move {
            match orchestrator_e2e::channel(&api, addr, expected).await {
                Err(_) => Code::Unavailable,
                Ok(channel) => raw::call(channel, CHECK).await,
            }
        }
    };
    // The same client, expecting infra: it gets through (so the refusal below is the identity's).
    assert_eq!(call("infra").await, Code::Ok);
    // infra's certificate is valid, but this client asked for the vault.
    assert_eq!(call("vault").await, Code::Unavailable);
}

#[tokio::test]
async fn the_policy_decides_per_rpc_and_names_the_caller() {
    let mesh = TestMesh::builder().service(Service::Vault).start().await;
    let (pki, vault) = (mesh.pki(), mesh.proc(Service::Vault));
    let api = vault.channel(&pki.client("api").unwrap()).await.unwrap();

    // Allowed for api: reaches the handler, which validates the (empty) request.
    let listed = raw::call(
        api.clone(),
        "/orchestrator.vault.v1.VaultService/ListUserSecrets",
    )
    .await;
    assert_eq!(listed, Code::InvalidArgument);

    // Plaintext reads are for infra only.
    let status = raw::call_result(
        api.clone(),
        "/orchestrator.vault.v1.VaultService/GetUserSecret",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("an ErrorInfo");
    assert_eq!(info.reason, "RPC_NOT_ALLOWED");
    assert_eq!(info.domain, "mesh.orchestrator");
    assert_eq!(info.metadata["caller"], "spiffe://orchestrator.local/api");
    assert_eq!(
        info.metadata["method"],
        "/orchestrator.vault.v1.VaultService/GetUserSecret"
    );

    // Methods that do not exist are denied the same way: no probing for what exists.
    let probe = raw::call(
        api.clone(),
        "/orchestrator.vault.v1.VaultService/DumpEverything",
    )
    .await;
    assert_eq!(probe, Code::PermissionDenied);

    // infra may read plaintext (the handler answers: the request is empty), and may not write.
    let infra = vault.channel(&pki.client("infra").unwrap()).await.unwrap();
    assert_eq!(
        raw::call(
            infra.clone(),
            "/orchestrator.vault.v1.VaultService/GetUserSecret"
        )
        .await,
        Code::InvalidArgument
    );
    assert_eq!(
        raw::call(infra, "/orchestrator.vault.v1.VaultService/PutUserSecret").await,
        Code::PermissionDenied
    );

    // Every decision is logged with caller, method and status.
    let logs = vault.logs();
    assert!(logs.contains("spiffe://orchestrator.local/api"), "{logs}");
    assert!(
        logs.contains("/orchestrator.vault.v1.VaultService/GetUserSecret"),
        "{logs}"
    );
    assert!(logs.contains("PermissionDenied"), "{logs}");
}

#[tokio::test]
async fn reflection_health_and_admin_endpoints() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut mesh = TestMesh::builder().service(Service::Vault).start().await;
    let (pki, vault) = (mesh.pki(), mesh.proc(Service::Vault));
    let channel = vault.channel(&pki.client("api").unwrap()).await.unwrap();

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"orchestrator.vault.v1.VaultService"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    assert!(
        !names.contains(&"orchestrator.infra.v1.InfraService"),
        "{names:?}"
    );

    // Reflection is for api and operator; another service may not browse it.
    let scaffolder = vault
        .channel(&pki.client("scaffolder").unwrap())
        .await
        .unwrap();
    assert_eq!(
        raw::call(
            scaffolder,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        )
        .await,
        Code::PermissionDenied
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "orchestrator.vault.v1.VaultService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    assert_eq!(vault.admin_get("/healthz").await.unwrap().0, 200);
    assert_eq!(vault.admin_get("/readyz").await.unwrap().0, 200);
    let (code, metrics) = vault.admin_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"grpc_server_handled_total{grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_code="Ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"grpc_server_handled_total{grpc_service="grpc.reflection.v1.ServerReflection",grpc_method="ServerReflectionInfo",grpc_code="PermissionDenied"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("grpc_server_handling_seconds_bucket"),
        "{metrics}"
    );
    assert!(mesh.proc_mut(Service::Vault).is_running());
}
