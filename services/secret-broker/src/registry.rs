//! Which repository each project has (RegisterRepository), and the tokens for its secrets.

use std::sync::Arc;

use orchestrator_fields::ProjectId;
use orchestrator_github::{InstallationToken, RepoRef};
use orchestrator_mesh::status::with_reason;
use orchestrator_store::{StoreError, now_us};
use tonic::{Code, Status};

use crate::audit::Action;
use crate::db;
use crate::location::Location;
use crate::state::Broker;
use crate::validate::{RegisterRequest, ServerId};

/// A project's registered repository.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub project_id: ProjectId,
    pub repo: RepoRef,
    pub installation: i64,
    pub created_us: i64,
}

impl Broker {
    /// The project's registration, `None` when it has none.
    pub(crate) async fn registration(
        &self,
        project_id: &ProjectId,
    ) -> Result<Option<Registered>, Status> {
        db::find_repository(self.db.pool(), project_id)
            .await?
            .map(|row| registered(project_id, row))
            .transpose()
    }

    /// The project's registration; NOT_FOUND when it has none.
    pub(crate) async fn registered(&self, project_id: &ProjectId) -> Result<Registered, Status> {
        self.registration(project_id).await?.ok_or_else(|| {
            Status::not_found(format!(
                "project `{project_id}` has no registered repository"
            ))
        })
    }

    /// The organization projects' repositories live in (`GITHUB_ORG`); FAILED_PRECONDITION
    /// `NO_ORGANIZATION` without one.
    pub(crate) fn organization(&self) -> Result<&str, Status> {
        self.org.as_deref().ok_or_else(|| {
            with_reason(
                Code::FailedPrecondition,
                "NO_ORGANIZATION",
                "GITHUB_ORG is not configured on the broker",
                &[],
            )
        })
    }

    /// Registers the project's repository at the GitHub installation that has it. Registering
    /// the same repository again (in any letter case, as GitHub names are case-insensitive)
    /// answers the first registration.
    // Architecture Invariant: only repositories of the organization are registered, so no
    // token the broker mints for a project reaches outside it.
    pub(crate) async fn register(
        &self,
        caller: String,
        req: RegisterRequest,
    ) -> Result<Registered, Status> {
        let org = self.organization()?;
        if !req.repo.is_owned_by(org) {
            return Err(with_reason(
                Code::PermissionDenied,
                "REPOSITORY_OUTSIDE_ORGANIZATION",
                format!(
                    "{} is not a repository of the organization {org}: only its repositories can be registered",
                    req.repo
                ),
                &[
                    ("owner", req.repo.owner().to_owned()),
                    ("organization", org.to_owned()),
                ],
            ));
        }
        if let Some(existing) = self.registration(&req.project_id).await? {
            return same_repository(existing, &req);
        }
        let installation = self
            .github
            .installation_for_repo(&req.repo)
            .await
            .map_err(|e| e.to_grpc())?;
        self.ledger
            .write_retrying(move |conn| {
                let (req, caller) = (req.clone(), caller.clone());
                Box::pin(async move {
                    // A concurrent registration of the project (another replica, a retry)
                    // committed first: the same answer as if it had been seen above.
                    if let Some(row) = db::find_repository(&mut *conn, &req.project_id).await? {
                        let existing = registered(&req.project_id, row)?;
                        return Ok((same_repository(existing, &req)?, Vec::new()));
                    }
                    let RegisterRequest {
                        request_id,
                        project_id,
                        repo,
                    } = req;
                    let created_us = now_us();
                    db::insert_repository(
                        conn,
                        &project_id,
                        &repo,
                        installation as i64,
                        created_us,
                    )
                    .await
                    .map_err(|e| match e {
                        StoreError::Duplicate(_) => with_reason(
                            Code::AlreadyExists,
                            "REPOSITORY_REGISTERED",
                            "the repository or project is already registered",
                            &[],
                        ),
                        other => other.into(),
                    })?;
                    let entry = Action::RegisterRepository
                        .on_project(&caller, &project_id)
                        .request_id(request_id.as_str())
                        .detail(format!("repository={repo} installation={installation}"));
                    let registered = Registered {
                        project_id,
                        repo,
                        installation: installation as i64,
                        created_us,
                    };
                    Ok((registered, vec![entry]))
                })
            })
            .await
    }

