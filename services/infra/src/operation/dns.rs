//! A server's A record, and only that record. Every record infra creates carries the comment
//! `orchestrator server <id>` (`owner_comment`) and its id is recorded; a name that holds any
//! record infra did not create for this server is someone else's (HOSTNAME_TAKEN_IN_DNS) and
//! nothing of it is touched. Updates and deletes go by the recorded id.
//!
//! The check runs three times: when the request is accepted (nothing recorded yet, so a
//! refusal leaves no trace), when the operation starts (before the deploy key or a server
//! exists), and in the create itself (a record made meanwhile).

use orchestrator_providers::{Claim, DnsRecord, NameState, owner_comment};
use orchestrator_status::with_reason;
use tonic::{Code, Status};

use super::credentials;
use super::failure::StepError;
use super::precheck::{answer, step_answer};
use super::steps::Run;
use crate::db::Column;
use crate::model::{NewServer, Server, Step, StepState};
use crate::state::Infra;

/// The refusal of a hostname someone else's record holds.
fn taken(hostname: &str, record: &DnsRecord) -> Status {
    with_reason(
        Code::FailedPrecondition,
        "HOSTNAME_TAKEN_IN_DNS",
        format!(
            "{hostname} already has a DNS record infra did not create ({} record {}); \
             choose another hostname, or remove that record first",
            record.type_, record.id
        ),
        &[],
    )
}

/// At acceptance: refuses a hostname with a record no orchestrator server made. (Records of
/// our own servers are left to the one-live-server-per-hostname check and to the
/// operation's exact check below.)
pub(crate) async fn refuse_foreign_records(
    infra: &Infra,
    server: &NewServer,
) -> Result<(), Status> {
    let Some((cf, zone)) =
        credentials::cloudflare(infra, server.project_id.as_str(), &server.dns_credentials)
            .await
            .map_err(step_answer)?
    else {
        return Ok(());
    };
    let zone_id = cf.zone_id(&zone).await.map_err(answer)?;
    let records = cf
        .records_named(&zone_id, &server.hostname)
        .await
        .map_err(answer)?;
    match records.iter().find(|r| !r.is_marked_by_orchestrator()) {
        Some(foreign) => Err(taken(&server.hostname, foreign)),
        None => Ok(()),
    }
}

/// At the start of a provision, before any side effect: the name must be free or hold only
/// this server's record (a retry, a resume).
pub(super) async fn check_name(run: Run<'_>, server: &Server) -> Result<(), StepError> {
    if server.dns_record_id.is_some() {
        return Ok(());
    }
    let Some((cf, zone)) =
        credentials::cloudflare(run.infra, &server.project_id, &server.dns_credentials).await?
    else {
        return Ok(());
    };
    let zone_id = cf.zone_id(&zone).await?;
    match cf
        .name_state(&zone_id, &server.hostname, &owner_comment(&server.id))
        .await?
    {
        NameState::Taken(foreign) => Err(StepError::Final(taken(&server.hostname, &foreign))),
        NameState::Free | NameState::Ours(_) => Ok(()),
    }
}

/// The A record, where a DNS zone is configured: created with this server's comment (or this
/// server's found and pointed at the address), its id recorded.
pub(super) async fn set_record(run: Run<'_>, server: &mut Server) -> Result<(), StepError> {
    if server.dns_record_id.is_some() {
        return Ok(());
    }
    let ip = server.ipv4.clone().unwrap_or_default();
    let Some((cf, zone)) =
        credentials::cloudflare(run.infra, &server.project_id, &server.dns_credentials).await?
    else {
        run.mark(
            Step::DnsRecordSet,
            StepState::Skipped,
            "no DNS zone configured",
        )
        .await?;
        return Ok(());
    };
    run.mark(
        Step::DnsRecordSet,
        StepState::Running,
        "setting the A record",
    )
    .await?;
    let zone_id = cf.zone_id(&zone).await?;
    let owner = owner_comment(&server.id);
    // Architecture Invariant: infra writes only its own DNS records; a name someone else's
    // record holds is refused, never taken over.
    let record = match cf
        .claim_a_record(&zone_id, &server.hostname, &ip, &owner)
        .await?
    {
        Claim::Ours(id) => id,
        Claim::Taken(foreign) => {
            return Err(StepError::Final(taken(&server.hostname, &foreign)));
        }
    };
    run.set_server(&server.id, Column::DnsRecordId, Some(&record))
        .await?;
    server.dns_record_id = Some(record);
    run.mark(
        Step::DnsRecordSet,
        StepState::Done,
        &format!("{} -> {ip}", server.hostname),
    )
    .await?;
    Ok(())
}

/// Removes this server's record, by its recorded id (or, when the id was never recorded, the
/// record with this server's comment); never another record of the name.
pub(super) async fn remove_record(run: Run<'_>, server: &Server) -> Result<(), StepError> {
    let Some((cf, zone)) =
        credentials::cloudflare(run.infra, &server.project_id, &server.dns_credentials).await?
    else {
        return Ok(run
            .mark(
                Step::DnsRecordRemoved,
                StepState::Skipped,
                "no DNS zone configured",
            )
            .await?);
    };
    let zone_id = cf.zone_id(&zone).await?;
    let id = match &server.dns_record_id {
        Some(id) => Some(id.clone()),
        None => cf
            .find_owned(&zone_id, &server.hostname, &owner_comment(&server.id))
            .await?
            .map(|r| r.id),
    };
    let (state, detail) = match id {
        Some(id) if cf.delete_record(&zone_id, &id).await? => (StepState::Done, "removed"),
        Some(_) => (StepState::Done, "already gone"),
        None => (StepState::Skipped, "no record was made"),
    };
    Ok(run.mark(Step::DnsRecordRemoved, state, detail).await?)
}
