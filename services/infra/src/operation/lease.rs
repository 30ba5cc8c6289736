//! Leases, so that with several infra replicas on one database each unfinished operation runs
//! in exactly one of them, and the operations of a replica that died are taken over.
//!
//! A replica runs an operation only while it holds its lease (one conditional UPDATE, so two
//! replicas cannot both take it), renews it every third of its length, and stops the work when
//! a renewal finds another holder. Every replica looks for operations whose lease ran out at
//! start and then once per lease length.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator_store::{StoreError, now_us, random_hex};

use super::runner;
use crate::db;
use crate::state::Infra;

/// This process as a lease holder, and the operations it runs now.
#[derive(Debug)]
pub(crate) struct Leases {
    owner: String,
    length: Duration,
    running: Mutex<HashSet<String>>,
}

impl Leases {
    pub(crate) fn new(length: Duration) -> Self {
        Self {
            owner: format!("infra-{}", random_hex(8)),
            length,
            running: Mutex::default(),
        }
    }

    fn until(&self) -> (i64, i64) {
        let now = now_us();
        (now, now + self.length.as_micros() as i64)
    }
}

/// Runs `work` for operation `id` if this replica gets its lease, holding it meanwhile;
/// returns at once when another replica (or this one) runs it already.
pub(crate) async fn run_leased(infra: &Infra, id: &str, work: impl Future<Output = ()>) {
    let leases = &infra.leases;
    let Some(_running) = Running::enter(leases, id) else {
        return;
    };
    let (now, until) = leases.until();
    match db::claim_lease(&infra.db, id, &leases.owner, now, until).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            // The next look for abandoned operations tries again.
            tracing::warn!(operation = %id, error = %e, "could not take the operation's lease");
            return;
        }
    }
    tokio::select! {
        () = work => {}
        () = renew_until_lost(infra, id) => {
            tracing::warn!(operation = %id, "lease lost to another replica; it goes on from the recorded step");
        }
    }
    if let Err(e) = db::release_lease(&infra.db, id, &leases.owner).await {
        tracing::warn!(operation = %id, error = %e, "could not give the lease back; it runs out");
    }
}

/// Renews the lease every third of its length; returns when it is lost: another replica holds
/// it, the operation ended, or the database could not be told for a whole lease length.
async fn renew_until_lost(infra: &Infra, id: &str) {
    let leases = &infra.leases;
    let mut held_until = leases.until().1;
    loop {
        tokio::time::sleep(leases.length / 3).await;
        let (now, until) = leases.until();
        match db::claim_lease(&infra.db, id, &leases.owner, now, until).await {
            Ok(true) => held_until = until,
            Ok(false) => return,
            Err(e) if now < held_until => {
                tracing::warn!(operation = %id, error = %e, "lease not renewed; trying again");
            }
            Err(_) => return,
        }
    }
}

/// Starts every unfinished operation nobody holds a live lease on (at start: the ones an
/// earlier process left), then keeps looking once per lease length for operations a dead
/// replica held.
pub(crate) async fn take_over_abandoned(infra: &Arc<Infra>) -> Result<(), StoreError> {
    start_claimable(infra).await?;
    let infra = infra.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(infra.leases.length).await;
            if let Err(e) = start_claimable(&infra).await {
                tracing::warn!(error = %e, "could not look for abandoned operations");
            }
        }
    });
    Ok(())
}

async fn start_claimable(infra: &Arc<Infra>) -> Result<(), StoreError> {
    for id in db::claimable_operations(&infra.db, now_us()).await? {
        runner::start(infra, &id);
    }
    Ok(())
}

/// One operation this process runs, so it never runs it twice at once.
struct Running<'a> {
    leases: &'a Leases,
    id: String,
}

impl<'a> Running<'a> {
    fn enter(leases: &'a Leases, id: &str) -> Option<Self> {
        let mut running = leases.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(id.to_owned()).then(|| Self {
            leases,
            id: id.to_owned(),
        })
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = self
            .leases
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        running.remove(&self.id);
    }
}
