//! The four services of the mesh, and the L1 credential set each one alone may hold.

use std::fmt;

use crate::identity::IdentityName;

/// One of the four processes of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Scaffolder,
    SecretBroker,
    Vault,
    Infra,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Scaffolder,
        Service::SecretBroker,
        Service::Vault,
        Service::Infra,
    ];

    /// The process and identity name: the last segment of its SPIFFE ID.
    pub fn name(self) -> &'static str {
        match self {
            Service::Scaffolder => "scaffolder",
            Service::SecretBroker => "secret-broker",
            Service::Vault => "vault",
            Service::Infra => "infra",
        }
    }

    pub fn identity_name(self) -> IdentityName {
        self.name()
            .parse()
            .expect("service names are valid identity names")
    }

    /// The fully qualified gRPC service this process serves.
    pub fn grpc_service(self) -> &'static str {
        match self {
            Service::Scaffolder => "orchestrator.scaffolder.v1.ScaffolderService",
            Service::SecretBroker => "orchestrator.secretbroker.v1.SecretBrokerService",
            Service::Vault => "orchestrator.vault.v1.VaultService",
            Service::Infra => "orchestrator.infra.v1.InfraService",
        }
    }

    /// Default gRPC (mTLS) port: 50051-50054.
    pub fn default_port(self) -> u16 {
        50051 + self.index()
    }

    /// Default plain-HTTP admin port: 51051-51054.
    pub fn default_admin_port(self) -> u16 {
        51051 + self.index()
    }

    fn index(self) -> u16 {
        match self {
            Service::Scaffolder => 0,
            Service::SecretBroker => 1,
            Service::Vault => 2,
            Service::Infra => 3,
        }
    }

    /// The L1 platform secrets that belong to this service and to no other.
    ///
    /// Each may also be given as `<NAME>_FILE`. A process that finds another service's name here
    /// in its environment refuses to start: privilege separation is only as good as the
    /// environment each process is given.
    pub fn l1_secrets(self) -> &'static [&'static str] {
        match self {
            Service::Scaffolder => &[],
            Service::SecretBroker => &["GITHUB_APP_PRIVATE_KEY", "GH_APP_PRIVATE_KEY"],
            Service::Vault => &["VAULT_MASTER_KEY"],
            Service::Infra => &[
                "DIGITALOCEAN_TOKEN",
                "TIME4VPS_PASSWORD",
                "CLOUDFLARE_API_TOKEN",
                "ORCHESTRATOR_SSH_PRIVATE_KEY",
            ],
        }
    }

    /// The first variable in `vars` that holds another service's L1 secret, with its owner.
    pub fn foreign_secret<'a>(
        self,
        vars: impl IntoIterator<Item = &'a str>,
    ) -> Option<(String, Service)> {
        vars.into_iter().find_map(|var| {
            let base = var.strip_suffix("_FILE").unwrap_or(var);
            Service::ALL
                .into_iter()
                .filter(|other| *other != self)
                .find(|other| other.l1_secrets().contains(&base))
                .map(|owner| (var.to_owned(), owner))
        })
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.name() == s)
            .ok_or_else(|| format!("unknown service `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secret_belongs_to_two_services() {
        let mut seen = std::collections::HashSet::new();
        for svc in Service::ALL {
            for name in svc.l1_secrets() {
                assert!(seen.insert(*name), "{name} is listed twice");
            }
        }
    }

    #[test]
    fn finds_foreign_secrets_and_their_file_variants() {
        let infra = Service::Infra;
        assert_eq!(
            infra.foreign_secret(["PATH", "GITHUB_APP_PRIVATE_KEY"]),
            Some(("GITHUB_APP_PRIVATE_KEY".into(), Service::SecretBroker))
        );
        assert_eq!(
            infra.foreign_secret(["VAULT_MASTER_KEY_FILE"]),
            Some(("VAULT_MASTER_KEY_FILE".into(), Service::Vault))
        );
        assert_eq!(infra.foreign_secret(["DIGITALOCEAN_TOKEN", "HOME"]), None);
    }
}
