//! Upstream pools: one long-lived pool per Service port, shared by every route and both tiers.
//!
//! Health comes from pingora-load-balancing: each pool is a `Backends` view over a
//! `HealthRegistry` keyed by address only, so endpoint churn and weight changes keep health
//! state; active checks run in a background task; passive outlier detection disables an
//! endpoint in the view for a growing time. Selection is weir's own [`Selector`] (rebuilt when
//! endpoints or the algorithm change), so a pick allocates nothing.

pub mod attempt;
pub mod breaker;
pub mod health;
pub mod select;
pub mod weighted;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::{Backend, Backends, Extensions, HealthRegistry};
use serde::Serialize;

use crate::resilience::RetryBudget;
use crate::translate::{PoolKey, PoolSpec};
pub use select::{EndpointStats, Selector};

/// The current endpoint addresses, read by the pool's view on update (which keeps its own set
/// of them: only the addresses are kept here, 5,000 pools' sets cost megabytes).
#[derive(Default)]
struct SharedEndpoints(ArcSwap<Vec<SocketAddr>>);

struct Discovery(Arc<SharedEndpoints>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.0 .0.load().iter().map(|a| backend(*a)).collect(), HashMap::new()))
    }
}

/// An endpoint's state, for the config dump and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointStatus {
    pub addr: SocketAddr,
    /// Passes active health checks and is not ejected.
    pub healthy: bool,
    pub ejected: bool,
    pub ejections: u32,
    pub inflight: u64,
    pub latency_ms: f64,
}

/// Whether a failed request is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryVerdict {
    Granted,
    /// This failure is not one the request is tried again for (a sent request whose method or
    /// body cannot be sent again, a tier that does not retry it, a deadline passed).
    NotRetryable,
    /// The request used every retry it may have.
    AttemptsUsed,
    /// Every endpoint not yet tried is down, ejected or gone.
    NoEndpointLeft,
    /// The pool's retry budget has no room: the Service fails too much to retry more.
    BudgetSpent,
}

impl RetryVerdict {
    pub fn granted(self) -> bool {
        self == RetryVerdict::Granted
    }
}

/// The endpoint a request goes to.
pub struct Picked {
    pub addr: SocketAddr,
    pub stats: Arc<EndpointStats>,
}

/// One pool.
pub struct Pool {
    pub key: PoolKey,
    spec: ArcSwap<PoolSpec>,
    view: Backends,
    selector: ArcSwap<Selector>,
    registry: Arc<HealthRegistry>,
    endpoints: Arc<SharedEndpoints>,
    check: Arc<health::SwappableCheck>,
    /// Stats by address, kept while the address stays in the pool. Config path only.
    stats: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
    health_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Bounds retries to this pool (Linkerd's defaults), so a failing pool is not hammered.
    pub retry_budget: RetryBudget,
    /// Counts against the circuit-breaker limits.
    pub breaker: breaker::Counters,
    /// Counts the connections to the endpoints against `maxConnections` (given to the connector).
    pub gate: Arc<breaker::Gate>,
}

fn address_key(b: &Backend) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.addr.hash(&mut h);
    h.finish()
}

fn backend(addr: SocketAddr) -> Backend {
    Backend { addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr), weight: 1, ext: Extensions::new() }
}

impl Pool {
    fn new(key: PoolKey, spec: PoolSpec) -> Arc<Self> {
        // health is keyed by address alone: a weight change must not reset it
        let registry = Arc::new(HealthRegistry::with_equivalence(address_key));
        let check = Arc::new(health::SwappableCheck::default());
        registry.set_health_check(Box::new(health::SharedCheck(check.clone())));
        let endpoints = Arc::new(SharedEndpoints::default());
        let view = Backends::new_with_health_registry(Box::new(Discovery(endpoints.clone())), registry.clone());
        let selector = Selector::build(&BTreeSet::new(), &HashMap::new(), &spec.policy.algorithm, None);
        let pool = Arc::new_cyclic(|pool| Pool {
            key,
            spec: ArcSwap::from_pointee(spec.clone()),
            view,
            selector: ArcSwap::from_pointee(selector),
            registry,
            endpoints,
            check,
            stats: Mutex::new(HashMap::new()),
            health_task: Mutex::new(None),
            retry_budget: RetryBudget::default(),
            breaker: breaker::Counters::default(),
            gate: Arc::new(breaker::Gate(pool.clone())),
        });
        pool.apply(spec, true);
        pool
    }

