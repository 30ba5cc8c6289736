//! The gRPC surface of infra: operations are accepted at once (recorded with their audit
//! record) and run in the background; reads answer from the database.

use std::sync::Arc;

use orchestrator_mesh::caller;
use orchestrator_proto::infra::v1::{self as pb, infra_service_server::InfraService};
use orchestrator_status::with_reason;
use orchestrator_store::{StoreError, now_us, random_hex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::audit::Action;
use crate::db;
use crate::model::{
    NewOperation, Operation, OperationKind, OperationState, Server, ServerState, Steps,
};
use crate::operation::{self, DESTROY, ROTATE, provision_steps};
use crate::owner;
use crate::state::Infra;
use crate::validate::{self, ProvisionRequest};
use crate::watch;

/// The gRPC service: a handle on the shared state (background operations hold one too).
#[derive(Debug, Clone)]
pub(crate) struct Api(pub(crate) Arc<Infra>);

type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl InfraService for Api {
    type WatchOperationStream = BoxStream<pb::WatchOperationResponse>;

    async fn provision_server(
        &self,
        request: Request<pb::ProvisionServerRequest>,
    ) -> Result<Response<pb::ProvisionServerResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let request = validate::provision(request.into_inner(), &self.0.settings)?;
        // A user's own key serves only that user's projects: checked before anything is
        // recorded, so a refusal leaves no server and calls no provider.
        owner::check(&self.0, &request.server).await?;
        let operation =
            match db::operation_by_request(&self.0.db, request.request_id.as_str()).await? {
                Some(earlier) => {
                    let server = self.0.server(&earlier.server_id).await?;
                    validate::same_request(request.server.is_described_by(&server))?;
                    earlier
                }
                None => {
                    // Before anything is recorded: a hostname someone else's DNS record holds
                    // is refused at once (the operation checks again before its first effect).
                    operation::refuse_foreign_records(&self.0, &request.server).await?;
                    operation::refuse_unknown_time4vps_server(&self.0, &request.server).await?;
                    let id = self
                        .0
                        .ledger
                        .write_retrying(move |conn| {
                            Box::pin(accept(conn, caller.clone(), request.clone()))
                        })
                        .await?;
                    self.started(&id).await?
                }
            };
        Ok(Response::new(pb::ProvisionServerResponse {
            operation: Some(operation.to_pb()),
        }))
    }

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let place = self.0.watchers.enter(&caller(&request)?.to_string())?;
        let first = self.0.operation(&request.into_inner().operation_id).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(watch::run(self.0.clone(), first, tx, place));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        let operation = self.0.operation(&request.into_inner().operation_id).await?;
        Ok(Response::new(pb::GetOperationResponse {
            operation: Some(operation.to_pb()),
        }))
    }

    async fn get_server(
        &self,
        request: Request<pb::GetServerRequest>,
    ) -> Result<Response<pb::GetServerResponse>, Status> {
        let server = self.0.server(&request.into_inner().server_id).await?;
        Ok(Response::new(pb::GetServerResponse {
            server: Some(server.to_pb()),
        }))
    }

    async fn list_servers(
        &self,
        request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let request = validate::list(&request.into_inner())?;
        let mut servers = db::list_servers(
            &self.0.db,
            &request.filter,
            &request.after,
            request.page.limit(),
        )
        .await?;
        let next_page_token = request.page.finish(&mut servers, |s| {
            vec![s.created_us.to_string(), s.id.clone()]
        });
        Ok(Response::new(pb::ListServersResponse {
            servers: servers.iter().map(Server::to_pb).collect(),
            next_page_token,
        }))
    }

    async fn destroy_server(
        &self,
        request: Request<pb::DestroyServerRequest>,
    ) -> Result<Response<pb::DestroyServerResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let server = self.0.server(&request.into_inner().server_id).await?;
        // Idempotent: a destroy already running or done is returned as it is; one that failed
        // is tried again as a new operation (a server is never stuck half destroyed).
        let earlier = db::latest_operation(&self.0.db, &server.id, OperationKind::Destroy).await?;
        let operation = match earlier {
            Some(earlier) if earlier.state != OperationState::Failed => earlier,
            _ => {
                let destroy = NewOperation {
                    id: NewOperation::new_id(),
                    request_id: None,
                    kind: OperationKind::Destroy,
                    server_id: server.id,
                    project_id: server.project_id,
                    steps: Steps::pending(&DESTROY),
                };
                let id = self
                    .0
                    .ledger
                    .write(move |conn| {
                        Box::pin(async move {
                            let now = now_us();
                            db::insert_operation(&mut *conn, &destroy, now).await?;
                            db::mark_destroying(conn, &destroy.server_id, now).await?;
                            let entry = Action::DestroyServer
                                .entry(&caller, format!("servers/{}", destroy.server_id))
                                .detail(format!("operation {}", destroy.id));
                            Ok((destroy.id, vec![entry]))
                        })
                    })
                    .await?;
                self.started(&id).await?
            }
        };
        Ok(Response::new(pb::DestroyServerResponse {
            operation: Some(operation.to_pb()),
        }))
    }

    async fn rotate_deploy_key(
        &self,
        request: Request<pb::RotateDeployKeyRequest>,
    ) -> Result<Response<pb::RotateDeployKeyResponse>, Status> {
        let caller = caller(&request)?.to_string();
        let request = validate::rotate(request.into_inner())?;
        if let Some(earlier) =
            db::operation_by_request(&self.0.db, request.request_id.as_str()).await?
        {
            validate::same_request(earlier.server_id == request.server_id)?;
            return Ok(Response::new(pb::RotateDeployKeyResponse {
                operation: Some(earlier.to_pb()),
            }));
        }
        let server = self.0.server(&request.server_id).await?;
        if server.state != ServerState::Ready {
            return Err(with_reason(
                Code::FailedPrecondition,
                "SERVER_NOT_READY",
                format!(
                    "server {} is {}, not ready: only a ready server's key can be rotated",
                    server.id, server.state
                ),
                &[],
            ));
        }
        let id = NewOperation::new_id();
        let entry = Action::RotateDeployKey
            .entry(&caller, format!("servers/{}", server.id))
            .request_id(request.request_id.as_str())
            .detail(format!("operation {id}"));
        let rotation = NewOperation {
            id,
            request_id: Some(request.request_id),
            kind: OperationKind::Rotate,
            server_id: server.id,
            project_id: server.project_id,
            steps: Steps::pending(&ROTATE),
        };
        let id = self
            .0
            .ledger.write(move |conn| {
                Box::pin(async move {
                    // One operation at a time per server.
                    if let Some(running) =
                        db::running_operation_on(&mut *conn, &rotation.server_id).await?
                    {
                        return Err(with_reason(
                            Code::FailedPrecondition,
                            "OPERATION_RUNNING",
                            format!(
                                "operation {running} is running on server {}; rotate when it has ended",
                                rotation.server_id
                            ),
                            &[],
                        ));
                    }
                    db::insert_operation(conn, &rotation, now_us()).await?;
                    Ok((rotation.id, vec![entry]))
                })
            })
            .await?;
        Ok(Response::new(pb::RotateDeployKeyResponse {
            operation: Some(self.started(&id).await?.to_pb()),
        }))
    }
}

