//! One service process: how it is started ([`Launch`]) and the running process ([`Proc`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_devenv::{
    Bound, DevSecrets, Providers, Secret, ServiceEnv, dependencies, wait_until_serving,
};
use orchestrator_github_emulator::Emulator;
use orchestrator_github_emulator::testing::{APP_ID, ORG, app_key};
use orchestrator_mesh::{MeshTls, Service, TlsFiles};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::{Pki, bin, channel, raw, repo_root};

/// How long a process may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start one service process.
#[derive(Debug)]
pub struct Launch {
    env: ServiceEnv,
    /// Its logs and address file (and its keys, when it has none from a mesh).
    dir: tempfile::TempDir,
}

impl Launch {
    /// A service alone: its own SQLite file and fresh keys, nothing outside reachable (see
    /// [`Launch::with_secrets`]).
    pub fn new(service: Service, pki: &Pki) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let secrets = DevSecrets::new(dir.path().join("secrets"));
        Self::in_dir(service, pki, &secrets, dir)
    }

    /// Port 0 for gRPC and admin, the service's own certificate from `pki`, the repository's
    /// policy, fast certificate reloads, a SQLite file of its own, its keys from `secrets`
    /// (made there if missing, so a restart finds them), and an otherwise empty environment in
    /// which nothing outside the service answers until a test wires it.
    pub fn with_secrets(service: Service, pki: &Pki, secrets: &DevSecrets) -> anyhow::Result<Self> {
        Self::in_dir(service, pki, secrets, tempfile::tempdir()?)
    }

    fn in_dir(
        service: Service,
        pki: &Pki,
        secrets: &DevSecrets,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut env = ServiceEnv::new(service)
            .listen(any_port, any_port, &dir.path().join("addr.json"))
            .tls(&pki.files(service.name()))
            .policy(&repo_root().join("config/policy.toml"))
            .tls_reload_every("100ms")
            .log("info")
            .sqlite_database(&dir.path().join("db.sqlite"))
            .own_keys(secrets)?
            .unreachable_outside()
            .github_org(ORG);
        if service == Service::SecretBroker {
            // A real App key (shared by the tests of this process), and GitHub's pace made fast.
            secrets.put(Secret::GitHubAppKey, &app_key().0)?;
            env = env
                .github_app(APP_ID, secrets)?
                .set("BROKER_MIN_WRITE_INTERVAL", "10ms")
                .set("BROKER_BACKOFF", "20ms")
                .set("BROKER_SECONDARY_WAIT", "200ms")
                .set("BROKER_GITHUB_DEADLINE", "20s")
                .set("BROKER_GITHUB_ATTEMPT_TIMEOUT", "2s");
        }
        Ok(Self { env, dir })
    }

    pub fn service(&self) -> Service {
        self.env.service()
    }

    pub fn env(self, var: &str, value: impl Into<String>) -> Self {
        self.with_env(|env| env.set(var, value))
    }

    /// Removes a variable the defaults set.
    pub fn without(self, var: &str) -> Self {
        self.with_env(|env| env.remove(var))
    }

    /// The value of a variable as it will be passed.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.env.get(var)
    }

    /// Points a secret broker or scaffolder at `emulator` (which trusts the tests' App), with
    /// `org` as the organization where repositories are created.
    pub fn github(self, emulator: &Emulator, org: &str) -> Self {
        self.with_env(|env| env.github_api(&emulator.url()).github_org(org))
    }

    /// Points the service at `url` (a PostgreSQL test database, say) instead of its own SQLite file.
    pub fn database(self, url: &secrecy::SecretString) -> Self {
        use secrecy::ExposeSecret as _;
        self.with_env(|env| env.database(url.expose_secret()))
    }

    /// Points the service at its database in `db`: `DATABASE_URL` as its runtime role and, on
    /// PostgreSQL, `DATABASE_MIGRATION_URL` as its schema's owner.
    pub fn test_database(self, db: &orchestrator_store::testing::TestDatabase) -> Self {
        use secrecy::ExposeSecret as _;
        let service = self.service().name();
        let launch = self.database(&db.url(service));
        if db.is_postgres() {
            let owner = db.migration_url(service);
            launch.env("DATABASE_MIGRATION_URL", owner.expose_secret())
        } else {
            launch
        }
    }

    /// Points the service at the SQLite file `file` instead of its own.
    pub fn sqlite_database(self, file: &Path) -> Self {
        self.with_env(|env| env.sqlite_database(file))
    }

    pub fn tls(self, files: &TlsFiles) -> Self {
        self.with_env(|env| env.tls(files))
    }

    /// Listens on `addr` instead of a free port.
    pub fn at(self, addr: SocketAddr) -> Self {
        let (admin, file) = (
            SocketAddr::from(([127, 0, 0, 1], 0)),
            self.dir.path().join("addr.json"),
        );
        self.with_env(|env| env.listen(addr, admin, &file))
    }

    /// Tells the service where `peer` listens, if it calls it.
    pub fn peer(self, peer: &Proc) -> Self {
        let addr = peer.grpc.to_string();
        self.with_env(|env| env.peer(peer.service, &addr))
    }

    /// Infra: the provider APIs, with the credentials in its folder of `secrets`.
    pub(crate) fn providers(
        self,
        providers: &Providers,
        secrets: &DevSecrets,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            env: self.env.providers(providers, secrets)?,
            ..self
        })
    }

    pub(crate) fn with_env(self, change: impl FnOnce(ServiceEnv) -> ServiceEnv) -> Self {
        Self {
            env: change(self.env),
            ..self
        }
    }

    /// The services this one calls.
    pub(crate) fn dependencies(&self) -> impl Iterator<Item = Service> {
        dependencies(self.service())
    }

    fn command(&self) -> Command {
        let log = |name: &str| {
            std::fs::File::create(self.dir.path().join(name)).map_or(Stdio::null(), Stdio::from)
        };
        let mut cmd = Command::new(bin(self.service().name()));
        cmd.env_clear()
            .envs(self.env.vars())
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .kill_on_drop(true);
        cmd
    }

    /// Starts the process and waits until it serves (its address file appears).
    pub async fn spawn(self) -> anyhow::Result<Proc> {
        let service = self.service();
        let mut child = self.command().spawn()?;
        let addr_file = self.dir.path().join("addr.json");
        let Bound { grpc, admin } =
            wait_until_serving(service.name(), &mut child, &addr_file, START_TIMEOUT)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("{e}:\n{}", read_log(self.dir.path(), "stderr.log"))
                })?;
        Ok(Proc {
            service,
            child,
            grpc,
            admin,
            dir: self.dir,
        })
    }

    /// Runs the process expecting it to refuse to start; returns its exit code and all output.
    pub async fn run_to_exit(self) -> anyhow::Result<(Option<i32>, String)> {
        let mut child = self.command().spawn()?;
        let status = tokio::time::timeout(START_TIMEOUT, child.wait())
            .await
            .context("the process did not exit: it started although it should have refused")??;
        Ok((status.code(), logs(self.dir.path())))
    }
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
        logs(self.dir.path())
    }

    /// Its folder: logs, address file (and its keys, when it has none from a mesh).
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

fn logs(dir: &Path) -> String {
    format!(
        "{}{}",
        read_log(dir, "stdout.log"),
        read_log(dir, "stderr.log")
    )
}

fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}
