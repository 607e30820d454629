//! Endpoint selection algorithms, as pingora-load-balancing `BackendSelection`s: smooth
//! weighted round robin (default), P2C over peak-EWMA latency, and Ketama consistent hashing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::selection::consistent::{KetamaHashing, OwnedNodeIterator};
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use super::weighted::SmoothCycle;
use crate::policy::AlgorithmModel;

/// Weight of the newest sample in the latency average when it is not a new peak.
const EWMA_ALPHA: f64 = 0.3;
/// Latency assumed for an endpoint with no samples yet, so new endpoints get tried.
const INITIAL_LATENCY: Duration = Duration::from_millis(1);

/// Per-endpoint counters that outlive endpoint churn (carried in `Backend::ext`).
#[derive(Debug)]
pub struct EndpointStats {
    pub addr: SocketAddr,
    pub inflight: AtomicU64,
    /// Peak-EWMA latency in nanoseconds, as f64 bits.
    latency: AtomicU64,
    pub consecutive_failures: AtomicU32,
    pub ejections: AtomicU32,
    pub ejected: std::sync::atomic::AtomicBool,
}

impl EndpointStats {
    pub fn new(addr: SocketAddr) -> Self {
        EndpointStats {
            addr,
            inflight: AtomicU64::new(0),
            latency: AtomicU64::new((INITIAL_LATENCY.as_nanos() as f64).to_bits()),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected: Default::default(),
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

/// The stats carried by a backend.
pub fn stats(b: &Backend) -> Option<&Arc<EndpointStats>> {
    b.ext.get::<Arc<EndpointStats>>()
}

/// The selection algorithm of a pool.
pub enum Selector {
    RoundRobin { backends: Vec<Backend>, cycle: SmoothCycle },
    LeastLatency { backends: Vec<Backend>, seed: AtomicU64 },
    Hash(Arc<KetamaHashing>),
}

impl BackendSelection for Selector {
    type Iter = SelectorIter;
    type Config = AlgorithmModel;

    fn build_with_config(backends: &BTreeSet<Backend>, config: &AlgorithmModel) -> Self {
        let list: Vec<Backend> = backends.iter().cloned().collect();
        match config {
            AlgorithmModel::RoundRobin => {
                let weights: Vec<u32> = list.iter().map(|b| b.weight as u32).collect();
                Selector::RoundRobin { cycle: SmoothCycle::new(&weights), backends: list }
            }
            AlgorithmModel::LeastLatency => {
                Selector::LeastLatency { backends: list, seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15) }
            }
            AlgorithmModel::ConsistentHash(_) => Selector::Hash(Arc::new(KetamaHashing::build(backends))),
        }
    }

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &AlgorithmModel::RoundRobin)
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> SelectorIter {
        match &**self {
            Selector::RoundRobin { cycle, .. } => {
                SelectorIter::Cycle { sel: self.clone(), start: cycle.next_start(), step: 0 }
            }
            Selector::LeastLatency { backends, seed } => {
                let n = backends.len();
                let (a, b) = if n < 2 {
                    (0, 0)
                } else {
                    let r = xorshift(seed);
                    let a = (r % n as u64) as usize;
                    let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                    let cost = |i: usize| stats(&backends[i]).map_or(0.0, |s| s.cost());
                    if cost(b) < cost(a) {
                        (b, a)
                    } else {
                        (a, b)
                    }
                };
                SelectorIter::P2c { sel: self.clone(), first: a, second: b, step: 0 }
            }
            Selector::Hash(ring) => SelectorIter::Hash(ring.iter(key)),
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

/// Candidates in order of preference; pingora's `UniqueIterator` skips repeats.
pub enum SelectorIter {
    Cycle { sel: Arc<Selector>, start: usize, step: usize },
    P2c { sel: Arc<Selector>, first: usize, second: usize, step: usize },
    Hash(OwnedNodeIterator),
}

impl BackendIter for SelectorIter {
    fn next(&mut self) -> Option<&Backend> {
        match self {
            SelectorIter::Cycle { sel, start, step } => {
                let Selector::RoundRobin { backends, cycle } = &**sel else { return None };
                if *step >= cycle.len() {
                    return None;
                }
                let i = cycle.at(*start + *step)?;
                *step += 1;
                backends.get(i)
            }
            SelectorIter::P2c { sel, first, second, step } => {
                let Selector::LeastLatency { backends, .. } = &**sel else { return None };
                let i = match *step {
                    0 => *first,
                    1 => *second,
                    n => n - 2,
                };
                *step += 1;
                backends.get(i)
            }
            SelectorIter::Hash(it) => it.next(),
        }
    }
}
