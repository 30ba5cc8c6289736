//! The scaffolder over real mTLS with a real broker, against the GitHub emulator: one
//! repository per project, the deploy workflow committed, initial secrets pushed (and
//! decryptable at GitHub), retries resume without duplicates, bad input creates nothing.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::collections::HashMap;
use std::time::Duration;

use orchestrator_e2e::{Launch, Pki, Proc, github_emulator};
use orchestrator_github_emulator::{Config, Emulator, Faults};
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;
use orchestrator_proto::scaffolder::v1::scaffolder_service_client::ScaffolderServiceClient;
use orchestrator_store::testing::TestDatabase;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const ORG: &str = "acme";
const CREATE_REPO: &str = "POST /orgs/{org}/repos";

struct Harness {
    pki: Pki,
    db: TestDatabase,
    github: Emulator,
    broker: Proc,
    scaffolder: Proc,
    api: ScaffolderServiceClient<Channel>,
}

async fn scaffolder_launch(
    pki: &Pki,
    db: &TestDatabase,
    github: &Emulator,
    broker: &Proc,
) -> Launch {
    Launch::new(Service::Scaffolder, pki)
        .unwrap()
        .database(&db.url("scaffolder"))
        .github(github, ORG)
        .env("SCAFFOLDER_BROKER_ADDR", broker.grpc.to_string())
}

async fn start() -> Harness {
    let pki = Pki::new().unwrap();
    let db = TestDatabase::postgres(&["scaffolder", "secret-broker"]).await;
    let github = github_emulator(ORG, Config::default()).await.unwrap();
    let broker = Launch::new(Service::SecretBroker, &pki)
        .unwrap()
        .database(&db.url("secret-broker"))
        .github(&github, ORG)
        .spawn()
        .await
        .unwrap();
    let scaffolder = scaffolder_launch(&pki, &db, &github, &broker)
        .await
        .spawn()
        .await
        .unwrap();
    let api = ScaffolderServiceClient::new(
        scaffolder
            .channel(&pki.client("api").unwrap())
            .await
            .unwrap(),
    );
    Harness {
        pki,
        db,
        github,
        broker,
        scaffolder,
        api,
    }
}

