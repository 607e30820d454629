//! Telemetry: Prometheus metrics, the access log and tracing setup.

pub mod access_log;
pub mod mesh;
pub mod metrics;

pub use access_log::AccessLogFormat;
pub use metrics::{Metrics, TargetMetrics};

/// Installs the tracing subscriber (`RUST_LOG` filters, default `info`) and bridges Pingora's
/// `log` records into it. Safe to call more than once (later calls do nothing).
pub fn init_tracing(access_log: Option<AccessLogFormat>) {
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
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() != access_log::TARGET));
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(access).try_init();
}
