//! The gRPC handlers: validate the request, call the module that does the work, answer.

use orchestrator_mesh::caller;
use orchestrator_proto::vault::v1::{self as pb, vault_service_server::VaultService};
use tonic::{Request, Response, Status};

use crate::state::Vault;
use crate::{db, grants, key_status, read, validate, write};

#[tonic::async_trait]
impl VaultService for Vault {
    async fn put_user_secret(
        &self,
        request: Request<pb::PutUserSecretRequest>,
    ) -> Result<Response<pb::PutUserSecretResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let put = validate::put(request.into_inner())?;
        let secret = write::put(self, caller, put).await?;
        Ok(Response::new(pb::PutUserSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn get_user_secret(
        &self,
        request: Request<pb::GetUserSecretRequest>,
    ) -> Result<Response<pb::GetUserSecretResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let wanted = validate::get(request.get_ref())?;
        let secret = read::get(self, &caller, &wanted).await?;
        Ok(Response::new(pb::GetUserSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn batch_get_user_secrets(
        &self,
        request: Request<pb::BatchGetUserSecretsRequest>,
    ) -> Result<Response<pb::BatchGetUserSecretsResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let wanted = validate::batch_get(request.get_ref())?;
        let secrets = read::batch_get(self, &caller, &wanted).await?;
        Ok(Response::new(pb::BatchGetUserSecretsResponse { secrets }))
    }

    async fn grant_user_secret(
        &self,
        request: Request<pb::GrantUserSecretRequest>,
    ) -> Result<Response<pb::GrantUserSecretResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let r = request.get_ref();
        let wanted = validate::grant(&r.user_id, &r.key, &r.project_id)?;
        let grant = grants::grant(self, caller, wanted).await?;
        Ok(Response::new(pb::GrantUserSecretResponse {
            grant: Some(grant),
        }))
    }

    async fn revoke_user_secret_grant(
        &self,
        request: Request<pb::RevokeUserSecretGrantRequest>,
    ) -> Result<Response<pb::RevokeUserSecretGrantResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let r = request.get_ref();
        let wanted = validate::grant(&r.user_id, &r.key, &r.project_id)?;
        let grant = grants::revoke(self, caller, wanted).await?;
        Ok(Response::new(pb::RevokeUserSecretGrantResponse {
            grant: Some(grant),
        }))
    }

    async fn list_user_secrets(
        &self,
        request: Request<pb::ListUserSecretsRequest>,
    ) -> Result<Response<pb::ListUserSecretsResponse>, Status> {
        let list = validate::list(request.get_ref())?;
        let (secrets, next_page_token) =
            db::list_secrets(self.db.pool(), list.user_id.as_str(), &list.page).await?;
        // Filtered after paging: a page may come back short, and the token still moves on.
        let secrets = secrets
            .into_iter()
            .filter(|meta| list.show_deleted || meta.has_live_version())
            .map(db::SecretMeta::into_pb)
            .collect();
        Ok(Response::new(pb::ListUserSecretsResponse {
            secrets,
            next_page_token,
        }))
    }

    async fn delete_user_secret(
        &self,
        request: Request<pb::DeleteUserSecretRequest>,
    ) -> Result<Response<pb::DeleteUserSecretResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let delete = validate::delete(request.into_inner())?;
        let secret = write::delete(self, caller, delete).await?;
        Ok(Response::new(pb::DeleteUserSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn rotate_data_key(
        &self,
        request: Request<pb::RotateDataKeyRequest>,
    ) -> Result<Response<pb::RotateDataKeyResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let expected_primary = validate::rotate(request.into_inner());
        let (previous, next) = write::rotate(self, caller, expected_primary).await?;
        Ok(Response::new(
            key_status::rotated(self, previous, next).await?,
        ))
    }

    async fn get_key_status(
        &self,
        _request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::GetKeyStatusResponse>, Status> {
        Ok(Response::new(key_status::report(self).await?))
    }
}
