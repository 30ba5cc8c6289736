//! What a provision can check at the provider before it is accepted, so that a request that
//! cannot work is refused with nothing recorded instead of failing as an operation later.

use orchestrator_providers::ProviderError;
use orchestrator_status::with_reason;
use tonic::{Code, Status};

use super::credentials;
use super::failure::StepError;
use crate::model::{NewServer, Provider};
use crate::state::Infra;

/// A provider failure as an answer to the caller (no operation exists yet to retry it).
pub(super) fn answer(e: ProviderError) -> Status {
    let code = match e.reason() {
        "PROVIDER_RATE_LIMITED" | "PROVIDER_UNAVAILABLE" => Code::Unavailable,
        "PROVIDER_AUTH_FAILED" => Code::PermissionDenied,
        "PROVIDER_NOT_FOUND" => Code::NotFound,
        "PROVIDER_BAD_ANSWER" => Code::Unknown,
        _ => Code::FailedPrecondition,
    };
    with_reason(code, e.reason(), e.to_string(), &[])
}

/// A step's failure as an answer to the caller.
pub(super) fn step_answer(e: StepError) -> Status {
    match e {
        StepError::Final(status) => status,
        StepError::Transient(why) => Status::unavailable(why),
    }
}

/// A Time4VPS takeover names a server of the account: one the account does not have is
/// NOT_FOUND (`PROVIDER_NOT_FOUND`, metadata `server_id`) before anything is recorded.
pub(crate) async fn refuse_unknown_time4vps_server(
    infra: &Infra,
    server: &NewServer,
) -> Result<(), Status> {
    if server.provider != Provider::Time4Vps {
        return Ok(());
    }
    let Some(id) = server.provider_server_id.as_deref() else {
        return Ok(());
    };
    let number: u64 = id
        .parse()
        .map_err(|_| Status::invalid_argument(format!("Time4VPS server id `{id}`")))?;
    let time4vps = credentials::time4vps(infra, server.project_id.as_str(), &server.credentials)
        .await
        .map_err(step_answer)?;
    match time4vps.server(number).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason() == "PROVIDER_NOT_FOUND" => Err(with_reason(
            Code::NotFound,
            "PROVIDER_NOT_FOUND",
            format!(
                "the Time4VPS account has no server {id}; list the account's servers and use \
                 one of their ids"
            ),
            &[("server_id", id.to_owned())],
        )),
        Err(e) => Err(answer(e)),
    }
}
