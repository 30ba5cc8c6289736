//! gRPC channels to mesh services over mTLS, verifying the server's SPIFFE ID, and the tracing
//! wrapper a service's channels to its peers carry ([`PeerChannel`]).

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::Instrument as _;

use crate::identity::Identity;
use crate::telemetry;
use crate::tls::{MeshTls, TlsError};

/// Connects to `target` (`host:port`) as the identity in `tls`, accepting only a server that
/// proves `server`. New connections (reconnects) use the newest client certificate.
pub async fn connect(
    tls: Arc<MeshTls>,
    target: &str,
    server: Identity,
) -> Result<Channel, tonic::transport::Error> {
    connect_with(move || tls.client_config(&server), target).await
}

/// A channel to `target` that connects on first use and reconnects after failures, so a
/// service can hold one per peer from start-up on, whether or not the peer is up yet. Each new
/// connection uses the newest client certificate and checks that the server proves `server`.
pub fn connect_lazy(
    tls: Arc<MeshTls>,
    target: &str,
    server: Identity,
) -> Result<Channel, tonic::transport::Error> {
    let (endpoint, connector) = endpoint(move || tls.client_config(&server), target)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Connects with whatever client configuration `config` returns for each new connection.
pub async fn connect_with<F>(config: F, target: &str) -> Result<Channel, tonic::transport::Error>
where
    F: Fn() -> Result<Arc<ClientConfig>, TlsError> + Send + Sync + 'static,
{
    let (endpoint, connector) = endpoint(config, target)?;
    endpoint.connect_with_connector(connector).await
}

type Connector = tower::util::BoxCloneSyncService<
    Uri,
    TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    io::Error,
>;

/// The endpoint and the mTLS connector both kinds of channel use.
fn endpoint<F>(config: F, target: &str) -> Result<(Endpoint, Connector), tonic::transport::Error>
where
    F: Fn() -> Result<Arc<ClientConfig>, TlsError> + Send + Sync + 'static,
{
    let config = Arc::new(config);
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or("localhost")
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let config = config().map_err(io::Error::other)?;
            let name = ServerName::try_from(host).map_err(io::Error::other)?;
            let stream = TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The scheme is `http` because TLS is ours, inside the connector.
    let endpoint = Endpoint::from_shared(format!("http://{target}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok((endpoint, tower::util::BoxCloneSyncService::new(connector)))
}

/// A service's channel to one of its peers: every call is an exported client span (when traces
/// are on) and carries its W3C trace context (`traceparent`) in the gRPC metadata, so that the
/// peer's server span joins the caller's trace.
pub type PeerChannel = Traced<Channel>;

/// Wraps a gRPC client service (a [`Channel`]) with a client span per call.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Traced<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The path is one of our own generated clients' methods, never a caller's input.
        let name = req.uri().path().trim_start_matches('/');
        let (service, method) = name.split_once('/').unwrap_or((name, ""));
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "rpc.client",
            otel.name = name,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
        );
        telemetry::inject(&span, req.headers_mut());
        self.inner.call(req).instrument(span)
    }
}
