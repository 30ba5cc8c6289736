//! `orchctl secrets set|list|reconcile` against a real broker and the GitHub emulator.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{Launch, Pki, bin, github_emulator, write_secret};
use orchestrator_github_emulator::Config;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;

#[tokio::test]
async fn set_list_and_reconcile_from_a_dotenv_file() {
    let github = github_emulator("acme", Config::default()).await.unwrap();
    github.create_repository("acme", "app1");
    let pki = Pki::new().unwrap();
    let broker = Launch::new(Service::SecretBroker, &pki)
        .unwrap()
        .github(&github, "acme")
        .spawn()
        .await
        .unwrap();
    let mut scaffolder = SecretBrokerServiceClient::new(
        broker
            .channel(&pki.client("scaffolder").unwrap())
            .await
            .unwrap(),
    );
    scaffolder
        .register_repository(pb::RegisterRepositoryRequest {
            request_id: "r".into(),
            project_id: "p1".into(),
            repository: Some(common::RepositoryRef {
                owner: "acme".into(),
                name: "app1".into(),
                id: 0,
            }),
        })
        .await
        .unwrap();

    let canary = format!("canary-{}", orchestrator_e2e::random_key());
    let env_file = write_secret(
        pki.dir(),
        "app.env",
        &format!("# the bot\nTELEGRAM_TOKEN={canary}\nexport SSH_KEY=\"-----BEGIN-----\\nline\\n-----END-----\"\nNOTE='two\nlines'\n"),
    )
    .unwrap();
    // Async: the emulator runs on this test's runtime and must keep answering meanwhile.
    let orchctl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(bin("orchctl"));
        cmd.args(args)
            .arg("--pki")
            .arg(pki.dir())
            .arg("--target")
            .arg(broker.grpc.to_string());
        async move { cmd.output().await.unwrap() }
    };
    let out = orchctl(&["secrets", "set", "p1", "--from-env-file", &env_file]).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("created  TELEGRAM_TOKEN") && text.contains("3 of 3 written"),
        "{text}"
    );
    assert!(!text.contains(&canary));
    assert_eq!(
        github.secret("acme", "app1", "TELEGRAM_TOKEN").unwrap(),
        canary.as_bytes()
    );
    assert_eq!(
        github.secret("acme", "app1", "SSH_KEY").unwrap(),
        b"-----BEGIN-----\nline\n-----END-----"
    );
    assert_eq!(
        github.secret("acme", "app1", "NOTE").unwrap(),
        b"two\nlines"
    );

    let out = orchctl(&["secrets", "list", "p1"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("TELEGRAM_TOKEN") && text.contains("present"),
        "{text}"
    );
    assert!(!text.contains(&canary));

    let out = orchctl(&["secrets", "reconcile", "p1", "--dry-run"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("3 in sync, 0 finding(s)"),
        "{text}"
    );

    // A bad name fails before anything reaches GitHub, and says which.
    let bad = write_secret(pki.dir(), "bad.env", "GITHUB_TOKEN=x\n").unwrap();
    let out = orchctl(&["secrets", "set", "p1", "--from-env-file", &bad]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT"));
    assert!(!broker.logs().contains(&canary));
}
