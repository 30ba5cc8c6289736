//! The SSH client against a real OpenSSH server (`/usr/sbin/sshd`, package openssh-server):
//! each test starts its own sshd on 127.0.0.1 in a fresh directory, with a generated host key
//! and the admin public key in its authorized_keys, and logs in as the current user.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator_deploy_keys::{KeyPair, generate};
use orchestrator_ssh::{AdminKey, HostKey, Session, SshError, Target, connect};
use secrecy::{ExposeSecret as _, SecretString};
use tempfile::TempDir;

const SSHD: &str = "/usr/sbin/sshd";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A throwaway sshd, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Sshd {
    /// Starts sshd with `host` as its host key, accepting `admin` for the current user.
    fn start(host: &KeyPair, admin: &KeyPair) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (apt-get install openssh-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_key");
        // sshd refuses a private host key that others can read.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&host_key)
            .unwrap()
            .write_all(host.private_openssh.expose_secret().as_bytes())
            .unwrap();
        let authorized_keys = dir.path().join("authorized_keys");
        fs::write(&authorized_keys, format!("{}\n", admin.public_openssh)).unwrap();
        if run_id("-u") == "0" {
            // sshd as root needs its privilege separation directory (normally made by systemd).
            fs::create_dir_all("/run/sshd").unwrap();
        }

        // Another process may take the free port before sshd binds it: try a few.
        let mut failures = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {host_key}\n\
                     AuthorizedKeysFile {authorized_keys}\n\
                     PidFile {pid}\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     LogLevel VERBOSE\n",
                    host_key = host_key.display(),
                    authorized_keys = authorized_keys.display(),
                    pid = dir.path().join("sshd.pid").display(),
                ),
            )
            .unwrap();
            let check = Command::new(SSHD)
                .args(["-t", "-f"])
                .arg(&config)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "sshd -t rejected the config: {}",
                String::from_utf8_lossy(&check.stderr)
            );

            let log_path = dir.path().join("sshd.log");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log_path).unwrap())
                .spawn()
                .unwrap();
            if wait_listening(&mut child, port) {
                return Sshd { child, port, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            failures.push_str(&format!("port {port}:\n{log}\n"));
        }
        panic!("sshd did not start:\n{failures}");
    }

    fn target(&self, host_key: HostKey) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: self.port,
            user: run_id("-un"),
            host_key,
        }
    }

    /// What sshd logged so far, for failure messages.
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Connects, or fails the test with sshd's side of the story.
    async fn login(&self, host_key: HostKey, admin: &AdminKey) -> Session {
        match connect(&self.target(host_key), admin, TIMEOUT).await {
            Ok(session) => session,
            Err(e) => panic!("login failed: {e}\nsshd log:\n{}", self.log()),
        }
    }

    /// Connects expecting a refusal.
    async fn refused(&self, host_key: HostKey, admin: &AdminKey) -> SshError {
        match connect(&self.target(host_key), admin, TIMEOUT).await {
            Ok(_) => panic!("login succeeded\nsshd log:\n{}", self.log()),
            Err(e) => e,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `id -u` / `id -un`: the login user is whoever runs the tests (root in CI).
fn run_id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    assert!(out.status.success(), "id {flag} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Polls `port` until it accepts a connection; false if sshd exits or 10 s pass.
fn wait_listening(child: &mut Child, port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn key(comment: &str) -> KeyPair {
    generate(comment).unwrap()
}

fn admin_key(pair: &KeyPair) -> AdminKey {
    AdminKey::from_openssh(&pair.private_openssh).unwrap()
}

/// Key type and base64 of a public key line, without the comment.
fn key_fields(line: &str) -> Vec<&str> {
    line.split_whitespace().take(2).collect()
}

/// Fails if `text` contains any 12 consecutive characters of the private key's body.
fn assert_no_key_material(text: &str, private: &SecretString) {
    let body: String = private
        .expose_secret()
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert!(body.len() > 100, "the private key has a body to look for");
    for window in body.as_bytes().windows(12) {
        let window = std::str::from_utf8(window).unwrap();
        assert!(
            !text.contains(window),
            "`{text}` contains part of the private key"
        );
    }
}

#[tokio::test]
async fn pinned_host_key_logs_in_and_runs_commands() {
    let (host, admin) = (key("host"), key("admin"));
    let sshd = Sshd::start(&host, &admin);
    let session = sshd
        .login(
            HostKey::Pinned(host.public_openssh.clone()),
            &admin_key(&admin),
        )
        .await;

    let out = session
        .run("printf out; printf err >&2; exit 3", b"")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err");
    assert_eq!(out.status, Some(3));
    assert!(!out.success());

    // Secrets (a clone token) travel over stdin: they must arrive byte for byte.
    let out = session.run("cat", b"hello stdin").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello stdin");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status, Some(0));

    assert_eq!(
        key_fields(session.host_key()),
        key_fields(&host.public_openssh)
    );
    session.close().await;
}

#[tokio::test]
async fn large_stdin_echoed_back_does_not_deadlock() {
    let (host, admin) = (key("host"), key("admin"));
    let sshd = Sshd::start(&host, &admin);
    let session = sshd
        .login(HostKey::LearnOnFirstUse, &admin_key(&admin))
        .await;
    // More than the client's receive window (2 MiB) and the pipes: the output has to be read
    // while stdin is still being sent.
    let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let out = session.run("cat", &data).await.unwrap();
    assert_eq!(out.status, Some(0));
    // The answer is read to its end but only its first MAX_OUTPUT bytes are kept: a server
    // cannot fill infra's memory by talking.
    assert_eq!(out.stdout.len(), orchestrator_ssh::MAX_OUTPUT);
    assert!(
        out.stdout == data[..orchestrator_ssh::MAX_OUTPUT],
        "cat echoed other bytes"
    );
    assert_eq!(
        out.dropped,
        (data.len() - orchestrator_ssh::MAX_OUTPUT) as u64
    );
    let err = session
        .run(
            "head -c 3000000 /dev/zero >&2; echo tail-of-stderr >&2",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(err.stderr.len(), orchestrator_ssh::MAX_OUTPUT);
    assert!(err.stderr.ends_with(b"tail-of-stderr\n"));
    session.close().await;
}

#[tokio::test]
async fn another_pinned_key_is_refused_before_login() {
    let (host, admin, other) = (key("host"), key("admin"), key("other"));
    let sshd = Sshd::start(&host, &admin);
    let err = sshd
        .refused(
            HostKey::Pinned(other.public_openssh.clone()),
            &admin_key(&admin),
        )
        .await;
    match &err {
        SshError::HostKeyMismatch { expected, seen, .. } => {
            assert_eq!(expected, &other.fingerprint);
            assert_eq!(seen, &host.fingerprint);
        }
        other => panic!("expected HostKeyMismatch, got {other:?}"),
    }
    // Retrying cannot fix a server that is not the one we pinned.
    assert!(!err.is_transient());
}

#[tokio::test]
async fn learn_on_first_use_returns_the_servers_host_key() {
    let (host, admin) = (key("host"), key("admin"));
    let sshd = Sshd::start(&host, &admin);
    let admin = admin_key(&admin);
    let session = sshd.login(HostKey::LearnOnFirstUse, &admin).await;
    let learned = session.host_key().to_owned();
    assert_eq!(key_fields(&learned), key_fields(&host.public_openssh));
    session.close().await;

    // What was learned is what gets pinned from then on: it must work as a pin.
    let session = sshd.login(HostKey::Pinned(learned), &admin).await;
    let out = session.run("true", b"").await.unwrap();
    assert_eq!(out.status, Some(0));
    session.close().await;
}

#[tokio::test]
async fn a_key_not_in_authorized_keys_is_refused() {
    let (host, admin, stranger) = (key("host"), key("admin"), key("stranger"));
    let sshd = Sshd::start(&host, &admin);
    let err = sshd
        .refused(
            HostKey::Pinned(host.public_openssh.clone()),
            &admin_key(&stranger),
        )
        .await;
    match &err {
        SshError::AuthRefused { user, .. } => assert_eq!(user, &run_id("-un")),
        other => panic!("expected AuthRefused, got {other:?}"),
    }
    // A server still booting may not have the admin key in place yet.
    assert!(err.is_transient());
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let (host, admin) = (key("host"), key("admin"));
    let target = Target {
        host: "127.0.0.1".into(),
        port: free_port(),
        user: run_id("-un"),
        host_key: HostKey::Pinned(host.public_openssh.clone()),
    };
    let err = connect(&target, &admin_key(&admin), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SshError::Unreachable { .. }),
        "expected Unreachable, got {err:?}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn the_admin_key_stays_out_of_debug_and_errors() {
    let (host, admin, other) = (key("host"), key("admin"), key("other"));
    let sshd = Sshd::start(&host, &admin);
    let admin_parsed = admin_key(&admin);
    assert_no_key_material(&format!("{admin_parsed:?}"), &admin.private_openssh);
    assert!(format!("{admin_parsed:?}").contains(&admin.fingerprint));

    let mut errors = vec![
        sshd.refused(HostKey::Pinned(other.public_openssh.clone()), &admin_parsed)
            .await,
        connect(
            &Target {
                port: free_port(),
                ..sshd.target(HostKey::LearnOnFirstUse)
            },
            &admin_parsed,
            TIMEOUT,
        )
        .await
        .unwrap_err(),
    ];
    // Refused for the stranger: its key is the one that must not leak.
    let stranger = key("stranger");
    let refused = sshd
        .refused(
            HostKey::Pinned(host.public_openssh.clone()),
            &admin_key(&stranger),
        )
        .await;
    assert_no_key_material(&refused.to_string(), &stranger.private_openssh);
    assert_no_key_material(&format!("{refused:?}"), &stranger.private_openssh);
    errors.push(refused);
    // A damaged key must not be echoed back either.
    let damaged = SecretString::from(admin.private_openssh.expose_secret().replacen('b', "c", 3));
    errors.push(AdminKey::from_openssh(&damaged).unwrap_err());

    for err in &errors {
        assert_no_key_material(&err.to_string(), &admin.private_openssh);
        assert_no_key_material(&format!("{err:?}"), &admin.private_openssh);
    }
}
