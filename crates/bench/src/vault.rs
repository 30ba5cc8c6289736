//! `orchestrator-bench vault`: the vault over real mTLS against PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use orchestrator_e2e::{Launch, Pki};
use orchestrator_mesh::{MeshTls, Service};
use orchestrator_proto::vault::v1 as pb;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use orchestrator_store::testing::TestDatabase;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Channel, Server};

use crate::{Figures, baseline, measure, row};

/// The project every read of the benchmark is for (its keys are granted to it).
const BENCH_PROJECT: &str = "prj-bench";

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Calls per scenario.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Concurrent callers, sharing one connection per identity.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Distinct secrets the Get scenario reads.
    #[arg(long, default_value_t = 1_000)]
    keys: usize,
    /// Rows written before a rotation, for the rewrap rate.
    #[arg(long, default_value_t = 50_000)]
    rewrap_rows: usize,
    /// Rows the vault rewraps per transaction (`VAULT_REWRAP_BATCH`).
    #[arg(long, default_value_t = 1_000)]
    rewrap_batch: usize,
    /// Seconds each pgbench script runs (the PostgreSQL ceiling).
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
    /// Skip the baselines (OpenBao and pgbench).
    #[arg(long)]
    no_baselines: bool,
}

const VALUE: [u8; 1024] = [0x5a; 1024];
/// The same 1 KiB value as a JSON string for OpenBao (0x5a is `Z`).
const VALUE_TEXT: &str = {
    match std::str::from_utf8(&VALUE) {
        Ok(s) => s,
        Err(_) => panic!("VALUE is ASCII"),
    }
};

/// The baselines' figures, measured before the vault starts so they do not share the CPU.
#[derive(Default)]
struct Baselines {
    bao_read: Option<Figures>,
    bao_write: Option<Figures>,
    pg_select: Option<f64>,
}

#[allow(clippy::print_stdout)]
async fn baselines(args: &Args) -> anyhow::Result<Baselines> {
    let mut out = Baselines::default();
    if args.no_baselines {
        return Ok(out);
    }
    println!(
        "baselines: pgbench ({} clients, {} s per script), then OpenBao KV v2 ({} calls, {} callers)",
        args.concurrency, args.pgbench_seconds, args.calls, args.concurrency
    );
    if let Some(figures) = baseline::pgbench(args.concurrency, args.pgbench_seconds).await? {
        for (name, f) in &figures {
            println!(
                "  {name:<34} {:>10.0} tps     mean {:>7.3} ms",
                f.tps, f.latency_ms
            );
        }
        out.pg_select = Some(figures[0].1.tps);
    }
    if let Some(bao) = baseline::find_bao() {
        let server = baseline::OpenBao::start(&bao, args.concurrency).await?;
        let keys = args.keys;
        // Load the keys the reads read, and warm up, as for the vault.
        server
            .write(args.keys, args.concurrency, VALUE_TEXT, |i| i)
            .await?;
        server
            .read(args.calls / 10, args.concurrency, keys, VALUE_TEXT)
            .await?;
        let read = server
            .read(args.calls, args.concurrency, keys, VALUE_TEXT)
            .await?;
        // Writes over 5,000 keys, as the vault's Put scenario: first writes and new versions.
        let write = server
            .write(args.calls, args.concurrency, VALUE_TEXT, |i| i % 5_000)
            .await?;
        row("OpenBao KV v2 read (raft, mTLS, audit)", &read, None);
        row("OpenBao KV v2 write", &write, None);
        out.bao_read = Some(read);
        out.bao_write = Some(write);
    }
    Ok(out)
}

/// `name: a / b = ratio (target)`, or why it cannot be said.
#[allow(clippy::print_stdout)]
fn ratio(name: &str, a: f64, b: Option<f64>, target: f64) {
    match b {
        Some(b) if b > 0.0 => {
            let r = a / b;
            let met = if r >= target { "met" } else { "NOT met" };
            println!("  {name:<34} {r:>6.2}   (target >= {target}: {met})");
        }
        _ => println!("  {name:<34}    n/a   (baseline skipped)"),
    }
}

