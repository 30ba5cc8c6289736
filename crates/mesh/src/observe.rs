//! One tracing span and one set of metrics per RPC: caller, method, gRPC status and latency;
//! and, when traces are exported, one OpenTelemetry server span per RPC, child of the caller's
//! span when the request carries a W3C `traceparent` ([`crate::telemetry`]).
//!
//! The status of a gRPC call is only known when its trailers are sent (or at once, for a
//! trailers-only error), so the measurement finishes inside the response body. A call whose
//! body is dropped before the trailers (client went away) is recorded as CANCELLED.
//!
//! Metric labels come from a closed set: a path the policy does not name (a probe, a typo, a
//! hostile peer calling random paths) is counted under `unknown`, so no caller can grow the
//! metrics without bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument, Span};

use crate::peer::Peer;
use crate::policy::Policy;
use crate::telemetry;

/// Counter of finished RPCs by `grpc_service`, `grpc_method`, `grpc_code`.
pub const HANDLED_TOTAL: &str = "grpc_server_handled_total";
/// Histogram of RPC latency in seconds, same labels.
pub const HANDLING_SECONDS: &str = "grpc_server_handling_seconds";

/// The label of every RPC path the policy does not name.
pub const UNKNOWN: &str = "unknown";

/// Observes every call; `policy` tells known RPC paths from the rest.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    policy: Arc<Policy>,
}

impl ObserveLayer {
    pub fn new(policy: Arc<Policy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B, ResBody> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ObserveFuture<
        tracing::instrument::Instrumented<tracing::instrument::Instrumented<S::Future>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let raw = req.uri().path();
        // The log line keeps the path as called; the metric labels stay a closed set.
        let span_path = raw.to_owned();
        let path = if self.policy.knows(raw) {
            span_path.clone()
        } else {
            format!("/{UNKNOWN}/{UNKNOWN}")
        };
        let caller = req
            .extensions()
            .get::<Peer>()
            .map_or_else(|| "-".to_owned(), |p| p.identity.to_string());
        let trace = server_span(&path, &caller, req.headers());
        let span = tracing::info_span!("rpc", method = %span_path, caller = %caller);
        // Both spans are entered while the handler runs: the log span for its log lines, the
        // exported one so that the handler's outbound calls become its children.
        let inner = self
            .inner
            .call(req)
            .instrument(span.clone())
            .instrument(trace.clone());
        ObserveFuture {
            inner,
            record: Some(Record {
                path,
                span,
                trace,
                start: Instant::now(),
            }),
        }
    }
}

/// The exported span of one RPC (disabled, so nearly free, when traces are off): named
/// `package.Service/Method` (or `unknown/unknown` for a path the policy does not know, so that a
/// caller cannot invent span names), with the caller's SPIFFE ID. Nothing of the request's body.
fn server_span(path: &str, caller: &str, headers: &http::HeaderMap) -> Span {
    let name = &path[1..];
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "rpc.server",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        orchestrator.caller = caller,
    );
    if !span.is_disabled() {
        telemetry::set_parent(&span, telemetry::extract(headers));
    }
    span
}

/// What is needed to report one RPC once it ends.
struct Record {
    path: String,
    span: Span,
    trace: Span,
    start: Instant,
}

impl Record {
    fn finish(self, code: Code) {
        let latency = self.start.elapsed();
        let (service, method) = self.path[1..].split_once('/').unwrap_or((&self.path, ""));
        let labels = [
            ("grpc_service", service.to_owned()),
            ("grpc_method", method.to_owned()),
            ("grpc_code", format!("{code:?}")),
        ];
        metrics::counter!(HANDLED_TOTAL, &labels).increment(1);
        metrics::histogram!(HANDLING_SECONDS, &labels).record(latency.as_secs_f64());
        self.trace.record("rpc.grpc.status_code", code as i32);
        if telemetry::server_error(code) {
            self.trace.record("otel.status_code", "error");
        }
        let latency_ms = latency.as_secs_f64() * 1e3;
        let _entered = self.span.enter();
        match code {
            Code::Ok
            | Code::NotFound
            | Code::AlreadyExists
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::Cancelled => {
                tracing::info!(code = ?code, latency_ms, "rpc finished")
            }
            Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unimplemented => {
                tracing::warn!(code = ?code, latency_ms, "rpc finished")
            }
            Code::Internal | Code::Unknown | Code::DataLoss => {
                tracing::error!(code = ?code, latency_ms, "rpc finished")
            }
        }
    }
}

/// Reports the call as CANCELLED when it is dropped before its status was seen.
struct Pending(Option<Record>);

impl Pending {
    fn finish(&mut self, code: Code) {
        if let Some(record) = self.0.take() {
            record.finish(code);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, ResBody, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<ObservedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut pending = Pending(this.record.take());
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(code) = status_of(response.headers()) {
                    pending.finish(code); // trailers-only response: the status is already known
                }
                Ok(response.map(|inner| ObservedBody { inner, pending }))
            }
            Err(e) => {
                pending.finish(Code::Internal);
                Err(e)
            }
        })
    }
}

pin_project! {
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        pending: Pending,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(code) = f.trailers_ref().and_then(status_of) {
                    this.pending.finish(code);
                }
            }
            Some(Err(_)) => this.pending.finish(Code::Internal),
            None => this.pending.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
