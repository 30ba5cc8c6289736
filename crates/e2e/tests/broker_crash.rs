//! Pending references a crash left are settled by the broker itself (real processes,
//! PostgreSQL): the broker SIGKILLed after GitHub accepted a PUT but before it recorded it ->
//! `present`; killed before the PUT reached GitHub -> `failed` with reason LOST_IN_CRASH in
//! ListProjectSecrets, so the caller knows to send the value again. Before, both stayed
//! `pending` until a person ran a reconcile.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{ORG, TestMesh, wait_until};
use orchestrator_github_emulator::{Config as GhConfig, Faults};
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;

const BROKER: Service = Service::SecretBroker;
const PUT_SECRET: &str = "PUT /repos/{owner}/{repo}/actions/secrets/{name}";
const GET_SECRET: &str = "GET /repos/{owner}/{repo}/actions/secrets/{name}";

fn secret(request_id: &str, name: &str) -> pb::SetProjectSecretsRequest {
    pb::SetProjectSecretsRequest {
        request_id: request_id.into(),
        project_id: "p1".into(),
        secrets: vec![common::ProjectSecretValue {
            name: name.into(),
            value: b"value".to_vec(),
        }],
        location: None,
    }
}

/// Sends `request` in the background, kills the broker once GitHub saw a request on `route`
/// (slowed down, so the broker is inside it), restarts it on the same address, and waits until
/// the reference is no longer pending; returns it.
async fn crash_during(
    mesh: &mut TestMesh,
    route: &str,
    request: pb::SetProjectSecretsRequest,
) -> pb::ProjectSecretReference {
    mesh.github().set_faults_for(
        route,
        Faults {
            latency: Duration::from_secs(3),
            ..Default::default()
        },
    );
    let seen = mesh
        .github()
        .stats()
        .requests
        .get(route)
        .copied()
        .unwrap_or(0);
    let mut api = mesh.broker_as("api").await;
    let name = request.secrets[0].name.clone();
    let call = tokio::spawn(async move { api.set_project_secrets(request).await });
    let github = mesh.github().clone();
    let route_owned = route.to_owned();
    wait_until(
        "the broker never called GitHub",
        Duration::from_secs(20),
        move || {
            github
                .stats()
                .requests
                .get(&route_owned)
                .copied()
                .unwrap_or(0)
                > seen
        },
    )
    .await;
    mesh.crash_and_restart(BROKER, Duration::from_millis(300))
        .await;
    assert!(call.await.unwrap().is_err(), "the call was cut");
    mesh.github().set_faults_for(route, Faults::default());
    let mut api = mesh.broker_as("api").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let refs = api
            .list_project_secrets(pb::ListProjectSecretsRequest {
                project_id: "p1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .secrets;
        let found = refs.into_iter().find(|r| r.name == name).unwrap();
        if found.presence != common::SecretPresence::Pending as i32 {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is still pending\n{}",
            mesh.logs(BROKER)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_references_left_by_a_crash_are_settled_by_what_github_holds() {
    let mut mesh = TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .env(BROKER, "BROKER_SETTLE_PENDING_AFTER", "1s")
        .env(BROKER, "BROKER_SETTLE_EVERY", "300ms")
        .service(BROKER)
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;

    // Killed while it reads GitHub's time after the PUT: GitHub has the secret.
    let kept = crash_during(
        &mut mesh,
        GET_SECRET,
        secret("6a0e8a4e-5d8f-4a37-9a59-2f9f1c0e7a11", "KEPT"),
    )
    .await;
    assert!(mesh.github().secret(ORG, "app1", "KEPT").is_some());
    assert_eq!(
        kept.presence,
        common::SecretPresence::Present as i32,
        "{kept:?}"
    );

    // Killed with the PUT held at GitHub. Whatever GitHub ended up with, the reference says it.
    let lost = crash_during(
        &mut mesh,
        PUT_SECRET,
        secret("0b7c2d9e-8f1a-4c3b-b6d5-4e2a9f8c7d10", "LOST"),
    )
    .await;
    if mesh.github().secret(ORG, "app1", "LOST").is_some() {
        assert_eq!(
            lost.presence,
            common::SecretPresence::Present as i32,
            "{lost:?}"
        );
    } else {
        assert_eq!(
            lost.presence,
            common::SecretPresence::Failed as i32,
            "{lost:?}"
        );
        assert_eq!(lost.last_error.unwrap().reason, "LOST_IN_CRASH");
    }
}
