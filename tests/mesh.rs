//! The mesh tier: the inbound listener (mutual TLS with SPIFFE identities in front of one
//! workload) and the outbound listener (local HTTP to a Service, through the endpoints'
//! gateways). Real handshakes (BoringSSL on both sides) with certificates made per test.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use boring::ssl::{SslConnector, SslMethod};
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use pingora::tls::tokio_ssl::SslStream;
use tempfile::TempDir;
use tokio::net::TcpStream;
use weir::config::DefaultPolicy;
use weir::demo::ca::{Ca, Issued, LeafSpec};
use weir::demo::echo::EchoServer;
use weir::mesh::inbound::Workload;
use weir::mesh::{start_mesh, IdentitySource, MeshHandle, MeshOptions};
use weir::source::ConfigSource;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_valid_svid_reaches_the_workload_which_learns_who_called() {
    let p = payments().await;
    let checkout = p.ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap();
    // the caller tries to pass itself off as someone else; the header is replaced
    let spoof = (
        "x-forwarded-client-cert",
        "By=spiffe://cluster.local/ns/shop/sa/payments;URI=spiffe://cluster.local/ns/admin/sa/root",
    );
    let resp = call(&p, Some(&checkout), p.app.addr().port(), &[spoof]).await.unwrap();
    assert_eq!(resp.status, 200, "{resp}");
    assert_eq!(resp.echo_name(), Some("payments"));
    assert_eq!(
        resp.upstream_header("x-forwarded-client-cert").as_deref(),
        Some(format!("By={PAYMENTS};URI={CHECKOUT}").as_str())
    );
    assert_eq!(resp.upstream_header("weir-target-port"), None, "mesh plumbing stays out of the workload's view");
    assert_eq!(p.app.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_identity_fail_in_the_handshake_each_counted_by_reason() {
    let p = payments().await;
    let port = p.app.addr().port();
    let other_ca = Ca::new("another CA").unwrap();
    let svid = |spec: LeafSpec| p.ca.issue(&spec).unwrap();
    let cases = [
        ("no_certificate", None),
        ("untrusted_chain", Some(other_ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap())),
        ("expired", Some(svid(LeafSpec::svid(CHECKOUT, DAY).expired()))),
        ("not_yet_valid", Some(svid(LeafSpec::svid(CHECKOUT, DAY).not_yet_valid()))),
        ("other_trust_domain", Some(svid(LeafSpec::svid("spiffe://evil.example/ns/shop/sa/checkout", DAY)))),
        ("no_spiffe_id", Some(svid(LeafSpec { uris: vec![], ..LeafSpec::svid(CHECKOUT, DAY) }))),
    ];
    for (reason, identity) in cases {
        let before = refusals(&p, reason).await;
        let result = call(&p, identity.as_ref(), port, &[]).await;
        assert!(result.is_err(), "{reason}: the request went through: {:?}", result.map(|r| r.status));
        // the gateway counts as its side of the handshake ends, which may be after the client's
        wait_until(&format!("{reason} counted"), WAIT, || async { refusals(&p, reason).await >= before + 1.0 }).await;
        assert_eq!(refusals(&p, reason).await, before + 1.0, "{reason}: counted once under its reason");
    }
    assert_eq!(refusals(&p, "handshake").await, 0.0, "each refusal counted under its own reason only");
    // a client stuck at TLS 1.1 never gets as far as its certificate
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_max_proto_version(Some(boring::ssl::SslVersion::TLS1_1)).unwrap();
    b.set_min_proto_version(Some(boring::ssl::SslVersion::TLS1)).unwrap();
    let ssl = b.build().configure().unwrap().into_ssl("payments").unwrap();
    let mut old = SslStream::new(ssl, TcpStream::connect(p.mesh.inbound_addr).await.unwrap()).unwrap();
    assert!(Pin::new(&mut old).connect().await.is_err(), "TLS 1.1 is refused");
    wait_until("the TLS 1.1 handshake counted", WAIT, || async { refusals(&p, "handshake").await == 1.0 }).await;
    assert_eq!(p.app.requests(), 0, "nothing reached the workload");
    assert_eq!(get(p.mesh.admin_addr, "localhost", "/ready").await.status, 200, "refusals do not make it unready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_listener_holds_callers_to_the_request_head_limit() {
    // the edge's limits (--max-request-head and the rest, 64 KiB by default) hold here too; Pingora's
    // own default took a 1 MiB head
    let p = payments().await;
    let checkout = p.ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap();
    let port = p.app.addr().port();
    let under = "a".repeat(60 * 1024);
    call(&p, Some(&checkout), port, &[("x-pad", &under)]).await.unwrap().assert_status(200);
    let over = "a".repeat(70 * 1024);
    call(&p, Some(&checkout), port, &[("x-pad", &over)]).await.unwrap().assert_status(431);
    assert_eq!(p.app.requests(), 1, "the head over the limit never reached the workload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_workloads_own_ports_are_reachable() {
    let p = payments().await;
    let checkout = p.ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap();
    let other = EchoServer::start("not-fronted", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let resp = call(&p, Some(&checkout), other.addr().port(), &[]).await.unwrap();
    assert_eq!(resp.status, 403);
    assert!(resp.header("weir-denied-reason").unwrap().contains("not a port of this workload"), "{resp}");
    assert_eq!(other.requests(), 0, "never an open relay");
}

/// Replaces `path`'s content in one step (write aside, rename), as a Secret volume update does.
fn replace(path: &std::path::Path, content: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

async fn served_more(p: &Payments, n: u64) {
    let before = p.app.requests();
    wait_until(&format!("{n} more requests served"), WAIT, || async { p.app.requests() >= before + n }).await;
}

async fn reloads_reach(p: &Payments, n: f64) {
    wait_until(&format!("{n} identity reloads"), WAIT, || async {
        metric(&p.mesh.metrics.encode(), "weir_mesh_identity_reloads_total", &[("result", "ok")]) >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_trust_bundle_rotate_under_load_without_a_failed_request() {
    let p = payments().await;
    let new_ca = Ca::new("next mesh CA").unwrap();
    let both = format!("{}{}", p.ca.bundle_pem(), new_ca.bundle_pem());
    let files = p.mesh.identity_files.clone().unwrap();
    let port = p.app.addr().port();
    // the caller's side: its bundle and identity, rotated by the test in step with the server's
    let caller = std::sync::Arc::new(std::sync::Mutex::new((
        p.ca.bundle_pem(),
        p.ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap(),
    )));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (caller, stop, addr) = (caller.clone(), stop.clone(), p.mesh.inbound_addr);
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, vec![]);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (bundle, id) = caller.lock().unwrap().clone();
                match call_via(addr, &bundle, Some(&id), port, &[]).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    other => failed.push(format!("{:?}", other.map(|r| r.status))),
                }
            }
            (ok, failed)
        })
    };

    // 1. both sides trust the old and the new CA
    replace(&files.bundle, &both);
    reloads_reach(&p, 1.0).await;
    caller.lock().unwrap().0 = both.clone();
    served_more(&p, 2).await; // the (sequential) load has moved on to the caller's new state
                              // 2. both identities are re-issued by the new CA
    let next = new_ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap();
    replace(&files.key, &next.key_pem);
    replace(&files.cert, &next.chain_pem);
    reloads_reach(&p, 2.0).await;
    caller.lock().unwrap().1 = new_ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap();
    served_more(&p, 2).await;
    // 3. the old CA is retired
    replace(&files.bundle, &new_ca.bundle_pem());
    wait_until("the old CA retired", WAIT, || async {
        p.mesh.credentials.load().bundle.len() == 1 && p.mesh.credentials.load().id.to_string() == PAYMENTS
    })
    .await;
    caller.lock().unwrap().0 = new_ca.bundle_pem();
    served_more(&p, 20).await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok >= 20, "the load kept going ({ok} requests)");
    // a caller still holding the old CA's certificate is now refused
    let stale = p.ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap();
    assert!(call_via(p.mesh.inbound_addr, &new_ca.bundle_pem(), Some(&stale), port, &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_calls_payments_through_both_gateways_over_mutual_tls() {
    let p = payments().await;
    let (checkout, _dir) = checkout_gateway(&p, "").await;
    let outbound = checkout.outbound_addr.unwrap();
    for (i, host) in ["payments", "payments.shop", "payments.shop.svc.cluster.local:80"].iter().enumerate() {
        // the local app cannot pass itself off as another caller
        let resp = request(outbound)
            .host(host)
            .header("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/admin/sa/root")
            .send()
            .await;
        assert_eq!(resp.status, 200, "{host}: {resp}");
        assert_eq!(resp.echo_name(), Some("payments"), "{host}");
        assert_eq!(
            resp.upstream_header("x-forwarded-client-cert").as_deref(),
            Some(format!("By={PAYMENTS};URI={CHECKOUT}").as_str()),
            "{host}: the workload learns the caller from the certificate"
        );
        assert_eq!(p.app.requests(), i as u64 + 1);
    }
    // the hop is one HTTP/2 connection, reused, however many requests cross it
    for _ in 0..20 {
        assert_eq!(request(outbound).host("payments").send().await.status, 200);
    }
    let inbound_metrics = get(p.mesh.admin_addr, "localhost", "/metrics").await.text();
    assert_eq!(metric(&inbound_metrics, "weir_mesh_inbound_connections_total", &[]), 1.0);

    let resp = request(outbound).host("billing").send().await;
    assert_eq!(resp.status, 404);
    assert!(resp.header("weir-denied-reason").unwrap().contains("no Service shop/billing"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_services_expected_identity_gets_no_request() {
    let p = payments().await;
    let annotation = ", annotations: {weir.dev/identity: 'spiffe://cluster.local/ns/shop/sa/payments-v2'}";
    let (checkout, _dir) = checkout_gateway(&p, annotation).await;
    let resp = request(checkout.outbound_addr.unwrap()).host("payments").send().await;
    assert_eq!(resp.status, 502, "{resp}");
    assert_eq!(p.app.requests(), 0, "the impostor gateway never saw the request");

    // the same Service expecting the identity payments really has
    let annotation = format!(", annotations: {{weir.dev/identity: '{PAYMENTS}'}}");
    let (checkout, _dir) = checkout_gateway(&p, &annotation).await;
    let resp = request(checkout.outbound_addr.unwrap()).host("payments").send().await;
    assert_eq!(resp.status, 200, "{resp}");
}

/// Two versions of payments, each a pod with its own address, their gateways on one port.
async fn two_versions() -> (Payments, Payments) {
    let v1 = payments_at(Arc::new(Ca::new("mesh CA").unwrap()), "payments-v1", "127.0.0.2", 0).await;
    let v2 = payments_at(v1.ca.clone(), "payments-v2", "127.0.0.3", v1.mesh.inbound_addr.port()).await;
    (v1, v2)
}

/// Services payments (annotated `parent_identity`), payments-v1 and payments-v2 (annotated
/// `v2_identity` if any) with their endpoints, and an HTTPRoute on payments with `rules` (a YAML
/// list).
fn canary_config(
    v1: &Payments,
    v2: &Payments,
    parent_identity: &str,
    v2_identity: Option<&str>,
    rules: &str,
) -> String {
    let (a1, a2) = (v1.app.addr(), v2.app.addr());
    let parent = format!("apiVersion: v1\nkind: Service\nmetadata: {{namespace: shop, name: payments, annotations: {{weir.dev/identity: '{parent_identity}'}}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n");
    let mut v2_service = service_with_target_port("shop", "payments-v2", 80, "http", a2.port());
    if let Some(id) = v2_identity {
        v2_service = v2_service
            .replace("name: payments-v2", &format!("name: payments-v2\n  annotations: {{weir.dev/identity: '{id}'}}"));
    }
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: shop, name: payments-canary}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: payments, port: 80}}]\n  rules:\n{}",
        indent(rules, 4)
    );
    docs(&[
        parent,
        service_with_target_port("shop", "payments-v1", 80, "http", a1.port()),
        endpoints("shop", "payments-v1", "http", a1.port(), &[a1]),
        v2_service,
        endpoints("shop", "payments-v2", "http", a2.port(), &[a2]),
        route,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_on_a_service_splits_its_traffic_by_weight() {
    let (v1, v2) = two_versions().await;
    // the parent names an identity no gateway has: the backend's Service is what is verified
    let rules = "- backendRefs: [{name: payments-v1, port: 80, weight: 90}, {name: payments-v2, port: 80, weight: 10}]";
    let config = canary_config(&v1, &v2, "spiffe://cluster.local/ns/shop/sa/nobody", None, rules);
    let (checkout, _dir) = checkout_gateway_with(&v1, &config).await;
    let outbound = checkout.outbound_addr.unwrap();
    let mut served = std::collections::HashMap::new();
    for _ in 0..1_000 {
        let resp = request(outbound).host("payments").send().await;
        assert_eq!(resp.status, 200, "{resp}");
        *served.entry(resp.echo_name().unwrap().to_string()).or_insert(0) += 1;
    }
    let v1_share = f64::from(served["payments-v1"]) / 1_000.0;
    assert!((0.85..=0.95).contains(&v1_share), "90/10 split within ±5%: {served:?}");
    assert_eq!(served.values().sum::<u32>(), 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_a_service_rejected_for_its_identity_answers_500_and_never_dials_it() {
    let (v1, v2) = two_versions().await;
    // payments-v2's annotation is no SPIFFE ID: which identity its Pods must present is unknown,
    // so checking the parent's (payments', which v2's gateway has) instead would let it through
    let rules = "- matches: [{path: {type: PathPrefix, value: /v2}}]
  backendRefs: [{name: payments-v2, port: 80}]
- backendRefs: [{name: payments-v1, port: 80}]";
    let config = canary_config(&v1, &v2, PAYMENTS, Some("payments-v2"), rules);
    let (checkout, _dir) = checkout_gateway_with(&v1, &config).await;
    let outbound = checkout.outbound_addr.unwrap();
    for _ in 0..5 {
        let resp = request(outbound).host("payments").path("/v2/charge").send().await;
        assert_eq!(resp.status, 500, "{resp}");
    }
    assert_eq!(v2.app.requests(), 0, "the Service whose identity is unknown was never dialled");
    request(outbound).host("payments").path("/charge").send().await.assert_served_by("payments-v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_refuses_connections_is_skipped_for_another_endpoint() {
    // two payments pods; only the one on 127.0.0.2 has a gateway listening
    let p = payments_at(Arc::new(Ca::new("mesh CA").unwrap()), "payments", "127.0.0.2", 0).await;
    let app = p.app.addr();
    let gone: SocketAddr = format!("127.0.0.3:{}", app.port()).parse().unwrap();
    let config = docs(&[
        service_with_target_port("shop", "payments", 80, "http", app.port()),
        endpoints("shop", "payments", "http", app.port(), &[app, gone]),
    ]);
    let (checkout, _dir) = checkout_gateway_with(&p, &config).await;
    for i in 0..20 {
        let resp = request(checkout.outbound_addr.unwrap()).host("payments").send().await;
        assert_eq!(resp.status, 200, "request {i}: {resp}");
    }
    assert_eq!(p.app.requests(), 20);
}

// ---------------------------------------------------------------------------------------------
// Resilience: retries, retry budget, timeouts, circuit breaking, outlier detection

/// `count` payments pods (127.0.0.2, 127.0.0.3, ...: one port, as a Deployment's replicas),
/// each behind its own gateway, the gateways on one port too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_stalled_handshake_move_on_together_at_the_connect_timeout() {
    // payments on 127.0.0.2 behind its gateway; on 127.0.0.3 something takes the connection on the
    // mesh port and never answers the TLS handshake
    let p = payments_at(Arc::new(Ca::new("mesh CA").unwrap()), "payments", "127.0.0.2", 0).await;
    let app = p.app.addr();
    let silent = tokio::net::TcpListener::bind(("127.0.0.3", p.mesh.inbound_addr.port())).await.unwrap();
    let held = tokio::spawn(async move {
        let mut open = vec![];
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let stalled: SocketAddr = format!("127.0.0.3:{}", app.port()).parse().unwrap();
    let (checkout, _dir) = checkout_to_addrs(&p, &[app, stalled], "connectTimeout: 300ms").await;
    let started = std::time::Instant::now();
    // a burst: the requests that pick the stalled gateway wait for one handshake, then go elsewhere
    for r in burst(checkout.outbound_addr.unwrap(), 20) {
        assert_eq!(r.await.unwrap().status, 200);
    }
    // (the requests waiting for that handshake fail with it at once, not one after another)
    assert!(started.elapsed() < Duration::from_secs(2), "not stuck on the stalled handshake: {:?}", started.elapsed());
    assert_eq!(p.app.requests(), 20);
    held.abort();
}

async fn pods(count: usize) -> Vec<Payments> {
    let apps = on_one_port(count, |i, addr| async move {
        let app = EchoServer::start(&format!("payments-{i}"), addr).await?;
        let addr = app.addr();
        Ok((app, addr))
    })
    .await;
    let ca = Arc::new(Ca::new("mesh CA").unwrap());
    let mut pods: Vec<Payments> = vec![];
    for (app, _) in apps {
        let port = pods.first().map_or(0, |p| p.mesh.inbound_addr.port());
        pods.push(behind_gateway(ca.clone(), app, port).await);
    }
    pods
}

/// checkout's gateway knowing Service `shop/payments` (port 80) with `pods` as its endpoints, and
/// a BackendPolicy with `policy` (YAML below `spec:`, after targetRefs) if not empty.
async fn checkout_to(pods: &[Payments], policy: &str) -> (MeshHandle, TempDir) {
    let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.app.addr()).collect();
    checkout_to_addrs(&pods[0], &addrs, policy).await
}

/// [`checkout_to`] with `addrs` as the endpoints (`first`'s gateway port is the mesh port).
async fn checkout_to_addrs(first: &Payments, addrs: &[SocketAddr], policy: &str) -> (MeshHandle, TempDir) {
    let port = addrs[0].port();
    assert!(addrs.iter().all(|a| a.port() == port), "pods listen on one port, as a Deployment's do");
    let mut config = vec![
        service_with_target_port("shop", "payments", 80, "http", port),
        endpoints("shop", "payments", "http", port, addrs),
    ];
    if !policy.is_empty() {
        config.push(format!(
            "apiVersion: weir.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {{namespace: shop, name: payments}}\nspec:\n  targetRefs: [{{kind: Service, name: payments}}]\n{}",
            indent(policy, 2)
        ));
    }
    checkout_gateway_with(first, &docs(&config)).await
}

fn mesh_metric(h: &MeshHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&h.metrics.encode(), name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_replica_that_fails_a_third_of_its_requests() {
    let pods = pods(2).await;
    pods[1].app.fail_every(3);
    let (checkout, _dir) = checkout_to(&pods, "").await; // the mesh's default retries
    let outbound = checkout.outbound_addr.unwrap();
    let mut ok = 0;
    for _ in 0..2_000 {
        ok += u32::from(request(outbound).host("payments").send().await.status == 200);
    }
    assert!(f64::from(ok) / 2_000.0 >= 0.999, "{ok} of 2,000 succeeded");
    let failed = pods[1].app.requests() / 3;
    let retries = mesh_metric(&checkout, "weir_mesh_retries_total", &[("reason", "status_503")]);
    assert!(failed > 250 && retries >= failed as f64, "{failed} failures were retried ({retries} retries)");
    // counted when each request is logged, just after its answer
    let labels = [("destination", "payments.shop"), ("source", CHECKOUT), ("status_class", "2xx")];
    wait_until("requests counted by caller and destination", WAIT, || async {
        mesh_metric(&checkout, "weir_mesh_requests_total", &labels) == f64::from(ok)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_a_retry_storm_when_every_replica_fails() {
    let pods = pods(3).await;
    for p in &pods {
        p.app.set_status(503);
    }
    // no ejection: every replica stays a retry target; short backoffs keep the burst quick
    let policy = "outlierDetection: {maxEjectionPercent: 0}\nretry: {backoff: 1ms, maxBackoff: 2ms}";
    let (checkout, _dir) = checkout_to(&pods, policy).await;
    let outbound = checkout.outbound_addr.unwrap();
    let tries = || pods.iter().map(|p| p.app.requests()).sum::<u64>();
    for _ in 0..10 {
        assert_eq!(request(outbound).host("payments").method("POST").body("pay").send().await.status, 503);
    }
    assert_eq!(tries(), 10, "a POST is not retried: it may have been acted on");
    let started = std::time::Instant::now();
    for _ in 0..300 {
        assert_eq!(request(outbound).host("payments").send().await.status, 503);
    }
    let seconds = started.elapsed().as_secs();
    let retries = tries() - 310;
    // 2 retries each would be 600 more tries; the budget allows 20% of the requests plus 10 per
    // second of its 10 s window (a slow host spreads the burst over more windows)
    assert!(seconds < 20, "the burst took {seconds} s: too slow to show the budget");
    assert!(retries <= 62 + 10 * (10 + seconds), "{retries} retries in {seconds} s: over the budget");
    assert!(retries >= 50, "{retries} retries: the budget's floor was not used");
    assert_eq!(mesh_metric(&checkout, "weir_mesh_retries_total", &[]), retries as f64);
    assert!(
        mesh_metric(&checkout, "weir_mesh_retry_budget_exhausted_total", &[("destination", "payments.shop")]) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_that_takes_too_long_is_abandoned_for_another_replica() {
    let pods = pods(2).await;
    pods[0].app.set_delay(Duration::from_secs(10));
    let (checkout, _dir) = checkout_to(&pods, "timeouts: {perTry: 1s}").await;
    for i in 0..6 {
        let resp = request(checkout.outbound_addr.unwrap()).host("payments").send().await;
        assert_eq!(resp.status, 200, "request {i}: {resp}");
        assert_eq!(resp.echo_name(), Some("payments-1"));
    }
    assert_eq!(
        mesh_metric(&checkout, "weir_mesh_retries_total", &[("reason", "timeout")]),
        3.0,
        "round robin sent 3 to the slow one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_answers_504_across_every_try() {
    let pods = pods(2).await;
    for p in &pods {
        p.app.set_delay(Duration::from_secs(10));
    }
    let (checkout, _dir) = checkout_to(&pods, "timeouts: {request: 600ms, perTry: 400ms}").await;
    let started = std::time::Instant::now();
    let resp = request(checkout.outbound_addr.unwrap()).host("payments").send().await;
    assert_eq!(resp.status, 504, "{resp}");
    assert_eq!(resp.header("weir-denied-reason"), Some("the request timed out (timeouts.request)"));
    assert!(started.elapsed() < Duration::from_secs(5), "answered at the deadline, not the endpoints' 10 s");
    let tries = pods.iter().map(|p| p.app.requests()).sum::<u64>();
    assert!((1..=2).contains(&tries), "{tries} tries: at most one per replica, cut by the deadline");
}

/// Sends `n` requests to payments through `outbound` at once; returns the tasks.
fn burst(outbound: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<Resp>> {
    (0..n).map(|_| tokio::spawn(request(outbound).host("payments").send())).collect()
}

fn inbound_connections(p: &Payments) -> f64 {
    mesh_metric(&p.mesh, "weir_mesh_inbound_connections_total", &[])
}

/// One more request to payments through `checkout` is answered 503 at once by the circuit
/// breaker's `limit`, with the reason, and counted.
async fn one_more_overflows(checkout: &MeshHandle, limit: &str) {
    let started = std::time::Instant::now();
    let resp = request(checkout.outbound_addr.unwrap()).host("payments").send().await;
    assert_eq!(resp.status, 503, "{resp}");
    assert!(started.elapsed() < Duration::from_secs(2), "not queued behind the slow requests");
    let reason = resp.header("weir-denied-reason").unwrap_or_default();
    assert!(reason.contains(&format!("circuitBreaker.{limit}")), "{reason}");
    assert_eq!(mesh_metric(checkout, "weir_mesh_circuit_breaker_overflows_total", &[("limit", limit)]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_circuit_breaker_limit_are_answered_503_at_once() {
    let pods = pods(1).await;
    pods[0].app.set_delay(Duration::from_secs(4));
    let (checkout, _dir) = checkout_to(&pods, "circuitBreaker: {maxRequests: 2}").await;
    let outbound = checkout.outbound_addr.unwrap();
    let slow = burst(outbound, 2);
    wait_until("2 requests in flight", WAIT, || async {
        metric(&checkout.metrics.encode(), "weir_endpoint_inflight_requests", &[]) >= 2.0
    })
    .await;
    one_more_overflows(&checkout, "maxRequests").await;
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200, "the requests within the limit are served");
    }
    assert_eq!(request(outbound).host("payments").send().await.status, 200, "room again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_shares_one_connection_between_the_gateways() {
    let pods = pods(1).await;
    pods[0].app.set_delay(Duration::from_millis(300));
    let (checkout, _dir) = checkout_to(&pods, "").await;
    // 60 requests arrive before any connection to payments' gateway exists: they wait for the
    // first one and share it (within its 100 streams) instead of opening their own
    for r in burst(checkout.outbound_addr.unwrap(), 60) {
        assert_eq!(r.await.unwrap().status, 200);
    }
    assert_eq!(inbound_connections(&pods[0]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_would_need_a_connection_over_max_connections_are_answered_503() {
    let pods = pods(1).await;
    pods[0].app.set_delay(Duration::from_secs(3));
    let (checkout, _dir) = checkout_to(&pods, "circuitBreaker: {maxConnections: 1}").await;
    let outbound = checkout.outbound_addr.unwrap();
    // one connection carries 100 concurrent requests
    let slow = burst(outbound, 100);
    let app = &pods[0].app;
    wait_until("100 requests at the app", WAIT, || async { app.requests() >= 100 }).await;
    one_more_overflows(&checkout, "maxConnections").await;
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200, "the requests the connection carries are served");
    }
    assert_eq!(inbound_connections(&pods[0]), 1.0);
    assert_eq!(
        mesh_metric(&checkout, "weir_endpoint_ejections_total", &[]),
        0.0,
        "the refusal is not held against the endpoint"
    );
    assert_eq!(request(outbound).host("payments").send().await.status, 200, "room again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_replica_is_ejected_then_readmitted() {
    let pods = pods(2).await;
    pods[1].app.set_status(503);
    let policy = "outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1s}";
    let (checkout, _dir) = checkout_to(&pods, policy).await;
    let outbound = checkout.outbound_addr.unwrap();
    for i in 0..10 {
        let resp = request(outbound).host("payments").send().await;
        assert_eq!(resp.status, 200, "request {i}: retried on the good replica: {resp}");
    }
    assert_eq!(pods[1].app.requests(), 2, "ejected after 2 consecutive failures");
    assert_eq!(mesh_metric(&checkout, "weir_endpoint_ejections_total", &[("pool", "shop/payments:80")]), 1.0);
    pods[1].app.set_status(200);
    wait_until("the replica takes traffic again", WAIT, || async {
        request(outbound).host("payments").send().await.assert_status(200);
        pods[1].app.requests() > 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_the_gateway_refuses_leaves_pool_health_as_it_was() {
    let pods = pods(2).await;
    pods[1].app.set_status(503);
    let policy = "outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1h}";
    let (checkout, dir) = checkout_to(&pods, policy).await;
    let outbound = checkout.outbound_addr.unwrap();
    for i in 0..4 {
        request(outbound).host("payments").send().await.assert_status(200);
        assert!(pods[1].app.requests() <= 2, "request {i}");
    }
    assert_eq!(pods[1].app.requests(), 2, "ejected after 2 consecutive failures");
    // an edit the gateway refuses (the identity is not a SPIFFE ID): the last good Service serves
    let path = dir.path().join("config/mesh.yaml");
    let refused = std::fs::read_to_string(&path)
        .unwrap()
        .replace("  name: payments\nspec:", "  name: payments\n  annotations: {weir.dev/identity: payments}\nspec:");
    assert!(refused.contains("weir.dev/identity"), "{refused}");
    replace(&path, &refused);
    wait_until("the edit is refused", WAIT, || async {
        mesh_metric(&checkout, "weir_config_rejected_objects", &[]) == 1.0
    })
    .await;
    for _ in 0..10 {
        request(outbound).host("payments").send().await.assert_status(200);
    }
    assert_eq!(pods[1].app.requests(), 2, "the failing replica is still ejected: the refused edit reset nothing");
    assert_eq!(mesh_metric(&checkout, "weir_endpoint_ejections_total", &[("pool", "shop/payments:80")]), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Authorization

const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const OPS: &str = "spiffe://cluster.local/ns/ops/sa/debug";

/// payments (pod 127.0.0.2) whose gateway reads its Service, EndpointSlice and `authorization`.
async fn guarded_payments(authorization: &str) -> Payments {
    guarded_payments_with(authorization, None, DefaultPolicy::AllowAuthenticated).await
}

/// [`guarded_payments`] whose EndpointSlice lists the IP `listed` instead of the pod's (a slice that has
/// not caught up with a new Pod), with `--default-policy` `default_policy`. The Service names
/// payments' identity in `weir.dev/identity`.
async fn guarded_payments_with(authorization: &str, listed: Option<IpAddr>, default_policy: DefaultPolicy) -> Payments {
    let app = EchoServer::start("payments", "127.0.0.2:0".parse().unwrap()).await.unwrap();
    let service = service_with_target_port("shop", "payments", 80, "http", app.addr().port())
        .replace("name: payments", &format!("name: payments\n  annotations: {{weir.dev/identity: '{PAYMENTS}'}}"));
    let config = docs(&[
        service,
        endpoints(
            "shop",
            "payments",
            "http",
            app.addr().port(),
            &[SocketAddr::new(listed.unwrap_or(app.addr().ip()), app.addr().port())],
        ),
        authorization.to_string(),
    ]);
    behind_gateway_with(Arc::new(Ca::new("mesh CA").unwrap()), app, 0, Some(&config), default_policy).await
}

fn mesh_authorization(spec: &str) -> String {
    format!("apiVersion: weir.dev/v1alpha1\nkind: MeshAuthorization\nmetadata: {{namespace: shop, name: payments}}\nspec:\n{}", indent(spec, 2))
}

/// `method path` from a caller with identity `id` (issued by `p`'s CA), with extra headers.
async fn call_as(p: &Payments, id: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let caller = p.ca.issue(&LeafSpec::svid(id, DAY)).unwrap();
    let mut conn =
        H1::over(connect(p.mesh.inbound_addr, &p.ca.bundle_pem(), Some(&caller)).await.unwrap()).await.unwrap();
    let port = p.app.addr().port().to_string();
    let mut req =
        http::Request::builder().method(method).uri(path).header("host", "payments").header("weir-target-port", port);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    conn.send(req.body(Full::<Bytes>::default()).unwrap()).await.unwrap()
}

const RULES: &str = "targetRef: {kind: Service, name: payments}
defaultMode: Deny
rules:
- from: [{identity: 'spiffe://cluster.local/ns/shop/sa/checkout'}]
  to: [{pathPrefix: /charge, methods: [POST]}]
- from: [{namespace: ops}]
  to: [{pathPrefix: /debug}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_the_named_callers_and_denies_the_rest_with_a_reason() {
    let p = guarded_payments(&mesh_authorization(RULES)).await;
    call_as(&p, CHECKOUT, "POST", "/charge/42", &[]).await.assert_status(200);
    call_as(&p, OPS, "GET", "/debug/vars", &[]).await.assert_status(200);
    assert_eq!(p.app.requests(), 2);

    let no_rule = call_as(&p, CHECKOUT, "GET", "/charge", &[]).await;
    assert_eq!(no_rule.status, 403, "{no_rule}");
    let reason = no_rule.header("weir-denied-reason").unwrap_or_default();
    assert!(
        reason.contains("no rule of MeshAuthorization shop/payments covers GET /charge")
            && reason.contains("defaultMode: Deny"),
        "{reason}"
    );

    let other = call_as(&p, CART, "POST", "/charge", &[]).await;
    assert_eq!(other.status, 403, "{other}");
    let reason = other.header("weir-denied-reason").unwrap_or_default();
    assert!(reason.contains(&format!("{CART} may not POST /charge on Service shop/payments")), "{reason}");
    // a caller cannot claim another identity in a header: only its certificate counts
    let xfcc = format!("By=spiffe://cluster.local/ns/shop/sa/payments;URI={CHECKOUT}");
    call_as(&p, CART, "POST", "/charge", &[("x-forwarded-client-cert", &xfcc)]).await.assert_status(403);
    call_as(&p, CHECKOUT, "GET", "/debug", &[]).await.assert_status(403);
    call_as(&p, CHECKOUT, "POST", "/chargeback", &[]).await.assert_status(403);
    assert_eq!(p.app.requests(), 2, "no denied request reached the workload");

    let text = p.mesh.metrics.encode();
    let denials = |source: &str, reason: &str| {
        metric(
            &text,
            "weir_mesh_authorization_denials_total",
            &[("source", source), ("reason", reason), ("destination", "payments.shop")],
        )
    };
    assert_eq!(denials(CHECKOUT, "no_rule"), 2.0, "GET /charge and POST /chargeback");
    assert_eq!(denials(CART, "not_allowed"), 2.0);
    assert_eq!(denials(CHECKOUT, "not_allowed"), 1.0, "GET /debug");
    // requests are counted when logged, just after the answer
    let ops = [("direction", "inbound"), ("source", OPS), ("destination", "payments.shop"), ("status_class", "2xx")];
    wait_until("ops' request counted", WAIT, || async {
        metric(&p.mesh.metrics.encode(), "weir_mesh_requests_total", &ops) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_checks_the_normalized_path_which_is_what_the_workload_gets() {
    let p = guarded_payments(&mesh_authorization(RULES)).await;
    // checkout may POST /charge, and nothing else: dot segments, encoded dots and doubled
    // slashes must not walk it to /refund
    for raw in ["/charge/../refund", "/charge/%2e%2e/refund", "/charge//../refund", "/charge/%2E%2e/refund"] {
        let resp = call_as(&p, CHECKOUT, "POST", raw, &[]).await;
        assert_eq!(resp.status, 403, "{raw}: {resp}");
        let reason = resp.header("weir-denied-reason").unwrap_or_default();
        assert!(reason.contains("covers POST /refund"), "{raw} is judged as /refund: {reason}");
    }
    let resp = call_as(&p, CHECKOUT, "POST", "/charge/../../refund", &[]).await;
    assert_eq!(resp.status, 400, "a path above the root: {resp}");
    assert_eq!(p.app.requests(), 0, "none of them reached the workload");

    // an allowed request reaches the workload with the path that was authorized
    let resp = call_as(&p, CHECKOUT, "POST", "/charge/./42//x/..", &[]).await;
    assert_eq!(resp.status, 200, "{resp}");
    assert_eq!(resp.upstream_path(), "/charge/42/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_its_slice_does_not_list_yet_is_not_open_while_its_service_denies_by_default() {
    // the slice still lists the old Pod: the new one's address resolves to no Service
    let old_pod: IpAddr = "127.0.0.9".parse().unwrap();
    let p = guarded_payments_with(&mesh_authorization(RULES), Some(old_pod), DefaultPolicy::AllowAuthenticated).await;
    for (who, method, path) in [(CHECKOUT, "POST", "/charge"), (CART, "GET", "/refund")] {
        let resp = call_as(&p, who, method, path, &[]).await;
        assert_eq!(resp.status, 403, "{who} {method} {path}: {resp}");
        let reason = resp.header("weir-denied-reason").unwrap_or_default();
        assert!(
            reason.contains("no EndpointSlice lists")
                && reason.contains("Service shop/payments of this workload denies by default"),
            "{reason}"
        );
    }
    assert_eq!(p.app.requests(), 0, "the workload got none of them");
    let text = p.mesh.metrics.encode();
    let unresolved = [("source", CHECKOUT), ("reason", "unresolved"), ("destination", "payments.shop")];
    assert_eq!(metric(&text, "weir_mesh_authorization_denials_total", &unresolved), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_default_policy_decides_what_no_mesh_authorization_governs() {
    // no MeshAuthorization at all: allow-authenticated lets any caller in, deny refuses
    let open = guarded_payments_with("", None, DefaultPolicy::AllowAuthenticated).await;
    call_as(&open, CART, "GET", "/anything", &[]).await.assert_status(200);
    let closed = guarded_payments_with("", None, DefaultPolicy::Deny).await;
    let resp = call_as(&closed, CART, "GET", "/anything", &[]).await;
    assert_eq!(resp.status, 403, "{resp}");
    let reason = resp.header("weir-denied-reason").unwrap_or_default();
    assert!(reason.contains("--default-policy is deny"), "{reason}");
    // the default also covers an address no slice lists, where no Service denies
    let lagging = guarded_payments_with("", Some("127.0.0.9".parse().unwrap()), DefaultPolicy::Deny).await;
    call_as(&lagging, CART, "GET", "/anything", &[]).await.assert_status(403);
    assert_eq!(closed.app.requests() + lagging.app.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_every_authenticated_caller_is_allowed_and_policy_changes_apply_live() {
    let p = guarded_payments("").await;
    call_as(&p, CART, "DELETE", "/anything", &[]).await.assert_status(200);
    let path = p._dir.path().join("config/policy.yaml");
    let only = |rules: &str| {
        mesh_authorization(&format!(
            "targetRef: {{kind: Service, name: payments}}\ndefaultMode: Deny\nrules: {rules}\n"
        ))
    };
    replace(&path, &only(&format!("[{{from: [{{identity: '{CART}'}}]}}]")));
    wait_until("the policy applies", WAIT, || async { call_as(&p, CHECKOUT, "GET", "/", &[]).await.status == 403 })
        .await;
    call_as(&p, CART, "GET", "/", &[]).await.assert_status(200);
    // a broken version is refused, and the last good one keeps serving (not everyone denied)
    replace(&path, &only("[{from: [{identity: not-a-spiffe-id}]}]"));
    wait_until("the broken version is refused", WAIT, || async {
        metric(&p.mesh.metrics.encode(), "weir_config_rejected_objects", &[]) == 1.0
    })
    .await;
    call_as(&p, CART, "GET", "/", &[]).await.assert_status(200);
    call_as(&p, CHECKOUT, "GET", "/", &[]).await.assert_status(403);
    replace(&path, &only("[]"));
    wait_until("the fixed version applies", WAIT, || async { call_as(&p, CART, "GET", "/", &[]).await.status == 403 })
        .await;
    assert_eq!(metric(&p.mesh.metrics.encode(), "weir_config_rejected_objects", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_beside_the_identity_does_not_reload_it() {
    // e.g. the gateway's own log in that directory: reloading on it would log again, and loop
    let p = payments().await;
    let files = p.mesh.identity_files.clone().unwrap();
    let dir = files.cert.parent().unwrap().to_path_buf();
    let count =
        |result: &str| metric(&p.mesh.metrics.encode(), "weir_mesh_identity_reloads_total", &[("result", result)]);
    std::fs::write(dir.join("gateway.log"), "serving\n").unwrap();
    wait_until("the change is seen", WAIT, || async { count("unchanged") >= 1.0 }).await;
    assert_eq!((count("ok"), count("refused")), (0.0, 0.0), "nothing reloaded");
    let next = Ca::new("next mesh CA").unwrap();
    replace(&files.bundle, &format!("{}{}", p.ca.bundle_pem(), next.bundle_pem()));
    reloads_reach(&p, 1.0).await;
    assert_eq!(p.mesh.credentials.load().bundle.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_from_a_secret_serves_and_follows_the_secret() {
    let ca = Arc::new(Ca::new("mesh CA").unwrap());
    let app = EchoServer::start("payments", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("identity.yaml");
    let first = ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap();
    std::fs::write(&secret_file, identity_secret("shop", "kubernetes.io/tls", &first, &ca.bundle_pem())).unwrap();
    let opts = MeshOptions {
        inbound: "127.0.0.1:0".parse().unwrap(),
        identity: IdentitySource::Secret("shop".into(), "payments-identity".into()),
        workload: Workload { address: app.addr().ip(), ports: vec![app.addr().port()] },
        source: Some(ConfigSource::Dir(dir.path().to_path_buf())),
        outbound: None,
        admin: "127.0.0.1:0".parse().unwrap(),
        default_policy: DefaultPolicy::AllowAuthenticated,
        tls: Default::default(),
        limits: Default::default(),
    };
    let mesh = start_mesh(opts).await.unwrap();
    let p = Payments { mesh, ca: ca.clone(), app, _dir: dir };
    let checkout = ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap();
    call(&p, Some(&checkout), p.app.addr().port(), &[]).await.unwrap().assert_status(200);
    assert_eq!(p.mesh.credentials.load().id.to_string(), PAYMENTS);
    let served_first = p.mesh.credentials.load().not_after.clone();

    // a new certificate in the Secret is served without a restart
    let next = ca.issue(&LeafSpec::svid(PAYMENTS, 2 * DAY)).unwrap();
    replace(&secret_file, &identity_secret("shop", "kubernetes.io/tls", &next, &ca.bundle_pem()));
    reloads_reach(&p, 1.0).await;
    assert_ne!(p.mesh.credentials.load().not_after, served_first);
    call(&p, Some(&checkout), p.app.addr().port(), &[]).await.unwrap().assert_status(200);

    // a Secret whose key does not match is refused; the last good identity keeps serving
    let other = ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap();
    let mismatched = Issued { chain_pem: first.chain_pem.clone(), key_pem: other.key_pem.clone() };
    replace(&secret_file, &identity_secret("shop", "kubernetes.io/tls", &mismatched, &ca.bundle_pem()));
    let refused = || metric(&p.mesh.metrics.encode(), "weir_mesh_identity_reloads_total", &[("result", "refused")]);
    wait_until("the broken Secret is refused", WAIT, || async { refused() == 1.0 }).await;
    call(&p, Some(&checkout), p.app.addr().port(), &[]).await.unwrap().assert_status(200);
}

/// Service `shop/payments` (port 80) with `apps` as endpoints, and an HTTPRoute on it with `rules`
/// (YAML items of `spec.rules`).
fn payments_routed(apps: &[SocketAddr], rules: &str) -> String {
    let port = apps[0].port();
    docs(&[
        service_with_target_port("shop", "payments", 80, "http", port),
        endpoints("shop", "payments", "http", port, apps),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: shop, name: payments}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: payments, port: 80}}]\n  rules:\n{}\n",
            indent(rules, 4)
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_timeout_on_a_service_bounds_its_requests() {
    let pods = pods(1).await;
    pods[0].app.set_delay(Duration::from_secs(10));
    let app = pods[0].app.addr();
    let config = payments_routed(
        &[app],
        "- matches: [{path: {type: PathPrefix, value: /slow}}]
  timeouts: {request: 300ms}
  backendRefs: [{name: payments, port: 80}]",
    );
    let (checkout, _dir) = checkout_gateway_with(&pods[0], &config).await;
    let started = std::time::Instant::now();
    let resp = request(checkout.outbound_addr.unwrap()).host("payments").path("/slow").send().await;
    assert_eq!(resp.status, 504, "{resp}");
    assert!(started.elapsed() < Duration::from_secs(5), "cut at the route's 300ms, not the app's 10 s");
    // counted when the request is logged, just after the answer
    let route = "httproute/shop/payments/rule/0";
    wait_until("the request is counted under its route", WAIT, || async {
        mesh_metric(&checkout, "weir_mesh_requests_total", &[("route", route), ("status_class", "5xx")]) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_say_its_non_idempotent_requests_are_retried() {
    let pods = pods(2).await;
    pods[1].app.set_status(503);
    let port = pods[0].app.addr().port();
    let route = |name: &str, path: &str, annotations: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{namespace: shop, name: {name}{annotations}}}
spec:
  parentRefs: [{{group: '', kind: Service, name: payments, port: 80}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
      backendRefs: [{{name: payments, port: 80}}]
"
        )
    };
    let config = docs(&[
        service_with_target_port("shop", "payments", 80, "http", port),
        endpoints("shop", "payments", "http", port, &[pods[0].app.addr(), pods[1].app.addr()]),
        route("refunds", "/refund", ""),
        route("charges", "/charge", ", annotations: {weir.dev/retry-non-idempotent: 'true'}"),
    ]);
    let (checkout, _dir) = checkout_gateway_with(&pods[0], &config).await;
    let outbound = checkout.outbound_addr.unwrap();
    let post = |path: &'static str| request(outbound).host("payments").method("POST").path(path).body("x").send();
    let mut refunds = vec![];
    for _ in 0..4 {
        refunds.push(post("/refund").await.status);
    }
    assert_eq!(refunds.iter().filter(|s| **s == 503).count(), 2, "a POST is not retried by default: {refunds:?}");
    for i in 0..10 {
        let resp = post("/charge").await;
        assert_eq!(resp.status, 200, "charge {i}: the route allows retrying its POSTs: {resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_filters_apply_in_the_mesh_on_every_try() {
    let pods = pods(2).await;
    pods[1].app.set_status(503); // every request that lands there is retried on pods[0]
    let config = payments_routed(
        &[pods[0].app.addr(), pods[1].app.addr()],
        "- matches: [{path: {type: PathPrefix, value: /v1}}]
  filters:
    - type: URLRewrite
      urlRewrite: {hostname: payments.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-api-version, value: '2'}], remove: [x-debug]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by-route, value: v1-compat}]}
  backendRefs: [{name: payments, port: 80}]
- matches: [{path: {type: PathPrefix, value: /old}}]
  filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}",
    );
    let (checkout, _dir) = checkout_gateway_with(&pods[0], &config).await;
    let outbound = checkout.outbound_addr.unwrap();
    for i in 0..10 {
        let resp = request(outbound).host("payments").path("/v1/charges?id=7").header("x-debug", "1").send().await;
        assert_eq!(resp.status, 200, "request {i}: {resp}");
        assert_eq!(resp.upstream_path(), "/v2/charges?id=7", "the rewrite reaches the app, on a retry too");
        assert_eq!(resp.upstream_host(), "payments.internal");
        assert_eq!(resp.upstream_header("x-api-version").as_deref(), Some("2"));
        assert_eq!(resp.upstream_header("x-debug"), None);
        assert_eq!(resp.header("x-served-by-route"), Some("v1-compat"));
    }
    assert!(pods[1].app.requests() > 0, "some requests were retried");
    assert_eq!(pods[1].app.requests(), mesh_metric(&checkout, "weir_mesh_retries_total", &[]) as u64);

    let served = || pods.iter().map(|p| p.app.requests()).sum::<u64>();
    let before = served();
    let resp = request(outbound).host("payments").path("/old/receipts?id=7").send().await;
    assert_eq!(resp.status, 301, "{resp}");
    assert_eq!(resp.location(), Some("http://payments/new/receipts?id=7"));
    assert_eq!(served(), before, "the gateway answers the redirect itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_route_steers_only_its_own_namespaces_calls() {
    // billing's payments (producer route: all to payments-v1) and, in checkout's namespace shop, a
    // stub that shop's consumer route sends billing/payments traffic to
    let v1 = payments_at(Arc::new(Ca::new("mesh CA").unwrap()), "payments-v1", "127.0.0.2", 0).await;
    let stub = payments_at(v1.ca.clone(), "payments-stub", "127.0.0.3", v1.mesh.inbound_addr.port()).await;
    let (a1, a2) = (v1.app.addr(), stub.app.addr());
    let route = |ns: &str, name: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: {ns}, name: {name}}}\nspec:\n  parentRefs: [{{group: '', kind: Service, namespace: billing, name: payments, port: 80}}]\n  rules:\n    - backendRefs: [{{name: {backend}, port: 80}}]\n"
        )
    };
    let mut objects = vec![
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: billing, name: payments}\nspec: {ports: [{name: http, port: 80}]}\n".to_string(),
        service_with_target_port("billing", "payments-v1", 80, "http", a1.port()),
        endpoints("billing", "payments-v1", "http", a1.port(), &[a1]),
        service_with_target_port("shop", "payments-stub", 80, "http", a2.port()),
        endpoints("shop", "payments-stub", "http", a2.port(), &[a2]),
        route("billing", "payments", "payments-v1"),
        // another namespace's consumer route is for that namespace's callers, not shop's
        route("ops", "payments-for-ops", "payments-v1"),
    ];
    let without_consumer_route = docs(&objects);
    objects.push(route("shop", "payments-for-shop", "payments-stub"));
    let (checkout, _dir) = checkout_gateway_with(&v1, &docs(&objects)).await;
    let outbound = checkout.outbound_addr.unwrap();
    for _ in 0..5 {
        let resp = request(outbound).host("payments.billing").send().await;
        assert_eq!(resp.status, 200, "{resp}");
        assert_eq!(resp.echo_name(), Some("payments-stub"), "shop's consumer route wins for shop's calls");
    }
    assert_eq!(v1.app.requests(), 0);
    assert_eq!(mesh_metric(&checkout, "weir_config_rejected_objects", &[]), 0.0, "every route is valid");

    // without it, the producer route applies
    let (checkout, _dir) = checkout_gateway_with(&v1, &without_consumer_route).await;
    let resp = request(checkout.outbound_addr.unwrap()).host("payments.billing").send().await;
    assert_eq!(resp.echo_name(), Some("payments-v1"), "{resp}");

    // a consumer route may send to billing's own Service (with its own filters) once billing's
    // ReferenceGrant allows shop's routes to
    let to_billing = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {namespace: shop, name: payments-tagged}\nspec:\n  parentRefs: [{group: '', kind: Service, namespace: billing, name: payments, port: 80}]\n  rules:\n    - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-caller-namespace, value: shop}]}}]\n      backendRefs: [{name: payments-v1, namespace: billing, port: 80}]\n";
    let grant = reference_grant("billing", "shop-routes", ("HTTPRoute", "shop"), "Service", Some("payments-v1"));
    let (checkout, _dir) = checkout_gateway_with(&v1, &format!("{without_consumer_route}---\n{to_billing}")).await;
    let resp = request(checkout.outbound_addr.unwrap()).host("payments.billing").send().await;
    assert_eq!(resp.status, 500, "no grant yet: {resp}");
    let (checkout, _dir) =
        checkout_gateway_with(&v1, &format!("{without_consumer_route}---\n{to_billing}---\n{grant}")).await;
    let resp = request(checkout.outbound_addr.unwrap()).host("payments.billing").send().await;
    assert_eq!(resp.echo_name(), Some("payments-v1"), "{resp}");
    assert_eq!(resp.upstream_header("x-caller-namespace").as_deref(), Some("shop"), "through shop's route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_mesh_lets_requests_in_flight_finish_on_sigterm() {
    let ca = Ca::new("mesh CA").unwrap();
    let app = EchoServer::start("payments", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = identity_files(dir.path(), &ca, PAYMENTS);
    let [inbound, admin] = free_ports(2)[..] else { unreachable!() };
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["mesh", "--inbound", &format!("127.0.0.1:{inbound}"), "--admin", &format!("127.0.0.1:{admin}")])
        .args(["--workload-address", "127.0.0.1", "--workload-port", &app.addr().port().to_string()])
        .arg("--identity-cert")
        .arg(&files.cert)
        .arg("--identity-key")
        .arg(&files.key)
        .arg("--trust-bundle")
        .arg(&files.bundle)
        .args(["--drain-timeout", "20s"])
        .kill_on_drop(true)
        .spawn()
        .expect("start weir mesh");
    let inbound = local(inbound);
    let checkout = ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap();
    let bundle = ca.bundle_pem();
    wait_until("the gateway serves", WAIT, || async {
        call_via(inbound, &bundle, Some(&checkout), app.addr().port(), &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await;

    app.set_delay(Duration::from_millis(1_500));
    let before = app.requests();
    let in_flight = tokio::spawn({
        let (bundle, checkout, port) = (bundle.clone(), checkout.clone(), app.addr().port());
        async move { call_via(inbound, &bundle, Some(&checkout), port, &[]).await }
    });
    wait_until("the slow request reaches the workload", WAIT, || async { app.requests() > before }).await;
    let pid = gateway.id().expect("the gateway's pid").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    let resp = in_flight.await.unwrap().expect("the request in flight is answered, not cut");
    assert_eq!(resp.status, 200, "{resp}");
    let status =
        tokio::time::timeout(Duration::from_secs(20), gateway.wait()).await.expect("the gateway exits").unwrap();
    assert!(status.success(), "weir mesh exits cleanly after draining: {status:?}");
}
