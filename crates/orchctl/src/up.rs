//! `orchctl up`: the whole mesh on one machine, for development and demos.
//!
//! Each service runs as its own process, started with an emptied environment plus only what
//! that service needs, exactly as separate containers would be.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orchestrator_mesh::{MeshTls, Service};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::conn::caller_files;
use crate::health::check;

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// State directory: the dev PKI, per-service env files and address files.
    #[arg(long, default_value = ".orchestrator")]
    state_dir: PathBuf,
    /// Address the services bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// gRPC port of the scaffolder; the broker, vault and infra take the next three. 0 picks
    /// free ports.
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Admin port of the scaffolder; the others take the next three. 0 picks free ports.
    #[arg(long, default_value_t = 51051)]
    admin_port: u16,
    /// The authorization policy every service loads.
    #[arg(long, default_value = "config/policy.toml")]
    policy: PathBuf,
    #[arg(long, default_value = "orchestrator.local", env = "ORCH_TRUST_DOMAIN")]
    trust_domain: String,
    /// Where the service binaries are (default: next to orchctl).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build` for the services first (when started through `cargo run`).
    #[arg(long)]
    no_build: bool,
    /// The organization of the local GitHub emulator, where projects' repositories are created.
    #[arg(long, default_value = "orchestrator-dev")]
    github_org: String,
}

/// The order services start in: each one's dependencies before it.
const START_ORDER: [Service; 4] = [
    Service::Vault,
    Service::SecretBroker,
    Service::Infra,
    Service::Scaffolder,
];

/// The App id of the development GitHub App (the emulator's and the broker's).
const DEV_APP_ID: u64 = 1;

struct Running {
    service: Service,
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
}

