//! Start-up and serving, shared by the four services: each service's `main` hands over its
//! gRPC routes and this module does the rest in the same order everywhere.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_audit::{AuditError, AuditKey, Ledger};
use orchestrator_proto::ServiceDescriptor;
use orchestrator_store::{Database, Dialect};
use sqlx::migrate::Migrator;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::admin::{self, Readiness};
use crate::authz::AuthzLayer;
use crate::client::PeerChannel;
use crate::config::{Env, MeshConfig};
use crate::identity::{Identity, TrustDomain};
use crate::observe::ObserveLayer;
use crate::policy::Policy;
use crate::service::Service;
use crate::telemetry;
use crate::tls::MeshTls;
use crate::transport;

/// What a service's route builder gets to set itself up.
#[derive(Debug, Clone)]
pub struct Startup {
    pub config: MeshConfig,
    /// The process environment, for the service's own L1 secrets ([`Env::secret`]).
    pub env: Env,
    /// This process's TLS state, for channels to other services ([`crate::client::connect`]).
    pub tls: Arc<MeshTls>,
    /// Where the service registers its dependency checks for `/readyz`.
    pub readiness: Readiness,
    /// Work that runs once serving has stopped (the final audit checkpoint).
    pub at_shutdown: ShutdownHooks,
}

/// Work a service registers to run once serving has stopped, before the process exits.
#[derive(Clone, Default)]
pub struct ShutdownHooks(Arc<std::sync::Mutex<Vec<futures::future::BoxFuture<'static, ()>>>>);

impl std::fmt::Debug for ShutdownHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownHooks(..)")
    }
}

impl ShutdownHooks {
    /// Runs `work` at shutdown.
    pub fn add(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.take_lock().push(Box::pin(work));
    }

    /// Runs every registered work, each within `limit`.
    async fn run(&self, limit: Duration) {
        let hooks = std::mem::take(&mut *self.take_lock());
        for hook in hooks {
            if tokio::time::timeout(limit, hook).await.is_err() {
                tracing::warn!("a shutdown task took longer than {limit:?}; skipped");
            }
        }
    }

    fn take_lock(&self) -> std::sync::MutexGuard<'_, Vec<futures::future::BoxFuture<'static, ()>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Startup {
    /// The service's own database (`DATABASE_URL`) and audit ledger (`AUDIT_KEY`): connects,
    /// waiting up to 30 s for the database to come up, applies the audit tables' migrations and
    /// then the service's own (as `DATABASE_MIGRATION_URL`, the schema's owner, when set, which
    /// then grants the runtime role row access only), registers the database as a `/readyz` check, starts the
    /// ledger's writer, and emits audit checkpoints (at start, every
    /// `ORCH_AUDIT_CHECKPOINT_INTERVAL`, default 60 s, and at shutdown: [`crate::anchor`]).
    pub async fn open_database<E: From<AuditError> + Send + 'static>(
        &self,
        migrations: fn(Dialect) -> Migrator,
    ) -> anyhow::Result<(Database, Ledger<E>)> {
        let url = self.env.required_secret("DATABASE_URL")?;
        let checkpoint_interval = self
            .env
            .positive_duration("ORCH_AUDIT_CHECKPOINT_INTERVAL", Duration::from_secs(60))?;
        let audit_key = AuditKey::from_base64(&self.env.required_secret("AUDIT_KEY")?)?;
        let db = Database::connect(&url, Duration::from_secs(30))
            .await
            .context("DATABASE_URL")?;
        // Migrations as the schema's owner when one is given, so the runtime role owns nothing
        // (cannot drop the audit log's triggers, alter or drop a table); else as DATABASE_URL.
        match self.env.secret("DATABASE_MIGRATION_URL")? {
            Some(owner_url) => {
                let owner = Database::connect(&owner_url, Duration::from_secs(30))
                    .await
                    .context("DATABASE_MIGRATION_URL")?;
                anyhow::ensure!(
                    owner.dialect() == db.dialect(),
                    "DATABASE_MIGRATION_URL and DATABASE_URL must name the same database"
                );
                owner
                    .migrate([
                        orchestrator_audit::migrations(owner.dialect()),
                        migrations(owner.dialect()),
                    ])
                    .await
                    .context("DATABASE_MIGRATION_URL: migrations")?;
                if let Some(role) = db.current_role().await? {
                    owner
                        .grant_runtime(&role)
                        .await
                        .context("DATABASE_MIGRATION_URL: granting the runtime role")?;
                }
                owner.pool().close().await;
            }
            None => {
                db.migrate([
                    orchestrator_audit::migrations(db.dialect()),
                    migrations(db.dialect()),
                ])
                .await?
            }
        }
        let probe = db.clone();
        self.readiness.add_check(
            "database",
            Arc::new(move || {
                let db = probe.clone();
                Box::pin(async move { db.ping().await })
            }),
        );
        let ledger = Ledger::start(db.clone(), audit_key);
        let service = self.config.service.name();
        crate::anchor::spawn_periodic(ledger.clone(), service, checkpoint_interval);
        let last = ledger.clone();
        self.at_shutdown
            .add(async move { crate::anchor::emit(&last, service, "shutdown").await });
        Ok((db, ledger))
    }

