//! The vault's process: the mesh's common start-up, then the vault's routes (see the library).

fn main() -> std::process::ExitCode {
    orchestrator_mesh::service_main(orchestrator_mesh::Service::Vault, vault::routes)
}
