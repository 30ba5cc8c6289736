//! Logging, metrics and OpenTelemetry traces, set up once per process.
//!
//! Traces are off by default. They are exported over OTLP/gRPC when the standard variables ask
//! for it ([`TraceSettings::from_env`]); the SDK itself reads the rest of the `OTEL_*` settings
//! (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_RESOURCE_ATTRIBUTES`).
//!
//! Only spans whose target is [`TARGET`] are exported, and they are never shown in the logs:
//! the RPC spans of [`crate::observe`] and [`crate::client`], and the outbound HTTP spans of the
//! GitHub and provider clients. Every attribute they carry is chosen where the span is made
//! (method names, SPIFFE IDs, status codes, host and path), never a request field's value, and no
//! log event is exported: what a log line says stays in the logs.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

use crate::config::{Env, LogFormat};

/// The `tracing` target of the spans that are exported as OpenTelemetry spans (and only those).
pub const TARGET: &str = "otel";

/// Whether and how traces are exported, from the standard OpenTelemetry variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceSettings {
    Off,
    /// OTLP over gRPC to the endpoint the SDK reads from `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`
    /// (default `http://localhost:4317`), as `service_name`.
    Otlp {
        service_name: String,
    },
}

impl TraceSettings {
    /// Off unless `OTEL_TRACES_EXPORTER=otlp` or an OTLP endpoint is set; off whatever else is
    /// set when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. `OTEL_SERVICE_NAME`
    /// overrides `default_name`. Other exporters and protocols are refused, not ignored: an
    /// operator who asked for them would otherwise see nothing and not know why.
    pub fn from_env(env: &Env, default_name: &str) -> anyhow::Result<Self> {
        if env
            .get("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Ok(Self::Off);
        }
        let wanted = match env.get("OTEL_TRACES_EXPORTER").map(str::trim) {
            Some("none") => return Ok(Self::Off),
            Some("otlp") => true,
            Some(other) => anyhow::bail!(
                "OTEL_TRACES_EXPORTER=`{other}`: only `otlp` and `none` are supported"
            ),
            None => {
                env.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                    || env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            }
        };
        if !wanted {
            return Ok(Self::Off);
        }
        for var in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            if let Some(protocol) = env.get(var).map(str::trim)
                && protocol != "grpc"
            {
                anyhow::bail!("{var}=`{protocol}`: only `grpc` is supported");
            }
        }
        let service_name = env
            .get("OTEL_SERVICE_NAME")
            .unwrap_or(default_name)
            .to_owned();
        Ok(Self::Otlp { service_name })
    }
}

/// The process's trace pipeline, to flush at shutdown.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still buffered and stops the exporter (blocking work, off the runtime's
    /// threads), waiting at most 5 s: a collector that went away must neither fail nor hold up
    /// a clean shutdown.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(std::time::Duration::from_secs(5), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "traces not all exported at shutdown"),
            Ok(Err(_)) | Err(_) => tracing::warn!("traces not all exported at shutdown"),
        }
    }
}

/// Installs the global tracing subscriber: the log lines (`RUST_LOG`, default `info`, text or
/// JSON), and the OpenTelemetry exporter when `traces` asks for one. Must run inside a Tokio
/// runtime (the OTLP exporter's channel is spawned on it).
pub fn init(format: LogFormat, traces: &TraceSettings) -> anyhow::Result<Telemetry> {
    let (otel_layer, provider) = match traces {
        TraceSettings::Off => (None, None),
        TraceSettings::Otlp { service_name } => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .context("OTLP trace exporter (OTEL_EXPORTER_OTLP_*)")?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.clone())
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("orchestrator");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Only the attributes a span is made with: no code location, thread, target,
                // busy/idle timings, and (the filter) no other span or log event.
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_filter(
                    filter_fn(|meta| meta.target() == TARGET && meta.is_span())
                        .with_max_level_hint(LevelFilter::INFO),
                );
            (Some(layer), Some(provider))
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The log lines never show the exported spans: the logs read as they did without them. A
    // directive rather than a closure, so the filter keeps its level hint: every callsite more
    // verbose than any directive (h2's and sqlx's trace and debug lines) is then switched off
    // where it stands instead of being asked about on every call.
    let logs_filter = filter.add_directive(format!("{TARGET}=off").parse()?);
    // Colours only on a terminal: in a file (or a collector) escape codes are noise, and they
    // cost formatting on every line (one per RPC).
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let logs = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(logs_filter)
            .boxed(),
        LogFormat::Text => fmt.with_filter(logs_filter).boxed(),
    };
    // `try_init`: a second call (tests) keeps the first subscriber.
    let _ = Registry::default().with(logs).with(otel_layer).try_init();
    Ok(Telemetry { provider })
}

