//! The per-RPC authorization layer: caller identity from the peer certificate (verified at the
//! handshake), method from the HTTP/2 path, decision from the [`Policy`]. Default deny.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::peer::Peer;
use crate::policy::Policy;

/// `ErrorInfo.domain` of every refusal the mesh itself produces.
pub const ERROR_DOMAIN: &str = "mesh.orchestrator";
/// `ErrorInfo.reason` when the policy does not allow the caller to call the method.
pub const REASON_NOT_ALLOWED: &str = "RPC_NOT_ALLOWED";

#[derive(Debug, Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
}

impl AuthzLayer {
    pub fn new(policy: Arc<Policy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let refusal = match req.extensions().get::<Peer>() {
            None => Some(Status::unauthenticated(
                "no verified peer identity on this connection",
            )),
            Some(peer) if self.policy.allows(path, peer.identity.name()) => None,
            Some(peer) => Some(not_allowed(&peer.identity.to_string(), path)),
        };
        match refusal {
            None => Either::Right(self.inner.call(req)),
            Some(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

/// PERMISSION_DENIED with one `ErrorInfo` naming the caller and the method (AIP-193).
pub fn not_allowed(caller: &str, method: &str) -> Status {
    orchestrator_status::with_domain_reason(
        Code::PermissionDenied,
        ERROR_DOMAIN,
        REASON_NOT_ALLOWED,
        format!("{caller} is not allowed to call {method}"),
        &[("caller", caller.to_owned()), ("method", method.to_owned())],
    )
}
