//! Every setting of infra, read once at start.

use std::time::Duration;

use anyhow::Context as _;
use orchestrator_mesh::{Env, Service, Startup};
use orchestrator_ssh::AdminKey;
use secrecy::SecretString;
use tonic::transport::Channel;

/// Infra's configuration. The provider and DNS tokens are each optional: a user's own key from
/// the vault can stand in for any of them.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The orchestrator's admin key (L1): installed on servers, used for readiness checks
    /// and Time4VPS takeovers; it never leaves infra.
    pub admin_key: AdminKey,
    pub digitalocean: DigitalOceanSettings,
    pub time4vps: Time4VpsSettings,
    pub cloudflare: CloudflareSettings,
    /// The port servers' SSH daemons listen on (`INFRA_SSH_PORT`).
    pub ssh_port: u16,
    /// How long a new server may take to become ready: cloud-init, reinstall, takeover
    /// (`INFRA_READY_TIMEOUT_SECS`).
    pub ready_timeout: Duration,
    /// Where servers clone repositories from (`INFRA_GIT_URL`, no trailing slash).
    pub git_url: String,
}

#[derive(Debug)]
pub(crate) struct DigitalOceanSettings {
    pub url: String,
    pub token: Option<SecretString>,
}

#[derive(Debug)]
pub(crate) struct Time4VpsSettings {
    pub url: String,
    /// The platform's Time4VPS account: user and password.
    pub login: Option<(String, SecretString)>,
    /// The OS a takeover reinstalls when the request names none.
    pub default_os: String,
}

#[derive(Debug)]
pub(crate) struct CloudflareSettings {
    pub url: String,
    pub token: Option<SecretString>,
    /// The zone for servers' A records; `None` = no DNS step.
    pub zone: Option<String>,
}

impl Settings {
    pub(crate) fn from_env(env: &Env) -> anyhow::Result<Self> {
        let admin_key =
            AdminKey::from_openssh(&env.required_secret("ORCHESTRATOR_SSH_PRIVATE_KEY")?)
                .context("ORCHESTRATOR_SSH_PRIVATE_KEY")?;
        let login = match (env.get("TIME4VPS_USER"), env.secret("TIME4VPS_PASSWORD")?) {
            (Some(user), Some(password)) => Some((user.to_owned(), password)),
            (None, None) => None,
            _ => anyhow::bail!("TIME4VPS_USER and TIME4VPS_PASSWORD go together"),
        };
        let url = |var: &str, default: &str| env.get(var).unwrap_or(default).to_owned();
        Ok(Self {
            admin_key,
            digitalocean: DigitalOceanSettings {
                url: url("DIGITALOCEAN_API_URL", "https://api.digitalocean.com"),
                token: env.secret("DIGITALOCEAN_TOKEN")?,
            },
            time4vps: Time4VpsSettings {
                url: url("TIME4VPS_API_URL", "https://billing.time4vps.com"),
                login,
                default_os: url("TIME4VPS_DEFAULT_OS", "kvm-ubuntu-24.04-gpt-x86_64"),
            },
            cloudflare: CloudflareSettings {
                url: url("CLOUDFLARE_API_URL", "https://api.cloudflare.com/client/v4"),
                token: env.secret("CLOUDFLARE_API_TOKEN")?,
                zone: env.get("CLOUDFLARE_ZONE").map(str::to_owned),
            },
            ssh_port: env.parse("INFRA_SSH_PORT", 22)?,
            ready_timeout: Duration::from_secs(env.parse("INFRA_READY_TIMEOUT_SECS", 900)?),
            git_url: url("INFRA_GIT_URL", "https://github.com")
                .trim_end_matches('/')
                .to_owned(),
        })
    }
}

/// The services infra calls: one channel each, connected on first use and reconnected as
/// needed.
#[derive(Debug, Clone)]
pub(crate) struct Peers {
    /// Deploy credentials and clone tokens (`INFRA_BROKER_ADDR`).
    pub broker: Channel,
    /// Users' own provider and DNS keys (`INFRA_VAULT_ADDR`).
    pub vault: Channel,
    /// Projects' owners, before a user's own key is used (`INFRA_SCAFFOLDER_ADDR`).
    pub scaffolder: Channel,
}

impl Peers {
    pub(crate) fn from_startup(startup: &Startup) -> anyhow::Result<Self> {
        Ok(Self {
            broker: startup.peer(Service::SecretBroker, "INFRA_BROKER_ADDR")?,
            vault: startup.peer(Service::Vault, "INFRA_VAULT_ADDR")?,
            scaffolder: startup.peer(Service::Scaffolder, "INFRA_SCAFFOLDER_ADDR")?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_time4vps_user_needs_its_password() {
        let key = orchestrator_deploy_keys::generate("admin").unwrap();
        let env = |extra: &[(&str, &str)]| {
            let mut pairs = vec![(
                "ORCHESTRATOR_SSH_PRIVATE_KEY",
                secrecy::ExposeSecret::expose_secret(&key.private_openssh).to_owned(),
            )];
            pairs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            Env::from_pairs(pairs)
        };
        let settings = Settings::from_env(&env(&[("INFRA_GIT_URL", "https://git.test/")])).unwrap();
        assert_eq!(settings.git_url, "https://git.test");
        assert_eq!(settings.ssh_port, 22);
        assert!(settings.time4vps.login.is_none() && settings.cloudflare.zone.is_none());
        let half = Settings::from_env(&env(&[("TIME4VPS_USER", "u")])).unwrap_err();
        assert!(half.to_string().contains("go together"), "{half}");
    }
}
