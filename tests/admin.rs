//! The admin listener (`/live`, `/ready`, `/metrics`, `/config_dump`) and the access log, read
//! the way an operator reads them: real requests through weir, then the admin endpoints.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Metrics

/// Polls `/metrics` until `ready` holds for the parsed samples; returns them. Request metrics are
/// recorded after the response is sent, so they may lag the client by a moment.
async fn metrics_when(weir: &TestWeir, what: &str, ready: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let last = std::sync::Mutex::new(String::new());
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let text = weir.metrics().await;
            let samples = parse_metrics(&text);
            if ready(&samples) {
                return samples;
            }
            *last.lock().unwrap() = text;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!("timed out after {WAIT:?} waiting until {what}; last /metrics:\n{}", last.lock().unwrap())
    })
}

// ---------------------------------------------------------------------------------------------
// Health endpoints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_ready_answer_200_once_started() {
    let weir = TestWeir::start(&[]).await;
    let live = request(weir.admin).path("/live").send().await;
    live.assert_status(200);
    assert_eq!(live.text().trim(), "live");
    let ready = request(weir.admin).path("/ready").send().await;
    ready.assert_status(200);
    assert_eq!(ready.text().trim(), "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_admin_path_is_404_and_lists_the_endpoints() {
    let weir = TestWeir::start(&[]).await;
    for path in ["/", "/nope", "/metrics/extra", "/config_dump.json"] {
        let resp = request(weir.admin).path(path).send().await;
        assert_eq!(resp.status, 404, "{path}: {resp}");
        assert!(resp.text().contains("/metrics") && resp.text().contains("/config_dump"), "{path}: {resp}");
    }
}

