//! Upstream pools: one long-lived pool per Service port, shared by every route and both tiers.
//!
//! Built on pingora-load-balancing: a `LoadBalancer` over a view of a shared `HealthRegistry`
//! keyed by address only, so endpoint churn and weight changes keep health state. Endpoint
//! updates are applied in place; active health checks run in a background task; passive
//! outlier detection disables an endpoint in the view for a growing time.

pub mod health;
pub mod select;
pub mod weighted;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::{Backend, Backends, Extensions, HealthRegistry, LoadBalancer};
use serde::Serialize;

use crate::policy::AlgorithmModel;
use crate::translate::{PoolKey, PoolSpec};
pub use select::{stats, EndpointStats, Selector};

/// How far a selection may walk the candidate list before giving up.
const MAX_SELECT_ITERATIONS: usize = 256;

/// The current endpoint set, read by every load-balancer view of the pool.
#[derive(Default)]
struct SharedEndpoints(ArcSwap<BTreeSet<Backend>>);

struct Discovery(Arc<SharedEndpoints>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok(((**self.0 .0.load()).clone(), HashMap::new()))
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

/// One pool.
pub struct Pool {
    pub key: PoolKey,
    spec: ArcSwap<PoolSpec>,
    lb: ArcSwap<LoadBalancer<Selector>>,
    registry: Arc<HealthRegistry>,
    endpoints: Arc<SharedEndpoints>,
    check: Arc<health::SwappableCheck>,
    stats: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
    health_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn address_key(b: &Backend) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.addr.hash(&mut h);
    h.finish()
}

fn view(
    registry: &Arc<HealthRegistry>,
    endpoints: &Arc<SharedEndpoints>,
    algorithm: &AlgorithmModel,
) -> LoadBalancer<Selector> {
    let backends = Backends::new_with_health_registry(Box::new(Discovery(endpoints.clone())), registry.clone());
    let lb = LoadBalancer::from_backends_with_config(backends, Some(algorithm.clone()));
    // the discovery never waits, so this completes at once
    let _ = lb.update().now_or_never();
    lb
}

impl Pool {
    fn new(key: PoolKey, spec: PoolSpec) -> Arc<Self> {
        // health is keyed by address alone: a weight change must not reset it
        let registry = Arc::new(HealthRegistry::with_equivalence(address_key));
        let check = Arc::new(health::SwappableCheck::default());
        registry.set_health_check(Box::new(health::SharedCheck(check.clone())));
        let endpoints = Arc::new(SharedEndpoints::default());
        let lb = view(&registry, &endpoints, &spec.policy.algorithm);
        let pool = Arc::new(Pool {
            key,
            spec: ArcSwap::from_pointee(spec.clone()),
            lb: ArcSwap::from_pointee(lb),
            registry,
            endpoints,
            check,
            stats: Mutex::new(HashMap::new()),
            health_task: Mutex::new(None),
        });
        pool.apply(spec, true);
        pool
    }

    /// Applies a new spec in place: endpoints, algorithm, health check.
    fn apply(self: &Arc<Self>, spec: PoolSpec, force: bool) {
        let old = self.spec.load_full();
        if !force && *old == spec {
            return;
        }
        let set: BTreeSet<Backend> = {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            let routable: Vec<SocketAddr> = spec.routable().collect();
            stats.retain(|addr, _| routable.contains(addr));
            routable
                .into_iter()
                .map(|addr| {
                    let s = stats.entry(addr).or_insert_with(|| Arc::new(EndpointStats::new(addr))).clone();
                    let mut ext = Extensions::new();
                    ext.insert(s);
                    Backend { addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr), weight: 1, ext }
                })
                .collect()
        };
        self.endpoints.0.store(Arc::new(set));
        if force || old.policy.algorithm != spec.policy.algorithm {
            self.lb.store(Arc::new(view(&self.registry, &self.endpoints, &spec.policy.algorithm)));
        } else {
            let _ = self.lb.load().update().now_or_never();
        }
        if force || old.policy.health_check != spec.policy.health_check {
            self.check.set(spec.policy.health_check.as_ref());
            self.restart_health_checks(spec.policy.health_check.as_ref().map(|h| h.interval));
        }
        self.spec.store(Arc::new(spec));
    }

    fn restart_health_checks(self: &Arc<Self>, interval: Option<std::time::Duration>) {
        let mut task = self.health_task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = task.take() {
            t.abort();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let weak = Arc::downgrade(self);
        *task = Some(runtime.spawn(async move {
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
        }));
    }

    pub fn spec(&self) -> Arc<PoolSpec> {
        self.spec.load_full()
    }

    /// Picks a healthy endpoint, skipping `exclude` (endpoints this request already tried).
    pub fn select(&self, hash_key: &[u8], exclude: &[SocketAddr]) -> Option<Backend> {
        self.lb.load().select_with(hash_key, MAX_SELECT_ITERATIONS, |b, healthy| {
            healthy && b.addr.as_inet().is_none_or(|a| !exclude.contains(a))
        })
    }

    /// Number of endpoints traffic may go to.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.0.load().len()
    }

    /// Records the outcome of a request to an endpoint for passive outlier detection.
    /// Returns true when this failure ejected the endpoint.
    pub fn report(self: &Arc<Self>, endpoint: &EndpointStats, success: bool) -> bool {
        if success {
            endpoint.consecutive_failures.store(0, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        let outlier = self.spec.load().policy.outlier.clone();
        let failures = endpoint.consecutive_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if failures < outlier.consecutive_failures || endpoint.ejected.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let (total, ejected) = {
            let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            (stats.len(), stats.values().filter(|s| s.ejected.load(std::sync::atomic::Ordering::Relaxed)).count())
        };
        if (ejected + 1) * 100 > total * outlier.max_ejection_percent as usize {
            return false;
        }
        health::eject(self.clone(), endpoint, &outlier);
        true
    }

    fn set_enabled(&self, addr: SocketAddr, enabled: bool) {
        let b =
            Backend { addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr), weight: 1, ext: Extensions::new() };
        self.lb.load().backends().set_enable(&b, enabled);
    }

    /// Every endpoint with its health.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let lb = self.lb.load();
        lb.backends()
            .get_backend()
            .iter()
            .filter_map(|b| {
                let s = stats(b)?;
                Some(EndpointStatus {
                    addr: s.addr,
                    healthy: lb.backends().ready(b),
                    ejected: s.ejected.load(std::sync::atomic::Ordering::Relaxed),
                    ejections: s.ejections.load(std::sync::atomic::Ordering::Relaxed),
                    inflight: s.inflight.load(std::sync::atomic::Ordering::Relaxed),
                    latency_ms: s.latency().as_secs_f64() * 1000.0,
                })
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
}

impl PoolRegistry {
    /// Makes the registry hold exactly `specs`: new pools are created, existing ones updated in
    /// place, and pools no longer referenced are dropped (requests still using them finish).
    pub fn sync(&self, specs: &BTreeMap<PoolKey, PoolSpec>) -> BTreeMap<PoolKey, Arc<Pool>> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|k, _| specs.contains_key(k));
        for (key, spec) in specs {
            match pools.get(key) {
                Some(pool) => pool.apply(spec.clone(), false),
                None => {
                    pools.insert(key.clone(), Pool::new(key.clone(), spec.clone()));
                }
            }
        }
        pools.clone()
    }

    pub fn all(&self) -> BTreeMap<PoolKey, Arc<Pool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
