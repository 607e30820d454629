//! Telemetry: Prometheus metrics, the access log and tracing setup.

pub mod access_log;
pub mod mesh;
pub mod metrics;

pub use access_log::AccessLogFormat;

/// How weir's own log (stderr) is written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people; colours on a terminal only.
    #[default]
    Text,
    /// One JSON object per line, for a cluster's log collection.
    Json,
}
pub use metrics::{Metrics, TargetMetrics};

// What both metric sets, the edge's (`metrics`) and the mesh's (`mesh`), are made with.

/// Request duration buckets, seconds.
pub(crate) const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index in [`STATUS_CLASSES`] of a status; 0 (no response) counts as 5xx.
pub(crate) fn class_index(status: u16) -> usize {
    match status {
        100..=599 => (status / 100 - 1) as usize,
        _ => 4,
    }
}

/// `2xx`, `5xx`, ... for a status; 0 (no response) counts as 5xx.
pub(crate) fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[class_index(status)]
}

/// The metric a definition made (names and labels are constants: a failure is a bug).
pub(crate) fn must<T>(r: prometheus::Result<T>) -> T {
    // metric names and labels are constants; a failure here is a programming error
    r.expect("metric definition")
}

/// Installs the tracing subscriber (`RUST_LOG` filters, default `info`, the Lease crate's
/// per-retry "held by" lines at `warn`) and bridges Pingora's `log` records into it. Safe to call more than once (later calls do nothing).
pub fn init_tracing(access_log: Option<AccessLogFormat>, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let access = access_log.map(|_| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stdout)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() == access_log::TARGET))
    });
    let not_access = tracing_subscriber::filter::filter_fn(|m| m.target() != access_log::TARGET);
    let logs = match format {
        // colours only for a terminal (and not when NO_COLOR is set): a file or a Pod's log
        // gets plain text
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .with_filter(not_access)
                .boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(not_access)
            .boxed(),
    };
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(access).try_init();
}
