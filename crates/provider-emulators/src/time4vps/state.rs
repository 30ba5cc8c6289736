//! The servers bought in advance and their reinstall tasks: a task is done `task_after` after
//! it was requested, and the server then runs the OS it asked for.

use std::sync::Mutex;
use std::time::Instant;

use time::OffsetDateTime;

use super::error::T4Error;
use super::{ReinstallRecord, T4Config};
use crate::core::{Core, Window};
use crate::host::Host;

#[derive(Debug)]
pub(super) struct Task {
    pub(super) id: u64,
    /// As the billing system names it: `Reinstall OS`, `Reboot`.
    pub(super) name: &'static str,
    pub(super) requested: Instant,
    pub(super) requested_at: OffsetDateTime,
    /// The reinstall behind it, for a reinstall task.
    pub(super) reinstall: Option<ReinstallRecord>,
}

#[derive(Debug)]
pub(super) struct Server {
    pub(super) id: u64,
    pub(super) ip: String,
    pub(super) initial_os: String,
    pub(super) tasks: Vec<Task>,
    /// Its SSH side since the last reinstall (with [`T4Config::hosts`]).
    pub(super) host: Option<Host>,
}

#[derive(Debug)]
pub(super) struct T4State {
    pub(super) config: T4Config,
    pub(super) core: Core,
    pub(super) servers: Mutex<Vec<Server>>,
    pub(super) next_task: Mutex<u64>,
    /// Requests of the account.
    pub(super) limits: Mutex<Window>,
}

impl T4State {
    pub(super) fn done(&self, t: &Task, now: Instant) -> bool {
        now.saturating_duration_since(t.requested) >= self.config.task_after
    }

    pub(super) fn os(&self, s: &Server, now: Instant) -> String {
        s.tasks
            .iter()
            .rev()
            .filter(|t| self.done(t, now))
            .find_map(|t| t.reinstall.as_ref())
            .map_or_else(|| s.initial_os.clone(), |r| r.os.clone())
    }

    /// The task running on `s`, if any (the billing system runs one at a time).
    pub(super) fn active<'s>(&self, s: &'s Server, now: Instant) -> Option<&'s Task> {
        s.tasks.iter().find(|t| !self.done(t, now))
    }

    /// Starts a task named `name` on `srv` (the caller checked that none runs) and returns its
    /// id.
    pub(super) fn start_task(
        &self,
        srv: &mut Server,
        name: &'static str,
        reinstall: Option<ReinstallRecord>,
        now: Instant,
    ) -> u64 {
        let id = {
            let mut next = crate::core::lock(&self.next_task);
            *next += 1;
            *next
        };
        srv.tasks.push(Task {
            id,
            name,
            requested: now,
            requested_at: OffsetDateTime::now_utc(),
            reinstall: reinstall.map(|r| ReinstallRecord { task_id: id, ..r }),
        });
        id
    }
}

/// Server `id`, or Time4VPS's 404.
pub(super) fn server(servers: &[Server], id: u64) -> Result<&Server, T4Error> {
    servers
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(T4Error::no_server)
}

/// Server `id` to change, or Time4VPS's 404.
pub(super) fn server_mut(servers: &mut [Server], id: u64) -> Result<&mut Server, T4Error> {
    servers
        .iter_mut()
        .find(|s| s.id == id)
        .ok_or_else(T4Error::no_server)
}
