//! One request's use of a pool: the endpoint it holds (counted in flight), the endpoints it
//! already tried, and its retries. Shared by the edge and the mesh outbound proxies.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{EndpointStats, Pool, RetryVerdict};
use crate::policy::MAX_RETRY_ATTEMPTS;

/// Endpoints a request already tried, inline (no allocation per request).
struct Tried {
    addrs: [SocketAddr; MAX_RETRY_ATTEMPTS as usize + 1],
    len: usize,
}

/// What a request holds of a pool between picking an endpoint and finishing.
pub struct Attempt {
    tried: Tried,
    endpoint: Option<Arc<EndpointStats>>,
    pub retries: u32,
}

impl Default for Attempt {
    fn default() -> Self {
        Attempt {
            tried: Tried { addrs: [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_RETRY_ATTEMPTS as usize + 1], len: 0 },
            endpoint: None,
            retries: 0,
        }
    }
}

impl Attempt {
    /// Picks an endpoint not tried yet (`hash_key` for consistent hashing) and holds it. The
    /// first pick of a request pays into the pool's retry budget.
    pub fn pick(&mut self, pool: &Pool, hash_key: &[u8]) -> Option<SocketAddr> {
        let picked = pool.select(hash_key, self.tried())?;
        if self.tried.len == 0 {
            pool.retry_budget.deposit();
        }
        // pingora retries a failed reused connection without `fail_to_connect`: let go of the last
        self.release();
        picked.stats.inflight.fetch_add(1, Relaxed);
        self.endpoint = Some(picked.stats);
        if self.tried.len < self.tried.addrs.len() {
            self.tried.addrs[self.tried.len] = picked.addr;
            self.tried.len += 1;
        }
        Some(picked.addr)
    }

    /// Whether the request may be tried again: fewer than `max_retries` retries so far, an
    /// endpoint it has not tried is left, and the pool's retry budget has room (a granted retry
    /// is counted here and in the budget).
    pub fn may_retry(&mut self, pool: &Pool, max_retries: u32) -> RetryVerdict {
        if self.retries >= max_retries.min(MAX_RETRY_ATTEMPTS) {
            return RetryVerdict::AttemptsUsed;
        }
        let verdict = pool.may_retry_elsewhere(self.tried());
        self.retries += u32::from(verdict == RetryVerdict::Granted);
        verdict
    }

    /// The request is done with the held endpoint: reports the outcome for outlier detection.
    pub fn finish(&mut self, pool: &Arc<Pool>, success: bool) {
        if let Some(ep) = self.endpoint.take() {
            ep.inflight.fetch_sub(1, Relaxed);
            pool.report(&ep, success);
        }
    }

    /// The endpoint held, if any.
    pub fn endpoint(&self) -> Option<&Arc<EndpointStats>> {
        self.endpoint.as_ref()
    }

    /// Endpoints tried so far, in order.
    pub fn tried(&self) -> &[SocketAddr] {
        &self.tried.addrs[..self.tried.len]
    }

    /// Lets go of the held endpoint without reporting an outcome (the request never reached it).
    pub fn release(&mut self) {
        if let Some(ep) = self.endpoint.take() {
            ep.inflight.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Attempt {
    /// A request that ends without `finish` (e.g. dropped mid-flight) still stops counting.
    fn drop(&mut self) {
        self.release();
    }
}
