//! `orchctl health`: the gRPC health of each service, asked over mTLS. Where a local mesh
//! (`orchctl up`, any `--port`) wrote its address files, each service is asked where it listens;
//! otherwise at its default port on `--host`.

use std::path::{Path, PathBuf};

use orchestrator_mesh::{Identity, MeshTls, Service};
use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::conn::{MeshArgs, connect};
use crate::output::{OutputArgs, print_json};

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Host the services listen on, each on its default port (default: where `orchctl up`'s
    /// address files say, else 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// The state directory of `orchctl up`, whose `run/<service>.json` name the addresses.
    #[arg(long, default_value = ".orchestrator")]
    state_dir: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: HealthArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let tls = args.mesh.tls("operator")?;
        let mut failed = 0;
        let mut rows = Vec::new();
        for service in Service::ALL {
            let target = target(&args, service);
            let server = args.mesh.server(service)?;
            let answer = check(&tls, &target, server, service).await;
            if args.output.json() {
                let (status, error) = match &answer {
                    Ok(status) => (status.clone(), None),
                    Err(e) => ("DOWN".to_owned(), Some(format!("{e:#}"))),
                };
                rows.push(json!({
                    "service": service.name(),
                    "target": target,
                    "status": status,
                    "error": error,
                }));
            } else {
                match &answer {
                    Ok(status) => println!("{:<14} {target:<16} {status}", service.name()),
                    Err(e) => println!("{:<14} {target:<16} DOWN: {e:#}", service.name()),
                }
            }
            failed += usize::from(answer.is_err());
        }
        if args.output.json() {
            print_json(&json!(rows))?;
        }
        anyhow::ensure!(failed == 0, "{failed} service(s) not healthy");
        Ok(())
    })
}

/// Where `service` listens: `--host` at its default port, else its address file's, else
/// loopback at its default port.
fn target(args: &HealthArgs, service: Service) -> String {
    let default = |host: &str| format!("{host}:{}", service.default_port());
    match &args.host {
        Some(host) => default(host),
        None => address_file(&args.state_dir, service).unwrap_or_else(|| default("127.0.0.1")),
    }
}

/// The gRPC address `orchctl up` recorded for `service` (a wildcard bind means loopback).
fn address_file(state_dir: &Path, service: Service) -> Option<String> {
    let file = state_dir
        .join("run")
        .join(format!("{}.json", service.name()));
    let text = std::fs::read_to_string(file).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let addr = value["grpc"].as_str()?.parse().ok()?;
    Some(crate::up::connect_target(addr))
}

/// One health check of `service` at `target`, expecting the server to prove `server`.
pub(crate) async fn check(
    tls: &std::sync::Arc<MeshTls>,
    target: &str,
    server: Identity,
    service: Service,
) -> anyhow::Result<String> {
    let channel = connect(tls, target, server).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.grpc_service().to_owned(),
        })
        .await?;
    Ok(format!("{:?}", response.into_inner().status()))
}
