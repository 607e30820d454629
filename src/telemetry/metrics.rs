//! Prometheus metrics. One registry per running instance (so tests in one process do not
//! share counters); request-path handles are resolved when the snapshot is built, so a request
//! only touches atomics.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::mesh::MeshMetrics;
use super::{class_index, must, LATENCY_BUCKETS, STATUS_CLASSES};
use crate::pool::PoolRegistry;

/// Every metric weir exports.
pub struct Metrics {
    pub registry: Registry,
    /// Per target (listener, route, backend): requests, durations, retries, connect errors.
    target_vecs: Arc<TargetVecs>,
    /// Generation of the snapshot serving traffic.
    pub config_generation: IntGauge,
    /// Time to translate the store into a snapshot.
    pub translate_seconds: Histogram,
    /// Objects (or parts) rejected by the last translation.
    pub rejected_objects: IntGauge,
    /// Time from a configuration change being seen to the snapshot serving it.
    pub config_apply_seconds: Histogram,
    /// Changes that moved endpoints only, applied to the pools without a new snapshot.
    pub config_endpoint_updates: IntCounter,
    /// Status patches sent to the API server, by kind and result.
    pub status_writes: IntCounterVec,
    /// 1 while this replica holds the Lease (and writes status).
    pub leader: IntGauge,
    /// Listeners that could not be bound, by port.
    pub listener_bind_failures: IntCounterVec,
    /// Connections closed at accept because their listener had `--max-connections` open, by port.
    pub listener_connections_refused: IntCounterVec,
    /// Failed downstream TLS handshakes, by listener.
    pub tls_handshake_failures: IntCounterVec,
    /// Connections of TLS passthrough listeners, by listener, route and result (`forwarded`,
    /// `no_route`, `no_endpoint`, `connect_failed`, `not_tls`).
    pub passthrough_connections: IntCounterVec,
    /// Failed mutual-TLS handshakes on the mesh inbound listener, by reason.
    mesh_handshake_failures: IntCounterVec,
    /// Reloads of the mesh identity, by result (`ok`, `refused`).
    pub mesh_identity_reloads: IntCounterVec,
    /// Mutual-TLS connections accepted by the mesh inbound listener (handshake done).
    pub mesh_inbound_connections: IntCounter,
    /// `--source kubernetes`: failed watches (each retried), by kind.
    pub source_watch_failures: IntCounterVec,
    /// `--source kubernetes`: 1 once a kind has synced (listed) at least once, by kind.
    pub source_synced: IntGaugeVec,
    /// `--source kubernetes`: when a kind last finished a list (Unix seconds), by kind.
    pub source_last_sync: GaugeVec,
    /// Mesh requests by hop (caller, destination, route).
    pub mesh: MeshMetrics,
    /// Handles by (listener, route, backend), for the snapshot being built and for the one
    /// serving: a target kept across a change reuses its handles, and series of routes that are
    /// gone are removed, so config churn does not grow the registry forever.
    targets: Mutex<Targets>,
}

#[derive(Default)]
struct Targets {
    building: HashMap<TargetLabels, TargetMetrics>,
    serving: HashMap<TargetLabels, TargetMetrics>,
}

type TargetLabels = (String, String, String);

/// The families every target's series belong to.
struct TargetVecs {
    requests: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
    connect_errors: IntCounterVec,
}

/// Handles for one (listener, route, backend): a counter and a histogram per status class, its
/// retries and connect errors. Each series is created when it first has something to count (a
/// cluster's thousands of routes cost nothing until they serve), then touched without a lock.
#[derive(Clone)]
pub struct TargetMetrics(Arc<TargetSeries>);

struct TargetSeries {
    vecs: Arc<TargetVecs>,
    labels: TargetLabels,
    requests: [OnceLock<IntCounter>; 5],
    duration: [OnceLock<Histogram>; 5],
    retries: OnceLock<IntCounter>,
    connect_errors: OnceLock<IntCounter>,
    /// Set when a new configuration no longer has the target and its series are removed: a
    /// request still finishing on it does not bring them back.
    retired: AtomicBool,
}

