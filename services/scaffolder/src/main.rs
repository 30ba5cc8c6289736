//! The scaffolder's process: everything but its routes is the mesh's `service_main`.

use orchestrator_mesh::{Service, service_main};

fn main() -> std::process::ExitCode {
    service_main(Service::Scaffolder, scaffolder::routes)
}
