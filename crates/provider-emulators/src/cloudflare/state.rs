//! The configured zones and the DNS records written to them.

use std::sync::Mutex;

use time::OffsetDateTime;

use super::CfConfig;
use crate::core::{Core, Window};

#[derive(Debug, Clone)]
pub(super) struct Zone {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) created_on: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) id: String,
    pub(super) zone_id: String,
    pub(super) type_: String,
    pub(super) name: String,
    pub(super) content: String,
    pub(super) ttl: u32,
    pub(super) proxied: bool,
    pub(super) comment: Option<String>,
    pub(super) tags: Vec<String>,
    pub(super) created_on: OffsetDateTime,
    pub(super) modified_on: OffsetDateTime,
    pub(super) token_used: String,
}

#[derive(Debug, Default)]
pub(super) struct World {
    pub(super) next: u64,
    pub(super) records: Vec<Record>,
}

impl World {
    /// Where record `id` of `zone` is in [`World::records`].
    pub(super) fn position(&self, zone: &Zone, id: &str) -> Option<usize> {
        self.records
            .iter()
            .position(|r| r.zone_id == zone.id && r.id == id)
    }
}

#[derive(Debug)]
pub(super) struct CfState {
    pub(super) config: CfConfig,
    pub(super) zones: Vec<Zone>,
    pub(super) core: Core,
    pub(super) world: Mutex<World>,
    /// Requests per token.
    pub(super) limits: Mutex<Window>,
}

impl CfState {
    pub(super) fn zone(&self, id: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.id == id)
    }
}
