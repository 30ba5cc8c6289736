//! The secret broker's process: everything is in the library (`secret_broker::routes`).

use orchestrator_mesh::{Service, service_main};

fn main() -> std::process::ExitCode {
    service_main(Service::SecretBroker, secret_broker::routes)
}
