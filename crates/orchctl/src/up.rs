//! `orchctl up`: the whole mesh on one machine, for development and demos.
//!
//! Each service runs as its own process, started with an emptied environment plus only what
//! that service needs, exactly as separate containers would be.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use orchestrator_devenv::{
    Bound, DevSecrets, Providers, START_ORDER, Secret, ServiceEnv, StateDir, wait_for_address_file,
    wait_until_serving,
};
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

/// The App id of the development GitHub App (the emulator's and the broker's).
const DEV_APP_ID: u64 = 1;

/// The local Time4VPS account and its servers "bought in advance" (on loopback addresses).
const DEV_TIME4VPS_USER: &str = "dev";
const DEV_TIME4VPS_SERVERS: &str = "101=127.61.0.11,102=127.61.0.12";

/// The zone infra manages DNS records in, at the local Cloudflare.
const DEV_DNS_ZONE: &str = "orchestrator.test";

/// How long a process may take to write its address file.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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
    let state = StateDir::new(absolute(&args.state_dir)?);
    let pki = state.pki();
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
    let run_dir = state.run();
    std::fs::create_dir_all(&run_dir)?;
    let policy = absolute(&args.policy)?;
    // Each service's own keys, in a folder of its own, created once and kept.
    let secrets = state.secrets();

    // GitHub, locally: the emulator, trusting a development App key only the broker holds.
    let app_public_key = dev_app_key(&secrets, &run_dir)?;
    let github_emulator_env = [
        ("GITHUB_EMULATOR_ADDR", "127.0.0.1:0".to_owned()),
        ("GITHUB_EMULATOR_APP_ID", DEV_APP_ID.to_string()),
        (
            "GITHUB_EMULATOR_APP_PUBLIC_KEY_FILE",
            app_public_key.display().to_string(),
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
    // DigitalOcean, Cloudflare and Time4VPS, locally, accepting development credentials only
    // infra holds. Emulated servers answer SSH on their own loopback addresses, all on one free
    // port, so infra's readiness checks and Time4VPS takeovers work locally too.
    let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let provider_env = [
        (
            "DIGITALOCEAN_EMULATOR_TOKEN",
            secrets.value(Secret::DigitalOceanToken)?,
        ),
        (
            "CLOUDFLARE_EMULATOR_TOKEN",
            secrets.value(Secret::CloudflareToken)?,
        ),
        ("CLOUDFLARE_EMULATOR_ZONE", DEV_DNS_ZONE.to_owned()),
        ("TIME4VPS_EMULATOR_USER", DEV_TIME4VPS_USER.to_owned()),
        (
            "TIME4VPS_EMULATOR_PASSWORD",
            secrets.value(Secret::Time4VpsPassword)?,
        ),
        ("TIME4VPS_EMULATOR_SERVERS", DEV_TIME4VPS_SERVERS.to_owned()),
        ("PROVIDER_EMULATORS_SSH_PORT", ssh_port.to_string()),
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
    let url = |name: &str| provider_urls[name].as_str().unwrap_or_default().to_owned();
    let provider_apis = Providers {
        digitalocean_url: url("digitalocean"),
        cloudflare_url: format!("{}/client/v4", url("cloudflare")),
        time4vps_url: url("time4vps"),
        time4vps_user: DEV_TIME4VPS_USER.to_owned(),
        dns_zone: DEV_DNS_ZONE.to_owned(),
        ssh_port,
    };

    std::fs::create_dir_all(state.data())?;
    let operator = MeshTls::load(caller_files(&pki, "operator"), None)?;
    let mut ready: Vec<Running> = Vec::new();
    // Dependencies first: each service is told where its peers actually listen.
    for service in START_ORDER {
        let bin = binary(&bin_dir, service.name())?;
        let addr_file = run_dir.join(format!("{}.json", service.name()));
        let _ = std::fs::remove_file(&addr_file);
        let offset = service.default_port() - 50051;
        let port = |base: u16| if base == 0 { 0 } else { base + offset };
        let env = ServiceEnv::new(service)
            .listen(
                SocketAddr::new(args.host, port(args.port)),
                SocketAddr::new(args.host, port(args.admin_port)),
                &addr_file,
            )
            .tls(&caller_files(&pki, service.name()))
            .policy(&policy)
            .trust_domain(&args.trust_domain)
            .sqlite_database(&state.database(service))
            .own_keys(&secrets)?
            .github_app(DEV_APP_ID, &secrets)?
            .github_api(&github_url)
            .github_org(&args.github_org)
            .providers(&provider_apis, &secrets)?
            .inherit_logging();
        let env = ready.iter().fold(env, |env, peer| {
            env.peer(peer.service, &connect_target(peer.grpc))
        });
        let mut child = spawn(&bin, env.vars(), service.name())?;
        let Bound { grpc, admin } =
            wait_until_serving(service.name(), &mut child, &addr_file, START_TIMEOUT).await?;
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

/// Builds the four service binaries and the emulators with the same cargo and profile as this
/// `orchctl`, so
/// `cargo run -p orchctl -- up` works on a fresh clone.
fn build_services() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    // cargo's own progress (a bar on a terminal, `Compiling ...` lines otherwise) goes to the
    // person waiting: the first build takes minutes on a small machine.
    say(
        "building the services and the local emulators (cargo build; the first time takes a while)",
    );
    let started = std::time::Instant::now();
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build");
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
    say(&format!("built in {:.0?}", started.elapsed()));
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// Where a client connects for a listener bound to `addr` (a wildcard means loopback).
pub(crate) fn connect_target(addr: SocketAddr) -> String {
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

/// The development GitHub App key pair, created once: the private half is the broker's alone
/// (in its folder of secrets), the public half is what the emulator trusts. Returns the public
/// half's file.
fn dev_app_key(secrets: &DevSecrets, run_dir: &Path) -> anyhow::Result<PathBuf> {
    let public = run_dir.join("github_app_key.pub");
    if !secrets.path(Secret::GitHubAppKey).exists() || !public.exists() {
        let (private_pem, public_pem) = orchestrator_github_emulator::generate_app_key();
        secrets.put(Secret::GitHubAppKey, &private_pem)?;
        std::fs::write(&public, public_pem)?;
    }
    Ok(public)
}

/// `name` in `bin_dir`, which must be there.
fn binary(bin_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let bin = bin_dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} not found (build with `cargo build --bins`, or pass --bin-dir)",
        bin.display()
    );
    Ok(bin)
}

/// Starts `bin` with an emptied environment plus `env`, its output copied to ours with `label`.
fn spawn<K, V>(
    bin: &Path,
    env: impl IntoIterator<Item = (K, V)>,
    label: &'static str,
) -> anyhow::Result<Child>
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut child = Command::new(bin)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    prefix_output(label, &mut child);
    Ok(child)
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
    let bin = binary(bin_dir, name)?;
    let addr_file = run_dir.join(format!("{name}.json"));
    let _ = std::fs::remove_file(&addr_file);
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let env = env.iter().map(|(var, value)| (*var, value.clone())).chain([
        (addr_var, addr_file.display().to_string()),
        ("RUST_LOG", log),
    ]);
    let mut child = spawn(&bin, env, label)?;
    let addresses = wait_for_address_file(name, &mut child, &addr_file, START_TIMEOUT).await?;
    Ok((child, addresses))
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
