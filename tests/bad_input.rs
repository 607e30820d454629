//! Bad input while weir is serving: broken manifests, unknown kinds, references to missing
//! Services, and hostile requests. What is already served must keep being served, and every
//! problem must show in `/config_dump` with its file and a reason.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The rejections whose `file` ends with `/<file>` and whose reason contains every fragment.
fn rejections_of<'a>(rejections: &'a [Value], file: &str, fragments: &[&str]) -> Vec<&'a Value> {
    rejections
        .iter()
        .filter(|r| r["file"].as_str().is_some_and(|f| f.ends_with(&format!("/{file}"))))
        .filter(|r| r["reason"].as_str().is_some_and(|reason| fragments.iter().all(|f| reason.contains(f))))
        .collect()
}

/// Asserts exactly one rejection for `file` contains every fragment, and returns it.
#[track_caller]
fn expect_file_rejection(rejections: &[Value], file: &str, fragments: &[&str]) -> Value {
    let found = rejections_of(rejections, file, fragments);
    assert_eq!(
        found.len(),
        1,
        "expected one rejection of {file} containing {fragments:?}; rejections: {rejections:#?}"
    );
    found[0].clone()
}

/// Two echo backends `a` and `b`, with Ingress `web` (a.example.com → a, in routes.yaml) and
/// Ingress `other` (b.example.com → b, in other.yaml).
async fn two_ingresses() -> (Backends, TestWeir) {
    let (b, weir) = TestWeir::with_backends(
        &["a", "b"],
        &[
            ("routes.yaml", &ingress("web", "a.example.com", "a")),
            ("other.yaml", &ingress("other", "b.example.com", "b")),
        ],
    )
    .await;
    weir.get("a.example.com", "/").await.assert_served_by("a");
    weir.get("b.example.com", "/").await.assert_served_by("b");
    assert!(weir.rejections().await.is_empty(), "the starting configuration is clean");
    (b, weir)
}

