//! The provider emulators of a test mesh (DigitalOcean, Cloudflare, Time4VPS), accepting the
//! platform credentials infra holds and the ones a user may keep in the vault; the servers they
//! "boot" answer SSH on loopback addresses of their own, all on one port.

use std::time::Duration;

use orchestrator_devenv::{DevSecrets, Providers, Secret};
use orchestrator_provider_emulators as emu;

use crate::{TestMesh, random_key};

/// The platform's DigitalOcean token (infra's).
pub const DO_TOKEN: &str = "do-platform-token";
/// The platform's Cloudflare token (infra's).
pub const CF_TOKEN: &str = "cf-platform-token";
/// The platform's Time4VPS account (infra's).
pub const T4_USER: &str = "t4-platform-user";
pub const T4_PASSWORD: &str = "t4-platform-password";
/// A user's own tokens, which the emulators accept too (read from the vault for one call).
pub const USERS_OWN_DO_TOKEN: &str = "users-own-do-token";
pub const USERS_OWN_CF_TOKEN: &str = "users-own-cf-token";
/// The Time4VPS server bought in advance.
pub const T4_SERVER: u64 = 701;
/// The zone infra manages records in.
pub const DNS_ZONE: &str = "orchestrator.test";

/// How the providers behave for one test.
#[derive(Debug, Clone, Default)]
pub struct ProviderSetup {
    /// Faults injected at DigitalOcean and Cloudflare from the start.
    pub faults: Option<emu::Faults>,
    /// DigitalOcean's droplet limit per account (0 = none).
    pub droplet_limit: usize,
    /// How the emulated servers boot (the SSH port and boot time are the mesh's).
    pub hosts: emu::HostsConfig,
}

/// The running provider emulators.
#[derive(Debug)]
pub struct ProviderEmulators {
    pub digitalocean: emu::DigitalOcean,
    pub cloudflare: emu::Cloudflare,
    pub time4vps: emu::Time4Vps,
    /// The port the emulated servers answer SSH on.
    pub ssh_port: u16,
}

impl ProviderEmulators {
    pub(crate) async fn start(setup: ProviderSetup) -> anyhow::Result<Self> {
        let ProviderSetup {
            faults,
            droplet_limit,
            hosts,
        } = setup;
        // Servers answer SSH on their own loopback addresses, all on one port.
        let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let hosts = emu::HostsConfig {
            ssh_port,
            boot_time: Duration::from_millis(300),
            ..hosts
        };
        let digitalocean = emu::DigitalOcean::start(emu::DoConfig {
            tokens: vec![DO_TOKEN.into(), USERS_OWN_DO_TOKEN.into()],
            active_after: Duration::from_millis(150),
            address_after: Duration::from_millis(150),
            transient_404_polls: 1,
            droplet_limit,
            hosts: Some(hosts.clone()),
            ..emu::DoConfig::default()
        })
        .await?;
        // A loopback address of its own for the server bought in advance.
        let [a, b] = random_key().as_bytes()[..2] else {
            unreachable!("a key has more than two characters")
        };
        let time4vps = emu::Time4Vps::start(emu::T4Config {
            user: T4_USER.into(),
            password: T4_PASSWORD.into(),
            servers: vec![(
                T4_SERVER,
                format!("127.{}.{}.17", a % 200 + 20, b % 250 + 1),
            )],
            task_after: Duration::from_millis(300),
            hosts: Some(hosts),
            ..emu::T4Config::default()
        })
        .await?;
        let cloudflare = emu::Cloudflare::start(emu::CfConfig {
            tokens: vec![CF_TOKEN.into(), USERS_OWN_CF_TOKEN.into()],
            zones: vec![DNS_ZONE.into()],
            // A record infra does not mark `proxied: false` would go through the HTTP proxy,
            // which SSH does not pass.
            proxied_by_default: true,
            ..emu::CfConfig::default()
        })
        .await?;
        if let Some(f) = faults {
            digitalocean.set_faults(f.clone());
            cloudflare.set_faults(f);
        }
        Ok(Self {
            digitalocean,
            cloudflare,
            time4vps,
            ssh_port,
        })
    }

    /// Puts the platform credentials these emulators accept in infra's folder of `secrets`.
    pub(crate) fn give_credentials(&self, secrets: &DevSecrets) -> anyhow::Result<()> {
        secrets.put(Secret::DigitalOceanToken, DO_TOKEN)?;
        secrets.put(Secret::CloudflareToken, CF_TOKEN)?;
        secrets.put(Secret::Time4VpsPassword, T4_PASSWORD)?;
        Ok(())
    }

    /// What infra is told about them.
    pub(crate) fn apis(&self) -> Providers {
        Providers {
            digitalocean_url: self.digitalocean.url(),
            cloudflare_url: self.cloudflare.api_base(),
            time4vps_url: self.time4vps.url(),
            time4vps_user: T4_USER.to_owned(),
            dns_zone: DNS_ZONE.to_owned(),
            ssh_port: self.ssh_port,
        }
    }
}

/// The mesh's provider emulators (built with `.providers(..)`).
impl TestMesh {
    pub fn digitalocean(&self) -> &emu::DigitalOcean {
        &self.providers().digitalocean
    }

    pub fn cloudflare(&self) -> &emu::Cloudflare {
        &self.providers().cloudflare
    }

    pub fn time4vps(&self) -> &emu::Time4Vps {
        &self.providers().time4vps
    }

    /// The port the emulated servers answer SSH on.
    pub fn ssh_port(&self) -> u16 {
        self.providers().ssh_port
    }
}