pub(crate) fn run(args: UpArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(up(args))
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    if !args.no_build {
        build_services()?;
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("orchctl has no directory")?
            .to_owned(),
    };
    let state = absolute(&args.state_dir)?;
    let pki = state.join("pki");
    let report = orchestrator_pki::init(
        &pki,
        &args.trust_domain,
        &orchestrator_pki::DEFAULT_IDENTITIES,
        90,
    )?;
    if !report.created.is_empty() {
        say(&format!(
            "created dev PKI in {} ({})",
            pki.display(),
            report.created.join(", ")
        ));
    }
    let run_dir = state.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let policy = absolute(&args.policy)?;

    // GitHub, locally: the emulator, trusting a development App key only the broker holds.
    let app_key = dev_app_key(&state)?;
    let github_emulator_env = [
        ("GITHUB_EMULATOR_ADDR", "127.0.0.1:0".to_owned()),
        ("GITHUB_EMULATOR_APP_ID", DEV_APP_ID.to_string()),
        (
            "GITHUB_EMULATOR_APP_PUBLIC_KEY_FILE",
            app_key.public.display().to_string(),
        ),
        ("GITHUB_EMULATOR_ORG", args.github_org.clone()),
    ];
    let (mut github, addrs) = start_emulator(
        &bin_dir,
        &run_dir,
        "github-emulator",
        "github",
        &github_emulator_env,
        "GITHUB_EMULATOR_ADDR_FILE",
    )
    .await?;
    let github_url = addrs["url"]
        .as_str()
        .context("the GitHub emulator wrote no url")?
        .to_owned();
    // DigitalOcean, Cloudflare and Time4VPS, locally, with development tokens only infra holds.
    let (do_token, cf_token, t4_password) = (
        dev_token(&state, "digitalocean_token")?,
        dev_token(&state, "cloudflare_token")?,
        dev_token(&state, "time4vps_password")?,
    );
    // Emulated servers answer SSH on their own loopback addresses, all on one free port, so
    // infra's readiness checks and Time4VPS takeovers work locally too.
    let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let provider_env = [
        (
            "DIGITALOCEAN_EMULATOR_TOKEN",
            std::fs::read_to_string(&do_token)?,
        ),
        (
            "CLOUDFLARE_EMULATOR_TOKEN",
            std::fs::read_to_string(&cf_token)?,
        ),
        ("CLOUDFLARE_EMULATOR_ZONE", "orchestrator.test".to_owned()),
        ("TIME4VPS_EMULATOR_USER", DEV_TIME4VPS_USER.to_owned()),
        (
            "TIME4VPS_EMULATOR_PASSWORD",
            std::fs::read_to_string(&t4_password)?,
        ),
        ("TIME4VPS_EMULATOR_SERVERS", DEV_TIME4VPS_SERVERS.to_owned()),
        ("PROVIDER_EMULATORS_SSH_PORT", ssh_port.clone()),
    ];
    let (mut providers, provider_urls) = start_emulator(
        &bin_dir,
        &run_dir,
        "provider-emulators",
        "providers",
        &provider_env,
        "PROVIDER_EMULATORS_ADDR_FILE",
    )
    .await?;
    let infra_env = BTreeMap::from([
        (
            "DIGITALOCEAN_API_URL".to_owned(),
            provider_urls["digitalocean"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        (
            "DIGITALOCEAN_TOKEN_FILE".to_owned(),
            do_token.display().to_string(),
        ),
        (
            "CLOUDFLARE_API_URL".to_owned(),
            format!(
                "{}/client/v4",
                provider_urls["cloudflare"].as_str().unwrap_or_default()
            ),
        ),
        (
            "CLOUDFLARE_API_TOKEN_FILE".to_owned(),
            cf_token.display().to_string(),
        ),
        ("CLOUDFLARE_ZONE".to_owned(), "orchestrator.test".to_owned()),
        (
            "TIME4VPS_API_URL".to_owned(),
            provider_urls["time4vps"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        ("TIME4VPS_USER".to_owned(), DEV_TIME4VPS_USER.to_owned()),
        (
            "TIME4VPS_PASSWORD_FILE".to_owned(),
            t4_password.display().to_string(),
        ),
        ("INFRA_SSH_PORT".to_owned(), ssh_port),
        (
            "ORCHESTRATOR_SSH_PRIVATE_KEY_FILE".to_owned(),
            dev_admin_key(&state)?.display().to_string(),
        ),
    ]);
    let github_env = BTreeMap::from([
        ("GITHUB_APP_ID".to_owned(), DEV_APP_ID.to_string()),
        (
            "GITHUB_APP_PRIVATE_KEY_FILE".to_owned(),
            app_key.private.display().to_string(),
        ),
        ("GITHUB_API_URL".to_owned(), github_url.clone()),
        ("GITHUB_ORG".to_owned(), args.github_org.clone()),
    ]);

    let operator = MeshTls::load(caller_files(&pki, "operator"), None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready: Vec<Running> = Vec::new();
    // Dependencies first: the scaffolder is told where the broker actually listens.
    for service in START_ORDER {
        let bin = bin_dir.join(service.name());
        anyhow::ensure!(
            bin.exists(),
            "{} not found (build with `cargo build --bins`, or pass --bin-dir)",
            bin.display()
        );
        let addr_file = run_dir.join(format!("{}.json", service.name()));
        let _ = std::fs::remove_file(&addr_file);
        let offset = service.default_port() - 50051;
        let port = |base: u16| if base == 0 { 0 } else { base + offset };
        let mut env = BTreeMap::from([
            (
                "ORCH_LISTEN_ADDR".to_owned(),
                SocketAddr::new(args.host, port(args.port)).to_string(),
            ),
            (
                "ORCH_ADMIN_ADDR".to_owned(),
                SocketAddr::new(args.host, port(args.admin_port)).to_string(),
            ),
            (
                "ORCH_TLS_CERT".to_owned(),
                pki.join(format!("{}.crt", service.name()))
                    .display()
                    .to_string(),
            ),
            (
                "ORCH_TLS_KEY".to_owned(),
                pki.join(format!("{}.key", service.name()))
                    .display()
                    .to_string(),
            ),
            (
                "ORCH_TLS_CA".to_owned(),
                pki.join("ca.crt").display().to_string(),
            ),
            ("ORCH_POLICY_FILE".to_owned(), policy.display().to_string()),
            ("ORCH_TRUST_DOMAIN".to_owned(), args.trust_domain.clone()),
            ("ORCH_ADDR_FILE".to_owned(), addr_file.display().to_string()),
        ]);
        env.extend(own_storage_and_keys(&state, service)?);
        if service == Service::SecretBroker {
            env.extend(github_env.clone());
        }
        if service == Service::Infra {
            env.extend(infra_env.clone());
            for (var, dependency) in [
                ("INFRA_BROKER_ADDR", Service::SecretBroker),
                ("INFRA_VAULT_ADDR", Service::Vault),
            ] {
                let dep = ready
                    .iter()
                    .find(|r| r.service == dependency)
                    .context("dependencies start first")?;
                env.insert(var.to_owned(), connect_target(dep.grpc));
            }
        }
        if service == Service::Scaffolder {
            let broker = ready
                .iter()
                .find(|r| r.service == Service::SecretBroker)
                .context("the broker starts first")?;
            env.insert(
                "SCAFFOLDER_BROKER_ADDR".to_owned(),
                connect_target(broker.grpc),
            );
            env.insert("GITHUB_API_URL".to_owned(), github_url.clone());
            env.insert("GITHUB_ORG".to_owned(), args.github_org.clone());
        }
        for var in ["RUST_LOG", "ORCH_LOG_FORMAT"] {
            if let Ok(value) = std::env::var(var) {
                env.insert(var.to_owned(), value);
            }
        }
        let mut child = Command::new(&bin)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        prefix_output(service.name(), &mut child);
        let (grpc, admin) = loop {
            if let Some(status) = child.try_wait()? {
                bail!("{service} exited during start-up ({status})");
            }
            if let Ok(addrs) = read_addr_file(&addr_file) {
                break addrs;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{service} did not start within 30s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let server = format!("spiffe://{}/{}", args.trust_domain, service.name()).parse()?;
        let target = connect_target(grpc);
        check(&operator, &target, server, service)
            .await
            .with_context(|| format!("{service} does not answer its health check"))?;
        ready.push(Running {
            service,
            child,
            grpc,
            admin,
        });
    }
    ready.sort_by_key(|r| r.service.default_port());
    print_summary(&ready, &pki, &github_url);

    let ended = wait_for_exit_or_signal(&mut ready, &mut github).await;
    for r in &mut ready {
        terminate(&mut r.child).await;
    }
    terminate(&mut github).await;
    terminate(&mut providers).await;
    match ended {
        Some(service) => bail!("{service} exited on its own; stopped the mesh"),
        None => {
            say("stopped");
            Ok(())
        }
    }
}

/// Each service's own database (a SQLite file) and keys (random, in 0600 files, created once
/// and kept, so data survives restarts): its audit key, and for the vault its master key.
fn own_storage_and_keys(
    state: &Path,
    service: Service,
) -> anyhow::Result<BTreeMap<String, String>> {
    let (data, secrets) = (
        state.join("data"),
        state.join("secrets").join(service.name()),
    );
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&secrets)?;
    #[cfg(unix)]
    std::fs::set_permissions(
        state.join("secrets"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let mut env = BTreeMap::from([
        (
            "DATABASE_URL".to_owned(),
            format!(
                "sqlite://{}?mode=rwc",
                data.join(format!("{}.db", service.name())).display()
            ),
        ),
        (
            "AUDIT_KEY_FILE".to_owned(),
            dev_secret(&secrets.join("audit_key"), "")?,
        ),
    ]);
    if service == Service::Vault {
        env.insert(
            "VAULT_MASTER_KEY_FILE".to_owned(),
            dev_secret(&secrets.join("vault_master_key"), "dev1:")?,
        );
    }
    Ok(env)
}

/// The path of a 0600 file holding `prefix` + base64 of 32 random bytes, created if missing.
fn dev_secret(path: &Path, prefix: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    if !path.exists() {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
        let value = format!(
            "{prefix}{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
        );
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)?.write_all(value.as_bytes())?;
    }
    Ok(path.display().to_string())
}

/// Builds the four service binaries and the emulators with the same cargo and profile as this
/// `orchctl`, so
/// `cargo run -p orchctl -- up` works on a fresh clone.
fn build_services() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build").arg("--quiet");
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    for service in Service::ALL {
        cmd.args(["-p", service.name()]);
    }
    // The local stand-ins for GitHub and the providers.
    cmd.args([
        "-p",
        "orchestrator-github-emulator",
        "-p",
        "orchestrator-provider-emulators",
    ]);
    let status = cmd.status().context("cannot run cargo build")?;
    anyhow::ensure!(status.success(), "building the services failed");
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    })
}

fn read_addr_file(path: &Path) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let addr = |key: &str| -> anyhow::Result<SocketAddr> {
        Ok(value[key].as_str().context("missing address")?.parse()?)
    };
    Ok((addr("grpc")?, addr("admin")?))
}

/// Where a client connects for a listener bound to `addr` (a wildcard means loopback).
fn connect_target(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("[::1]:{}", addr.port()),
        _ => addr.to_string(),
    }
}

#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("orchctl | {line}");
}

/// Copies a child's output to ours, each line prefixed with its name.
fn prefix_output(label: &'static str, child: &mut Child) {
    #[allow(clippy::print_stdout)]
    fn copy<R: tokio::io::AsyncRead + Unpin + Send + 'static>(label: &'static str, reader: R) {
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{label:>13} | {line}");
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        copy(label, out);
    }
    if let Some(err) = child.stderr.take() {
        copy(label, err);
    }
}