// ---------------------------------------------------------------------------------------------
// Broken manifests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_yaml_keeps_the_files_last_good_routes_until_it_is_fixed() {
    let (_b, weir) = two_ingresses().await;

    // an editor saves the file half-way through a change: the flow mapping is never closed
    let broken = ingress("web", "a.example.com", "b").replace("port: {number: 80}}}", "port: {number: 80}");
    weir.apply("routes.yaml", &broken).await;

    weir.get("a.example.com", "/").await.assert_served_by("a");
    weir.get("b.example.com", "/").await.assert_served_by("b");
    let rejections = weir.rejections().await;
    let r = expect_file_rejection(&rejections, "routes.yaml", &["YAML does not parse", "line"]);
    assert!(
        r["file"].as_str().unwrap().starts_with(&weir.dir().display().to_string()),
        "the rejection names the file weir read: {r}"
    );

    // another file changes meanwhile: the broken file's last good objects still serve
    weir.apply("other.yaml", &ingress("other", "c.example.com", "b")).await;
    weir.get("c.example.com", "/").await.assert_served_by("b");
    weir.get("a.example.com", "/").await.assert_served_by("a");
    expect_file_rejection(&weir.rejections().await, "routes.yaml", &["YAML does not parse"]);

    // the fix applies, and the error goes away
    weir.apply("routes.yaml", &ingress("web", "a.example.com", "b")).await;
    weir.get("a.example.com", "/").await.assert_served_by("b");
    let rejections = weir.rejections().await;
    assert!(rejections.is_empty(), "the fixed file is no longer reported: {rejections:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_that_stops_matching_its_schema_keeps_its_last_good_version() {
    let (_b, weir) = two_ingresses().await;

    let bad = ingress("web", "a.example.com", "b").replace("pathType: Prefix", "pathType: [Prefix]");
    weir.apply("routes.yaml", &bad).await;

    weir.get("a.example.com", "/").await.assert_served_by("a");
    let r = weir.expect_rejection("Ingress", "default", "web").await;
    assert!(r["reason"].as_str().unwrap().contains("does not match its schema"), "{r}");
    assert!(r["file"].as_str().unwrap().ends_with("/routes.yaml"), "{r}");

    weir.apply("routes.yaml", &ingress("web", "a.example.com", "b")).await;
    weir.get("a.example.com", "/").await.assert_served_by("b");
    assert!(weir.rejection("Ingress", "default", "web").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_broken_file_removes_its_routes_and_its_error() {
    let (_b, weir) = two_ingresses().await;
    weir.apply("routes.yaml", "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web\n").await;
    weir.get("a.example.com", "/").await.assert_served_by("a");

    weir.delete("routes.yaml").await;
    weir.get("a.example.com", "/").await.assert_status(404);
    weir.get("b.example.com", "/").await.assert_served_by("b");
    assert!(weir.rejections().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_file_with_an_unknown_kind_is_listed_and_everything_else_keeps_serving() {
    let (_b, weir) = two_ingresses().await;
    let deployment = "
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: api, namespace: default}
        spec: {replicas: 2}
    ";
    weir.apply("deployment.yaml", deployment).await;

    weir.get("a.example.com", "/").await.assert_served_by("a");
    weir.get("b.example.com", "/").await.assert_served_by("b");
    let r = weir.expect_rejection("Deployment", "default", "api").await;
    assert!(r["file"].as_str().unwrap().ends_with("/deployment.yaml"), "{r}");
    assert!(r["reason"].as_str().unwrap().contains("apps/v1 Deployment is not a kind weir reads"), "{r}");
    assert_eq!(weir.rejections().await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// References to missing Services

/// An Ingress that was serving and is edited to a missing Service keeps its previous version
/// serving, and `/config_dump` says why the edit did not apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_edited_to_a_missing_service_keeps_its_previous_version_and_says_why() {
    let (_b, weir) = two_ingresses().await;
    weir.apply("routes.yaml", &ingress("web", "a.example.com", "ghost")).await;

    weir.get("a.example.com", "/").await.assert_served_by("a");
    weir.get("b.example.com", "/").await.assert_served_by("b");
    let r = weir.expect_rejection("Ingress", "default", "web").await;
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("Service default/ghost does not exist"), "the reason names the Service: {r}");
    assert!(reason.contains("previous version keeps serving"), "the reason says what is served instead: {r}");
    assert!(r["file"].as_str().unwrap().ends_with("/routes.yaml"), "{r}");

    // creating the Service makes the edit valid: it applies
    let (_ghost, ghost_yaml) = backend("default", "ghost").await;
    weir.apply("ghost.yaml", &ghost_yaml).await;
    weir.get("a.example.com", "/").await.assert_served_by("ghost");
    assert!(weir.rejection("Ingress", "default", "web").await.is_none());
}

/// A new Ingress to a missing Service is rejected: its host answers 404, the others keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_ingress_to_a_missing_service_is_rejected_and_answers_404() {
    let (_b, weir) = two_ingresses().await;
    weir.apply("lost.yaml", &ingress("lost", "lost.example.com", "ghost")).await;

    weir.get("lost.example.com", "/").await.assert_status(404);
    weir.get("a.example.com", "/").await.assert_served_by("a");
    weir.get("b.example.com", "/").await.assert_served_by("b");
    let r = weir.expect_rejection("Ingress", "default", "lost").await;
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("Service default/ghost does not exist"), "the reason names the Service: {r}");
    assert!(r["file"].as_str().unwrap().ends_with("/lost.yaml"), "{r}");
    assert!(
        !reason.contains("previous version"),
        "Ingress default/lost never served, so no previous version of it keeps serving: {r}"
    );

    // once the Service exists the Ingress serves
    let (_ghost, ghost_yaml) = backend("default", "ghost").await;
    weir.apply("ghost.yaml", &ghost_yaml).await;
    weir.get("lost.example.com", "/").await.assert_served_by("ghost");
    assert!(weir.rejection("Ingress", "default", "lost").await.is_none());
}

/// When an edit leaves no valid route at all, weir keeps serving the last good configuration
/// (on purpose); the operator must still be able to see why the edit did not apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_that_leaves_no_valid_route_keeps_serving_and_still_reports_why() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("routes.yaml", &ingress("web", "a.example.com", "a"))]).await;
    weir.get("a.example.com", "/").await.assert_served_by("a");

    weir.write("routes.yaml", &ingress("web", "a.example.com", "ghost"));
    let r = wait_for(
        "/config_dump says why the edit of Ingress default/web (now pointing at a missing Service) was not applied",
        WAIT,
        || weir.rejection("Ingress", "default", "web"),
    )
    .await;
    assert!(r["reason"].as_str().unwrap().contains("Service default/ghost does not exist"), "{r}");
    weir.get("a.example.com", "/").await.assert_served_by("a");
}

