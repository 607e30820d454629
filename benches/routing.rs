//! Per-request costs on the request path: route lookup as the route count grows, and endpoint
//! selection for each algorithm as the endpoint count grows. Run: `cargo bench --bench routing`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use weir::policy::{AlgorithmModel, BackendPolicyModel, HashKey};
use weir::pool::PoolRegistry;
use weir::routing::{HostPattern, Order, PathMatch, RequestMatch, RequestView, Router, Rule, ValueMatch};
use weir::translate::{PoolKey, PoolSpec};

/// `routes` rules spread over hosts of 10 paths each, with some regex and header matches.
fn router(routes: usize) -> Router<usize> {
    let rules = (0..routes).map(|i| {
        let host = HostPattern::Exact(format!("host{}.example.com", i / 10));
        let path = match i % 10 {
            0 => PathMatch::regex("/v[0-9]+/items/.*").unwrap(),
            1 => PathMatch::Exact("/exact".into()),
            n => PathMatch::prefix(&format!("/api/{n}")),
        };
        let headers = if i % 10 == 2 {
            vec![(http::HeaderName::from_static("x-canary"), ValueMatch::Exact("yes".into()))]
        } else {
            vec![]
        };
        let matcher = RequestMatch { path, method: None, headers, query: vec![] };
        (host, Rule { matcher, order: Order { created: 0, owner: format!("ns/r{i}"), rule: 0, matched: 0 }, action: i })
    });
    Router::build(rules.collect::<Vec<_>>())
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    for routes in [10, 1_000, 10_000] {
        let r = router(routes);
        let host = format!("host{}.example.com", routes / 20);
        group.bench_with_input(BenchmarkId::from_parameter(routes), &routes, |b, _| {
            b.iter(|| {
                let req = RequestView {
                    host: black_box(&host),
                    path: black_box("/api/7/users/42"),
                    query: None,
                    method: &Method::GET,
                    headers: &headers,
                };
                black_box(r.lookup(&req).map(|rule| rule.action))
            })
        });
    }
    group.finish();
}

fn endpoint_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint_pick");
    let algorithms = [
        ("round_robin", AlgorithmModel::RoundRobin),
        ("least_latency", AlgorithmModel::LeastLatency),
        ("consistent_hash", AlgorithmModel::ConsistentHash(HashKey::Header("x-user".into()))),
    ];
    for (name, algorithm) in algorithms {
        for endpoints in [3usize, 100, 1_000] {
            let key = PoolKey { namespace: "ns".into(), service: format!("{name}-{endpoints}"), port: 80 };
            let addrs = (0..endpoints).map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)));
            let spec =
                PoolSpec::ready(addrs, BackendPolicyModel { algorithm: algorithm.clone(), ..Default::default() });
            let registry = PoolRegistry::default();
            let pools = registry.sync(&BTreeMap::from([(key.clone(), spec)]));
            let pool = pools[&key].clone();
            group.bench_function(BenchmarkId::new(name, endpoints), |b| {
                b.iter(|| black_box(pool.select(black_box(b"user-42"), &[])))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, route_lookup, endpoint_pick);
criterion_main!(benches);
