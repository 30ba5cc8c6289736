//! Benchmarks that print figures: operations per second, p50 and p99 latency, and the ratio to
//! a baseline measured in the same process on the same machine. Results go to
//! `docs/BENCHMARKS.md` by hand; no test asserts on timings.
//!
//! `cargo run --release -p orchestrator-bench -- mesh`

#![allow(clippy::print_stdout)] // Printing figures is this binary's job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use orchestrator_mesh::{Identity, MeshTls, Policy, TlsFiles};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

mod baseline;
mod secrets;
mod vault;

#[derive(Debug, Subcommand)]
enum Bench {
    /// The vault over mTLS against PostgreSQL (1 KiB values): Get and Put with their durable
    /// audit records against OpenBao's KV v2 (raft, TLS with a client certificate, file
    /// audit device) and pgbench (PostgreSQL alone) in the same run, and a bare tonic mTLS
    /// echo of the same size; rewrap rate while reads go on; idle memory.
    Vault(vault::Args),
    /// 100 secrets pushed through the broker to the GitHub emulator (paced, with latency),
    /// against the floor the pacing allows and an unpaced parallel push.
    Secrets(secrets::Args),
    /// Unary RPCs through the mesh server (mTLS accept, identity, policy, metrics, tracing)
    /// against a bare tonic server on the same mTLS transport, both serving the health service:
    /// the ratio is the cost of the mesh's per-RPC layers.
    Mesh {
        /// Calls per scenario.
        #[arg(long, default_value_t = 40_000)]
        calls: usize,
        /// Concurrent callers sharing one connection.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// New connections (full mTLS handshake + one call) per scenario.
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // As in a service: metrics recorded, one log line per RPC formatted (into a sink here).
    let _metrics = orchestrator_mesh::telemetry::init_metrics()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter("info")
        .init();
    match Cli::parse().bench {
        Bench::Mesh {
            calls,
            concurrency,
            connections,
        } => mesh(calls, concurrency, connections).await,
        Bench::Vault(args) => vault::run(args).await,
        Bench::Secrets(args) => secrets::run(args).await,
    }
}

pub(crate) struct Figures {
    pub(crate) ops_per_sec: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    /// CPU time the whole machine spent (every process and the kernel, all cores) per call:
    /// steadier than ops/s where the machine's speed varies between runs, and what a
    /// CPU-bound service's throughput follows.
    pub(crate) cpu_per_op: Option<Duration>,
}

/// The machine's busy CPU time so far (all cores; `/proc/stat`), where there is one.
pub(crate) fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy: u64 = fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(busy * 10))
}

/// When a scenario started, by the wall clock and by the machine's busy CPU time.
pub(crate) struct Started {
    at: Instant,
    busy: Option<Duration>,
}

impl Started {
    pub(crate) fn now() -> Self {
        Self {
            at: Instant::now(),
            busy: machine_busy(),
        }
    }

    /// The scenario's figures from each call's latency.
    pub(crate) fn figures(self, mut latencies: Vec<Duration>) -> Figures {
        let elapsed = self.at.elapsed();
        let busy = self
            .busy
            .zip(machine_busy())
            .map(|(a, b)| b.saturating_sub(a));
        latencies.sort_unstable();
        Figures {
            ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: quantile(&latencies, 0.50),
            p99: quantile(&latencies, 0.99),
            cpu_per_op: busy
                .filter(|_| !latencies.is_empty())
                .map(|b| b / latencies.len() as u32),
        }
    }
}

/// The `q` quantile of `sorted` latencies; zero where there are none (a phase too short for
/// any call to finish), not a panic.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

pub(crate) fn row(name: &str, f: &Figures, baseline: Option<&Figures>) {
    let ratio = baseline.map_or_else(
        || "1.00 (baseline)".to_owned(),
        |b| format!("{:.2}", f.ops_per_sec / b.ops_per_sec),
    );
    let cpu = f.cpu_per_op.map_or_else(String::new, |c| {
        format!("   cpu {:>6.0} us/op", c.as_secs_f64() * 1e6)
    });
    println!(
        "  {name:<34} {:>10.0} ops/s   p50 {:>8.3} ms   p99 {:>8.3} ms   ratio {ratio}{cpu}",
        f.ops_per_sec,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3
    );
}

