//! `BackendPolicy` (`weir.dev/v1alpha1`), the wire format: exactly what a user writes, everything
//! optional and durations as strings. The validated model, with every default applied, is
//! `crate::policy::BackendPolicyModel`.

use std::fmt;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The GEP-2257 regular expression a Gateway API duration must match; it is
/// also put in the CRD schema so the API server rejects malformed durations.
pub const DURATION_PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";
/// Default `targetRefs[].group`: the core API group (where Services live).
pub const DEFAULT_TARGET_GROUP: &str = "";
/// Default `targetRefs[].kind`.
pub const DEFAULT_TARGET_KIND: &str = "Service";
/// Default `healthCheck.http.path`.
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// Default `healthCheck.http.expectedStatuses`: any 2xx.
pub const DEFAULT_EXPECTED_STATUSES: &[StatusRange] = &[StatusRange { start: 200, end: 299 }];

// ---------------------------------------------------------------------------
// The CRD (wire format)
// ---------------------------------------------------------------------------

/// Backend settings for Services: load balancing, active health checks,
/// outlier detection and connect timeout.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(group = "weir.dev", version = "v1alpha1", kind = "BackendPolicy", namespaced)]
#[kube(derive = "PartialEq", status = "super::PolicyStatus")]
#[kube(
    label("gateway.networking.k8s.io/policy", "Direct"),
    doc = "BackendPolicy configures how weir talks to the endpoints of the Services it targets: \
           load balancing, active health checks, outlier detection and connect timeout."
)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicySpec {
    /// Services this policy applies to, in the policy's own namespace. Required, at least one.
    /// No default.
    #[schemars(length(min = 1))]
    pub target_refs: Vec<PolicyTargetRef>,

    /// How an endpoint is picked for each request. Default: absent, meaning
    /// algorithm RoundRobin with no hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,

    /// Active health checking of each endpoint. Default: absent, meaning no active health
    /// checks (endpoints are only judged by outlier detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,

    /// Passive health checking: endpoints that fail repeatedly are ejected for a while.
    /// Default: absent, meaning outlier detection is ON with every field at its default
    /// (5 consecutive failures, 30s base ejection, 300s max ejection, at most 50% ejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,

    /// How long to wait for a TCP (and TLS) connection to an endpoint, as a Gateway API
    /// duration (e.g. 500ms, 2s). Default: 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub connect_timeout: Option<String>,

    /// When a failed request is tried again on another endpoint (mesh tier; the edge retries
    /// connect failures only, twice). Default: absent, meaning idempotent requests are retried
    /// twice on 502, 503, 504, connect failures, resets and per-try timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,

    /// How long a request may take, in both tiers. An HTTPRoute's `timeouts` take precedence.
    /// Default: absent, meaning no overall limit and 60s of silence from the endpoint per read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,

    /// Limits that fail requests at once (503) instead of queueing them when the Service is
    /// saturated (mesh tier). Default: absent, meaning 1024 requests in flight, 1024 waiting
    /// for a connection and 1024 connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
}

/// Retry settings. A retry never goes to an endpoint the request already tried, waits an
/// exponential backoff with jitter, and is only granted while the Service's retry budget (20%
/// of its requests plus 10 per second, over 10 seconds) has room, so a failing Service is not
/// hammered.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries after the first try, 0 to 5 (0 turns retries off, connect failures included).
    /// Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 5))]
    pub attempts: Option<u32>,

    /// Response statuses that are retried (500 to 599), besides connect failures, resets and
    /// per-try timeouts. Default: [502, 503, 504].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<u16>>,

    /// Least wait before the first retry, as a Gateway API duration; each later retry waits
    /// twice as long (up to maxBackoff) plus up to half of that again at random. Default: 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub backoff: Option<String>,

    /// Longest base wait between two tries. Default: 250ms (or backoff, if that is longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_backoff: Option<String>,

    /// Retry requests whose method is not idempotent (POST, PATCH) too. Only safe when the
    /// application makes them idempotent itself. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_idempotent: Option<bool>,
}

/// Timeouts of a request to the Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// The whole request, every try and backoff included, until the response headers arrive
    /// (answered 504 when it runs out). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub request: Option<String>,

    /// One try: an endpoint that does not answer in time is abandoned, and the request retried
    /// elsewhere if the retry settings allow. Default: none (60s of silence per read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub per_try: Option<String>,
}

/// Circuit-breaker limits, per Service port (and per gateway).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// Requests in flight to the Service at once (at least 1); more are answered 503 at once.
    /// Default: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<u32>,

    /// Requests waiting for a connection to an endpoint at once (at least 1); more are
    /// answered 503 at once. Default: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_pending_requests: Option<u32>,

    /// Connections open (or opening) from this gateway to the Service's endpoints at once (at
    /// least 1). Each connection carries up to 100 concurrent requests, and a new one is opened
    /// only when the open ones have no room; a request that would need one more is answered 503
    /// at once. Default: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
}

