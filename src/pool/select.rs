//! Endpoint selection: smooth weighted round robin (default), P2C over peak-EWMA latency, and
//! Ketama consistent hashing (pingora's). Built when endpoints or the algorithm change; a pick
//! touches only atomics and takes no lock and no allocation.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use super::weighted::SmoothCycle;
use crate::policy::AlgorithmModel;

/// Weight of the newest sample in the latency average when it is not a new peak.
const EWMA_ALPHA: f64 = 0.3;
/// Latency assumed for an endpoint with no samples yet, so new endpoints get tried.
const INITIAL_LATENCY: Duration = Duration::from_millis(1);
/// How far a consistent-hash walk may go looking for a usable endpoint.
const MAX_HASH_STEPS: usize = 256;

/// Per-endpoint counters that outlive endpoint churn and algorithm changes.
#[derive(Debug)]
pub struct EndpointStats {
    pub addr: SocketAddr,
    pub inflight: AtomicU64,
    /// Peak-EWMA latency in nanoseconds, as f64 bits.
    latency: AtomicU64,
    pub consecutive_failures: AtomicU32,
    pub ejections: AtomicU32,
    pub ejected: AtomicBool,
}

impl EndpointStats {
    pub fn new(addr: SocketAddr) -> Self {
        EndpointStats {
            addr,
            inflight: AtomicU64::new(0),
            latency: AtomicU64::new((INITIAL_LATENCY.as_nanos() as f64).to_bits()),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
        }
    }

    /// Records a response time: a new peak is taken at once, lower values decay in slowly
    /// (peak-EWMA, as Finagle and Linkerd do), so a slow endpoint is avoided quickly.
    pub fn observe_latency(&self, rtt: Duration) {
        let sample = rtt.as_nanos() as f64;
        let old = f64::from_bits(self.latency.load(Relaxed));
        let new = if sample > old { sample } else { old + EWMA_ALPHA * (sample - old) };
        self.latency.store(new.to_bits(), Relaxed);
    }

    pub fn latency(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.latency.load(Relaxed)) as u64)
    }

    /// P2C cost: latency scaled by the work already queued on the endpoint.
    fn cost(&self) -> f64 {
        f64::from_bits(self.latency.load(Relaxed)) * (self.inflight.load(Relaxed) + 1) as f64
    }
}

enum Kind {
    RoundRobin(SmoothCycle),
    LeastLatency(AtomicU64),
    Hash { ring: Arc<KetamaHashing>, index: HashMap<SocketAddr, usize> },
}

/// The endpoints of a pool in the order an algorithm prefers them.
pub struct Selector {
    /// pingora backends, for health lookups in the pool's view.
    pub backends: Vec<Backend>,
    pub stats: Vec<Arc<EndpointStats>>,
    kind: Kind,
}

fn inet(b: &Backend) -> Option<SocketAddr> {
    b.addr.as_inet().copied()
}

impl Selector {
    /// Builds the selector for `backends`, taking each endpoint's stats from `stats`; round robin
    /// continues from `previous`'s position.
    pub fn build(
        backends: &BTreeSet<Backend>,
        stats: &HashMap<SocketAddr, Arc<EndpointStats>>,
        algorithm: &AlgorithmModel,
        previous: Option<&Selector>,
    ) -> Self {
        let list: Vec<Backend> = backends.iter().filter(|b| inet(b).is_some()).cloned().collect();
        let stats: Vec<Arc<EndpointStats>> = list
            .iter()
            .filter_map(inet)
            .map(|a| stats.get(&a).cloned().unwrap_or_else(|| Arc::new(EndpointStats::new(a))))
            .collect();
        let kind = match algorithm {
            AlgorithmModel::RoundRobin => {
                let position = match previous.map(|p| &p.kind) {
                    Some(Kind::RoundRobin(cycle)) => cycle.position(),
                    _ => Arc::default(),
                };
                let weights: Vec<u32> = list.iter().map(|b| b.weight as u32).collect();
                Kind::RoundRobin(SmoothCycle::continuing(&weights, position))
            }
            AlgorithmModel::LeastLatency => Kind::LeastLatency(AtomicU64::new(0x9E37_79B9_7F4A_7C15)),
            AlgorithmModel::ConsistentHash(_) => Kind::Hash {
                ring: Arc::new(KetamaHashing::build(backends)),
                index: list.iter().enumerate().filter_map(|(i, b)| Some((inet(b)?, i))).collect(),
            },
        };
        Selector { backends: list, stats, kind }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.stats[i].addr
    }

