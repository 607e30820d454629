//! Configuration reloads while weir serves: changes under continuous load, Gateway listeners
//! added and removed at runtime, how fast a changed file is applied, deleted and recreated files,
//! and health state surviving endpoint churn.
//!
//! weir reads its manifests from a directory; each test changes files there (atomically, write +
//! rename) and waits for weir's configuration generation to advance before checking.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use weir::demo::echo::EchoServer;

const NS: &str = "default";

// ---------------------------------------------------------------------------------------------
// Manifests

/// Service `default/<name>` (port 80 named `http`) with an EndpointSlice listing `endpoints`
/// (all on one port) as ready.
fn service_with(name: &str, endpoints: &[&EchoServer]) -> String {
    let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr()).collect();
    service_at(NS, name, &addrs)
}

// ---------------------------------------------------------------------------------------------
// Clients and metrics

/// `GET http://<host><path>` on the keep-alive connection `conn`: the echo server that answered
/// 200; panics on anything else.
async fn served_by(conn: &mut H1, host: &str, path: &str) -> String {
    let resp = conn.get(host, path).await.unwrap_or_else(|e| panic!("keep-alive GET http://{host}{path}: {e:#}"));
    match (resp.status, resp.echo_name()) {
        (200, Some(name)) => name.to_string(),
        _ => panic!("keep-alive GET http://{host}{path}: expected a 200 from an echo server, got {resp}"),
    }
}

/// The echo server that answered `GET http://<host>/` on `addr` over a fresh connection, or the
/// status when it is not a 200 from an echo server.
async fn who(addr: SocketAddr, host: &str) -> Result<String, u16> {
    let resp = get(addr, host, "/").await;
    match (resp.status, resp.echo_name()) {
        (200, Some(name)) => Ok(name.to_string()),
        (status, _) => Err(status),
    }
}

/// Sends `n` requests and returns who answered each.
async fn answers(addr: SocketAddr, host: &str, n: usize) -> Vec<Result<String, u16>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(who(addr, host).await);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Changes under load

/// What the load clients saw.
#[derive(Default)]
struct LoadLog {
    sent: AtomicUsize,
    failures: Mutex<Vec<String>>,
    served: Mutex<BTreeMap<String, usize>>,
}

impl LoadLog {
    fn record(&self, client: &str, outcome: anyhow::Result<Resp>) {
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        match outcome.map(|r| (r.status, r.echo_name().map(str::to_string))) {
            Ok((200, Some(name))) if name.starts_with("blue") || name == "green" => {
                *self.served.lock().unwrap().entry(name).or_default() += 1;
            }
            other => self.failures.lock().unwrap().push(format!("{client} request #{n}: {other:?}")),
        }
    }
}

/// At least this many requests in all, however quickly the changes go.
const LOAD_MIN: usize = 2000;
/// At most this many requests per client, however slowly they go.
const LOAD_MAX_PER_CLIENT: usize = 20_000;

