//! Upstream pools behind a weir Gateway listener: weighted splits between Services, round robin
//! across the replicas of one Service, active HTTP and TCP health checks, passive ejection
//! (outlier detection) and its cap, retries on refused connections, consistent hashing,
//! LeastLatency, and which EndpointSlice endpoints take traffic.
//!
//! Upstreams are real echo servers; the name (the `x-echo-name` header) tells which replica
//! answered. Replicas of one Service listen on 127.0.0.2, 127.0.0.3, … with one port (see
//! [`replicas`]). A few tests need what an echo server cannot do and use small hand-made
//! loopback endpoints: one recording health probes or never answering ([`RawEndpoint`]), and a
//! relay that delays an echo server's answers ([`SlowRelay`]).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir::demo::echo::EchoServer;

const NS: &str = "default";
/// Host every test request carries (the routes here accept any host).
const HOST: &str = "pools.test";
/// Requests in flight at once when a test sends many.
const CONCURRENCY: usize = 4;

// ---------------------------------------------------------------------------------------------
// Harness

/// weir with GatewayClass `weir` and Gateway `default/edge` (one HTTP listener on a free port),
/// plus the given manifest files.
struct Edge {
    weir: TestWeir,
    gateway: SocketAddr,
    /// Requests sent through the listener so far (see [`Edge::metrics`]).
    sent: AtomicUsize,
}

impl Edge {
    async fn start(files: &[(&str, &str)]) -> Edge {
        let port = free_port();
        let gateway_yaml = class_and_gateway(NS, "edge", port);
        let mut all: Vec<(&str, &str)> = vec![("gateway.yaml", gateway_yaml.as_str())];
        all.extend_from_slice(files);
        let weir = TestWeir::start(&all).await;
        let rejections = weir.rejections().await;
        assert!(rejections.is_empty(), "the test's manifests should all be accepted: {rejections:#?}");
        let gateway = local(port);
        wait_listening(gateway).await;
        Edge { weir, gateway, sent: AtomicUsize::new(0) }
    }

    /// [`Edge::start`] with Service `app` (`app_yaml`), optionally a BackendPolicy (`policy`), and
    /// HTTPRoute `app` sending every request to Service `app`.
    async fn start_app(app_yaml: &str, policy: Option<&str>) -> Edge {
        let route = weighted_route("app", "edge", &[], &[("app", 1)]);
        let mut files = vec![("app.yaml", app_yaml)];
        files.extend(policy.map(|p| ("policy.yaml", p)));
        files.push(("route.yaml", &route));
        Edge::start(&files).await
    }

    /// `GET /` through the Gateway listener; panics on a transport error.
    async fn get(&self) -> Resp {
        self.sent.fetch_add(1, Ordering::SeqCst);
        get(self.gateway, HOST, "/").await
    }

    /// `GET /`; transport errors are returned.
    async fn try_get(&self) -> anyhow::Result<Resp> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        request(self.gateway).host(HOST).path("/").try_send().await
    }

    /// `POST /` with a body; transport errors are returned.
    async fn try_post(&self, body: &str) -> anyhow::Result<Resp> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        request(self.gateway).method("POST").host(HOST).path("/").body(body.to_string()).try_send().await
    }

    /// `GET /` with one extra request header.
    async fn get_with(&self, header: &str, value: &str) -> Resp {
        self.sent.fetch_add(1, Ordering::SeqCst);
        request(self.gateway).host(HOST).path("/").header(header, value).send().await
    }

    /// `n` requests (a few at a time); every one must answer 200. Returns requests per echo
    /// server name.
    async fn spread(&self, n: usize) -> BTreeMap<String, usize> {
        let gateway = self.gateway;
        self.sent.fetch_add(n, Ordering::SeqCst);
        let answers: Vec<Resp> =
            stream::iter(0..n).map(|_| get(gateway, HOST, "/")).buffer_unordered(CONCURRENCY).collect().await;
        let mut counts = BTreeMap::new();
        for resp in answers {
            resp.assert_status(200);
            let name = resp.echo_name().unwrap_or_else(|| panic!("200 without x-echo-name: {resp}")).to_string();
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    }

    /// `/metrics`, once weir has counted every request sent so far: weir records a request
    /// (metrics, passive health) after its response went out, so a scrape right after a
    /// response may not include it yet.
    async fn metrics(&self) -> String {
        let sent = self.sent.load(Ordering::SeqCst);
        let what = format!("weir_requests_total counts the {sent} requests sent");
        wait_for(&what, WAIT, || async {
            let text = self.weir.metrics().await;
            let counted = metric(&text, "weir_requests_total", &[("listener", "gateway:default/edge")]);
            (counted as usize >= sent).then_some(text)
        })
        .await
    }
}

/// Name of the pool of Service `service` port 80 (the `pool` label of the endpoint metrics).
fn pool_name(service: &str) -> String {
    format!("{NS}/{service}:80")
}

/// The `route` label of the single rule of HTTPRoute `name`.
fn rule_label(route: &str) -> String {
    format!("httproute/{NS}/{route}/rule/0")
}

/// The `backend` label of Service `service` port 80.
fn backend_label(service: &str) -> String {
    format!("{NS}/{service}:80")
}

