//! Log output: text or JSON lines on standard error, coloured only on a
//! terminal; plus, when configured, the trace exporter's layer.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use super::telemetry::Telemetry;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber; `RUST_LOG` filters the log lines
/// (default: info). The filter applies to the log layer only, so the trace
/// exporter's spans (if `telemetry` is given) neither show up in log lines
/// nor depend on `RUST_LOG`.
pub fn init(format: LogFormat, telemetry: Option<&Telemetry>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    let base = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Text => base.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => base.json().with_ansi(false).boxed(),
    };
    let registry = tracing_subscriber::registry().with(log.with_filter(filter));
    registry.with(telemetry.map(|t| t.layer())).init();
}
