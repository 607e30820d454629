//! `BackendPolicy`: weir's own policy CRD (`weir.dev/v1alpha1`).
//!
//! A `BackendPolicy` attaches to one or more Services the Gateway API
//! *policy attachment* way (GEP-713, "direct" policy): its `spec.targetRefs`
//! name the Services (and optionally a single Service port through
//! `sectionName`) whose endpoints it configures. It controls how weir picks an
//! endpoint (load-balancing algorithm), how it actively health-checks
//! endpoints, how it passively ejects failing endpoints (outlier detection)
//! and how long it waits for a TCP connection.
//!
//! The types in this module come in two layers:
//!
//! * `BackendPolicySpec` (and the generated `BackendPolicy` resource), in
//!   [`crate::api::backend_policy`], is the wire format, exactly what a user
//!   writes; everything is optional and durations are strings.
//! * [`BackendPolicyModel`] is the validated form the proxy uses, with every
//!   default applied and every duration parsed. Build it with
//!   `BackendPolicyModel::try_from(&spec)`; a [`PolicyError`] lists every
//!   problem at once, each with the field path and what to change.
//!
//! Every default is a named `DEFAULT_*` constant below.

use std::fmt;
use std::time::Duration;

use crate::api::backend_policy::*;

// ---------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------

/// Default `loadBalancer.algorithm`: smooth weighted round robin.
pub const DEFAULT_ALGORITHM: Algorithm = Algorithm::RoundRobin;
/// Default `healthCheck.type`.
pub const DEFAULT_HEALTH_CHECK_TYPE: HealthCheckType = HealthCheckType::Http;
/// Default `healthCheck.interval`: time between two probes of one endpoint.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default `healthCheck.timeout`: how long one probe may take.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `healthCheck.healthyThreshold`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
/// Default `healthCheck.unhealthyThreshold`.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default `outlierDetection.consecutiveFailures`.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default `outlierDetection.baseEjectionTime`.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Default `outlierDetection.maxEjectionTime` (raised to `baseEjectionTime`
/// when only that one is set and it is longer).
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Default `outlierDetection.maxEjectionPercent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
/// Default `connectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `retry.attempts`: retries after the first try (Istio's default).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Most `retry.attempts` allowed.
pub const MAX_RETRY_ATTEMPTS: u32 = 5;
/// Default `retry.codes`: the gateway errors, which say nothing reached the application or it
/// could not answer (Istio retries 503; Envoy's `gateway-error` is 502, 503, 504).
pub const DEFAULT_RETRY_CODES: &[u16] = &[502, 503, 504];
/// Default `retry.backoff`: the first retry waits at least this long (Envoy's default).
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// Default `retry.maxBackoff`: no wait between tries is longer (Envoy: 10 × the base).
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Default `circuitBreaker.maxRequests` (Envoy's default).
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
/// Default `circuitBreaker.maxPendingRequests` (Envoy's default).
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;
/// Default `circuitBreaker.maxConnections` (Envoy's default).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;

/// Label that marks a CRD as a Gateway API policy (GEP-713), so that policy
/// tooling can discover it. `BackendPolicy` is a "Direct" policy.
pub const POLICY_LABEL: &str = "gateway.networking.k8s.io/policy";

// ---------------------------------------------------------------------------
// Validated model
// ---------------------------------------------------------------------------

/// A [`BackendPolicySpec`] validated and with every default applied.
///
/// `BackendPolicyModel::default()` is what applies to a Service that no
/// policy targets. The target references are not part of the model: they are
/// validated by `try_from` and read from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPolicyModel {
    /// How an endpoint is picked.
    pub algorithm: AlgorithmModel,
    /// Active health checking; `None` means none (the default).
    pub health_check: Option<HealthCheckModel>,
    /// Outlier detection; always on (set `max_ejection_percent` to 0 to never eject).
    pub outlier: OutlierModel,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Retries, when the policy sets them (each tier has its own default).
    pub retry: Option<RetryModel>,
    /// Timeouts; `None` fields: no limit of that kind.
    pub timeouts: TimeoutsModel,
    /// Circuit-breaker limits.
    pub circuit_breaker: CircuitBreakerModel,
}

/// Validated retry settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryModel {
    /// Retries after the first try (0..=MAX_RETRY_ATTEMPTS).
    pub attempts: u32,
    /// Response statuses retried.
    pub codes: Vec<u16>,
    /// Wait before the first retry.
    pub backoff: Duration,
    /// Longest base wait.
    pub max_backoff: Duration,
    /// Retry non-idempotent methods too.
    pub non_idempotent: bool,
}

impl Default for RetryModel {
    fn default() -> Self {
        RetryModel {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            codes: DEFAULT_RETRY_CODES.to_vec(),
            backoff: DEFAULT_RETRY_BACKOFF,
            max_backoff: DEFAULT_RETRY_MAX_BACKOFF,
            non_idempotent: false,
        }
    }
}

/// Validated timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TimeoutsModel {
    pub request: Option<Duration>,
    pub per_try: Option<Duration>,
}

/// Validated circuit-breaker limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitBreakerModel {
    pub max_requests: u32,
    pub max_pending_requests: u32,
    pub max_connections: u32,
}

