//! The plain-HTTP admin port: `/healthz` (the process runs), `/readyz` (it serves gRPC and its
//! dependencies answer) and `/metrics` (Prometheus text format). It carries no secrets and no
//! RPCs, so it needs no TLS; bind it where only the platform's probes and scrapers reach.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;

/// A dependency check for `/readyz` (the database answers, say). It must be quick: it runs on
/// every probe, with a one-second limit.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// Whether the process should receive traffic: set once serving, cleared while draining, and
/// false while any registered dependency check fails.
#[derive(Clone, Default)]
pub struct Readiness {
    serving: Arc<AtomicBool>,
    checks: Arc<std::sync::Mutex<Vec<(&'static str, Check)>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("serving", &self.serving.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.serving.store(ready, Ordering::SeqCst);
    }

    /// Adds a named dependency check.
    pub fn add_check(&self, name: &'static str, check: Check) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, check));
    }

    /// `Ok` when serving and every check passes, else the name of what is not ready.
    pub async fn check(&self) -> Result<(), &'static str> {
        if !self.serving.load(Ordering::SeqCst) {
            return Err("serving");
        }
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (name, check) in checks {
            let ok = tokio::time::timeout(std::time::Duration::from_secs(1), check())
                .await
                .unwrap_or(false);
            if !ok {
                return Err(name);
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

pub fn router(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState { readiness, metrics })
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(what) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {what}\n"),
        ),
    }
}

async fn render_metrics(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

/// Serves the admin router on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
