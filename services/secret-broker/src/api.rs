//! The gRPC surface of the secret broker: each handler validates, calls the module that does
//! the work, and answers.

use orchestrator_mesh::caller;
use orchestrator_proto::secretbroker::v1::{
    self as pb, secret_broker_service_server::SecretBrokerService,
};
use tonic::{Request, Response, Status};

use crate::audit::Action;
use crate::location::Location;
use crate::state::Broker;
use crate::{db, messages, validate};

/// Who may write or delete organization secrets: `api` only, the identity that speaks for
/// platform teams. The scaffolder writes a new project's own secrets, never ones shared across
/// the organization; infra writes deploy credentials to the repository only.
fn may_touch_organization_secrets(caller: &orchestrator_mesh::Identity) -> bool {
    caller.name().as_str() == "api"
}

fn organization_refused(caller: &orchestrator_mesh::Identity) -> Status {
    orchestrator_mesh::status::with_reason(
        tonic::Code::PermissionDenied,
        "ORGANIZATION_SECRET_NOT_ALLOWED",
        format!("{caller} may not write or delete organization secrets"),
        &[("caller", caller.to_string())],
    )
}

#[tonic::async_trait]
impl SecretBrokerService for Broker {
    async fn register_repository(
        &self,
        request: Request<pb::RegisterRepositoryRequest>,
    ) -> Result<Response<pb::RegisterRepositoryResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let req = validate::register_repository(request.into_inner())?;
        let reg = self.register(caller, req).await?;
        Ok(Response::new(pb::RegisterRepositoryResponse {
            registration: Some(messages::registration(&reg)),
        }))
    }

    async fn set_project_secrets(
        &self,
        request: Request<pb::SetProjectSecretsRequest>,
    ) -> Result<Response<pb::SetProjectSecretsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let req = validate::set_project_secrets(request.into_inner())?;
        if req.location == Location::Organization && !may_touch_organization_secrets(&caller) {
            return Err(organization_refused(&caller));
        }
        let results = self
            .push(caller.to_string(), Action::SetProjectSecrets, req)
            .await?;
        Ok(Response::new(pb::SetProjectSecretsResponse { results }))
    }

    async fn set_deploy_credentials(
        &self,
        request: Request<pb::SetDeployCredentialsRequest>,
    ) -> Result<Response<pb::SetDeployCredentialsResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let (req, server_id) = validate::set_deploy_credentials(request.into_inner())?;
        // A server's credentials go to the one project it was provisioned for, and no other.
        self.bind_server(&caller, &server_id, &req.project_id)
            .await?;
        let results = self.push(caller, Action::SetDeployCredentials, req).await?;
        Ok(Response::new(pb::SetDeployCredentialsResponse { results }))
    }

    async fn list_project_secrets(
        &self,
        request: Request<pb::ListProjectSecretsRequest>,
    ) -> Result<Response<pb::ListProjectSecretsResponse>, Status> {
        let (project_id, page, location) = validate::list_project_secrets(request.get_ref())?;
        self.registered(&project_id).await?;
        let after = page
            .after()
            .and_then(<[String]>::first)
            .map_or("", String::as_str);
        let mut refs = db::list_secret_refs(
            self.db.pool(),
            &project_id,
            &location.key(),
            after,
            page.limit(),
        )
        .await?;
        let next_page_token = page.finish(&mut refs, |r| vec![r.name.clone()]);
        Ok(Response::new(pb::ListProjectSecretsResponse {
            secrets: refs.into_iter().map(messages::secret_reference).collect(),
            next_page_token,
        }))
    }

    async fn delete_project_secret(
        &self,
        request: Request<pb::DeleteProjectSecretRequest>,
    ) -> Result<Response<pb::DeleteProjectSecretResponse>, Status> {
        let caller = caller(&request)?.clone();
        let (project_id, name, location) = validate::delete_project_secret(request.get_ref())?;
        if location == Location::Organization && !may_touch_organization_secrets(&caller) {
            return Err(organization_refused(&caller));
        }
        let deleted = self
            .delete_secret(caller.to_string(), project_id, name, location)
            .await?;
        Ok(Response::new(pb::DeleteProjectSecretResponse {
            deleted_at_github: deleted,
        }))
    }

    async fn reconcile_project_secrets(
        &self,
        request: Request<pb::ReconcileProjectSecretsRequest>,
    ) -> Result<Response<pb::ReconcileProjectSecretsResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let (project_id, location) = validate::reconcile_project_secrets(request.get_ref())?;
        let dry_run = request.get_ref().dry_run;
        Ok(Response::new(
            self.reconcile(caller, project_id, location, dry_run)
                .await?,
        ))
    }

    async fn mint_repository_token(
        &self,
        request: Request<pb::MintRepositoryTokenRequest>,
    ) -> Result<Response<pb::MintRepositoryTokenResponse>, Status> {
        let caller = caller(&request)?.clone();
        let mint = validate::mint_repository_token(request.get_ref())?;
        Ok(Response::new(self.mint_token(&caller, mint).await?))
    }
}
