//! Test harness for cross-process tests: a throwaway PKI, the real service binaries started as
//! child processes on port 0, and clients that present any identity (or a hostile certificate).
//!
//! Nothing here mocks our own code: every call crosses a process boundary over real mTLS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orchestrator_mesh::tls::Material;
use orchestrator_mesh::{Identity, MeshTls, Service, TlsFiles};
use orchestrator_pki::{Ca, Issued, Validity};
use rustls::ClientConfig;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub mod raw;

pub const TRUST_DOMAIN: &str = "orchestrator.local";

/// The repository root (for `config/policy.toml` and friends).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A built binary of the workspace: next to the running executable (a benchmark in
/// `target/release`) or next to its `deps/` folder (a test).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [dir.join(name), dir.parent().unwrap_or(dir).join(name)];
    let found = candidates.iter().find(|p| p.exists()).cloned();
    found.unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: build the binaries first \
             (`cargo build --workspace --bins`, as scripts/test does)",
            exe.display()
        )
    })
}

/// `spiffe://orchestrator.local/<name>`.
pub fn identity(name: &str) -> Identity {
    format!("spiffe://{TRUST_DOMAIN}/{name}")
        .parse()
        .expect("valid identity")
}

/// A throwaway CA with a certificate for every default identity, in a temporary folder.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Pki {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        orchestrator_pki::init(
            dir.path(),
            TRUST_DOMAIN,
            &orchestrator_pki::DEFAULT_IDENTITIES,
            1,
        )?;
        let ca = Ca::from_pem(
            &std::fs::read_to_string(dir.path().join("ca.crt"))?,
            &std::fs::read_to_string(dir.path().join("ca.key"))?,
        )?;
        Ok(Self { dir, ca })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// The files of `stem` (`<stem>.crt`, `<stem>.key`) with this PKI's CA bundle.
    pub fn files(&self, stem: &str) -> TlsFiles {
        TlsFiles {
            cert: self.dir().join(format!("{stem}.crt")),
            key: self.dir().join(format!("{stem}.key")),
            ca: self.ca_file(),
        }
    }

    /// Writes `issued` as `<stem>.crt`/`<stem>.key` and returns its files.
    pub fn write(&self, stem: &str, issued: &Issued) -> anyhow::Result<TlsFiles> {
        orchestrator_pki::write_pair(self.dir(), stem, issued)?;
        Ok(self.files(stem))
    }

    /// A client configuration presenting `stem`'s certificate as it is (even expired) and
    /// expecting the server to prove `server`.
    pub fn client_config(
        &self,
        stem: &str,
        server: &Identity,
    ) -> anyhow::Result<Arc<ClientConfig>> {
        Ok(Arc::new(
            Material::load(&self.files(stem))?.client_config(server)?,
        ))
    }

    /// A reloading client TLS state for a default identity.
    pub fn client(&self, name: &str) -> anyhow::Result<Arc<MeshTls>> {
        Ok(MeshTls::load(self.files(name), None)?)
    }

    /// A fresh leaf certificate for `name` from this CA.
    pub fn issue(&self, name: &str, validity: Validity) -> anyhow::Result<Issued> {
        Ok(self.ca.issue(TRUST_DOMAIN, name, validity)?)
    }
}

/// A channel to `addr` as `client`, expecting the server to prove `server`.
pub async fn channel(
    client: &Arc<MeshTls>,
    addr: SocketAddr,
    server: &str,
) -> anyhow::Result<Channel> {
    Ok(
        orchestrator_mesh::client::connect(client.clone(), &addr.to_string(), identity(server))
            .await?,
    )
}

/// A channel using exactly `config` for every connection.
pub async fn channel_with(config: Arc<ClientConfig>, addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(
        orchestrator_mesh::client::connect_with(move || Ok(config.clone()), &addr.to_string())
            .await?,
    )
}

