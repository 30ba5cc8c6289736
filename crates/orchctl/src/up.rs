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
}

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

    let mut running = Vec::new();
    for service in Service::ALL {
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
        prefix_output(service, &mut child);
        running.push((service, child, addr_file));
    }

    let operator = MeshTls::load(caller_files(&pki, "operator"), None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = Vec::new();
    for (service, mut child, addr_file) in running {
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
    print_summary(&ready, &pki);

    let ended = wait_for_exit_or_signal(&mut ready).await;
    for r in &mut ready {
        terminate(&mut r.child).await;
    }
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

/// Builds the four service binaries with the same cargo and profile as this `orchctl`, so
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

/// Copies a child's output to ours, each line prefixed with the service name.
fn prefix_output(service: Service, child: &mut Child) {
    #[allow(clippy::print_stdout)]
    fn copy<R: tokio::io::AsyncRead + Unpin + Send + 'static>(service: Service, reader: R) {
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{:>13} | {line}", service.name());
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        copy(service, out);
    }
    if let Some(err) = child.stderr.take() {
        copy(service, err);
    }
}

#[allow(clippy::print_stdout)]
fn print_summary(ready: &[Running], pki: &Path) {
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
    println!("Press Ctrl-C to stop all four.");
    println!();
}

/// Waits for Ctrl-C or SIGTERM (returns `None`) or for a service to exit (returns it).
async fn wait_for_exit_or_signal(ready: &mut [Running]) -> Option<Service> {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return None,
            _ = term.recv() => return None,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for r in ready.iter_mut() {
                    if let Ok(Some(_)) = r.child.try_wait() {
                        return Some(r.service);
                    }
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
