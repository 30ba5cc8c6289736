//! Generated Rust types and gRPC stubs for the contracts in `proto/`, and their descriptor set.
//!
//! This is the only crate that runs code generation: every service and tool imports the types
//! from here, so one `.proto` edit rebuilds one crate.
#![allow(
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    missing_debug_implementations
)]

/// The encoded `FileDescriptorSet` of every contract, for server reflection and for checking
/// that the policy file covers every RPC.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/orchestrator_descriptor.bin"));

pub mod common {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orchestrator.common.v1.rs"));
    }
}
pub mod scaffolder {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orchestrator.scaffolder.v1.rs"));
    }
}
pub mod secretbroker {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orchestrator.secretbroker.v1.rs"));
    }
}
pub mod vault {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orchestrator.vault.v1.rs"));
    }
}
pub mod infra {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orchestrator.infra.v1.rs"));
    }
}

/// A timestamp from microseconds since the Unix epoch (how the services store times).
pub fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// A gRPC service as declared in a descriptor set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDescriptor {
    /// Fully qualified name, e.g. `orchestrator.vault.v1.VaultService`.
    pub name: String,
    /// Method names, e.g. `GetUserSecret`.
    pub methods: Vec<String>,
}

/// Every service declared in an encoded `FileDescriptorSet` (ours, or tonic-health's, ...).
pub fn services(descriptor_set: &[u8]) -> Result<Vec<ServiceDescriptor>, prost::DecodeError> {
    use prost::Message as _;
    let fds = prost_types::FileDescriptorSet::decode(descriptor_set)?;
    Ok(fds
        .file
        .iter()
        .flat_map(|file| {
            file.service.iter().map(|svc| ServiceDescriptor {
                name: format!("{}.{}", file.package(), svc.name()),
                methods: svc.method.iter().map(|m| m.name().to_owned()).collect(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_set_lists_the_four_services() {
        let all = services(FILE_DESCRIPTOR_SET).unwrap();
        for svc in [
            "orchestrator.scaffolder.v1.ScaffolderService",
            "orchestrator.secretbroker.v1.SecretBrokerService",
            "orchestrator.vault.v1.VaultService",
            "orchestrator.infra.v1.InfraService",
        ] {
            let found = all.iter().find(|s| s.name == svc).expect(svc);
            assert!(found.methods.len() >= 3, "{svc} has {:?}", found.methods);
        }
    }
}