/// How to start one service process.
pub struct Launch {
    service: Service,
    env: BTreeMap<String, String>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Launch {
    // The environment can hold secrets (database URLs, keys): names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("service", &self.service)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Launch {
    /// Port 0 for gRPC and admin, the service's own certificate from `pki`, the repository's
    /// policy, fast certificate reloads, and an otherwise empty environment.
    pub fn new(service: Service, pki: &Pki) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let files = pki.files(service.name());
        let env = BTreeMap::from([
            ("ORCH_LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("ORCH_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("ORCH_TLS_CERT".to_owned(), files.cert.display().to_string()),
            ("ORCH_TLS_KEY".to_owned(), files.key.display().to_string()),
            ("ORCH_TLS_CA".to_owned(), files.ca.display().to_string()),
            (
                "ORCH_POLICY_FILE".to_owned(),
                repo_root().join("config/policy.toml").display().to_string(),
            ),
            ("ORCH_TLS_RELOAD_INTERVAL".to_owned(), "100ms".to_owned()),
            (
                "ORCH_ADDR_FILE".to_owned(),
                dir.path().join("addr.json").display().to_string(),
            ),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ]);
        // Each service's own storage and keys: a SQLite file and fresh random keys.
        let mut env = env;
        env.insert(
            "DATABASE_URL".to_owned(),
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("db.sqlite").display()
            ),
        );
        env.insert(
            "AUDIT_KEY_FILE".to_owned(),
            write_secret(dir.path(), "audit_key", &random_key())?,
        );
        if service == Service::SecretBroker {
            // A real App key (shared by the tests of this process); no GitHub until `github()`.
            let (private, _) = app_key();
            env.insert("GITHUB_APP_ID".to_owned(), APP_ID.to_string());
            env.insert(
                "GITHUB_APP_PRIVATE_KEY_FILE".to_owned(),
                write_secret(dir.path(), "github_app_key", private)?,
            );
            env.insert("GITHUB_API_URL".to_owned(), "http://127.0.0.1:9".to_owned());
            env.insert("BROKER_MIN_WRITE_INTERVAL".to_owned(), "10ms".to_owned());
            env.insert("BROKER_BACKOFF".to_owned(), "20ms".to_owned());
            env.insert("BROKER_SECONDARY_WAIT".to_owned(), "200ms".to_owned());
            env.insert("BROKER_GITHUB_DEADLINE".to_owned(), "20s".to_owned());
            env.insert("BROKER_GITHUB_ATTEMPT_TIMEOUT".to_owned(), "2s".to_owned());
        }
        if service == Service::Scaffolder {
            // Nothing answers here until a test points it at an emulator and a broker.
            env.insert("GITHUB_API_URL".to_owned(), "http://127.0.0.1:9".to_owned());
            env.insert("GITHUB_ORG".to_owned(), "orchestrator-test".to_owned());
            env.insert(
                "SCAFFOLDER_BROKER_ADDR".to_owned(),
                "127.0.0.1:9".to_owned(),
            );
        }
        if service == Service::Infra {
            // The orchestrator's admin key (L1): a fresh Ed25519 key per launch.
            let admin = orchestrator_deploy_keys::generate("orchestrator-admin")
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            use secrecy::ExposeSecret as _;
            env.insert(
                "ORCHESTRATOR_SSH_PRIVATE_KEY_FILE".to_owned(),
                write_secret(
                    dir.path(),
                    "admin_key",
                    admin.private_openssh.expose_secret(),
                )?,
            );
            env.insert("INFRA_BROKER_ADDR".to_owned(), "127.0.0.1:9".to_owned());
            env.insert("INFRA_VAULT_ADDR".to_owned(), "127.0.0.1:9".to_owned());
            env.insert(
                "DIGITALOCEAN_API_URL".to_owned(),
                "http://127.0.0.1:9".to_owned(),
            );
        }
        if service == Service::Vault {
            let keyring = format!("k1:{}", random_key());
            env.insert(
                "VAULT_MASTER_KEY_FILE".to_owned(),
                write_secret(dir.path(), "vault_master_key", &keyring)?,
            );
        }
        Ok(Self { service, env, dir })
    }

    pub fn env(mut self, var: &str, value: impl Into<String>) -> Self {
        self.env.insert(var.to_owned(), value.into());
        self
    }

    /// Points a secret broker or scaffolder at `emulator` (whose App key is [`app_key`]), with
    /// `org` as the organization where repositories are created.
    pub fn github(self, emulator: &orchestrator_github_emulator::Emulator, org: &str) -> Self {
        self.env("GITHUB_API_URL", emulator.url())
            .env("GITHUB_ORG", org)
    }

    /// Removes a variable the defaults set.
    pub fn without(mut self, var: &str) -> Self {
        self.env.remove(var);
        self
    }

    /// Points the service at `url` (a PostgreSQL test database, say) instead of its own SQLite file.
    pub fn database(self, url: &secrecy::SecretString) -> Self {
        use secrecy::ExposeSecret;
        self.env("DATABASE_URL", url.expose_secret())
    }

