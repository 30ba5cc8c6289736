//! Real HTTP clients for the infra service's providers, each with a configurable base URL so the
//! same code runs against the provider or an emulator: DigitalOcean (droplets, account SSH keys),
//! Time4VPS (take-over of servers bought in advance) and Cloudflare DNS.
//!
//! Servers are provisioned through one trait, [`ServerProvider`]. Retries never duplicate a server: reads and deletes retry; creates do not, and a failed
//! create is followed by a lookup of its idempotency tag.

mod cloudflare;
mod digitalocean;
mod http;
mod server;
mod time4vps;

pub use cloudflare::{Claim, Cloudflare, DnsRecord, NameState, owner_comment};
pub use digitalocean::{CreateDroplet, DigitalOcean, Droplet};
pub use http::{ProviderError, Retry};
pub use server::{ServerProvider, ServerSpec, Started};
pub use time4vps::{Time4Vps, Time4VpsServer};