fn create(request_id: &str, name: &str, initial: &[(&str, &[u8])]) -> pb::CreateProjectRequest {
    let mut entries = HashMap::new();
    entries.insert(
        "bot_token".to_owned(),
        common::SecretTarget {
            target: Some(common::secret_target::Target::GithubSecret(
                common::GitHubSecretTarget {
                    name: "TELEGRAM_TOKEN".into(),
                },
            )),
        },
    );
    entries.insert(
        "do_token".to_owned(),
        common::SecretTarget {
            target: Some(common::secret_target::Target::VaultEntry(
                common::VaultEntryRef {
                    user_id: "u1".into(),
                    key: "do".into(),
                    version: 0,
                },
            )),
        },
    );
    pb::CreateProjectRequest {
        request_id: request_id.into(),
        name: name.into(),
        user_id: "u1".into(),
        template: pb::ProjectTemplate::DockerSsh as i32,
        description: "a bot".into(),
        visibility: pb::RepositoryVisibility::Private as i32,
        secrets_ref: Some(common::SecretsRef { entries }),
        initial_secrets: initial
            .iter()
            .map(|(n, v)| common::ProjectSecretValue {
                name: (*n).into(),
                value: v.to_vec(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_project_makes_one_repository_with_the_workflow_and_the_secrets() {
    let canary = format!("canary-{}", orchestrator_e2e::random_key());
    let mut h = start().await;
    let created = h
        .api
        .create_project(create(
            "req-1",
            "my-bot",
            &[("TELEGRAM_TOKEN", canary.as_bytes())],
        ))
        .await
        .unwrap()
        .into_inner();
    let project = created.project.unwrap();
    assert_eq!(project.state, pb::ProjectState::Ready as i32);
    assert_eq!(created.initial_secret_results.len(), 1);
    assert_eq!(h.github.stats().requests.get(CREATE_REPO).copied(), Some(1));
    let workflow = String::from_utf8(
        h.github
            .file(ORG, "my-bot", ".github/workflows/deploy.yml")
            .expect("the workflow is committed"),
    )
    .unwrap();
    assert!(
        workflow.contains("${{ secrets.TELEGRAM_TOKEN }}"),
        "{workflow}"
    );
    assert!(!workflow.contains(&canary));
    // GitHub can read the secret; the broker and scaffolder keep references only.
    assert_eq!(
        h.github.secret(ORG, "my-bot", "TELEGRAM_TOKEN").unwrap(),
        canary.as_bytes()
    );
    let full = h
        .api
        .get_project(pb::GetProjectRequest {
            project_id: project.id.clone(),
            view: pb::ProjectView::Full as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(
        full.secret_presence["bot_token"],
        common::SecretPresence::Present as i32
    );
    assert_eq!(
        full.secret_presence["do_token"],
        common::SecretPresence::Unknown as i32
    );

    // The same request again: the same project, nothing created twice.
    let again = h
        .api
        .create_project(create(
            "req-1",
            "my-bot",
            &[("TELEGRAM_TOKEN", canary.as_bytes())],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.project.unwrap().id, project.id);
    assert_eq!(h.github.stats().requests.get(CREATE_REPO).copied(), Some(1));
    let listed = h
        .api
        .list_projects(pb::ListProjectsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.projects.len(), 1);

    // The canary is in no table of the scaffolder and no log line of either service.
    for proc in [&h.scaffolder, &h.broker] {
        assert!(!proc.logs().contains(&canary));
    }
    orchestrator_e2e::assert_absent_from_tables(
        &h.db,
        "scaffolder",
        &[
            "scaffolder.projects",
            "scaffolder.audit_log",
            "secret_broker.secret_refs",
            "secret_broker.audit_log",
        ],
        &[&canary],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_github_refusals_create_nothing() {
    let mut h = start().await;
    let mut bad = create("req-bad", "bad name!", &[("NOT_IN_REF", b"v")]);
    bad.template = 0;
    let err = h.api.create_project(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<_> = err
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|f| f.field.clone())
        .collect();
    assert!(
        fields.contains(&"name".to_owned())
            && fields.contains(&"template".to_owned())
            && fields.contains(&"initial_secrets[0].name".to_owned()),
        "{fields:?}"
    );
    assert_eq!(h.github.stats().requests.get(CREATE_REPO), None);

    // The name is taken at GitHub by someone else: ALREADY_EXISTS with GitHub's reason.
    h.github.create_repository(ORG, "taken");
    let err = h
        .api
        .create_project(create("req-taken", "taken", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("taken"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolder_killed_after_the_repository_was_created_finishes_on_retry() {
    let mut h = start().await;
    // Hold the scaffolder right after it created the repository: committing files is slow.
    h.github.set_faults_for(
        "PUT /repos/{owner}/{repo}/contents/{*path}",
        Faults {
            latency: Duration::from_secs(30),
            ..Faults::default()
        },
    );
    let mut api = h.api.clone();
    let attempt =
        tokio::spawn(async move { api.create_project(create("req-crash", "crashy", &[])).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !h.github.stats().requests.contains_key(CREATE_REPO) {
        assert!(
            std::time::Instant::now() < deadline,
            "the repository was never created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.scaffolder.kill().await;
    assert!(attempt.await.unwrap().is_err());
    h.github.set_faults_for(
        "PUT /repos/{owner}/{repo}/contents/{*path}",
        Faults::default(),
    );

    let restarted = scaffolder_launch(&h.pki, &h.db, &h.github, &h.broker)
        .await
        .spawn()
        .await
        .unwrap();
    let mut api = ScaffolderServiceClient::new(
        restarted
            .channel(&h.pki.client("api").unwrap())
            .await
            .unwrap(),
    );
    let project = api
        .create_project(create("req-crash", "crashy", &[]))
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(project.state, pb::ProjectState::Ready as i32);
    assert_eq!(
        h.github.stats().requests.get(CREATE_REPO).copied(),
        Some(1),
        "a second repository was created"
    );
    assert!(
        h.github
            .file(ORG, "crashy", ".github/workflows/deploy.yml")
            .is_some()
    );
}

/// The broker down: CreateProject answers UNAVAILABLE naming the broker (not a bare transport
/// error), creates no repository, and the same request finishes once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_is_unavailable_naming_it_and_the_retry_finishes() {
    let mut h = start().await;
    h.broker.kill().await;
    let down = h
        .api
        .create_project(create("req-down", "waits", &[]))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert_eq!(
        down.get_error_details().error_info().unwrap().reason,
        "SECRET_BROKER_UNAVAILABLE"
    );
    assert!(!h.github.stats().requests.contains_key(CREATE_REPO));
    // The broker back on its address: the same request finishes.
    let addr = h.broker.grpc;
    h.broker = Launch::new(Service::SecretBroker, &h.pki)
        .unwrap()
        .database(&h.db.url("secret-broker"))
        .github(&h.github, ORG)
        .env("ORCH_LISTEN_ADDR", addr.to_string())
        .spawn()
        .await
        .unwrap();
    let project = h
        .api
        .create_project(create("req-down", "waits", &[]))
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(project.state, pb::ProjectState::Ready as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchctl_project_create_get_and_list() {
    let h = start().await;
    let init =
        orchestrator_e2e::write_secret(h.pki.dir(), "init.env", "TELEGRAM_TOKEN=canary-cli-7\n")
            .unwrap();
    let orchctl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(orchestrator_e2e::bin("orchctl"));
        cmd.args(args)
            .arg("--pki")
            .arg(h.pki.dir())
            .arg("--target")
            .arg(h.scaffolder.grpc.to_string());
        async move { cmd.output().await.unwrap() }
    };
    let out = orchctl(&[
        "project",
        "create",
        "--name",
        "cli-bot",
        "--user",
        "u9",
        "--secret",
        "bot_token=TELEGRAM_TOKEN",
        "--initial-secrets-file",
        &init,
    ])
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("cli-bot") && text.contains("ready") && text.contains("TELEGRAM_TOKEN"),
        "{text}"
    );
    assert!(!text.contains("canary-cli-7"));
    let id = text.split_whitespace().next().unwrap().to_owned();
    let out = orchctl(&["project", "get", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("bot_token") && text.contains("present"),
        "{text}"
    );
    let out = orchctl(&["project", "list", "--user", "u9"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    assert_eq!(
        h.github.secret(ORG, "cli-bot", "TELEGRAM_TOKEN").unwrap(),
        b"canary-cli-7"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_generated_from_a_template_repository_when_one_is_configured() {
    let h = start().await;
    h.github.create_template_repository(ORG, "service-template");
    h.github
        .put_file_directly(ORG, "service-template", "Dockerfile", b"FROM scratch\n");
    let scaffolder = scaffolder_launch(&h.pki, &h.db, &h.github, &h.broker)
        .await
        .env(
            "SCAFFOLDER_TEMPLATE_REPOSITORY",
            format!("{ORG}/service-template"),
        )
        .spawn()
        .await
        .unwrap();
    let mut api = ScaffolderServiceClient::new(
        scaffolder
            .channel(&h.pki.client("api").unwrap())
            .await
            .unwrap(),
    );
    let project = api
        .create_project(create("req-gen", "from-template", &[]))
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(project.state, pb::ProjectState::Ready as i32);
    assert_eq!(
        h.github.file(ORG, "from-template", "Dockerfile").unwrap(),
        b"FROM scratch\n"
    );
    assert!(
        h.github
            .file(ORG, "from-template", ".github/workflows/deploy.yml")
            .is_some()
    );
    assert_eq!(
        h.github.stats().requests.get(CREATE_REPO),
        None,
        "generated, not created empty"
    );
}