/// A random development token in infra's secrets folder (created once); returns its path.
/// The local Time4VPS account and its servers "bought in advance" (on loopback addresses).
const DEV_TIME4VPS_USER: &str = "dev";
const DEV_TIME4VPS_SERVERS: &str = "101=127.61.0.11,102=127.61.0.12";

fn dev_token(state: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = state.join("secrets").join(Service::Infra.name());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    dev_secret(&path, "dev-")?;
    Ok(path)
}

/// The orchestrator's development admin SSH key (L1, infra's alone), created once.
fn dev_admin_key(state: &Path) -> anyhow::Result<PathBuf> {
    use secrecy::ExposeSecret as _;
    use std::io::Write as _;
    let dir = state.join("secrets").join(Service::Infra.name());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("orchestrator_ssh_key");
    if !path.exists() {
        let key = orchestrator_deploy_keys::generate("orchestrator-admin")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&path)?
            .write_all(key.private_openssh.expose_secret().as_bytes())?;
    }
    Ok(path)
}

/// The development GitHub App key pair, created once: the private half is the broker's alone
/// (0600, in its secrets folder), the public half is what the emulator trusts.
struct AppKeyFiles {
    private: PathBuf,
    public: PathBuf,
}

fn dev_app_key(state: &Path) -> anyhow::Result<AppKeyFiles> {
    let dir = state.join("secrets").join(Service::SecretBroker.name());
    std::fs::create_dir_all(&dir)?;
    let files = AppKeyFiles {
        private: dir.join("github_app_key"),
        public: state.join("run").join("github_app_key.pub"),
    };
    if !files.private.exists() || !files.public.exists() {
        use std::io::Write as _;
        let (private, public) = orchestrator_github_emulator::generate_app_key();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&files.private)?
            .write_all(private.as_bytes())?;
        std::fs::write(&files.public, public)?;
    }
    Ok(files)
}