impl Default for CircuitBreakerModel {
    fn default() -> Self {
        CircuitBreakerModel {
            max_requests: DEFAULT_MAX_REQUESTS,
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Validated load-balancing algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum AlgorithmModel {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices with peak-EWMA latency.
    LeastLatency,
    /// Consistent hashing on the given key.
    ConsistentHash(HashKey),
}

/// What ConsistentHash hashes on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// A request header; the name is valid and lowercased.
    Header(String),
    /// A cookie, by name.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

/// Validated active health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckModel {
    /// HTTP or TCP probe.
    pub kind: HealthCheckKind,
    /// Time between two probes of one endpoint (> 0).
    pub interval: Duration,
    /// Time one probe may take (> 0).
    pub timeout: Duration,
    /// Consecutive successes to become healthy (>= 1).
    pub healthy_threshold: usize,
    /// Consecutive failures to become unhealthy (>= 1).
    pub unhealthy_threshold: usize,
}

/// Kind of a validated health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// HTTP GET of `path`, healthy when the status is in one of the
    /// inclusive `expected` ranges.
    Http {
        /// Request path, starting with "/".
        path: String,
        /// Host header to send; `None` means the endpoint's address.
        host: Option<String>,
        /// Inclusive status ranges, each within 100..=599 with start <= end.
        expected: Vec<(u16, u16)>,
    },
    /// TCP connect only.
    Tcp,
}

impl HealthCheckKind {
    /// Whether an HTTP probe answered with `status` counts as healthy
    /// (always false for TCP checks, which have no status).
    pub fn accepts_status(&self, status: u16) -> bool {
        match self {
            HealthCheckKind::Http { expected, .. } => {
                expected.iter().any(|&(start, end)| (start..=end).contains(&status))
            }
            HealthCheckKind::Tcp => false,
        }
    }
}

impl Default for HealthCheckModel {
    /// The health check used when `spec.healthCheck` is present with no fields set.
    fn default() -> Self {
        HealthCheckModel {
            kind: HealthCheckKind::Http {
                path: DEFAULT_HEALTH_PATH.to_string(),
                host: None,
                expected: DEFAULT_EXPECTED_STATUSES.iter().map(|r| (r.start, r.end)).collect(),
            },
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD as usize,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD as usize,
        }
    }
}

/// Validated outlier detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierModel {
    /// Consecutive failures (connect failures and 5xx) that eject an endpoint (>= 1).
    pub consecutive_failures: u32,
    /// Ejection time for the first ejection (> 0).
    pub base_ejection: Duration,
    /// Longest ejection (>= `base_ejection`).
    pub max_ejection: Duration,
    /// Most endpoints that may be ejected at once, in percent (0..=100).
    pub max_ejection_percent: u32,
}

impl OutlierModel {
    /// How long the `times_ejected`-th ejection of an endpoint lasts
    /// (`times_ejected` counts this one, so starts at 1): `base_ejection ×
    /// times_ejected`, capped at `max_ejection`.
    pub fn ejection_duration(&self, times_ejected: u32) -> Duration {
        self.base_ejection.checked_mul(times_ejected.max(1)).map_or(self.max_ejection, |d| d.min(self.max_ejection))
    }
}

impl Default for OutlierModel {
    fn default() -> Self {
        OutlierModel {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION_TIME,
            max_ejection: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

impl Default for BackendPolicyModel {
    fn default() -> Self {
        BackendPolicyModel {
            algorithm: AlgorithmModel::RoundRobin,
            health_check: None,
            outlier: OutlierModel::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: None,
            timeouts: TimeoutsModel::default(),
            circuit_breaker: CircuitBreakerModel::default(),
        }
    }
}

/// One problem in a `BackendPolicy` spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    /// Path of the offending field, e.g. `spec.healthCheck.interval`.
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a `BackendPolicy` spec (never empty).
///
/// Displays on one line (fit for a status condition message or a log line),
/// numbered when there are several:
/// `invalid BackendPolicy spec (2 problems): (1) spec.a: ...; (2) spec.b: ...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid BackendPolicy spec ({} problem{}): {}",
    .problems.len(),
    if .problems.len() == 1 { "" } else { "s" },
    join_problems(.problems))]
pub struct PolicyError {
    /// The problems, in field order.
    pub problems: Vec<PolicyProblem>,
}

fn join_problems(problems: &[PolicyProblem]) -> String {
    if let [only] = problems {
        return only.to_string();
    }
    let numbered: Vec<String> = problems.iter().enumerate().map(|(i, p)| format!("({}) {p}", i + 1)).collect();
    numbered.join("; ")
}

/// Collects problems while converting a spec.
#[derive(Default)]
struct Problems(Vec<PolicyProblem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(PolicyProblem { field: field.into(), message: message.into() });
    }

    /// A positive duration from an optional field, or `default` when absent
    /// (or invalid, after recording the problem).
    fn duration(&mut self, field: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match crate::api::duration::parse(text) {
            Ok(d) if d.is_zero() => {
                self.push(
                    field,
                    format!("{text:?} must be greater than zero; e.g. {}", crate::api::duration::format(default)),
                );
                default
            }
            Ok(d) => d,
            Err(_) => {
                self.push(
                    field,
                    format!("{text:?} is not a duration; use a Gateway API duration such as 5s, 500ms or 1m"),
                );
                default
            }
        }
    }