/// Deleting the last valid route takes it down even when the only route left is refused (by
/// its Gateway's listener): a source that read every object is taken at its word, and the
/// refused route's status says why. (The Gateway API conformance suite deletes every test's
/// routes in turn: weir kept serving a deleted route and wrote no status for the refused one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_last_valid_route_takes_it_down_beside_a_refused_one() {
    let port = free_port();
    let refused = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: other}
spec:
  parentRefs: [{name: gw, namespace: default}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
";
    let files = [("gateway.yaml", gateway_and_route(port, "a")), ("refused.yaml", refused.to_string())];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, y)| (*n, y.as_str())).collect();
    let (_b, weir) = TestWeir::with_backends(&["a"], &files).await;
    let gw = local(port);
    wait_listening(gw).await;
    get(gw, "shop.example.com", "/good").await.assert_served_by("a");

    // the Gateway stays, its one valid route goes
    weir.apply("gateway.yaml", &class_and_gateway("default", "gw", port)).await;
    get(gw, "shop.example.com", "/good").await.assert_status(404);
    let status = weir.status("HTTPRoute", "other", "elsewhere").await;
    let accepted = status["parents"][0]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Accepted");
    let accepted = accepted.unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&false.into(), &"NotAllowedByListeners".into()),
        "{status:#}"
    );
}

/// GatewayClass `weir`, Gateway `gw` on `port`, and HTTPRoute `shop` with rules `/good` → a and
/// `/other` → `other`.
fn gateway_and_route(port: u16, other: &str) -> String {
    docs(&[
        class_and_gateway("default", "gw", port),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /good}}}}]
    backendRefs: [{{name: a, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /other}}}}]
    backendRefs: [{{name: {other}, port: 80}}]
"
        ),
    ])
}