    /// Binds infra server `server_id` to `project_id` at its first handover (audited), and
    /// refuses its credentials for any other project afterwards: FAILED_PRECONDITION, reason
    /// `SERVER_OF_ANOTHER_PROJECT`, before anything is written.
    // Architecture Invariant: DEPLOY_* credentials of a project come only from a server
    // provisioned for that project.
    pub(crate) async fn bind_server(
        &self,
        caller: &str,
        server_id: &ServerId,
        project_id: &ProjectId,
    ) -> Result<(), Status> {
        let bound = match db::server_project(self.db.pool(), server_id.as_str()).await? {
            Some(bound) => bound,
            None => {
                let (caller, server, project) =
                    (caller.to_owned(), server_id.clone(), project_id.clone());
                self.ledger
                    .write(move |conn| {
                        Box::pin(async move {
                            let bound =
                                db::bind_server(conn, server.as_str(), &project, now_us()).await?;
                            let entry = Action::SetDeployCredentials
                                .on_project(&caller, &project)
                                .detail(format!("server {} bound", server.as_str()));
                            let entries = if bound == project.as_str() {
                                vec![entry]
                            } else {
                                Vec::new()
                            };
                            Ok((bound, entries))
                        })
                    })
                    .await?
            }
        };
        if bound == project_id.as_str() {
            return Ok(());
        }
        Err(with_reason(
            Code::FailedPrecondition,
            "SERVER_OF_ANOTHER_PROJECT",
            format!(
                "server `{}` was provisioned for another project than `{project_id}`: its deploy credentials belong to that project only",
                server_id.as_str()
            ),
            &[
                ("server_id", server_id.as_str().to_owned()),
                ("project_id", project_id.to_string()),
            ],
        ))
    }

    /// A token for the project repository's Actions secrets (narrowed to that repository and
    /// `secrets: write`; cached by the client until shortly before it expires).
    pub(crate) async fn secrets_token(
        &self,
        reg: &Registered,
        location: &Location,
    ) -> Result<Arc<InstallationToken>, Status> {
        let repositories: &[&str] = if location.narrowed_to_repository() {
            &[reg.repo.name()]
        } else {
            &[]
        };
        // Whether the token was minted now does not matter here.
        let (token, _) = self
            .github
            .token(
                reg.installation as u64,
                repositories,
                location.permissions(),
            )
            .await
            .map_err(|e| e.to_grpc())?;
        Ok(token)
    }

    /// A token that can create the project's deployment environments and nothing else:
    /// `administration: write` on its one repository. Minted only when an environment is
    /// missing.
    pub(crate) async fn environment_token(
        &self,
        reg: &Registered,
    ) -> Result<Arc<InstallationToken>, Status> {
        let (token, _) = self
            .github
            .token(
                reg.installation as u64,
                &[reg.repo.name()],
                &[("administration", "write")],
            )
            .await
            .map_err(|e| e.to_grpc())?;
        Ok(token)
    }
}

/// A stored registration of `project_id`.
fn registered(project_id: &ProjectId, row: db::RepositoryRow) -> Result<Registered, Status> {
    Ok(Registered {
        project_id: project_id.clone(),
        repo: RepoRef::new(&row.owner, &row.name).map_err(|e| Status::internal(e.to_string()))?,
        installation: row.installation_id,
        created_us: row.created_us,
    })
}

/// A project registers once: the same repository again is the earlier registration, another
/// one is ALREADY_EXISTS `PROJECT_REGISTERED`.
fn same_repository(existing: Registered, req: &RegisterRequest) -> Result<Registered, Status> {
    if existing.repo != req.repo {
        return Err(with_reason(
            Code::AlreadyExists,
            "PROJECT_REGISTERED",
            format!(
                "project `{}` is registered to {}",
                req.project_id, existing.repo
            ),
            &[("repository", existing.repo.to_string())],
        ));
    }
    Ok(existing)
}
