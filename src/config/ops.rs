//! `[telemetry]`, `[admin]` and `[changes]`: what runs beside serving.

use serde::Deserialize;

/// `[telemetry]`: exporting spans to an OpenTelemetry collector over
/// OTLP/gRPC. Off unless an endpoint is set here or in
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (which wins).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/gRPC address, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans; `OTEL_SERVICE_NAME` wins.
    pub service_name: String,
    /// Most finished spans waiting for export; further ones are dropped.
    pub max_queued_spans: usize,
    /// Longest wait between exports of queued spans, in milliseconds.
    pub batch_delay_ms: u64,
    /// An export not answered within this many milliseconds fails (and
    /// its spans are dropped).
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "arcana".into(),
            max_queued_spans: 2048,
            batch_delay_ms: 5_000,
            export_timeout_ms: 10_000,
        }
    }
}

/// `[admin]`: bounds of the admin HTTP listener that `server.admin_listen`
/// turns on.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Most open admin connections; further ones wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// An admin connection is closed this many milliseconds after it was
    /// accepted, whatever it is doing.
    pub request_timeout_ms: u64,
    /// Longest the readiness check waits for the database to answer, in
    /// milliseconds; slower counts as not ready.
    pub ready_timeout_ms: u64,
    /// How often readiness is checked in the background (for the gRPC
    /// health service), in milliseconds.
    pub ready_interval_ms: u64,
    /// Most DevTools live streams open at once; a further one gets 503.
    pub devtools_streams: usize,
    /// Recent change batches and frames the DevTools feed keeps.
    pub devtools_feed: usize,
    /// A DevTools live stream ends this many seconds after it opened (the
    /// page reconnects); `request_timeout_ms` does not cut it short.
    pub devtools_stream_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            max_connections: 16,
            request_timeout_ms: 5_000,
            ready_timeout_ms: 2_000,
            ready_interval_ms: 1_000,
            devtools_streams: 4,
            devtools_feed: 200,
            devtools_stream_secs: 300,
        }
    }
}

/// How the server learns about writes made outside its mutations.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChangeMode {
    /// Logical replication (`wal_level = logical`).
    Wal,
    /// LISTEN/NOTIFY with generated triggers.
    Notify,
    /// Only mutations and the Notify call.
    None,
}

/// `[changes]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ChangesConfig {
    /// `wal` (default), `notify` or `none`.
    pub mode: ChangeMode,
    /// Replication slot (wal).
    pub slot: String,
    /// Publication (wal).
    pub publication: String,
    /// Create the slot and publication when missing (wal).
    pub create: bool,
    /// NOTIFY channel (notify).
    pub channel: String,
    /// Install the triggers at startup (notify).
    pub install_triggers: bool,
    /// Warn at startup when the slot holds back more WAL than this many
    /// MiB (wal).
    pub max_retained_wal_mb: u64,
}

impl Default for ChangesConfig {
    fn default() -> Self {
        ChangesConfig {
            mode: ChangeMode::Wal,
            slot: "arcana_slot".into(),
            publication: "arcana_pub".into(),
            create: true,
            channel: "arcana_changes".into(),
            install_triggers: true,
            max_retained_wal_mb: 1024,
        }
    }
}
