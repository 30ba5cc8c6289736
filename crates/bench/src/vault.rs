//! `orchestrator-bench vault`: the vault over real mTLS against PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orchestrator_e2e::{Launch, Pki};
use orchestrator_mesh::{MeshTls, Service};
use orchestrator_proto::vault::v1 as pb;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use orchestrator_store::testing::TestDatabase;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Channel, Server};

use crate::{measure, row};

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
    /// Rows the vault rewraps per transaction.
    #[arg(long, default_value_t = 200)]
    rewrap_batch: usize,
}

const VALUE: [u8; 1024] = [0x5a; 1024];

fn put(user: &str, key: String) -> pb::PutUserSecretRequest {
    pb::PutUserSecretRequest {
        user_id: user.into(),
        key,
        value: VALUE.to_vec(),
        ..Default::default()
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
    let pki = Pki::new()?;
    let db = TestDatabase::postgres(&["vault"]).await;
    let vault = Launch::new(Service::Vault, &pki)?
        .database(&db.url("vault"))
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
    row("echo, bare tonic mTLS (ceiling)", &ceiling, None);
    row("GetUserSecret (+ durable audit)", &get, Some(&ceiling));
    row(
        "PutUserSecret (+ durable audit)",
        &put_figures,
        Some(&ceiling),
    );
    row("(initial load, PutUserSecret)", &load, Some(&ceiling));

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
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
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
                i += 8;
            }
        }));
    }
    let started = Instant::now();
    operator
        .rotate_data_key(pb::RotateDataKeyRequest::default())
        .await?;
    let total = loop {
        let status = operator
            .get_key_status(pb::GetKeyStatusRequest {})
            .await?
            .into_inner();
        let rewrap = status.rewrap.unwrap_or_default();
        if rewrap.rows_done == rewrap.rows_total && !rewrap.running {
            break rewrap.rows_total;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    stop_reads.store(true, Ordering::Relaxed);
    for r in readers {
        r.await?;
    }
    println!(
        "  rewrap of {total} rows: {:.1} s, {:.0} rows/s; reads meanwhile: {} ok, {} failed",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        reads.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    println!(
        "  vault RSS: idle after start {} MiB; after the run {} MiB",
        idle_rss.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        rss_kib(pid).map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
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