impl TargetMetrics {
    fn new(vecs: Arc<TargetVecs>, labels: TargetLabels) -> Self {
        TargetMetrics(Arc::new(TargetSeries {
            vecs,
            labels,
            requests: Default::default(),
            duration: Default::default(),
            retries: OnceLock::new(),
            connect_errors: OnceLock::new(),
            retired: AtomicBool::new(false),
        }))
    }

    /// Records a finished request. Status 0 (no response) counts as 5xx.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let t = &*self.0;
        if t.retired.load(Relaxed) {
            return;
        }
        let class = class_index(status);
        let (listener, route, backend) = (&t.labels.0, &t.labels.1, &t.labels.2);
        let labels = [listener.as_str(), route, backend, STATUS_CLASSES[class]];
        t.requests[class].get_or_init(|| t.vecs.requests.with_label_values(&labels)).inc();
        t.duration[class].get_or_init(|| t.vecs.duration.with_label_values(&labels)).observe(elapsed.as_secs_f64());
    }

    /// A request to the target tried another endpoint.
    pub fn retried(&self) {
        let t = &*self.0;
        if !t.retired.load(Relaxed) {
            t.retries.get_or_init(|| t.vecs.retries.with_label_values(&[&t.labels.1, &t.labels.2])).inc();
        }
    }

    /// A connection to one of the target's endpoints failed.
    pub fn connect_failed(&self) {
        let t = &*self.0;
        if !t.retired.load(Relaxed) {
            t.connect_errors.get_or_init(|| t.vecs.connect_errors.with_label_values(&[&t.labels.1, &t.labels.2])).inc();
        }
    }
}

