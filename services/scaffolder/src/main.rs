//! The scaffolder service: projects, their GitHub repositories and the deploy template. Holds
//! no L1 secret beyond its certificate and database; GitHub access comes from broker tokens.

use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::scaffolder::v1::scaffolder_service_server::{
    ScaffolderService, ScaffolderServiceServer,
};
use tonic::service::Routes;

/// Until projects land every RPC answers UNIMPLEMENTED (the generated defaults).
#[derive(Debug)]
struct Scaffolder;

impl ScaffolderService for Scaffolder {}

fn main() -> std::process::ExitCode {
    service_main(Service::Scaffolder, |_startup| async {
        Ok(Routes::new(ScaffolderServiceServer::new(Scaffolder)))
    })
}