    /// One long-lived channel to `peer` at the address in `var` (default: the peer's default
    /// port on 127.0.0.1), connected on first use; the peer must prove its own identity.
    /// Every call on it carries the caller's trace context ([`crate::client::PeerChannel`]).
    pub fn peer(&self, peer: Service, var: &str) -> anyhow::Result<PeerChannel> {
        let default = format!("127.0.0.1:{}", peer.default_port());
        let addr = self.env.get(var).unwrap_or(&default);
        let identity = Identity::new(self.config.trust_domain.clone(), peer.identity_name());
        crate::client::connect_lazy(self.tls.clone(), addr, identity)
            .map(PeerChannel::new)
            .with_context(|| format!("{var}={addr}"))
    }

    /// This service's own SPIFFE ID, as the caller of its background work in audit records.
    pub fn self_id(&self) -> String {
        self.config.identity().to_string()
    }
}

/// The whole `main` of a service: configuration, identity and policy checks, then serving until
/// SIGINT or SIGTERM. Any start-up failure is printed (naming what is wrong, never a secret)
/// and the process exits non-zero.
pub fn service_main<F, Fut>(service: Service, routes: F) -> ExitCode
where
    F: FnOnce(Startup) -> Fut,
    Fut: Future<Output = anyhow::Result<Routes>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(service, &anyhow::Error::new(e)),
    };
    match runtime.block_on(run(service, routes)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(service, &e),
    }
}

#[allow(clippy::print_stderr)] // Start-up errors must reach an operator before logging exists.
fn fail(service: Service, error: &anyhow::Error) -> ExitCode {
    tracing::error!(error = %format!("{error:#}"), "{service} stopped");
    eprintln!("{service}: error: {error:#}");
    ExitCode::FAILURE
}

