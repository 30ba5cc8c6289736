//! Every setting of infra, read once at start.

use std::time::Duration;

use anyhow::Context as _;
use orchestrator_mesh::client::PeerChannel;
use orchestrator_mesh::{Env, Service, Startup};
use orchestrator_ssh::AdminKey;
use secrecy::SecretString;

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
    /// How long an operation keeps retrying transient failures (a peer or a provider down)
    /// from its start before it fails with OPERATION_DEADLINE_EXCEEDED
    /// (`INFRA_OPERATION_DEADLINE_SECS`, default one hour).
    pub operation_deadline: Duration,
    /// Where servers clone repositories from (`INFRA_GIT_URL`, no trailing slash).
    pub git_url: String,
    /// The most WatchOperation streams one caller holds open (`INFRA_MAX_WATCHES_PER_CALLER`).
    pub max_watches_per_caller: usize,
    /// How long a replica's claim on an unfinished operation lasts unless renewed
    /// (`INFRA_OPERATION_LEASE`): how soon another replica takes over after a crash.
    pub operation_lease: Duration,
    /// GitHub's API (`GITHUB_API_URL`), where infra revokes a clone token once the checkout is
    /// over (with the token itself: infra holds no GitHub credential).
    pub github_api_url: String,
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
    /// Names in the zone no server may take (`INFRA_RESERVED_HOSTNAMES`).
    pub reserved: ReservedNames,
}

/// Labels of the zone that are never a server's hostname (`INFRA_RESERVED_HOSTNAMES`,
/// comma-separated; the zone apex is refused besides): names people and mail expect to be
/// the zone owner's. A value replaces the default list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReservedNames(Vec<String>);

impl ReservedNames {
    pub(crate) const DEFAULT: &'static str =
        "www,api,mail,smtp,imap,pop,mx,ns,ns1,ns2,admin,autodiscover";

    /// Whether `relative` (a hostname without its zone) is reserved.
    pub(crate) fn contains(&self, relative: &str) -> bool {
        self.0.iter().any(|r| r == relative)
    }
}

impl Default for ReservedNames {
    fn default() -> Self {
        Self::DEFAULT
            .parse()
            .unwrap_or_else(|_| unreachable!("the default list is valid"))
    }
}

impl std::str::FromStr for ReservedNames {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut names = Vec::new();
        for label in list.split(',').map(str::trim).filter(|l| !l.is_empty()) {
            let label = label.to_ascii_lowercase();
            let valid = label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid {
                return Err(format!("`{label}` is not a DNS label"));
            }
            names.push(label);
        }
        if names.is_empty() {
            return Err("no label given (unset it for the default list)".to_owned());
        }
        Ok(Self(names))
    }
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
                reserved: env.parse("INFRA_RESERVED_HOSTNAMES", ReservedNames::default())?,
            },
            ssh_port: env.parse("INFRA_SSH_PORT", 22)?,
            ready_timeout: env.seconds("INFRA_READY_TIMEOUT_SECS", Duration::from_secs(900))?,
            operation_deadline: Duration::from_secs(
                env.positive("INFRA_OPERATION_DEADLINE_SECS", 3600_u64)?,
            ),
            git_url: url("INFRA_GIT_URL", "https://github.com")
                .trim_end_matches('/')
                .to_owned(),
            max_watches_per_caller: env.positive("INFRA_MAX_WATCHES_PER_CALLER", 32_usize)?,
            operation_lease: env
                .positive_duration("INFRA_OPERATION_LEASE", Duration::from_secs(30))?,
            github_api_url: url("GITHUB_API_URL", "https://api.github.com"),
        })
    }
}

/// The services infra calls: one channel each, connected on first use and reconnected as
/// needed.
#[derive(Debug, Clone)]
pub(crate) struct Peers {
    /// Deploy credentials and clone tokens (`INFRA_BROKER_ADDR`).
    pub broker: PeerChannel,
    /// Users' own provider and DNS keys (`INFRA_VAULT_ADDR`).
    pub vault: PeerChannel,
    /// Projects' owners, before a user's own key is used (`INFRA_SCAFFOLDER_ADDR`).
    pub scaffolder: PeerChannel,
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
        // A timeout no clock can add (Instant + it would panic) is refused at start.
        let endless = Settings::from_env(&env(&[(
            "INFRA_READY_TIMEOUT_SECS",
            "18446744073709551615",
        )]))
        .unwrap_err();
        assert!(
            endless.to_string().contains("INFRA_READY_TIMEOUT_SECS"),
            "{endless}"
        );
    }

    #[test]
    fn reserved_hostnames_default_and_replace() {
        let reserved = ReservedNames::default();
        for name in ["www", "api", "mail", "smtp", "ns", "ns1", "ns2", "admin"] {
            assert!(reserved.contains(name), "{name}");
        }
        assert!(!reserved.contains("app1"));
        let own: ReservedNames = " Shop, ,blog ".parse().unwrap();
        assert!(own.contains("shop") && own.contains("blog") && !own.contains("www"));
        assert!("a b".parse::<ReservedNames>().is_err());
        assert!("x.y".parse::<ReservedNames>().is_err());
        assert!(" , ".parse::<ReservedNames>().is_err());
    }
}
