//! HTTPRoute (gateway.networking.k8s.io/v1) matching, precedence and filters on a weir Gateway
//! listener, one rule per test. Every backend is a real echo server; its name (the `x-echo-name`
//! header) tells where a request went, its JSON body how the request arrived.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

/// weir with GatewayClass `weir`, Gateway `default/edge` (listener `http` on a free port), echo
/// backends in `default` and the given routes.
struct Edge {
    weir: TestWeir,
    /// The Gateway listener.
    gateway: SocketAddr,
    backends: Backends,
}

impl Edge {
    async fn start(backend_names: &[&str], routes: &[&str]) -> Edge {
        Edge::start_with("default", backend_names, |port| gateway("default", "edge", port), routes).await
    }

    /// Like [`Edge::start`], with the backends in namespace `ns` and the Gateway `default/edge`
    /// that `gateway` makes for the listener's port.
    async fn start_with(
        ns: &str,
        backend_names: &[&str],
        gateway: impl FnOnce(u16) -> String,
        routes: &[&str],
    ) -> Edge {
        let backends = backends(ns, backend_names).await;
        let port = free_port();
        let mut files = vec![
            ("gateway.yaml".to_string(), docs(&[gateway_class(), gateway(port)])),
            ("backends.yaml".to_string(), backends.yaml.clone()),
        ];
        for (i, route) in routes.iter().enumerate() {
            files.push((format!("route-{i}.yaml"), route.to_string()));
        }
        let files: Vec<(&str, &str)> = files.iter().map(|(n, y)| (n.as_str(), y.as_str())).collect();
        let weir = TestWeir::start(&files).await;
        let gateway = weir.gateway_listener(port).await;
        Edge { weir, gateway, backends }
    }

    async fn get(&self, host: &str, path: &str) -> Resp {
        get(self.gateway, host, path).await
    }

    fn request(&self, host: &str, path: &str) -> RequestBuilder {
        request(self.gateway).host(host).path(path)
    }

    fn echo(&self, name: &str) -> &weir::demo::echo::EchoServer {
        self.backends.echo(name)
    }
}