/// Every gRPC service the mesh knows: ours, health and both reflection versions.
pub fn catalogue() -> Vec<ServiceDescriptor> {
    [
        orchestrator_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .flat_map(|fds| orchestrator_proto::services(fds).expect("embedded descriptor sets decode"))
    .collect()
}

/// The gRPC services one process serves: its own plus health and reflection.
pub fn served(service: Service) -> Vec<ServiceDescriptor> {
    const COMMON: [&str; 3] = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    catalogue()
        .into_iter()
        .filter(|d| d.name == service.grpc_service() || COMMON.contains(&d.name.as_str()))
        .collect()
}

/// Loads the policy and refuses it unless it names only known RPCs and covers all of
/// `service`'s.
pub fn load_policy(path: &Path, service: Service) -> anyhow::Result<Policy> {
    let policy = Policy::load(path)?;
    let known = catalogue();
    policy.check_known(
        known
            .iter()
            .map(|d| (d.name.as_str(), d.methods.as_slice())),
    )?;
    let served = served(service);
    anyhow::ensure!(
        served.iter().any(|d| d.name == service.grpc_service()),
        "the contracts declare no {}",
        service.grpc_service()
    );
    policy.check_covers(
        served
            .iter()
            .map(|d| (d.name.as_str(), d.methods.as_slice())),
    )?;
    Ok(policy)
}

async fn run<F, Fut>(service: Service, routes: F) -> anyhow::Result<()>
where
    F: FnOnce(Startup) -> Fut,
    Fut: Future<Output = anyhow::Result<Routes>>,
{
    // Exactly one rustls provider in the process, whatever the dependency tree pulls in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::from_process();
    let config = MeshConfig::from_env(service, &env)?;
    let traces = telemetry::TraceSettings::from_env(&env, service.name())?;
    let telemetry = telemetry::init(config.log_format, &traces)?;
    let served = serve(service, routes, env, config, telemetry.exporting()).await;
    // Exports the spans still buffered, whether serving ended cleanly or not.
    telemetry.shutdown().await;
    served
}

async fn serve<F, Fut>(
    service: Service,
    routes: F,
    env: Env,
    config: MeshConfig,
    exporting_traces: bool,
) -> anyhow::Result<()>
where
    F: FnOnce(Startup) -> Fut,
    Fut: Future<Output = anyhow::Result<Routes>>,
{
    let metrics = telemetry::init_metrics()?;

    let tls = MeshTls::load(config.tls.clone(), Some(config.identity()))?;
    let policy = Arc::new(
        load_policy(&config.policy_file, service)
            .with_context(|| format!("policy file {}", config.policy_file.display()))?,
    );

    let startup = Startup {
        config,
        env,
        tls,
        readiness: Readiness::default(),
        at_shutdown: ShutdownHooks::default(),
    };
    let own = routes(startup.clone()).await?;
    let Startup {
        config,
        tls,
        readiness,
        at_shutdown,
        ..
    } = startup;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(service.grpc_service(), ServingStatus::Serving)
        .await;
    let reflection_v1 = reflection(service).build_v1()?;
    let reflection_v1alpha = reflection(service).build_v1alpha()?;
    let routes = own
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let grpc_listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on ORCH_LISTEN_ADDR={}", config.listen_addr))?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen on ORCH_ADMIN_ADDR={}", config.admin_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let _watcher = tls.watch(config.tls_reload_interval);
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin::router(readiness.clone(), metrics),
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));

    let grpc = serve_grpc(
        grpc_listener,
        tls.clone(),
        config.trust_domain.clone(),
        policy,
        config.max_connection_age,
        routes,
        stop_rx,
    );

    if let Some(path) = &config.addr_file {
        write_addr_file(path, grpc_addr, admin_addr)?;
    }
    readiness.set(true);
    tracing::info!(
        identity = %tls.identity(),
        grpc = %grpc_addr,
        admin = %admin_addr,
        traces = if exporting_traces { "otlp" } else { "off" },
        "{service} serving"
    );

    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        readiness.set(false);
        let _ = stop_tx.send(true);
    });
    let served = grpc.await.context("gRPC server failed");
    at_shutdown.run(Duration::from_secs(5)).await;
    served?;
    signal.abort();
    admin_task.await?.context("admin server failed")?;
    Ok(())
}

/// Serves `routes` over mTLS on `listener`, behind the observation and authorization layers,
/// until `stop` turns true.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    tls: Arc<MeshTls>,
    trust_domain: TrustDomain,
    policy: Arc<Policy>,
    max_connection_age: std::time::Duration,
    routes: Routes,
    stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let incoming = transport::accept(listener, tls, trust_domain, stop.clone());
    let mut stop = stop;
    tonic::transport::Server::builder()
        .max_connection_age(max_connection_age)
        .layer(
            tower::ServiceBuilder::new()
                .layer(ObserveLayer::new(policy.clone()))
                .layer(AuthzLayer::new(policy))
                .into_inner(),
        )
        .add_routes(routes)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// Reflection serves the service's contracts, health, and every type an error can carry
/// (`google.rpc.ErrorInfo`, `BadRequest`, ...), so grpcurl and buf curl print a refusal's
/// reason and field violations decoded instead of as base64.
fn reflection(service: Service) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(orchestrator_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service.grpc_service())
        .with_service_name("grpc.health.v1.Health")
}

/// Writes `{"grpc": "...", "admin": "..."}` atomically, for callers that bound port 0.
fn write_addr_file(
    path: &Path,
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let body = serde_json::json!({ "grpc": grpc.to_string(), "admin": admin.to_string() });
    std::fs::write(&tmp, body.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write ORCH_ADDR_FILE={}", path.display()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_builds_for_every_service_with_the_error_detail_types() {
        use prost::Message as _;
        for service in Service::ALL {
            assert!(reflection(service).build_v1().is_ok(), "{service}");
            assert!(reflection(service).build_v1alpha().is_ok(), "{service}");
        }
        let details =
            prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET).unwrap();
        let types: Vec<_> = details
            .file
            .iter()
            .flat_map(|f| f.message_type.iter().map(|m| m.name()))
            .collect();
        assert!(
            types.contains(&"ErrorInfo") && types.contains(&"BadRequest"),
            "{types:?}"
        );
    }
}