/// How long the rewrap may go without storing a row before the benchmark gives up on it.
const REWRAP_STALL: Duration = Duration::from_secs(60);

fn put(user: &str, key: String) -> pb::PutUserSecretRequest {
    pb::PutUserSecretRequest {
        user_id: user.into(),
        key,
        value: VALUE.to_vec(),
        ..Default::default()
    }
}

/// The CPU time process `pid` has used so far (user and system; `/proc`, in the kernel's fixed
/// 100 ticks a second).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces, in its parentheses.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The vault process's own CPU per call between two readings of [`process_cpu`]: the part of
/// a figure's `cpu` that is the vault's, steadier than ops/s when the machine's speed moves.
fn vault_share(name: &str, before: Option<Duration>, after: Option<Duration>, calls: usize) {
    if let (Some(before), Some(after)) = (before, after) {
        let per_call = after.saturating_sub(before).as_secs_f64() * 1e6 / calls.max(1) as f64;
        println!("  {name:<34} vault process {per_call:>6.0} us/op");
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[allow(clippy::print_stdout)]
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let base = baselines(&args).await?;
    let pki = Pki::new()?;
    let db = TestDatabase::postgres(&["vault"]).await;
    let vault = Launch::new(Service::Vault, &pki)?
        .test_database(&db)
        .env("VAULT_REWRAP_BATCH", args.rewrap_batch.to_string())
        .env("VAULT_REWRAP_INTERVAL", "1h")
        .spawn()
        .await?;
    let pid = vault.pid().unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(pid);

    let client = |name: &str| -> anyhow::Result<Arc<MeshTls>> { pki.client(name) };
    let api = VaultServiceClient::new(vault.channel(&client("api")?).await?);
    let infra = VaultServiceClient::new(vault.channel(&client("infra")?).await?);
    let scaffolder = VaultServiceClient::new(vault.channel(&client("scaffolder")?).await?);
    let mut operator = VaultServiceClient::new(vault.channel(&client("operator")?).await?);

    // The ceiling: a bare tonic echo of the same payload over the same mTLS stack, in process.
    let (_stop_tx, stop) = watch::channel(false);
    let echo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo_listener.local_addr()?;
    let incoming = orchestrator_mesh::transport::accept(
        echo_listener,
        MeshTls::load(pki.files("vault"), None)?,
        "orchestrator.local".parse()?,
        stop,
    );
    tokio::spawn(
        Server::builder()
            .add_service(echo::Echo)
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming)),
    );
    let echo_channel = orchestrator_e2e::channel(&client("api")?, echo_addr, "vault").await?;

    println!(
        "vault: 1 KiB values, {} calls per scenario, {} concurrent callers; PostgreSQL at ORCH_TEST_DATABASE_URL; vault pid {pid}",
        args.calls, args.concurrency
    );
    // Load the keys the Get scenario reads, and warm everything up.
    let load = measure(args.keys, args.concurrency, {
        let api = api.clone();
        move |i| {
            let mut api = api.clone();
            async move {
                api.put_user_secret(put("bench", format!("key-{i}")))
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    // Reads are served only for a project the key is granted to (not part of any figure).
    measure(args.keys, args.concurrency, {
        let scaffolder = scaffolder.clone();
        move |i| {
            let mut scaffolder = scaffolder.clone();
            async move {
                scaffolder
                    .grant_user_secret(pb::GrantUserSecretRequest {
                        user_id: "bench".into(),
                        key: format!("key-{i}"),
                        project_id: BENCH_PROJECT.into(),
                    })
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    let echo = |channel: Channel| {
        move |_| {
            let channel = channel.clone();
            async move {
                echo::call(channel, VALUE.to_vec()).await?;
                Ok(())
            }
        }
    };
    measure(
        args.calls / 10,
        args.concurrency,
        echo(echo_channel.clone()),
    )
    .await?;

    let ceiling = measure(args.calls, args.concurrency, echo(echo_channel.clone())).await?;
    let keys = args.keys;
    let cpu_before_get = process_cpu(pid);
    let get = measure(args.calls, args.concurrency, {
        let infra = infra.clone();
        move |i| {
            let mut infra = infra.clone();
            async move {
                let req = pb::GetUserSecretRequest {
                    user_id: "bench".into(),
                    key: format!("key-{}", i % keys),
                    version: 0,
                    project_id: BENCH_PROJECT.into(),
                };
                infra.get_user_secret(req).await?;
                Ok(())
            }
        }
    })
    .await?;
    let cpu_before_put = process_cpu(pid);
    let put_figures = measure(args.calls, args.concurrency, {
        let api = api.clone();
        move |i| {
            let mut api = api.clone();
            async move {
                api.put_user_secret(put("bench-put", format!("key-{}", i % 5_000)))
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    let cpu_after_put = process_cpu(pid);
    row("echo, bare tonic mTLS (ceiling)", &ceiling, None);
    row("GetUserSecret (+ durable audit)", &get, Some(&ceiling));
    row(
        "PutUserSecret (+ durable audit)",
        &put_figures,
        Some(&ceiling),
    );
    row("(initial load, PutUserSecret)", &load, Some(&ceiling));
    vault_share("GetUserSecret", cpu_before_get, cpu_before_put, args.calls);
    vault_share("PutUserSecret", cpu_before_put, cpu_after_put, args.calls);

    // Rewrap: many rows on data key 1, rotate, and read throughout.
    let filler = args.rewrap_rows.saturating_sub(args.keys + 5_000);
    measure(filler, args.concurrency, {
        let api = api.clone();
        move |i| {
            let mut api = api.clone();
            async move {
                api.put_user_secret(put("bench-rewrap", format!("key-{i}")))
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    let stop_reads = Arc::new(AtomicBool::new(false));
    let (reads, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut readers = Vec::new();
    for r in 0..8 {
        let (mut infra, stop, reads, failed) = (
            infra.clone(),
            stop_reads.clone(),
            reads.clone(),
            failed.clone(),
        );
        readers.push(tokio::spawn(async move {
            // Each read's latency, with when it ended (the wall clock, as the vault's end time).
            let (mut i, mut latencies) = (r, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let req = pb::GetUserSecretRequest {
                    user_id: "bench".into(),
                    key: format!("key-{}", i % keys),
                    version: 0,
                    project_id: BENCH_PROJECT.into(),
                };
                match infra.get_user_secret(req).await {
                    Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                latencies.push((SystemTime::now(), began.elapsed()));
                i += 8;
            }
            latencies
        }));
    }
    let started = SystemTime::now();
    operator
        .rotate_data_key(pb::RotateDataKeyRequest::default())
        .await?;
    // Polled twice a second: each status counts every ciphertext (tens of milliseconds of the
    // database at this size), which polling ten times a second took from the rewrap itself.
    // The end is the vault's own end time (the same clock), so polling less does not round it.
    // The reads counted at each poll: the reads/s reported are those up to the last poll
    // before the end, not the faster ones after it.
    let mut counted = vec![(started, 0)];
    // A rewrap that stops moving is a failure to report, not a reason to wait forever.
    let (mut done_before, mut moved_at) = (-1, Instant::now());
    let (total, ended) = loop {
        counted.push((SystemTime::now(), reads.load(Ordering::Relaxed)));
        let status = operator
            .get_key_status(pb::GetKeyStatusRequest {})
            .await?
            .into_inner();
        let rewrap = status.rewrap.unwrap_or_default();
        if rewrap.rows_done == rewrap.rows_total && !rewrap.running {
            let ended = rewrap.end_time.and_then(|t| SystemTime::try_from(t).ok());
            break (rewrap.rows_total, ended.unwrap_or_else(SystemTime::now));
        }
        if rewrap.rows_done != done_before {
            (done_before, moved_at) = (rewrap.rows_done, Instant::now());
        }
        anyhow::ensure!(
            moved_at.elapsed() < REWRAP_STALL,
            "the rewrap made no progress for {} s: {} of {} rows done, running: {}",
            REWRAP_STALL.as_secs(),
            rewrap.rows_done,
            rewrap.rows_total,
            rewrap.running
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = ended.duration_since(started).unwrap_or_default();
    let (read_until, read_during) = counted
        .into_iter()
        .take_while(|(at, _)| *at <= ended)
        .last()
        .unwrap_or((started, 0));
    let read_for = read_until.duration_since(started).unwrap_or_default();
    stop_reads.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for r in readers {
        let read = r.await?.into_iter();
        latencies.extend(read.filter(|(at, _)| *at <= ended).map(|(_, l)| l));
    }
    latencies.sort_unstable();
    let ms = |q| crate::quantile(&latencies, q).as_secs_f64() * 1e3;
    let rate = total as f64 / elapsed.as_secs_f64();
    let (ok, failed) = (
        reads.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    let met = |yes: bool| if yes { "met" } else { "NOT met" };
    println!(
        "  rewrap of {total} rows: {:.1} s, {rate:.0} rows/s; reads meanwhile: {ok} ok ({:.0}/s, \
         p50 {:.1} ms, p99 {:.1} ms), {failed} failed (target >= 20000 rows/s, 0 failed: {})",
        elapsed.as_secs_f64(),
        read_during as f64 / read_for.as_secs_f64().max(1e-3),
        ms(0.50),
        ms(0.99),
        met(rate >= 20_000.0 && failed == 0 && ok > 0),
    );
    println!(
        "  vault RSS: idle after start {} MiB (target <= 30 MiB: {}); after the run {} MiB",
        idle_rss.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        met(idle_rss.is_some_and(|k| k <= 30 * 1024)),
        rss_kib(pid).map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
    );
    println!("ratios (same run):");
    ratio(
        "Get / OpenBao KV read",
        get.ops_per_sec,
        base.bao_read.as_ref().map(|f| f.ops_per_sec),
        2.0,
    );
    ratio("Get / pgbench -S", get.ops_per_sec, base.pg_select, 0.5);
    ratio(
        "Put / OpenBao KV write",
        put_figures.ops_per_sec,
        base.bao_write.as_ref().map(|f| f.ops_per_sec),
        4.0,
    );
    println!(
        "  {:<34} {:>6.2} ms (target <= 10 ms: {})",
        "Get p99",
        get.p99.as_secs_f64() * 1e3,
        met(get.p99 <= Duration::from_millis(10))
    );
    drop(vault);
    drop(db);
    Ok(())
}

/// A bare echo service (`/bench.Echo/Echo`): request bytes back as the response.
mod echo {
    use std::convert::Infallible;
    use std::future::{Ready, ready};
    use std::task::{Context, Poll};

    use futures::future::BoxFuture;
    use orchestrator_e2e::raw::RawCodec as Raw;
    use tonic::Status;
    use tonic::server::{NamedService, UnaryService};
    use tonic::transport::Channel;

    #[derive(Debug, Clone, Copy)]
    pub(super) struct Echo;

    impl NamedService for Echo {
        const NAME: &'static str = "bench.Echo";
    }

    struct Unary;

    impl UnaryService<Vec<u8>> for Unary {
        type Response = Vec<u8>;
        type Future = Ready<Result<tonic::Response<Vec<u8>>, Status>>;
        fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
            ready(Ok(tonic::Response::new(request.into_inner())))
        }
    }

    impl tower::Service<http::Request<tonic::body::Body>> for Echo {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move { Ok(tonic::server::Grpc::new(Raw).unary(Unary, req).await) })
        }
    }

    pub(super) async fn call(channel: Channel, payload: Vec<u8>) -> Result<Vec<u8>, Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/bench.Echo/Echo");
        Ok(grpc
            .unary(tonic::Request::new(payload), path, Raw)
            .await?
            .into_inner())
    }
}
