//! When and how soon a failed try is tried again: the retry settings of a request (its route's
//! timeouts, its Service's BackendPolicy, else the tier's defaults), the statuses and methods
//! that may be retried, and the exponential backoff with jitter between tries.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use crate::policy::RetryModel;
use crate::pool::attempt::Attempt;
use crate::pool::{Pool, RetryVerdict};
use crate::translate::{PoolSpec, RouteRetry, Timeouts};

/// What a request may spend on tries, fixed when it is routed.
pub struct TryPlan {
    /// The Service port's spec (its BackendPolicy), held for the request.
    spec: Arc<PoolSpec>,
    rule: &'static RetryRule,
    /// The route's own retry settings, over the policy's.
    route_retry: RouteRetry,
    /// The whole request must have its response headers by then.
    pub deadline: Option<Instant>,
    /// Longest one try may wait for the endpoint.
    pub per_try: Option<Duration>,
}

/// What a tier retries.
pub struct RetryRule {
    /// The retry settings when nothing else sets them.
    pub default: RetryModel,
    /// Whether a BackendPolicy's `retry` and a route's retry annotations apply.
    pub configurable: bool,
    /// Whether a try that was sent (then reset, timed out or answered a retried status) may be
    /// tried again; a connect failure (nothing was sent) always may.
    pub after_send: bool,
}

/// The mesh: a BackendPolicy's or a route's retries, else 2 retries of idempotent requests on
/// 502, 503, 504, connect failures, resets and per-try timeouts.
pub static MESH: LazyLock<RetryRule> =
    LazyLock::new(|| RetryRule { default: RetryModel::default(), configurable: true, after_send: true });

/// The edge: connect failures, and connections that failed before any answer to an idempotent
/// request, twice, on other endpoints; a request that got an answer, or timed out, is never
/// sent twice by the edge.
pub static EDGE: LazyLock<RetryRule> = LazyLock::new(|| RetryRule {
    default: RetryModel { attempts: 2, codes: vec![], ..RetryModel::default() },
    configurable: false,
    after_send: false,
});