/// The admin endpoints are read-only: any method but GET and HEAD is 405, saying which are allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_other_methods_than_get_and_head_405() {
    let weir = TestWeir::start(&[]).await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/metrics", "/config_dump", "/ready"] {
            let resp = request(weir.admin).method(method).path(path).body("x").send().await;
            assert_eq!(resp.status, 405, "{method} {path}: {resp}");
            assert_eq!(resp.header("allow"), Some("GET, HEAD"), "{method} {path}: {resp}");
        }
    }
    assert_eq!(request(weir.admin).method("HEAD").path("/live").send().await.status, 200);
    assert_eq!(request(weir.admin).path("/live").send().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_does_not_route_proxy_traffic() {
    let (b, weir) = TestWeir::with_backends(&["a"], &[("ingress.yaml", &ingress("web", "a.example.com", "a"))]).await;
    let resp = get(weir.admin, "a.example.com", "/").await;
    assert_eq!(resp.status, 404, "the admin listener must not proxy: {resp}");
    assert_eq!(b.echo("a").requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Request metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_listener_route_backend_and_status_class() {
    let (b, weir) = TestWeir::with_backends(
        &["a", "e"],
        &[("web.yaml", &ingress("web", "a.example.com", "a")), ("err.yaml", &ingress("err", "err.example.com", "e"))],
    )
    .await;
    b.echo("e").set_status(503);

    for _ in 0..7 {
        weir.get("a.example.com", "/").await.assert_served_by("a");
    }
    for _ in 0..3 {
        weir.get("nope.example.com", "/").await.assert_status(404);
    }
    for _ in 0..2 {
        weir.get("err.example.com", "/").await.assert_status(503);
    }

    let ok = [
        ("listener", "ingress-http"),
        ("route", "ingress/default/web"),
        ("backend", "default/a:80"),
        ("status_class", "2xx"),
    ];
    let unmatched = [("listener", "ingress-http"), ("route", ""), ("backend", ""), ("status_class", "4xx")];
    let failed = [
        ("listener", "ingress-http"),
        ("route", "ingress/default/err"),
        ("backend", "default/e:80"),
        ("status_class", "5xx"),
    ];
    let s = metrics_when(&weir, "the 12 requests are counted", |s| {
        sum(s, "weir_requests_total", &[("listener", "ingress-http")]) >= 12.0
    })
    .await;

    assert_eq!(value(&s, "weir_requests_total", &ok), Some(7.0), "7 requests served by a");
    assert_eq!(value(&s, "weir_requests_total", &unmatched), Some(3.0), "3 requests no route matched");
    assert_eq!(value(&s, "weir_requests_total", &failed), Some(2.0), "2 requests answered 503 by e");
    assert_eq!(
        sum(&s, "weir_requests_total", &[]),
        12.0,
        "nothing else is counted: {:#?}",
        select(&s, "weir_requests_total", &[])
    );
    assert_eq!(
        sum(&s, "weir_requests_total", &[("route", "ingress/default/web"), ("status_class", "5xx")]),
        0.0,
        "a's requests are not counted as errors"
    );

    // the latency histogram has the same labels and counts
    assert_eq!(value(&s, "weir_request_duration_seconds_count", &ok), Some(7.0));
    assert_eq!(value(&s, "weir_request_duration_seconds_count", &unmatched), Some(3.0));
    assert_eq!(value(&s, "weir_request_duration_seconds_count", &failed), Some(2.0));
    let mut inf = ok.to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(value(&s, "weir_request_duration_seconds_bucket", &inf), Some(7.0));
    let sum_ok = value(&s, "weir_request_duration_seconds_sum", &ok).expect("histogram sum");
    assert!(sum_ok > 0.0 && sum_ok < 7.0 * REQUEST_TIMEOUT.as_secs_f64(), "sum of 7 request durations: {sum_ok}");
    // buckets are cumulative
    let mut buckets: Vec<(f64, f64)> = select(&s, "weir_request_duration_seconds_bucket", &ok)
        .iter()
        .map(|x| (x.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY), x.value))
        .collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    assert!(buckets.len() > 5, "the histogram has buckets: {buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative buckets: {buckets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_handshakes_are_counted_per_listener() {
    // plain HTTP sent to the TLS listener fails the handshake: counted per listener, and no
    // request is counted
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("ingress.yaml", &ingress("web", "a.example.com", "a"))]).await;
    for _ in 0..2 {
        let _ = request(weir.https).host("a.example.com").try_send().await;
    }
    let s = metrics_when(&weir, "two failed handshakes are counted", |s| {
        value(s, "weir_tls_handshake_failures_total", &[("listener", "ingress-https")]) == Some(2.0)
    })
    .await;
    assert_eq!(sum(&s, "weir_requests_total", &[]), 0.0, "no request got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_counted_under_their_route() {
    let (_b, weir) = TestWeir::with_backends(
        &["a"],
        &[
            ("secret.yaml", &tls_secret("default", "secure-tls", &["secure.example.com"])),
            ("ingress.yaml", &ingress_with_tls("secure", "secure.example.com", "a", "secure-tls")),
        ],
    )
    .await;
    for _ in 0..4 {
        let resp = weir.get("secure.example.com", "/x").await;
        resp.assert_status(308);
    }
    let s = metrics_when(&weir, "4 redirects (308) are counted under route ingress/default/secure", |s| {
        sum(s, "weir_requests_total", &[("route", "ingress/default/secure"), ("status_class", "3xx")]) == 4.0
    })
    .await;
    assert_eq!(
        sum(&s, "weir_requests_total", &[("listener", "ingress-http"), ("status_class", "3xx")]),
        4.0,
        "the redirects were answered on the plaintext listener"
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_a_removed_route_are_dropped() {
    let (_b, weir) = TestWeir::with_backends(
        &["a", "b"],
        &[("web.yaml", &ingress("web", "a.example.com", "a")), ("old.yaml", &ingress("old", "b.example.com", "b"))],
    )
    .await;
    // a route's series appear with its first request
    weir.get("a.example.com", "/").await.assert_served_by("a");
    weir.get("b.example.com", "/").await.assert_served_by("b");
    let has = |s: &[Sample], route: &str| s.iter().any(|x| x.labels.get("route").map(String::as_str) == Some(route));
    let has_old = |s: &[Sample]| has(s, "ingress/default/old");
    metrics_when(&weir, "both routes are counted", |s| has_old(s) && has(s, "ingress/default/web")).await;

    weir.delete("old.yaml").await;

    let after = metrics_when(&weir, "the old route's series are gone", |s| !has_old(s)).await;
    assert!(has(&after, "ingress/default/web"), "the remaining route keeps its series");
}

fn generation_metric(s: &[Sample]) -> f64 {
    value(s, "weir_config_generation", &[]).expect("weir_config_generation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_generation_metric_matches_config_dump() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[]).await;
    let first = weir.generation().await;
    assert!(first >= 1);
    let s = parse_metrics(&weir.metrics().await);
    assert_eq!(generation_metric(&s), first as f64);

    weir.apply("ingress.yaml", &ingress("web", "a.example.com", "a")).await;
    let second = weir.generation().await;
    assert!(second > first);
    let s = parse_metrics(&weir.metrics().await);
    assert_eq!(generation_metric(&s), second as f64, "the metric follows /config_dump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_objects_metric_counts_the_rejections() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("ingress.yaml", &ingress("web", "a.example.com", "a"))]).await;
    let s = parse_metrics(&weir.metrics().await);
    assert_eq!(value(&s, "weir_config_rejected_objects", &[]), Some(0.0));

    weir.apply("junk.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n").await;
    weir.apply("lost.yaml", &ingress("lost", "lost.example.com", "ghost")).await;
    let rejections = weir.rejections().await.len();
    assert_eq!(rejections, 2, "{:#?}", weir.rejections().await);
    let s = parse_metrics(&weir.metrics().await);
    assert_eq!(value(&s, "weir_config_rejected_objects", &[]), Some(rejections as f64));

    weir.delete("junk.yaml").await;
    weir.delete("lost.yaml").await;
    let s = parse_metrics(&weir.metrics().await);
    assert_eq!(value(&s, "weir_config_rejected_objects", &[]), Some(0.0), "fixed: nothing is rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_apply_and_translate_times_are_observed_for_every_change() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[]).await;
    let counts = |s: &[Sample]| {
        (
            value(s, "weir_config_apply_seconds_count", &[]).expect("weir_config_apply_seconds_count"),
            value(s, "weir_config_translate_seconds_count", &[]).expect("weir_config_translate_seconds_count"),
        )
    };
    let s = parse_metrics(&weir.metrics().await);
    let (apply0, translate0) = counts(&s);
    assert!(apply0 >= 1.0 && translate0 >= 1.0, "the first configuration was applied: {apply0} {translate0}");

    weir.apply("web.yaml", &ingress("web", "a.example.com", "a")).await;
    weir.apply("web.yaml", &ingress("web", "b.example.com", "a")).await;
    let s = parse_metrics(&weir.metrics().await);
    let (apply2, translate2) = counts(&s);
    assert!(apply2 >= apply0 + 2.0, "two more changes applied: {apply0} -> {apply2}");
    assert!(translate2 >= translate0 + 2.0, "two more translations: {translate0} -> {translate2}");
    let apply_sum = value(&s, "weir_config_apply_seconds_sum", &[]).expect("weir_config_apply_seconds_sum");
    assert!(apply_sum > 0.0, "apply times are measured from the file change: {apply_sum}");
    assert_eq!(
        value(&s, "weir_config_apply_seconds_bucket", &[("le", "+Inf")]),
        Some(apply2),
        "the histogram's +Inf bucket holds every observation"
    );
}

// ---------------------------------------------------------------------------------------------
// Endpoint health

/// Service `default/a` with two endpoints, each in its own EndpointSlice: `live` (an echo server)
/// and `dead` (a closed port), health-checked over TCP every 100 ms.
fn two_endpoints(live: SocketAddr, dead: SocketAddr) -> String {
    let slice = |name: &str, addr: SocketAddr| {
        format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: default
  name: {name}
  labels: {{kubernetes.io/service-name: a}}
addressType: IPv4
ports: [{{name: http, port: {}}}]
endpoints:
- addresses: [\"{}\"]
  conditions: {{ready: true}}
",
            addr.port(),
            addr.ip()
        )
    };
    docs(&[
        service("default", "a", 80, "http"),
        slice("a-live", live),
        slice("a-dead", dead),
        backend_policy(
            "a-health",
            "a",
            "healthCheck: {type: TCP, interval: 100ms, timeout: 100ms, unhealthyThreshold: 1}",
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_health_is_exported_per_endpoint() {
    let live = weir::demo::echo::EchoServer::start("a", "127.0.0.1:0".parse().unwrap()).await.expect("echo server");
    let dead = local(free_port());
    let weir = TestWeir::start(&[
        ("a.yaml", &two_endpoints(live.addr(), dead)),
        ("ingress.yaml", &ingress("web", "a.example.com", "a")),
    ])
    .await;
    let (live_s, dead_s) = (live.addr().to_string(), dead.to_string());
    let pool = "default/a:80";
    let s = metrics_when(&weir, "the dead endpoint fails its health check", |s| {
        value(s, "weir_endpoint_healthy", &[("pool", pool), ("endpoint", &dead_s)]) == Some(0.0)
    })
    .await;
    assert_eq!(value(&s, "weir_endpoint_healthy", &[("pool", pool), ("endpoint", &live_s)]), Some(1.0));
    assert_eq!(select(&s, "weir_endpoint_healthy", &[("pool", pool)]).len(), 2, "one series per endpoint");

    // /config_dump agrees
    let dump = weir.config_dump().await;
    let pools = dump["pools"].as_array().expect("pools");
    let p = pools.iter().find(|p| p["name"] == pool).unwrap_or_else(|| panic!("no pool {pool}: {dump:#}"));
    let healthy: BTreeMap<String, bool> = p["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["addr"].as_str().unwrap().to_string(), e["healthy"].as_bool().unwrap()))
        .collect();
    assert_eq!(healthy, BTreeMap::from([(live_s.clone(), true), (dead_s.clone(), false)]), "{p:#}");

    // traffic only goes to the live endpoint
    for _ in 0..4 {
        weir.get("a.example.com", "/").await.assert_served_by("a");
    }
}

// ---------------------------------------------------------------------------------------------
// /config_dump

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_lists_listeners_routes_pools_and_rejections() {
    let (b, weir) = TestWeir::with_backends(
        &["a"],
        &[
            ("ingress.yaml", &ingress("web", "a.example.com", "a")),
            ("junk.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: apps}\n"),
        ],
    )
    .await;
    let dump = weir.config_dump().await;

    assert!(dump["generation"].as_u64().is_some_and(|g| g >= 1), "{dump:#}");

    let listeners = dump["listeners"].as_array().expect("listeners array");
    let by_name = |name: &str| -> &Value {
        listeners.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no listener {name}: {dump:#}"))
    };
    let http = by_name("ingress-http");
    assert_eq!(http["address"], weir.http.to_string());
    assert_eq!(http["protocol"], "Http");
    let https = by_name("ingress-https");
    assert_eq!(https["address"], weir.https.to_string());
    assert_eq!(https["protocol"], "Https");

    let hosts = http["virtualHosts"].as_array().expect("virtualHosts array");
    assert_eq!(hosts.len(), 1, "{http:#}");
    assert_eq!(hosts[0]["host"], "a.example.com");
    let routes = hosts[0]["routes"].as_array().expect("routes array");
    assert_eq!(routes.len(), 1, "{http:#}");
    assert_eq!(routes[0]["route"], "ingress/default/web");
    assert_eq!(routes[0]["path"], "Prefix /");
    assert_eq!(routes[0]["action"]["forward"][0]["backend"], "default/a:80");
    assert_eq!(routes[0]["action"]["forward"][0]["available"], true);

    let pools = dump["pools"].as_array().expect("pools array");
    assert_eq!(pools.len(), 1, "{dump:#}");
    assert_eq!(pools[0]["name"], "default/a:80");
    let endpoints = pools[0]["endpoints"].as_array().expect("endpoints array");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["addr"], b.echo("a").addr().to_string());
    assert_eq!(endpoints[0]["healthy"], true);

    let rejections = dump["rejections"].as_array().expect("rejections array");
    assert_eq!(rejections.len(), 1, "{dump:#}");
    let r = &rejections[0];
    assert_eq!(r["kind"], "Deployment");
    assert_eq!(r["namespace"], "apps");
    assert_eq!(r["name"], "d");
    assert_eq!(r["file"], weir.dir().join("junk.yaml").display().to_string());
    assert!(r["reason"].as_str().is_some_and(|s| s.contains("not a kind weir reads")), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_listener_that_cannot_bind_is_reported_and_binds_once_the_port_is_free() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = taken.local_addr().unwrap().port();
    let route = String::from(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: a, port: 80}]
",
    );
    let gw = docs(&[class_and_gateway("default", "gw", port), route]);
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("gateway.yaml", &gw)]).await;

    let dump = weir.config_dump().await;
    let listener = dump["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == local(port).to_string())
        .unwrap_or_else(|| panic!("no listener on port {port}: {dump:#}"))
        .clone();
    assert_eq!(listener["name"], "gateway:default/gw");
    let err = listener["bindError"].as_str().unwrap_or_else(|| panic!("no bindError: {listener:#}"));
    assert!(err.contains(&port.to_string()), "{err}");
    let s = parse_metrics(&weir.metrics().await);
    assert_eq!(value(&s, "weir_listener_bind_failures_total", &[("port", &port.to_string())]), Some(1.0));

    // free the port; the next configuration change binds it
    drop(taken);
    weir.apply("other.yaml", &ingress("web", "a.example.com", "a")).await;
    wait_listening(local(port)).await;
    get(local(port), "any.example.com", "/").await.assert_served_by("a");
    let dump = weir.config_dump().await;
    let listener =
        dump["listeners"].as_array().unwrap().iter().find(|l| l["address"] == local(port).to_string()).unwrap();
    assert!(listener["bindError"].is_null(), "{listener:#}");
}

// ---------------------------------------------------------------------------------------------
// Access log (the real binary: `weir edge --access-log json` writes one JSON line per request on
// stdout)

/// The weir binary, killed (by its own pid) when dropped.
struct Edge {
    child: std::process::Child,
    http: SocketAddr,
    stdout: mpsc::Receiver<String>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `weir [global] edge --access-log json` on loopback port 0 listeners (stderr is a pipe,
/// as in a Pod or a redirect to a file) and reads the HTTP address it logs on stderr, with
/// `http_addr` (the text of the line it logs that in).
fn start_binary_with(
    config_dir: &std::path::Path,
    global: &[&str],
    http_addr: fn(&str) -> Option<String>,
) -> (Edge, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(global)
        .args(["edge", "--config-dir"])
        .arg(config_dir)
        .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--gateway-address", "127.0.0.1", "--access-log", "json"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir edge");
    let (out_tx, stdout) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if out_tx.send(line).is_err() {
                return;
            }
        }
    });
    let (err_tx, err_rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let mut edge = Edge { child, http: local(0), stdout };
    let mut seen = vec![];
    loop {
        match err_rx.recv_timeout(WAIT) {
            Ok(line) => {
                assert!(!line.contains('\u{1b}'), "colour codes in a log that is not a terminal: {line:?}");
                if let Some(addr) = http_addr(&line) {
                    edge.http = addr.parse().unwrap_or_else(|_| panic!("bad http_addr in {line:?}"));
                    return (edge, line);
                }
                seen.push(line);
            }
            Err(_) => panic!("weir edge did not log that it is serving within {WAIT:?}; stderr:\n{}", seen.join("\n")),
        }
    }
}

/// [`start_binary_with`] the text log.
fn start_binary(config_dir: &std::path::Path) -> Edge {
    let text = |line: &str| Some(line.split("http_addr=").nth(1)?.split_whitespace().next()?.to_string());
    start_binary_with(config_dir, &[], text).0
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let json = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(v.get("http_addr")?.as_str()?.to_string())
    };
    let (_edge, line) = start_binary_with(dir.path(), &["--log-format", "json"], json);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!((v["level"].as_str(), v["message"].as_str()), (Some("INFO"), Some("weir edge is serving")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request_on_stdout() {
    let (a, a_yaml) = backend("default", "a").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("backends.yaml"), &a_yaml).unwrap();
    std::fs::write(dir.path().join("ingress.yaml"), ingress("web", "a.example.com", "a")).unwrap();
    let edge = start_binary(dir.path());

    wait_until("weir edge serves a.example.com", WAIT, || async {
        matches!(request(edge.http).host("a.example.com").path("/warmup").try_send().await, Ok(r) if r.status == 200)
    })
    .await;
    request(edge.http)
        .host("a.example.com")
        .path("/hello?x=1")
        .header("x-probe", "1")
        .send()
        .await
        .assert_served_by("a");
    request(edge.http).host("nope.example.com").path("/missing").send().await.assert_status(404);

    // every stdout line is an access-log record; find the two requests (a record is written
    // after its response, so the two may arrive in either order)
    let mut records: Vec<Value> = vec![];
    let deadline = std::time::Instant::now() + WAIT;
    while !["/hello", "/missing"].iter().all(|p| records.iter().any(|r| r["path"] == *p)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = edge
            .stdout
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no access-log lines for both requests within {WAIT:?}; so far: {records:#?}"));
        let record: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
        records.push(record);
    }
    let hello = records.iter().find(|r| r["path"] == "/hello").unwrap_or_else(|| panic!("no /hello: {records:#?}"));
    assert_eq!(hello["status"], 200, "{hello}");
    assert_eq!(hello["method"], "GET", "{hello}");
    assert_eq!(hello["host"], "a.example.com", "{hello}");
    assert_eq!(hello["listener"], "ingress-http", "{hello}");
    assert_eq!(hello["route"], "ingress/default/web", "{hello}");
    assert_eq!(hello["backend"], "default/a:80", "{hello}");
    assert_eq!(hello["upstream"], a.addr().to_string(), "{hello}");
    assert!(hello["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{hello}");
    assert!(hello["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{hello}");

    let missing = records.iter().find(|r| r["path"] == "/missing").unwrap();
    assert_eq!(missing["status"], 404, "{missing}");
    assert_eq!(missing["route"], "", "{missing}");
    assert_eq!(missing["host"], "nope.example.com", "{missing}");
    assert_eq!(records.iter().filter(|r| r["path"] == "/hello").count(), 1, "one line per request: {records:#?}");
}
