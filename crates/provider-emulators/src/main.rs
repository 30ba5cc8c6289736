//! `provider-emulators`: the DigitalOcean, Cloudflare and Time4VPS emulators as one process, for
//! `orchctl up` and end-to-end tests.
//!
//! Environment (all optional; an emulator without credentials refuses every request):
//! - `DIGITALOCEAN_EMULATOR_ADDR`, `CLOUDFLARE_EMULATOR_ADDR`, `TIME4VPS_EMULATOR_ADDR`: where
//!   each listens (default `127.0.0.1:0`, a free port).
//! - Every credential below may instead be given as a file, `<NAME>_FILE` (a container's secret).
//! - `PROVIDER_EMULATORS_ADDR_FILE`: receives `{"digitalocean": url, "cloudflare": url,
//!   "time4vps": url}` once all three listen (written then renamed).
//! - `DIGITALOCEAN_EMULATOR_TOKEN` (comma-separated for several accounts),
//!   `DIGITALOCEAN_EMULATOR_ACTIVE_AFTER_MS`, `..._ADDRESS_AFTER_MS`,
//!   `..._TRANSIENT_404_POLLS`, `..._RATE_LIMIT_PER_MINUTE`.
//! - `CLOUDFLARE_EMULATOR_TOKEN` (comma-separated), `CLOUDFLARE_EMULATOR_ZONE` (comma-separated,
//!   default `orchestrator.test`).
//! - `TIME4VPS_EMULATOR_USER`, `TIME4VPS_EMULATOR_PASSWORD`, `TIME4VPS_EMULATOR_SERVERS`
//!   (`101=203.0.113.10,102=203.0.113.11`), `TIME4VPS_EMULATOR_TASK_AFTER_MS`.
//! - `PROVIDER_EMULATORS_SSH_PORT`: boot servers for real SSH on this port of their own
//!   loopback addresses (droplets get `127.x.y.z` addresses; Time4VPS servers should be
//!   configured with loopback IPs), `PROVIDER_EMULATORS_BOOT_MS`: how long cloud-init runs.
//! - `PROVIDER_EMULATORS_FAULTS`: faults for all three, `seed=7,rate=0.3` (see
//!   `Faults::mixed`) or any of `seed`, `server_error`, `rate_limited_429`,
//!   `dropped_connection`, `after_handler`, `latency_ms`, `retry_after_secs`.
//!
//! Logs one line per request (never a token or a body). Exits on SIGTERM or Ctrl-C.

use std::time::Duration;

use anyhow::Context as _;
use std::net::SocketAddr;

use orchestrator_emulator_kit::process::{self, env, env_or_file};
use orchestrator_provider_emulators::{
    CfConfig, DoConfig, Faults, HostsConfig, ProviderEmulators, ProvidersConfig, T4Config,
};

fn list(name: &str) -> anyhow::Result<Vec<String>> {
    Ok(env_or_file(name)?
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

/// Where one emulator listens: `name`, default a free port on loopback.
fn listen_addr(name: &str) -> anyhow::Result<SocketAddr> {
    env(name)
        .as_deref()
        .unwrap_or("127.0.0.1:0")
        .parse()
        .with_context(|| format!("{name}: not an address (host:port)"))
}

fn number<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    env(name)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| anyhow::anyhow!("{name}: not a number"))
        })
        .transpose()
}

fn millis(name: &str) -> anyhow::Result<Option<Duration>> {
    Ok(number::<u64>(name)?.map(Duration::from_millis))
}

fn servers(spec: &str) -> anyhow::Result<Vec<(u64, String)>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (id, ip) = pair
                .split_once('=')
                .with_context(|| format!("TIME4VPS_EMULATOR_SERVERS: {pair:?} is not id=ip"))?;
            let id = id
                .trim()
                .parse()
                .with_context(|| format!("TIME4VPS_EMULATOR_SERVERS: bad id in {pair:?}"))?;
            Ok((id, ip.trim().to_owned()))
        })
        .collect()
}

