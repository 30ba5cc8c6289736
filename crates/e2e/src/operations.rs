//! Infra requests and operations as the cross-process tests use them.

use std::time::Duration;

use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use tonic::transport::Channel;

/// A provision of a DigitalOcean droplet (fra1, the smallest size, Ubuntu 24.04) named
/// `hostname` for `project_id`, on the platform's credentials.
pub fn droplet_provision(
    request_id: &str,
    project_id: &str,
    hostname: &str,
) -> pb::ProvisionServerRequest {
    pb::ProvisionServerRequest {
        request_id: request_id.into(),
        project_id: project_id.into(),
        provider: pb::Provider::Digitalocean as i32,
        spec: Some(pb::provision_server_request::Spec::Digitalocean(
            pb::DigitalOceanServerSpec {
                region: "fra1".into(),
                size: "s-1vcpu-1gb".into(),
                image: "ubuntu-24-04-x64".into(),
            },
        )),
        hostname: hostname.into(),
        ..Default::default()
    }
}

/// Every snapshot WatchOperation sends for operation `id` until the stream ends or `within`
/// passes.
///
/// # Panics
/// If the stream cannot be opened.
pub async fn watch_operation(
    api: &mut InfraServiceClient<Channel>,
    id: &str,
    within: Duration,
) -> Vec<pb::Operation> {
    #[allow(clippy::expect_used)] // A test helper: a failed step is a failed test.
    let mut stream = api
        .watch_operation(pb::WatchOperationRequest {
            operation_id: id.into(),
        })
        .await
        .expect("WatchOperation opens")
        .into_inner();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(Some(item))) = tokio::time::timeout_at(deadline, stream.message()).await {
        seen.extend(item.operation);
    }
    seen
}
