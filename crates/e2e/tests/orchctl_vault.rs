//! `orchctl vault put|list|delete` against a real vault process (values from stdin or a file,
//! never argv, never printed), and `orchctl audit verify` naming a record edited behind the
//! service's back, on SQLite (flags, state directory) and PostgreSQL (the service's own role).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use orchestrator_e2e::{
    Launch, Pki, Proc, Secret, StateDir, TestMesh, bin, random_key, write_secret,
};
use orchestrator_mesh::Service;
use secrecy::ExposeSecret as _;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

const VAULT: Service = Service::Vault;

/// One finished `orchctl` run.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The command line as the kernel saw it (`/proc/<pid>/cmdline`), and its environment.
    argv: String,
    environ: String,
}

impl Run {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "orchctl failed: {self:#?}");
        self
    }

    /// Asserts that `canary` appears nowhere this run exposes.
    fn never_shows(&self, canary: &str) -> &Self {
        for (what, text) in [
            ("stdout", &self.stdout),
            ("stderr", &self.stderr),
            ("argv", &self.argv),
            ("environment", &self.environ),
        ] {
            assert!(
                !text.contains(canary),
                "the value appears in orchctl's {what}"
            );
        }
        self
    }
}

/// Runs `orchctl args` with only `env` in its environment, writing `stdin` (then closing it).
async fn orchctl(args: &[String], env: &[(&str, String)], stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(bin("orchctl"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The process waits on stdin: read what other local users can see of it. Its arguments
    // appear a moment after spawn returns (the kernel sets them up late in exec).
    let pid = child.id().unwrap();
    let proc_file = |name: &str| {
        std::fs::read(format!("/proc/{pid}/{name}"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    let mut argv = proc_file("cmdline");
    for _ in 0..100 {
        if !argv.is_empty() || child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        argv = proc_file("cmdline");
    }
    let environ = proc_file("environ");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("orchctl did not finish within 60s")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        argv,
        environ,
    }
}

fn args(parts: &[&str], conn: &[String]) -> Vec<String> {
    parts
        .iter()
        .map(|s| (*s).to_owned())
        .chain(conn.iter().cloned())
        .collect()
}

/// The flags that point orchctl at this vault with this PKI (as `api`, the default).
fn conn(pki: &Pki, vault: &Proc) -> Vec<String> {
    vec![
        "--pki".into(),
        pki.dir().display().to_string(),
        "--target".into(),
        vault.grpc.to_string(),
    ]
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// A value no one could guess or find by accident.
fn canary() -> String {
    format!("canary-{}", random_key())
}

async fn put_two_secrets(pki: &Pki, vault: &Proc, dir: &Path) -> (String, String) {
    let conn = conn(pki, vault);
    let (stdin_canary, file_canary) = (canary(), canary());
    // From stdin, keeping the newline by default.
    let run = orchctl(
        &args(
            &["vault", "put", "--user", "alice", "--key", "do/token"],
            &conn,
        ),
        &[],
        Some(format!("{stdin_canary}\n").as_bytes()),
    )
    .await;
    run.ok().never_shows(&stdin_canary);
    assert_eq!(
        run.stdout.trim(),
        "stored vault secret do/token for user alice: version 1"
    );
    // The command line was read from the live process (it waited for stdin).
    assert!(
        run.argv.contains("orchctl vault put --user alice"),
        "{run:#?}"
    );
    // Again from stdin, with --strip-newline and check-and-set.
    let run = orchctl(
        &args(
            &[
                "vault",
                "put",
                "--user",
                "alice",
                "--key",
                "do/token",
                "--strip-newline",
                "--expected-version",
                "1",
            ],
            &conn,
        ),
        &[],
        Some(format!("{stdin_canary}\n").as_bytes()),
    )
    .await;
    run.ok().never_shows(&stdin_canary);
    assert!(run.stdout.contains("version 2"), "{run:#?}");
    // From a file.
    let file = write_secret(dir, "value", &file_canary).unwrap();
    let run = orchctl(
        &args(
            &[
                "vault", "put", "--user", "alice", "--key", "gh/pat", "--file", &file,
            ],
            &conn,
        ),
        &[],
        None,
    )
    .await;
    run.ok().never_shows(&file_canary);
    assert_eq!(
        run.stdout.trim(),
        "stored vault secret gh/pat for user alice: version 1"
    );
    (stdin_canary, file_canary)
}

#[tokio::test]
async fn vault_put_list_delete_and_audit_verify() {
    let mesh = TestMesh::builder().service(VAULT).start().await;
    let (pki, vault) = (mesh.pki(), mesh.proc(VAULT));
    let dir = tempfile::tempdir().unwrap();
    let database_url = mesh.db().url("vault").expose_secret().to_owned();
    let audit_key_file = path(&mesh.secrets().path(Secret::AuditKey(VAULT)));
    let conn = conn(pki, vault);

    let (stdin_canary, file_canary) = put_two_secrets(pki, vault, dir.path()).await;
    let canaries = [stdin_canary.as_str(), file_canary.as_str()];
    let mut runs = Vec::new();

    // Check-and-set refused: the code, the reason and the current version, no value.
    let run = orchctl(
        &args(
            &[
                "vault",
                "put",
                "--user",
                "alice",
                "--key",
                "do/token",
                "--expected-version",
                "0",
            ],
            &conn,
        ),
        &[],
        Some(stdin_canary.as_bytes()),
    )
    .await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    for part in [
        "FAILED_PRECONDITION",
        "VERSION_MISMATCH",
        "current_version: 2",
    ] {
        assert!(run.stderr.contains(part), "{part}: {run:#?}");
    }
    runs.push(run);

    // A bad key name: INVALID_ARGUMENT with its field violation.
    let run = orchctl(
        &args(
            &["vault", "put", "--user", "alice", "--key", "bad key!"],
            &conn,
        ),
        &[],
        Some(b"v"),
    )
    .await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("INVALID_ARGUMENT"), "{run:#?}");
    assert!(run.stderr.contains("field key"), "{run:#?}");
    runs.push(run);

    // An empty value is refused before anything is sent.
    let run = orchctl(
        &args(&["vault", "put", "--user", "alice", "--key", "k"], &conn),
        &[],
        Some(b""),
    )
    .await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("the value is empty"), "{run:#?}");

    // List, one key per page: every page is followed; names and versions, never values.
    let run = orchctl(
        &args(
            &["vault", "list", "--user", "alice", "--page-size", "1"],
            &conn,
        ),
        &[],
        None,
    )
    .await;
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run:#?}");
    assert!(lines[0].starts_with("KEY"), "{run:#?}");
    let row = |key: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no row for {key}: {run:#?}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("do/token")[1..3], ["2", "2/0/0"]);
    assert_eq!(row("gh/pat")[1..3], ["1", "1/0/0"]);
    runs.push(run);

    // Delete one version, destroy another, delete a whole key; an unknown key is NOT_FOUND.
    let delete = |extra: &[&str]| {
        let mut a = args(&["vault", "delete", "--user", "alice"], &conn);
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let run = orchctl(&delete(&["--key", "do/token", "--version", "1"]), &[], None).await;
    run.ok();
    assert_eq!(
        run.stdout.trim(),
        "deleted version 1 of vault secret do/token for user alice"
    );
    runs.push(run);
    let run = orchctl(
        &delete(&["--key", "do/token", "--version", "2", "--destroy"]),
        &[],
        None,
    )
    .await;
    run.ok();
    assert!(run.stdout.starts_with("destroyed version 2"), "{run:#?}");
    runs.push(run);
    let run = orchctl(&delete(&["--key", "gh/pat"]), &[], None).await;
    run.ok();
    runs.push(run);
    let run = orchctl(&delete(&["--key", "nope"]), &[], None).await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("NOT_FOUND"), "{run:#?}");
    runs.push(run);

    // Deleted keys show only with --show-deleted, with their version states.
    let run = orchctl(
        &args(&["vault", "list", "--user", "alice"], &conn),
        &[],
        None,
    )
    .await;
    run.ok();
    assert_eq!(run.stdout.trim(), "no vault secrets for user alice");
    runs.push(run);
    let run = orchctl(
        &args(
            &["vault", "list", "--user", "alice", "--show-deleted"],
            &conn,
        ),
        &[],
        None,
    )
    .await;
    run.ok();
    assert!(run.stdout.contains("0/1/1"), "{run:#?}");
    assert!(run.stdout.contains("0/1/0"), "{run:#?}");
    runs.push(run);

    // Another identity than api is refused by the vault's policy.
    let run = orchctl(
        &args(
            &["vault", "list", "--user", "alice", "--identity", "operator"],
            &conn,
        ),
        &[],
        None,
    )
    .await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("PERMISSION_DENIED"), "{run:#?}");
    runs.push(run);

    for run in &runs {
        for canary in canaries {
            run.never_shows(canary);
        }
    }
    for canary in canaries {
        assert!(!vault.logs().contains(canary), "the vault logged a value");
    }

    // The audit chain verifies, with the secrets from files named by flags...
    let url_file = write_secret(dir.path(), "database_url", &database_url).unwrap();
    let verify = |service: &str| {
        args(
            &[
                "audit",
                "verify",
                "--service",
                service,
                "--database-url-file",
                &url_file,
                "--audit-key-file",
                &audit_key_file,
            ],
            &[],
        )
    };
    let run = orchctl(&verify("vault"), &[], None).await;
    run.ok();
    assert!(
        run.stdout.starts_with("audit chain of vault: ") && run.stdout.trim().ends_with(", OK"),
        "{run:#?}"
    );
    assert!(!run.argv.contains(&database_url), "{run:#?}");
    // ... and from the environment (`VAR_FILE`).
    let run = orchctl(
        &args(&["audit", "verify", "--service", "vault"], &[]),
        &[
            ("DATABASE_URL_FILE", url_file.clone()),
            ("AUDIT_KEY_FILE", audit_key_file.clone()),
        ],
        None,
    )
    .await;
    run.ok();
    assert!(run.stdout.trim().ends_with(", OK"), "{run:#?}");

    // A DBA edits record 2 around the append-only trigger: verify names it and exits 1.
    mesh.as_dba(
        VAULT,
        "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET target = 'x' WHERE seq = 2",
    )
    .await;
    let run = orchctl(&verify("vault"), &[], None).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stdout
            .starts_with("audit chain of vault BROKEN at record 2: MAC mismatch"),
        "{run:#?}"
    );

    // Not a service: refused with the valid names, before anything is opened.
    let run = orchctl(&verify("nope"), &[], None).await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("unknown service `nope`"), "{run:#?}");
    assert!(
        run.stderr
            .contains("scaffolder, secret-broker, vault, infra"),
        "{run:#?}"
    );
}

/// With nothing given, `audit verify` opens the local mesh's state directory read-only, while
/// the vault is running on it.
#[tokio::test]
async fn audit_verify_defaults_to_the_local_mesh_state_dir() {
    let pki = Pki::new().unwrap();
    let state = tempfile::tempdir().unwrap();
    // The vault as `orchctl up` runs it: its database and keys where `up` keeps them.
    let layout = StateDir::new(state.path());
    std::fs::create_dir_all(layout.data()).unwrap();
    let vault = Launch::with_secrets(VAULT, &pki, &layout.secrets())
        .unwrap()
        .sqlite_database(&layout.database(VAULT))
        .spawn()
        .await
        .unwrap();
    put_two_secrets(&pki, &vault, state.path()).await;

    let state_dir = path(state.path());
    let run = orchctl(
        &args(
            &[
                "audit",
                "verify",
                "--service",
                "vault",
                "--state-dir",
                &state_dir,
            ],
            &[],
        ),
        &[],
        None,
    )
    .await;
    run.ok();
    assert!(run.stdout.trim().ends_with(", OK"), "{run:#?}");

    // A service without a database there: a clear error, exit 2.
    let run = orchctl(
        &args(
            &[
                "audit",
                "verify",
                "--service",
                "infra",
                "--state-dir",
                &state_dir,
            ],
            &[],
        ),
        &[],
        None,
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("no DATABASE_URL given"), "{run:#?}");
}

/// On PostgreSQL the service's own role and URL are enough: its search_path is its schema.
#[tokio::test]
async fn audit_verify_on_postgres_with_the_service_role() {
    let mesh = TestMesh::builder().postgres().service(VAULT).start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit_key_file = path(&mesh.secrets().path(Secret::AuditKey(VAULT)));
    put_two_secrets(mesh.pki(), mesh.proc(VAULT), dir.path()).await;

    let url_file = write_secret(
        dir.path(),
        "database_url",
        mesh.db().url("vault").expose_secret(),
    )
    .unwrap();
    let env = [
        ("DATABASE_URL_FILE", url_file),
        ("AUDIT_KEY_FILE", audit_key_file),
    ];
    let verify = args(&["audit", "verify", "--service", "vault"], &[]);
    let run = orchctl(&verify, &env, None).await;
    run.ok();
    assert!(run.stdout.trim().ends_with(", OK"), "{run:#?}");

    mesh.as_dba(
        VAULT,
        "SET session_replication_role = replica; UPDATE audit_log SET target = 'x' WHERE seq = 2",
    )
    .await;
    let run = orchctl(&verify, &env, None).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stdout.contains("BROKEN at record 2: MAC mismatch"),
        "{run:#?}"
    );
}