impl Metrics {
    pub fn new(pools: Arc<PoolRegistry>) -> Arc<Self> {
        let registry = must(Registry::new_custom(Some("weir".into()), None));
        let labels = ["listener", "route", "backend", "status_class"];
        let requests = must(IntCounterVec::new(Opts::new("requests_total", "Requests served"), &labels));
        let duration = must(HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time from request to the end of the response")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &labels,
        ));
        let retries = must(IntCounterVec::new(
            Opts::new("upstream_retries_total", "Requests retried on another endpoint"),
            &["route", "backend"],
        ));
        let connect_errors = must(IntCounterVec::new(
            Opts::new("upstream_connect_errors_total", "Failed connections to upstream endpoints"),
            &["route", "backend"],
        ));
        let config_generation =
            must(IntGauge::new("config_generation", "Generation of the configuration serving traffic"));
        let translate_seconds = must(Histogram::with_opts(
            HistogramOpts::new("config_translate_seconds", "Time to translate objects into a snapshot")
                .buckets(LATENCY_BUCKETS.to_vec()),
        ));
        let rejected_objects =
            must(IntGauge::new("config_rejected_objects", "Objects rejected by the last translation"));
        let config_apply_seconds = must(Histogram::with_opts(
            HistogramOpts::new("config_apply_seconds", "Time from a configuration change to the snapshot serving it")
                .buckets(LATENCY_BUCKETS.to_vec()),
        ));
        let config_endpoint_updates = must(IntCounter::new(
            "config_endpoint_updates_total",
            "Changes that moved endpoints only, applied to the pools without translating routes",
        ));
        let status_writes = must(IntCounterVec::new(
            Opts::new("status_writes_total", "Status patches sent to the API server, by kind and result"),
            &["kind", "result"],
        ));
        let leader = must(IntGauge::new("leader", "1 while this replica holds the Lease and writes status"));
        let listener_bind_failures = must(IntCounterVec::new(
            Opts::new("listener_bind_failures_total", "Listeners that could not be bound"),
            &["port"],
        ));
        let listener_connections_refused = must(IntCounterVec::new(
            Opts::new(
                "listener_connections_refused_total",
                "Connections closed at accept: the listener had --max-connections open",
            ),
            &["port"],
        ));
        let tls_handshake_failures = must(IntCounterVec::new(
            Opts::new("tls_handshake_failures_total", "Failed downstream TLS handshakes"),
            &["listener"],
        ));
        let passthrough_connections = must(IntCounterVec::new(
            Opts::new("passthrough_connections_total", "Connections of TLS passthrough listeners, by result"),
            &["listener", "route", "result"],
        ));
        let mesh_handshake_failures = must(IntCounterVec::new(
            Opts::new(
                "mesh_tls_handshake_failures_total",
                "Refused mutual-TLS handshakes on the mesh inbound listener",
            ),
            &["reason"],
        ));
        let mesh_identity_reloads = must(IntCounterVec::new(
            Opts::new("mesh_identity_reloads_total", "Reloads of the mesh identity files, by result"),
            &["result"],
        ));
        let mesh_inbound_connections = must(IntCounter::new(
            "mesh_inbound_connections_total",
            "Mutual-TLS connections accepted by the mesh inbound listener",
        ));
        let source_watch_failures = must(IntCounterVec::new(
            Opts::new("source_watch_failures_total", "Failed watches of the API server (each is retried), by kind"),
            &["kind"],
        ));
        let source_synced = must(IntGaugeVec::new(
            Opts::new("source_synced", "1 once a kind has been listed from the API server"),
            &["kind"],
        ));
        let source_last_sync = must(GaugeVec::new(
            Opts::new("source_last_sync_timestamp_seconds", "When a kind last finished a list of the API server"),
            &["kind"],
        ));
        for c in [
            Box::new(requests.clone()) as Box<dyn Collector>,
            Box::new(source_watch_failures.clone()),
            Box::new(source_synced.clone()),
            Box::new(source_last_sync.clone()),
            Box::new(mesh_inbound_connections.clone()),
            Box::new(mesh_handshake_failures.clone()),
            Box::new(mesh_identity_reloads.clone()),
            Box::new(duration.clone()),
            Box::new(retries.clone()),
            Box::new(connect_errors.clone()),
            Box::new(config_generation.clone()),
            Box::new(translate_seconds.clone()),
            Box::new(rejected_objects.clone()),
            Box::new(config_apply_seconds.clone()),
            Box::new(config_endpoint_updates.clone()),
            Box::new(status_writes.clone()),
            Box::new(leader.clone()),
            Box::new(listener_bind_failures.clone()),
            Box::new(listener_connections_refused.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(passthrough_connections.clone()),
            Box::new(PoolCollector::new(pools)),
        ] {
            must(registry.register(c));
        }
        let mesh = MeshMetrics::new(&registry);
        Arc::new(Metrics {
            registry,
            target_vecs: Arc::new(TargetVecs { requests, duration, retries, connect_errors }),
            config_generation,
            translate_seconds,
            rejected_objects,
            config_apply_seconds,
            config_endpoint_updates,
            status_writes,
            leader,
            listener_bind_failures,
            listener_connections_refused,
            tls_handshake_failures,
            passthrough_connections,
            mesh_handshake_failures,
            mesh_identity_reloads,
            mesh_inbound_connections,
            source_watch_failures,
            source_synced,
            source_last_sync,
            mesh,
            targets: Mutex::new(Default::default()),
        })
    }

    /// Counts a refused mesh handshake (`reason`: a [`crate::mesh::identity::Refusal`] name,
    /// or `timeout`).
    pub fn mesh_handshake_failure(&self, reason: &str) {
        self.mesh_handshake_failures.with_label_values(&[reason]).inc();
    }

    /// Handles for one target; called when a snapshot is built, never per request.
    pub fn target(&self, listener: &str, route: &str, backend: &str) -> TargetMetrics {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let key = (listener.to_string(), route.to_string(), backend.to_string());
        if let Some(t) = targets.building.get(&key) {
            return t.clone();
        }
        let t = match targets.serving.get(&key) {
            Some(t) => t.clone(),
            None => TargetMetrics::new(self.target_vecs.clone(), key.clone()),
        };
        targets.building.insert(key, t.clone());
        t
    }

