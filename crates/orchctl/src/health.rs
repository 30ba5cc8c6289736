//! `orchctl health`: the gRPC health of each service, asked over mTLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_mesh::{Identity, MeshTls, Service, TlsFiles};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// The PKI directory holding `ca.crt` and the caller's certificate.
    #[arg(long, default_value = ".orchestrator/pki")]
    pki: PathBuf,
    /// The identity to call as.
    #[arg(long, default_value = "operator")]
    identity: String,
    #[arg(long, default_value = "orchestrator.local", env = "ORCH_TRUST_DOMAIN")]
    trust_domain: String,
    /// Host the services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: HealthArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let tls = MeshTls::load(caller_files(&args.pki, &args.identity), None)?;
        let mut failed = 0;
        for service in Service::ALL {
            let target = format!("{}:{}", args.host, service.default_port());
            let server = format!("spiffe://{}/{}", args.trust_domain, service.name()).parse()?;
            match check(&tls, &target, server, service).await {
                Ok(status) => println!("{:<14} {target:<16} {status}", service.name()),
                Err(e) => {
                    failed += 1;
                    println!("{:<14} {target:<16} DOWN: {e:#}", service.name());
                }
            }
        }
        anyhow::ensure!(failed == 0, "{failed} service(s) not healthy");
        Ok(())
    })
}

pub(crate) fn caller_files(pki: &Path, identity: &str) -> TlsFiles {
    TlsFiles {
        cert: pki.join(format!("{identity}.crt")),
        key: pki.join(format!("{identity}.key")),
        ca: pki.join("ca.crt"),
    }
}

/// One health check of `service` at `target`, expecting the server to prove `server`.
pub(crate) async fn check(
    tls: &std::sync::Arc<MeshTls>,
    target: &str,
    server: Identity,
    service: Service,
) -> anyhow::Result<String> {
    let channel = tokio::time::timeout(
        Duration::from_secs(3),
        orchestrator_mesh::client::connect(tls.clone(), target, server),
    )
    .await
    .context("connect timed out")??;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.grpc_service().to_owned(),
        })
        .await?;
    Ok(format!("{:?}", response.into_inner().status()))
}
