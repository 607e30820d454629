//! The optional access log: one JSON object per request on stdout (`--access-log json`).

/// The tracing target access-log events use; the subscriber routes it to stdout.
pub const TARGET: &str = "weir::access";

/// Access log formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
}

/// What is logged about one request.
pub struct AccessRecord<'a> {
    pub listener: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: &'a str,
    pub backend: &'a str,
    pub upstream: Option<std::net::SocketAddr>,
    pub duration: std::time::Duration,
    pub retries: u32,
    pub client: Option<String>,
}

pub fn log(r: &AccessRecord<'_>) {
    tracing::info!(
        target: TARGET,
        listener = r.listener,
        method = r.method,
        host = r.host,
        path = r.path,
        status = r.status,
        route = r.route,
        backend = r.backend,
        upstream = r.upstream.map(|a| a.to_string()),
        duration_ms = r.duration.as_secs_f64() * 1000.0,
        retries = r.retries,
        client = r.client,
    );
}
