//! The request path's routing and endpoint pick allocate nothing: everything that can be
//! prepared is prepared when the snapshot is built. Counted with a global allocator that only
//! counts on the thread under test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method};
use weir::policy::{AlgorithmModel, BackendPolicyModel, HashKey};
use weir::pool::PoolRegistry;
use weir::routing::{
    normalize_host, HostPattern, Order, PathMatch, RequestMatch, RequestView, Router, Rule, ValueMatch,
};
use weir::translate::{PoolKey, PoolSpec};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(|c| c.get())
}

fn router() -> Router<usize> {
    let rules = (0..1_000).map(|i| {
        let path = match i % 4 {
            0 => PathMatch::regex("/v[0-9]+/.*").unwrap(),
            1 => PathMatch::Exact(format!("/exact/{i}")),
            _ => PathMatch::prefix(&format!("/api/{i}")),
        };
        let headers = vec![(http::HeaderName::from_static("x-canary"), ValueMatch::Exact("yes".into()))];
        let matcher = RequestMatch { path, method: Some(Method::GET), headers, query: vec![] };
        let host = if i % 2 == 0 { HostPattern::Exact(format!("h{}.example.com", i / 10)) } else { HostPattern::Any };
        (host, Rule { matcher, order: Order { created: 0, owner: format!("ns/r{i}"), rule: 0, matched: 0 }, action: i })
    });
    Router::build(rules.collect::<Vec<_>>())
}

#[test]
fn route_lookup_allocates_nothing() {
    let r = router();
    let mut headers = HeaderMap::new();
    headers.insert("x-canary", HeaderValue::from_static("yes"));
    let run = |count: usize| {
        for i in 0..count {
            let raw = if i % 2 == 0 { "h5.example.com:8080" } else { "other.example.com" };
            let host = normalize_host(raw);
            let path = if i % 3 == 0 { "/v2/items" } else { "/api/42/x" };
            let req = RequestView { host: &host, path, query: Some("a=1"), method: &Method::GET, headers: &headers };
            std::hint::black_box(r.lookup(&req));
        }
    };
    // warm up: the regex engine creates its per-thread match cache on first use
    run(10);
    let n = allocations(|| run(1_000));
    assert_eq!(n, 0, "route lookups allocated {n} times");
}

#[test]
fn endpoint_pick_allocates_nothing() {
    for algorithm in [
        AlgorithmModel::RoundRobin,
        AlgorithmModel::LeastLatency,
        AlgorithmModel::ConsistentHash(HashKey::Header("x-user".into())),
    ] {
        let key = PoolKey { namespace: "ns".into(), service: "svc".into(), port: 80 };
        let addrs = (1..=50u8).map(|i| SocketAddr::from(([10, 0, 0, i], 80)));
        let spec = PoolSpec::ready(addrs, BackendPolicyModel { algorithm: algorithm.clone(), ..Default::default() });
        let registry = PoolRegistry::default();
        let pool = registry.sync(&BTreeMap::from([(key.clone(), spec)]))[&key].clone();
        let tried = [SocketAddr::from(([10, 0, 0, 1], 80))];
        // warm up: arc-swap's per-thread debt slots are created on first use
        std::hint::black_box(pool.select(b"warm", &tried));
        let n = allocations(|| {
            for i in 0..1_000u32 {
                let picked = pool.select(&i.to_le_bytes(), &tried).expect("an endpoint");
                assert_ne!(picked.addr, tried[0]);
                std::hint::black_box(picked);
            }
        });
        assert_eq!(n, 0, "{algorithm:?}: endpoint picks allocated {n} times");
    }
}