    /// The first endpoint, in the algorithm's order, that `usable` accepts.
    pub fn pick(&self, key: &[u8], mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        match &self.kind {
            Kind::RoundRobin(cycle) => {
                let start = cycle.next_start();
                (0..cycle.len()).filter_map(|step| cycle.at(start + step)).find(|&i| usable(i))
            }
            Kind::LeastLatency(seed) => {
                let (first, second) = if n == 1 {
                    (0, 0)
                } else {
                    let r = xorshift(seed);
                    let a = (r % n as u64) as usize;
                    let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                    if self.stats[b].cost() < self.stats[a].cost() {
                        (b, a)
                    } else {
                        (a, b)
                    }
                };
                [first, second].into_iter().chain((0..n).filter(|&i| i != first && i != second)).find(|&i| usable(i))
            }
            Kind::Hash { ring, index } => {
                let mut it = ring.iter(key);
                (0..MAX_HASH_STEPS)
                    .map_while(|_| it.next().and_then(inet))
                    .filter_map(|a| index.get(&a).copied())
                    .find(|&i| usable(i))
            }
        }
    }
}

fn xorshift(state: &AtomicU64) -> u64 {
    let mut x = state.load(Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.store(x, Relaxed);
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HashKey;

    fn selector(n: usize, algorithm: AlgorithmModel) -> Selector {
        let backends: BTreeSet<Backend> =
            (0..n).map(|i| Backend::new(&format!("10.0.0.{}:80", i + 1)).unwrap()).collect();
        Selector::build(&backends, &HashMap::new(), &algorithm, None)
    }

    #[test]
    fn round_robin_visits_every_endpoint_evenly() {
        let s = selector(3, AlgorithmModel::RoundRobin);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[s.pick(b"", |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn unusable_endpoints_are_skipped() {
        for algorithm in [
            AlgorithmModel::RoundRobin,
            AlgorithmModel::LeastLatency,
            AlgorithmModel::ConsistentHash(HashKey::SourceIp),
        ] {
            let s = selector(4, algorithm);
            for k in 0..50u8 {
                assert_eq!(s.pick(&[k], |i| i == 2), Some(2));
                assert_eq!(s.pick(&[k], |_| false), None);
            }
        }
    }

    #[test]
    fn least_latency_prefers_the_faster_endpoint() {
        let s = selector(2, AlgorithmModel::LeastLatency);
        s.stats[0].observe_latency(Duration::from_millis(50));
        s.stats[1].observe_latency(Duration::from_micros(100));
        let fast = s.stats.iter().position(|st| st.latency() < Duration::from_millis(1)).unwrap();
        assert!((0..100).all(|_| s.pick(b"", |_| true) == Some(fast)));
    }

    #[test]
    fn consistent_hash_is_stable_per_key() {
        let s = selector(5, AlgorithmModel::ConsistentHash(HashKey::Header("x-user".into())));
        let first: Vec<_> = (0..20u8).map(|k| s.pick(&[k], |_| true)).collect();
        let again: Vec<_> = (0..20u8).map(|k| s.pick(&[k], |_| true)).collect();
        assert_eq!(first, again);
        let distinct: BTreeSet<_> = first.iter().collect();
        assert!(distinct.len() > 1, "different keys spread: {first:?}");
    }
}