// ---------------------------------------------------------------------------------------------
// Metrics and /config_dump

/// `weir_endpoint_healthy` of one endpoint, `None` when weir does not report it.
fn endpoint_healthy(text: &str, endpoint: SocketAddr) -> Option<f64> {
    let samples = parse_metrics(text);
    select(&samples, "weir_endpoint_healthy", &[("endpoint", &endpoint.to_string())]).first().map(|s| s.value)
}

/// `weir_endpoint_ejections_total` of one endpoint (0 when not reported).
fn ejections(text: &str, endpoint: SocketAddr) -> f64 {
    metric(text, "weir_endpoint_ejections_total", &[("endpoint", &endpoint.to_string())])
}

/// The endpoint `addr` of pool `pool` in `/config_dump`.
async fn dumped_endpoint(weir: &TestWeir, pool: &str, addr: SocketAddr) -> serde_json::Value {
    let dump = weir.config_dump().await;
    let pools = dump["pools"].as_array().cloned().unwrap_or_default();
    let found = pools.iter().find(|p| p["name"] == pool).unwrap_or_else(|| panic!("no pool {pool} in {dump:#}"));
    let endpoints = found["endpoints"].as_array().cloned().unwrap_or_default();
    endpoints
        .into_iter()
        .find(|e| e["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("no endpoint {addr} in pool {pool} in {dump:#}"))
}

fn names(echoes: &[EchoServer]) -> Vec<String> {
    echoes.iter().map(|e| e.name().to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Hand-made loopback endpoints, for what an echo server cannot do: record the health probes it
// gets, never answer, or answer slowly.

/// How a [`RawEndpoint`] answers.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Never: the connection is held open.
    Never,
    /// It closes the connection after reading the request head: a Pod stopping at SIGTERM.
    HangUp,
}

/// A bare HTTP/1.1 endpoint: answers every request as `answer` says and records every request
/// head it receives.
struct RawEndpoint {
    heads: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for RawEndpoint {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl RawEndpoint {
    async fn start(addr: SocketAddr, answer: Answer) -> std::io::Result<(RawEndpoint, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            recorded.lock().unwrap().push(head);
                            match answer {
                                Answer::Status(status) => {
                                    let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                                    if stream.write_all(reply.as_bytes()).await.is_err() {
                                        return;
                                    }
                                }
                                Answer::Never => {}
                                Answer::HangUp => return,
                            }
                        }
                    }
                });
            }
        });
        Ok((RawEndpoint { heads, accept }, addr))
    }

    /// Request heads received so far.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// The value of header `name` in a request head.
fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// A TCP relay in front of an echo server that holds every chunk of the answer back for
/// `delay`: an endpoint that is slow to respond.
struct SlowRelay {
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl SlowRelay {
    async fn start(addr: SocketAddr, target: SocketAddr, delay: Duration) -> std::io::Result<(SlowRelay, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(target).await else { return };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut upstream_read, mut upstream_write) = upstream.into_split();
                    let requests = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
                        let _ = upstream_write.shutdown().await;
                    });
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = match upstream_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        tokio::time::sleep(delay).await;
                        if client_write.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                    requests.abort();
                });
            }
        });
        Ok((SlowRelay { accept }, addr))
    }
}

// ---------------------------------------------------------------------------------------------
// Weighted splits between Services (HTTPRoute backendRefs weights)

/// An [`Edge`] with one backend per Service of `weights` and the route `split` splitting traffic
/// between them by `weights`.
async fn start_split(weights: &[(&str, u32)]) -> (Backends, Edge) {
    let services: Vec<&str> = weights.iter().map(|(s, _)| *s).collect();
    let b = backends(NS, &services).await;
    let route = weighted_route("split", "edge", &[], weights);
    let edge = Edge::start(&[("backends.yaml", &b.yaml), ("route.yaml", &route)]).await;
    (b, edge)
}

