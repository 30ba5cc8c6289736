//! The emulated accounts (droplets, SSH keys), the per-token rate-limit windows, and the
//! droplets' timeline: `new`, then `active` with a private address, then a public one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;

use super::DoConfig;
use crate::core::{Core, Window};
use crate::host::{self, Host};

#[derive(Debug)]
pub(super) struct Droplet {
    pub(super) id: u64,
    pub(super) seq: u64,
    pub(super) account: String,
    pub(super) name: String,
    pub(super) size: String,
    pub(super) image: Value,
    pub(super) region: Option<String>,
    pub(super) tags: Vec<String>,
    pub(super) user_data: Option<String>,
    pub(super) ssh_keys: Vec<String>,
    pub(super) vpc_uuid: Option<String>,
    pub(super) body: Value,
    pub(super) created: Instant,
    pub(super) created_at: OffsetDateTime,
    pub(super) deleted: bool,
    pub(super) polls_404_left: u32,
    pub(super) action_id: u64,
    /// Its SSH side, while it exists (with [`DoConfig::hosts`]).
    pub(super) host: Option<Host>,
}

impl Droplet {
    /// Gone, and its server with it.
    pub(super) fn delete(&mut self) {
        self.deleted = true;
        self.host = None;
    }

    fn is_live_of(&self, account: &str) -> bool {
        !self.deleted && self.account == account
    }
}

#[derive(Debug)]
pub(super) struct Key {
    pub(super) id: u64,
    pub(super) account: String,
    pub(super) name: String,
    pub(super) fingerprint: String,
    pub(super) public_key: String,
    pub(super) blob: Vec<u8>,
    pub(super) deleted: bool,
}

impl Key {
    /// A live key of `account` that `reference` (an id or a fingerprint) names.
    pub(super) fn is_named_by(&self, account: &str, reference: &str) -> bool {
        !self.deleted
            && self.account == account
            && (self.id.to_string() == reference || self.fingerprint == reference)
    }
}

#[derive(Debug, Default)]
pub(super) struct World {
    pub(super) next_seq: u64,
    pub(super) droplets: Vec<Droplet>,
    pub(super) keys: Vec<Key>,
}

impl World {
    /// `account`'s droplets not deleted, in creation order.
    pub(super) fn live_droplets<'a>(
        &'a self,
        account: &'a str,
    ) -> impl Iterator<Item = &'a Droplet> + 'a {
        self.droplets.iter().filter(move |d| d.is_live_of(account))
    }

    /// `account`'s droplet `id`, if not deleted.
    pub(super) fn live_droplet_mut(&mut self, account: &str, id: u64) -> Option<&mut Droplet> {
        self.droplets
            .iter_mut()
            .find(|d| d.id == id && d.is_live_of(account))
    }

    /// `account`'s live key named by `reference` (an id or a fingerprint).
    pub(super) fn key_mut(&mut self, account: &str, reference: &str) -> Option<&mut Key> {
        self.keys
            .iter_mut()
            .find(|k| k.is_named_by(account, reference))
    }
}

/// The rate-limit windows, per token.
#[derive(Debug)]
pub(super) struct Limits {
    pub(super) hour: Window,
    pub(super) minute: Window,
    pub(super) key_list: Window,
}

impl Limits {
    pub(super) fn new(config: &DoConfig) -> Self {
        let minute = Duration::from_secs(60);
        Self {
            hour: Window::new(config.rate_limit_per_hour, Duration::from_secs(3600)),
            minute: Window::new(config.rate_limit_per_minute, minute),
            key_list: Window::new(config.key_list_limit_per_minute, minute),
        }
    }
}

#[derive(Debug)]
pub(super) struct DoState {
    pub(super) config: DoConfig,
    pub(super) url: String,
    pub(super) core: Core,
    pub(super) world: Mutex<World>,
    pub(super) limits: Mutex<Limits>,
    /// With hosts: the emulator's own `127.x.y.0/24` (random, so parallel tests differ).
    pub(super) loopback_net: [u8; 2],
}

impl DoState {
    pub(super) fn status(&self, d: &Droplet, now: Instant) -> &'static str {
        if now.saturating_duration_since(d.created) >= self.config.active_after {
            "active"
        } else {
            "new"
        }
    }

    pub(super) fn has_public(&self, d: &Droplet, now: Instant) -> bool {
        now.saturating_duration_since(d.created)
            >= self.config.active_after + self.config.address_after
    }

    pub(super) fn public_ip(&self, seq: u64) -> String {
        match self.config.hosts {
            Some(_) => {
                let [a, b] = self.loopback_net;
                format!("127.{a}.{}.{}", b.max(1), 2 + seq % 250)
            }
            None => format!("198.51.100.{}", 2 + seq % 250),
        }
    }

    /// Boots `d` for SSH: up when it has its public address, cloud-init done `boot_time` later.
    pub(super) fn boot(&self, d: &Droplet) -> Option<Host> {
        let hosts = self.config.hosts.as_ref()?;
        let up_at = d.created + self.config.active_after + self.config.address_after;
        let mut boot = host::from_cloud_init(
            self.public_ip(d.seq).parse().ok()?,
            d.user_data.as_deref(),
            up_at,
            up_at + hosts.boot_time,
        );
        if hosts.impostor {
            boot.host_key = None;
        }
        boot.failed |= hosts.cloud_init_fails;
        match host::start(boot, hosts.ssh_port, hosts.run_commands.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "droplet could not boot");
                None
            }
        }
    }
}

pub(super) fn private_ip(seq: u64) -> String {
    format!("10.110.{}.{}", (seq / 250) % 250, 2 + seq % 250)
}
