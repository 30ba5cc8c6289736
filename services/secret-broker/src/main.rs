//! The secret broker: the only holder of the GitHub App key. Pushes L2 project secrets into
//! GitHub Actions repository secrets and keeps only "present" references.

use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::secretbroker::v1::secret_broker_service_server::{
    SecretBrokerService, SecretBrokerServiceServer,
};
use tonic::service::Routes;

/// Until GitHub access lands every RPC answers UNIMPLEMENTED (the generated defaults).
#[derive(Debug)]
struct SecretBroker;

impl SecretBrokerService for SecretBroker {}

fn main() -> std::process::ExitCode {
    service_main(Service::SecretBroker, |_startup| async {
        Ok(Routes::new(SecretBrokerServiceServer::new(SecretBroker)))
    })
}
