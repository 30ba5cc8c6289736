//! One service's environment, set by what each variable means: the binary reads nothing else
//! (its process starts with an emptied environment). Every variable of a service that `orchctl
//! up` or the tests set is named here, and only here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use orchestrator_mesh::{Service, TlsFiles};

use crate::secrets::{DevSecrets, Secret};

/// The order services start in: each one's dependencies before it.
pub const START_ORDER: [Service; 4] = [
    Service::Vault,
    Service::SecretBroker,
    Service::Scaffolder,
    Service::Infra,
];

/// Who calls whom (caller, callee), and the variable that tells the caller where.
const PEERS: [(Service, Service, &str); 5] = [
    (Service::Infra, Service::SecretBroker, "INFRA_BROKER_ADDR"),
    (Service::Infra, Service::Vault, "INFRA_VAULT_ADDR"),
    (Service::Infra, Service::Scaffolder, "INFRA_SCAFFOLDER_ADDR"),
    (
        Service::Scaffolder,
        Service::SecretBroker,
        "SCAFFOLDER_BROKER_ADDR",
    ),
    (Service::Scaffolder, Service::Vault, "SCAFFOLDER_VAULT_ADDR"),
];

/// A loopback port where nothing answers (the discard port, unused on a development machine).
pub const NOWHERE: &str = "127.0.0.1:9";

/// The services `service` calls.
pub fn dependencies(service: Service) -> impl Iterator<Item = Service> {
    PEERS
        .iter()
        .filter(move |(caller, _, _)| *caller == service)
        .map(|(_, callee, _)| *callee)
}

/// The provider APIs infra talks to (emulators, locally), and how their servers answer SSH.
#[derive(Debug, Clone)]
pub struct Providers {
    pub digitalocean_url: String,
    /// The Cloudflare API base, `…/client/v4`.
    pub cloudflare_url: String,
    pub time4vps_url: String,
    pub time4vps_user: String,
    /// The Cloudflare zone infra manages records in.
    pub dns_zone: String,
    /// The port every provisioned server answers SSH on.
    pub ssh_port: u16,
}

