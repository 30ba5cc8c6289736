//! The gRPC handlers: validate, act, answer.

use orchestrator_mesh::caller;
use orchestrator_proto::scaffolder::v1::{
    self as pb, scaffolder_service_server::ScaffolderService,
};
use tonic::{Request, Response, Status};

use crate::state::Scaffolder;
use crate::view::{self, View};
use crate::{create, db, validate};

#[tonic::async_trait]
impl ScaffolderService for Scaffolder {
    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::CreateProjectResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let (new, initial) = validate::create_project(request.into_inner(), &self.settings.org)?;
        let (project, results) = create::create_project(self, new, initial, &caller).await?;
        Ok(Response::new(pb::CreateProjectResponse {
            project: Some(view::project(self, &project, View::Basic).await?),
            initial_secret_results: results,
        }))
    }

    async fn get_project(
        &self,
        request: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::GetProjectResponse>, Status> {
        let (id, view) = validate::get_project(request.get_ref())?;
        let project = db::project_by_id(&self.db, &id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no project `{id}`")))?;
        Ok(Response::new(pb::GetProjectResponse {
            project: Some(view::project(self, &project, view).await?),
        }))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let list = validate::list_projects(request.get_ref())?;
        let after = list.page.after().and_then(|position| position.first());
        let mut found = db::list_projects(
            &self.db,
            &list.filter,
            after.map(String::as_str),
            list.page.limit(),
        )
        .await?;
        let next_page_token = list.page.finish(&mut found, |p| vec![p.id.to_string()]);
        let mut projects = Vec::with_capacity(found.len());
        for project in &found {
            projects.push(view::project(self, project, list.view).await?);
        }
        Ok(Response::new(pb::ListProjectsResponse {
            projects,
            next_page_token,
        }))
    }
}