    /// Applies a new spec in place: endpoints, algorithm, health check. Returns whether it
    /// differed from the pool's.
    fn apply(self: &Arc<Self>, spec: PoolSpec, force: bool) -> bool {
        let old = self.spec.load_full();
        if !force && *old == spec {
            return false;
        }
        let routable: Vec<SocketAddr> = spec.routable().collect();
        let stats = {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.retain(|addr, _| routable.contains(addr));
            for addr in &routable {
                stats.entry(*addr).or_insert_with(|| Arc::new(EndpointStats::new(*addr)));
            }
            stats.clone()
        };
        self.endpoints.0.store(Arc::new(routable));
        // the discovery never waits, so this completes at once
        let _ = self.view.update(|_| {}).now_or_never();
        let previous = self.selector.load_full();
        let selector = Selector::build(&self.view.get_backend(), &stats, &spec.policy.algorithm, Some(&previous));
        self.selector.store(Arc::new(selector));
        if force || old.policy.health_check != spec.policy.health_check {
            self.check.set(spec.policy.health_check.as_ref());
            self.restart_health_checks(spec.policy.health_check.as_ref().map(|h| h.interval));
        }
        self.spec.store(Arc::new(spec));
        true
    }

    fn restart_health_checks(self: &Arc<Self>, interval: Option<std::time::Duration>) {
        let mut task = self.health_task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = task.take() {
            t.abort();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let weak = Arc::downgrade(self);
        let checks = runtime.spawn(async move {
            loop {
                let Some(pool) = weak.upgrade() else { return };
                let registry = pool.registry.clone();
                drop(pool);
                // with no active check configured this pass marks everything healthy once
                registry.run_health_check(true).await;
                match interval {
                    Some(i) => tokio::time::sleep(i).await,
                    None => return,
                }
            }
        });
        // a single pass is left to finish on its own (its handle would keep the task's memory
        // while the pool lives: some hundred bytes for each of thousands of pools)
        *task = interval.is_some().then_some(checks);
    }

    pub fn spec(&self) -> Arc<PoolSpec> {
        self.spec.load_full()
    }

    /// Picks a healthy endpoint, skipping `exclude` (endpoints this request already tried).
    /// Takes no lock and allocates nothing.
    pub fn select(&self, hash_key: &[u8], exclude: &[SocketAddr]) -> Option<Picked> {
        let sel = self.selector.load();
        let i =
            sel.pick(hash_key, |i| !exclude.contains(&sel.addr(i)) && self.usable(&sel.backends[i], &sel.stats[i]))?;
        Some(Picked { addr: sel.addr(i), stats: sel.stats[i].clone() })
    }

    /// Healthy and not ejected. pingora's view answers only for its current membership, and an
    /// endpoint change publishes the view's new membership a moment before weir's selector for
    /// it; in that moment the selector's endpoints may be unknown to the view (all of them when
    /// the endpoints were replaced), and they stay usable unless ejected rather than the request
    /// getting a 503 (found by tests/reload.rs under load).
    fn usable(&self, backend: &Backend, stats: &EndpointStats) -> bool {
        self.view.ready(backend) || (!stats.ejected.load(Relaxed) && !self.view.get_backend().contains(backend))
    }

    /// Number of endpoints traffic may go to.
    pub fn endpoint_count(&self) -> usize {
        self.selector.load().backends.len()
    }

    /// Whether a request that failed may try another endpoint: one is left that it has not
    /// tried, and the pool's retry budget allows it (taking one retry from it).
    pub fn may_retry_elsewhere(&self, tried: &[SocketAddr]) -> RetryVerdict {
        if self.select(&[], tried).is_none() {
            RetryVerdict::NoEndpointLeft
        } else if !self.retry_budget.try_withdraw() {
            RetryVerdict::BudgetSpent
        } else {
            RetryVerdict::Granted
        }
    }

    /// Records the outcome of a request to an endpoint for passive outlier detection.
    /// Returns true when this failure ejected the endpoint.
    pub fn report(self: &Arc<Self>, endpoint: &EndpointStats, success: bool) -> bool {
        if success {
            endpoint.consecutive_failures.store(0, Relaxed);
            return false;
        }
        let outlier = self.spec.load().policy.outlier.clone();
        let failures = endpoint.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures < outlier.consecutive_failures || endpoint.ejected.load(Relaxed) {
            return false;
        }
        let (total, ejected) = {
            let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            (stats.len(), stats.values().filter(|s| s.ejected.load(Relaxed)).count())
        };
        if (ejected + 1) * 100 > total * outlier.max_ejection_percent as usize {
            return false;
        }
        health::eject(self.clone(), endpoint, &outlier);
        true
    }

    fn set_enabled(&self, addr: SocketAddr, enabled: bool) {
        self.view.set_enable(&backend(addr), enabled);
    }

    /// Every endpoint with its health.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let sel = self.selector.load();
        sel.backends
            .iter()
            .zip(&sel.stats)
            .map(|(b, s)| EndpointStatus {
                addr: s.addr,
                healthy: self.view.ready(b),
                ejected: s.ejected.load(Relaxed),
                ejections: s.ejections.load(Relaxed),
                inflight: s.inflight.load(Relaxed),
                latency_ms: s.latency().as_secs_f64() * 1000.0,
            })
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(t) = self.health_task.get_mut().ok().and_then(|t| t.take()) {
            t.abort();
        }
    }
}

