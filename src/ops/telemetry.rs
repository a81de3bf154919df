//! Trace export: the spans of RPCs, mutations, change batches and
//! evaluation rounds, sent to an OpenTelemetry collector over OTLP/gRPC when
//! an endpoint is configured (off by default).
//!
//! The spans are created at DEBUG level under the target [`SPANS`]. Without
//! an exporter the default log filter (INFO) disables them, so each costs one
//! check of the global maximum level; with one, only the exporter's layer
//! takes them, so log lines are unchanged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;

use crate::config::TelemetryConfig;

pub use crate::engine::observe::SPANS;

/// Export failures are logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A running trace pipeline. [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Builds the OTLP/gRPC exporter and its background batch processor.
    /// Must run inside the Tokio runtime: the exporter's connection lives
    /// there. Fails only on a malformed endpoint; an unreachable collector
    /// is a logged export failure, not an error.
    pub fn start(config: &TelemetryConfig, endpoint: &str) -> Result<Telemetry, String> {
        let timeout = Duration::from_millis(config.export_timeout_ms.max(1));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .build()
            .map_err(|e| {
                format!(
                    "bad trace export endpoint `{endpoint}` (from OTEL_EXPORTER_OTLP_ENDPOINT, \
                     --otlp-endpoint or telemetry.otlp_endpoint): {e}"
                )
            })?;
        let queue = config.max_queued_spans.max(1);
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(queue)
            .with_max_export_batch_size(queue.min(512))
            .with_scheduled_delay(Duration::from_millis(config.batch_delay_ms.max(1)))
            .build();
        let processor = BatchSpanProcessor::builder(Throttled::new(exporter))
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Telemetry { provider })
    }

    /// The layer that turns [`SPANS`] spans into exported ones.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        let filter =
            tracing_subscriber::filter::Targets::new().with_target(SPANS, tracing::Level::DEBUG);
        // Only the spans' own fields: no thread, target or busy/idle
        // times, which cost on every poll and say little here.
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("arcana"))
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter)
    }

    /// Exports the spans still queued and stops the background processor.
    /// Blocks (at most about the export timeout), so async callers run it
    /// with `spawn_blocking`.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// Wraps the OTLP exporter: runs each export on the Tokio runtime (the batch
/// processor calls from its own thread) and logs failures at most once per
/// [`FAILURE_LOG_INTERVAL`], so an unreachable collector neither floods the
/// log nor touches requests.
#[derive(Debug)]
struct Throttled<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
    last_logged: Mutex<Option<Instant>>,
}

impl<E: SpanExporter + 'static> Throttled<E> {
    fn new(inner: E) -> Self {
        Throttled {
            inner: Arc::new(inner),
            runtime: tokio::runtime::Handle::current(),
            last_logged: Mutex::new(None),
        }
    }

    fn failed(&self, error: &OTelSdkError, spans: usize) {
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= FAILURE_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                %error,
                spans,
                "exporting traces failed; the spans are dropped (logged at most once a minute)"
            );
        }
    }
}

impl<E: SpanExporter + 'static> SpanExporter for Throttled<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let inner = self.inner.clone();
        let r = match self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(r) => r,
            Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
        };
        if let Err(e) = &r {
            self.failed(e, n);
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export shares it.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
