//! GitHub tokens no wider and no longer-lived than their job, across real processes over mTLS
//! against the GitHub emulator (which enforces each token's repositories and permissions and
//! refuses a revoked one as GitHub does): the scaffolder creates a repository with a token that
//! writes no repository, commits the template with a token narrowed to the new repository, and
//! revokes each; the broker registers only repositories of its organization, whatever their
//! letter case. (The clone token's revocation after the checkout: `infra.rs`.)

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::collections::BTreeMap;

use orchestrator_e2e::{ORG, TestMesh, raw};
use orchestrator_github_emulator::{Config, TokenMint};
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;
use orchestrator_proto::secretbroker::v1 as broker;
use tonic::Code;
use tonic_types::StatusExt;

const BROKER: Service = Service::SecretBroker;
const SCAFFOLDER: Service = Service::Scaffolder;

fn permissions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn create(request_id: &str, name: &str) -> pb::CreateProjectRequest {
    pb::CreateProjectRequest {
        request_id: request_id.into(),
        name: name.into(),
        user_id: "u1".into(),
        template: pb::ProjectTemplate::DockerSsh as i32,
        visibility: pb::RepositoryVisibility::Private as i32,
        ..Default::default()
    }
}

/// Every token must now be refused (401) wherever it is used: it was revoked.
async fn assert_refused_now(mesh: &TestMesh, mints: &[TokenMint], repo: &str) {
    let url = mesh.github().url();
    for mint in mints {
        for path in [format!("/repos/{ORG}/{repo}"), "/installation/token".into()] {
            let method = if path.ends_with("/token") {
                "DELETE"
            } else {
                "GET"
            };
            assert_eq!(
                raw::status_with_token(&url, method, &path, &mint.token, "").await,
                401,
                "{method} {path} with {mint:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_project_uses_one_narrow_token_per_job_and_revokes_each() {
    let mesh = TestMesh::builder()
        .postgres()
        .github(Config::default())
        .service(BROKER)
        .service(SCAFFOLDER)
        .start()
        .await;
    // Another project's repository, which no token of this creation may write.
    mesh.github().create_repository(ORG, "someone-else");
    let mut api = mesh.scaffolder_as("api").await;
    let project = api
        .create_project(create("req-tok", "tok-bot"))
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(project.state, pb::ProjectState::Ready as i32);
    assert!(
        mesh.github()
            .file(ORG, "tok-bot", ".github/workflows/deploy.yml")
            .is_some()
    );

    let mints = mesh.github().stats().token_mints;
    assert_eq!(mints.len(), 2, "one token per job: {mints:?}");
    let (creation, commit) = (&mints[0], &mints[1]);
    // Creating needs the whole organization (the repository does not exist yet), so the
    // token carries administration only: no contents, no workflows, on any repository.
    assert_eq!(creation.granted_repositories, None);
    assert_eq!(
        creation.granted_permissions,
        permissions(&[("administration", "write")]),
        "{creation:?}"
    );
    // The template is committed with a token for the new repository alone.
    assert_eq!(
        commit.granted_repositories,
        Some(vec!["tok-bot".to_owned()])
    );
    assert_eq!(
        commit.granted_permissions,
        permissions(&[("contents", "write"), ("workflows", "write")]),
        "{commit:?}"
    );
    // Each was revoked when its job was done: a second use fails.
    assert!(creation.revoked && commit.revoked, "{mints:?}");
    assert_refused_now(&mesh, &mints, "someone-else").await;
    assert_refused_now(&mesh, &mints, "tok-bot").await;
    for mint in &mints {
        assert!(!mesh.logs(SCAFFOLDER).contains(&mint.token));
        assert!(!mesh.logs(BROKER).contains(&mint.token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_repository_takes_the_organizations_repositories_in_any_letter_case() {
    let mesh = TestMesh::builder()
        .postgres()
        .github(Config::default())
        .service(BROKER)
        .start()
        .await;
    // The App is installed on another organization too: only the broker's rule refuses it.
    mesh.github().install("elsewhere");
    mesh.github().create_repository("elsewhere", "tool");
    mesh.github().create_repository(ORG, "app1");
    let mut scaffolder = mesh.broker_as("scaffolder").await;
    let register = |request_id: &str, project_id: &str, owner: &str, name: &str| {
        broker::RegisterRepositoryRequest {
            request_id: request_id.into(),
            project_id: project_id.into(),
            repository: Some(common::RepositoryRef {
                owner: owner.into(),
                name: name.into(),
                id: 0,
            }),
        }
    };

    let refused = scaffolder
        .register_repository(register("r-0", "p0", "elsewhere", "tool"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "REPOSITORY_OUTSIDE_ORGANIZATION");
    assert_eq!(info.metadata.get("organization").unwrap(), ORG);
    assert!(refused.message().contains("elsewhere/tool"), "{refused:?}");
    let clone = |project_id: &str| broker::MintRepositoryTokenRequest {
        scope: broker::RepositoryTokenScope::Clone as i32,
        project_id: project_id.into(),
        ..Default::default()
    };
    let mut infra = mesh.broker_as("infra").await;
    let none = infra.mint_repository_token(clone("p0")).await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound, "nothing was registered");

    // One repository, whatever its spelling: the same registration for its project...
    let first = scaffolder
        .register_repository(register("r-1", "p1", ORG, "app1"))
        .await
        .unwrap()
        .into_inner()
        .registration
        .unwrap();
    let again = scaffolder
        .register_repository(register("r-2", "p1", "ACME", "App1"))
        .await
        .unwrap()
        .into_inner()
        .registration
        .unwrap();
    assert_eq!(again.repository, first.repository);
    // ... and no second registration for another project.
    let taken = scaffolder
        .register_repository(register("r-3", "p2", "Acme", "APP1"))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    let minted = infra
        .mint_repository_token(clone("p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minted.repositories.len(), 1);
    assert!(minted.repositories[0].name.eq_ignore_ascii_case("app1"));
    infra.mint_repository_token(clone("p2")).await.unwrap_err();
}

/// A mint retried under the same request id (the first answer lost in flight) leaves one live
/// token: the broker revokes what the first attempt minted before answering the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_mint_revokes_the_token_of_the_earlier_attempt() {
    let mesh = TestMesh::builder()
        .postgres()
        .github(Config::default())
        .service(BROKER)
        .start()
        .await;
    for (request_id, project_id, name) in [("r-1", "p1", "app1"), ("r-2", "p2", "app2")] {
        mesh.github().create_repository(ORG, name);
        mesh.broker_as("scaffolder")
            .await
            .register_repository(broker::RegisterRepositoryRequest {
                request_id: request_id.into(),
                project_id: project_id.into(),
                repository: Some(common::RepositoryRef {
                    owner: ORG.into(),
                    name: name.into(),
                    id: 0,
                }),
            })
            .await
            .unwrap();
    }
    let clone = |project_id: &str, request_id: &str| broker::MintRepositoryTokenRequest {
        scope: broker::RepositoryTokenScope::Clone as i32,
        project_id: project_id.into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    let mut infra = mesh.broker_as("infra").await;
    let mut mint = async |project_id: &str, request_id: &str| {
        infra
            .mint_repository_token(clone(project_id, request_id))
            .await
            .map(|r| r.into_inner().token)
    };
    let first = mint("p1", "op-1/clone").await.unwrap();
    let retried = mint("p1", "op-1/clone").await.unwrap();
    assert_ne!(first, retried);
    let other = mint("p1", "op-2/clone").await.unwrap();

    let mints = mesh.github().stats().token_mints;
    assert_eq!(mints.len(), 3, "{mints:?}");
    assert_eq!(
        mints.iter().map(|m| m.revoked).collect::<Vec<_>>(),
        [true, false, false],
        "only the superseded attempt is revoked: {mints:?}"
    );
    assert_eq!(mints[0].token, first);
    assert_refused_now(&mesh, &mints[..1], "app1").await;
    let url = mesh.github().url();
    for live in [&retried, &other] {
        assert_eq!(
            raw::status_with_token(&url, "GET", &format!("/repos/{ORG}/app1"), live, "").await,
            200
        );
    }

    // An id is one request: the same id for another project is refused before any mint.
    let reused = mint("p2", "op-1/clone").await.unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");
    let fields: Vec<String> = reused
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["request_id"]);
    assert_eq!(mesh.github().stats().token_mints.len(), 3);
    for token in [&first, &retried, &other] {
        assert!(!mesh.logs(BROKER).contains(token.as_str()));
    }
}