/// The `available: false` forward target of route `route` on listener `addr` in `/config_dump`.
#[track_caller]
fn assert_unavailable_backend(dump: &Value, addr: SocketAddr, route: &str, backend: &str) {
    let listener = dump["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("no listener {addr} in {dump:#}"));
    let routes: Vec<&Value> = listener["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|vh| vh["routes"].as_array().unwrap())
        .filter(|r| r["route"] == route)
        .collect();
    assert_eq!(routes.len(), 1, "route {route} once on {addr}: {listener:#}");
    assert_eq!(routes[0]["action"]["forward"][0]["backend"], backend, "{listener:#}");
    assert_eq!(routes[0]["action"]["forward"][0]["available"], false, "{listener:#}");
}

/// Gateway API: an HTTPRoute with an invalid backendRef is accepted; requests for that backend
/// get 500 and the other rules serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_with_a_missing_backend_answers_500_for_that_rule_only() {
    let port = free_port();
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("gateway.yaml", &gateway_and_route(port, "ghost"))]).await;
    let gw = local(port);
    wait_listening(gw).await;

    get(gw, "shop.example.com", "/good").await.assert_served_by("a");
    get(gw, "shop.example.com", "/other").await.assert_status(500);
    let r = weir.expect_rejection("HTTPRoute", "default", "shop").await;
    let reason = r["reason"].as_str().unwrap();
    for fragment in ["spec.rules[1].backendRefs[0]", "Service default/ghost does not exist", "500"] {
        assert!(reason.contains(fragment), "the reason explains the 500 ({fragment}): {r}");
    }
    assert!(!reason.contains("previous version"), "there is no previous version of this route: {r}");
    let dump = weir.config_dump().await;
    assert_unavailable_backend(&dump, gw, "httproute/default/shop/rule/1", "default/ghost:80");
    // the route's status for its Gateway, as the Gateway API words it
    let status = weir.status("HTTPRoute", "default", "shop").await;
    let parent = &status["parents"][0];
    assert_eq!(parent["parent"]["kind"], "Gateway", "{status:#}");
    assert_eq!(parent["parent"]["name"], "gw", "{status:#}");
    let condition = |t: &str| parent["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).cloned();
    let accepted = condition("Accepted").unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!((&accepted["status"], &accepted["reason"]), (&true.into(), &"Accepted".into()), "{status:#}");
    let resolved = condition("ResolvedRefs").unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!((&resolved["status"], &resolved["reason"]), (&false.into(), &"BackendNotFound".into()), "{status:#}");
    assert!(resolved["message"].as_str().unwrap().contains("Service default/ghost does not exist"), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_backend_edited_to_a_missing_service_answers_500_and_is_explained() {
    let port = free_port();
    let (_b, weir) = TestWeir::with_backends(&["a", "b"], &[("gateway.yaml", &gateway_and_route(port, "b"))]).await;
    let gw = local(port);
    wait_listening(gw).await;
    get(gw, "shop.example.com", "/other").await.assert_served_by("b");

    weir.apply("gateway.yaml", &gateway_and_route(port, "ghost")).await;

    let resp = get(gw, "shop.example.com", "/other").await;
    resp.assert_status(500);
    get(gw, "shop.example.com", "/good").await.assert_served_by("a");
    let r = weir.expect_rejection("HTTPRoute", "default", "shop").await;
    let reason = r["reason"].as_str().unwrap();
    for fragment in ["spec.rules[1].backendRefs[0]", "Service default/ghost does not exist", "500"] {
        assert!(reason.contains(fragment), "the reason explains the 500 ({fragment}): {r}");
    }
    assert!(r["file"].as_str().unwrap().ends_with("/gateway.yaml"), "{r}");

    // the config dump shows the route as accepted with an unavailable backend
    assert_unavailable_backend(&weir.config_dump().await, gw, "httproute/default/shop/rule/1", "default/ghost:80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_httproute_with_one_missing_backend_fails_only_that_backends_share() {
    let port = free_port();
    let route = String::from(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: a, port: 80, weight: 1}, {name: ghost, port: 80, weight: 1}]
",
    );
    let (_b, weir) = TestWeir::with_backends(
        &["a"],
        &[("gateway.yaml", &class_and_gateway("default", "gw", port)), ("route.yaml", &route)],
    )
    .await;
    let gw = local(port);
    wait_listening(gw).await;

    let mut served = 0;
    let mut errors = 0;
    for _ in 0..20 {
        let resp = get(gw, "split.example.com", "/").await;
        match resp.status {
            200 => {
                resp.assert_served_by("a");
                served += 1;
            }
            500 => errors += 1,
            _ => panic!("expected 200 from a or 500 for the missing backend: {resp}"),
        }
    }
    assert_eq!((served, errors), (10, 10), "equal weights: half the requests reach a, half get 500");
    let r = weir.expect_rejection("HTTPRoute", "default", "split").await;
    assert!(r["reason"].as_str().unwrap().contains("Service default/ghost does not exist"), "{r}");
}

// ---------------------------------------------------------------------------------------------
// Hostile requests

/// What came back on a raw connection.
#[derive(Debug)]
enum Outcome {
    /// A response with this status.
    Status(u16, String),
    /// The connection was closed (or reset) without a response.
    Closed,
    /// Bytes that are not an HTTP response (e.g. a TLS alert).
    NotHttp(Vec<u8>),
    /// Neither a response nor a close within [`WAIT`].
    Hung(Vec<u8>),
}

/// Sends `bytes` on a fresh TCP connection (then, if `close_write`, half-closes it) and reads
/// until weir closes the connection or a response head has arrived.
async fn raw(addr: SocketAddr, bytes: &[u8], close_write: bool) -> Outcome {
    let mut stream = TcpStream::connect(addr).await.expect("connect to weir");
    // weir may stop reading (and reset) before everything is written: that is fine
    let _ = tokio::time::timeout(WAIT, stream.write_all(bytes)).await;
    if close_write {
        let _ = stream.shutdown().await;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    if read.is_err() {
        return Outcome::Hung(got);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    match text.strip_prefix("HTTP/1.1 ").or_else(|| text.strip_prefix("HTTP/1.0 ")) {
        Some(rest) => Outcome::Status(rest.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0), text),
        None if got.is_empty() => Outcome::Closed,
        None => Outcome::NotHttp(got),
    }
}

#[track_caller]
fn assert_refused(what: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Closed => {}
        Outcome::Status(code, _) if (400..500).contains(code) => {}
        Outcome::Status(_, text) => panic!("{what}: expected a 4xx or a closed connection, got {text:?}"),
        Outcome::NotHttp(bytes) => panic!("{what}: weir answered something that is not HTTP: {bytes:?}"),
        Outcome::Hung(bytes) => {
            panic!("{what}: weir neither answered nor closed the connection within {WAIT:?} (got {bytes:?})")
        }
    }
}

/// Starts weir with a.example.com → echo `a`, sends `bytes` on a raw connection, and checks that
/// it gets a 4xx or a closed connection, never reaches the upstream, and that weir serves the next
/// request normally.
async fn check_hostile(what: &str, bytes: &[u8], close_write: bool) {
    let (b, weir) = TestWeir::with_backends(&["a"], &[("routes.yaml", &ingress("web", "a.example.com", "a"))]).await;

    let outcome = raw(weir.http, bytes, close_write).await;
    assert_refused(what, &outcome);
    assert_eq!(b.echo("a").requests(), 0, "{what} must not reach the upstream ({outcome:?})");
    let next = weir.get("a.example.com", "/").await;
    assert!(
        next.status == 200 && next.echo_name() == Some("a"),
        "after {what} ({outcome:?}) weir must keep serving: {next}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_line_is_refused() {
    check_hostile("a malformed request line", b"THIS IS NOT HTTP, NOT EVEN CLOSE TO IT\r\n\r\n", false).await;
}

/// Shorter than the 24-byte HTTP/2 preface: weir must not wait for more bytes the client will
/// never send before deciding whether this is h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_malformed_request_line_is_refused() {
    check_hostile("a short malformed request line", b"HELLO\r\n\r\n", false).await;
}

/// A complete HTTP/1.0 request of 18 bytes (no Host header, as simple probes send it) must be
/// answered like any other; it is shorter than the 24-byte HTTP/2 preface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_http10_request_without_host_is_answered() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("routes.yaml", &ingress("web", "a.example.com", "a"))]).await;
    let outcome = raw(weir.http, b"GET / HTTP/1.0\r\n\r\n", false).await;
    match &outcome {
        Outcome::Status(code, _) if (400..500).contains(code) => {}
        other => panic!("GET / HTTP/1.0 with no Host must get a 4xx (no route), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_without_a_version_is_refused() {
    check_hostile("a request line with no version", b"GET /\r\nHost: a.example.com\r\n\r\n", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_garbage_is_refused() {
    let garbage: Vec<u8> = (0u8..=255).cycle().take(4096).collect();
    check_hostile("binary garbage", &garbage, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_header_is_refused() {
    let huge = format!("GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: {}\r\n\r\n", "x".repeat(2 * 1024 * 1024));
    check_hostile("a 2 MiB header", huge.as_bytes(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_headers_are_refused() {
    let many: String = (0..20_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a.example.com\r\n{many}\r\n");
    check_hostile("20000 headers", many.as_bytes(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_refused() {
    let req = b"POST / HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde";
    check_hostile("two different Content-Length headers", req, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_line_without_a_colon_is_refused() {
    check_hostile("a header without a colon", b"GET / HTTP/1.1\r\nHost: a.example.com\r\nnocolon\r\n\r\n", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_cut_off_in_its_headers_is_dropped() {
    check_hostile("a request cut off in its headers", b"GET / HTTP/1.1\r\nHost: a.exa", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_the_tls_listener_is_refused_and_tls_listener_keeps_accepting() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("routes.yaml", &ingress("web", "a.example.com", "a"))]).await;

    let outcome = raw(weir.https, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n", false).await;
    // a TLS alert or a closed connection; never an HTTP response
    assert!(!matches!(outcome, Outcome::Status(..)), "plain HTTP on the TLS listener got {outcome:?}");
    // the plaintext listener and the TLS listener still accept connections
    weir.get("a.example.com", "/").await.assert_served_by("a");
    TcpStream::connect(weir.https).await.expect("the TLS listener still accepts connections");
    wait_until("weir counts the failed TLS handshake", WAIT, || async {
        weir.metrics().await.lines().any(|l| {
            l.starts_with("weir_tls_handshake_failures_total{listener=\"ingress-https\"} ") && !l.ends_with(" 0")
        })
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Gateways with an unusable listener

/// Gateway API listeners are independent: a Gateway with one unsupported listener (TCP) still
/// serves its HTTP listener, and the rejection names the listener that cannot be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_with_an_unsupported_listener_still_serves_its_other_listeners() {
    let port = free_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: weir
  listeners:
  - {{name: http, protocol: HTTP, port: {port}}}
  - {{name: db, protocol: TCP, port: 5432}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  rules:
  - backendRefs: [{{name: a, port: 80}}]
"
    );
    let (_b, weir) =
        TestWeir::with_backends(&["a"], &[("class.yaml", &gateway_class()), ("gateway.yaml", &gateway)]).await;

    let r = weir.expect_rejection("Gateway", "default", "gw").await;
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("spec.listeners[1] (db)") && reason.contains("protocol TCP"), "{r}");
    let gw = local(port);
    wait_listening(gw).await;
    get(gw, "any.example.com", "/").await.assert_served_by("a");
}

/// A manifest nested 100,000 deep (200 KB of `[[[...]]]`, which YAML's parser takes seconds on,
/// growing with the square of the depth) is refused at once and read off the request path: a
/// request loop beside its load sees no request slower than 100 ms, and the routes keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pathologically_nested_manifest_is_refused_without_stalling_a_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let (_b, weir) =
        TestWeir::with_backends(&["app"], &[("ingress.yaml", &ingress("app", "app.example.com", "app"))]).await;
    let http = weir.http;
    get(http, "app.example.com", "/").await.assert_served_by("app");
    let done = Arc::new(AtomicBool::new(false));
    let requests = tokio::spawn({
        let done = done.clone();
        async move {
            let mut slowest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                get(http, "app.example.com", "/").await.assert_served_by("app");
                slowest = slowest.max(started.elapsed());
            }
            slowest
        }
    });
    let deep = format!("x: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    weir.apply("deep.yaml", &deep).await;
    let rejections = weir.rejections().await;
    let refused = rejections.iter().find(|r| r["file"].as_str().is_some_and(|f| f.ends_with("deep.yaml")));
    let reason = refused.unwrap_or_else(|| panic!("deep.yaml is not refused: {rejections:#?}"))["reason"].clone();
    assert!(reason.as_str().unwrap().contains("nest more than 64 deep"), "{reason}");
    done.store(true, Ordering::Relaxed);
    let slowest = requests.await.unwrap();
    assert!(slowest < Duration::from_millis(100), "a request took {slowest:?} while the file loaded");
}

/// HTTP/1 framing as RFC 9112 states it, on raw sockets: HTTP/1.1 without Host is 400; a
/// transfer coding other than chunked is 501 (weir would drop it); Content-Length given twice is
/// one header upstream when the values agree, 400 when they differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_framing_is_held_to_rfc_9112() {
    let (b, weir) =
        TestWeir::with_backends(&["app"], &[("ingress.yaml", &ingress("app", "app.example.com", "app"))]).await;
    let status = |outcome: Outcome| match outcome {
        Outcome::Status(code, _) => code,
        other => panic!("no response: {other:?}"),
    };
    assert_eq!(status(raw(weir.http, b"GET / HTTP/1.1\r\n\r\n", false).await), 400, "no Host");
    // HTTP/1.0 needs none (it is routed by no host: 404)
    assert_eq!(status(raw(weir.http, b"GET / HTTP/1.0\r\n\r\n", false).await), 404);
    let gzip = b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(status(raw(weir.http, gzip, false).await), 501, "gzip, chunked");
    let differing = b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc";
    assert_refused("differing Content-Lengths", &raw(weir.http, differing, false).await);
    assert_eq!(b.echo("app").requests(), 0, "none of these reached the upstream");

    // the same length twice: served, and the upstream sees it once
    let mut stream = TcpStream::connect(weir.http).await.unwrap();
    let same = b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    stream.write_all(same).await.unwrap();
    let mut got = vec![];
    tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await.expect("the response in time").unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["headers"]["content-length"], "5", "one Content-Length upstream: {body:#}");
}
