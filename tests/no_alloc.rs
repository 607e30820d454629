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

/// Both tiers' route decisions, the mesh's Service lookup and its authorization, on what
/// translation and compilation built from manifests.
const MANIFESTS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weir}
spec: {controllerName: weir.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {namespace: shop, name: gw}
spec:
  gatewayClassName: weir
  listeners: [{name: web, protocol: HTTP, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {namespace: shop, name: web}
spec:
  parentRefs: [{name: gw}, {group: '', kind: Service, name: payments, port: 80}]
  hostnames: [shop.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /charge}, headers: [{name: x-canary, value: 'yes'}]}]
    backendRefs: [{name: payments-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: payments, port: 80, weight: 9}, {name: payments-v2, port: 80, weight: 1}]
---
apiVersion: weir.dev/v1alpha1
kind: MeshAuthorization
metadata: {namespace: shop, name: payments}
spec:
  targetRef: {kind: Service, name: payments}
  defaultMode: Deny
  rules:
  - from: [{identity: 'spiffe://cluster.local/ns/shop/sa/checkout'}]
    to: [{pathPrefix: /charge, methods: [POST]}]
  - from: [{namespace: ops}]
";

fn service(name: &str, ip: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{namespace: shop, name: {name}}}
spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{namespace: shop, name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: ['{ip}'], conditions: {{ready: true}}}}]
"
    )
}

fn store() -> weir::store::Store {
    let text = [MANIFESTS, &service("payments", "10.0.0.5"), &service("payments-v2", "10.0.0.6")].concat();
    let (objects, errors) = weir::source::manifest::parse_manifests(&text, "no_alloc.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    let mut store = weir::store::Store::default();
    for o in objects {
        store.apply(o, "no_alloc.yaml");
    }
    store
}

fn request(path: &str, canary: bool) -> http::request::Parts {
    let mut req = http::Request::builder().method(Method::GET).uri(path).header("host", "shop.example.com:9080");
    if canary {
        req = req.header("x-canary", "yes");
    }
    req.body(()).unwrap().into_parts().0
}

#[test]
fn both_tiers_route_decisions_allocate_nothing() {
    use weir::proxy::decide::{decide, Arrival, Decision};
    let store = store();
    let pools = std::sync::Arc::new(PoolRegistry::default());
    let metrics = weir::telemetry::Metrics::new(pools.clone());
    let model = weir::translate::translate(&store, &weir::translate::TranslateOptions::defaults("weir"));
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    let snapshot = weir::snapshot::compile(&model, 1, &pools, &metrics);
    let edge = &snapshot.listeners[&"0.0.0.0:9080".parse().unwrap()].router;
    let settings = weir::mesh::outbound::OutboundSettings {
        namespace: "shop".into(),
        cluster_domain: "cluster.local".into(),
        mesh_port: 15008,
    };
    let mesh_model = weir::translate::mesh::translate(&store, Some("shop"));
    assert!(mesh_model.rejections.is_empty(), "{:?}", mesh_model.rejections);
    let directory = weir::mesh::outbound::Directory::compile(&mesh_model, &pools, &metrics, &settings, "spiffe://x");
    let requests = [request("/charge/42", true), request("/items?page=2", false)];
    let arrival = Arrival { scheme: "http", port: 9080 };
    let run = |count: usize| {
        for i in 0..count {
            let req = &requests[i % 2];
            let Decision::Forward { target: Some(_), new_path: None, rule } = decide(edge, req, arrival) else {
                panic!("the edge forwards {}", req.uri)
            };
            std::hint::black_box(rule);
            let (dest, port) = directory.lookup("payments.shop.svc.cluster.local:80", "shop").expect("payments");
            let router = dest.ports[port].routes.as_ref().expect("payments has routes");
            let Decision::Forward { target: Some(_), new_path: None, rule } = decide(router, req, arrival) else {
                panic!("the mesh forwards {}", req.uri)
            };
            std::hint::black_box(rule);
        }
    };
    // warm up: arc-swap's and the metric handles' per-thread state
    run(10);
    let n = allocations(|| run(1_000));
    assert_eq!(n, 0, "route decisions allocated {n} times");
}

#[test]
fn an_allowed_mesh_request_costs_no_allocation() {
    use weir::mesh::authz::{Authorizer, GatewayPolicy};
    use weir::mesh::identity::SpiffeId;
    let model = weir::translate::mesh::translate(&store(), None);
    let authorizer = Authorizer::compile(&model.authorization, "cluster.local", &GatewayPolicy::default());
    let at = Some(SocketAddr::from(([10, 0, 0, 5], 8080)));
    let checkout = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/checkout").unwrap();
    let ops = SpiffeId::parse("spiffe://cluster.local/ns/ops/sa/debug").unwrap();
    assert!(authorizer.decide(&checkout, at, &Method::GET, "/charge").is_err(), "only POST /charge is allowed");
    let n = allocations(|| {
        for i in 0..1_000 {
            let (caller, method, path) = if i % 2 == 0 {
                (&checkout, &Method::POST, "/charge/42")
            } else {
                (&ops, &Method::DELETE, "/anything")
            };
            authorizer.decide(caller, at, method, path).expect("allowed");
        }
    });
    assert_eq!(n, 0, "authorization decisions allocated {n} times");
}
