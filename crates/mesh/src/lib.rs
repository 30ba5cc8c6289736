//! What every service of the mesh shares, so that there is one copy of each: workload
//! identities, mutual TLS with rotation, the per-RPC authorization policy and layer, the
//! observation layer, health, reflection, the admin port and per-service configuration.
//!
//! A service's `main` is [`service_main`] plus its own gRPC routes.

pub mod admin;
pub mod anchor;
pub mod authz;
pub mod client;
pub mod config;
pub mod identity;
pub mod observe;
pub mod peer;
pub mod policy;
pub mod retry;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod transport;

/// Precise gRPC errors, shared with the crates below the mesh.
pub use orchestrator_status as status;

pub use config::{ConfigError, Env, MeshConfig};
pub use identity::{Identity, IdentityName, TrustDomain};
pub use peer::{Peer, caller};
pub use policy::Policy;
pub use server::{Startup, service_main};
pub use service::Service;
pub use tls::{MeshTls, TlsFiles};
