//! `orchctl infra provision|destroy|get`: servers through the infra service, as `api`, with
//! live progress from WatchOperation.

use std::time::{Duration, Instant};

use orchestrator_mesh::Service;
use orchestrator_mesh::retry::{Backoff, Call, Outcome, classify};
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use tonic::Status;
use tonic::transport::Channel;

use crate::conn::{MeshArgs, status_error};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum InfraCommand {
    /// Provision a server for a project (a DigitalOcean droplet, or a Time4VPS takeover),
    /// showing each step as it happens.
    Provision(ProvisionArgs),
    /// Destroy a server and its DNS record.
    Destroy(ServerArgs),
    /// Replace a server's deploy key (new key authorized, handed to GitHub, old one revoked).
    RotateDeployKey(ServerArgs),
    /// A server's state, address and key fingerprints.
    Get(GetArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct InfraConn {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The infra service's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50054", value_name = "HOST:PORT")]
    target: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProvisionArgs {
    #[command(flatten)]
    conn: InfraConn,
    /// The project the server deploys.
    #[arg(long)]
    project: String,
    /// The server's DNS name (an A record in the configured zone).
    #[arg(long)]
    hostname: String,
    /// DigitalOcean region (the default provider).
    #[arg(long, default_value = "fra1")]
    region: String,
    /// DigitalOcean size.
    #[arg(long, default_value = "s-1vcpu-1gb")]
    size: String,
    /// DigitalOcean image.
    #[arg(long, default_value = "ubuntu-24-04-x64")]
    image: String,
    /// Take over this Time4VPS server (bought in advance; it is reinstalled, everything on it
    /// wiped) instead of creating a droplet.
    #[arg(long, value_name = "SERVER_ID")]
    time4vps_server: Option<i64>,
    /// The OS for a Time4VPS reinstall (default: infra's).
    #[arg(long, requires = "time4vps_server")]
    time4vps_os: Option<String>,
    /// Clone the project's repository into the deploy user's home once the server is ready
    /// (with a one-use, read-only token infra gets from the broker).
    #[arg(long)]
    checkout_repository: bool,
    /// Idempotency key: the same id returns the same operation.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    out: crate::output::OutputArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    conn: InfraConn,
    /// The server id.
    server: String,
}

impl InfraConn {
    async fn client(&self) -> anyhow::Result<InfraServiceClient<Channel>> {
        let tls = self.mesh.tls("api")?;
        Ok(InfraServiceClient::new(
            self.mesh
                .connect(&tls, &self.target, Service::Infra)
                .await?,
        ))
    }
}

pub(crate) fn run(command: InfraCommand) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        match command {
            InfraCommand::Provision(args) => provision(args).await,
            InfraCommand::Destroy(args) => destroy(args).await,
            InfraCommand::RotateDeployKey(args) => rotate(args).await,
            InfraCommand::Get(args) => get(args).await,
        }
    })
}

async fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let operation = client
        .provision_server(pb::ProvisionServerRequest {
            request_id: args
                .request_id
                .clone()
                .unwrap_or_else(crate::secrets::random_id),
            project_id: args.project.clone(),
            provider: if args.time4vps_server.is_some() {
                pb::Provider::Time4vps
            } else {
                pb::Provider::Digitalocean
            } as i32,
            spec: Some(match args.time4vps_server {
                Some(server_id) => {
                    pb::provision_server_request::Spec::Time4vps(pb::Time4VpsServerSpec {
                        server_id,
                        os: args.time4vps_os.clone().unwrap_or_default(),
                    })
                }
                None => {
                    pb::provision_server_request::Spec::Digitalocean(pb::DigitalOceanServerSpec {
                        region: args.region.clone(),
                        size: args.size.clone(),
                        image: args.image.clone(),
                    })
                }
            }),
            hostname: args.hostname.clone(),
            checkout_repository: args.checkout_repository,
            ..Default::default()
        })
        .await
        .map_err(|s| status_error("ProvisionServer", &s))?
        .into_inner()
        .operation
        .ok_or_else(|| anyhow::anyhow!("no operation in the answer"))?;
    follow(&mut client, &operation.id, &operation.server_id).await
}

async fn destroy(args: ServerArgs) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let operation = client
        .destroy_server(pb::DestroyServerRequest {
            server_id: args.server.clone(),
        })
        .await
        .map_err(|s| status_error("DestroyServer", &s))?
        .into_inner()
        .operation
        .ok_or_else(|| anyhow::anyhow!("no operation in the answer"))?;
    follow(&mut client, &operation.id, &args.server).await
}

async fn rotate(args: ServerArgs) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let operation = client
        .rotate_deploy_key(pb::RotateDeployKeyRequest {
            request_id: crate::secrets::random_id(),
            server_id: args.server.clone(),
        })
        .await
        .map_err(|s| status_error("RotateDeployKey", &s))?
        .into_inner()
        .operation
        .ok_or_else(|| anyhow::anyhow!("no operation in the answer"))?;
    follow(&mut client, &operation.id, &args.server).await
}

