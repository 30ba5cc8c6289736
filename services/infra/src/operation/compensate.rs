//! What a provision that failed for good leaves behind: nothing anybody pays for. Before the
//! operation ends it releases what it made — the droplet is deleted (a Time4VPS server taken
//! over is wiped by a reinstall: it stays bought, without the project's keys), the DNS record
//! goes by its recorded id — and the failure says so in its metadata (`cleanup`). Where the
//! release itself cannot finish in time, the server is left `failed` and the failure says that
//! DestroyServer finishes it (a destroy of a failed server is always accepted again).

use orchestrator_mesh::retry::{Backoff, recorded};
use orchestrator_status::{reason_of, with_reason};
use tonic::Status;

use super::destroy::release;
use super::dns;
use super::failure::StepError;
use super::steps::Run;
use crate::model::{Operation, Server, Step};

/// How many attempts a compensation gets before it is left to DestroyServer.
const ATTEMPTS: usize = 6;

/// Releases what the failed provision `operation` made for `server`; returns `status` with
/// the outcome in its metadata (`cleanup`: `released` or `left for DestroyServer`).
pub(super) async fn compensate(
    run: Run<'_>,
    operation: &Operation,
    server: &Server,
    status: &Status,
) -> Status {
    let status = recorded(status.clone(), "infra");
    let (reason, mut metadata) = reason_of(&status).unwrap_or_default();
    // A destroy asked for meanwhile removes what the provision made itself.
    if reason == "SERVER_DESTROYED" {
        return status;
    }
    let mut backoff = Backoff::default();
    let mut outcome = Err(String::new());
    for _ in 0..ATTEMPTS {
        outcome = release_all(run, operation, server).await;
        match &outcome {
            Ok(()) => break,
            Err(why) => {
                tracing::warn!(operation = %run.id, error = %why, "compensation will be retried");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
    let cleanup = match outcome {
        Ok(()) => "released: no server, no DNS record left".to_owned(),
        Err(why) => format!("left for DestroyServer: {why}"),
    };
    metadata.insert("cleanup".to_owned(), cleanup);
    let metadata: Vec<(&str, String)> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    with_reason(status.code(), &reason, status.message(), &metadata)
}

/// The server (only if the provision got as far as starting one: a Time4VPS server it never
/// touched is not wiped) and the DNS record.
async fn release_all(run: Run<'_>, operation: &Operation, server: &Server) -> Result<(), String> {
    let attempt = async {
        if operation.steps.started(Step::ServerCreated) {
            release(run, server, &operation.id).await?;
        }
        dns::remove_record(run, server).await?;
        Ok::<_, StepError>(())
    };
    attempt.await.map_err(|e| match e {
        StepError::Transient(why) => why,
        StepError::Final(status) => status.message().to_owned(),
    })
}
