//! Circuit breaking: a pool admits at most `maxRequests` requests in flight,
//! `maxPendingRequests` waiting for a connection and `maxConnections` connections to its
//! endpoints; a request over a limit is failed at once (503) rather than queued behind a
//! saturated Service, as Envoy's circuit breakers do.
//!
//! Connections are counted by Pingora's connector (weir's patch in `vendor/pingora-core`): it asks
//! the pool's [`Gate`] before opening an HTTP/2 connection, and keeps what it gets for as long as
//! the connection lives. It opens one only when the open ones have no free stream, and one at a
//! time per endpoint, so a request refused is one that could not have been carried.

use std::any::Any;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use pingora::upstreams::peer::ConnectionGate;
use pingora::{Error, ErrorType};

use super::Pool;

/// One of the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Requests in flight, from routing to the last byte.
    Requests,
    /// Requests waiting for a connection to an endpoint (connect and handshake).
    Pending,
    /// Connections open or opening to the pool's endpoints.
    Connections,
}

impl Limit {
    /// The label value in metrics, and the policy field named in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "maxRequests",
            Limit::Pending => "maxPendingRequests",
            Limit::Connections => "maxConnections",
        }
    }
}

/// The pool's counts against its limits.
#[derive(Default)]
pub struct Counters {
    requests: AtomicU32,
    pending: AtomicU32,
    connections: AtomicU32,
}

impl Counters {
    fn of(&self, limit: Limit) -> &AtomicU32 {
        match limit {
            Limit::Requests => &self.requests,
            Limit::Pending => &self.pending,
            Limit::Connections => &self.connections,
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
            Limit::Connections => "connections open to its endpoints, each with no free stream",
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
            Limit::Connections => cb.max_connections,
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

/// The error type of a connection refused by `maxConnections` (its context says why).
pub const CONNECTIONS_FULL: ErrorType = ErrorType::Custom("circuit breaker: maxConnections");

/// What Pingora's connector asks before opening a connection to one of the pool's endpoints.
pub struct Gate(pub(super) Weak<Pool>);

impl ConnectionGate for Gate {
    fn open(&self) -> pingora::Result<Box<dyn Any + Send + Sync>> {
        let Some(pool) = self.0.upgrade() else {
            return Error::e_explain(ErrorType::ConnectError, "the pool is gone");
        };
        match pool.hold(Limit::Connections) {
            Ok(held) => Ok(Box::new(held)),
            Err(o) => Error::e_explain(CONNECTIONS_FULL, o.to_string()),
        }
    }
}
