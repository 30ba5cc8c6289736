//! Accepting mTLS connections ourselves (rather than through tonic's static TLS config), so that
//! each handshake uses the newest certificate and the peer's identity is parsed once per
//! connection instead of once per request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::identity::{Identity, TrustDomain};
use crate::peer::Peer;
use crate::tls::MeshTls;

/// A handshake that has not finished in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Counter of refused or failed handshakes, by `reason`.
pub const HANDSHAKE_FAILURES: &str = "mesh_tls_handshake_failures_total";

/// An established mTLS connection with its verified peer.
#[derive(Debug)]
pub struct MeshStream {
    inner: TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for MeshStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts TCP connections until `shutdown` turns true, completes the mTLS handshake of each
/// in its own task and yields the connections whose peer proves an identity of `trust_domain`.
pub fn accept(
    listener: TcpListener,
    tls: Arc<MeshTls>,
    trust_domain: TrustDomain,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<io::Result<MeshStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let (tcp, remote) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.server_config());
            let (tx, trust_domain) = (tx.clone(), trust_domain.clone());
            tokio::spawn(async move {
                match handshake(acceptor, tcp, remote, &trust_domain).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(reason) => {
                        metrics::counter!(HANDSHAKE_FAILURES, "reason" => reason.kind())
                            .increment(1);
                        tracing::info!(%remote, error = %reason, "connection refused");
                    }
                }
            });
        }
    });
    rx
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("peer certificate names no mesh identity: {0}")]
    Identity(String),
    #[error("peer {0} belongs to another trust domain")]
    TrustDomain(Identity),
}

impl Refused {
    fn kind(&self) -> &'static str {
        match self {
            Refused::Handshake(_) => "handshake",
            Refused::Timeout => "timeout",
            Refused::Identity(_) => "identity",
            Refused::TrustDomain(_) => "trust_domain",
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    trust_domain: &TrustDomain,
) -> Result<MeshStream, Refused> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| Refused::Timeout)?
        .map_err(Refused::Handshake)?;
    // The verifier demanded a certificate chaining to our CA; now read who it names.
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| Refused::Identity("no client certificate".into()))?;
    let identity =
        Identity::from_certificate(leaf).map_err(|e| Refused::Identity(e.to_string()))?;
    if identity.trust_domain() != trust_domain {
        return Err(Refused::TrustDomain(identity));
    }
    Ok(MeshStream {
        inner: stream,
        peer: Peer {
            identity,
            remote_addr: Some(remote),
        },
    })
}