    /// The value of a variable as it will be passed.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.env.get(var).map(String::as_str)
    }

    pub fn tls(self, files: &TlsFiles) -> Self {
        self.env("ORCH_TLS_CERT", files.cert.display().to_string())
            .env("ORCH_TLS_KEY", files.key.display().to_string())
            .env("ORCH_TLS_CA", files.ca.display().to_string())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bin(self.service.name()));
        cmd.env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(
                std::fs::File::create(self.dir.path().join("stdout.log"))
                    .map_or(Stdio::null(), Stdio::from),
            )
            .stderr(
                std::fs::File::create(self.dir.path().join("stderr.log"))
                    .map_or(Stdio::null(), Stdio::from),
            )
            .kill_on_drop(true);
        cmd
    }

    /// Starts the process and waits until it serves (its address file appears).
    pub async fn spawn(self) -> anyhow::Result<Proc> {
        let mut child = self.command().spawn()?;
        let addr_file = self.dir.path().join("addr.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}):\n{}",
                    self.service,
                    read_log(self.dir.path(), "stderr.log")
                );
            }
            if let Ok(bytes) = std::fs::read(&addr_file) {
                let v: serde_json::Value = serde_json::from_slice(&bytes)?;
                let addr = |k: &str| -> anyhow::Result<SocketAddr> {
                    Ok(v[k].as_str().context("address")?.parse()?)
                };
                return Ok(Proc {
                    service: self.service,
                    child,
                    grpc: addr("grpc")?,
                    admin: addr("admin")?,
                    dir: self.dir,
                });
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not start in time",
                self.service
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs the process expecting it to refuse to start; returns its exit code and all output.
    pub async fn run_to_exit(self) -> anyhow::Result<(Option<i32>, String)> {
        let mut child = self.command().spawn()?;
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .context("the process did not exit: it started although it should have refused")??;
        let output = format!(
            "{}{}",
            read_log(self.dir.path(), "stdout.log"),
            read_log(self.dir.path(), "stderr.log")
        );
        Ok((status.code(), output))
    }
}

/// Asserts that none of `needles` appears in any row of `tables` (schema-qualified), read as a
/// superuser of the PostgreSQL test database; rows are cast to text, so bytes show as hex.
pub async fn assert_absent_from_tables(
    db: &orchestrator_store::testing::TestDatabase,
    service: &str,
    tables: &[&str],
    needles: &[&str],
) {
    use secrecy::ExposeSecret as _;
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let url = db.admin_url(service);
    let mut conn = sqlx::AnyConnection::connect(url.expose_secret())
        .await
        .expect("connect as the DBA");
    for table in tables {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(t AS TEXT) AS dump FROM {table} t"
        )))
        .fetch_all(&mut conn)
        .await
        .expect("read the table");
        for row in rows {
            let dump: String = sqlx::Row::try_get(&row, "dump").expect("a text dump");
            for needle in needles {
                assert!(
                    !dump.contains(needle),
                    "{table} holds a value it must never hold"
                );
            }
        }
    }
}

/// The GitHub App id the test brokers and emulators share.
pub const APP_ID: u64 = 4242;

/// A GitHub App key pair (private PKCS#1 PEM, public PEM), generated once per test process.
pub fn app_key() -> &'static (String, String) {
    static KEY: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    KEY.get_or_init(orchestrator_github_emulator::generate_app_key)
}

/// A GitHub emulator that trusts [`app_key`], with the App installed on `org`.
pub async fn github_emulator(
    org: &str,
    config: orchestrator_github_emulator::Config,
) -> anyhow::Result<orchestrator_github_emulator::Emulator> {
    let config = orchestrator_github_emulator::Config {
        app_id: APP_ID,
        app_public_key_pem: app_key().1.clone(),
        ..config
    };
    let emulator = orchestrator_github_emulator::Emulator::start(config).await?;
    emulator.install(org);
    Ok(emulator)
}

/// Base64 of 32 random bytes: a fresh key, never a fixture.
pub fn random_key() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system RNG");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes a secret to a 0600 file and returns its path, for a `<NAME>_FILE` variable.
pub fn write_secret(dir: &Path, name: &str, value: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&path)?.write_all(value.as_bytes())?;
    Ok(path.display().to_string())
}

fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// A running service process; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub service: Service,
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Proc {
    /// A channel to this service as `client`.
    pub async fn channel(&self, client: &Arc<MeshTls>) -> anyhow::Result<Channel> {
        channel(client, self.grpc, self.service.name()).await
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        format!(
            "{}{}",
            read_log(self.dir.path(), "stdout.log"),
            read_log(self.dir.path(), "stderr.log")
        )
    }

    /// `GET path` on the admin port: (status code, body).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        raw::http_get(self.admin, path).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, as a crash: no draining, no clean-up. Its files (keys, logs) stay.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A minimal HTTP/1.1 request with a bearer token to an emulator (`http://` only): the
/// status code. Panics on a transport error.
pub async fn raw_http(base: &str, method: &str, path: &str, token: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the emulator");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nUser-Agent: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .await
        .expect("read the answer");
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line")
}
