//! The infra service: servers, DNS and deploy keys. Holds the provider tokens and the
//! orchestrator's SSH key, and never an application (L2) secret.

use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::infra::v1::infra_service_server::{InfraService, InfraServiceServer};
use tonic::service::Routes;

/// Until provisioning lands every RPC answers UNIMPLEMENTED (the generated defaults).
#[derive(Debug)]
struct Infra;

impl InfraService for Infra {}

fn main() -> std::process::ExitCode {
    service_main(Service::Infra, |_startup| async {
        Ok(Routes::new(InfraServiceServer::new(Infra)))
    })
}
