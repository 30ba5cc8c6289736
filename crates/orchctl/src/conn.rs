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
/// A timestamp as RFC 3339 to the second (`-` when absent).
pub(crate) fn when(t: Option<prost_types::Timestamp>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |mut t| {
            t.nanos = 0;
            t.to_string()
        },
    )
}

/// Whether calling again with the same request id can resume what a failed call left: only after
/// a failure that may have come after something was recorded (a dependency down, a timeout, a
/// conflict). A refused request (invalid, forbidden, not found, a precondition) created nothing.
pub(crate) fn resumable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

pub(crate) fn status_error(what: &str, status: &tonic::Status) -> anyhow::Error {
    status_error_naming(what, status, |field| format!("field {field}"))
}

/// [`status_error`], with each field violation's field shown as `name_field` says: a request
/// built from a file can point at the file's line instead of `secrets[3].name`.
pub(crate) fn status_error_naming(
    what: &str,
    status: &tonic::Status,
    name_field: impl Fn(&str) -> String,
) -> anyhow::Error {
    let details = status.get_error_details();
    // With field violations, each follows on its own line (named as the caller knows it): the
    // message, which joins them with their raw field paths, would only repeat them.
    let mut text = match details.bad_request() {
        Some(bad) if !bad.field_violations.is_empty() => {
            let more = status
                .message()
                .rsplit_once("; and ")
                .map_or(String::new(), |(_, n)| format!(" ({n} not listed)"));
            format!("{what} failed: {}{more}", code_name(status.code()))
        }
        _ => format!(
            "{what} failed: {}: {}",
            code_name(status.code()),
            status.message()
        ),
    };
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
                "\n  {}: {}",
                name_field(&violation.field),
                violation.description
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