impl Api {
    /// Starts an accepted operation in the background; answers with it as it is now.
    async fn started(&self, id: &str) -> Result<Operation, Status> {
        operation::start(&self.0, id);
        self.0.operation(id).await
    }
}

/// Records a provision: its server (one live server per hostname, one project per Time4VPS
/// server) and its operation, all steps pending. Returns the operation's id.
async fn accept(
    conn: &mut sqlx::AnyConnection,
    caller: String,
    request: ProvisionRequest,
) -> Result<(String, Vec<orchestrator_audit::Entry>), Status> {
    let server = &request.server;
    // One live server per hostname: its A record and DEPLOY_HOST are that server's.
    if let Some(other) = db::live_server_named(&mut *conn, &server.hostname).await? {
        return Err(with_reason(
            Code::AlreadyExists,
            "HOSTNAME_IN_USE",
            format!(
                "{} is already the hostname of server {other}; destroy it first",
                server.hostname
            ),
            &[],
        ));
    }
    // A Time4VPS server serves one project at a time.
    if let Some(id) = &server.provider_server_id
        && let Some(other) = db::live_time4vps_server(&mut *conn, id).await?
    {
        return Err(with_reason(
            Code::FailedPrecondition,
            "SERVER_IN_USE",
            format!("Time4VPS server {id} is already taken over as {other}; destroy that first"),
            &[],
        ));
    }
    let now = now_us();
    let server_id = format!("srv-{}", random_hex(8));
    let provision = NewOperation {
        id: NewOperation::new_id(),
        request_id: Some(request.request_id.clone()),
        kind: OperationKind::Provision,
        server_id: server_id.clone(),
        project_id: server.project_id.to_string(),
        steps: Steps::pending(&provision_steps(request.checkout_repository)),
    };
    db::insert_server(&mut *conn, &server_id, &provision.id, server, now).await?;
    db::insert_operation(conn, &provision, now)
        .await
        .map_err(|e| match e {
            StoreError::Duplicate(_) => with_reason(
                Code::Aborted,
                "CONCURRENT_REQUEST",
                "the same request_id is being accepted concurrently; retry",
                &[],
            ),
            other => other.into(),
        })?;
    let entry = Action::ProvisionServer
        .entry(&caller, format!("servers/{server_id}"))
        .request_id(request.request_id.as_str())
        .detail(format!(
            "operation {} host {}",
            provision.id, server.hostname
        ));
    Ok((provision.id, vec![entry]))
}