    /// A threshold that must be at least 1, or `default` when absent.
    fn at_least_one(&mut self, field: &str, value: Option<u32>, default: u32) -> u32 {
        match value {
            None => default,
            Some(0) => {
                self.push(field, format!("must be at least 1 (got 0); the default is {default}"));
                default
            }
            Some(n) => n,
        }
    }
}

/// RFC 9110 `token` (header field names, cookie names).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl TryFrom<&BackendPolicySpec> for BackendPolicyModel {
    type Error = PolicyError;

    fn try_from(spec: &BackendPolicySpec) -> Result<Self, PolicyError> {
        let mut p = Problems::default();

        check_target_refs(&spec.target_refs, &mut p);
        let algorithm = convert_load_balancer(spec.load_balancer.as_ref(), &mut p);
        let health_check = spec.health_check.as_ref().map(|hc| convert_health_check(hc, &mut p));
        let outlier = convert_outlier(spec.outlier_detection.as_ref(), &mut p);
        let connect_timeout =
            p.duration("spec.connectTimeout", spec.connect_timeout.as_deref(), DEFAULT_CONNECT_TIMEOUT);
        let retry = spec.retry.as_ref().map(|r| convert_retry(r, &mut p));
        let timeouts = spec.timeouts.as_ref().map_or_else(TimeoutsModel::default, |t| TimeoutsModel {
            request: t.request.as_deref().map(|v| p.duration("spec.timeouts.request", Some(v), Duration::ZERO)),
            per_try: t.per_try.as_deref().map(|v| p.duration("spec.timeouts.perTry", Some(v), Duration::ZERO)),
        });
        let circuit_breaker =
            spec.circuit_breaker.as_ref().map_or_else(CircuitBreakerModel::default, |cb| CircuitBreakerModel {
                max_requests: p.at_least_one("spec.circuitBreaker.maxRequests", cb.max_requests, DEFAULT_MAX_REQUESTS),
                max_pending_requests: p.at_least_one(
                    "spec.circuitBreaker.maxPendingRequests",
                    cb.max_pending_requests,
                    DEFAULT_MAX_PENDING_REQUESTS,
                ),
                max_connections: p.at_least_one(
                    "spec.circuitBreaker.maxConnections",
                    cb.max_connections,
                    DEFAULT_MAX_CONNECTIONS,
                ),
            });

        if p.0.is_empty() {
            Ok(BackendPolicyModel {
                algorithm,
                health_check,
                outlier,
                connect_timeout,
                retry,
                timeouts,
                circuit_breaker,
            })
        } else {
            Err(PolicyError { problems: p.0 })
        }
    }
}

impl TryFrom<BackendPolicySpec> for BackendPolicyModel {
    type Error = PolicyError;

    fn try_from(spec: BackendPolicySpec) -> Result<Self, PolicyError> {
        BackendPolicyModel::try_from(&spec)
    }
}

fn check_target_refs(refs: &[PolicyTargetRef], p: &mut Problems) {
    if refs.is_empty() {
        p.push("spec.targetRefs", "is empty; list at least one Service, e.g. [{kind: Service, name: my-service}]");
    }
    for (i, r) in refs.iter().enumerate() {
        let at = format!("spec.targetRefs[{i}]");
        if !(r.group.is_empty() || r.group == "core") {
            p.push(
                format!("{at}.group"),
                format!(
                    "{:?} is not supported; BackendPolicy targets Services, use group \"\" (the core API group)",
                    r.group
                ),
            );
        }
        if r.kind != "Service" {
            p.push(
                format!("{at}.kind"),
                format!("{:?} is not supported; BackendPolicy attaches only to kind Service", r.kind),
            );
        }
        if r.name.is_empty() {
            p.push(format!("{at}.name"), "is empty; set it to the name of a Service in this namespace");
        }
        if r.section_name.as_deref() == Some("") {
            p.push(
                format!("{at}.sectionName"),
                "is empty; set it to the name of a Service port, or remove it to cover every port",
            );
        }
    }
}

fn convert_load_balancer(lb: Option<&LoadBalancerSpec>, p: &mut Problems) -> AlgorithmModel {
    let Some(lb) = lb else {
        return AlgorithmModel::RoundRobin;
    };
    const ONE_KEY: &str = "set exactly one of header, cookie or sourceIp: true";

    // Validate the key fields whatever the algorithm, so every problem shows.
    let mut keys = Vec::new();
    if let Some(hash) = &lb.hash {
        if let Some(h) = &hash.header {
            if is_token(h) {
                keys.push(("header", HashKey::Header(h.to_ascii_lowercase())));
            } else {
                p.push(
                    "spec.loadBalancer.hash.header",
                    format!("{h:?} is not a valid HTTP header name; use letters, digits and '-', e.g. X-User-Id"),
                );
            }
        }
        if let Some(c) = &hash.cookie {
            if is_token(c) {
                keys.push(("cookie", HashKey::Cookie(c.clone())));
            } else {
                p.push(
                    "spec.loadBalancer.hash.cookie",
                    format!("{c:?} is not a valid cookie name; use letters, digits and '-' or '_', e.g. session_id"),
                );
            }
        }
        if hash.source_ip == Some(true) {
            keys.push(("sourceIp", HashKey::SourceIp));
        }
    }

    match lb.algorithm {
        Algorithm::RoundRobin | Algorithm::LeastLatency => {
            if lb.hash.is_some() {
                p.push(
                    "spec.loadBalancer.hash",
                    format!(
                        "is only used with algorithm ConsistentHash, but algorithm is {}; remove hash or set algorithm: ConsistentHash",
                        lb.algorithm
                    ),
                );
            }
            if lb.algorithm == Algorithm::RoundRobin {
                AlgorithmModel::RoundRobin
            } else {
                AlgorithmModel::LeastLatency
            }
        }
        Algorithm::ConsistentHash => {
            let Some(hash) = &lb.hash else {
                p.push("spec.loadBalancer.hash", format!("is required with algorithm ConsistentHash; {ONE_KEY}"));
                return AlgorithmModel::ConsistentHash(HashKey::SourceIp);
            };
            // Count keys that are set at all (valid or not) for the "exactly one" rule.
            let mut set = Vec::new();
            if hash.header.is_some() {
                set.push("header");
            }
            if hash.cookie.is_some() {
                set.push("cookie");
            }
            if hash.source_ip == Some(true) {
                set.push("sourceIp");
            }
            match set.len() {
                0 => p.push("spec.loadBalancer.hash", format!("sets no key; {ONE_KEY}")),
                1 => {}
                _ => p.push("spec.loadBalancer.hash", format!("sets {}; {ONE_KEY}", set.join(" and "))),
            }
            keys.into_iter()
                .next()
                .map_or(AlgorithmModel::ConsistentHash(HashKey::SourceIp), |(_, k)| AlgorithmModel::ConsistentHash(k))
        }
    }
}