/// How long `follow` keeps reconnecting to an infra that went away before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(600);

/// Prints a progress bar and the current step for every change, until the operation ends.
/// The operation runs in infra, not here: when infra restarts (the stream is cut, or infra is
/// unavailable for a moment), the watch reconnects and goes on where the operation is.
#[allow(clippy::print_stdout)]
pub(crate) async fn follow(
    client: &mut InfraServiceClient<Channel>,
    operation: &str,
    server: &str,
) -> anyhow::Result<()> {
    println!("operation {operation} for server {server}");
    let mut last = None;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
    let mut cut_since: Option<Instant> = None;
    loop {
        let before = last.clone();
        let cut = match watch_once(client, operation, &mut last).await {
            Ok(Some(ended)) => return ended,
            // The stream ended without the operation's end: infra stopped; watch again.
            Ok(None) => Status::unavailable("the watch ended before the operation"),
            Err(status) if classify(&status, Call::Idempotent) == Outcome::Transient => status,
            Err(status) => return Err(status_error("WatchOperation", &status)),
        };
        // Progress since the last cut: the give-up clock starts again.
        if last != before {
            cut_since = None;
        }
        let since = *cut_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(status_error("WatchOperation", &cut));
        }
        println!("(infra unreachable: {}; reconnecting)", cut.message());
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// One watch: `Ok(Some(outcome))` once the operation ended, `Ok(None)` when the stream ended
/// before, an error when it could not be opened or was cut.
#[allow(clippy::print_stdout)]
async fn watch_once(
    client: &mut InfraServiceClient<Channel>,
    operation: &str,
    last: &mut Option<String>,
) -> Result<Option<anyhow::Result<()>>, Status> {
    let mut stream = client
        .watch_operation(pb::WatchOperationRequest {
            operation_id: operation.to_owned(),
        })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        let Some(op) = item.operation else { continue };
        let total = op.steps.len().max(1);
        let done = op
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    pb::OperationStepState::try_from(s.state),
                    Ok(pb::OperationStepState::Done | pb::OperationStepState::Skipped)
                )
            })
            .count();
        let width = 20;
        let bar = format!(
            "{}{}",
            "#".repeat(done * width / total),
            "-".repeat(width - done * width / total)
        );
        let line = format!("[{bar}] {done}/{total} {}", op.status_message);
        if last.as_ref() != Some(&line) {
            println!("{line}");
            *last = Some(line);
        }
        match pb::OperationState::try_from(op.state) {
            Ok(pb::OperationState::Succeeded) => {
                println!("done");
                return Ok(Some(Ok(())));
            }
            Ok(pb::OperationState::Failed) => {
                let why = op
                    .error
                    .map(|e| format!("{} ({})", e.message, e.reason))
                    .unwrap_or_default();
                return Ok(Some(Err(anyhow::anyhow!("the operation failed: {why}"))));
            }
            _ => {}
        }
    }
    Ok(None)
}

#[allow(clippy::print_stdout)]
async fn get(GetArgs { server: args, out }: GetArgs) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let server = client
        .get_server(pb::GetServerRequest {
            server_id: args.server.clone(),
        })
        .await
        .map_err(|s| status_error("GetServer", &s))?
        .into_inner()
        .server
        .ok_or_else(|| anyhow::anyhow!("no server in the answer"))?;
    if out.json() {
        use crate::output::{name, time};
        return crate::output::print_json(&serde_json::json!({
            "id": server.id,
            "project_id": server.project_id,
            "provider": name(pb::Provider::try_from(server.provider)),
            "provider_server_id": server.provider_server_id,
            "state": name(pb::ServerState::try_from(server.state)),
            "hostname": server.hostname,
            "ipv4_address": server.ipv4_address,
            "ipv6_address": server.ipv6_address,
            "region": server.region,
            "size": server.size,
            "image": server.image,
            "deploy_user": server.deploy_user,
            "deploy_key_fingerprint": server.deploy_key_fingerprint,
            "host_key_fingerprint": server.host_key_fingerprint,
            "operation_id": server.operation_id,
            "create_time": time(server.create_time),
        }));
    }
    let state = pb::ServerState::try_from(server.state)
        .map_or("?".to_owned(), |s| format!("{s:?}").to_lowercase());
    let provider = match pb::Provider::try_from(server.provider) {
        Ok(pb::Provider::Time4vps) => format!("time4vps {}", server.provider_server_id),
        _ => format!("digitalocean {}", server.provider_server_id),
    };
    println!(
        "{}  {}  {state}  {provider}  {}  deploy key {}  host key {}",
        server.id,
        server.hostname,
        server.ipv4_address,
        server.deploy_key_fingerprint,
        server.host_key_fingerprint
    );
    Ok(())
}