/// Sends 1000 requests over a route splitting between `weights` and checks every Service gets
/// its share within ±5 percentage points, in the responses and in `weir_requests_total`.
async fn check_split(weights: &[(&str, u32)]) {
    let (b, edge) = start_split(weights).await;

    const N: usize = 1000;
    let counts = edge.spread(N).await;
    let total_weight: u32 = weights.iter().map(|(_, w)| w).sum();
    let metrics = edge.metrics().await;
    for (service, weight) in weights {
        let got = counts.get(*service).copied().unwrap_or(0);
        let share = got as f64 * 100.0 / N as f64;
        let want = f64::from(*weight) * 100.0 / f64::from(total_weight);
        assert!(
            (share - want).abs() <= 5.0,
            "{service} got {share:.1}% of {N} requests, expected {want:.1}% ± 5 (all counts: {counts:?})"
        );
        assert_eq!(b.echo(service).requests() as usize, got, "requests seen by echo server {service}");
        let counted = metric(
            &metrics,
            "weir_requests_total",
            &[
                ("listener", "gateway:default/edge"),
                ("route", &rule_label("split")),
                ("backend", &backend_label(service)),
                ("status_class", "2xx"),
            ],
        );
        assert_eq!(counted as usize, got, "weir_requests_total for {service}:\n{metrics}");
    }
    assert_eq!(counts.values().sum::<usize>(), N, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_90_10() {
    check_split(&[("blue", 90), ("green", 10)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_50_50() {
    check_split(&[("blue", 50), ("green", 50)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_three_ways() {
    check_split(&[("red", 60), ("green", 30), ("blue", 10)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smooth_weighted_split_interleaves_the_minority() {
    // Smooth weighted round robin never sends two requests in a row to the 10% backend, and
    // every block of 10 consecutive requests holds exactly one of them.
    let (_b, edge) = start_split(&[("blue", 90), ("green", 10)]).await;

    let mut order = Vec::new();
    for _ in 0..100 {
        let resp = edge.get().await;
        resp.assert_status(200);
        order.push(resp.echo_name().unwrap_or_default().to_string());
    }
    let greens: Vec<usize> = order.iter().enumerate().filter(|(_, n)| *n == "green").map(|(i, _)| i).collect();
    assert_eq!(greens.len(), 10, "order: {order:?}");
    for pair in greens.windows(2) {
        assert_eq!(pair[1] - pair[0], 10, "green is not spread evenly: {order:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Round robin across replicas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_across_replicas() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let edge = Edge::start_app(&yaml, None).await;

    const N: usize = 300;
    let counts = edge.spread(N).await;
    for name in names(&echoes) {
        let got = counts.get(&name).copied().unwrap_or(0);
        assert!((95..=105).contains(&got), "{name} served {got} of {N}, expected about 100: {counts:?}");
    }
    let metrics = edge.metrics().await;
    let counted = metric(
        &metrics,
        "weir_requests_total",
        &[("route", &rule_label("app")), ("backend", &backend_label("app")), ("status_class", "2xx")],
    );
    assert_eq!(counted as usize, N, "weir_requests_total:\n{metrics}");
    // every endpoint is reported healthy
    for echo in &echoes {
        assert_eq!(endpoint_healthy(&metrics, echo.addr()), Some(1.0), "{}:\n{metrics}", echo.addr());
    }
}

// ---------------------------------------------------------------------------------------------
// Active health checks

/// Sends `n` requests one after another and returns who answered each (panicking on non-200).
async fn answered_by(edge: &Edge, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = edge.get().await;
        resp.assert_status(200);
        out.push(resp.echo_name().unwrap_or_default().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_takes_a_failing_replica_out_and_back() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let hc = backend_policy(
        "app-health",
        "app",
        "
           healthCheck:
             type: HTTP
             http: {path: /healthz}
             interval: 100ms
             timeout: 1s
             unhealthyThreshold: 2
             healthyThreshold: 1",
    );
    let edge = Edge::start_app(&yaml, Some(&hc)).await;
    let sick = &echoes[0];
    let sick_name = sick.name().to_string();

    // All three serve at first.
    let first = answered_by(&edge, 30).await;
    for name in names(&echoes) {
        assert!(first.contains(&name), "{name} got no traffic while healthy: {first:?}");
    }

    sick.set_health_status(503);
    wait_until("the replica failing /healthz is reported unhealthy and gets no traffic", WAIT, || async {
        let metrics = edge.metrics().await;
        if endpoint_healthy(&metrics, sick.addr()) != Some(0.0) {
            return false;
        }
        let answers = answered_by(&edge, 30).await;
        !answers.contains(&sick_name)
    })
    .await;
    // The others share the traffic, and every request still succeeds.
    let answers = answered_by(&edge, 30).await;
    assert!(!answers.contains(&sick_name), "{answers:?}");
    assert!(answers.contains(&echoes[1].name().to_string()) && answers.contains(&echoes[2].name().to_string()));
    let entry = dumped_endpoint(&edge.weir, &pool_name("app"), sick.addr()).await;
    assert_eq!(entry["healthy"], false, "{entry}");
    assert_eq!(entry["ejected"], false, "an active check failure is not an ejection: {entry}");

    sick.set_health_status(200);
    wait_until("the replica passing /healthz again gets traffic", WAIT, || async {
        let metrics = edge.metrics().await;
        endpoint_healthy(&metrics, sick.addr()) == Some(1.0) && answered_by(&edge, 6).await.contains(&sick_name)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_check_marks_a_stopped_replica_unhealthy() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    // Ejection is off (maxEjectionPercent 0), so only the active check can take it out.
    let hc = backend_policy(
        "app-health",
        "app",
        "
           healthCheck:
             type: TCP
             interval: 100ms
             timeout: 500ms
             unhealthyThreshold: 2
             healthyThreshold: 1
           outlierDetection:
             maxEjectionPercent: 0",
    );
    let edge = Edge::start_app(&yaml, Some(&hc)).await;
    let stopped = &echoes[1];
    answered_by(&edge, 9).await;

    stopped.stop();
    wait_until("the stopped replica is reported unhealthy", WAIT, || async {
        endpoint_healthy(&edge.metrics().await, stopped.addr()) == Some(0.0)
    })
    .await;
    let entry = dumped_endpoint(&edge.weir, &pool_name("app"), stopped.addr()).await;
    assert_eq!((entry["healthy"].clone(), entry["ejected"].clone()), (false.into(), false.into()), "{entry}");
    let metrics = edge.metrics().await;
    for other in [&echoes[0], &echoes[2]] {
        assert_eq!(endpoint_healthy(&metrics, other.addr()), Some(1.0), "{}:\n{metrics}", other.addr());
    }

    // With the replica out of the pool, requests go straight to the others: no connect error.
    let errors_before = metric(&metrics, "weir_upstream_connect_errors_total", &[]);
    let answers = answered_by(&edge, 30).await;
    assert!(!answers.contains(&stopped.name().to_string()), "{answers:?}");
    let errors_after = metric(&edge.metrics().await, "weir_upstream_connect_errors_total", &[]);
    assert_eq!(errors_after, errors_before, "requests still tried the unhealthy endpoint");

    // Something listens on its address again: it passes the check and gets traffic back.
    let addr = stopped.addr();
    let revived = EchoServer::start("revived", addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr} again after stopping the echo server there: {e}"));
    wait_until("the replica listening again is healthy and gets traffic", WAIT, || async {
        endpoint_healthy(&edge.metrics().await, addr) == Some(1.0)
            && answered_by(&edge, 6).await.iter().any(|n| n == "revived")
    })
    .await;
    assert!(revived.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_sends_the_configured_host_or_else_the_endpoint_address() {
    let plain = on_one_port(1, |_, a| RawEndpoint::start(a, Answer::Status(200))).await.remove(0);
    let named = on_one_port(1, |_, a| RawEndpoint::start(a, Answer::Status(200))).await.remove(0);
    let check = |host: &str| {
        format!(
            "
           healthCheck:
             type: HTTP
             http: {{path: /healthz{host}}}
             interval: 100ms"
        )
    };
    let services = docs(&[service_at(NS, "plain", &[plain.1]), service_at(NS, "named", &[named.1])]);
    let policies = docs(&[
        backend_policy("plain-health", "plain", &check("")),
        backend_policy("named-health", "named", &check(", host: probe.internal")),
    ]);
    let route = weighted_route("r", "edge", &[], &[("plain", 1), ("named", 1)]);
    let _edge = Edge::start(&[("svc.yaml", &services), ("policy.yaml", &policies), ("route.yaml", &route)]).await;

    wait_until("both endpoints got a health probe", WAIT, || async {
        !plain.0.heads().is_empty() && !named.0.heads().is_empty()
    })
    .await;
    let probe = named.0.heads()[0].clone();
    assert!(probe.starts_with("GET /healthz HTTP/1.1\r\n"), "{probe}");
    assert_eq!(head_header(&probe, "host").as_deref(), Some("probe.internal"), "{probe}");

    // Without `host`, the documented default is the endpoint's address.
    let probe = plain.0.heads()[0].clone();
    assert!(probe.starts_with("GET /healthz HTTP/1.1\r\n"), "{probe}");
    let host = head_header(&probe, "host").unwrap_or_default();
    let endpoint = plain.1;
    assert!(
        host == endpoint.to_string() || host == endpoint.ip().to_string(),
        "health probe of {endpoint} without healthCheck.http.host sent Host {host:?}; docs/backend-policy.md and \
         the CRD say the default is the endpoint address:\n{probe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_timeout_fails_an_endpoint_that_never_answers() {
    // One endpoint that accepts connections but never answers, one echo server, on one port.
    let mut pair = None;
    for _ in 0..20 {
        let (silent, silent_addr) = RawEndpoint::start("127.0.0.2:0".parse().unwrap(), Answer::Never).await.unwrap();
        let port = silent_addr.port();
        if let Ok(echo) = EchoServer::start("fast", SocketAddr::from(([127, 0, 0, 3], port))).await {
            pair = Some((silent, silent_addr, echo));
            break;
        }
    }
    let (silent, silent_addr, echo) = pair.expect("bind two endpoints on one port");
    let hc = backend_policy(
        "app-health",
        "app",
        "
           healthCheck:
             type: HTTP
             http: {path: /healthz}
             interval: 100ms
             timeout: 300ms
             unhealthyThreshold: 1",
    );
    let edge = Edge::start_app(&service_at(NS, "app", &[silent_addr, echo.addr()]), Some(&hc)).await;

    // No traffic before the check has spoken: a request to the silent endpoint would hang.
    wait_until("the endpoint that never answers is reported unhealthy", WAIT, || async {
        endpoint_healthy(&edge.metrics().await, silent_addr) == Some(0.0)
    })
    .await;
    assert!(!silent.heads().is_empty(), "the silent endpoint was never probed");
    assert_eq!(endpoint_healthy(&edge.metrics().await, echo.addr()), Some(1.0));
    for _ in 0..10 {
        let started = Instant::now();
        edge.get().await.assert_served_by("fast");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// Passive ejection (outlier detection)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_replica_is_ejected_then_readmitted() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let outlier = backend_policy(
        "app-outlier",
        "app",
        "
           outlierDetection:
             consecutiveFailures: 3
             baseEjectionTime: 1s
             maxEjectionPercent: 50",
    );
    let edge = Edge::start_app(&yaml, Some(&outlier)).await;
    let bad = &echoes[0];
    let bad_name = bad.name().to_string();
    const BASE_EJECTION: Duration = Duration::from_secs(1);

    bad.set_status(503);
    // Send requests until weir reports the replica ejected. The ejection happens after (at the
    // end of) the request that got the last 503, so it cannot end before that request was sent
    // plus the ejection time.
    let mut last_failure_sent = Instant::now();
    let mut failures = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let sent = Instant::now();
        let resp = edge.get().await;
        if resp.status == 503 && resp.echo_name() == Some(bad_name.as_str()) {
            failures += 1;
            last_failure_sent = sent;
        } else {
            resp.assert_status(200);
        }
        let metrics = edge.metrics().await;
        if ejections(&metrics, bad.addr()) >= 1.0 && endpoint_healthy(&metrics, bad.addr()) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the replica answering 503 was not ejected within {WAIT:?}:\n{metrics}");
    }
    assert!(failures >= 3, "ejected after {failures} failures; consecutiveFailures is 3");
    assert!(failures <= 6, "{failures} failures reached clients before the ejection; consecutiveFailures is 3");

    // While ejected, every request is a 200 from another replica.
    let readmitted_earliest = last_failure_sent + BASE_EJECTION;
    let mut while_ejected = 0;
    while while_ejected < 30 {
        let resp = edge.get().await;
        if Instant::now() >= readmitted_earliest {
            break;
        }
        assert!(resp.status == 200 && resp.echo_name() != Some(bad_name.as_str()), "while ejected: {resp}");
        while_ejected += 1;
    }
    assert!(while_ejected >= 5, "only {while_ejected} requests fitted in the ejection time; the machine is too slow");
    let entry = dumped_endpoint(&edge.weir, &pool_name("app"), bad.addr()).await;
    assert!(entry["ejections"].as_u64() >= Some(1), "{entry}");

    // Restored, it is re-admitted once the ejection time is over.
    bad.set_status(200);
    wait_until("the restored replica is re-admitted and serves again", WAIT, || async {
        let answers = answered_by(&edge, 6).await;
        answers.contains(&bad_name)
    })
    .await;
    let metrics = edge.metrics().await;
    assert_eq!(endpoint_healthy(&metrics, bad.addr()), Some(1.0), "{metrics}");
    assert!(ejections(&metrics, bad.addr()) >= 1.0, "weir_endpoint_ejections_total:\n{metrics}");
    for good in [&echoes[1], &echoes[2]] {
        assert_eq!(ejections(&metrics, good.addr()), 0.0, "{} was never failing:\n{metrics}", good.addr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_is_on_by_default() {
    // No BackendPolicy: 5 consecutive failures eject for 30s.
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let edge = Edge::start_app(&yaml, None).await;
    let bad = &echoes[0];
    bad.set_status(503);
    let mut failures = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = edge.get().await;
        if resp.status == 503 {
            failures += 1;
        }
        let metrics = edge.metrics().await;
        if endpoint_healthy(&metrics, bad.addr()) == Some(0.0) {
            assert_eq!(ejections(&metrics, bad.addr()), 1.0, "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "not ejected within {WAIT:?} ({failures} failures):\n{metrics}");
    }
    assert_eq!(failures, 5, "the default consecutiveFailures is 5");
    for _ in 0..20 {
        let resp = edge.get().await;
        assert!(resp.status == 200 && resp.echo_name() != Some(bad.name()), "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_zero_never_ejects() {
    let (echoes, yaml) = replicas(NS, "app", 2).await;
    let outlier = backend_policy(
        "app-outlier",
        "app",
        "
           outlierDetection:
             consecutiveFailures: 1
             maxEjectionPercent: 0",
    );
    let edge = Edge::start_app(&yaml, Some(&outlier)).await;
    let bad = &echoes[0];
    bad.set_status(503);
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(edge.get().await.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        15,
        "round robin keeps sending half to it: {statuses:?}"
    );
    let metrics = edge.metrics().await;
    assert_eq!(ejections(&metrics, bad.addr()), 0.0, "{metrics}");
    assert_eq!(endpoint_healthy(&metrics, bad.addr()), Some(1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_ejection_lasts_twice_the_base_ejection_time() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let outlier = backend_policy(
        "app-outlier",
        "app",
        "
           outlierDetection:
             consecutiveFailures: 3
             baseEjectionTime: 1s
             maxEjectionTime: 10s",
    );
    let edge = Edge::start_app(&yaml, Some(&outlier)).await;
    let bad = &echoes[0];
    bad.set_status(503);
    const BASE: Duration = Duration::from_secs(1);

    // Keep it failing until it has been ejected twice; note when the last failure was sent.
    let mut last_failure_sent = Instant::now();
    let deadline = Instant::now() + WAIT;
    loop {
        let sent = Instant::now();
        let resp = edge.get().await;
        if resp.echo_name() == Some(bad.name()) {
            last_failure_sent = sent;
        }
        let metrics = edge.metrics().await;
        let n = ejections(&metrics, bad.addr());
        if n >= 2.0 && endpoint_healthy(&metrics, bad.addr()) == Some(0.0) {
            assert_eq!(n, 2.0, "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "not ejected twice within {WAIT:?}:\n{metrics}");
    }

    // The second ejection began after `last_failure_sent` and lasts 2 × base: until then, no
    // request reaches the replica, including in the second half, past one base time.
    let readmitted_earliest = last_failure_sent + 2 * BASE;
    let past_one_base = last_failure_sent + BASE + BASE / 5;
    let mut late = 0;
    loop {
        let resp = edge.get().await;
        let now = Instant::now();
        if now >= readmitted_earliest {
            break;
        }
        assert_ne!(
            resp.echo_name(),
            Some(bad.name()),
            "re-admitted {:?} after its second ejection began; it should last {:?}",
            now - last_failure_sent,
            2 * BASE
        );
        if now > past_one_base {
            late += 1;
        }
    }
    assert!(late >= 5, "only {late} requests were sent between 1.2 and 2 base ejection times");
}

/// Starts `count` replicas that all answer 503 behind an outlier policy (3 failures, 60s
/// ejections, at most 50% ejected), sends each replica's share of requests many times over the
/// threshold, and returns weir, the replicas and the endpoints weir reports ejected.
async fn eject_all_failing(count: usize) -> (Edge, Vec<EchoServer>, Vec<SocketAddr>) {
    let (echoes, yaml) = replicas(NS, "app", count).await;
    let outlier = backend_policy(
        "app-outlier",
        "app",
        "
           outlierDetection:
             consecutiveFailures: 3
             baseEjectionTime: 60s
             maxEjectionPercent: 50",
    );
    let edge = Edge::start_app(&yaml, Some(&outlier)).await;
    for e in &echoes {
        e.set_status(503);
    }
    // Enough requests for every replica to fail many times over.
    for _ in 0..(count * 10) {
        edge.get().await.assert_status(503);
    }
    let metrics = edge.metrics().await;
    let ejected: Vec<SocketAddr> =
        echoes.iter().map(|e| e.addr()).filter(|a| endpoint_healthy(&metrics, *a) == Some(0.0)).collect();
    let total: f64 = echoes.iter().map(|e| ejections(&metrics, e.addr())).sum();
    assert_eq!(total as usize, ejected.len(), "each ejected endpoint was ejected once:\n{metrics}");
    (edge, echoes, ejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_keeps_one_of_two_failing_replicas() {
    let (edge, echoes, ejected) = eject_all_failing(2).await;
    assert_eq!(ejected.len(), 1, "with 2 failing replicas and maxEjectionPercent 50, exactly one is ejected");
    // The other one keeps taking (and failing) every request.
    let kept = echoes.iter().find(|e| e.addr() != ejected[0]).unwrap();
    let before = kept.requests();
    for _ in 0..10 {
        let resp = edge.get().await;
        assert!(resp.status == 503 && resp.echo_name() == Some(kept.name()), "{resp}");
    }
    assert_eq!(kept.requests(), before + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_caps_ejections_of_four_failing_replicas_at_two() {
    let (_edge, _echoes, ejected) = eject_all_failing(4).await;
    assert_eq!(ejected.len(), 2, "with 4 failing replicas and maxEjectionPercent 50, two are ejected: {ejected:?}");
}

// ---------------------------------------------------------------------------------------------
// Retries and unreachable endpoints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_retried_on_another_replica() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let edge = Edge::start_app(&yaml, None).await;
    // Warm up: weir now holds idle connections to every replica.
    answered_by(&edge, 9).await;

    let down = &echoes[2];
    down.stop();
    let mut failures = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    // The first ones (the refused replica is still picked then) are POSTs with a body.
    for i in 0..200 {
        let outcome = if i < 30 { edge.try_post(&format!("payload {i}")).await } else { edge.try_get().await };
        match outcome {
            Ok(resp) if resp.status == 200 => {
                *counts.entry(resp.echo_name().unwrap_or_default().to_string()).or_default() += 1;
            }
            Ok(resp) => failures.push(format!("request {i}: {resp}")),
            Err(e) => failures.push(format!("request {i}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "{} of 200 requests failed:\n{}", failures.len(), failures.join("\n"));
    assert!(!counts.contains_key(down.name()), "{counts:?}");

    let metrics = edge.metrics().await;
    let labels = [("route", rule_label("app")), ("backend", backend_label("app"))];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let retries = metric(&metrics, "weir_upstream_retries_total", &labels);
    let connect_errors = metric(&metrics, "weir_upstream_connect_errors_total", &labels);
    assert!(retries > 0.0, "weir_upstream_retries_total is {retries}:\n{metrics}");
    assert!(connect_errors > 0.0, "weir_upstream_connect_errors_total is {connect_errors}:\n{metrics}");
    assert_eq!(metric(&metrics, "weir_requests_total", &[("status_class", "5xx")]), 0.0, "{metrics}");
    // Connect failures count as consecutive failures: with the default outlier detection
    // (5 failures) the stopped replica ends up ejected.
    assert_eq!(endpoint_healthy(&metrics, down.addr()), Some(0.0), "{metrics}");
    assert!(ejections(&metrics, down.addr()) >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_whose_endpoint_hangs_up_before_answering_is_retried_elsewhere() {
    // two endpoints on one port: one hangs up on every request it reads, one answers
    let started = on_one_port(2, |i, addr| async move {
        match i {
            0 => RawEndpoint::start(addr, Answer::HangUp).await.map(|(r, a)| ((Some(r), None), a)),
            _ => EchoServer::start("app-1", addr).await.map(|e| {
                let a = e.addr();
                ((None, Some(e)), a)
            }),
        }
    })
    .await;
    let addrs: Vec<SocketAddr> = started.iter().map(|(_, a)| *a).collect();
    let mut started = started.into_iter().map(|(e, _)| e);
    let (Some(hangs_up), None) = started.next().unwrap() else { unreachable!() };
    let (None, Some(_echo)) = started.next().unwrap() else { unreachable!() };
    let edge = Edge::start_app(&service_at(NS, "app", &addrs), None).await;

    // round robin: every other request reaches the endpoint that hangs up, on a new connection
    // (it closed the last); a POST may have been acted on, so it is not sent again
    let mut statuses = vec![];
    for i in 0..4 {
        statuses.push(edge.try_post(&format!("payload {i}")).await.unwrap().status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 502, 502], "the POSTs that reached it fail");
    assert_eq!(hangs_up.heads().iter().filter(|h| h.starts_with("POST")).count(), 2);
    // a GET is tried on the other endpoint (until outlier detection ejects the failing one)
    for i in 0..20 {
        let resp = edge.try_get().await.unwrap();
        assert_eq!(resp.status, 200, "GET {i}: {resp}");
        assert_eq!(resp.echo_name(), Some("app-1"));
    }
    assert!(hangs_up.heads().iter().any(|h| h.starts_with("GET")), "a GET did reach it: {:?}", hangs_up.heads());
    let metrics = edge.metrics().await;
    let retries = metric(&metrics, "weir_upstream_retries_total", &[("backend", &backend_label("app"))]);
    assert!(retries >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_down_answers_an_error_quickly() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let edge = Edge::start_app(&yaml, None).await;
    answered_by(&edge, 3).await;
    for e in &echoes {
        e.stop();
    }
    for i in 0..20 {
        let started = Instant::now();
        let resp = edge.get().await;
        let took = started.elapsed();
        assert!(resp.status == 502 || resp.status == 503, "request {i}: expected 502 or 503, got {resp}");
        assert!(took < Duration::from_secs(3), "request {i} took {took:?} to fail");
    }
    let metrics = edge.metrics().await;
    assert_eq!(
        metric(&metrics, "weir_requests_total", &[("backend", &backend_label("app")), ("status_class", "5xx")]),
        20.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_stops_a_retry_storm_when_every_endpoint_refuses() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    // no ejection, so every request finds endpoints to retry on
    let policy = backend_policy("app-no-ejection", "app", "outlierDetection: {maxEjectionPercent: 0}");
    let edge = Edge::start_app(&yaml, Some(&policy)).await;
    answered_by(&edge, 3).await;
    for e in &echoes {
        e.stop();
    }
    let requests = 300.0;
    for _ in 0..requests as usize {
        let resp = edge.get().await;
        assert!(resp.status == 502 || resp.status == 503, "expected 502 or 503, got {resp}");
    }
    let metrics = edge.metrics().await;
    let retries = metric(&metrics, "weir_upstream_retries_total", &[("backend", &backend_label("app"))]);
    // 2 retries per request without a budget (600); the budget allows 20% of the requests
    // plus 10 per second over 10 s
    assert!(retries > 0.0, "{metrics}");
    assert!(retries <= 0.2 * requests + 100.0, "{retries} retries for {requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_failing_their_health_check_answer_503() {
    let (echoes, yaml) = replicas(NS, "app", 2).await;
    let hc = backend_policy(
        "app-health",
        "app",
        "
           healthCheck:
             type: HTTP
             http: {path: /healthz}
             interval: 100ms
             unhealthyThreshold: 1",
    );
    let edge = Edge::start_app(&yaml, Some(&hc)).await;
    edge.get().await.assert_status(200);
    for e in &echoes {
        e.set_health_status(500);
    }
    wait_until("every endpoint is reported unhealthy", WAIT, || async {
        let metrics = edge.metrics().await;
        echoes.iter().all(|e| endpoint_healthy(&metrics, e.addr()) == Some(0.0))
    })
    .await;
    let before: u64 = echoes.iter().map(EchoServer::requests).sum();
    let started = Instant::now();
    edge.get().await.assert_status(503);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(echoes.iter().map(EchoServer::requests).sum::<u64>(), before, "no request reached an endpoint");
}

// ---------------------------------------------------------------------------------------------
// Algorithms

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_keeps_each_user_on_one_replica() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let lb = backend_policy(
        "app-lb",
        "app",
        "
           loadBalancer:
             algorithm: ConsistentHash
             hash: {header: x-user}",
    );
    let edge = Edge::start_app(&yaml, Some(&lb)).await;

    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let mut home: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..4 {
        for user in &users {
            let resp = edge.get_with("X-User", user).await;
            resp.assert_status(200);
            let name = resp.echo_name().unwrap_or_default().to_string();
            let first = home.entry(user.clone()).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "round {round}: {user} moved from {first} to {name}");
        }
    }
    let used: std::collections::BTreeSet<&String> = home.values().collect();
    assert_eq!(used.len(), echoes.len(), "30 users should spread over all 3 replicas: {home:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_serves_every_request_across_replicas() {
    let (echoes, yaml) = replicas(NS, "app", 3).await;
    let lb = backend_policy("app-lb", "app", "loadBalancer: {algorithm: LeastLatency}");
    let edge = Edge::start_app(&yaml, Some(&lb)).await;

    let dump = edge.weir.config_dump().await;
    assert!(dump["pools"][0]["algorithm"].as_str().is_some_and(|a| a.contains("LeastLatency")), "{dump:#}");
    let counts = edge.spread(300).await;
    assert_eq!(counts.values().sum::<usize>(), 300);
    assert!(counts.len() >= 2, "LeastLatency sent everything to one replica: {counts:?}");
    for name in counts.keys() {
        assert!(names(&echoes).contains(name), "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_avoids_a_slow_replica() {
    let fast1 = EchoServer::start("fast-1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let fast2 = EchoServer::start("fast-2", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let slow = EchoServer::start("slow", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let targets =
        [(fast1.addr(), Duration::ZERO), (fast2.addr(), Duration::ZERO), (slow.addr(), Duration::from_millis(50))];
    let relays = on_one_port(3, |i, a| SlowRelay::start(a, targets[i].0, targets[i].1)).await;
    let addrs: Vec<SocketAddr> = relays.iter().map(|(_, a)| *a).collect();
    let lb = backend_policy("app-lb", "app", "loadBalancer: {algorithm: LeastLatency}");
    let edge = Edge::start_app(&service_at(NS, "app", &addrs), Some(&lb)).await;

    const N: usize = 200;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for name in answered_by(&edge, N).await {
        *counts.entry(name).or_default() += 1;
    }
    let share = |name: &str| counts.get(name).copied().unwrap_or(0) * 100 / N;
    assert!(share("slow") < 10, "the replica 50ms slower got {}% of the requests: {counts:?}", share("slow"));
    assert!(share("fast-1") >= 20 && share("fast-2") >= 20, "both fast replicas share the traffic: {counts:?}");
}

// ---------------------------------------------------------------------------------------------
// Which EndpointSlice endpoints take traffic

/// A Service `app` (port 80 → `port`) and one EndpointSlice whose endpoints have the given
/// conditions (ready, serving, terminating; `None` leaves a condition out).
fn app_with_conditions(port: u16, endpoints: &[EndpointConditions]) -> String {
    docs(&[
        service_with_target_port(NS, "app", 80, "http", port),
        endpoint_slice_with_conditions(NS, "app", "http", port, endpoints),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_ready_endpoints_answers_503() {
    let (echoes, _) = replicas(NS, "app", 2).await;
    let port = echoes[0].addr().port();
    let not_ready = app_with_conditions(
        port,
        &[(echoes[0].addr(), false, None, None), (echoes[1].addr(), false, Some(false), None)],
    );
    let edge = Edge::start_app(&not_ready, None).await;

    let resp = edge.get().await;
    resp.assert_status(503);
    assert_eq!(echoes.iter().map(EchoServer::requests).sum::<u64>(), 0);

    // No endpoints at all: the same.
    edge.weir.apply("app.yaml", &app_with_conditions(port, &[])).await;
    edge.get().await.assert_status(503);

    // One becomes ready: it is served.
    edge.weir.apply("app.yaml", &app_with_conditions(port, &[(echoes[1].addr(), true, None, None)])).await;
    edge.get().await.assert_served_by(echoes[1].name());
    let metrics = edge.metrics().await;
    assert_eq!(
        metric(&metrics, "weir_requests_total", &[("backend", &backend_label("app")), ("status_class", "5xx")]),
        2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_terminating_endpoints_take_traffic_only_when_none_is_ready() {
    let (echoes, _) = replicas(NS, "app", 2).await;
    let port = echoes[0].addr().port();
    let (ready, terminating) = (&echoes[0], &echoes[1]);
    // Only a terminating endpoint that still serves: it gets the traffic.
    let only_terminating = app_with_conditions(port, &[(terminating.addr(), false, Some(true), Some(true))]);
    let edge = Edge::start_app(&only_terminating, None).await;
    for _ in 0..5 {
        edge.get().await.assert_served_by(terminating.name());
    }
    let dump = edge.weir.config_dump().await;
    let pool = &dump["pools"][0];
    assert_eq!(pool["terminating"], serde_json::json!([terminating.addr().to_string()]), "{pool:#}");

    // With a ready endpoint beside it, the terminating one gets nothing.
    let both = app_with_conditions(
        port,
        &[(ready.addr(), true, Some(true), Some(false)), (terminating.addr(), false, Some(true), Some(true))],
    );
    edge.weir.apply("app.yaml", &both).await;
    let before = terminating.requests();
    for _ in 0..10 {
        edge.get().await.assert_served_by(ready.name());
    }
    assert_eq!(terminating.requests(), before);

    // Terminating and no longer serving: not used even when nothing is ready.
    let not_serving = app_with_conditions(port, &[(terminating.addr(), false, Some(false), Some(true))]);
    edge.weir.apply("app.yaml", &not_serving).await;
    edge.get().await.assert_status(503);
    assert_eq!(terminating.requests(), before);
}