fn convert_health_check(hc: &HealthCheckSpec, p: &mut Problems) -> HealthCheckModel {
    let kind = match hc.type_ {
        HealthCheckType::Http => {
            let default_http = HttpHealthCheckSpec::default();
            let http = hc.http.as_ref().unwrap_or(&default_http);
            convert_http_check(http, p)
        }
        HealthCheckType::Tcp => {
            if hc.http.is_some() {
                p.push("spec.healthCheck.http", "is only used with type HTTP; remove it or set type: HTTP");
            }
            HealthCheckKind::Tcp
        }
    };
    let interval = p.duration("spec.healthCheck.interval", hc.interval.as_deref(), DEFAULT_HEALTH_INTERVAL);
    let timeout = p.duration("spec.healthCheck.timeout", hc.timeout.as_deref(), DEFAULT_HEALTH_TIMEOUT);
    let healthy = p.at_least_one("spec.healthCheck.healthyThreshold", hc.healthy_threshold, DEFAULT_HEALTHY_THRESHOLD);
    let unhealthy =
        p.at_least_one("spec.healthCheck.unhealthyThreshold", hc.unhealthy_threshold, DEFAULT_UNHEALTHY_THRESHOLD);
    HealthCheckModel {
        kind,
        interval,
        timeout,
        healthy_threshold: healthy as usize,
        unhealthy_threshold: unhealthy as usize,
    }
}

fn convert_http_check(http: &HttpHealthCheckSpec, p: &mut Problems) -> HealthCheckKind {
    if !http.path.starts_with('/') {
        p.push("spec.healthCheck.http.path", format!("{:?} must start with /, e.g. /healthz", http.path));
    } else if http.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.push(
            "spec.healthCheck.http.path",
            format!("{:?} contains spaces or control characters; percent-encode them (e.g. %20)", http.path),
        );
    }
    if let Some(host) = &http.host {
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.push(
                "spec.healthCheck.http.host",
                format!("{host:?} is not a valid Host header; use a host name such as app.example.com, or remove it"),
            );
        }
    }
    if http.expected_statuses.is_empty() {
        p.push(
            "spec.healthCheck.http.expectedStatuses",
            "is empty, so no response would count as healthy; list at least one range such as {start: 200, end: 299}",
        );
    }
    let mut expected = Vec::with_capacity(http.expected_statuses.len());
    for (i, r) in http.expected_statuses.iter().enumerate() {
        let at = format!("spec.healthCheck.http.expectedStatuses[{i}]");
        let mut ok = true;
        for (name, v) in [("start", r.start), ("end", r.end)] {
            if !(100..=599).contains(&v) {
                p.push(format!("{at}.{name}"), format!("{v} is not an HTTP status code; use a value from 100 to 599"));
                ok = false;
            }
        }
        if r.start > r.end {
            p.push(
                at.clone(),
                format!("start {} is greater than end {}; swap them (the range is inclusive)", r.start, r.end),
            );
            ok = false;
        }
        if ok {
            expected.push((r.start, r.end));
        }
    }
    HealthCheckKind::Http { path: http.path.clone(), host: http.host.clone(), expected }
}

