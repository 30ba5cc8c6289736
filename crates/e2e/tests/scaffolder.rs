//! The scaffolder over real mTLS with a real broker, against the GitHub emulator: one
//! repository per project, the deploy workflow committed, initial secrets pushed (and
//! decryptable at GitHub), retries resume without duplicates, bad input creates nothing.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::collections::HashMap;
use std::time::Duration;

use orchestrator_e2e::{ORG, TestMesh, printed, violated_fields, wait_until, write_secret};
use orchestrator_github_emulator::{Config, Faults};
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;
use orchestrator_proto::scaffolder::v1::scaffolder_service_client::ScaffolderServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const CREATE_REPO: &str = "POST /orgs/{org}/repos";
const BROKER: Service = Service::SecretBroker;
const SCAFFOLDER: Service = Service::Scaffolder;

/// A scaffolder and its broker on PostgreSQL, against the GitHub emulator, and the vault where
/// the scaffolder records the grants of a project's vault entries.
async fn start() -> TestMesh {
    TestMesh::builder()
        .postgres()
        .github(Config::default())
        .service(Service::Vault)
        .service(BROKER)
        .service(SCAFFOLDER)
        .start()
        .await
}

/// The project CreateProject answers with, for a request that must succeed.
async fn created(
    api: &mut ScaffolderServiceClient<Channel>,
    request: pb::CreateProjectRequest,
) -> pb::Project {
    api.create_project(request)
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap()
}

