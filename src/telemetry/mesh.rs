//! Mesh request metrics, by caller identity, destination Service and route: requests and
//! latency by status class, retries by reason, retry-budget exhaustion, circuit-breaker
//! overflows and authorization denials. (Handshake refusals, identity reloads and inbound
//! connections are in [`super::Metrics`]; endpoint ejections are per pool,
//! `weir_endpoint_ejections_total{pool="<ns>/<service>:<port>"}`.)

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use super::{class_index, must, status_class, LATENCY_BUCKETS, STATUS_CLASSES};

/// Who called whom: the labels every mesh request series has.
pub struct Hop<'a> {
    /// `outbound` (this gateway's workload calling out) or `inbound` (a caller reaching it).
    pub direction: &'static str,
    /// The caller's SPIFFE ID.
    pub source: &'a str,
    /// The destination Service, `<name>.<namespace>` (inbound: the workload's own identity
    /// when no Service is known).
    pub destination: &'a str,
    /// The HTTPRoute that routed the request, `<namespace>/<name>`, or empty.
    pub route: &'a str,
}

/// One hop's request series (requests and latency by status class), looked up when the hop is
/// first seen rather than per request. A status class's series is made on its first request, so
/// only the classes a hop answered appear.
pub struct HopSeries {
    labels: [String; 4],
    requests: IntCounterVec,
    duration: HistogramVec,
    by_class: [OnceLock<(IntCounter, Histogram)>; STATUS_CLASSES.len()],
}

impl HopSeries {
    /// The caller's SPIFFE ID the series are labelled with.
    pub fn source(&self) -> &str {
        &self.labels[1]
    }

    /// The destination Service the series are labelled with.
    pub fn destination(&self) -> &str {
        &self.labels[2]
    }

    /// Records a finished request. Status 0 (no response) counts as 5xx.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = class_index(status);
        let (requests, duration) = self.by_class[class].get_or_init(|| {
            let [direction, source, destination, route] = &self.labels;
            let labels = [direction.as_str(), source, destination, route, STATUS_CLASSES[class]];
            (self.requests.with_label_values(&labels), self.duration.with_label_values(&labels))
        });
        requests.inc();
        duration.observe(elapsed.as_secs_f64());
    }
}

/// The mesh's request metrics.
pub struct MeshMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    overflows: IntCounterVec,
    denials: IntCounterVec,
}

impl MeshMetrics {
    pub(crate) fn new(registry: &Registry) -> MeshMetrics {
        const HOP: [&str; 4] = ["direction", "source", "destination", "route"];
        let with = |extra: &'static str| [HOP[0], HOP[1], HOP[2], HOP[3], extra];
        let requests = must(IntCounterVec::new(
            Opts::new("mesh_requests_total", "Requests through the mesh, by hop and status class"),
            &with("status_class"),
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new("mesh_request_duration_seconds", "Time from request to the end of the response")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &with("status_class"),
        ));
        let retries = must(IntCounterVec::new(
            Opts::new("mesh_retries_total", "Tries repeated on another endpoint, by what failed"),
            &with("reason"),
        ));
        let budget_exhausted = must(IntCounterVec::new(
            Opts::new("mesh_retry_budget_exhausted_total", "Retries refused because the retry budget was spent"),
            &HOP,
        ));
        let overflows = must(IntCounterVec::new(
            Opts::new("mesh_circuit_breaker_overflows_total", "Requests failed at once by a circuit-breaker limit"),
            &with("limit"),
        ));
        let denials = must(IntCounterVec::new(
            Opts::new("mesh_authorization_denials_total", "Requests refused by authorization, by reason"),
            &with("reason"),
        ));
        for c in [
            Box::new(requests.clone()) as Box<dyn Collector>,
            Box::new(duration.clone()),
            Box::new(retries.clone()),
            Box::new(budget_exhausted.clone()),
            Box::new(overflows.clone()),
            Box::new(denials.clone()),
        ] {
            must(registry.register(c));
        }
        MeshMetrics { requests, duration, retries, budget_exhausted, overflows, denials }
    }

    /// The series of `hop`, to keep and [`HopSeries::observe`] its requests with.
    pub fn series(&self, hop: &Hop) -> HopSeries {
        HopSeries {
            labels: [hop.direction, hop.source, hop.destination, hop.route].map(str::to_string),
            requests: self.requests.clone(),
            duration: self.duration.clone(),
            by_class: Default::default(),
        }
    }

    /// Records a finished request of a hop without kept series. Status 0 (no response) counts as
    /// 5xx.
    pub fn observe(&self, hop: &Hop, status: u16, elapsed: Duration) {
        let labels = [hop.direction, hop.source, hop.destination, hop.route, status_class(status)];
        self.requests.with_label_values(&labels).inc();
        self.duration.with_label_values(&labels).observe(elapsed.as_secs_f64());
    }

    /// Counts a retry; `reason`: `status_503`-style, `connect`, `reset`, `timeout`.
    pub fn retry(&self, hop: &Hop, reason: &str) {
        self.retries.with_label_values(&[hop.direction, hop.source, hop.destination, hop.route, reason]).inc();
    }

    pub fn budget_exhausted(&self, hop: &Hop) {
        self.budget_exhausted.with_label_values(&[hop.direction, hop.source, hop.destination, hop.route]).inc();
    }

    pub fn overflow(&self, hop: &Hop, limit: &str) {
        self.overflows.with_label_values(&[hop.direction, hop.source, hop.destination, hop.route, limit]).inc();
    }

    pub fn denied(&self, hop: &Hop, reason: &str) {
        self.denials.with_label_values(&[hop.direction, hop.source, hop.destination, hop.route, reason]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hops_kept_series_count_under_its_labels_with_the_per_request_path_and_only_classes_seen() {
        let registry = Registry::new_custom(Some("weir".into()), None).unwrap();
        let metrics = MeshMetrics::new(&registry);
        let hop = Hop {
            direction: "outbound",
            source: "spiffe://td/ns/shop/sa/checkout",
            destination: "payments.shop",
            route: "",
        };
        let series = metrics.series(&hop);
        assert_eq!((series.source(), series.destination()), (hop.source, hop.destination));
        for status in [200, 204, 0] {
            series.observe(status, Duration::from_millis(3));
        }
        metrics.observe(&hop, 201, Duration::from_millis(3)); // the path without kept series
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text).unwrap();
        let labels =
            r#"destination="payments.shop",direction="outbound",route="",source="spiffe://td/ns/shop/sa/checkout""#;
        assert!(text.contains(&format!("weir_mesh_requests_total{{{labels},status_class=\"2xx\"}} 3")), "{text}");
        assert!(text.contains(&format!("weir_mesh_requests_total{{{labels},status_class=\"5xx\"}} 1")), "{text}");
        assert!(text.contains(&format!("weir_mesh_request_duration_seconds_count{{{labels},status_class=\"2xx\"}} 3")));
        assert!(!text.contains("status_class=\"4xx\""), "no series for a class never answered: {text}");
    }
}
