//! DeleteProjectSecret: removes a secret the broker wrote, at GitHub and then its reference.

use orchestrator_fields::ProjectId;
use orchestrator_github::SecretName;
use orchestrator_mesh::status::with_reason;
use tonic::{Code, Status};

use crate::audit::Action;
use crate::db;
use crate::location::{Location, audited};
use crate::state::Broker;

impl Broker {
    /// Deletes the project's secret `name`; `false` when GitHub no longer had it.
    pub(crate) async fn delete_secret(
        &self,
        caller: String,
        project_id: ProjectId,
        name: SecretName,
        location: Location,
    ) -> Result<bool, Status> {
        let reg = self.registered(&project_id).await?;
        let key = location.key();
        // Architecture Invariant: secrets someone else created are never touched. A delete
        // needs the broker's own reference for this project.
        let deploy = db::find_deploy_flag(self.db.pool(), &project_id, &key, &name)
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "the broker wrote no secret `{name}` in {} for project `{project_id}`",
                    location.describe()
                ))
            })?;
        if deploy {
            return Err(with_reason(
                Code::FailedPrecondition,
                "DEPLOY_CREDENTIAL",
                "deploy credentials are managed by infra",
                &[],
            ));
        }
        let token = self.secrets_token(&reg, &location).await?;
        let at = location.at(&reg.repo);
        let deleted = self
            .pacer
            .paced(reg.installation, || {
                self.github.delete_secret_at(&token.token, &at, &name)
            })
            .await?
            .map_err(|e| e.to_grpc())?;
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    db::delete_secret_ref(conn, &project_id, &key, &name).await?;
                    let entry = Action::DeleteProjectSecret
                        .on_secret(&caller, &project_id, audited(&key, &name))
                        .detail(if deleted {
                            "deleted at GitHub"
                        } else {
                            "already gone at GitHub"
                        });
                    Ok(((), vec![entry]))
                })
            })
            .await?;
        Ok(deleted)
    }
}
