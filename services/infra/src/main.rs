//! The infra service's process (see the library for what it does).

use orchestrator_mesh::{Service, service_main};

fn main() -> std::process::ExitCode {
    service_main(Service::Infra, infra::routes)
}