/// Reference to a Service this policy attaches to (Gateway API
/// `LocalPolicyTargetReferenceWithSectionName`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// API group of the target. Must be "" (or "core"), the core group. Default: "".
    #[serde(default = "default_target_group")]
    pub group: String,

    /// Kind of the target. Must be Service. Default: Service.
    #[serde(default = "default_target_kind")]
    pub kind: String,

    /// Name of the Service, in the policy's namespace. Required; no default.
    pub name: String,

    /// Name of one port of the Service (`spec.ports[].name`) to apply the policy to.
    /// Default: absent, meaning every port of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

fn default_target_group() -> String {
    DEFAULT_TARGET_GROUP.to_string()
}

fn default_target_kind() -> String {
    DEFAULT_TARGET_KIND.to_string()
}

/// Load-balancing settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// RoundRobin (smooth weighted round robin), LeastLatency (power of two choices over
    /// peak-EWMA latency) or ConsistentHash (needs `hash`). Default: RoundRobin.
    #[serde(default)]
    pub algorithm: Algorithm,

    /// What to hash on; only with algorithm ConsistentHash, and then exactly one of
    /// `header`, `cookie` or `sourceIp: true` must be set. Default: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashSpec>,
}

/// Load-balancing algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Smooth weighted round robin (the default).
    #[default]
    RoundRobin,
    /// Power of two random choices, picking the endpoint with the lower peak-EWMA latency.
    LeastLatency,
    /// Consistent hashing on the key chosen in `hash`.
    ConsistentHash,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "RoundRobin",
            Algorithm::LeastLatency => "LeastLatency",
            Algorithm::ConsistentHash => "ConsistentHash",
        })
    }
}

/// Hash key for ConsistentHash; set exactly one field.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HashSpec {
    /// Hash on the value of this request header (case-insensitive name). Default: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,

    /// Hash on the value of this cookie. Default: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,

    /// Set to true to hash on the client's IP address. Default: absent (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

/// Active health check settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// HTTP (send a request, check the status) or TCP (just connect). Default: HTTP.
    #[serde(rename = "type", default)]
    pub type_: HealthCheckType,

    /// HTTP probe settings; only with type HTTP. Default: absent, meaning path "/" and
    /// expected statuses 200-299.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheckSpec>,

    /// Time between two probes of the same endpoint, as a Gateway API duration. Default: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub interval: Option<String>,

    /// How long one probe may take before it counts as failed, as a Gateway API duration.
    /// Default: 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,

    /// Consecutive successful probes before an unhealthy endpoint is healthy again
    /// (at least 1). Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub healthy_threshold: Option<u32>,

    /// Consecutive failed probes before a healthy endpoint is marked unhealthy
    /// (at least 1). Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub unhealthy_threshold: Option<u32>,
}

/// Kind of active health check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HealthCheckType {
    /// Send an HTTP/1.1 GET and check the response status (the default).
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// Open a TCP connection and close it.
    #[serde(rename = "TCP")]
    Tcp,
}

impl fmt::Display for HealthCheckType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthCheckType::Http => "HTTP",
            HealthCheckType::Tcp => "TCP",
        })
    }
}

/// HTTP health check settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheckSpec {
    /// Request path (with optional query), starting with "/". Default: "/".
    #[serde(default = "default_health_path")]
    pub path: String,

    /// Host header to send. Default: absent, meaning the endpoint's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,

    /// Response statuses that count as healthy, as inclusive ranges.
    /// Default: [{start: 200, end: 299}].
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<StatusRange>,
}

impl Default for HttpHealthCheckSpec {
    fn default() -> Self {
        HttpHealthCheckSpec { path: default_health_path(), host: None, expected_statuses: default_expected_statuses() }
    }
}

fn default_health_path() -> String {
    DEFAULT_HEALTH_PATH.to_string()
}

fn default_expected_statuses() -> Vec<StatusRange> {
    DEFAULT_EXPECTED_STATUSES.to_vec()
}

/// Inclusive range of HTTP status codes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct StatusRange {
    /// First status of the range, from 100 to 599. Required; no default.
    #[schemars(range(min = 100, max = 599))]
    pub start: u16,
    /// Last status of the range (inclusive), from 100 to 599 and not below start.
    /// Required; no default.
    #[schemars(range(min = 100, max = 599))]
    pub end: u16,
}

/// Outlier detection (passive health checking) settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Consecutive failures (connect failures and 5xx responses) that eject an endpoint
    /// (at least 1). Default: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive_failures: Option<u32>,

    /// Base ejection time, as a Gateway API duration: an ejection lasts this times the number
    /// of times the endpoint has been ejected, capped at maxEjectionTime. Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub base_ejection_time: Option<String>,

    /// Longest an ejection may last, as a Gateway API duration. Default: 300s (or
    /// baseEjectionTime, if that is set and longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_ejection_time: Option<String>,

    /// Most endpoints of a Service that may be ejected at once, in percent (0 to 100;
    /// 0 disables ejection). Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// The `BackendPolicy` CRD rendered as YAML, ready for `kubectl apply -f -`.
///
/// `deploy/crds/backendpolicies.weir.dev.yaml` holds exactly this text.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    crate::api::crd_yaml(BackendPolicy::crd())
}
