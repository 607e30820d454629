//! Configuration-change costs: parsing manifests (a directory's 1,000 objects, and files nested
//! 1,000 / 4,000 levels deep by indentation, which the flow-bracket limit does not catch), translating a store of 1,000 / 10,000 Kubernetes objects into a
//! model, and compiling and publishing that model as the serving snapshot (pools synced, metric
//! handles linked, routers built, `ArcSwap` stored, series of removed routes retired). Run: `cargo bench --bench config`.
//!
//! The objects are what a cluster of that size holds for weir: per application a Service, its
//! EndpointSlice (3 endpoints), an HTTPRoute on a shared Gateway and an Ingress; one TLS Secret
//! per 100 objects, each serving the Ingress hosts of its group.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use rcgen::{CertificateParams, KeyPair};
use weir::pool::PoolRegistry;
use weir::snapshot::{compile, Snapshot};
use weir::source::manifest::parse_manifests;
use weir::store::Store;
use weir::telemetry::Metrics;
use weir::translate::{translate, TranslateOptions};

const CLASSES: &str = "
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: weir}
spec: {controller: weir.dev/ingress-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weir}
spec: {controllerName: weir.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: apps}
spec:
  gatewayClassName: weir
  listeners: [{name: http, protocol: HTTP, port: 8081, allowedRoutes: {namespaces: {from: All}}}]
";

/// One application: Service, EndpointSlice, HTTPRoute and Ingress (4 objects).
fn app(i: usize) -> String {
    let (group, a, b) = (i / 25, (i / 250) % 250, i % 250);
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: app{i}, namespace: apps}}
spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: app{i}-1, namespace: apps, labels: {{kubernetes.io/service-name: app{i}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
  - {{addresses: [10.{a}.{b}.1], conditions: {{ready: true}}}}
  - {{addresses: [10.{a}.{b}.2], conditions: {{ready: true}}}}
  - {{addresses: [10.{a}.{b}.3], conditions: {{ready: true}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app{i}, namespace: apps}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [api{group}.example.com]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /app{i}}}}}]
      backendRefs: [{{name: app{i}, port: 80}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: app{i}, namespace: apps}}
spec:
  ingressClassName: weir
  tls: [{{hosts: [www{group}.example.com], secretName: tls{group}}}]
  rules:
    - host: www{group}.example.com
      http:
        paths: [{{path: /app{i}, pathType: Prefix, backend: {{service: {{name: app{i}, port: {{number: 80}}}}}}}}]
"
    )
}

/// The TLS Secret of Ingress group `group`: a self-signed certificate for its host.
fn tls_secret(group: usize) -> String {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![format!("www{group}.example.com")]).expect("params").self_signed(&key);
    let block = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---
apiVersion: v1
kind: Secret
metadata: {{name: tls{group}, namespace: apps}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
        block(&cert.expect("self-signed").pem()),
        block(&key.serialize_pem())
    )
}

/// The manifests of about `objects` objects (4 per application plus a Secret per 25 applications).
fn manifests(objects: usize) -> String {
    let apps = objects * 100 / 404;
    let mut text = CLASSES.to_string();
    (0..apps).for_each(|i| text.push_str(&app(i)));
    (0..apps.div_ceil(25)).for_each(|g| text.push_str(&tls_secret(g)));
    text
}

/// A store of about `objects` objects.
fn store(objects: usize) -> Store {
    let (parsed, errors) = parse_manifests(&manifests(objects), "bench.yaml");
    assert!(errors.is_empty(), "bench manifests must parse: {errors:?}");
    let mut store = Store::default();
    for o in parsed {
        store.apply(o, "bench.yaml");
    }
    store
}

fn options() -> TranslateOptions {
    TranslateOptions::defaults("weir")
}

/// Parse time must grow with the size of a file, not the square of its depth (serde_yaml_ng took
/// 35 ms for 4,000 levels and four times that for twice the depth).
fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.sample_size(10);
    let text = manifests(1_000);
    group.bench_function("1000-objects", |b| b.iter(|| black_box(parse_manifests(black_box(&text), "bench.yaml"))));
    for depth in [1_000, 4_000] {
        let nested: String = (0..depth).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        let (_, errors) = parse_manifests(&nested, "deep.yaml");
        assert_eq!(errors.len(), 1, "a file nested {depth} deep is refused");
        group.bench_function(format!("block-depth-{depth}"), |b| {
            b.iter(|| black_box(parse_manifests(black_box(&nested), "deep.yaml")))
        });
    }
    group.finish();
}

fn translate_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate");
    group.sample_size(10);
    for objects in [1_000, 10_000] {
        let store = store(objects);
        let model = translate(&store, &options());
        assert!(model.rejections.is_empty(), "bench objects must all be valid: {:?}", model.rejections);
        assert_eq!(model.pools.len(), objects * 100 / 404, "one pool per application");
        group.bench_with_input(BenchmarkId::from_parameter(store.len()), &store, |b, store| {
            b.iter(|| black_box(translate(black_box(store), &options())))
        });
    }
    group.finish();
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    group.sample_size(10);
    for objects in [1_000, 10_000] {
        let store = store(objects);
        let model = translate(&store, &options());
        let pools = Arc::new(PoolRegistry::default());
        let metrics = Metrics::new(pools.clone());
        let serving = ArcSwap::from_pointee(Snapshot::empty());
        // the pools and metric series exist from the previous generation, as on a config change
        serving.store(Arc::new(compile(&model, 1, &pools, &metrics)));
        metrics.retire_unused_targets();
        group.bench_with_input(BenchmarkId::from_parameter(store.len()), &model, |b, model| {
            b.iter_batched(
                || serving.load().generation + 1,
                |generation| {
                    serving.store(Arc::new(compile(model, generation, &pools, &metrics)));
                    metrics.retire_unused_targets();
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, parse, translate_store, publish);
criterion_main!(benches);