/// Every pool, by key. Touched only when configuration changes.
#[derive(Default)]
pub struct PoolRegistry {
    pools: Mutex<BTreeMap<PoolKey, Arc<Pool>>>,
    /// Routes' weighted-split positions, by route, kept across rebuilds as the pools are.
    positions: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl PoolRegistry {
    /// The weighted-split position of the route `key` (a listener's or a Service's rule): the
    /// one its previous build used, so a rebuild continues the split where it was.
    pub fn position(&self, key: &str) -> Arc<AtomicUsize> {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.entry(key.to_string()).or_default().clone()
    }

    /// Makes the registry hold exactly `specs`: new pools are created, existing ones updated in
    /// place, and pools no longer referenced are dropped (requests still using them finish).
    pub fn sync(&self, specs: &BTreeMap<PoolKey, PoolSpec>) -> BTreeMap<PoolKey, Arc<Pool>> {
        // a build starts here: positions that no serving build holds any more go
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, p| Arc::strong_count(p) > 1);
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|k, _| specs.contains_key(k));
        for (key, spec) in specs {
            match pools.get(key) {
                Some(pool) => {
                    pool.apply(spec.clone(), false);
                }
                None => {
                    pools.insert(key.clone(), Pool::new(key.clone(), spec.clone()));
                }
            }
        }
        pools.clone()
    }

    /// Updates the pools of `specs` that exist, in place (an endpoint-only change): no pool is
    /// created or dropped, and every route keeps its split position. Each pool keeps the
    /// protocol translation gave it (a GRPCRoute's backends speak h2c whatever the Service
    /// port says, and a refresh reads the Service alone). Returns whether any pool changed.
    pub fn refresh(&self, specs: &BTreeMap<PoolKey, PoolSpec>) -> bool {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for (key, spec) in specs {
            if let Some(pool) = pools.get(key) {
                let spec = PoolSpec { protocol: pool.spec().protocol, ..spec.clone() };
                changed |= pool.apply(spec, false);
            }
        }
        changed
    }

    pub fn all(&self) -> BTreeMap<PoolKey, Arc<Pool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BackendPolicyModel;
    use crate::translate::{EndpointModel, UpstreamProtocol};

    #[test]
    fn a_refresh_says_whether_any_pool_changed() {
        let key = PoolKey { namespace: "ns".into(), service: "svc".into(), port: 80 };
        let addr = |i: u8| SocketAddr::from(([10, 0, 0, i], 80));
        let registry = PoolRegistry::default();
        let spec = PoolSpec::ready([addr(1)], BackendPolicyModel::default());
        registry.sync(&BTreeMap::from([(key.clone(), spec.clone())]));
        assert!(!registry.refresh(&BTreeMap::from([(key.clone(), spec)])), "the same endpoints");
        let moved = PoolSpec::ready([addr(2)], BackendPolicyModel::default());
        assert!(registry.refresh(&BTreeMap::from([(key.clone(), moved)])));
        assert_eq!(registry.all()[&key].select(b"", &[]).unwrap().addr, addr(2));
        let unknown = PoolKey { service: "gone".into(), ..key.clone() };
        let spec = PoolSpec::ready([addr(3)], BackendPolicyModel::default());
        assert!(!registry.refresh(&BTreeMap::from([(unknown, spec)])), "no pool is created by a refresh");
        // a pool a GRPCRoute made speak h2c keeps it through a refresh read from the Service
        let h2c = PoolSpec { protocol: UpstreamProtocol::H2c, ..PoolSpec::ready([addr(2)], Default::default()) };
        registry.sync(&BTreeMap::from([(key.clone(), h2c)]));
        assert!(registry.refresh(&BTreeMap::from([(key.clone(), PoolSpec::ready([addr(4)], Default::default()))])));
        assert_eq!(registry.all()[&key].spec().protocol, UpstreamProtocol::H2c);
    }

    #[test]
    fn round_robin_continues_through_endpoint_changes() {
        let key = PoolKey { namespace: "ns".into(), service: "svc".into(), port: 80 };
        let addr = |i: u8| SocketAddr::from(([10, 0, 0, i], 80));
        let registry = PoolRegistry::default();
        let mut spec = PoolSpec::ready([addr(1), addr(2)], BackendPolicyModel::default());
        let pool = registry.sync(&BTreeMap::from([(key.clone(), spec.clone())]))[&key].clone();
        let mut picks = vec![pool.select(b"", &[]).unwrap().addr];
        for i in 0..5u8 {
            // a Pod that is not ready yet joins the slice, then another: the endpoints change,
            // the routable ones do not
            spec.endpoints.push(EndpointModel { addr: addr(10 + i), ready: false, serving: false, terminating: false });
            registry.sync(&BTreeMap::from([(key.clone(), spec.clone())]));
            picks.push(pool.select(b"", &[]).unwrap().addr);
        }
        let firsts = picks.iter().filter(|a| **a == addr(1)).count();
        assert_eq!(firsts, 3, "alternating across six rebuilds, not restarting at the first: {picks:?}");
    }
}