/// A route `default/<name>` on Gateway `edge` sending every request of any host to `service`.
fn catch_all_route(name: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{namespace: default, name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

/// A route `default/<name>` for `hostname` sending everything to `service`.
fn host_route(name: &str, hostname: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{namespace: default, name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [\"{hostname}\"]
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

/// A route `default/<name>` (any host) with one rule: `matches` (YAML flow list) → `service`.
fn match_route(name: &str, matches: &str, service: &str) -> String {
    rule_route(name, &format!("matches: {matches}"), service)
}

/// A route `default/<name>` (any host) with one rule to `service` with extra rule fields
/// (`field: value`, YAML).
fn rule_route(name: &str, fields: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{namespace: default, name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - {fields}
    backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

// ---------------------------------------------------------------------------------------------
// Attachment: classes, namespaces, listeners

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_attached_to_a_weir_gateway_is_served() {
    let edge = Edge::start(&["a"], &[&catch_all_route("r", "a")]).await;

    let resp = edge.get("foo.example.com", "/some/path?x=1").await;
    resp.assert_served_by("a");
    assert_eq!(resp.upstream_host(), "foo.example.com");
    assert_eq!(resp.upstream_path(), "/some/path?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_of_another_controller_is_ignored() {
    let ports = free_ports(2);
    let (our_port, their_port) = (ports[0], ports[1]);
    let their_gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{namespace: default, name: foreign}}
spec:
  gatewayClassName: other
  listeners:
  - {{name: http, protocol: HTTP, port: {their_port}}}
"
    );
    let their_route = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {namespace: default, name: theirs}
        spec:
          parentRefs: [{name: foreign}]
          rules:
          - backendRefs: [{name: theirs, port: 80}]
    "#;
    let (b, weir) = TestWeir::with_backends(
        &["ours", "theirs"],
        &[
            ("ours.yaml", &class_and_gateway("default", "edge", our_port)),
            ("ours-route.yaml", &catch_all_route("ours", "ours")),
            ("theirs.yaml", &docs(&[gateway_class_for("other", "example.com/other-controller"), their_gateway])),
            ("theirs-route.yaml", their_route),
        ],
    )
    .await;

    // weir's own Gateway is up (so the configuration was read) ...
    let ours = weir.gateway_listener(our_port).await;
    get(ours, "foo.example.com", "/").await.assert_served_by("ours");
    // ... and nothing listens for the other controller's Gateway.
    let refused = tokio::net::TcpStream::connect(local(their_port)).await;
    assert!(refused.is_err(), "weir must not open a listener for a foreign GatewayClass");
    assert_eq!(b.echo("theirs").requests(), 0);
}

const OTHER_NAMESPACE_ROUTE: &str = r#"
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {namespace: other, name: guest}
    spec:
      parentRefs: [{name: edge, namespace: default}]
      rules:
      - backendRefs: [{name: guest, port: 80}]
"#;

/// Gateway `default/edge` with one HTTP listener on `port` admitting routes from every namespace.
fn open_gateway(port: u16) -> String {
    format!("{}    allowedRoutes:\n      namespaces: {{from: All}}\n", gateway("default", "edge", port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_from_another_namespace_is_rejected_by_default() {
    let edge =
        Edge::start_with("other", &["guest"], |port| gateway("default", "edge", port), &[OTHER_NAMESPACE_ROUTE]).await;

    edge.get("foo.example.com", "/").await.assert_status(404);
    edge.weir.expect_rejection("HTTPRoute", "other", "guest").await;
    assert_eq!(edge.echo("guest").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_routes_from_all_admits_other_namespaces() {
    let edge = Edge::start_with("other", &["guest"], open_gateway, &[OTHER_NAMESPACE_ROUTE]).await;

    edge.get("foo.example.com", "/").await.assert_served_by("guest");
    assert!(edge.weir.rejection("HTTPRoute", "other", "guest").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_in_another_namespace_is_served_once_a_reference_grant_allows_it() {
    let route = "
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {namespace: default, name: pay}
    spec:
      parentRefs: [{name: edge}]
      rules:
      - backendRefs: [{name: payments, namespace: billing, port: 80}]
";
    let edge = Edge::start_with("billing", &["payments"], |port| gateway("default", "edge", port), &[route]).await;
    edge.get("foo.example.com", "/").await.assert_status(500);
    let rejection = edge.weir.expect_rejection("HTTPRoute", "default", "pay").await;
    let reason = rejection["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("needs a ReferenceGrant in billing allowing HTTPRoutes of default"), "{reason}");

    // a grant for another kind, or for another namespace, does not do
    edge.weir
        .apply(
            "grant-wrong.yaml",
            &docs(&[
                reference_grant("billing", "for-gateways", ("Gateway", "default"), "Service", None),
                reference_grant("billing", "for-others", ("HTTPRoute", "other"), "Service", None),
            ]),
        )
        .await;
    edge.get("foo.example.com", "/").await.assert_status(500);

    // the grant as v1beta1: weir reads both versions
    let grant = reference_grant("billing", "routes-of-default", ("HTTPRoute", "default"), "Service", None)
        .replace("gateway.networking.k8s.io/v1\n", "gateway.networking.k8s.io/v1beta1\n");
    assert!(grant.contains("v1beta1"));
    edge.weir.apply("grant.yaml", &grant).await;
    edge.get("foo.example.com", "/").await.assert_served_by("payments");
    assert!(edge.weir.rejection("HTTPRoute", "default", "pay").await.is_none());

    // withdrawn: the reference stops being served
    edge.weir.delete("grant.yaml").await;
    edge.get("foo.example.com", "/").await.assert_status(500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_name_attaches_a_route_to_one_listener() {
    let ports = free_ports(2);
    let (port_one, port_two) = (ports[0], ports[1]);
    let two_listeners = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{namespace: default, name: edge}}
spec:
  gatewayClassName: weir
  listeners:
  - {{name: one, protocol: HTTP, port: {port_one}}}
  - {{name: two, protocol: HTTP, port: {port_two}}}
"
    );
    let route = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {namespace: default, name: only-one}
        spec:
          parentRefs: [{name: edge, sectionName: one}]
          rules:
          - backendRefs: [{name: a, port: 80}]
    "#;
    let (_b, weir) = TestWeir::with_backends(
        &["a"],
        &[("gateway.yaml", &docs(&[gateway_class(), two_listeners])), ("route.yaml", route)],
    )
    .await;
    let one = weir.gateway_listener(port_one).await;
    let two = weir.gateway_listener(port_two).await;

    get(one, "foo.example.com", "/").await.assert_served_by("a");
    get(two, "foo.example.com", "/").await.assert_status(404);
}

// ---------------------------------------------------------------------------------------------
// Hostnames

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_without_hostnames_serves_any_host() {
    let edge = Edge::start(&["a"], &[&catch_all_route("r", "a")]).await;

    edge.get("foo.example.com", "/").await.assert_served_by("a");
    edge.get("anything.test", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_route_hostname_serves_only_that_host() {
    let edge = Edge::start(&["a"], &[&host_route("r", "foo.example.com", "a")]).await;

    edge.get("foo.example.com", "/").await.assert_served_by("a");
    edge.get("bar.example.com", "/").await.assert_status(404);
    edge.get("example.com", "/").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_hostname_match_ignores_case_and_port_in_the_host_header() {
    let edge = Edge::start(&["a"], &[&host_route("r", "foo.example.com", "a")]).await;
    let with_port = format!("foo.example.com:{}", edge.gateway.port());

    edge.get(&with_port, "/").await.assert_served_by("a");
    edge.get("FOO.Example.com", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_route_hostname_matches_any_number_of_extra_labels() {
    let edge = Edge::start(&["wild"], &[&host_route("r", "*.example.com", "wild")]).await;

    edge.get("foo.example.com", "/").await.assert_served_by("wild");
    edge.get("a.b.c.example.com", "/").await.assert_served_by("wild");
    edge.get("example.com", "/").await.assert_status(404);
    edge.get("fooexample.com", "/").await.assert_status(404);
}

/// Gateway `default/edge` with one HTTP listener on `port` restricted to `hostname`.
fn gateway_with_hostname(port: u16, hostname: &str) -> String {
    format!("{}    hostname: \"{hostname}\"\n", gateway("default", "edge", port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_listener_hostname_keeps_only_the_route_hostnames_it_covers() {
    let route = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {namespace: default, name: r}
        spec:
          parentRefs: [{name: edge}]
          hostnames: [foo.example.com, foo.other.com]
          rules:
          - backendRefs: [{name: a, port: 80}]
    "#;
    let edge = Edge::start_with("default", &["a"], |port| gateway_with_hostname(port, "*.example.com"), &[route]).await;

    edge.get("foo.example.com", "/").await.assert_served_by("a");
    edge.get("foo.other.com", "/").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_listener_hostname_narrows_a_wildcard_route_hostname() {
    let edge = Edge::start_with(
        "default",
        &["a"],
        |port| gateway_with_hostname(port, "foo.example.com"),
        &[&host_route("r", "*.example.com", "a")],
    )
    .await;

    edge.get("foo.example.com", "/").await.assert_served_by("a");
    edge.get("bar.example.com", "/").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_hostname_beats_wildcard_hostname() {
    let edge = Edge::start(
        &["exact", "wild"],
        &[&host_route("wild", "*.example.com", "wild"), &host_route("exact", "foo.example.com", "exact")],
    )
    .await;

    edge.get("foo.example.com", "/").await.assert_served_by("exact");
    edge.get("bar.example.com", "/").await.assert_served_by("wild");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longer_wildcard_hostname_beats_shorter_wildcard() {
    let edge = Edge::start(
        &["short", "long"],
        &[&host_route("short", "*.example.com", "short"), &host_route("long", "*.api.example.com", "long")],
    )
    .await;

    edge.get("v1.api.example.com", "/").await.assert_served_by("long");
    edge.get("x.v1.api.example.com", "/").await.assert_served_by("long");
    edge.get("www.example.com", "/").await.assert_served_by("short");
    edge.get("api.example.com", "/").await.assert_served_by("short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fallback_to_a_less_specific_hostname_when_its_rules_do_not_match() {
    let exact_only_admin = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {namespace: default, name: exact}
        spec:
          parentRefs: [{name: edge}]
          hostnames: [foo.example.com]
          rules:
          - matches: [{path: {type: PathPrefix, value: /admin}}]
            backendRefs: [{name: exact, port: 80}]
    "#;
    let edge = Edge::start(&["exact", "wild"], &[exact_only_admin, &host_route("wild", "*.example.com", "wild")]).await;

    edge.get("foo.example.com", "/admin").await.assert_served_by("exact");
    edge.get("foo.example.com", "/public").await.assert_status(404);
    edge.get("bar.example.com", "/public").await.assert_served_by("wild");
    assert_eq!(edge.echo("wild").requests(), 1);
}

// ---------------------------------------------------------------------------------------------
// Path matches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_matches_only_that_path() {
    let edge = Edge::start(&["exact"], &[&match_route("r", "[{path: {type: Exact, value: /foo}}]", "exact")]).await;

    edge.get("h.test", "/foo").await.assert_served_by("exact");
    edge.get("h.test", "/foo?x=1").await.assert_served_by("exact");
    edge.get("h.test", "/foo/").await.assert_status(404);
    edge.get("h.test", "/foo/bar").await.assert_status(404);
    edge.get("h.test", "/foobar").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_matches_whole_path_elements() {
    let edge =
        Edge::start(&["prefix"], &[&match_route("r", "[{path: {type: PathPrefix, value: /foo}}]", "prefix")]).await;

    edge.get("h.test", "/foo").await.assert_served_by("prefix");
    edge.get("h.test", "/foo/").await.assert_served_by("prefix");
    edge.get("h.test", "/foo/bar").await.assert_served_by("prefix");
    edge.get("h.test", "/foobar").await.assert_status(404);
    edge.get("h.test", "/").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_trailing_slash_is_ignored() {
    let edge =
        Edge::start(&["prefix"], &[&match_route("r", "[{path: {type: PathPrefix, value: /foo/}}]", "prefix")]).await;

    edge.get("h.test", "/foo").await.assert_served_by("prefix");
    edge.get("h.test", "/foo/bar").await.assert_served_by("prefix");
    edge.get("h.test", "/foobar").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_expression_path_must_match_the_whole_path() {
    let edge = Edge::start(
        &["regex"],
        &[&match_route("r", r#"[{path: {type: RegularExpression, value: "/items/[0-9]+"}}]"#, "regex")],
    )
    .await;

    edge.get("h.test", "/items/42").await.assert_served_by("regex");
    edge.get("h.test", "/items/42?view=full").await.assert_served_by("regex");
    edge.get("h.test", "/items/abc").await.assert_status(404);
    edge.get("h.test", "/items/42/edit").await.assert_status(404);
    edge.get("h.test", "/v1/items/42").await.assert_status(404);
}

// ---------------------------------------------------------------------------------------------
// Header, query parameter and method matches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_is_exact_on_the_value_and_ignores_header_name_case() {
    let edge = Edge::start(
        &["canary", "stable"],
        &[
            &match_route("canary", "[{headers: [{name: X-Env, value: canary}]}]", "canary"),
            &catch_all_route("stable", "stable"),
        ],
    )
    .await;

    edge.request("h.test", "/").header("x-env", "canary").send().await.assert_served_by("canary");
    edge.request("h.test", "/").header("X-ENV", "canary").send().await.assert_served_by("canary");
    edge.request("h.test", "/").header("x-env", "canary-2").send().await.assert_served_by("stable");
    edge.request("h.test", "/").header("x-env", "prod").send().await.assert_served_by("stable");
    edge.get("h.test", "/").await.assert_served_by("stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_by_regular_expression() {
    let edge = Edge::start(
        &["versioned", "other"],
        &[
            &match_route(
                "versioned",
                r#"[{headers: [{type: RegularExpression, name: x-version, value: "v[0-9]+"}]}]"#,
                "versioned",
            ),
            &catch_all_route("other", "other"),
        ],
    )
    .await;

    edge.request("h.test", "/").header("x-version", "v2").send().await.assert_served_by("versioned");
    edge.request("h.test", "/").header("x-version", "v10").send().await.assert_served_by("versioned");
    edge.request("h.test", "/").header("x-version", "beta").send().await.assert_served_by("other");
    edge.get("h.test", "/").await.assert_served_by("other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_param_match_exact() {
    let edge = Edge::start(
        &["v2", "other"],
        &[
            &match_route("v2", "[{queryParams: [{name: version, value: \"2\"}]}]", "v2"),
            &catch_all_route("other", "other"),
        ],
    )
    .await;

    edge.get("h.test", "/?version=2").await.assert_served_by("v2");
    edge.get("h.test", "/list?a=b&version=2").await.assert_served_by("v2");
    edge.get("h.test", "/?version=3").await.assert_served_by("other");
    edge.get("h.test", "/?version=22").await.assert_served_by("other");
    edge.get("h.test", "/").await.assert_served_by("other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_param_match_by_regular_expression() {
    let edge = Edge::start(
        &["numeric", "other"],
        &[
            &match_route(
                "numeric",
                r#"[{queryParams: [{type: RegularExpression, name: id, value: "[0-9]+"}]}]"#,
                "numeric",
            ),
            &catch_all_route("other", "other"),
        ],
    )
    .await;

    edge.get("h.test", "/?id=42").await.assert_served_by("numeric");
    edge.get("h.test", "/?id=abc").await.assert_served_by("other");
    edge.get("h.test", "/").await.assert_served_by("other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_match() {
    let edge = Edge::start(
        &["writer", "reader"],
        &[&match_route("writer", "[{method: POST}]", "writer"), &catch_all_route("reader", "reader")],
    )
    .await;

    let post = edge.request("h.test", "/items").method("POST").body("{}").send().await;
    post.assert_served_by("writer");
    assert_eq!(post.upstream_method(), "POST");
    edge.get("h.test", "/items").await.assert_served_by("reader");
    edge.request("h.test", "/items").method("PUT").send().await.assert_served_by("reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_conditions_of_one_match_must_hold() {
    let edge = Edge::start(
        &["strict", "other"],
        &[
            &match_route(
                "strict",
                "[{path: {type: PathPrefix, value: /api}, method: GET, \
                  headers: [{name: x-team, value: blue}], queryParams: [{name: debug, value: \"1\"}]}]",
                "strict",
            ),
            &catch_all_route("other", "other"),
        ],
    )
    .await;

    let all = |path: &str| edge.request("h.test", path).header("x-team", "blue");
    all("/api/x?debug=1").send().await.assert_served_by("strict");
    // Drop one condition at a time.
    edge.get("h.test", "/api/x?debug=1").await.assert_served_by("other");
    all("/web/x?debug=1").send().await.assert_served_by("other");
    all("/api/x").send().await.assert_served_by("other");
    all("/api/x?debug=1").method("DELETE").send().await.assert_served_by("other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_match_of_a_rule_is_enough() {
    let edge = Edge::start(
        &["either", "other"],
        &[
            &match_route(
                "either",
                "[{path: {type: PathPrefix, value: /a}}, {headers: [{name: x-b, value: \"yes\"}]}]",
                "either",
            ),
            &catch_all_route("other", "other"),
        ],
    )
    .await;

    edge.get("h.test", "/a/1").await.assert_served_by("either");
    edge.request("h.test", "/z").header("x-b", "yes").send().await.assert_served_by("either");
    edge.get("h.test", "/z").await.assert_served_by("other");
}

// ---------------------------------------------------------------------------------------------
// Precedence across all routes of the listener

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_beats_regular_expression_and_prefix() {
    let edge = Edge::start(
        &["exact", "regex", "prefix"],
        &[
            &match_route("prefix", "[{path: {type: PathPrefix, value: /foo}}]", "prefix"),
            &match_route("regex", r#"[{path: {type: RegularExpression, value: "/foo/.*"}}]"#, "regex"),
            &match_route("exact", "[{path: {type: Exact, value: /foo/bar}}]", "exact"),
        ],
    )
    .await;

    edge.get("h.test", "/foo/bar").await.assert_served_by("exact");
    edge.get("h.test", "/foo/baz").await.assert_served_by("regex");
    edge.get("h.test", "/foo").await.assert_served_by("prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_expression_beats_a_longer_path_prefix() {
    let edge = Edge::start(
        &["regex", "prefix"],
        &[
            &match_route("prefix", "[{path: {type: PathPrefix, value: /foo/bar/baz}}]", "prefix"),
            &match_route("regex", r#"[{path: {type: RegularExpression, value: "/f.*"}}]"#, "regex"),
        ],
    )
    .await;

    edge.get("h.test", "/foo/bar/baz").await.assert_served_by("regex");
    edge.get("h.test", "/other").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longer_regular_expression_wins() {
    let edge = Edge::start(
        &["short", "long"],
        &[
            &match_route("short", r#"[{path: {type: RegularExpression, value: "/a/.*"}}]"#, "short"),
            &match_route("long", r#"[{path: {type: RegularExpression, value: "/a/b/.*"}}]"#, "long"),
        ],
    )
    .await;

    edge.get("h.test", "/a/b/c").await.assert_served_by("long");
    edge.get("h.test", "/a/c").await.assert_served_by("short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longer_path_prefix_wins() {
    let edge = Edge::start(
        &["short", "long"],
        &[
            &match_route("long", "[{path: {type: PathPrefix, value: /api/v2}}]", "long"),
            &match_route("short", "[{path: {type: PathPrefix, value: /api}}]", "short"),
        ],
    )
    .await;

    edge.get("h.test", "/api/v2/users").await.assert_served_by("long");
    edge.get("h.test", "/api/v1/users").await.assert_served_by("short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_match_beats_header_matches() {
    let edge = Edge::start(
        &["by-method", "by-headers"],
        &[
            &match_route(
                "by-headers",
                "[{headers: [{name: x-a, value: \"1\"}, {name: x-b, value: \"1\"}]}]",
                "by-headers",
            ),
            &match_route("by-method", "[{method: GET}]", "by-method"),
        ],
    )
    .await;

    let both = || edge.request("h.test", "/").header("x-a", "1").header("x-b", "1");
    both().send().await.assert_served_by("by-method");
    both().method("POST").send().await.assert_served_by("by-headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_header_matches_win() {
    let edge = Edge::start(
        &["one", "two"],
        &[
            &match_route("one", "[{headers: [{name: x-a, value: \"1\"}]}]", "one"),
            &match_route("two", "[{headers: [{name: x-a, value: \"1\"}, {name: x-b, value: \"1\"}]}]", "two"),
        ],
    )
    .await;

    edge.request("h.test", "/").header("x-a", "1").header("x-b", "1").send().await.assert_served_by("two");
    edge.request("h.test", "/").header("x-a", "1").send().await.assert_served_by("one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_matches_beat_query_matches() {
    let edge = Edge::start(
        &["by-header", "by-query"],
        &[
            &match_route("by-query", "[{queryParams: [{name: a, value: \"1\"}, {name: b, value: \"1\"}]}]", "by-query"),
            &match_route("by-header", "[{headers: [{name: x-a, value: \"1\"}]}]", "by-header"),
        ],
    )
    .await;

    edge.request("h.test", "/?a=1&b=1").header("x-a", "1").send().await.assert_served_by("by-header");
    edge.get("h.test", "/?a=1&b=1").await.assert_served_by("by-query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_query_matches_win() {
    let edge = Edge::start(
        &["one", "two"],
        &[
            &match_route("one", "[{queryParams: [{name: a, value: \"1\"}]}]", "one"),
            &match_route("two", "[{queryParams: [{name: a, value: \"1\"}, {name: b, value: \"1\"}]}]", "two"),
        ],
    )
    .await;

    edge.get("h.test", "/?a=1&b=1").await.assert_served_by("two");
    edge.get("h.test", "/?a=1").await.assert_served_by("one");
}

/// A route `<ns>/<name>` created at `created`, sending every request to `service`.
fn dated_route(ns: &str, name: &str, created: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  namespace: {ns}
  name: {name}
  creationTimestamp: \"{created}\"
spec:
  parentRefs: [{{name: edge, namespace: default}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /app}}}}]
    backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_route_wins_a_tie() {
    // The newer route comes first by name, so only the timestamp can make "older" win.
    let edge = Edge::start(
        &["newer", "older"],
        &[
            &dated_route("default", "aaa", "2024-06-01T00:00:00Z", "newer"),
            &dated_route("default", "zzz", "2023-01-01T00:00:00Z", "older"),
        ],
    )
    .await;

    edge.get("h.test", "/app").await.assert_served_by("older");
    assert_eq!(edge.echo("newer").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_order_breaks_a_tie_between_equally_old_routes() {
    let created = "2024-01-01T00:00:00Z";
    // Listed (and so written to files) in the opposite order.
    let edge = Edge::start(
        &["alpha", "beta"],
        &[&dated_route("default", "beta", created, "beta"), &dated_route("default", "alpha", created, "alpha")],
    )
    .await;

    edge.get("h.test", "/app").await.assert_served_by("alpha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_is_compared_before_name_in_a_tie() {
    let in_a = backends("a-ns", &["in-a-ns"]).await;
    let in_b = backends("b-ns", &["in-b-ns"]).await;
    let port = free_port();
    let created = "2024-01-01T00:00:00Z";
    let weir = TestWeir::start(&[
        ("gateway.yaml", &docs(&[gateway_class(), open_gateway(port)])),
        ("backends-a.yaml", &in_a.yaml),
        ("backends-b.yaml", &in_b.yaml),
        // b-ns/aaa sorts first by name, a-ns/zzz first by namespace/name.
        ("1.yaml", &dated_route("b-ns", "aaa", created, "in-b-ns")),
        ("2.yaml", &dated_route("a-ns", "zzz", created, "in-a-ns")),
    ])
    .await;
    let gateway = weir.gateway_listener(port).await;

    get(gateway, "h.test", "/app").await.assert_served_by("in-a-ns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_rule_wins_within_a_route() {
    let route = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {namespace: default, name: r}
        spec:
          parentRefs: [{name: edge}]
          rules:
          - matches: [{path: {type: PathPrefix, value: /app}}]
            backendRefs: [{name: first, port: 80}]
          - matches: [{path: {type: PathPrefix, value: /app}}]
            backendRefs: [{name: second, port: 80}]
    "#;
    let edge = Edge::start(&["first", "second"], &[route]).await;

    edge.get("h.test", "/app").await.assert_served_by("first");
    assert_eq!(edge.echo("second").requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Backends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_with_weight_zero_receives_no_requests() {
    let route = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {namespace: default, name: r}
        spec:
          parentRefs: [{name: edge}]
          rules:
          - backendRefs:
            - {name: live, port: 80, weight: 1}
            - {name: idle, port: 80, weight: 0}
    "#;
    let edge = Edge::start(&["live", "idle"], &[route]).await;

    for _ in 0..30 {
        edge.get("h.test", "/").await.assert_served_by("live");
    }
    assert_eq!(edge.echo("idle").requests(), 0);
    assert_eq!(edge.echo("live").requests(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_backend_service_answers_500_and_is_reported() {
    let route = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {namespace: default, name: r}
        spec:
          parentRefs: [{name: edge}]
          rules:
          - matches: [{path: {type: PathPrefix, value: /ok}}]
            backendRefs: [{name: a, port: 80}]
          - matches: [{path: {type: PathPrefix, value: /missing}}]
            backendRefs: [{name: no-such-service, port: 80}]
    "#;
    let edge = Edge::start(&["a"], &[route]).await;

    // The route is accepted: its working rule is served ...
    edge.get("h.test", "/ok").await.assert_served_by("a");
    // ... and the rule with the missing Service answers 500.
    edge.get("h.test", "/missing").await.assert_status(500);

    let rejections = edge.weir.rejections().await;
    assert!(
        rejections.iter().any(|r| r["kind"] == "HTTPRoute"
            && r["name"] == "r"
            && r["reason"].as_str().unwrap_or_default().contains("no-such-service")),
        "expected a rejection of HTTPRoute default/r naming no-such-service: {rejections:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Filters

/// A route for any host: PathPrefix `prefix` → Service `a`, with `filters` (YAML flow list).
fn filtered_route(prefix: &str, filters: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{namespace: default, name: filtered}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    filters: {filters}
    backendRefs: [{{name: a, port: 80}}]
"
    )
}

/// Values of a comma-separated header, trimmed.
fn values(header: Option<String>) -> Vec<String> {
    header.unwrap_or_default().split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_modifier_sets_adds_and_removes_request_headers() {
    let filters = "[{type: RequestHeaderModifier, requestHeaderModifier: {\
        set: [{name: x-set, value: new}], \
        add: [{name: x-add, value: added}], \
        remove: [x-remove]}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/", filters)]).await;

    let resp = edge
        .request("h.test", "/")
        .header("x-set", "old")
        .header("x-add", "original")
        .header("x-remove", "secret")
        .header("x-untouched", "kept")
        .send()
        .await;

    resp.assert_served_by("a");
    assert_eq!(resp.upstream_header("x-set").as_deref(), Some("new"), "{resp}");
    assert_eq!(values(resp.upstream_header("x-add")), ["original", "added"], "{resp}");
    assert_eq!(resp.upstream_header("x-remove"), None, "{resp}");
    assert_eq!(resp.upstream_header("x-untouched").as_deref(), Some("kept"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_modifier_add_creates_a_missing_header() {
    let filters = "[{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-add, value: added}]}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/", filters)]).await;

    let resp = edge.get("h.test", "/").await;
    assert_eq!(resp.upstream_header("x-add").as_deref(), Some("added"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_header_modifier_changes_headers_seen_by_the_client() {
    let filters = "[{type: ResponseHeaderModifier, responseHeaderModifier: {\
        set: [{name: content-type, value: text/x-test}], \
        add: [{name: x-served-via, value: weir}], \
        remove: [x-echo-name]}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/", filters)]).await;

    let resp = edge.get("h.test", "/").await;

    resp.assert_status(200);
    assert_eq!(resp.header("content-type"), Some("text/x-test"), "{resp}");
    assert_eq!(resp.header("x-served-via"), Some("weir"), "{resp}");
    assert_eq!(resp.echo_name(), None, "x-echo-name should be removed: {resp}");
    // It still came from the echo server.
    assert_eq!(resp.json()["name"], "a");
}

/// A backendRef's own header modifiers apply to what that backend gets and answers, after the
/// rule's (conformance HTTPRouteBackendRequestHeaderModifier and ...BackendWeights).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refs_own_header_modifiers_apply_to_that_backend_only() {
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {namespace: default, name: per-backend}
spec:
  parentRefs: [{name: edge}]
  rules:
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: rule}, {name: x-who, value: rule}]}}]
    backendRefs:
    - name: a
      port: 80
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-who, value: to-a}], remove: [x-secret]}}
      - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-answered-by, value: a}]}}
    - name: b
      port: 80
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-who, value: to-b}]}}]
";
    let edge = Edge::start(&["a", "b"], &[route]).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let resp = edge.request("h.test", "/").header("x-secret", "s").send().await;
        resp.assert_status(200);
        assert_eq!(resp.upstream_header("x-rule").as_deref(), Some("rule"), "{resp}");
        let by = resp.json()["name"].as_str().unwrap().to_string();
        match by.as_str() {
            "a" => {
                assert_eq!(resp.upstream_header("x-who").as_deref(), Some("to-a"), "{resp}");
                assert_eq!(resp.upstream_header("x-secret"), None, "{resp}");
                assert_eq!(resp.header("x-answered-by"), Some("a"), "{resp}");
            }
            _ => {
                assert_eq!(values(resp.upstream_header("x-who")), ["rule", "to-b"], "{resp}");
                assert_eq!(resp.upstream_header("x-secret").as_deref(), Some("s"), "{resp}");
                assert_eq!(resp.header("x-answered-by"), None, "{resp}");
            }
        }
        seen.insert(by);
    }
    assert_eq!(seen.len(), 2, "both backends were tried: {seen:?}");
}

/// The CORS filter: weir answers a preflight from an allowed origin itself (the backend never
/// sees it), refuses one from another origin, and an allowed origin's actual request gets the
/// headers with the backend's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cors_filter_answers_preflights_and_marks_allowed_responses() {
    let filters = "[{type: CORS, cors: {allowOrigins: ['https://www.foo.com', 'https://*.bar.com'], \
        allowMethods: [GET, OPTIONS], allowHeaders: [x-header-1], exposeHeaders: [x-header-3], \
        allowCredentials: true, maxAge: 3600}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/", filters)]).await;
    let preflight = |origin: &'static str| {
        edge.request("h.test", "/cors")
            .method("OPTIONS")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-header-1")
    };
    let resp = preflight("https://xpto.www.bar.com").send().await;
    resp.assert_status(204);
    for (name, value) in [
        ("access-control-allow-origin", "https://xpto.www.bar.com"),
        ("access-control-allow-methods", "GET, OPTIONS"),
        ("access-control-allow-headers", "x-header-1"),
        ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", "x-header-3"),
        ("access-control-max-age", "3600"),
    ] {
        assert_eq!(resp.header(name), Some(value), "{name}: {resp}");
    }
    let refused = preflight("https://foobar.com").send().await;
    refused.assert_status(403);
    assert_eq!(refused.header("access-control-allow-origin"), None, "{refused}");
    assert_eq!(edge.echo("a").requests(), 0, "preflights are the gateway's to answer");

    let resp = edge.request("h.test", "/cors").header("origin", "https://www.foo.com").send().await;
    resp.assert_served_by("a");
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://www.foo.com"), "{resp}");
    assert_eq!(resp.header("access-control-expose-headers"), Some("x-header-3"), "{resp}");
    let other = edge.request("h.test", "/cors").header("origin", "https://foobar.com").send().await;
    other.assert_served_by("a");
    assert_eq!(other.header("access-control-allow-origin"), None, "{other}");
    // an OPTIONS request that is not a preflight goes to the backend
    edge.request("h.test", "/cors").method("OPTIONS").send().await.assert_served_by("a");
}

/// A server that answers every request 200 and hands over (method, path, body).
async fn capturing_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<(String, String, String)>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let (head, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let seen = (head.method.to_string(), head.uri.to_string(), String::from_utf8_lossy(&body).into());
                    let _ = tx.send(seen);
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(Bytes::from(
                        "mirror",
                    ))))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    (addr, rx)
}

/// RequestMirror: the client gets the backend's answer; the mirror gets a copy of the request,
/// body included; a mirror that cannot be reached changes nothing for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_mirror_sends_a_copy_with_its_body_and_the_client_never_waits_for_it() {
    let (mirror, mut mirrored) = capturing_server().await;
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed: refuses
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {namespace: default, name: mirrored}
spec:
  parentRefs: [{name: edge}]
  rules:
  - filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: gone, port: 80}}}
    backendRefs: [{name: a, port: 80}]
";
    let services = docs(&[service_at("default", "mirror", &[mirror]), service_at("default", "gone", &[gone])]);
    let edge = Edge::start(&["a"], &[route, &services]).await;

    let resp = edge.request("h.test", "/orders?id=7").method("POST").body("hello mirror").send().await;
    resp.assert_served_by("a");
    let seen = tokio::time::timeout(Duration::from_secs(10), mirrored.recv()).await;
    let seen = seen.expect("the mirror gets the request within 10 s").unwrap();
    assert_eq!(seen, ("POST".into(), "/orders?id=7".into(), "hello mirror".into()));
    edge.get("h.test", "/again").await.assert_served_by("a");
    let seen = tokio::time::timeout(Duration::from_secs(10), mirrored.recv()).await.unwrap().unwrap();
    assert_eq!((seen.0.as_str(), seen.1.as_str()), ("GET", "/again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_redirect_defaults_to_302() {
    let filters = "[{type: RequestRedirect, requestRedirect: {hostname: new.example.com, port: 8080}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/", filters)]).await;

    let resp = edge.get("old.example.com", "/some/page").await;

    resp.assert_status(302);
    assert_eq!(resp.location(), Some("http://new.example.com:8080/some/page"), "{resp}");
    assert_eq!(edge.echo("a").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_redirect_sets_status_code_scheme_hostname_and_port() {
    let filters = "[{type: RequestRedirect, requestRedirect: \
        {scheme: https, hostname: secure.example.com, port: 8443, statusCode: 301}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/", filters)]).await;

    let resp = edge.get("old.example.com", "/some/page").await;

    resp.assert_status(301);
    assert_eq!(resp.location(), Some("https://secure.example.com:8443/some/page"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_redirect_replace_full_path() {
    let filters = "[{type: RequestRedirect, requestRedirect: \
        {hostname: new.example.com, port: 8080, path: {type: ReplaceFullPath, replaceFullPath: /moved}}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/old", filters)]).await;

    let resp = edge.get("h.test", "/old/deep/page").await;

    resp.assert_status(302);
    assert_eq!(resp.location(), Some("http://new.example.com:8080/moved"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_redirect_replace_prefix_match() {
    let filters = "[{type: RequestRedirect, requestRedirect: \
        {hostname: new.example.com, port: 8080, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/old", filters)]).await;

    let deep = edge.get("h.test", "/old/deep/page").await;
    deep.assert_status(302);
    assert_eq!(deep.location(), Some("http://new.example.com:8080/new/deep/page"), "{deep}");

    let exact = edge.get("h.test", "/old").await;
    exact.assert_status(302);
    assert_eq!(exact.location(), Some("http://new.example.com:8080/new"), "{exact}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrite_hostname_changes_the_host_seen_by_the_upstream() {
    let filters = "[{type: URLRewrite, urlRewrite: {hostname: internal.example.com}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/", filters)]).await;

    let resp = edge.get("public.example.com", "/page?x=1").await;

    resp.assert_served_by("a");
    assert_eq!(resp.upstream_host(), "internal.example.com");
    assert_eq!(resp.upstream_path(), "/page?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrite_replace_prefix_match_rewrites_the_matched_prefix() {
    let filters = "[{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/api", filters)]).await;

    let users = edge.get("h.test", "/api/users?id=7").await;
    users.assert_served_by("a");
    assert_eq!(users.upstream_path(), "/v2/users?id=7");
    assert_eq!(users.upstream_host(), "h.test");

    assert_eq!(edge.get("h.test", "/api").await.upstream_path(), "/v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrite_replace_full_path() {
    let filters = "[{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /fixed}}}]";
    let edge = Edge::start(&["a"], &[&filtered_route("/anything", filters)]).await;

    let resp = edge.get("h.test", "/anything/at/all").await;

    resp.assert_served_by("a");
    assert_eq!(resp.upstream_path(), "/fixed");
}

// ---------------------------------------------------------------------------------------------
// Changes while running

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_route_is_applied_without_restart() {
    let edge = Edge::start(&["a", "b"], &[&catch_all_route("r", "a")]).await;
    edge.get("h.test", "/").await.assert_served_by("a");

    // Edge::start wrote the route as route-0.yaml.
    edge.weir.apply("route-0.yaml", &catch_all_route("r", "b")).await;

    edge.get("h.test", "/").await.assert_served_by("b");
}

// ---------------------------------------------------------------------------------------------
// Timeouts

/// A catch-all route `default/slow` to `service` whose rule has `timeouts` (YAML flow map).
fn timeout_route(service: &str, timeouts: &str) -> String {
    rule_route("slow", &format!("timeouts: {timeouts}"), service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_answers_504_when_the_backend_is_too_slow() {
    let edge = Edge::start(&["a"], &[&timeout_route("a", "{request: 300ms}")]).await;
    edge.echo("a").set_delay(Duration::from_secs(3));

    let started = Instant::now();
    let resp = edge.get("h.test", "/").await;

    resp.assert_status(504);
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    // a fast enough backend is served as usual
    edge.echo("a").set_delay(Duration::from_millis(0));
    edge.get("h.test", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_request_timeout_takes_precedence_over_request_timeout() {
    let edge = Edge::start(&["a"], &[&timeout_route("a", "{request: 10s, backendRequest: 300ms}")]).await;
    edge.echo("a").set_delay(Duration::from_secs(3));

    let started = Instant::now();
    edge.get("h.test", "/").await.assert_status(504);
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
}

/// GEP-1742: `request` bounds the whole request, even when each try may take longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_bounds_the_request_whatever_a_try_may_take() {
    let edge = Edge::start(&["a"], &[&timeout_route("a", "{request: 300ms, backendRequest: 5s}")]).await;
    edge.echo("a").set_delay(Duration::from_secs(1));
    edge.get("h.test", "/").await.assert_status(504);
    edge.echo("a").set_delay(Duration::from_millis(0));
    edge.get("h.test", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_timeout_rejects_the_route_with_a_reason() {
    let edge = Edge::start(&["a"], &[&timeout_route("a", "{request: 5 seconds}")]).await;

    let r = edge.weir.expect_rejection("HTTPRoute", "default", "slow").await;
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("timeouts.request") && reason.contains("5 seconds"), "{r}");
    edge.get("h.test", "/").await.assert_status(404);
}
