//! The vault service: L3 user secrets (a user's own provider keys), AES-256-GCM encrypted under
//! `VAULT_MASTER_KEY`, readable in plaintext by the infra identity only.

use orchestrator_mesh::{Service, service_main};
use orchestrator_proto::vault::v1::vault_service_server::{VaultService, VaultServiceServer};
use tonic::service::Routes;

/// Until the storage layer lands every RPC answers UNIMPLEMENTED (the generated defaults).
#[derive(Debug)]
struct Vault;

impl VaultService for Vault {}

fn main() -> std::process::ExitCode {
    service_main(Service::Vault, |_startup| async {
        Ok(Routes::new(VaultServiceServer::new(Vault)))
    })
}
