//! OpenTelemetry across processes: the real scaffolder, broker and vault export their spans over
//! OTLP/gRPC to an in-process receiver. One CreateProject is one trace, from the scaffolder's
//! server span through its call to the broker (the W3C trace context carried in the gRPC
//! metadata) to the broker's HTTP call to GitHub (the emulator); and no span carries a secret
//! value the request brought.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::collections::HashMap;
use std::time::Duration;

use orchestrator_e2e::{OtlpReceiver, ReceivedSpan, TestMesh, wait_until};
use orchestrator_github_emulator::Config;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;

const CREATE_PROJECT: &str = "orchestrator.scaffolder.v1.ScaffolderService/CreateProject";

/// Vault, broker and scaffolder exporting to `receiver`, each span batch sent within 50 ms.
async fn start(receiver: &OtlpReceiver) -> TestMesh {
    let mut builder = TestMesh::builder().github(Config::default());
    for service in [Service::Vault, Service::SecretBroker, Service::Scaffolder] {
        builder = builder
            .service(service)
            .env(service, "OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
            .env(service, "OTEL_BSP_SCHEDULE_DELAY", "50");
    }
    builder.start().await
}

fn create(request_id: &str, name: &str, token: &str) -> pb::CreateProjectRequest {
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
    pb::CreateProjectRequest {
        request_id: request_id.into(),
        name: name.into(),
        user_id: "u1".into(),
        template: pb::ProjectTemplate::DockerSsh as i32,
        description: "a bot".into(),
        visibility: pb::RepositoryVisibility::Private as i32,
        secrets_ref: Some(common::SecretsRef { entries }),
        initial_secrets: vec![common::ProjectSecretValue {
            name: "TELEGRAM_TOKEN".into(),
            value: token.as_bytes().to_vec(),
        }],
    }
}

/// `span` and its ancestors, nearest first, as far as they were received.
fn ancestry<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = vec![span];
    let mut current = span;
    while let Some(parent) = by_id.get(current.parent_span_id.as_str()) {
        assert!(chain.len() < spans.len(), "a cycle of parents");
        chain.push(parent);
        current = parent;
    }
    chain
}

/// The broker's HTTP call to GitHub that descends from the scaffolder's CreateProject, with its
/// ancestors; `None` until all of them were exported.
fn github_call_under_create_project(spans: &[ReceivedSpan]) -> Option<Vec<&ReceivedSpan>> {
    spans
        .iter()
        .filter(|s| {
            s.service == "secret-broker"
                && s.kind == ReceivedSpan::CLIENT
                && s.attribute("http.request.method").is_some()
        })
        .map(|s| ancestry(spans, s))
        .find(|chain| {
            chain.last().is_some_and(|root| {
                root.service == "scaffolder"
                    && root.name == CREATE_PROJECT
                    && root.kind == ReceivedSpan::SERVER
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_scaffolder_the_broker_and_the_github_call() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mesh = start(&receiver).await;
    let canary = format!("canary-{}", orchestrator_e2e::random_key());

    let answer = mesh
        .scaffolder_as("api")
        .await
        .create_project(create("req-trace", "traced-bot", &canary))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.project.unwrap().state,
        pb::ProjectState::Ready as i32
    );

    wait_until(
        "the broker's GitHub call is exported under the scaffolder's CreateProject",
        Duration::from_secs(30),
        || github_call_under_create_project(&receiver.spans()).is_some(),
    )
    .await;
    assert_eq!(traces_setting(&mesh, Service::Scaffolder), "\"otlp\"");
    let spans = receiver.spans();
    let chain = github_call_under_create_project(&spans).unwrap();
    let (http, root) = (chain[0], *chain.last().unwrap());

    // Every span of the chain is in the root's trace.
    assert!(
        chain.iter().all(|s| s.trace_id == root.trace_id),
        "{chain:#?}"
    );
    assert_eq!(root.parent_span_id, "", "the caller sent no trace context");
    assert_eq!(root.attribute("rpc.system"), Some("grpc"));
    assert_eq!(
        root.attribute("rpc.service"),
        Some("orchestrator.scaffolder.v1.ScaffolderService")
    );
    assert_eq!(root.attribute("rpc.method"), Some("CreateProject"));
    assert_eq!(
        root.attribute("orchestrator.caller"),
        Some("spiffe://orchestrator.local/api")
    );
    assert_eq!(root.attribute("rpc.grpc.status_code"), Some("0"));

    // The hop between processes: the broker's server span is the child of the scaffolder's
    // client span for the same RPC (the `traceparent` the scaffolder sent).
    let broker_server = chain
        .iter()
        .position(|s| s.service == "secret-broker" && s.kind == ReceivedSpan::SERVER)
        .expect("a broker server span in the chain");
    let scaffolder_client = chain[broker_server + 1];
    assert_eq!(scaffolder_client.service, "scaffolder");
    assert_eq!(scaffolder_client.kind, ReceivedSpan::CLIENT);
    assert_eq!(scaffolder_client.name, chain[broker_server].name);
    assert!(
        chain[broker_server]
            .name
            .starts_with("orchestrator.secretbroker.v1.SecretBrokerService/"),
        "{chain:#?}"
    );
    assert_eq!(
        chain[broker_server].attribute("orchestrator.caller"),
        Some("spiffe://orchestrator.local/scaffolder")
    );

    // The GitHub call: method, the emulator's host, a path without its query, the status.
    assert_eq!(http.attribute("server.address"), Some("127.0.0.1"));
    let path = http.attribute("url.path").unwrap();
    assert!(path.starts_with('/') && !path.contains('?'), "{path}");
    assert!(
        http.attribute("http.response.status_code").is_some(),
        "{http:#?}"
    );

    // The vault took part too (the scaffolder records grants there): same trace, or none.
    // No span anywhere carries the secret value the request brought.
    let raw = receiver.raw();
    assert!(!raw.is_empty());
    assert!(
        !raw.windows(canary.len()).any(|w| w == canary.as_bytes()),
        "a span carries the project's secret value"
    );
    // Nor does the log: the exported spans are not log spans.
    for service in [Service::Scaffolder, Service::SecretBroker] {
        let logs = mesh.logs(service);
        assert!(!logs.contains(&canary));
        assert!(!logs.contains("rpc.server"), "{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_switch_turns_export_off_and_says_so() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mesh = TestMesh::builder()
        .service(Service::Vault)
        .env(
            Service::Vault,
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            receiver.endpoint(),
        )
        .env(Service::Vault, "OTEL_SDK_DISABLED", "true")
        .start()
        .await;
    assert_eq!(traces_setting(&mesh, Service::Vault), "\"off\"");
}

/// The `traces` field of `service`'s start-up line (the log may colour the field's name).
fn traces_setting(mesh: &TestMesh, service: Service) -> String {
    let logs = mesh.logs(service);
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("{service} serving")))
        .unwrap_or_else(|| panic!("no start-up line: {logs}"));
    let (_, value) = line.rsplit_once("traces").unwrap();
    value
        .trim_start_matches(|c: char| c != '"')
        .trim()
        .to_owned()
}
