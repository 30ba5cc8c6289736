//! `orchctl secrets set|list|reconcile` against a real broker and the GitHub emulator.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{ORG, TestMesh, printed, write_secret};
use orchestrator_github_emulator::Config;
use orchestrator_mesh::Service;

const BROKER: Service = Service::SecretBroker;

#[tokio::test]
async fn set_list_and_reconcile_from_a_dotenv_file() {
    let mesh = TestMesh::builder()
        .github(Config::default())
        .service(BROKER)
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    let github = mesh.github();

    let canary = format!("canary-{}", orchestrator_e2e::random_key());
    let env_file = write_secret(
        mesh.pki().dir(),
        "app.env",
        &format!("# the bot\nTELEGRAM_TOKEN={canary}\nexport SSH_KEY=\"-----BEGIN-----\\nline\\n-----END-----\"\nNOTE='two\nlines'\n"),
    )
    .unwrap();
    let out = mesh
        .orchctl(
            BROKER,
            &["secrets", "set", "p1", "--from-env-file", &env_file],
        )
        .await;
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("created  TELEGRAM_TOKEN") && text.contains("3 of 3 written"),
        "{text}"
    );
    assert!(!text.contains(&canary));
    assert_eq!(
        github.secret(ORG, "app1", "TELEGRAM_TOKEN").unwrap(),
        canary.as_bytes()
    );
    assert_eq!(
        github.secret(ORG, "app1", "SSH_KEY").unwrap(),
        b"-----BEGIN-----\nline\n-----END-----"
    );
    assert_eq!(github.secret(ORG, "app1", "NOTE").unwrap(), b"two\nlines");

    let out = mesh.orchctl(BROKER, &["secrets", "list", "p1"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("TELEGRAM_TOKEN") && text.contains("present"),
        "{text}"
    );
    assert!(!text.contains(&canary));

    let out = mesh
        .orchctl(BROKER, &["secrets", "reconcile", "p1", "--dry-run"])
        .await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("3 in sync, 0 finding(s)"),
        "{text}"
    );

    // A bad name fails before anything reaches GitHub, and says which.
    let bad = write_secret(mesh.pki().dir(), "bad.env", "GITHUB_TOKEN=x\n").unwrap();
    let out = mesh
        .orchctl(BROKER, &["secrets", "set", "p1", "--from-env-file", &bad])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT"));
    assert!(!mesh.logs(BROKER).contains(&canary));
}
