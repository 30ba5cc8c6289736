//! The steps of each kind of operation, and how a running operation records its progress:
//! every change committed with its `infra/operation` audit record, so a restart resumes at the
//! recorded step.

use std::future::Future;
use std::pin::Pin;

use orchestrator_mesh::retry::recorded;
use orchestrator_status::with_reason;
use orchestrator_store::{StoreError, now_us};
use sqlx::AnyConnection;
use tonic::{Code, Status};

use super::failure::StepError;
use crate::audit::Action;
use crate::db::{self, Column};
use crate::model::{Failure, OperationState, ServerState, Step, StepState};
use crate::state::Infra;

/// Steps of a provision, in order; the checkout only when asked for.
pub(crate) fn provision_steps(checkout: bool) -> Vec<Step> {
    let mut steps = vec![
        Step::ServerCreated,
        Step::AddressAssigned,
        Step::DnsRecordSet,
        Step::DeployCredentialsHandedOver,
        Step::ServerReady,
    ];
    if checkout {
        steps.push(Step::RepositoryCheckedOut);
    }
    steps
}

/// Steps of a deploy key rotation, in order.
pub(crate) const ROTATE: [Step; 3] = [
    Step::DeployKeyAuthorized,
    Step::DeployCredentialsHandedOver,
    Step::OldDeployKeysRevoked,
];

/// Steps of a destroy, in order.
pub(crate) const DESTROY: [Step; 2] = [Step::ServerDeleted, Step::DnsRecordRemoved];

type Write<'c> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'c>>;

/// One run of an operation: infra's state and the operation it records progress for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run<'a> {
    pub(super) infra: &'a Infra,
    pub(super) id: &'a str,
}

impl Run<'_> {
    /// Sets one step's state and detail (which is also the operation's message).
    pub(super) async fn mark(
        &self,
        step: Step,
        state: StepState,
        detail: &str,
    ) -> Result<(), Status> {
        let (id, message) = (self.id.to_owned(), detail.to_owned());
        self.audited(
            format!("operations/{id}"),
            format!("{step:?} {state:?}: {detail}"),
            move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    let mut steps = db::operation_steps(&mut *conn, &id).await?;
                    steps.mark(step, state, &message, now);
                    db::record_progress(conn, &id, &steps, &message, now).await
                })
            },
        )
        .await
    }

    /// Ends the operation (failed with `error`, or succeeded) and moves its server to
    /// `server_state` (unless a destroy started meanwhile).
    pub(super) async fn finish(
        &self,
        server_id: &str,
        error: Option<&Status>,
        server_state: ServerState,
    ) -> Result<(), Status> {
        // The reason (and its facts) from the status's ErrorInfo; one without a reason is
        // recorded as infra's own (INFRA_FAILED), never UNKNOWN without a reason.
        let error = error.map(|s| Failure::of(&recorded(s.clone(), "infra")));
        let state = match error {
            Some(_) => OperationState::Failed,
            None => OperationState::Succeeded,
        };
        let (id, server_id) = (self.id.to_owned(), server_id.to_owned());
        self.audited(
            format!("operations/{id}"),
            format!("{state}; server {server_state}"),
            move |conn| {
                Box::pin(async move {
                    let now = now_us();
                    db::end_operation(&mut *conn, &id, state, error.as_ref(), now).await?;
                    db::set_server_state(conn, &server_id, server_state, now).await
                })
            },
        )
        .await
    }

    /// Records (or, with `None`, clears) one column of a server.
    pub(super) async fn set_server(
        &self,
        server_id: &str,
        column: Column,
        value: Option<&str>,
    ) -> Result<(), Status> {
        let (server_id, value) = (server_id.to_owned(), value.map(str::to_owned));
        self.audited(
            format!("servers/{server_id}"),
            column.name().to_owned(),
            move |conn| {
                Box::pin(async move {
                    db::set_server_column(conn, &server_id, column, value.as_deref(), now_us())
                        .await
                })
            },
        )
        .await
    }

    /// A provision (or rotation) stops at its next step once a destroy of its server was asked
    /// for (the destroy waits for it, then removes whatever it made).
    pub(super) async fn still_wanted(&self, server_id: &str) -> Result<(), StepError> {
        if self.infra.server(server_id).await?.state.is_going() {
            return Err(StepError::Final(with_reason(
                Code::Cancelled,
                "SERVER_DESTROYED",
                "the server is being destroyed: provisioning stopped",
                &[],
            )));
        }
        Ok(())
    }

    /// The final failure of an operation whose transient failures (`why`, the last) went on
    /// past its deadline, counted from its start; `None` while it may still retry.
    pub(super) async fn past_deadline(&self, why: &str) -> Option<Status> {
        let operation = self.infra.operation(self.id).await.ok()?;
        let deadline = self.infra.settings.operation_deadline;
        let age = now_us().saturating_sub(operation.created_us);
        if u128::try_from(age).unwrap_or(0) <= deadline.as_micros() {
            return None;
        }
        Some(with_reason(
            Code::DeadlineExceeded,
            "OPERATION_DEADLINE_EXCEEDED",
            format!("still failing after {deadline:?}: {why}"),
            &[],
        ))
    }

    /// Runs `write` in the ledger's transaction with its one `infra/operation` record.
    async fn audited<F>(&self, target: String, detail: String, write: F) -> Result<(), Status>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> Write<'c> + Send + 'static,
    {
        let caller = self.infra.self_id.clone();
        self.infra
            .ledger
            .write(move |conn| {
                Box::pin(async move {
                    write(conn).await?;
                    Ok((
                        (),
                        vec![Action::Operation.entry(&caller, target).detail(detail)],
                    ))
                })
            })
            .await
    }
}