async fn mesh(calls: usize, concurrency: usize, connections: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path();
    orchestrator_pki::init(pki, "orchestrator.local", &["vault", "api"], 1)?;
    let files = |name: &str| TlsFiles {
        cert: pki.join(format!("{name}.crt")),
        key: pki.join(format!("{name}.key")),
        ca: pki.join("ca.crt"),
    };
    let vault: Identity = "spiffe://orchestrator.local/vault".parse()?;
    let api = MeshTls::load(files("api"), None)?;
    let (_stop_tx, stop) = watch::channel(false);

    // Baseline: the same mTLS accept loop feeding a bare tonic server, no layers.
    let baseline_listener = TcpListener::bind("127.0.0.1:0").await?;
    let baseline_addr = baseline_listener.local_addr()?;
    let incoming = orchestrator_mesh::transport::accept(
        baseline_listener,
        MeshTls::load(files("vault"), Some(vault.clone()))?,
        "orchestrator.local".parse()?,
        stop.clone(),
    );
    let (_, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming)),
    );

    // The mesh server, as every service runs it, with the repository's policy.
    let mesh_listener = TcpListener::bind("127.0.0.1:0").await?;
    let mesh_addr = mesh_listener.local_addr()?;
    let policy = Arc::new(Policy::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy.toml"),
    )?);
    let (_, health) = tonic_health::server::health_reporter();
    tokio::spawn(orchestrator_mesh::server::serve_grpc(
        mesh_listener,
        MeshTls::load(files("vault"), Some(vault.clone()))?,
        "orchestrator.local".parse()?,
        policy,
        Duration::from_secs(3600),
        Routes::new(health),
        stop,
    ));

    println!(
        "mesh: unary health checks, {calls} calls with {concurrency} callers on one connection; {connections} fresh mTLS connections"
    );
    let base_channel =
        orchestrator_mesh::client::connect(api.clone(), &baseline_addr.to_string(), vault.clone())
            .await?;
    let mesh_channel =
        orchestrator_mesh::client::connect(api.clone(), &mesh_addr.to_string(), vault.clone())
            .await?;
    unary(&base_channel, calls / 10, concurrency).await?; // warm-up
    unary(&mesh_channel, calls / 10, concurrency).await?;
    let base = unary(&base_channel, calls, concurrency).await?;
    let mesh = unary(&mesh_channel, calls, concurrency).await?;
    row("bare tonic over mTLS (baseline)", &base, None);
    row("mesh (+ identity, policy, obs)", &mesh, Some(&base));

    let base = handshakes(&api, &baseline_addr.to_string(), &vault, connections).await?;
    let mesh = handshakes(&api, &mesh_addr.to_string(), &vault, connections).await?;
    row("new connection + call, bare tonic", &base, None);
    row("new connection + call, mesh", &mesh, Some(&base));
    Ok(())
}

async fn unary(channel: &Channel, calls: usize, concurrency: usize) -> anyhow::Result<Figures> {
    let client = HealthClient::new(channel.clone());
    measure(calls, concurrency, move |_| {
        let mut client = client.clone();
        async move {
            client.check(HealthCheckRequest::default()).await?;
            Ok(())
        }
    })
    .await
}

/// Runs `calls` calls of `call(i)` from `concurrency` tasks and measures each.
pub(crate) async fn measure<F, Fut>(
    calls: usize,
    concurrency: usize,
    call: F,
) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Started::now();
    let mut tasks = Vec::new();
    let mut first = 0;
    for t in 0..concurrency {
        let call = call.clone();
        // Every call index 0..calls exactly once, spread over the tasks.
        let n = calls / concurrency + usize::from(t < calls % concurrency);
        let start_index = first;
        first += n;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for i in start_index..start_index + n {
                let started = Instant::now();
                call(i).await?;
                latencies.push(started.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(started.figures(all))
}

async fn handshakes(
    api: &Arc<MeshTls>,
    target: &str,
    server: &Identity,
    n: usize,
) -> anyhow::Result<Figures> {
    let started = Started::now();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let channel =
            orchestrator_mesh::client::connect(api.clone(), target, server.clone()).await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        latencies.push(t.elapsed());
    }
    Ok(started.figures(latencies))
}
