//! WatchOperation streams: each one polls the database (every replica's progress lands
//! there), and each caller holds a bounded number of them at once, so a peer that opens
//! streams and never reads them cannot grow infra's tasks and database load without end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator_proto::infra::v1 as pb;
use orchestrator_status::with_reason;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::model::Operation;
use crate::state::Infra;

/// How often an open stream looks for a change.
const POLL: Duration = Duration::from_millis(100);

/// The open streams per caller, and the most each may hold.
#[derive(Debug)]
pub(crate) struct Watchers {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream of a caller; closing it (dropping this) frees the place.
#[derive(Debug)]
pub(crate) struct Place {
    caller: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Watchers {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A place for one more stream of `caller`; RESOURCE_EXHAUSTED (`TOO_MANY_WATCHES`) when
    /// the caller holds the most already.
    pub(crate) fn enter(&self, caller: &str) -> Result<Place, Status> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(caller.to_owned()).or_default();
        if *held >= self.max {
            return Err(with_reason(
                Code::ResourceExhausted,
                "TOO_MANY_WATCHES",
                format!(
                    "{caller} holds {} open WatchOperation streams, the most allowed \
                     (INFRA_MAX_WATCHES_PER_CALLER); close one or poll GetOperation",
                    self.max
                ),
                &[("max", self.max.to_string())],
            ));
        }
        *held += 1;
        Ok(Place {
            caller: caller.to_owned(),
            open: self.open.clone(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.get_mut(&self.caller) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// Sends `current` and then each change, until the operation ends or the watcher leaves;
/// `place` is held until then.
pub(crate) async fn run(
    infra: Arc<Infra>,
    mut current: Operation,
    tx: mpsc::Sender<Result<pb::WatchOperationResponse, Status>>,
    place: Place,
) {
    let _place = place;
    loop {
        let ended = current.state.has_ended();
        let update = pb::WatchOperationResponse {
            operation: Some(current.to_pb()),
        };
        if tx.send(Ok(update)).await.is_err() || ended {
            return;
        }
        current = loop {
            tokio::time::sleep(POLL).await;
            match infra.operation(&current.id).await {
                Ok(next) if next.updated_us != current.updated_us => break next,
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::Watchers;
    use tonic::Code;

    #[test]
    fn each_caller_holds_at_most_max_streams_and_a_closed_one_frees_its_place() {
        let watchers = Watchers::new(2);
        let a1 = watchers.enter("api").unwrap();
        let _a2 = watchers.enter("api").unwrap();
        let refused = watchers.enter("api").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("TOO_MANY_WATCHES"));
        // Another caller has places of its own.
        let _o = watchers.enter("operator").unwrap();
        drop(a1);
        let _a3 = watchers.enter("api").unwrap();
        assert!(watchers.enter("api").is_err());
    }
}