fn faults(spec: &str) -> anyhow::Result<Faults> {
    let mut f = Faults::default();
    let mut rate = None;
    for pair in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("PROVIDER_EMULATORS_FAULTS: {pair:?} is not key=value"))?;
        let float = || {
            value
                .trim()
                .parse::<f64>()
                .with_context(|| format!("PROVIDER_EMULATORS_FAULTS: {key}"))
        };
        let int = || {
            value
                .trim()
                .parse::<u64>()
                .with_context(|| format!("PROVIDER_EMULATORS_FAULTS: {key}"))
        };
        match key.trim() {
            "seed" => f.seed = int()?,
            "rate" => rate = Some(float()?),
            "server_error" => f.server_error = float()?,
            "rate_limited_429" => f.rate_limited_429 = float()?,
            "dropped_connection" => f.dropped_connection = float()?,
            "after_handler" => f.after_handler = float()?,
            "latency_ms" => f.latency = Duration::from_millis(int()?),
            "retry_after_secs" => f.retry_after_secs = int()?,
            other => anyhow::bail!("PROVIDER_EMULATORS_FAULTS: unknown key {other:?}"),
        }
    }
    if let Some(rate) = rate {
        let mixed = Faults::mixed(f.seed, rate);
        f = Faults {
            latency: f.latency,
            retry_after_secs: f.retry_after_secs,
            ..mixed
        };
    }
    Ok(f)
}

fn config() -> anyhow::Result<ProvidersConfig> {
    let mut digitalocean = DoConfig {
        tokens: list("DIGITALOCEAN_EMULATOR_TOKEN")?,
        ..DoConfig::default()
    };
    if let Some(d) = millis("DIGITALOCEAN_EMULATOR_ACTIVE_AFTER_MS")? {
        digitalocean.active_after = d;
    }
    if let Some(d) = millis("DIGITALOCEAN_EMULATOR_ADDRESS_AFTER_MS")? {
        digitalocean.address_after = d;
    }
    if let Some(n) = number("DIGITALOCEAN_EMULATOR_TRANSIENT_404_POLLS")? {
        digitalocean.transient_404_polls = n;
    }
    if let Some(n) = number("DIGITALOCEAN_EMULATOR_RATE_LIMIT_PER_MINUTE")? {
        digitalocean.rate_limit_per_minute = n;
    }
    let mut zones = list("CLOUDFLARE_EMULATOR_ZONE")?;
    if zones.is_empty() {
        zones.push("orchestrator.test".to_owned());
    }
    let cloudflare = CfConfig {
        tokens: list("CLOUDFLARE_EMULATOR_TOKEN")?,
        zones,
        ..CfConfig::default()
    };
    let mut time4vps = T4Config {
        user: env("TIME4VPS_EMULATOR_USER").unwrap_or_default(),
        password: env_or_file("TIME4VPS_EMULATOR_PASSWORD")?.unwrap_or_default(),
        servers: servers(&env("TIME4VPS_EMULATOR_SERVERS").unwrap_or_default())?,
        ..T4Config::default()
    };
    if let Some(d) = millis("TIME4VPS_EMULATOR_TASK_AFTER_MS")? {
        time4vps.task_after = d;
    }
    if let Some(ssh_port) = number("PROVIDER_EMULATORS_SSH_PORT")? {
        let hosts = HostsConfig {
            ssh_port,
            boot_time: millis("PROVIDER_EMULATORS_BOOT_MS")?.unwrap_or(Duration::from_millis(500)),
            ..Default::default()
        };
        digitalocean.hosts = Some(hosts.clone());
        time4vps.hosts = Some(hosts);
    }
    Ok(ProvidersConfig {
        digitalocean,
        cloudflare,
        time4vps,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    process::init_logging();

    let config = config()?;
    let fault_spec = env("PROVIDER_EMULATORS_FAULTS")
        .map(|s| faults(&s))
        .transpose()?;
    for (name, missing) in [
        ("DigitalOcean", config.digitalocean.tokens.is_empty()),
        ("Cloudflare", config.cloudflare.tokens.is_empty()),
        ("Time4VPS", config.time4vps.user.is_empty()),
    ] {
        if missing {
            tracing::warn!(
                emulator = name,
                "no credentials configured: every request is refused"
            );
        }
    }
    let emulators = ProviderEmulators::start_on(
        config,
        listen_addr("DIGITALOCEAN_EMULATOR_ADDR")?,
        listen_addr("CLOUDFLARE_EMULATOR_ADDR")?,
        listen_addr("TIME4VPS_EMULATOR_ADDR")?,
    )
    .await?;
    if let Some(f) = fault_spec {
        emulators.set_faults(f);
    }
    let urls = emulators.urls_json();
    if let Some(path) = env("PROVIDER_EMULATORS_ADDR_FILE") {
        process::write_address_file(&path, &urls.to_string())?;
    }
    tracing::info!(
        digitalocean = %emulators.digitalocean.url(),
        cloudflare = %emulators.cloudflare.url(),
        time4vps = %emulators.time4vps.url(),
        "provider-emulators listening"
    );

    process::stop_requested().await?;
    tracing::info!("provider-emulators stopping");
    emulators.shutdown();
    Ok(())
}
