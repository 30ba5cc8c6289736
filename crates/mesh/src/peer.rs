//! The verified identity of the other end of a connection.

use std::net::SocketAddr;

use tonic::Status;

use crate::identity::Identity;

/// Who is on the other end of a connection, established once at the TLS handshake and attached
/// by tonic to every request on that connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub identity: Identity,
    pub remote_addr: Option<SocketAddr>,
}

/// The authenticated caller of an RPC, for handlers (audit records, per-caller scopes).
///
/// Every request that reaches a handler passed the authorization layer, so a missing peer is a
/// wiring bug and answers UNAUTHENTICATED rather than panicking.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Identity, Status> {
    request
        .extensions()
        .get::<Peer>()
        .map(|p| &p.identity)
        .ok_or_else(|| Status::unauthenticated("no verified peer identity"))
}