/// Installs the global tracing subscriber for logs only (`RUST_LOG`, default `info`).
pub fn init_tracing(format: LogFormat) {
    let _ = init(format, &TraceSettings::Off);
}

/// The W3C trace context (`traceparent`, `tracestate`) of the caller, from gRPC metadata.
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes the W3C trace context of `span` into `headers`; nothing when `span` is not exported
/// (tracing off, or not sampled in).
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Makes `cx` (a caller's context from [`extract`]) the parent of `span`.
pub fn set_parent(span: &tracing::Span, cx: opentelemetry::Context) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    // Fails only when tracing is off (no layer) or the span is disabled: nothing to link then.
    let _ = span.set_parent(cx);
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The gRPC status codes an RPC span reports as an error (OpenTelemetry's semantic conventions
/// for servers: a client's mistake is not the server's error).
pub fn server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// Installs the global Prometheus recorder and returns the handle that renders it.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    const BUCKETS: &[f64] = &[
        0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most verbose level any directive asks for, so that callsites more verbose than it
    /// (h2's, rustls', sqlx's debug and trace lines) are switched off where they stand. A
    /// filter that loses its hint leaves every one of them asked on every call: 6 % of the
    /// vault's CPU once (docs/BENCHMARKS.md, third round).
    fn expected_max_level() -> Option<LevelFilter> {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info"))
            .max_level_hint()
    }

    #[tokio::test]
    async fn the_logs_keep_their_level_hint() {
        let _telemetry = init(LogFormat::Text, &TraceSettings::Off).unwrap();
        assert_eq!(Some(LevelFilter::current()), expected_max_level());
    }

    #[tokio::test]
    async fn the_logs_and_the_exported_spans_keep_their_level_hint() {
        let _telemetry = init(LogFormat::Json, &otlp("vault")).unwrap();
        assert_eq!(
            Some(LevelFilter::current()),
            expected_max_level().max(Some(LevelFilter::INFO))
        );
    }

    fn settings(pairs: &[(&str, &str)]) -> anyhow::Result<TraceSettings> {
        TraceSettings::from_env(&Env::from_pairs(pairs.iter().copied()), "vault")
    }

    fn otlp(name: &str) -> TraceSettings {
        TraceSettings::Otlp {
            service_name: name.to_owned(),
        }
    }

    #[test]
    fn off_unless_an_exporter_or_endpoint_is_set() {
        assert_eq!(settings(&[]).unwrap(), TraceSettings::Off);
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap(),
            TraceSettings::Off
        );
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap(),
            otlp("vault")
        );
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")]).unwrap(),
            otlp("vault")
        );
        assert_eq!(
            settings(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap(),
            otlp("vault")
        );
    }

    #[test]
    fn disabled_and_none_win_over_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            TraceSettings::Off
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            TraceSettings::Off
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "false")]).unwrap(),
            otlp("vault")
        );
    }

    #[test]
    fn service_name_defaults_to_the_service_and_can_be_overridden() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SERVICE_NAME", "vault-eu")]).unwrap(),
            otlp("vault-eu")
        );
    }

    #[test]
    fn unsupported_exporters_and_protocols_are_refused_by_name() {
        let e = settings(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.to_string().contains("zipkin"), "{e}");
        let e = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("http/protobuf"), "{e}");
    }

    #[test]
    fn trace_context_round_trips_through_headers() {
        let mut headers = http::HeaderMap::new();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", traceparent.parse().unwrap());
        let cx = extract(&headers);
        use opentelemetry::trace::TraceContextExt as _;
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = http::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out.get("traceparent").unwrap(), traceparent);
    }

    #[test]
    fn a_span_of_a_process_without_tracing_injects_nothing() {
        let mut headers = http::HeaderMap::new();
        inject(&tracing::Span::none(), &mut headers);
        assert!(headers.is_empty());
    }
}
