//! Two infra replicas on one PostgreSQL: an unfinished operation runs in exactly one of them,
//! and the other takes it over when its holder dies (real processes, mTLS, the emulators).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{ProviderSetup, TestMesh, droplet_provision, wait_until, watch_operation};
use orchestrator_github_emulator::Config as GhConfig;
use orchestrator_mesh::Service;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use orchestrator_provider_emulators as emu;

const INFRA: Service = Service::Infra;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_operation_is_taken_over_once_and_makes_one_server() {
    let mut mesh = TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .providers(ProviderSetup {
            // Long enough to kill the replica while the droplet boots.
            hosts: emu::HostsConfig {
                boot_time: Duration::from_secs(3),
                ..emu::HostsConfig::default()
            },
            ..ProviderSetup::default()
        })
        .service(Service::SecretBroker)
        .service(INFRA)
        .env(INFRA, "INFRA_OPERATION_LEASE", "2s")
        .env(INFRA, "INFRA_READY_TIMEOUT_SECS", "60")
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    // Replica b shares a's database; it started before a's operation existed.
    let b = mesh.launch(INFRA).spawn().await.unwrap();
    let mut on_a = mesh.infra_as("api").await;
    let op = on_a
        .provision_server(droplet_provision(
            "replicated",
            "p1",
            "app1.orchestrator.test",
        ))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let digitalocean = mesh.digitalocean().clone();
    wait_until(
        "a never bought the droplet",
        Duration::from_secs(30),
        || !digitalocean.droplets().is_empty(),
    )
    .await;
    // a dies holding the operation; b finds the lease run out and finishes it.
    mesh.kill(INFRA).await;
    let mut on_b = InfraServiceClient::new(mesh.channel_to(&b, "api").await);
    let seen = watch_operation(&mut on_b, &op.id, Duration::from_secs(60)).await;
    let last = seen.last().unwrap();
    assert_eq!(
        last.state,
        pb::OperationState::Succeeded as i32,
        "{last:?}\n{}",
        b.logs()
    );
    // One droplet ever bought, one A record, one server.
    assert_eq!(digitalocean.droplets().len(), 1);
    let records = mesh.cloudflare().records();
    let ours: Vec<_> = records
        .iter()
        .filter(|r| r.name == "app1.orchestrator.test")
        .collect();
    assert_eq!(ours.len(), 1, "{records:?}");
    let servers = on_b
        .list_servers(pb::ListServersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .servers;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].state, pb::ServerState::Ready as i32);
}