/// A failed try, for [`TryPlan::retry_failed_try`].
#[derive(Clone, Copy, Debug)]
pub enum FailedTry<'a> {
    /// The connection failed: nothing was sent.
    Connect,
    /// The request was sent (`method`), and its body can be sent again (`replayable`).
    Sent { method: &'a Method, replayable: bool },
    /// The connection failed (reset or closed, not timed out) before any byte of an answer:
    /// a Pod stopping at SIGTERM. Retried like a connect failure when the connection was reused
    /// (an idle connection the endpoint had closed), else when the method may be retried.
    Unanswered { method: &'a Method, replayable: bool, reused: bool },
}

impl TryPlan {
    /// The plan of a request that started at `start`: route timeouts win over the policy's.
    pub fn new(
        spec: Arc<PoolSpec>,
        route: Timeouts,
        route_retry: RouteRetry,
        rule: &'static RetryRule,
        start: Instant,
    ) -> TryPlan {
        let timeouts = &spec.policy.timeouts;
        let deadline = route.request.or(timeouts.request).map(|t| start + t);
        let per_try = route.backend_request.or(timeouts.per_try);
        let route_retry = if rule.configurable { route_retry } else { RouteRetry::default() };
        TryPlan { spec, rule, route_retry, deadline, per_try }
    }

    /// Retries after the first try: the route's, else the policy's (or the default).
    pub fn attempts(&self) -> u32 {
        self.route_retry.attempts.unwrap_or(self.retry().attempts)
    }

    /// The retry settings: the BackendPolicy's where the tier lets it set them, else the tier's.
    pub fn retry(&self) -> &RetryModel {
        match &self.spec.policy.retry {
            Some(policy) if self.rule.configurable => policy,
            _ => &self.rule.default,
        }
    }

    /// A try failed (its endpoint already reported): whether the request is tried again on an
    /// endpoint it has not tried. A connect failure is, whatever the method; a connection that
    /// failed before any answer is when its body can be sent again and it was reused or its
    /// method may be retried (idempotent, or the policy says so); another sent request only
    /// where the tier retries sent requests, on the same conditions. Never past the deadline; then the
    /// attempts left and the pool's retry budget decide (a grant is counted in both).
    pub fn retry_failed_try(&self, attempt: &mut Attempt, pool: &Pool, failed: FailedTry<'_>) -> RetryVerdict {
        let retryable = match failed {
            FailedTry::Connect => true,
            FailedTry::Sent { method, replayable } => {
                self.rule.after_send && self.method_retryable(method) && replayable
            }
            FailedTry::Unanswered { method, replayable, reused } => {
                replayable && (reused || self.method_retryable(method))
            }
        };
        if !retryable {
            return RetryVerdict::NotRetryable;
        }
        if self.expired() {
            return RetryVerdict::NotRetryable;
        }
        attempt.may_retry(pool, self.attempts())
    }

    /// The Service port's spec.
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// How long the next try may wait for its endpoint: the per-try timeout, else `io_default`,
    /// never past the deadline.
    pub fn try_timeout(&self, io_default: Duration) -> Duration {
        let t = self.per_try.unwrap_or(io_default);
        self.remaining().map_or(t, |r| t.min(r))
    }

    /// How long the next try may take to connect: the policy's connect timeout, within the try's
    /// and the request's time.
    pub fn connect_timeout(&self) -> Duration {
        let t = self.spec.policy.connect_timeout;
        self.try_timeout(t).min(t)
    }

    /// Whether a request with `method` may be retried at all.
    pub fn method_retryable(&self, method: &Method) -> bool {
        self.route_retry.non_idempotent.unwrap_or(self.retry().non_idempotent) || method.is_idempotent()
    }

    /// Whether a response with `status` is retried.
    pub fn status_retryable(&self, status: u16) -> bool {
        self.retry().codes.contains(&status)
    }

    /// The wait before retry number `n` (1 for the first): `backoff × 2^(n-1)`, capped at
    /// `maxBackoff`, plus up to half of that again at random so that callers failing together
    /// do not retry together; never past the deadline.
    pub fn backoff(&self, n: u32) -> Duration {
        let retry = self.retry();
        let base = retry.backoff.saturating_mul(1 << n.saturating_sub(1).min(16)).min(retry.max_backoff);
        let wait = base + base.mul_f64(rand::random::<f64>() / 2.0);
        self.remaining().map_or(wait, |r| wait.min(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BackendPolicyModel;

    fn spec(policy: BackendPolicyModel) -> Arc<PoolSpec> {
        Arc::new(PoolSpec::ready([], policy))
    }

    fn plan(policy: &BackendPolicyModel) -> TryPlan {
        TryPlan::new(spec(policy.clone()), Timeouts::default(), RouteRetry::default(), &MESH, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap_with_at_most_half_again_of_jitter() {
        let p = plan(&BackendPolicyModel::default());
        for (n, base_ms) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (9, 250)] {
            let base = Duration::from_millis(base_ms);
            for _ in 0..50 {
                let wait = p.backoff(n);
                assert!(wait >= base && wait <= base + base / 2, "retry {n}: {wait:?} not in [{base:?}, 1.5×]");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_tries_and_backoff() {
        let mut policy = BackendPolicyModel::default();
        policy.timeouts.request = Some(Duration::from_millis(100));
        policy.timeouts.per_try = Some(Duration::from_millis(80));
        let p = plan(&policy);
        assert_eq!(p.try_timeout(Duration::from_secs(60)), Duration::from_millis(80));
        assert_eq!(p.connect_timeout(), Duration::from_millis(80), "within the try");
        let mut long_tries = policy.clone();
        long_tries.timeouts = crate::policy::TimeoutsModel { request: None, per_try: Some(Duration::from_secs(30)) };
        assert_eq!(plan(&long_tries).connect_timeout(), crate::policy::DEFAULT_CONNECT_TIMEOUT, "the policy's");
        tokio::time::advance(Duration::from_millis(70)).await;
        assert_eq!(p.try_timeout(Duration::from_secs(60)), Duration::from_millis(30), "what is left of 100ms");
        assert!(p.backoff(5) <= Duration::from_millis(30));
        tokio::time::advance(Duration::from_millis(30)).await;
        assert!(p.expired());
    }

    /// GEP-1742: `request` bounds the whole request, `backendRequest` each try within it.
    #[tokio::test(start_paused = true)]
    async fn the_request_deadline_caps_every_try_however_long_a_try_may_be() {
        let route =
            Timeouts { request: Some(Duration::from_millis(300)), backend_request: Some(Duration::from_secs(5)) };
        let p = TryPlan::new(spec(BackendPolicyModel::default()), route, RouteRetry::default(), &EDGE, Instant::now());
        assert_eq!(p.try_timeout(Duration::from_secs(60)), Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(p.try_timeout(Duration::from_secs(60)), Duration::from_millis(100), "a retry gets what is left");
        assert!(!p.expired());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(p.expired(), "then the request is answered 504");
        let tries_only = Timeouts { request: None, backend_request: Some(Duration::from_millis(250)) };
        let p =
            TryPlan::new(spec(BackendPolicyModel::default()), tries_only, RouteRetry::default(), &EDGE, Instant::now());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(p.try_timeout(Duration::from_secs(60)), Duration::from_millis(250), "no deadline: each try its own");
        assert_eq!(p.attempts(), 2, "the edge retries connect failures twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_timeout_wins_over_the_policy() {
        let mut policy = BackendPolicyModel::default();
        policy.timeouts.request = Some(Duration::from_secs(10));
        let route = Timeouts { request: Some(Duration::from_secs(1)), backend_request: None };
        let p = TryPlan::new(spec(policy.clone()), route, RouteRetry::default(), &MESH, Instant::now());
        assert_eq!(p.remaining(), Some(Duration::from_secs(1)));
        assert!(!p.method_retryable(&Method::POST) && p.method_retryable(&Method::PUT));
        assert!(p.status_retryable(503) && !p.status_retryable(500));
        assert_eq!(p.attempts(), 2);
        let says = RouteRetry { attempts: Some(0), non_idempotent: Some(true) };
        let p = TryPlan::new(spec(policy), route, says, &MESH, Instant::now());
        assert!(p.method_retryable(&Method::POST), "the route says POST may be retried");
        assert_eq!(p.attempts(), 0, "the route's attempts win");
    }

    /// Four ready endpoints, in a pool with a fresh retry budget.
    fn pool(policy: BackendPolicyModel) -> Arc<Pool> {
        let key = crate::translate::PoolKey { namespace: "ns".into(), service: "svc".into(), port: 80 };
        let addrs = (1..=4u8).map(|i| std::net::SocketAddr::from(([10, 0, 0, i], 80)));
        let registry = crate::pool::PoolRegistry::default();
        registry.sync(&std::collections::BTreeMap::from([(key.clone(), PoolSpec::ready(addrs, policy))]))[&key].clone()
    }

    /// Fails tries of `plan` as `failed` until it says no; the verdicts, in order.
    fn fail_until_refused(plan: &TryPlan, pool: &Pool, failed: FailedTry<'_>) -> Vec<RetryVerdict> {
        let mut attempt = Attempt::default();
        let mut verdicts = vec![];
        loop {
            attempt.pick(pool, b"").expect("an endpoint left");
            let verdict = plan.retry_failed_try(&mut attempt, pool, failed);
            verdicts.push(verdict);
            if verdict != RetryVerdict::Granted {
                return verdicts;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_tier_retries_what_its_rule_says_on_the_same_machinery() {
        use RetryVerdict::*;
        let mut policy = BackendPolicyModel::default();
        policy.retry = Some(RetryModel { attempts: 3, non_idempotent: true, ..RetryModel::default() });
        let p = pool(policy.clone());
        let (get, post) = (&Method::GET, &Method::POST);
        let sent = |method, replayable| FailedTry::Sent { method, replayable };
        let edge = TryPlan::new(p.spec(), Timeouts::default(), RouteRetry::default(), &EDGE, Instant::now());
        assert_eq!(fail_until_refused(&edge, &p, FailedTry::Connect), [Granted, Granted, AttemptsUsed], "twice");
        assert_eq!(fail_until_refused(&edge, &p, sent(get, true)), [NotRetryable], "the edge never resends");
        let unanswered = |method, replayable, reused| FailedTry::Unanswered { method, replayable, reused };
        assert_eq!(
            fail_until_refused(&edge, &p, unanswered(get, true, false)),
            [Granted, Granted, AttemptsUsed],
            "but a GET whose connection broke before any answer is tried elsewhere"
        );
        assert_eq!(fail_until_refused(&edge, &p, unanswered(post, true, false)), [NotRetryable], "a POST is not");
        assert_eq!(
            fail_until_refused(&edge, &p, unanswered(post, true, true))[0],
            Granted,
            "unless it went on a reused connection (the endpoint had closed it while idle)"
        );
        assert_eq!(fail_until_refused(&edge, &p, unanswered(get, false, true)), [NotRetryable], "a body gone");
        assert_eq!(edge.attempts(), 2, "a BackendPolicy's retry is the mesh's");
        let mesh = TryPlan::new(p.spec(), Timeouts::default(), RouteRetry::default(), &MESH, Instant::now());
        assert_eq!(fail_until_refused(&mesh, &p, sent(post, true)), [Granted, Granted, Granted, AttemptsUsed]);
        assert_eq!(fail_until_refused(&mesh, &p, sent(get, false)), [NotRetryable], "a body that cannot be replayed");
        let deadline = Timeouts { request: Some(Duration::from_millis(100)), backend_request: None };
        let late = TryPlan::new(p.spec(), deadline, RouteRetry::default(), &MESH, Instant::now());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(fail_until_refused(&late, &p, FailedTry::Connect), [NotRetryable], "never past the deadline");
    }
}