fn keep_loading(log: &LoadLog, done: &AtomicBool, mine: usize) -> bool {
    mine < LOAD_MAX_PER_CLIENT && (!done.load(Ordering::SeqCst) || log.sent.load(Ordering::SeqCst) < LOAD_MIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_under_load_fail_no_request() {
    let (blues, _) = replicas(NS, "blue", 2).await;
    let (green, green_yaml) = backend(NS, "green").await;
    let (_extra, extra_yaml) = backend(NS, "extra").await;
    let port = free_port();
    let gateway = local(port);
    const HOST: &str = "load.test";
    let weir = TestWeir::start(&[
        ("gateway.yaml", &class_and_gateway(NS, "edge", port)),
        ("blue.yaml", &service_with("blue", &[&blues[0]])),
        ("green.yaml", &green_yaml),
        ("extra.yaml", &extra_yaml),
        ("route.yaml", &weighted_route("main", "edge", &[HOST], &[("blue", 50), ("green", 50)])),
    ])
    .await;
    wait_listening(gateway).await;

    let log = Arc::new(LoadLog::default());
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    // Two clients open a connection per request, one keeps a single connection open throughout.
    for c in 0..2 {
        let (log, done) = (log.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut mine = 0;
            while keep_loading(&log, &done, mine) {
                let outcome = request(gateway).host(HOST).path("/").try_send().await;
                log.record(&format!("fresh-connection client {c}"), outcome);
                mine += 1;
            }
        }));
    }
    {
        let (log, done) = (log.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = H1::connect(gateway).await.unwrap_or_else(|e| panic!("connect to {gateway}: {e}"));
            let mut mine = 0;
            while keep_loading(&log, &done, mine) {
                log.record("keep-alive client", conn.get(HOST, "/").await);
                mine += 1;
            }
        }));
    }
    wait_until("the load is running", WAIT, || async { log.sent.load(Ordering::SeqCst) >= 50 }).await;
    let sent_before_changes = log.sent.load(Ordering::SeqCst);
    let generation_before_changes = weir.generation().await;

    // Cycle through the changes until most of the load ran while they happened.
    const CHANGES_PER_CYCLE: u64 = 8;
    const MAX_CYCLES: u64 = 6;
    let mut cycles = 0;
    while cycles < MAX_CYCLES && log.sent.load(Ordering::SeqCst) - sent_before_changes < LOAD_MIN {
        cycles += 1;
        let at = |step: &str| format!("cycle {cycles}: {step}");
        // 1. All traffic to blue (one replica).
        weir.apply("route.yaml", &weighted_route("main", "edge", &[HOST], &[("blue", 100), ("green", 0)])).await;
        for r in answers(gateway, HOST, 5).await {
            assert_eq!(r, Ok("blue-1".to_string()), "{}", at("after moving all traffic to blue"));
        }
        // 2. blue gets a second replica.
        weir.apply("blue.yaml", &service_with("blue", &[&blues[0], &blues[1]])).await;
        wait_until(&at("the new blue replica takes traffic"), WAIT, || async {
            who(gateway, HOST).await == Ok("blue-2".to_string())
        })
        .await;
        // 3. A new route on another host.
        weir.apply("extra-route.yaml", &weighted_route("extra", "edge", &["extra.test"], &[("extra", 1)])).await;
        assert_eq!(who(gateway, "extra.test").await, Ok("extra".to_string()), "{}", at("new route"));
        // 4. All traffic to green.
        weir.apply("route.yaml", &weighted_route("main", "edge", &[HOST], &[("blue", 0), ("green", 100)])).await;
        let green_before = green.requests();
        for r in answers(gateway, HOST, 5).await {
            assert_eq!(r, Ok("green".to_string()), "{}", at("after moving all traffic to green"));
        }
        assert!(green.requests() >= green_before + 5);
        // 5. blue loses its first replica (which keeps running: requests already sent to it
        //    finish).
        weir.apply("blue.yaml", &service_with("blue", &[&blues[1]])).await;
        // 6. Back to blue, now only blue-2.
        weir.apply("route.yaml", &weighted_route("main", "edge", &[HOST], &[("blue", 100), ("green", 0)])).await;
        let blue1_before = blues[0].requests();
        for r in answers(gateway, HOST, 10).await {
            assert_eq!(r, Ok("blue-2".to_string()), "{}", at("after removing blue-1 from the EndpointSlice"));
        }
        // 7. The extra route goes away.
        weir.delete("extra-route.yaml").await;
        assert_eq!(who(gateway, "extra.test").await, Err(404), "{}", at("removed route"));
        assert_eq!(blues[0].requests(), blue1_before, "{}", at("blue-1 got requests after leaving the EndpointSlice"));
        // 8. Back to the start: blue-1 only, split 50/50 with green.
        weir.write("blue.yaml", &service_with("blue", &[&blues[0]]));
        weir.apply("route.yaml", &weighted_route("main", "edge", &[HOST], &[("blue", 50), ("green", 50)])).await;
        wait_until(&at("blue-1 and green share the traffic again"), WAIT, || async {
            let seen = answers(gateway, HOST, 4).await;
            seen.contains(&Ok("blue-1".to_string())) && seen.contains(&Ok("green".to_string()))
        })
        .await;
    }

    let sent_during_changes = log.sent.load(Ordering::SeqCst) - sent_before_changes;
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("load client");
    }

    let failures = log.failures.lock().unwrap().clone();
    let sent = log.sent.load(Ordering::SeqCst);
    eprintln!(
        "{sent} requests, {sent_during_changes} during {cycles} cycles of changes, served: {:?}",
        log.served.lock().unwrap()
    );
    assert!(failures.is_empty(), "{} of {sent} requests failed:\n{}", failures.len(), failures.join("\n"));
    assert!(sent >= LOAD_MIN, "{sent}");
    assert!(sent_during_changes >= 100, "only {sent_during_changes} requests ran while the configuration changed");
    let served = log.served.lock().unwrap().clone();
    for name in ["blue-1", "blue-2", "green"] {
        assert!(served.get(name).is_some_and(|n| *n > 0), "{name} served none of the load: {served:?}");
    }

    let generation = weir.generation().await;
    let metrics = weir.metrics().await;
    assert_eq!(metric(&metrics, "weir_config_generation", &[]), generation as f64, "{metrics}");
    // Step 8 writes two files at once, which weir may apply as one generation.
    let least = generation_before_changes + cycles * (CHANGES_PER_CYCLE - 1);
    assert!(generation >= least, "{cycles} cycles of changes: generation {generation}, expected at least {least}");
    assert!(metric(&metrics, "weir_config_apply_seconds_count", &[]) >= least as f64, "{metrics}");
}

