//! Bounded work per caller, with real processes: each service's message limit fits its largest
//! valid request and refuses a larger one unread, and a caller holds a bounded number of
//! WatchOperation streams. (The broker's limit is tested in broker.rs, the per-field maxima
//! in each service's validation tests.)

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{ProviderSetup, TestMesh};
use orchestrator_github_emulator::Config as GhConfig;
use orchestrator_mesh::Service;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::vault::v1 as vault;
use orchestrator_provider_emulators as emu;
use tonic::Code;
use tonic_types::StatusExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_holds_a_bounded_number_of_watch_streams() {
    // Servers that take minutes to boot: the operation stays running while we watch it.
    let mesh = TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .providers(ProviderSetup {
            hosts: emu::HostsConfig {
                boot_time: Duration::from_secs(600),
                ..emu::HostsConfig::default()
            },
            ..ProviderSetup::default()
        })
        .service(Service::SecretBroker)
        .service(Service::Infra)
        .env(Service::Infra, "INFRA_MAX_WATCHES_PER_CALLER", "2")
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    let mut api = mesh.infra_as("api").await;
    let op = api
        .provision_server(orchestrator_e2e::droplet_provision(
            "watched",
            "p1",
            "app1.orchestrator.test",
        ))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let watch = pb::WatchOperationRequest {
        operation_id: op.id.clone(),
    };
    let first = api.watch_operation(watch.clone()).await.unwrap();
    let _second = api.watch_operation(watch.clone()).await.unwrap();
    let refused = api.watch_operation(watch.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "TOO_MANY_WATCHES");
    // A stream the caller closes frees its place (infra notices within its poll interval).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match api.watch_operation(watch.clone()).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place stayed taken"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_vault_takes_its_largest_value_and_refuses_a_larger_message_unread() {
    let mesh = TestMesh::builder()
        .postgres()
        .service(Service::Vault)
        .start()
        .await;
    let mut api = mesh.vault_as("api").await;
    let put = |value: Vec<u8>| vault::PutUserSecretRequest {
        user_id: "u1".into(),
        key: "big".into(),
        value,
        ..Default::default()
    };
    api.put_user_secret(put(vec![b'x'; 64 * 1024]))
        .await
        .unwrap();
    // Past the value limit but within the message limit: a field violation.
    let err = api
        .put_user_secret(put(vec![b'x'; 64 * 1024 + 1]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Past the message limit: refused on the length prefix, never buffered.
    let err = api
        .put_user_secret(put(vec![b'x'; 1024 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("too large"), "{}", err.message());
}