    /// Called once a snapshot is serving: removes the series of targets the previous snapshot
    /// had and this one does not.
    pub fn retire_unused_targets(&self) {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let Targets { building, serving } = &mut *targets;
        let gone: Vec<(&TargetLabels, &TargetMetrics)> =
            serving.iter().filter(|(k, _)| !building.contains_key(*k)).collect();
        if !gone.is_empty() {
            let still_used: std::collections::HashSet<(&str, &str)> =
                building.keys().map(|(_, r, b)| (r.as_str(), b.as_str())).collect();
            let vecs = &self.target_vecs;
            for ((listener, route, backend), t) in gone {
                t.0.retired.store(true, Relaxed);
                for class in STATUS_CLASSES {
                    // a series never created is not there to remove
                    let labels = [listener.as_str(), route.as_str(), backend.as_str(), class];
                    let _ = vecs.requests.remove_label_values(&labels);
                    let _ = vecs.duration.remove_label_values(&labels);
                }
                if !still_used.contains(&(route.as_str(), backend.as_str())) {
                    let _ = vecs.retries.remove_label_values(&[route, backend]);
                    let _ = vecs.connect_errors.remove_label_values(&[route, backend]);
                }
            }
        }
        *serving = std::mem::take(building);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

/// Reads endpoint health from the pools at scrape time.
struct PoolCollector {
    pools: Arc<PoolRegistry>,
    descs: Vec<Desc>,
}

impl PoolCollector {
    fn new(pools: Arc<PoolRegistry>) -> Self {
        let (a, b, c) = Self::vecs();
        let descs = a.desc().into_iter().chain(b.desc()).chain(c.desc()).cloned().collect();
        PoolCollector { pools, descs }
    }

    fn vecs() -> (IntGaugeVec, IntCounterVec, IntGaugeVec) {
        let labels = ["pool", "endpoint"];
        (
            must(IntGaugeVec::new(
                Opts::new("endpoint_healthy", "1 if the endpoint takes traffic (healthy, not ejected)"),
                &labels,
            )),
            must(IntCounterVec::new(
                Opts::new("endpoint_ejections_total", "Passive ejections of the endpoint"),
                &labels,
            )),
            must(IntGaugeVec::new(
                Opts::new("endpoint_inflight_requests", "Requests in flight to the endpoint"),
                &labels,
            )),
        )
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (healthy, ejections, inflight) = Self::vecs();
        for (key, pool) in self.pools.all() {
            let pool_label = key.to_string();
            for e in pool.status() {
                let l = [pool_label.as_str(), &e.addr.to_string()];
                healthy.with_label_values(&l).set(i64::from(e.healthy));
                ejections.with_label_values(&l).inc_by(u64::from(e.ejections));
                inflight.with_label_values(&l).set(e.inflight as i64);
            }
        }
        let mut out = healthy.collect();
        out.extend(ejections.collect());
        out.extend(inflight.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(m: &Metrics, route: &str) -> Vec<String> {
        let route = format!("route=\"{route}\"");
        m.encode().lines().filter(|l| l.contains(&route) && !l.contains("_bucket")).map(str::to_string).collect()
    }

    #[test]
    fn a_targets_series_come_with_what_they_count_and_go_with_the_target() {
        let m = Metrics::new(Default::default());
        let t = m.target("http", "web", "svc");
        m.retire_unused_targets();
        assert_eq!(lines(&m, "web"), Vec::<String>::new(), "a route that served nothing has no series");

        t.observe(200, Duration::from_millis(3));
        t.observe(204, Duration::from_millis(3));
        t.retried();
        let served = lines(&m, "web");
        let requests: Vec<&String> = served.iter().filter(|l| l.starts_with("weir_requests_total")).collect();
        assert_eq!(
            requests,
            ["weir_requests_total{backend=\"svc\",listener=\"http\",route=\"web\",status_class=\"2xx\"} 2"],
            "{served:#?}"
        );
        assert!(served.contains(&"weir_upstream_retries_total{backend=\"svc\",route=\"web\"} 1".to_string()));

        // the next configuration has no such route: its series go, and a request that was still
        // finishing on it does not bring them back
        m.retire_unused_targets();
        assert_eq!(lines(&m, "web"), Vec::<String>::new());
        t.observe(500, Duration::from_millis(3));
        t.connect_failed();
        assert_eq!(lines(&m, "web"), Vec::<String>::new());
    }
}
