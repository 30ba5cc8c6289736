//! Whose project a server is for. The scaffolder owns projects and records each one's owner
//! (`Project.user_id`); infra asks it (GetProject, BASIC view: no call onwards) whenever a
//! request would spend a user's own vault entry, and refuses an entry of any other user.

use orchestrator_proto::scaffolder::v1 as scaffolder;
use orchestrator_proto::scaffolder::v1::scaffolder_service_client::ScaffolderServiceClient;
use orchestrator_status::{from_peer, with_reason};
use tonic::{Code, Status};

use crate::model::NewServer;
use crate::state::Infra;
use crate::validate;

/// Refuses `server` when one of its credentials is a vault entry of a user who does not own
/// its project (PERMISSION_DENIED `CREDENTIAL_NOT_OWNED`), or when its project is unknown
/// (NOT_FOUND `PROJECT_NOT_FOUND`). Platform credentials need no owner. Runs before anything
/// is recorded, so a refused request leaves no server, no operation and no provider call.
pub(crate) async fn check(infra: &Infra, server: &NewServer) -> Result<(), Status> {
    if validate::vault_users(server).is_empty() {
        return Ok(());
    }
    let owner = owner_of(infra, server.project_id.as_str()).await?;
    validate::credentials_owned_by(server, &owner)
}

/// The user who owns `project_id`, as the scaffolder recorded it at creation.
async fn owner_of(infra: &Infra, project_id: &str) -> Result<String, Status> {
    let answer = ScaffolderServiceClient::new(infra.peers.scaffolder.clone())
        .get_project(scaffolder::GetProjectRequest {
            project_id: project_id.to_owned(),
            view: scaffolder::ProjectView::Basic as i32,
        })
        .await;
    match answer {
        Ok(response) => response
            .into_inner()
            .project
            .map(|p| p.user_id)
            .filter(|owner| !owner.is_empty())
            .ok_or_else(|| Status::internal("the scaffolder answered without the project's owner")),
        Err(status) if status.code() == Code::NotFound => Err(with_reason(
            Code::NotFound,
            "PROJECT_NOT_FOUND",
            format!(
                "project `{project_id}` is unknown to the scaffolder: a user's own key serves only a project that user owns"
            ),
            &[("project_id", project_id.to_owned())],
        )),
        Err(status) => Err(from_peer("scaffolder")(status)),
    }
}