fn convert_retry(r: &RetrySpec, p: &mut Problems) -> RetryModel {
    let attempts = match r.attempts {
        None => DEFAULT_RETRY_ATTEMPTS,
        Some(n) if n > MAX_RETRY_ATTEMPTS => {
            p.push(
                "spec.retry.attempts",
                format!("{n} is over {MAX_RETRY_ATTEMPTS}; use 0 to {MAX_RETRY_ATTEMPTS} (the retry budget bounds the total anyway)"),
            );
            DEFAULT_RETRY_ATTEMPTS
        }
        Some(n) => n,
    };
    let codes = match &r.codes {
        None => DEFAULT_RETRY_CODES.to_vec(),
        Some(codes) => {
            for (i, c) in codes.iter().enumerate() {
                if !(500..=599).contains(c) {
                    p.push(
                        format!("spec.retry.codes[{i}]"),
                        format!("{c} is not a 5xx status; only server errors (500 to 599) are retried"),
                    );
                }
            }
            codes.clone()
        }
    };
    let backoff = p.duration("spec.retry.backoff", r.backoff.as_deref(), DEFAULT_RETRY_BACKOFF);
    let max_backoff = match r.max_backoff.as_deref() {
        None => DEFAULT_RETRY_MAX_BACKOFF.max(backoff),
        Some(text) => {
            let max = p.duration("spec.retry.maxBackoff", Some(text), DEFAULT_RETRY_MAX_BACKOFF);
            if max < backoff {
                p.push(
                    "spec.retry.maxBackoff",
                    format!(
                        "{text:?} is shorter than backoff {}; raise maxBackoff or lower backoff",
                        crate::api::duration::format(backoff)
                    ),
                );
            }
            max
        }
    };
    RetryModel { attempts, codes, backoff, max_backoff, non_idempotent: r.non_idempotent.unwrap_or(false) }
}

