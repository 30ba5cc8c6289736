//! Running operations in the background: started when accepted, resumed at start from their
//! recorded step, retried with backoff while a step fails transiently; a final failure ends
//! the operation with its reason.

use std::sync::Arc;

use orchestrator_mesh::retry::Backoff;
use orchestrator_store::StoreError;
use tonic::Status;

use super::compensate::compensate;
use super::destroy::destroy;
use super::failure::StepError;
use super::lease;
use super::provision::provision;
use super::rotate::rotate;
use super::steps::Run;
use crate::model::{OperationKind, ServerState, Step};
use crate::state::Infra;

/// Runs operation `id` in the background until it ends, if this replica gets its lease.
pub(crate) fn start(infra: &Arc<Infra>, id: &str) {
    let (infra, id) = (infra.clone(), id.to_owned());
    tokio::spawn(async move { lease::run_leased(&infra, &id, run(&infra, &id)).await });
}

/// Resumes the operations an earlier process (or a replica that died) left unfinished, now and
/// from then on.
pub(crate) async fn resume_unfinished(infra: &Arc<Infra>) -> Result<(), StoreError> {
    lease::take_over_abandoned(infra).await
}

/// Runs (or resumes) an operation until it ends. Transient failures are retried with backoff;
/// a final one fails the operation with its reason.
async fn run(infra: &Infra, id: &str) {
    let run = Run { infra, id };
    let mut backoff = Backoff::default();
    loop {
        match run_once(run).await {
            Ok(()) => return,
            Err(StepError::Transient(why)) => {
                if let Some(late) = run.past_deadline(&why).await {
                    fail(run, &late).await;
                    return;
                }
                tracing::warn!(operation = %id, error = %why, "operation step will be retried");
                tokio::time::sleep(backoff.next_wait()).await;
            }
            Err(StepError::Final(status)) => {
                tracing::warn!(operation = %id, error = %status.message(), "operation failed");
                fail(run, &status).await;
                return;
            }
        }
    }
}

/// One attempt, from the recorded state: steps already done are skipped.
async fn run_once(run: Run<'_>) -> Result<(), StepError> {
    let operation = run.infra.operation(run.id).await?;
    if operation.state.has_ended() {
        return Ok(());
    }
    let server = run.infra.server(&operation.server_id).await?;
    match operation.kind {
        OperationKind::Provision => {
            let checkout = operation.steps.includes(Step::RepositoryCheckedOut);
            provision(run, server, checkout).await
        }
        OperationKind::Rotate => rotate(run, server).await,
        OperationKind::Destroy => destroy(run, server).await,
    }
}

/// Ends the operation as failed with `status`. A failed rotation leaves a working server (the
/// old key, or both), so its state stays; any other failure fails the server too.
async fn fail(run: Run<'_>, status: &Status) {
    let Ok(operation) = run.infra.operation(run.id).await else {
        return;
    };
    let Ok(server) = run.infra.server(&operation.server_id).await else {
        return;
    };
    let state = match operation.kind {
        OperationKind::Rotate => server.state,
        OperationKind::Provision | OperationKind::Destroy => ServerState::Failed,
    };
    // A failed provision releases what it made before it ends (a crash meanwhile resumes it).
    let status = match operation.kind {
        OperationKind::Provision => compensate(run, &operation, &server, status).await,
        OperationKind::Rotate | OperationKind::Destroy => status.clone(),
    };
    let _ = run.finish(&server.id, Some(&status), state).await;
}
