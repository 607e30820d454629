//! Circuit breaking: a pool admits at most `maxRequests` requests in flight and
//! `maxPendingRequests` waiting for a connection; a request over a limit is failed at once (503)
//! rather than queued behind a saturated Service, as Envoy's circuit breakers do.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use super::Pool;

/// One of the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Requests in flight, from routing to the last byte.
    Requests,
    /// Requests waiting for a connection to an endpoint (connect and handshake).
    Pending,
}

impl Limit {
    /// The label value in metrics, and the policy field named in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "maxRequests",
            Limit::Pending => "maxPendingRequests",
        }
    }
}

/// The pool's counts against its limits.
#[derive(Default)]
pub struct Counters {
    requests: AtomicU32,
    pending: AtomicU32,
}

impl Counters {
    fn of(&self, limit: Limit) -> &AtomicU32 {
        match limit {
            Limit::Requests => &self.requests,
            Limit::Pending => &self.pending,
        }
    }
}

/// A request counted against one limit of a pool until dropped.
pub struct Held {
    pool: Arc<Pool>,
    limit: Limit,
}

/// A request refused by a limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow {
    pub limit: Limit,
    pub max: u32,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.limit {
            Limit::Requests => "requests in flight",
            Limit::Pending => "requests waiting for a connection",
        };
        write!(f, "circuit breaker open: {} {what} (BackendPolicy circuitBreaker.{})", self.max, self.limit.as_str())
    }
}

impl Pool {
    /// Counts one more request against `limit`, or refuses it when the limit is reached.
    pub fn hold(self: &Arc<Self>, limit: Limit) -> Result<Held, Overflow> {
        let cb = &self.spec.load().policy.circuit_breaker;
        let max = match limit {
            Limit::Requests => cb.max_requests,
            Limit::Pending => cb.max_pending_requests,
        };
        let counter = self.breaker.of(limit);
        if counter.fetch_add(1, Relaxed) >= max {
            counter.fetch_sub(1, Relaxed);
            return Err(Overflow { limit, max });
        }
        Ok(Held { pool: self.clone(), limit })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.pool.breaker.of(self.limit).fetch_sub(1, Relaxed);
    }
}
