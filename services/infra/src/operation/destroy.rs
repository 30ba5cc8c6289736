//! A destroy: the server goes (a droplet is deleted; a Time4VPS server is wiped by a reinstall
//! and stays bought), then its A record, by its recorded id (never another record of the
//! name). A provision still running stops at its next step; the destroy waits for it, then
//! removes whatever it made, a droplet too whose id it never recorded (found by the
//! provision's tag).

use orchestrator_providers::ServerProvider as _;

use super::failure::StepError;
use super::provision::server_spec;
use super::steps::Run;
use super::{credentials, dns};
use crate::db;
use crate::model::{OperationKind, Provider, Server, ServerState, Step, StepState};

pub(super) async fn destroy(run: Run<'_>, server: Server) -> Result<(), StepError> {
    run.mark(
        Step::ServerDeleted,
        StepState::Running,
        "deleting the server",
    )
    .await?;
    let provision =
        db::latest_operation(&run.infra.db, &server.id, OperationKind::Provision).await?;
    if provision.as_ref().is_some_and(|p| !p.state.has_ended()) {
        return Err(StepError::Transient(
            "waiting for the provision to stop at its next step".to_owned(),
        ));
    }
    let provision_id = provision.map(|p| p.id).unwrap_or_default();
    let (state, detail) = release(run, &server, &provision_id).await?;
    run.mark(Step::ServerDeleted, state, detail).await?;
    dns::remove_record(run, &server).await?;
    run.finish(&server.id, None, ServerState::Destroyed).await?;
    Ok(())
}

/// Releases the server `provision_id` made (a droplet is deleted, found by its recorded id or
/// by the provision's tag; a Time4VPS server is wiped by a reinstall and stays bought): the
/// step's state and detail.
pub(super) async fn release(
    run: Run<'_>,
    server: &Server,
    provision_id: &str,
) -> Result<(StepState, &'static str), StepError> {
    let spec = server_spec(&run.infra.settings, provision_id, server);
    let released = match (server.provider, server.provider_server_id.as_deref()) {
        (Provider::DigitalOcean, Some(id)) => Some(
            credentials::digitalocean(run.infra, server)
                .await?
                .release(id, &spec)
                .await?,
        ),
        (Provider::DigitalOcean, None) => {
            let digitalocean = credentials::digitalocean(run.infra, server).await?;
            match digitalocean.find(&spec).await? {
                Some(made) => Some(digitalocean.release(&made.id, &spec).await?),
                None => None,
            }
        }
        (Provider::Time4Vps, Some(id)) => Some(
            credentials::time4vps(run.infra, &server.project_id, &server.credentials)
                .await?
                .release(id, &spec)
                .await?,
        ),
        (Provider::Time4Vps, None) => None,
    };
    Ok(match (released, server.provider) {
        (None, _) => (StepState::Skipped, "no server was created"),
        (Some(false), _) => (StepState::Done, "already gone"),
        (Some(true), Provider::DigitalOcean) => (StepState::Done, "deleted"),
        // A server bought in advance stays bought, wiped of the project and its keys.
        (Some(true), Provider::Time4Vps) => {
            (StepState::Done, "wiped by a reinstall; it stays bought")
        }
    })
}