// ---------------------------------------------------------------------------------------------
// Listeners at runtime

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_listener_comes_and_goes_without_a_restart() {
    let ports = free_ports(2);
    let (first, second) = (local(ports[0]), local(ports[1]));
    let (_b, weir) = TestWeir::with_backends(
        &["first", "second"],
        &[
            ("gateway.yaml", &class_and_gateway(NS, "one", ports[0])),
            ("route-one.yaml", &weighted_route("one", "one", &["one.test"], &[("first", 1)])),
        ],
    )
    .await;
    wait_listening(first).await;
    let admin_before = weir.admin;
    assert!(tokio::net::TcpStream::connect(second).await.is_err(), "nothing listens on {second} yet");

    let mut kept = H1::connect(first).await.unwrap_or_else(|e| panic!("connect to {first}: {e}"));
    assert_eq!(served_by(&mut kept, "one.test", "/").await, "first");

    // A second Gateway on a new port.
    let gateway_two = gateway(NS, "two", ports[1]);
    let route_two = weighted_route("two", "two", &["two.test"], &[("second", 1)]);
    weir.apply("gateway-two.yaml", &docs(&[gateway_two, route_two])).await;
    wait_until(&format!("the new listener on {second} serves its route"), WAIT, || async move {
        matches!(request(second).host("two.test").path("/").try_send().await, Ok(r) if r.status == 200 && r.echo_name() == Some("second"))
    })
    .await;
    // The connection opened before the change still works, and so do new ones.
    assert_eq!(served_by(&mut kept, "one.test", "/").await, "first");
    get(first, "one.test", "/").await.assert_served_by("first");
    // Each listener serves only its own Gateway's routes.
    get(second, "one.test", "/").await.assert_status(404);
    get(first, "two.test", "/").await.assert_status(404);

    // Removing the Gateway closes its port.
    weir.delete("gateway-two.yaml").await;
    wait_until(&format!("{second} refuses connections"), WAIT, || async move {
        matches!(tokio::net::TcpStream::connect(second).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    assert_eq!(served_by(&mut kept, "one.test", "/").await, "first");
    get(first, "one.test", "/").await.assert_served_by("first");
    assert_eq!(weir.admin, admin_before);
    let dump = weir.config_dump().await;
    let listeners: Vec<String> =
        dump["listeners"].as_array().unwrap().iter().map(|l| l["address"].as_str().unwrap_or("").to_string()).collect();
    assert!(!listeners.contains(&second.to_string()), "{listeners:?}");
    assert!(listeners.contains(&first.to_string()), "{listeners:?}");
}

// ---------------------------------------------------------------------------------------------
// How fast a change is applied

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_to_a_file_is_applied_and_its_apply_time_measured() {
    let port = free_port();
    let gateway = local(port);
    const HOST: &str = "fast.test";
    let (_b, weir) = TestWeir::with_backends(
        &["a", "b"],
        &[
            ("gateway.yaml", &class_and_gateway(NS, "edge", port)),
            ("route.yaml", &weighted_route("r", "edge", &[HOST], &[("a", 1)])),
        ],
    )
    .await;
    wait_listening(gateway).await;
    assert_eq!(who(gateway, HOST).await, Ok("a".to_string()));
    let applies_before = metric(&weir.metrics().await, "weir_config_apply_seconds_count", &[]);

    // how fast is measured (weir_config_apply_seconds, benches/config.rs), not bounded here: the
    // timing logic (the watcher's debounce) is pinned on a paused clock in src/source/dir.rs
    let mut took = Vec::new();
    for (i, target) in ["b", "a", "b"].into_iter().enumerate() {
        let before = weir.generation().await;
        let written = Instant::now();
        weir.write("route.yaml", &weighted_route("r", "edge", &[HOST], &[(target, 1)]));
        // Poll every few milliseconds; give up well after the bound to report how long it took.
        let elapsed = loop {
            if who(gateway, HOST).await.as_deref() == Ok(target) {
                break written.elapsed();
            }
            assert!(written.elapsed() < WAIT, "change {i} to {target} not applied within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        took.push(elapsed);
        weir.wait_generation_after(before).await;
    }
    eprintln!("write → first request served by the new configuration: {took:?}");

    let metrics = weir.metrics().await;
    let count = metric(&metrics, "weir_config_apply_seconds_count", &[]) - applies_before;
    assert!(count >= 3.0, "weir_config_apply_seconds counted {count} applies:\n{metrics}");
    assert!(metric(&metrics, "weir_config_apply_seconds_sum", &[]) > 0.0, "apply time is measured:\n{metrics}");
}

/// A weighted split holds through any number of rebuilds: each publish used to start the split
/// over at its first backend, so with a publish between requests a 3:1 split sent everything
/// to the first backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_holds_through_rebuilds() {
    let port = free_port();
    let gateway = local(port);
    const HOST: &str = "split.test";
    let (_b, weir) = TestWeir::with_backends(
        &["a", "b"],
        &[
            ("gateway.yaml", &class_and_gateway(NS, "edge", port)),
            ("route.yaml", &weighted_route("r", "edge", &[HOST], &[("a", 3), ("b", 1)])),
        ],
    )
    .await;
    wait_listening(gateway).await;
    let mut served = BTreeMap::<String, usize>::new();
    for i in 0..40u16 {
        // a change elsewhere: a new generation before every request
        let before = weir.generation().await;
        weir.write("other.yaml", &service(NS, "other", 1000 + i, "http"));
        weir.wait_generation_after(before).await;
        *served.entry(who(gateway, HOST).await.expect("served")).or_default() += 1;
    }
    assert_eq!(served.get("a"), Some(&30), "3:1 over 40 requests, one per generation: {served:?}");
    assert_eq!(served.get("b"), Some(&10), "{served:?}");
}

/// Endpoints change all the time in a cluster: such a change goes to the pools, with no route
/// translated or compiled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_only_change_reaches_the_pools_without_translating_routes() {
    let (echoes, _) = replicas(NS, "app", 2).await;
    let port = free_port();
    let gateway = local(port);
    const HOST: &str = "endpoints.test";
    let weir = TestWeir::start(&[
        ("gateway.yaml", &class_and_gateway(NS, "edge", port)),
        ("app.yaml", &service_with("app", &[&echoes[0]])),
        ("route.yaml", &weighted_route("r", "edge", &[HOST], &[("app", 1)])),
    ])
    .await;
    wait_listening(gateway).await;
    let counts = |metrics: &str| {
        (
            metric(metrics, "weir_config_translate_seconds_count", &[]),
            metric(metrics, "weir_config_endpoint_updates_total", &[]),
        )
    };
    let (translates, updates) = counts(&weir.metrics().await);

    weir.apply("app.yaml", &service_with("app", &[&echoes[0], &echoes[1]])).await;
    let seen = answers(gateway, HOST, 4).await;
    assert!(seen.contains(&Ok("app-2".to_string())), "the new endpoint serves: {seen:?}");
    assert_eq!(counts(&weir.metrics().await), (translates, updates + 1.0), "no translation");

    weir.apply("app.yaml", &service_with("app", &[&echoes[1]])).await;
    assert_eq!(answers(gateway, HOST, 4).await, vec![Ok("app-2".to_string()); 4], "the old one is gone");
    assert_eq!(counts(&weir.metrics().await), (translates, updates + 2.0));

    // a change to a route is translated
    weir.apply("route.yaml", &weighted_route("r", "edge", &[HOST, "also.test"], &[("app", 1)])).await;
    assert_eq!(who(gateway, "also.test").await, Ok("app-2".to_string()));
    assert_eq!(counts(&weir.metrics().await), (translates + 1.0, updates + 2.0));
}

// ---------------------------------------------------------------------------------------------
// Deleted and recreated files

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_file_removes_its_routes_and_recreating_it_restores_them() {
    let b = backends(NS, &["a", "b"]).await;
    let port = free_port();
    let gateway = local(port);
    let route_a = weighted_route("ra", "edge", &["a.test"], &[("a", 1)]);
    let route_b = weighted_route("rb", "edge", &["b.test"], &[("b", 1)]);
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("gateway.yaml", &class_and_gateway(NS, "edge", port)),
        ("route-a.yaml", &route_a),
        ("route-b.yaml", &route_b),
    ])
    .await;
    wait_listening(gateway).await;
    assert_eq!(who(gateway, "a.test").await, Ok("a".to_string()));
    assert_eq!(who(gateway, "b.test").await, Ok("b".to_string()));

    weir.delete("route-b.yaml").await;
    assert_eq!(who(gateway, "b.test").await, Err(404), "route of the deleted file");
    assert_eq!(who(gateway, "a.test").await, Ok("a".to_string()), "route of another file");

    weir.apply("route-b.yaml", &route_b).await;
    assert_eq!(who(gateway, "b.test").await, Ok("b".to_string()), "route of the recreated file");

    // Deleting every route file leaves the listener without routes.
    weir.delete("route-a.yaml").await;
    weir.delete("route-b.yaml").await;
    assert_eq!(who(gateway, "a.test").await, Err(404));
    assert_eq!(who(gateway, "b.test").await, Err(404));
    weir.apply("route-a.yaml", &route_a).await;
    assert_eq!(who(gateway, "a.test").await, Ok("a".to_string()));
    assert!(weir.rejections().await.is_empty(), "{:#?}", weir.rejections().await);
}

// ---------------------------------------------------------------------------------------------
// Health state across endpoint churn

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_keeps_health_state() {
    let (echoes, _) = replicas(NS, "app", 3).await;
    let (a, b, c) = (&echoes[0], &echoes[1], &echoes[2]);
    let port = free_port();
    let gateway = local(port);
    const HOST: &str = "churn.test";
    // A slow check: were A's health reset by the change, it would take traffic for a good while
    // before the next probes found it failing again.
    let policy = |interval: &str| {
        let health_check = format!(
            "healthCheck:
  type: HTTP
  http: {{path: /healthz}}
  interval: {interval}
  unhealthyThreshold: 2
  healthyThreshold: 1
"
        );
        backend_policy("app-health", "app", &health_check)
    };
    let weir = TestWeir::start(&[
        ("gateway.yaml", &class_and_gateway(NS, "edge", port)),
        ("app.yaml", &service_with("app", &[a, b])),
        ("policy.yaml", &policy("1s")),
        ("route.yaml", &weighted_route("r", "edge", &[HOST], &[("app", 1)])),
    ])
    .await;
    wait_listening(gateway).await;
    assert!(weir.rejections().await.is_empty(), "{:#?}", weir.rejections().await);
    let a_endpoint = a.addr().to_string();
    let a_healthy = |metrics: &str| metric(metrics, "weir_endpoint_healthy", &[("endpoint", &a_endpoint)]);

    a.set_health_status(503);
    wait_until("A fails its health check and gets no traffic", WAIT, || async {
        a_healthy(&weir.metrics().await) == 0.0
            && answers(gateway, HOST, 10).await.iter().all(|r| r.as_deref() == Ok(b.name()))
    })
    .await;

    // C joins the EndpointSlice: it takes traffic at once, A still gets none.
    let a_before = a.requests();
    weir.apply("app.yaml", &service_with("app", &[a, b, c])).await;
    let seen = answers(gateway, HOST, 30).await;
    assert_eq!(a.requests(), a_before, "A got traffic right after the EndpointSlice changed: {seen:?}");
    assert!(seen.iter().any(|r| r.as_deref() == Ok(c.name())), "C got no traffic: {seen:?}");
    assert!(seen.iter().all(|r| r.is_ok()), "{seen:?}");
    assert_eq!(a_healthy(&weir.metrics().await), 0.0);

    // The BackendPolicy changes too: A still gets nothing.
    weir.apply("policy.yaml", &policy("900ms")).await;
    let seen = answers(gateway, HOST, 30).await;
    assert_eq!(a.requests(), a_before, "A got traffic right after the BackendPolicy changed: {seen:?}");
    assert!(seen.iter().all(|r| r.is_ok()), "{seen:?}");

    // B leaves the EndpointSlice: still A gets nothing, C takes everything.
    weir.apply("app.yaml", &service_with("app", &[a, c])).await;
    let seen = answers(gateway, HOST, 20).await;
    assert_eq!(a.requests(), a_before, "A got traffic after B left: {seen:?}");
    assert!(seen.iter().all(|r| r.as_deref() == Ok(c.name())), "{seen:?}");

    // A recovers: it gets traffic again.
    a.set_health_status(200);
    wait_until("A passes its health check again and gets traffic", WAIT, || async {
        answers(gateway, HOST, 4).await.iter().any(|r| r.as_deref() == Ok(a.name()))
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Passive ejections across configuration changes

/// The spec of BackendPolicy `default/app-policy` (for Service `app`): 60s ejections.
const LONG_EJECTION: &str = "outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 60s}\n";

/// Starts weir with Service `app` on A, B (`echoes[0..2]`; a third replica stays out of the
/// EndpointSlice), a 60s ejection time and a route for `churn.test`; makes A answer 503 and
/// sends requests until A is ejected. Returns weir and its Gateway listener.
async fn with_a_ejected(echoes: &[EchoServer]) -> (TestWeir, SocketAddr) {
    let port = free_port();
    let gateway = local(port);
    let weir = TestWeir::start(&[
        ("gateway.yaml", &class_and_gateway(NS, "edge", port)),
        ("app.yaml", &service_with("app", &[&echoes[0], &echoes[1]])),
        ("policy.yaml", &backend_policy("app-policy", "app", LONG_EJECTION)),
        ("route.yaml", &weighted_route("r", "edge", &["churn.test"], &[("app", 1)])),
    ])
    .await;
    wait_listening(gateway).await;
    assert!(weir.rejections().await.is_empty(), "{:#?}", weir.rejections().await);
    let a = &echoes[0];
    a.set_status(503);
    let a_endpoint = a.addr().to_string();
    wait_until("A is ejected", WAIT, || async {
        let _ = who(gateway, "churn.test").await;
        let metrics = weir.metrics().await;
        metric(&metrics, "weir_endpoint_ejections_total", &[("endpoint", &a_endpoint)]) >= 1.0
            && metric(&metrics, "weir_endpoint_healthy", &[("endpoint", &a_endpoint)]) == 0.0
    })
    .await;
    (weir, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_keeps_an_ejected_endpoint_out() {
    let (echoes, _) = replicas(NS, "app", 3).await;
    let (a, c) = (&echoes[0], &echoes[2]);
    let (weir, gateway) = with_a_ejected(&echoes).await;

    let a_before = a.requests();
    weir.apply("app.yaml", &service_with("app", &[&echoes[0], &echoes[1], &echoes[2]])).await;
    let seen = answers(gateway, "churn.test", 30).await;
    assert_eq!(a.requests(), a_before, "the ejected endpoint got traffic after C joined: {seen:?}");
    assert!(seen.iter().all(|r| r.is_ok()), "{seen:?}");
    assert!(seen.iter().any(|r| r.as_deref() == Ok(c.name())), "C got no traffic: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_keeps_an_ejected_endpoint_out() {
    let (echoes, _) = replicas(NS, "app", 3).await;
    let a = &echoes[0];
    let (weir, gateway) = with_a_ejected(&echoes).await;
    let a_endpoint = a.addr().to_string();

    // A change that keeps the algorithm: A stays out.
    let a_before = a.requests();
    weir.apply("policy.yaml", &backend_policy("app-policy", "app", &format!("{LONG_EJECTION}connectTimeout: 1s\n")))
        .await;
    let seen = answers(gateway, "churn.test", 20).await;
    assert_eq!(a.requests(), a_before, "the ejected endpoint got traffic after connectTimeout changed: {seen:?}");

    // A change of algorithm: A stays out too (its ejection lasts 60s). Consistent hashing on a
    // header, with many keys, would send about half of them to A if it were back.
    let hashed = "loadBalancer: {algorithm: ConsistentHash, hash: {header: x-user}}\n";
    weir.apply("policy.yaml", &backend_policy("app-policy", "app", &format!("{LONG_EJECTION}{hashed}"))).await;
    let dump = weir.config_dump().await;
    assert!(dump["pools"][0]["algorithm"].as_str().is_some_and(|s| s.contains("ConsistentHash")), "{dump:#}");
    let mut seen = Vec::new();
    for user in 0..20 {
        let resp = request(gateway).host("churn.test").header("x-user", &format!("user-{user}")).send().await;
        seen.push(format!("{} {}", resp.status, resp.echo_name().unwrap_or("-")));
    }
    let metrics = weir.metrics().await;
    assert_eq!(
        a.requests(),
        a_before,
        "the ejected endpoint got traffic after the BackendPolicy changed its algorithm: {seen:?}\n\
         weir_endpoint_healthy of A: {}\nconfig_dump pools: {:#}",
        metric(&metrics, "weir_endpoint_healthy", &[("endpoint", &a_endpoint)]),
        dump["pools"]
    );
}

// ---------------------------------------------------------------------------------------------
// Bad changes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_stops_parsing_keeps_serving_its_last_good_routes() {
    let port = free_port();
    let gateway = local(port);
    let (_b, weir) = TestWeir::with_backends(
        &["a", "b"],
        &[
            ("gateway.yaml", &class_and_gateway(NS, "edge", port)),
            ("route.yaml", &weighted_route("r", "edge", &["good.test"], &[("a", 1)])),
        ],
    )
    .await;
    wait_listening(gateway).await;

    weir.apply("route.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r\n").await;
    assert_eq!(who(gateway, "good.test").await, Ok("a".to_string()), "the last good route keeps serving");
    let rejections = weir.rejections().await;
    assert!(
        rejections.iter().any(|r| r["file"].as_str().is_some_and(|f| f.ends_with("route.yaml"))),
        "the broken file is reported: {rejections:#?}"
    );

    // Fixed, with a change: the new version serves and the error is gone.
    weir.apply("route.yaml", &weighted_route("r", "edge", &["good.test"], &[("b", 1)])).await;
    assert_eq!(who(gateway, "good.test").await, Ok("b".to_string()));
    assert!(weir.rejections().await.is_empty(), "{:#?}", weir.rejections().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_port_change_moves_its_listener() {
    let ports = free_ports(2);
    let (old, new) = (local(ports[0]), local(ports[1]));
    let (_b, weir) = TestWeir::with_backends(
        &["a"],
        &[
            ("gateway.yaml", &class_and_gateway(NS, "edge", ports[0])),
            ("route.yaml", &weighted_route("r", "edge", &["move.test"], &[("a", 1)])),
        ],
    )
    .await;
    wait_listening(old).await;
    assert_eq!(who(old, "move.test").await, Ok("a".to_string()));

    weir.apply("gateway.yaml", &class_and_gateway(NS, "edge", ports[1])).await;
    wait_until(&format!("the route is served on the new port {new}"), WAIT, || async move {
        matches!(request(new).host("move.test").path("/").try_send().await, Ok(r) if r.status == 200)
    })
    .await;
    wait_until(&format!("the old port {old} refuses connections"), WAIT, || async move {
        matches!(tokio::net::TcpStream::connect(old).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
}
