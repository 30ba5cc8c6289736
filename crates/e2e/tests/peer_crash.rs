//! Operations that survive their peers dying: the broker SIGKILLed with infra's call to it in
//! flight (real processes, real mTLS, PostgreSQL) is a transient failure, retried with the same
//! request id once the broker is back, and the provision still ends done, with exactly one
//! droplet, one DNS record and the deploy credentials at GitHub. A provision that fails for
//! good releases what it made; a failed server can be destroyed.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{ORG, ProviderSetup, TestMesh, wait_until};
use orchestrator_github_emulator::{Config as GhConfig, Faults};
use orchestrator_mesh::Service;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use orchestrator_provider_emulators as emu;
use tonic::transport::Channel;

const INFRA: Service = Service::Infra;
const BROKER: Service = Service::SecretBroker;
const PUT_SECRET: &str = "PUT /repos/{owner}/{repo}/actions/secrets/{name}";

async fn start() -> TestMesh {
    start_with(ProviderSetup::default()).await
}

async fn start_with(setup: ProviderSetup) -> TestMesh {
    let mesh = TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .providers(setup)
        .env(INFRA, "INFRA_READY_TIMEOUT_SECS", "60")
        .service(BROKER)
        .service(INFRA)
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    mesh
}

fn provision(request_id: &str) -> pb::ProvisionServerRequest {
    orchestrator_e2e::droplet_provision(request_id, "p1", "app1.orchestrator.test")
}

