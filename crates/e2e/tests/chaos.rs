//! A short chaos run (issue 18): the broker and infra on PostgreSQL are SIGKILLed at random
//! every 1-3 s and restarted 0.3 s later on the same address, while a client pushes secrets to
//! a few projects and provisions a server for each, retrying every call with the same request
//! id. At the end: every secret exact at GitHub, every provision done (or failed for good with
//! nothing left behind), droplets and DNS records equal to the live servers.
//!
//! Knobs for a longer run (`scripts/chaos`): `CHAOS_PROJECTS` (3), `CHAOS_ROUNDS` (5: secrets
//! and a server per round, every server but the last destroyed again); the kills go on until
//! the work is done (at most `CHAOS_MAX_SECONDS`, 240).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::future::Future;
use std::time::{Duration, Instant};

use orchestrator_e2e::{ORG, ProviderSetup, Secret, TestMesh};
use orchestrator_github_emulator::Config as GhConfig;
use orchestrator_mesh::Service;
use orchestrator_mesh::retry::{Call, Outcome, classify};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::secretbroker::v1 as broker;
use tonic::Status;
use tonic::transport::Channel;

const INFRA: Service = Service::Infra;
const BROKER: Service = Service::SecretBroker;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Calls `call` until it answers, retrying transient failures (a peer killed) for 3 minutes.
async fn retried<T, F, Fut>(what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match call().await {
            Ok(t) => return Ok(t),
            Err(s) if classify(&s, Call::Idempotent) == Outcome::Transient => {
                assert!(Instant::now() < deadline, "{what}: still failing: {s:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// A small xorshift generator: the run's schedule, printed seed first.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

type BrokerApi = broker::secret_broker_service_client::SecretBrokerServiceClient<Channel>;
type InfraApi = pb::infra_service_client::InfraServiceClient<Channel>;

/// One project's work, `rounds` times: its secrets (new values each round), then a server,
/// watched to the end; every round's server but the last is destroyed again. Returns the last
/// provision's end.
async fn project_work(brokers: BrokerApi, infras: InfraApi, n: u64, rounds: u64) -> pb::Operation {
    let mut last = None;
    for r in 0..rounds {
        let end = round(&brokers, &infras, n, r).await;
        if r + 1 < rounds && end.state == pb::OperationState::Succeeded as i32 {
            let op = retried("DestroyServer", || {
                let mut api = infras.clone();
                let server_id = end.server_id.clone();
                async move {
                    api.destroy_server(pb::DestroyServerRequest { server_id })
                        .await
                }
            })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap();
            let gone = ended(&infras, &op.id).await;
            assert_eq!(gone.state, pb::OperationState::Succeeded as i32, "{gone:?}");
        }
        last = Some(end);
    }
    last.unwrap()
}

/// Round `r` of project `n`.
async fn round(mesh_broker: &BrokerApi, mesh_infra: &InfraApi, n: u64, r: u64) -> pb::Operation {
    let project = format!("p{n}");
    let request = broker::SetProjectSecretsRequest {
        request_id: format!("00000000-0000-4000-8{r:03}-{n:012}"),
        project_id: project.clone(),
        secrets: (0..4)
            .map(|i| common::ProjectSecretValue {
                name: format!("SECRET_{i}"),
                value: format!("value-{n}-{i}-{r}").into_bytes(),
            })
            .collect(),
        location: None,
    };
    let results = retried("SetProjectSecrets", || {
        let (mut api, request) = (mesh_broker.clone(), request.clone());
        async move { api.set_project_secrets(request).await }
    })
    .await
    .unwrap()
    .into_inner()
    .results;
    assert_eq!(results.len(), 4);
    let provision = orchestrator_e2e::droplet_provision(
        &format!("chaos-provision-{n}-{r}"),
        &project,
        &format!("app{n}r{r}.orchestrator.test"),
    );
    let op = retried("ProvisionServer", || {
        let (mut api, request) = (mesh_infra.clone(), provision.clone());
        async move { api.provision_server(request).await }
    })
    .await
    .unwrap()
    .into_inner()
    .operation
    .unwrap();
    ended(mesh_infra, &op.id).await
}

/// Polls operation `id` (across infra's restarts) until it ends.
async fn ended(mesh_infra: &InfraApi, id: &str) -> pb::Operation {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let now = retried("GetOperation", || {
            let mut api = mesh_infra.clone();
            let operation_id = id.to_owned();
            async move {
                api.get_operation(pb::GetOperationRequest { operation_id })
                    .await
            }
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
        let ended = now.state == pb::OperationState::Succeeded as i32
            || now.state == pb::OperationState::Failed as i32;
        if ended {
            return now;
        }
        assert!(Instant::now() < deadline, "{now:?} never ended");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_ends_with_everything_exact_and_nothing_left_behind() {
    let projects = knob("CHAOS_PROJECTS", 3);
    let rounds = knob("CHAOS_ROUNDS", 5);
    let seconds = knob("CHAOS_MAX_SECONDS", 240);
    let mut mesh = TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .providers(ProviderSetup::default())
        .env(INFRA, "INFRA_READY_TIMEOUT_SECS", "60")
        .service(BROKER)
        .service(INFRA)
        .start()
        .await;
    for n in 0..projects {
        mesh.register_repository(&format!("p{n}"), &format!("app{n}"))
            .await;
    }
    let (broker_api, infra_api) = (mesh.broker_as("api").await, mesh.infra_as("api").await);
    let work = tokio::spawn(async move {
        let jobs: Vec<_> = (0..projects)
            .map(|n| {
                tokio::spawn(project_work(
                    broker_api.clone(),
                    infra_api.clone(),
                    n,
                    rounds,
                ))
            })
            .collect();
        let mut ends = Vec::new();
        for job in jobs {
            ends.push(job.await.unwrap());
        }
        ends
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kills = 0;
    while !work.is_finished() && started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
        let victim = if rng.below(2) == 0 { BROKER } else { INFRA };
        mesh.crash_and_restart(victim, Duration::from_millis(300))
            .await;
        kills += 1;
    }
    let ends = work.await.unwrap();
    eprintln!(
        "chaos: {kills} kills in {:?}, {projects} projects",
        started.elapsed()
    );

    let mut ready = 0;
    for end in &ends {
        if end.state == pb::OperationState::Succeeded as i32 {
            ready += 1;
        } else {
            let error = end.error.clone().unwrap();
            assert!(!error.reason.is_empty(), "{end:?}");
            assert!(
                error
                    .metadata
                    .get("cleanup")
                    .is_some_and(|c| c.starts_with("released")),
                "a failed provision left something behind: {end:?}"
            );
        }
    }
    // The bar: no provision fails for a restart.
    assert_eq!(ready, ends.len(), "{ends:#?}\n{}", mesh.logs(INFRA));
    assert_eq!(mesh.digitalocean().live_droplets().len(), ready);
    assert_eq!(mesh.cloudflare().records().len(), ready);
    for n in 0..projects {
        for i in 0..4 {
            assert_eq!(
                mesh.github()
                    .secret(ORG, &format!("app{n}"), &format!("SECRET_{i}"))
                    .unwrap(),
                format!("value-{n}-{i}-{}", rounds - 1).into_bytes()
            );
        }
        assert!(
            mesh.github()
                .secret(ORG, &format!("app{n}"), "DEPLOY_SSH_KEY")
                .is_some()
        );
    }
    // No value anywhere but at GitHub: not in the broker's or infra's tables, not in a log.
    let canaries: Vec<String> = (0..projects)
        .flat_map(|n| {
            (0..rounds).flat_map(move |r| (0..4).map(move |i| format!("value-{n}-{i}-{r}")))
        })
        .collect();
    let canaries: Vec<&str> = canaries.iter().map(String::as_str).collect();
    for service in [BROKER, INFRA] {
        let logs = mesh.logs(service);
        assert!(
            canaries.iter().all(|c| !logs.contains(c)),
            "a value in {service}'s logs"
        );
    }
    mesh.assert_absent_from_tables(
        BROKER,
        &[
            "secret_broker.secret_refs",
            "secret_broker.write_requests",
            "secret_broker.audit_log",
        ],
        &canaries,
    )
    .await;
    mesh.assert_absent_from_tables(
        INFRA,
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &canaries,
    )
    .await;
    // Every audit chain verifies, across all the crashes.
    for service in [BROKER, INFRA] {
        let key = orchestrator_audit::AuditKey::from_base64(&secrecy::SecretString::from(
            mesh.secret(Secret::AuditKey(service)),
        ))
        .unwrap();
        let db = orchestrator_store::Database::connect(
            &mesh.db().url(service.name()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let report = orchestrator_audit::verify(db.pool(), &key).await.unwrap();
        assert_eq!(report.broken, None, "{service}'s audit chain");
    }
}
