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

#[tokio::test]
async fn a_refused_secret_is_named_with_its_line_and_a_refusal_offers_no_resume() {
    let mesh = TestMesh::builder()
        .github(Config::default())
        .service(BROKER)
        .service(Service::Scaffolder)
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    let file = write_secret(
        mesh.pki().dir(),
        "app.env",
        "# first a good one\nGOOD=1\n\nBAD-NAME=2\n",
    )
    .unwrap();
    let out = mesh
        .orchctl(BROKER, &["secrets", "set", "p1", "--from-env-file", &file])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("secret BAD-NAME (line 4 of {file}): ")),
        "{stderr}"
    );
    assert!(!stderr.contains("secrets[1]"), "{stderr}");

    // A CreateProject refused for its input created nothing: no "retry to resume" hint.
    let out = mesh
        .orchctl(
            Service::Scaffolder,
            &["project", "create", "--name", "bad name", "--user", "u1"],
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");
    assert!(!stderr.contains("to resume"), "{stderr}");
}

#[tokio::test]
async fn the_list_shows_githubs_update_time_in_rfc_3339() {
    let mesh = TestMesh::builder()
        .github(Config::default())
        .service(BROKER)
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    let file = write_secret(mesh.pki().dir(), "one.env", "TOKEN=x\n").unwrap();
    let out = mesh
        .orchctl(BROKER, &["secrets", "set", "p1", "--from-env-file", &file])
        .await;
    assert!(out.status.success(), "{}", printed(&out));
    let out = mesh.orchctl(BROKER, &["secrets", "list", "p1"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row = text
        .lines()
        .find(|l| l.starts_with("TOKEN"))
        .unwrap_or_default();
    assert!(
        row.split_whitespace().any(is_rfc3339_to_the_second),
        "{text}"
    );
}

/// `2026-11-30T05:01:36Z`.
fn is_rfc3339_to_the_second(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 20
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
}
