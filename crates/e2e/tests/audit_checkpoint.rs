//! Audit checkpoints (issue 12.3): a service logs its chain head, MACed with its AUDIT_KEY, at
//! start, at an interval and at shutdown, and shows the sequence number on /metrics. The
//! database's owner who removes the newest records and sets the head back passes `orchctl
//! audit verify` alone (the documented limit), but not `--checkpoint` with the service's log.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::process::Stdio;
use std::time::Duration;

use orchestrator_audit::Checkpoint;
use orchestrator_e2e::{Secret, TestMesh, bin, write_secret};
use orchestrator_mesh::Service;
use orchestrator_proto::vault::v1 as pb;
use secrecy::ExposeSecret as _;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

const VAULT: Service = Service::Vault;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `orchctl audit verify --service vault` with the vault's database URL and audit key from
/// files, plus `extra` arguments, `stdin` written to it.
async fn verify(mesh: &TestMesh, dir: &std::path::Path, extra: &[&str], stdin: &[u8]) -> Run {
    let url = write_secret(dir, "database_url", mesh.db().url("vault").expose_secret()).unwrap();
    let key = mesh.secrets().path(Secret::AuditKey(VAULT));
    let mut child = Command::new(bin("orchctl"))
        .args(["audit", "verify", "--service", "vault"])
        .args(extra)
        .env_clear()
        .env("DATABASE_URL_FILE", url)
        .env("AUDIT_KEY_FILE", key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The vault's checkpoints in its log so far.
fn checkpoints(mesh: &TestMesh) -> Vec<Checkpoint> {
    Checkpoint::parse_all(&mesh.logs(VAULT), "vault").unwrap_or_default()
}

async fn the_database_cut_back_with_its_head_fails_against_a_checkpoint(backend: Backend) {
    let builder = match backend {
        Backend::Postgres => TestMesh::builder().postgres(),
        Backend::Sqlite => TestMesh::builder(),
    };
    let mut mesh = builder
        .service(VAULT)
        .env(VAULT, "ORCH_AUDIT_CHECKPOINT_INTERVAL", "200ms")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut api = mesh.vault_as("api").await;
    for i in 0..3 {
        api.put_user_secret(pb::PutUserSecretRequest {
            user_id: "u1".into(),
            key: format!("k{i}"),
            value: b"value".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Three puts, two records each.
    let head = 6;

    // An interval checkpoint names the head, and /metrics shows its sequence number.
    let mut waited = 0;
    while !checkpoints(&mesh).iter().any(|c| c.seq == head) {
        assert!(
            waited < 100,
            "no checkpoint of record {head}: {}",
            mesh.logs(VAULT)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let (status, metrics) = mesh.proc(VAULT).admin_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("orchestrator_audit_checkpoint_seq {head}")),
        "{metrics}"
    );
    // The MAC never reaches /metrics (a new series per interval); the start checkpoint is 0.
    assert!(!metrics.contains(&checkpoints(&mesh)[0].to_json()));
    assert_eq!(checkpoints(&mesh)[0].seq, 0);

    // A clean stop logs a last checkpoint.
    let pid = mesh.proc(VAULT).pid().unwrap();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut waited = 0;
    while mesh.proc_mut(VAULT).is_running() {
        assert!(waited < 200, "the vault did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let log = mesh.logs(VAULT);
    let last_line = log
        .lines()
        .rfind(|l| l.contains("audit checkpoint"))
        .unwrap();
    assert!(last_line.contains("shutdown"), "{last_line}");
    assert_eq!(checkpoints(&mesh).last().unwrap().seq, head);

    let run = verify(&mesh, dir.path(), &["--checkpoint", "-"], log.as_bytes()).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout.contains("checkpoint(s) up to record 6 hold"),
        "{run:#?}"
    );

    // The database's owner, past the triggers, removes the two newest records and sets the
    // head back to record 4: the chain alone still verifies.
    let cut = "DELETE FROM audit_log WHERE seq > 4; \
               UPDATE audit_head SET seq = 4, mac = (SELECT mac FROM audit_log WHERE seq = 4) WHERE id = 1";
    let bypass = if mesh.db().is_postgres() {
        format!("SET session_replication_role = replica; {cut}")
    } else {
        format!("DROP TRIGGER audit_log_no_delete; {cut}")
    };
    mesh.as_dba(VAULT, &bypass).await;
    let run = verify(&mesh, dir.path(), &[], b"").await;
    assert_eq!(run.code, Some(0), "the documented limit: {run:#?}");
    assert!(run.stderr.contains("without --checkpoint"), "{run:#?}");

    // With the service's log (from stdin), or one checkpoint as JSON in a file: behind.
    let run = verify(&mesh, dir.path(), &["--checkpoint", "-"], log.as_bytes()).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("BEHIND A CHECKPOINT"), "{run:#?}");
    assert!(run.stdout.contains("ends at record 4"), "{run:#?}");
    let last = checkpoints(&mesh).pop().unwrap();
    let file = dir.path().join("checkpoint.json");
    std::fs::write(&file, last.to_json()).unwrap();
    let file = file.to_str().unwrap();
    let run = verify(&mesh, dir.path(), &["--checkpoint", file], b"").await;
    assert_eq!(run.code, Some(1), "{run:#?}");

    // A checkpoint altered to fit (an earlier sequence number) fails its MAC.
    let mut forged = last.clone();
    forged.seq = 4;
    std::fs::write(dir.path().join("forged.json"), forged.to_json()).unwrap();
    let forged = dir.path().join("forged.json");
    let run = verify(
        &mesh,
        dir.path(),
        &["--checkpoint", forged.to_str().unwrap()],
        b"",
    )
    .await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("fails its MAC"), "{run:#?}");

    // No checkpoint of the vault in the input: exit 2, named.
    let run = verify(&mesh, dir.path(), &["--checkpoint", "-"], b"unrelated\n").await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("no audit checkpoint of vault"),
        "{run:#?}"
    );
}

mod postgres {
    #[tokio::test]
    async fn the_database_cut_back_with_its_head_fails_against_a_checkpoint() {
        super::the_database_cut_back_with_its_head_fails_against_a_checkpoint(
            super::Backend::Postgres,
        )
        .await;
    }
}

mod sqlite {
    #[tokio::test]
    async fn the_database_cut_back_with_its_head_fails_against_a_checkpoint() {
        super::the_database_cut_back_with_its_head_fails_against_a_checkpoint(
            super::Backend::Sqlite,
        )
        .await;
    }
}
