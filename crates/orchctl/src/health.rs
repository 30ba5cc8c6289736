//! `orchctl health`: the gRPC health of each service, asked over mTLS.

use orchestrator_mesh::{Identity, MeshTls, Service};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::conn::{MeshArgs, connect};

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Host the services listen on (each on its default port).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: HealthArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let tls = args.mesh.tls("operator")?;
        let mut failed = 0;
        for service in Service::ALL {
            let target = format!("{}:{}", args.host, service.default_port());
            let server = args.mesh.server(service)?;
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