fn create(request_id: &str, name: &str, initial: &[(&str, &[u8])]) -> pb::CreateProjectRequest {
    let mut entries = HashMap::new();
    entries.insert(
        "bot_token".to_owned(),
        common::SecretTarget {
            target: Some(common::secret_target::Target::GithubSecret(
                common::GitHubSecretTarget {
                    name: "TELEGRAM_TOKEN".into(),
                    location: None,
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
    let mesh = start().await;
    let mut api = mesh.scaffolder_as("api").await;
    let created = api
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
    assert_eq!(
        mesh.github().stats().requests.get(CREATE_REPO).copied(),
        Some(1)
    );
    let workflow = String::from_utf8(
        mesh.github()
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
        mesh.github()
            .secret(ORG, "my-bot", "TELEGRAM_TOKEN")
            .unwrap(),
        canary.as_bytes()
    );
    let full = api
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
    let again = api
        .create_project(create(
            "req-1",
            "my-bot",
            &[("TELEGRAM_TOKEN", canary.as_bytes())],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.project.unwrap().id, project.id);
    assert_eq!(
        mesh.github().stats().requests.get(CREATE_REPO).copied(),
        Some(1)
    );
    let listed = api
        .list_projects(pb::ListProjectsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.projects.len(), 1);

    // The canary is in no table of the scaffolder and no log line of either service.
    for service in [SCAFFOLDER, BROKER] {
        assert!(!mesh.logs(service).contains(&canary));
    }
    mesh.assert_absent_from_tables(
        SCAFFOLDER,
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
    let mesh = start().await;
    let mut api = mesh.scaffolder_as("api").await;
    let mut bad = create("req-bad", "bad name!", &[("NOT_IN_REF", b"v")]);
    bad.template = 0;
    let err = api.create_project(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violated_fields(&err);
    assert!(
        fields.contains(&"name".to_owned())
            && fields.contains(&"template".to_owned())
            && fields.contains(&"initial_secrets[0].name".to_owned()),
        "{fields:?}"
    );
    assert_eq!(mesh.github().stats().requests.get(CREATE_REPO), None);

    // The name is taken at GitHub by someone else: ALREADY_EXISTS with GitHub's reason.
    mesh.github().create_repository(ORG, "taken");
    let err = api
        .create_project(create("req-taken", "taken", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("taken"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolder_killed_after_the_repository_was_created_finishes_on_retry() {
    let mut mesh = start().await;
    let api = mesh.scaffolder_as("api").await;
    // Hold the scaffolder right after it created the repository: committing files is slow.
    mesh.github().set_faults_for(
        "PUT /repos/{owner}/{repo}/contents/{*path}",
        Faults {
            latency: Duration::from_secs(30),
            ..Faults::default()
        },
    );
    let mut api = api.clone();
    let attempt =
        tokio::spawn(async move { api.create_project(create("req-crash", "crashy", &[])).await });
    wait_until(
        "the repository was never created",
        Duration::from_secs(20),
        || mesh.github().stats().requests.contains_key(CREATE_REPO),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.kill(SCAFFOLDER).await;
    assert!(attempt.await.unwrap().is_err());
    mesh.github().set_faults_for(
        "PUT /repos/{owner}/{repo}/contents/{*path}",
        Faults::default(),
    );

    mesh.restart(SCAFFOLDER).await;
    let mut api = mesh.scaffolder_as("api").await;
    let project = created(&mut api, create("req-crash", "crashy", &[])).await;
    assert_eq!(project.state, pb::ProjectState::Ready as i32);
    assert_eq!(
        mesh.github().stats().requests.get(CREATE_REPO).copied(),
        Some(1),
        "a second repository was created"
    );
    assert!(
        mesh.github()
            .file(ORG, "crashy", ".github/workflows/deploy.yml")
            .is_some()
    );
}

/// The broker down: CreateProject answers UNAVAILABLE naming the broker (not a bare transport
/// error), creates no repository, and the same request finishes once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_is_unavailable_naming_it_and_the_retry_finishes() {
    let mut mesh = start().await;
    let mut api = mesh.scaffolder_as("api").await;
    mesh.kill(BROKER).await;
    let down = api
        .create_project(create("req-down", "waits", &[]))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert_eq!(
        down.get_error_details().error_info().unwrap().reason,
        "SECRET_BROKER_UNAVAILABLE"
    );
    assert!(!mesh.github().stats().requests.contains_key(CREATE_REPO));
    // The broker back on its address: the same request finishes.
    let addr = mesh.proc(BROKER).grpc;
    mesh.spawn(mesh.launch(BROKER).at(addr)).await;
    let project = created(&mut api, create("req-down", "waits", &[])).await;
    assert_eq!(project.state, pb::ProjectState::Ready as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchctl_project_create_get_and_list() {
    let mesh = start().await;
    let init = write_secret(
        mesh.pki().dir(),
        "init.env",
        "TELEGRAM_TOKEN=canary-cli-7\n",
    )
    .unwrap();
    let out = mesh
        .orchctl(
            SCAFFOLDER,
            &[
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
            ],
        )
        .await;
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("cli-bot") && text.contains("ready") && text.contains("TELEGRAM_TOKEN"),
        "{text}"
    );
    assert!(!text.contains("canary-cli-7"));
    let id = text.split_whitespace().next().unwrap().to_owned();
    let out = mesh.orchctl(SCAFFOLDER, &["project", "get", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("bot_token") && text.contains("present"),
        "{text}"
    );
    let out = mesh
        .orchctl(SCAFFOLDER, &["project", "list", "--user", "u9"])
        .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    assert_eq!(
        mesh.github()
            .secret(ORG, "cli-bot", "TELEGRAM_TOKEN")
            .unwrap(),
        b"canary-cli-7"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_generated_from_a_template_repository_when_one_is_configured() {
    let mut mesh = start().await;
    mesh.github()
        .create_template_repository(ORG, "service-template");
    mesh.github()
        .put_file_directly(ORG, "service-template", "Dockerfile", b"FROM scratch\n");
    // The template carries a workflow of its own: ours must replace it, with its `sha`.
    let template_workflow = b"# the template's placeholder workflow\n";
    mesh.github().put_file_directly(
        ORG,
        "service-template",
        ".github/workflows/deploy.yml",
        template_workflow,
    );
    let launch = mesh.launch(SCAFFOLDER).env(
        "SCAFFOLDER_TEMPLATE_REPOSITORY",
        format!("{ORG}/service-template"),
    );
    mesh.spawn(launch).await;
    let mut api = mesh.scaffolder_as("api").await;
    let project = created(&mut api, create("req-gen", "from-template", &[])).await;
    assert_eq!(project.state, pb::ProjectState::Ready as i32);
    // Whatever the scaffolder did, the template's copy (500 ms after the generate call) has
    // landed by now: what the repository holds is final.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(
        mesh.github()
            .file(ORG, "from-template", "Dockerfile")
            .unwrap(),
        b"FROM scratch\n"
    );
    // GitHub copies the template after answering (the emulator 500 ms later): the scaffolder
    // waited for the copy's commit, then updated the template's workflow. Written before the
    // copy landed, ours would have been replaced by the template's.
    let workflow = mesh
        .github()
        .file(ORG, "from-template", ".github/workflows/deploy.yml")
        .expect("a workflow is committed");
    assert_ne!(
        workflow, template_workflow,
        "the template's workflow is left"
    );
    let workflow = String::from_utf8(workflow).unwrap();
    assert!(workflow.contains("# Deploys from-template"), "{workflow}");
    assert!(
        mesh.github()
            .stats()
            .requests
            .contains_key("GET /repos/{owner}/{repo}/commits"),
        "waits for the generated repository's first commit"
    );
    assert_eq!(
        mesh.github().stats().requests.get(CREATE_REPO),
        None,
        "generated, not created empty"
    );
    // Generating reads the (private) template: the creation token may read, and write nothing.
    let creation = &mesh.github().stats().token_mints[0];
    assert_eq!(
        creation.granted_permissions,
        [
            ("administration".to_owned(), "write".to_owned()),
            ("contents".to_owned(), "read".to_owned())
        ]
        .into()
    );
    assert!(creation.revoked);
}

/// Two scaffolder replicas on one database get the same CreateProject at once (a client that
/// retried through a load balancer): both answer with the one project, ready, and one
/// repository holds its workflow. (Before, the loser answered PROJECT_NAME_TAKEN.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_on_two_replicas_at_once_makes_one_project() {
    let mesh = start().await;
    let b = mesh.launch(SCAFFOLDER).spawn().await.unwrap();
    let mut on_a = mesh.scaffolder_as("api").await;
    let mut on_b = ScaffolderServiceClient::new(mesh.channel_to(&b, "api").await);
    let request = create("req-twice", "twin-bot", &[("TELEGRAM_TOKEN", b"v")]);
    let (one, two) = tokio::join!(
        on_a.create_project(request.clone()),
        on_b.create_project(request)
    );
    let (one, two) = (
        one.unwrap().into_inner().project.unwrap(),
        two.unwrap().into_inner().project.unwrap(),
    );
    assert_eq!(one.id, two.id);
    assert_eq!(
        (one.state, two.state),
        (
            pb::ProjectState::Ready as i32,
            pb::ProjectState::Ready as i32
        )
    );
    let listed = on_b
        .list_projects(pb::ListProjectsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .projects;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        mesh.github()
            .file(ORG, "twin-bot", ".github/workflows/deploy.yml")
            .is_some()
    );
    assert_eq!(
        mesh.github()
            .secret(ORG, "twin-bot", "TELEGRAM_TOKEN")
            .unwrap(),
        b"v"
    );
}