/// Starts an emulator binary on free ports and returns it with what it wrote to its address
/// file (`addr_var` names the variable that tells it where).
async fn start_emulator(
    bin_dir: &Path,
    run_dir: &Path,
    name: &str,
    label: &'static str,
    env: &[(&str, String)],
    addr_var: &str,
) -> anyhow::Result<(Child, serde_json::Value)> {
    let bin = bin_dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} not found (build with `cargo build --bins`, or pass --bin-dir)",
        bin.display()
    );
    let addr_file = run_dir.join(format!("{name}.json"));
    let _ = std::fs::remove_file(&addr_file);
    let mut child = Command::new(&bin)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env(addr_var, &addr_file)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    prefix_output(label, &mut child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited during start-up ({status})");
        }
        if let Ok(bytes) = std::fs::read(&addr_file) {
            return Ok((child, serde_json::from_slice(&bytes)?));
        }
        anyhow::ensure!(Instant::now() < deadline, "{name} did not start within 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[allow(clippy::print_stdout)]
fn print_summary(ready: &[Running], pki: &Path, github_url: &str) {
    let cert = |name: &str| pki.join(name).display().to_string();
    println!();
    println!("The mesh is up: four processes, each with its own identity and environment.");
    println!();
    println!(
        "  {:<14} {:<8} {:<22} {:<22}",
        "service", "pid", "gRPC (mTLS)", "admin (HTTP)"
    );
    for r in ready {
        println!(
            "  {:<14} {:<8} {:<22} http://{}/readyz",
            r.service.name(),
            r.child
                .id()
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            r.grpc,
            r.admin
        );
    }
    if let Some(vault) = ready.iter().find(|r| r.service == Service::Vault) {
        let target = connect_target(vault.grpc);
        let flags = format!(
            "--protocol grpc --cacert {} --cert {} --key {}",
            cert("ca.crt"),
            cert("api.crt"),
            cert("api.key")
        );
        println!();
        println!("Try it (as the `api` identity):");
        println!("  buf curl {flags} https://{target} --list-methods");
        println!("  buf curl {flags} https://{target}/grpc.health.v1.Health/Check -d '{{}}'");
        println!(
            "  buf curl {flags} https://{target}/orchestrator.vault.v1.VaultService/GetUserSecret -d '{{}}'   # PERMISSION_DENIED: only infra reads values"
        );
    }
    println!();
    println!("GitHub (local emulator, used by the secret broker): {github_url}");
    println!();
    println!("Press Ctrl-C to stop all four.");
    println!();
}

/// Waits for Ctrl-C or SIGTERM (returns `None`) or for a process to exit (returns its name).
async fn wait_for_exit_or_signal(
    ready: &mut [Running],
    github: &mut Child,
) -> Option<&'static str> {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return None,
            _ = term.recv() => return None,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for r in ready.iter_mut() {
                    if let Ok(Some(_)) = r.child.try_wait() {
                        return Some(r.service.name());
                    }
                }
                if let Ok(Some(_)) = github.try_wait() {
                    return Some("the GitHub emulator");
                }
            }
        }
    }
}

/// SIGTERM, a grace period for draining, then SIGKILL.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // `kill` the command: sending a signal from Rust needs unsafe libc or another crate.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
