//! How `orchctl` reaches a service: the caller's certificate from a PKI directory, and the
//! service's SPIFFE ID it must prove.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_mesh::{Identity, MeshTls, Service, TlsFiles};
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

/// The connection options shared by the commands that call a service over mTLS.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MeshArgs {
    /// The PKI directory holding `ca.crt` and the caller's `<identity>.crt`/`.key`.
    #[arg(long, default_value = ".orchestrator/pki")]
    pub(crate) pki: PathBuf,
    /// The identity to call as (default: `operator` for health, `api` for vault).
    #[arg(long)]
    pub(crate) identity: Option<String>,
    /// The SPIFFE trust domain the services' certificates belong to.
    #[arg(long, default_value = "orchestrator.local", env = "ORCH_TRUST_DOMAIN")]
    pub(crate) trust_domain: String,
}

impl MeshArgs {
    /// The caller's TLS state, as `--identity` or else `default_identity`.
    pub(crate) fn tls(&self, default_identity: &str) -> anyhow::Result<Arc<MeshTls>> {
        let identity = self.identity.as_deref().unwrap_or(default_identity);
        let _: orchestrator_mesh::IdentityName = identity
            .parse()
            .with_context(|| format!("--identity `{identity}`"))?;
        MeshTls::load(caller_files(&self.pki, identity), None).with_context(|| {
            format!(
                "cannot load the `{identity}` certificate from {} (create it with `orchctl pki init`)",
                self.pki.display()
            )
        })
    }

    /// The SPIFFE ID `service` must prove.
    pub(crate) fn server(&self, service: Service) -> anyhow::Result<Identity> {
        Ok(format!("spiffe://{}/{}", self.trust_domain, service.name()).parse()?)
    }

    /// A channel to `service` at `target` (`host:port`).
    pub(crate) async fn connect(
        &self,
        tls: &Arc<MeshTls>,
        target: &str,
        service: Service,
    ) -> anyhow::Result<Channel> {
        connect(tls, target, self.server(service)?).await
    }
}

/// The certificate, key and CA bundle of `identity` in the PKI directory `pki`.
pub(crate) fn caller_files(pki: &Path, identity: &str) -> TlsFiles {
    TlsFiles {
        cert: pki.join(format!("{identity}.crt")),
        key: pki.join(format!("{identity}.key")),
        ca: pki.join("ca.crt"),
    }
}

/// Connects to `target`, expecting the server to prove `server`; gives up after 5 seconds.
pub(crate) async fn connect(
    tls: &Arc<MeshTls>,
    target: &str,
    server: Identity,
) -> anyhow::Result<Channel> {
    tokio::time::timeout(
        Duration::from_secs(5),
        orchestrator_mesh::client::connect(tls.clone(), target, server),
    )
    .await
    .with_context(|| format!("connecting to {target} timed out"))?
    .with_context(|| format!("cannot connect to {target}"))
}

/// A gRPC failure: the code, the message, and the structured details if the service sent any.
pub(crate) fn status_error(what: &str, status: &tonic::Status) -> anyhow::Error {
    let mut text = format!(
        "{what} failed: {}: {}",
        code_name(status.code()),
        status.message()
    );
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        text.push_str(&format!(
            "\n  reason: {} (domain {})",
            info.reason, info.domain
        ));
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        for (k, v) in metadata {
            text.push_str(&format!("\n  {k}: {v}"));
        }
    }
    if let Some(bad) = details.bad_request() {
        for violation in &bad.field_violations {
            text.push_str(&format!(
                "\n  field {}: {}",
                violation.field, violation.description
            ));
        }
    }
    if let Some(failure) = details.precondition_failure() {
        for violation in &failure.violations {
            text.push_str(&format!(
                "\n  precondition {} {}: {}",
                violation.r#type, violation.subject, violation.description
            ));
        }
    }
    anyhow::anyhow!(text)
}

/// The canonical name of a gRPC status code, as in the gRPC specification.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