/// The environment one service process is started with.
#[derive(Clone)]
pub struct ServiceEnv {
    service: Service,
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for ServiceEnv {
    // Values can be secrets (database URLs with passwords): names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceEnv")
            .field("service", &self.service)
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ServiceEnv {
    pub fn new(service: Service) -> Self {
        Self {
            service,
            vars: BTreeMap::new(),
        }
    }

    pub fn service(&self) -> Service {
        self.service
    }

    /// The variables, to pass to the process.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The value of `var` as it will be passed.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(String::as_str)
    }

    /// Sets `var`: a setting this crate has no meaning for (a tuning, a test's override).
    pub fn set(mut self, var: &str, value: impl Into<String>) -> Self {
        self.vars.insert(var.to_owned(), value.into());
        self
    }

    /// Leaves `var` out.
    pub fn remove(mut self, var: &str) -> Self {
        self.vars.remove(var);
        self
    }

    /// Where it serves gRPC (mTLS) and its admin endpoints, and the file it writes the
    /// addresses it bound to (port 0 picks free ones).
    pub fn listen(self, grpc: SocketAddr, admin: SocketAddr, address_file: &Path) -> Self {
        self.set("ORCH_LISTEN_ADDR", grpc.to_string())
            .set("ORCH_ADMIN_ADDR", admin.to_string())
            .set("ORCH_ADDR_FILE", path(address_file))
    }

    /// Its certificate, key and CA bundle.
    pub fn tls(self, files: &TlsFiles) -> Self {
        self.set("ORCH_TLS_CERT", path(&files.cert))
            .set("ORCH_TLS_KEY", path(&files.key))
            .set("ORCH_TLS_CA", path(&files.ca))
    }

    /// How often it looks for renewed certificate files.
    pub fn tls_reload_every(self, interval: &str) -> Self {
        self.set("ORCH_TLS_RELOAD_INTERVAL", interval)
    }

    /// The authorization policy it loads.
    pub fn policy(self, file: &Path) -> Self {
        self.set("ORCH_POLICY_FILE", path(file))
    }

    pub fn trust_domain(self, domain: &str) -> Self {
        self.set("ORCH_TRUST_DOMAIN", domain)
    }

    /// Its log filter.
    pub fn log(self, filter: &str) -> Self {
        self.set("RUST_LOG", filter)
    }

    /// Its log filter and format as this process has them, if it has them.
    pub fn inherit_logging(mut self) -> Self {
        for var in ["RUST_LOG", "ORCH_LOG_FORMAT"] {
            if let Ok(value) = std::env::var(var) {
                self = self.set(var, value);
            }
        }
        self
    }

    /// Its own database.
    pub fn database(self, url: &str) -> Self {
        self.set("DATABASE_URL", url)
    }

    /// Its own database in the SQLite file `file` (created if missing).
    pub fn sqlite_database(self, file: &Path) -> Self {
        self.database(&format!("sqlite://{}?mode=rwc", file.display()))
    }

    /// Its own keys, from its folder of `secrets` (made there if missing): the audit key; the
    /// vault's master key; infra's admin SSH key.
    pub fn own_keys(self, secrets: &DevSecrets) -> anyhow::Result<Self> {
        let file = |secret| secrets.ensure(secret).map(|p| path(&p));
        let audit_key = file(Secret::AuditKey(self.service))?;
        let env = self.set("AUDIT_KEY_FILE", audit_key);
        Ok(match env.service {
            Service::Vault => env.set("VAULT_MASTER_KEY_FILE", file(Secret::VaultMasterKey)?),
            Service::Infra => env.set(
                "ORCHESTRATOR_SSH_PRIVATE_KEY_FILE",
                file(Secret::AdminSshKey)?,
            ),
            Service::SecretBroker | Service::Scaffolder => env,
        })
    }

    /// The broker: the GitHub App it acts as, `id` with the key put in its folder of `secrets`.
    /// Nothing for the others.
    pub fn github_app(self, id: u64, secrets: &DevSecrets) -> anyhow::Result<Self> {
        if self.service != Service::SecretBroker {
            return Ok(self);
        }
        let key = secrets.ensure(Secret::GitHubAppKey)?;
        Ok(self
            .set("GITHUB_APP_ID", id.to_string())
            .set("GITHUB_APP_PRIVATE_KEY_FILE", path(&key)))
    }

    /// The broker, the scaffolder and infra (which revokes its clone tokens there): the
    /// GitHub API. Nothing for the vault.
    pub fn github_api(self, url: &str) -> Self {
        match self.service {
            Service::SecretBroker | Service::Scaffolder | Service::Infra => {
                self.set("GITHUB_API_URL", url)
            }
            Service::Vault => self,
        }
    }

    /// The broker and the scaffolder: the organization where projects' repositories are
    /// created. Nothing for the others.
    pub fn github_org(self, org: &str) -> Self {
        self.if_github_user(|env| env.set("GITHUB_ORG", org))
    }

    fn if_github_user(self, change: impl FnOnce(Self) -> Self) -> Self {
        match self.service {
            Service::SecretBroker | Service::Scaffolder => change(self),
            Service::Vault | Service::Infra => self,
        }
    }

    /// Infra: where it clones projects' repositories from. Nothing for the others.
    pub fn git_url(self, url: &str) -> Self {
        match self.service {
            Service::Infra => self.set("INFRA_GIT_URL", url),
            _ => self,
        }
    }

    /// Infra: the provider APIs, with the platform's credentials from its folder of `secrets`
    /// (made there if missing). Nothing for the others.
    pub fn providers(self, providers: &Providers, secrets: &DevSecrets) -> anyhow::Result<Self> {
        if self.service != Service::Infra {
            return Ok(self);
        }
        let file = |secret| secrets.ensure(secret).map(|p| path(&p));
        Ok(self
            .set("DIGITALOCEAN_API_URL", &providers.digitalocean_url)
            .set("DIGITALOCEAN_TOKEN_FILE", file(Secret::DigitalOceanToken)?)
            .set("CLOUDFLARE_API_URL", &providers.cloudflare_url)
            .set("CLOUDFLARE_API_TOKEN_FILE", file(Secret::CloudflareToken)?)
            .set("CLOUDFLARE_ZONE", &providers.dns_zone)
            .set("TIME4VPS_API_URL", &providers.time4vps_url)
            .set("TIME4VPS_USER", &providers.time4vps_user)
            .set("TIME4VPS_PASSWORD_FILE", file(Secret::Time4VpsPassword)?)
            .set("INFRA_SSH_PORT", providers.ssh_port.to_string())
            // One local replica, restarted often: a short lease lets the new process resume
            // the operations the old one held within seconds, not after 30.
            .set("INFRA_OPERATION_LEASE", "3s"))
    }

    /// Where `peer` listens (`host:port`), if this service calls it; nothing otherwise.
    pub fn peer(self, peer: Service, addr: &str) -> Self {
        let var = PEERS
            .iter()
            .find(|(caller, callee, _)| *caller == self.service && *callee == peer)
            .map(|(_, _, var)| *var);
        match var {
            Some(var) => self.set(var, addr),
            None => self,
        }
    }

    /// Every address outside the service (its peers, GitHub, the providers) at [`NOWHERE`]:
    /// for a test, so that what it does not wire is never the real one.
    pub fn unreachable_outside(self) -> Self {
        let nowhere = format!("http://{NOWHERE}");
        let env = dependencies(self.service).fold(self, |env, peer| env.peer(peer, NOWHERE));
        match env.service {
            Service::SecretBroker | Service::Scaffolder => env.github_api(&nowhere),
            Service::Infra => env
                .github_api(&nowhere)
                .set("DIGITALOCEAN_API_URL", &nowhere)
                .set("CLOUDFLARE_API_URL", &nowhere)
                .set("TIME4VPS_API_URL", nowhere),
            Service::Vault => env,
        }
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dependencies_start_first() {
        for (at, service) in START_ORDER.iter().enumerate() {
            for dependency in dependencies(*service) {
                let before = START_ORDER.iter().position(|s| *s == dependency).unwrap();
                assert!(before < at, "{dependency} starts after {service}");
            }
        }
    }

    #[test]
    fn each_service_gets_only_its_own_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = DevSecrets::new(dir.path());
        secrets.put(Secret::GitHubAppKey, "pem").unwrap();
        let providers = Providers {
            digitalocean_url: "http://do".into(),
            cloudflare_url: "http://cf/client/v4".into(),
            time4vps_url: "http://t4".into(),
            time4vps_user: "dev".into(),
            dns_zone: "orchestrator.test".into(),
            ssh_port: 2222,
        };
        for service in Service::ALL {
            let env = ServiceEnv::new(service)
                .own_keys(&secrets)
                .unwrap()
                .github_app(1, &secrets)
                .unwrap()
                .providers(&providers, &secrets)
                .unwrap();
            let own = format!("{}/{}/", dir.path().display(), service.name());
            for (var, value) in env.vars() {
                if var.ends_with("_FILE") {
                    assert!(value.starts_with(&own), "{service}: {var}={value}");
                }
            }
            assert!(env.get("AUDIT_KEY_FILE").is_some());
        }
    }
}