fn convert_outlier(od: Option<&OutlierDetectionSpec>, p: &mut Problems) -> OutlierModel {
    let Some(od) = od else {
        return OutlierModel::default();
    };
    let consecutive_failures = p.at_least_one(
        "spec.outlierDetection.consecutiveFailures",
        od.consecutive_failures,
        DEFAULT_CONSECUTIVE_FAILURES,
    );
    let base_ejection = p.duration(
        "spec.outlierDetection.baseEjectionTime",
        od.base_ejection_time.as_deref(),
        DEFAULT_BASE_EJECTION_TIME,
    );
    let max_ejection = match od.max_ejection_time.as_deref() {
        // Only the base is set: the default cap never cuts it short.
        None => DEFAULT_MAX_EJECTION_TIME.max(base_ejection),
        Some(text) => {
            let before = p.0.len();
            let max = p.duration("spec.outlierDetection.maxEjectionTime", Some(text), DEFAULT_MAX_EJECTION_TIME);
            if p.0.len() == before && max < base_ejection {
                p.push(
                    "spec.outlierDetection.maxEjectionTime",
                    format!(
                        "{text:?} is shorter than baseEjectionTime {}; raise maxEjectionTime or lower baseEjectionTime",
                        od.base_ejection_time
                            .as_deref()
                            .map_or_else(|| crate::api::duration::format(base_ejection), str::to_string)
                    ),
                );
            }
            max
        }
    };
    let max_ejection_percent = match od.max_ejection_percent {
        None => DEFAULT_MAX_EJECTION_PERCENT,
        Some(n) if n > 100 => {
            p.push(
                "spec.outlierDetection.maxEjectionPercent",
                format!("{n} is over 100; use a percentage from 0 to 100"),
            );
            DEFAULT_MAX_EJECTION_PERCENT
        }
        Some(n) => n,
    };
    OutlierModel { consecutive_failures, base_ejection, max_ejection, max_ejection_percent }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn target(name: &str) -> PolicyTargetRef {
        PolicyTargetRef {
            group: DEFAULT_TARGET_GROUP.to_string(),
            kind: DEFAULT_TARGET_KIND.to_string(),
            name: name.to_string(),
            section_name: None,
        }
    }

    fn minimal_spec() -> BackendPolicySpec {
        BackendPolicySpec {
            target_refs: vec![target("web")],
            load_balancer: None,
            health_check: None,
            outlier_detection: None,
            connect_timeout: None,
            retry: None,
            timeouts: None,
            circuit_breaker: None,
        }
    }

    #[test]
    fn retry_timeouts_and_circuit_breaker() {
        let spec = BackendPolicySpec {
            retry: Some(RetrySpec { attempts: Some(3), backoff: Some("1s".into()), ..Default::default() }),
            timeouts: Some(TimeoutsSpec { request: Some("5s".into()), per_try: Some("500ms".into()) }),
            circuit_breaker: Some(CircuitBreakerSpec {
                max_requests: Some(10),
                max_pending_requests: None,
                max_connections: Some(4),
            }),
            ..minimal_spec()
        };
        let m = BackendPolicyModel::try_from(&spec).unwrap();
        let retry = m.retry.unwrap();
        assert_eq!((retry.attempts, retry.codes.as_slice()), (3, DEFAULT_RETRY_CODES));
        assert_eq!((retry.backoff, retry.max_backoff), (secs(1), secs(1)), "max backoff raised to the base");
        assert_eq!(m.timeouts, TimeoutsModel { request: Some(secs(5)), per_try: Some(Duration::from_millis(500)) });
        assert_eq!(m.circuit_breaker.max_requests, 10);
        assert_eq!(m.circuit_breaker.max_pending_requests, DEFAULT_MAX_PENDING_REQUESTS);
        assert_eq!(m.circuit_breaker.max_connections, 4);

        let bad = BackendPolicySpec {
            retry: Some(RetrySpec {
                attempts: Some(9),
                codes: Some(vec![503, 404]),
                backoff: Some("1s".into()),
                max_backoff: Some("100ms".into()),
                non_idempotent: None,
            }),
            timeouts: Some(TimeoutsSpec { request: Some("0s".into()), per_try: Some("1.5s".into()) }),
            circuit_breaker: Some(CircuitBreakerSpec {
                max_requests: Some(0),
                max_pending_requests: None,
                max_connections: Some(0),
            }),
            ..minimal_spec()
        };
        let problems = problems_of(&bad);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems.iter().map(|p| p.field.as_str()).collect::<Vec<_>>(),
            [
                "spec.retry.attempts",
                "spec.retry.codes[1]",
                "spec.retry.maxBackoff",
                "spec.timeouts.request",
                "spec.timeouts.perTry",
                "spec.circuitBreaker.maxRequests",
                "spec.circuitBreaker.maxConnections"
            ],
            "{text:#?}"
        );
        assert!(text[1].contains("404 is not a 5xx status"), "{}", text[1]);
        assert!(text[2].contains("shorter than backoff 1s"), "{}", text[2]);
    }

    fn problems_of(spec: &BackendPolicySpec) -> Vec<PolicyProblem> {
        BackendPolicyModel::try_from(spec).expect_err("spec should be invalid").problems
    }

    fn fields_of(spec: &BackendPolicySpec) -> Vec<String> {
        problems_of(spec).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn default_model() {
        let m = BackendPolicyModel::default();
        assert_eq!(m.algorithm, AlgorithmModel::RoundRobin);
        assert_eq!(m.health_check, None);
        assert_eq!(
            m.outlier,
            OutlierModel {
                consecutive_failures: 5,
                base_ejection: secs(30),
                max_ejection: secs(300),
                max_ejection_percent: 50,
            }
        );
        assert_eq!(m.connect_timeout, secs(2));
        assert_eq!(Algorithm::default(), DEFAULT_ALGORITHM);
        assert_eq!(HealthCheckType::default(), DEFAULT_HEALTH_CHECK_TYPE);
        assert_eq!(LoadBalancerSpec::default().algorithm, Algorithm::RoundRobin);
        assert_eq!(
            HttpHealthCheckSpec::default(),
            HttpHealthCheckSpec {
                path: "/".into(),
                host: None,
                expected_statuses: vec![StatusRange { start: 200, end: 299 }],
            }
        );
    }

    #[test]
    fn minimal_spec_gives_the_default_model() {
        let spec: BackendPolicySpec = serde_saphyr::from_str("targetRefs:\n- name: web\n").unwrap();
        assert_eq!(spec.target_refs, vec![target("web")]);
        assert_eq!(BackendPolicyModel::try_from(&spec), Ok(BackendPolicyModel::default()));
    }

    #[test]
    fn empty_sections_take_their_defaults() {
        let yaml = "
targetRefs: [{name: web}]
loadBalancer: {}
healthCheck: {}
outlierDetection: {}
";
        let spec: BackendPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        let m = BackendPolicyModel::try_from(&spec).unwrap();
        assert_eq!(m.algorithm, AlgorithmModel::RoundRobin);
        let hc = m.health_check.unwrap();
        assert_eq!(hc, HealthCheckModel::default());
        assert_eq!(hc.kind, HealthCheckKind::Http { path: "/".into(), host: None, expected: vec![(200, 299)] });
        assert_eq!((hc.interval, hc.timeout), (secs(5), secs(1)));
        assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold), (1, 3));
        assert_eq!(m.outlier, OutlierModel::default());
    }

    #[test]
    fn full_spec_from_yaml() {
        let yaml = r#"
targetRefs:
  - group: ""
    kind: Service
    name: checkout
    sectionName: http
  - group: core
    kind: Service
    name: checkout-canary
loadBalancer:
  algorithm: ConsistentHash
  hash:
    header: X-User-Id
healthCheck:
  type: HTTP
  http:
    path: /healthz?full=1
    host: checkout.internal
    expectedStatuses:
      - {start: 200, end: 204}
      - {start: 301, end: 302}
  interval: 10s
  timeout: 1500ms
  healthyThreshold: 2
  unhealthyThreshold: 4
outlierDetection:
  consecutiveFailures: 7
  baseEjectionTime: 1m
  maxEjectionTime: 10m
  maxEjectionPercent: 30
connectTimeout: 750ms
"#;
        let spec: BackendPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.target_refs.len(), 2);
        assert_eq!(spec.target_refs[0].section_name.as_deref(), Some("http"));
        assert_eq!(spec.target_refs[1].group, "core");
        assert_eq!(spec.load_balancer.as_ref().unwrap().algorithm, Algorithm::ConsistentHash);
        assert_eq!(spec.health_check.as_ref().unwrap().type_, HealthCheckType::Http);

        let m = BackendPolicyModel::try_from(&spec).unwrap();
        assert_eq!(
            m,
            BackendPolicyModel {
                algorithm: AlgorithmModel::ConsistentHash(HashKey::Header("x-user-id".into())),
                health_check: Some(HealthCheckModel {
                    kind: HealthCheckKind::Http {
                        path: "/healthz?full=1".into(),
                        host: Some("checkout.internal".into()),
                        expected: vec![(200, 204), (301, 302)],
                    },
                    interval: secs(10),
                    timeout: Duration::from_millis(1500),
                    healthy_threshold: 2,
                    unhealthy_threshold: 4,
                }),
                outlier: OutlierModel {
                    consecutive_failures: 7,
                    base_ejection: secs(60),
                    max_ejection: secs(600),
                    max_ejection_percent: 30,
                },
                connect_timeout: Duration::from_millis(750),
                ..BackendPolicyModel::default()
            }
        );
        let kind = &m.health_check.as_ref().unwrap().kind;
        assert!(kind.accepts_status(204) && kind.accepts_status(301));
        assert!(!kind.accepts_status(205) && !kind.accepts_status(300) && !kind.accepts_status(500));
    }

    #[test]
    fn spec_round_trips_through_yaml() {
        let yaml = "
targetRefs: [{name: web, sectionName: grpc}]
loadBalancer: {algorithm: LeastLatency}
healthCheck: {type: TCP, interval: 2s}
connectTimeout: 1s
";
        let spec: BackendPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        let again: BackendPolicySpec = serde_saphyr::from_str(&serde_saphyr::to_string(&spec).unwrap()).unwrap();
        assert_eq!(spec, again);
        let text = serde_saphyr::to_string(&spec).unwrap();
        assert!(text.contains("type: TCP"), "{text}");
        assert!(text.contains("algorithm: LeastLatency"), "{text}");
        assert!(!text.contains("null"), "absent fields are omitted: {text}");

        let m = BackendPolicyModel::try_from(&spec).unwrap();
        assert_eq!(m.algorithm, AlgorithmModel::LeastLatency);
        let hc = m.health_check.unwrap();
        assert_eq!(hc.kind, HealthCheckKind::Tcp);
        assert_eq!(hc.interval, secs(2));
        assert_eq!(hc.timeout, DEFAULT_HEALTH_TIMEOUT);
    }

    #[test]
    fn hash_keys() {
        let with_hash = |hash: HashSpec| BackendPolicySpec {
            load_balancer: Some(LoadBalancerSpec { algorithm: Algorithm::ConsistentHash, hash: Some(hash) }),
            ..minimal_spec()
        };
        let cookie = with_hash(HashSpec { cookie: Some("session".into()), ..Default::default() });
        assert_eq!(
            BackendPolicyModel::try_from(&cookie).unwrap().algorithm,
            AlgorithmModel::ConsistentHash(HashKey::Cookie("session".into()))
        );
        let ip = with_hash(HashSpec { source_ip: Some(true), ..Default::default() });
        assert_eq!(
            BackendPolicyModel::try_from(&ip).unwrap().algorithm,
            AlgorithmModel::ConsistentHash(HashKey::SourceIp)
        );
        // sourceIp: false does not count as a key.
        let header_and_no_ip =
            with_hash(HashSpec { header: Some("X-A".into()), source_ip: Some(false), ..Default::default() });
        assert_eq!(
            BackendPolicyModel::try_from(&header_and_no_ip).unwrap().algorithm,
            AlgorithmModel::ConsistentHash(HashKey::Header("x-a".into()))
        );

        let none = with_hash(HashSpec { source_ip: Some(false), ..Default::default() });
        let p = problems_of(&none);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "spec.loadBalancer.hash");
        assert!(p[0].message.contains("sets no key"), "{}", p[0]);

        let two = with_hash(HashSpec { header: Some("x-a".into()), source_ip: Some(true), ..Default::default() });
        let p = problems_of(&two);
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("sets header and sourceIp"), "{}", p[0]);

        let missing = BackendPolicySpec {
            load_balancer: Some(LoadBalancerSpec { algorithm: Algorithm::ConsistentHash, hash: None }),
            ..minimal_spec()
        };
        assert_eq!(fields_of(&missing), ["spec.loadBalancer.hash"]);

        let unused = BackendPolicySpec {
            load_balancer: Some(LoadBalancerSpec {
                algorithm: Algorithm::LeastLatency,
                hash: Some(HashSpec { cookie: Some("s".into()), ..Default::default() }),
            }),
            ..minimal_spec()
        };
        let p = problems_of(&unused);
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("but algorithm is LeastLatency"), "{}", p[0]);
    }

    #[test]
    fn outlier_ejection_times() {
        let only_base = BackendPolicySpec {
            outlier_detection: Some(OutlierDetectionSpec {
                base_ejection_time: Some("10m".into()),
                ..Default::default()
            }),
            ..minimal_spec()
        };
        let o = BackendPolicyModel::try_from(&only_base).unwrap().outlier;
        assert_eq!((o.base_ejection, o.max_ejection), (secs(600), secs(600)));

        let o = OutlierModel::default();
        assert_eq!(o.ejection_duration(1), secs(30));
        assert_eq!(o.ejection_duration(3), secs(90));
        assert_eq!(o.ejection_duration(10), secs(300));
        assert_eq!(o.ejection_duration(u32::MAX), secs(300));

        let inverted = BackendPolicySpec {
            outlier_detection: Some(OutlierDetectionSpec {
                base_ejection_time: Some("2m".into()),
                max_ejection_time: Some("1m".into()),
                ..Default::default()
            }),
            ..minimal_spec()
        };
        let p = problems_of(&inverted);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "spec.outlierDetection.maxEjectionTime");
        assert!(p[0].message.contains("shorter than baseEjectionTime 2m"), "{}", p[0]);

        let zero_percent = BackendPolicySpec {
            outlier_detection: Some(OutlierDetectionSpec { max_ejection_percent: Some(0), ..Default::default() }),
            ..minimal_spec()
        };
        assert_eq!(BackendPolicyModel::try_from(&zero_percent).unwrap().outlier.max_ejection_percent, 0);
    }

    #[test]
    fn invalid_spec_lists_every_problem() {
        let yaml = r#"
targetRefs:
  - group: apps
    kind: Deployment
    name: ""
loadBalancer:
  algorithm: ConsistentHash
  hash:
    header: "X User"
    cookie: session
healthCheck:
  type: HTTP
  http:
    path: healthz
    expectedStatuses:
      - {start: 99, end: 200}
      - {start: 300, end: 200}
  interval: 5 seconds
  timeout: 0s
  healthyThreshold: 0
outlierDetection:
  consecutiveFailures: 0
  maxEjectionPercent: 150
connectTimeout: 1.5s
"#;
        let spec: BackendPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        let err = BackendPolicyModel::try_from(&spec).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.targetRefs[0].group",
                "spec.targetRefs[0].kind",
                "spec.targetRefs[0].name",
                "spec.loadBalancer.hash.header",
                "spec.loadBalancer.hash",
                "spec.healthCheck.http.path",
                "spec.healthCheck.http.expectedStatuses[0].start",
                "spec.healthCheck.http.expectedStatuses[1]",
                "spec.healthCheck.interval",
                "spec.healthCheck.timeout",
                "spec.healthCheck.healthyThreshold",
                "spec.outlierDetection.consecutiveFailures",
                "spec.outlierDetection.maxEjectionPercent",
                "spec.connectTimeout",
            ]
        );

        let text = err.to_string();
        assert!(text.starts_with("invalid BackendPolicy spec (14 problems): (1) spec.targetRefs[0].group: "), "{text}");
        assert!(
            text.contains(
                r#"spec.healthCheck.interval: "5 seconds" is not a duration; use a Gateway API duration such as 5s, 500ms or 1m"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"spec.healthCheck.timeout: "0s" must be greater than zero"#), "{text}");
        assert!(text.contains("sets header and cookie"), "{text}");
        assert!(text.contains("start 300 is greater than end 200; swap them"), "{text}");
        assert!(text.contains("99 is not an HTTP status code"), "{text}");
        assert!(text.contains("150 is over 100"), "{text}");
        assert!(text.contains(r#""Deployment" is not supported"#), "{text}");
        // Problems are numbered and separated, not run together.
        assert!(text.contains("; (14) spec.connectTimeout: \"1.5s\" is not a duration"), "{text}");
    }

    #[test]
    fn target_refs_are_checked() {
        let empty = BackendPolicySpec { target_refs: vec![], ..minimal_spec() };
        assert_eq!(fields_of(&empty), ["spec.targetRefs"]);

        let mut bad_section = target("web");
        bad_section.section_name = Some(String::new());
        let spec = BackendPolicySpec { target_refs: vec![target("ok"), bad_section], ..minimal_spec() };
        assert_eq!(fields_of(&spec), ["spec.targetRefs[1].sectionName"]);
    }

    #[test]
    fn tcp_check_rejects_http_settings_and_single_problem_display() {
        let spec = BackendPolicySpec {
            health_check: Some(HealthCheckSpec {
                type_: HealthCheckType::Tcp,
                http: Some(HttpHealthCheckSpec::default()),
                ..Default::default()
            }),
            ..minimal_spec()
        };
        let err = BackendPolicyModel::try_from(&spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid BackendPolicy spec (1 problem): spec.healthCheck.http: is only used with type HTTP; \
             remove it or set type: HTTP"
        );
    }

    #[test]
    fn unknown_enum_values_are_rejected_by_serde() {
        assert!(serde_saphyr::from_str::<BackendPolicySpec>(
            "targetRefs: [{name: a}]\nloadBalancer: {algorithm: Random}\n"
        )
        .is_err());
        assert!(serde_saphyr::from_str::<BackendPolicySpec>("targetRefs: [{name: a}]\nhealthCheck: {type: http}\n")
            .is_err());
    }

    #[test]
    fn crd_describes_the_resource() {
        use kube::CustomResourceExt;
        let crd = BackendPolicy::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("backendpolicies.weir.dev"));
        assert_eq!(crd.spec.group, "weir.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "BackendPolicy");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert_eq!(crd.metadata.labels.as_ref().and_then(|l| l.get(POLICY_LABEL)).map(String::as_str), Some("Direct"));

        let yaml = crd_yaml();
        for needle in [
            "targetRefs:",
            "sectionName:",
            "expectedStatuses:",
            "- RoundRobin",
            "- LeastLatency",
            "- ConsistentHash",
            "- HTTP",
            "- TCP",
            "maxEjectionPercent:",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle:?}:\n{yaml}");
        }
        // Structural schema: no unresolved references or untyped unions.
        assert!(!yaml.contains("$ref"), "{yaml}");
        assert!(!yaml.contains("oneOf"), "{yaml}");
        assert!(!yaml.contains("anyOf"), "{yaml}");
    }

    #[test]
    fn crd_file_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds/backendpolicies.weir.dev.yaml");
        let on_disk = std::fs::read_to_string(path).expect("deploy/crds/backendpolicies.weir.dev.yaml exists");
        assert!(
            on_disk == crd_yaml(),
            "{path} is stale; regenerate it from api::backend_policy::crd_yaml() (`weir crds`)"
        );
    }

    #[test]
    fn header_names() {
        assert!(is_token("X-User-Id"));
        assert!(is_token("x_b3.trace~id"));
        assert!(!is_token(""));
        assert!(!is_token("X User"));
        assert!(!is_token(":authority"));
        assert!(!is_token("Ünicode"));
    }
}