/// Polls the operation until it ends (infra's stream is not what is under test here).
async fn ended(api: &mut InfraServiceClient<Channel>, id: &str) -> pb::Operation {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let op = api
            .get_operation(pb::GetOperationRequest {
                operation_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap();
        let open = op.state == pb::OperationState::Pending as i32
            || op.state == pb::OperationState::Running as i32;
        if !open || tokio::time::Instant::now() > deadline {
            return op;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills the broker (SIGKILL) while it holds `puts_before + 1`-th secret PUT of infra's
/// SetDeployCredentials (GitHub answers it slowly), and restarts it 0.3 s later on the same
/// address.
async fn kill_broker_in_flight(mesh: &mut TestMesh, puts_before: usize) {
    let github = mesh.github().clone();
    wait_until(
        "infra never called the broker",
        Duration::from_secs(30),
        move || {
            github
                .stats()
                .requests
                .get(PUT_SECRET)
                .copied()
                .unwrap_or(0)
                > puts_before
        },
    )
    .await;
    mesh.crash_and_restart(BROKER, Duration::from_millis(300))
        .await;
}

/// The broker dies during infra's first call (the deploy key's private half) and again during
/// the host handover: each cut call is retried (same request id) and the provision ends done.
/// Before the mesh's classification, the cut call came back UNKNOWN "transport error" and the
/// operation failed for good with an empty reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_in_the_middle_of_infras_call_does_not_fail_the_provision() {
    let mut mesh = start().await;
    mesh.github().set_faults_for(
        PUT_SECRET,
        Faults {
            latency: Duration::from_millis(1500),
            ..Default::default()
        },
    );
    let mut api = mesh.infra_as("api").await;
    let op = api
        .provision_server(provision("crash-broker-1"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    // First call: DEPLOY_SSH_KEY.
    kill_broker_in_flight(&mut mesh, 0).await;
    // The retry PUTs DEPLOY_SSH_KEY again; the host handover then PUTs three more. Kill
    // the broker on the handover's first PUT.
    let github = mesh.github().clone();
    wait_until(
        "the key was never handed over",
        Duration::from_secs(60),
        move || github.secret(ORG, "app1", "DEPLOY_SSH_KEY").is_some(),
    )
    .await;
    let before = mesh.github().stats().requests[PUT_SECRET];
    kill_broker_in_flight(&mut mesh, before).await;

    let op = ended(&mut api, &op.id).await;
    assert_eq!(
        op.state,
        pb::OperationState::Succeeded as i32,
        "{op:?}\n{}",
        mesh.logs(INFRA)
    );
    assert_eq!(mesh.digitalocean().live_droplets().len(), 1);
    assert_eq!(mesh.cloudflare().records().len(), 1);
    for name in [
        "DEPLOY_SSH_KEY",
        "DEPLOY_HOST",
        "DEPLOY_USER",
        "DEPLOY_KNOWN_HOSTS",
    ] {
        assert!(
            mesh.github().secret(ORG, "app1", name).is_some(),
            "{name} is missing at GitHub"
        );
    }
    assert!(
        mesh.logs(INFRA).contains("operation step will be retried"),
        "the cut call was not retried"
    );
}

/// A permanent failure after the droplet was bought and its DNS record set (cloud-init fails):
/// the provision releases both before it ends failed, and says so; the failed server can then
/// be destroyed (and a destroy asked again after that answers the same one). Before, the
/// droplet and the record stayed, paid for and tracked by nothing but a failed server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_that_fails_for_good_leaves_no_droplet_and_no_dns_record() {
    let mesh = start_with(ProviderSetup {
        hosts: emu::HostsConfig {
            cloud_init_fails: true,
            ..emu::HostsConfig::default()
        },
        ..ProviderSetup::default()
    })
    .await;
    let mut api = mesh.infra_as("api").await;
    let op = api
        .provision_server(provision("fails-for-good"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let failed = ended(&mut api, &op.id).await;
    assert_eq!(
        failed.state,
        pb::OperationState::Failed as i32,
        "{failed:?}"
    );
    let error = failed.error.clone().unwrap();
    assert_eq!(error.reason, "CLOUD_INIT_FAILED", "{error:?}");
    assert!(
        error.metadata["cleanup"].starts_with("released"),
        "{error:?}"
    );
    assert_eq!(mesh.digitalocean().droplets().len(), 1, "one was bought");
    assert!(mesh.digitalocean().live_droplets().is_empty());
    assert!(mesh.cloudflare().records().is_empty());

    let destroy = |api: &mut InfraServiceClient<Channel>| {
        let mut api = api.clone();
        let server_id = failed.server_id.clone();
        async move {
            api.destroy_server(pb::DestroyServerRequest { server_id })
                .await
                .unwrap()
                .into_inner()
                .operation
                .unwrap()
        }
    };
    let first = destroy(&mut api).await;
    let done = ended(&mut api, &first.id).await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    assert_eq!(destroy(&mut api).await.id, first.id);
}

/// `orchctl infra provision` follows the operation across an infra crash: its watch is cut,
/// it reconnects once infra is back (same address) and ends with the operation's own end.
/// Before, the cut stream was reported as a failed command while the provision went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchctl_keeps_watching_across_an_infra_restart() {
    let mut mesh = start().await;
    // A slow handover keeps the provision running long enough to cut its watch.
    mesh.github().set_faults_for(
        PUT_SECRET,
        Faults {
            latency: Duration::from_millis(700),
            ..Default::default()
        },
    );
    let orchctl = tokio::process::Command::new(orchestrator_e2e::bin("orchctl"))
        .args([
            "infra",
            "provision",
            "--project",
            "p1",
            "--hostname",
            "app1.orchestrator.test",
        ])
        .arg("--pki")
        .arg(mesh.pki().dir())
        .arg("--target")
        .arg(mesh.proc(INFRA).grpc.to_string())
        .kill_on_drop(true)
        .output();
    let orchctl = tokio::spawn(orchctl);
    let github = mesh.github().clone();
    wait_until(
        "the provision never reached the broker",
        Duration::from_secs(30),
        move || {
            github
                .stats()
                .requests
                .get(PUT_SECRET)
                .copied()
                .unwrap_or(0)
                > 0
        },
    )
    .await;
    mesh.crash_and_restart(INFRA, Duration::from_millis(300))
        .await;
    let out = tokio::time::timeout(Duration::from_secs(120), orchctl)
        .await
        .expect("orchctl ended")
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("reconnecting"), "{text}");
    assert!(text.trim_end().ends_with("done"), "{text}");
    assert_eq!(mesh.digitalocean().live_droplets().len(), 1);
}

/// A destroy that failed for good (infra restarted with a token DigitalOcean refuses) is not
/// the end: once infra has a working token again, DestroyServer starts a new destroy, which
/// deletes the droplet and its record. Before, the failed destroy was answered again forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_destroy_can_be_asked_again_and_finishes_the_cleanup() {
    let mut mesh = start().await;
    let mut api = mesh.infra_as("api").await;
    let op = api
        .provision_server(provision("destroy-again"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let done = ended(&mut api, &op.id).await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");

    let addr = mesh.proc(INFRA).grpc;
    mesh.kill(INFRA).await;
    let refused = mesh
        .launch(INFRA)
        .without("DIGITALOCEAN_TOKEN_FILE")
        .env(
            "DIGITALOCEAN_TOKEN",
            "dop_v1_not-a-token-digitalocean-knows",
        )
        .at(addr);
    mesh.spawn(refused).await;
    let destroyer = api.clone();
    let destroy = |server_id: String| {
        let api = destroyer.clone();
        async move {
            let mut api = api;
            api.destroy_server(pb::DestroyServerRequest { server_id })
                .await
                .unwrap()
                .into_inner()
                .operation
                .unwrap()
        }
    };
    let first = destroy(done.server_id.clone()).await;
    let failed = ended(&mut api, &first.id).await;
    assert_eq!(
        failed.state,
        pb::OperationState::Failed as i32,
        "{failed:?}"
    );
    assert_eq!(mesh.digitalocean().live_droplets().len(), 1);

    mesh.crash_and_restart(INFRA, Duration::from_millis(100))
        .await;
    let second = destroy(done.server_id.clone()).await;
    assert_ne!(second.id, first.id, "a new destroy, not the failed one");
    let gone = ended(&mut api, &second.id).await;
    assert_eq!(gone.state, pb::OperationState::Succeeded as i32, "{gone:?}");
    assert!(mesh.digitalocean().live_droplets().is_empty());
    assert!(mesh.cloudflare().records().is_empty());
    assert_eq!(destroy(done.server_id).await.id, second.id);
}
