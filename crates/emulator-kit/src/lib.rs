//! What the local emulators share, so each can be about its service's rules only:
//!
//! - [`serve`]: the accept loop, hyper http1 per connection. A response marked
//!   [`DropConnection`] (see [`dropped`]) becomes a service error, so hyper closes the
//!   connection without writing anything — what a client sees when a provider's edge drops it.
//! - [`Running`]: the server handle; the server stops accepting and closes open connections
//!   when it is stopped or the last handle drops.
//! - [`faults`]: [`Rng`], a tiny seedable generator, so the same seed and request order give
//!   the same injected faults, and [`FaultTable`], fault settings for every route with
//!   per-route overrides, each drawing from its own generator.
//! - [`process`]: what a binary does around its server (the address file, waiting for
//!   SIGTERM).
//! - `testing` (feature `testing`): helpers the emulators' test suites share; `scripted`: a
//!   loopback server answering every request with one scripted answer, for the clients'
//!   property tests.

pub mod faults;
pub mod process;
#[cfg(feature = "testing")]
pub mod scripted;
#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

pub use faults::{FaultTable, Rng, Seeded};

/// Locks a mutex, ignoring poisoning (a panicking handler must not wedge the emulator).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marker in a response's extensions: the accept loop closes the connection instead of
/// answering.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

/// A response that becomes a closed connection.
pub fn dropped() -> Response {
    let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    r.extensions_mut().insert(DropConnection);
    r
}

/// The error that makes hyper drop a connection.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
struct Dropped;

/// Binds `addr` (`127.0.0.1:0` for any port); returns the listener and its `http://` URL.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    Ok((listener, format!("http://{local}")))
}

/// Serves `router` on `listener` until `shutdown` flips; `name` labels the log lines.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(emulator = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let router = router.clone();
                async move {
                    let response = match router.oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                    if response.extensions().get::<DropConnection>().is_some() {
                        return Err(Dropped);
                    }
                    Ok::<_, Dropped>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(emulator = name, error = %e, "connection ended");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

/// A running server: stops when stopped or when the last handle drops.
#[derive(Debug)]
pub struct Running {
    pub url: String,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// Serves `router` on `listener` (whose URL is `url`) in the background.
    pub fn spawn(name: &'static str, listener: TcpListener, url: String, router: Router) -> Self {
        let (shutdown, watcher) = watch::channel(false);
        tokio::spawn(serve(name, listener, router, watcher));
        Self { url, shutdown }
    }

    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
