//! DEPLOY_* credentials of a project come only from a server provisioned for that project: the
//! broker binds each infra server to the project of its first handover and refuses its
//! credentials for any other project, with real processes over mTLS against the GitHub
//! emulator (which shows what each repository holds).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{ORG, TestMesh, violated_fields};
use orchestrator_github_emulator::Config;
use orchestrator_mesh::Service;
use orchestrator_proto::secretbroker::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

const DEPLOY: [&str; 4] = [
    "DEPLOY_HOST",
    "DEPLOY_USER",
    "DEPLOY_SSH_KEY",
    "DEPLOY_KNOWN_HOSTS",
];

fn handover(
    request_id: &str,
    project: &str,
    server: &str,
    host: &str,
) -> pb::SetDeployCredentialsRequest {
    pb::SetDeployCredentialsRequest {
        request_id: request_id.into(),
        project_id: project.into(),
        credentials: Some(pb::DeployCredentials {
            host: host.into(),
            user: "deploy".into(),
            ssh_private_key: format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{server}\n")
                .into_bytes(),
            known_hosts: format!("{host} ssh-ed25519 AAAA"),
        }),
        server_id: server.into(),
    }
}

/// What `repo` holds of the deploy credentials.
fn deploy_secrets(mesh: &TestMesh, repo: &str) -> Vec<(&'static str, Vec<u8>)> {
    DEPLOY
        .into_iter()
        .filter_map(|name| mesh.github().secret(ORG, repo, name).map(|v| (name, v)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_credentials_never_reach_another_project() {
    let mesh = TestMesh::builder()
        .postgres()
        .github(Config::default())
        .service(Service::SecretBroker)
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    mesh.register_repository("p2", "app2").await;
    let mut infra = mesh.broker_as("infra").await;

    // Server a hands over for p1: bound to p1.
    infra
        .set_deploy_credentials(handover("a-1", "p1", "srv-a", "a.example.test"))
        .await
        .unwrap();
    let p1_before = deploy_secrets(&mesh, "app1");
    assert_eq!(p1_before.len(), 4);

    // Server a's credentials for p2: refused before anything is written.
    let refused = infra
        .set_deploy_credentials(handover("a-2", "p2", "srv-a", "a.example.test"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "SERVER_OF_ANOTHER_PROJECT");
    assert_eq!(info.metadata["server_id"], "srv-a");
    assert!(deploy_secrets(&mesh, "app2").is_empty());
    assert_eq!(deploy_secrets(&mesh, "app1"), p1_before);

    // Credentials must say which server they come from.
    let mut anonymous = handover("anon", "p2", "", "x.example.test");
    anonymous.server_id.clear();
    let refused = infra.set_deploy_credentials(anonymous).await.unwrap_err();
    assert_eq!(violated_fields(&refused), ["server_id"]);
    assert!(deploy_secrets(&mesh, "app2").is_empty());

    // p2's own server, and a second server of p1 (a replacement), are fine.
    infra
        .set_deploy_credentials(handover("b-1", "p2", "srv-b", "b.example.test"))
        .await
        .unwrap();
    assert_eq!(
        mesh.github().secret(ORG, "app2", "DEPLOY_HOST").unwrap(),
        b"b.example.test"
    );
    infra
        .set_deploy_credentials(handover("c-1", "p1", "srv-c", "c.example.test"))
        .await
        .unwrap();
    assert_eq!(
        mesh.github().secret(ORG, "app1", "DEPLOY_HOST").unwrap(),
        b"c.example.test"
    );
    // A retry of server a's own handover still works (it is bound to p1).
    infra
        .set_deploy_credentials(handover("a-1", "p1", "srv-a", "a.example.test"))
        .await
        .unwrap();
}
