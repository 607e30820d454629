//! Ingress (networking.k8s.io/v1) matching and precedence on weir's plaintext listener, one rule
//! per test. Every backend is a real echo server; its name (the `x-echo-name` header) tells where
//! a request went.

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// Ingress class

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_with_class_name_weir_is_served() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("ingress.yaml", &ingress("web", "foo.com", "a"))]).await;

    weir.get("foo.com", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_with_another_class_name_is_ignored() {
    let theirs = r#"
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata:
          namespace: default
          name: theirs
        spec:
          ingressClassName: nginx
          rules:
          - host: other.com
            http:
              paths:
              - {path: /, pathType: Prefix, backend: {service: {name: other, port: {number: 80}}}}
    "#;
    let (b, weir) = TestWeir::with_backends(
        &["a", "other"],
        &[("ours.yaml", &ingress("ours", "foo.com", "a")), ("theirs.yaml", theirs)],
    )
    .await;

    weir.get("foo.com", "/").await.assert_served_by("a");
    weir.get("other.com", "/").await.assert_status(404);
    assert_eq!(b.echo("other").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_class_annotation_weir_is_served() {
    let annotated = r#"
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata:
          namespace: default
          name: annotated
          annotations:
            kubernetes.io/ingress.class: weir
        spec:
          rules:
          - host: foo.com
            http:
              paths:
              - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
    "#;
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("ingress.yaml", annotated)]).await;

    weir.get("foo.com", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_class_annotation_for_another_class_is_ignored() {
    let annotated = r#"
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata:
          namespace: default
          name: theirs
          annotations:
            kubernetes.io/ingress.class: nginx
        spec:
          rules:
          - host: other.com
            http:
              paths:
              - {path: /, pathType: Prefix, backend: {service: {name: other, port: {number: 80}}}}
    "#;
    let (_b, weir) = TestWeir::with_backends(
        &["a", "other"],
        &[("ours.yaml", &ingress("ours", "foo.com", "a")), ("theirs.yaml", annotated)],
    )
    .await;

    weir.get("foo.com", "/").await.assert_served_by("a");
    weir.get("other.com", "/").await.assert_status(404);
}

const NO_CLASS_INGRESS: &str = r#"
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata:
      namespace: default
      name: classless
    spec:
      rules:
      - host: classless.com
        http:
          paths:
          - {path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_without_class_is_ignored_by_default() {
    let (_b, weir) = TestWeir::with_backends(
        &["a", "c"],
        &[("ours.yaml", &ingress("ours", "foo.com", "a")), ("classless.yaml", NO_CLASS_INGRESS)],
    )
    .await;

    weir.get("foo.com", "/").await.assert_served_by("a");
    weir.get("classless.com", "/").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_without_class_is_served_when_watching_ingresses_without_class() {
    let b = backends("default", &["c"]).await;
    let weir = TestWeir::start_with(&[("backends.yaml", &b.yaml), ("classless.yaml", NO_CLASS_INGRESS)], |opts| {
        opts.watch_ingress_without_class = true
    })
    .await;

    weir.get("classless.com", "/").await.assert_served_by("c");
}

// ---------------------------------------------------------------------------------------------
// Hosts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reaches_backend_with_its_method_host_path_and_query() {
    let (b, weir) = TestWeir::with_backends(&["a"], &[("ingress.yaml", &ingress("web", "foo.com", "a"))]).await;

    let resp = weir
        .request()
        .method("POST")
        .host("foo.com")
        .path("/some/path?x=1&y=two")
        .header("x-client", "test")
        .body("payload")
        .send()
        .await;

    resp.assert_served_by("a");
    assert_eq!(resp.upstream_method(), "POST");
    assert_eq!(resp.upstream_host(), "foo.com");
    assert_eq!(resp.upstream_path(), "/some/path?x=1&y=two");
    assert_eq!(resp.upstream_header("x-client").as_deref(), Some("test"));
    assert_eq!(b.echo("a").requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_rule_serves_only_that_host() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("ingress.yaml", &ingress("web", "foo.com", "a"))]).await;

    weir.get("foo.com", "/").await.assert_served_by("a");
    weir.get("bar.com", "/").await.assert_status(404);
    weir.get("www.foo.com", "/").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_match_ignores_case_and_port() {
    let (_b, weir) = TestWeir::with_backends(&["a"], &[("ingress.yaml", &ingress("web", "foo.com", "a"))]).await;

    weir.get("FOO.Com", "/").await.assert_served_by("a");
    weir.get("foo.com:8080", "/").await.assert_served_by("a");
    weir.get("Foo.COM:80", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_host_matches_exactly_one_extra_label() {
    let (_b, weir) =
        TestWeir::with_backends(&["wild"], &[("ingress.yaml", &ingress("web", "\"*.foo.com\"", "wild"))]).await;

    weir.get("bar.foo.com", "/").await.assert_served_by("wild");
    weir.get("BAR.foo.com:8080", "/").await.assert_served_by("wild");
    weir.get("baz.bar.foo.com", "/").await.assert_status(404);
    weir.get("foo.com", "/").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_without_host_serves_hosts_no_host_rule_matches() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /, pathType: Prefix, backend: {service: {name: foo, port: {number: 80}}}}
        - http:
            paths:
            - {path: /, pathType: Prefix, backend: {service: {name: any, port: {number: 80}}}}
    "#;
    let (_b, weir) =
        TestWeir::with_backends(&["foo", "any"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    weir.get("foo.com", "/x").await.assert_served_by("foo");
    weir.get("bar.com", "/x").await.assert_served_by("any");
    weir.get("10.0.0.1", "/").await.assert_served_by("any");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_matched_by_a_host_rule_does_not_fall_back_to_the_rule_without_host() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
        - http:
            paths:
            - {path: /, pathType: Prefix, backend: {service: {name: any, port: {number: 80}}}}
    "#;
    let (_b, weir) =
        TestWeir::with_backends(&["api", "any"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    weir.get("foo.com", "/api/x").await.assert_served_by("api");
    weir.get("foo.com", "/other").await.assert_status(404);
    weir.get("bar.com", "/other").await.assert_served_by("any");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_for_the_same_host_merge_across_ingresses() {
    let shop = ingress_with_spec(
        "shop",
        r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /shop, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}
        "#,
    );
    let blog = ingress_with_spec(
        "blog",
        r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /blog, pathType: Prefix, backend: {service: {name: blog, port: {number: 80}}}}
        "#,
    );
    let (_b, weir) = TestWeir::with_backends(&["shop", "blog"], &[("shop.yaml", &shop), ("blog.yaml", &blog)]).await;

    weir.get("foo.com", "/shop/cart").await.assert_served_by("shop");
    weir.get("foo.com", "/blog/post").await.assert_served_by("blog");
    weir.get("foo.com", "/").await.assert_status(404);
}

// ---------------------------------------------------------------------------------------------
// Paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_matches_only_that_path() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /foo, pathType: Exact, backend: {service: {name: exact, port: {number: 80}}}}
    "#;
    let (_b, weir) = TestWeir::with_backends(&["exact"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    weir.get("foo.com", "/foo").await.assert_served_by("exact");
    weir.get("foo.com", "/foo?q=1").await.assert_served_by("exact");
    weir.get("foo.com", "/foo/").await.assert_status(404);
    weir.get("foo.com", "/foo/bar").await.assert_status(404);
    weir.get("foo.com", "/foobar").await.assert_status(404);
    weir.get("foo.com", "/FOO").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_path_matches_whole_path_elements() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /foo, pathType: Prefix, backend: {service: {name: prefix, port: {number: 80}}}}
    "#;
    let (_b, weir) = TestWeir::with_backends(&["prefix"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    weir.get("foo.com", "/foo").await.assert_served_by("prefix");
    weir.get("foo.com", "/foo/").await.assert_served_by("prefix");
    weir.get("foo.com", "/foo/bar").await.assert_served_by("prefix");
    weir.get("foo.com", "/foo?x=1").await.assert_served_by("prefix");
    weir.get("foo.com", "/foobar").await.assert_status(404);
    weir.get("foo.com", "/fo").await.assert_status(404);
    weir.get("foo.com", "/").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_trailing_slash_is_ignored() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /foo/, pathType: Prefix, backend: {service: {name: prefix, port: {number: 80}}}}
    "#;
    let (_b, weir) = TestWeir::with_backends(&["prefix"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    weir.get("foo.com", "/foo").await.assert_served_by("prefix");
    weir.get("foo.com", "/foo/").await.assert_served_by("prefix");
    weir.get("foo.com", "/foo/bar").await.assert_served_by("prefix");
    weir.get("foo.com", "/foobar").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implementation_specific_path_is_treated_as_prefix() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /foo, pathType: ImplementationSpecific, backend: {service: {name: impl, port: {number: 80}}}}
    "#;
    let (_b, weir) = TestWeir::with_backends(&["impl"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    weir.get("foo.com", "/foo").await.assert_served_by("impl");
    weir.get("foo.com", "/foo/bar").await.assert_served_by("impl");
    weir.get("foo.com", "/foobar").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_matching_path_wins() {
    // Listed shortest last on purpose: order in the manifest must not matter.
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /foo, pathType: Prefix, backend: {service: {name: foo, port: {number: 80}}}}
            - {path: /foo/bar, pathType: Prefix, backend: {service: {name: foobar, port: {number: 80}}}}
            - {path: /, pathType: Prefix, backend: {service: {name: root, port: {number: 80}}}}
    "#;
    let (_b, weir) =
        TestWeir::with_backends(&["root", "foo", "foobar"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    weir.get("foo.com", "/").await.assert_served_by("root");
    weir.get("foo.com", "/other").await.assert_served_by("root");
    weir.get("foo.com", "/foo").await.assert_served_by("foo");
    weir.get("foo.com", "/foo/baz").await.assert_served_by("foo");
    weir.get("foo.com", "/foo/bar").await.assert_served_by("foobar");
    weir.get("foo.com", "/foo/bar/baz").await.assert_served_by("foobar");
    weir.get("foo.com", "/foo/barbaz").await.assert_served_by("foo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_encodings_cannot_walk_a_request_into_another_routes_backend() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
            - {path: /admin, pathType: Prefix, backend: {service: {name: admin, port: {number: 80}}}}
    "#;
    let (b, weir) =
        TestWeir::with_backends(&["api", "admin"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    // routed, and forwarded, by the path the backend will resolve: /admin is admin's
    for (raw, normal) in [
        ("/api/../admin", "/admin"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api//../admin/", "/admin/"),
        ("/api/./../%61dmin", "/admin"),
    ] {
        let resp = weir.get("foo.com", raw).await;
        resp.assert_served_by("admin");
        assert_eq!(resp.upstream_path(), normal, "{raw} reaches admin normalized");
    }
    let resp = weir.get("foo.com", "/admin/../api/x?q=1").await;
    resp.assert_served_by("api");
    assert_eq!(resp.upstream_path(), "/api/x?q=1", "the query is kept");
    // a path that climbs above the root is no path: 400, no backend asked
    let asked = b.echo("api").requests() + b.echo("admin").requests();
    let resp = weir.get("foo.com", "/api/../../etc/passwd").await;
    resp.assert_status(400);
    assert!(resp.text().contains("climbs above the root"), "{resp}");
    // a `%` without two hex digits is refused too: `/api/%2%65%2%65/admin` would have been routed to
    // api as `/api/%2e%2e/admin`, which the backend decodes to `/api/../admin`
    let resp = weir.get("foo.com", "/api/%2%65%2%65/admin").await;
    resp.assert_status(400);
    assert!(resp.text().contains("not followed by two hex digits"), "{resp}");
    assert_eq!(b.echo("api").requests() + b.echo("admin").requests(), asked, "no backend was asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_matching_path_wins_across_ingresses() {
    let short = ingress_with_spec(
        "short",
        r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /api, pathType: Prefix, backend: {service: {name: short, port: {number: 80}}}}
        "#,
    );
    let long = ingress_with_spec(
        "long",
        r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /api/v2, pathType: Prefix, backend: {service: {name: long, port: {number: 80}}}}
        "#,
    );
    let (_b, weir) = TestWeir::with_backends(&["short", "long"], &[("short.yaml", &short), ("long.yaml", &long)]).await;

    weir.get("foo.com", "/api/v1/x").await.assert_served_by("short");
    weir.get("foo.com", "/api/v2/x").await.assert_served_by("long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_beats_prefix_of_equal_length() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /foo, pathType: Prefix, backend: {service: {name: prefix, port: {number: 80}}}}
            - {path: /foo, pathType: Exact, backend: {service: {name: exact, port: {number: 80}}}}
    "#;
    let (_b, weir) =
        TestWeir::with_backends(&["exact", "prefix"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    weir.get("foo.com", "/foo").await.assert_served_by("exact");
    weir.get("foo.com", "/foo/x").await.assert_served_by("prefix");
}

/// An Ingress with an explicit namespace and creationTimestamp routing foo.com/app to `service`.
fn dated_ingress(ns: &str, name: &str, created: &str, service: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  namespace: {ns}
  name: {name}
  creationTimestamp: \"{created}\"
spec:
  ingressClassName: weir
  rules:
  - host: foo.com
    http:
      paths:
      - path: /app
        pathType: Prefix
        backend:
          service:
            name: {service}
            port:
              number: 80
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_ingress_wins_a_tie() {
    // The newer Ingress comes first by name, so only the timestamp can make "older" win.
    let (b, weir) = TestWeir::with_backends(
        &["newer", "older"],
        &[
            ("a.yaml", &dated_ingress("default", "aaa", "2024-06-01T00:00:00Z", "newer")),
            ("z.yaml", &dated_ingress("default", "zzz", "2023-01-01T00:00:00Z", "older")),
        ],
    )
    .await;

    weir.get("foo.com", "/app").await.assert_served_by("older");
    weir.get("foo.com", "/app/x").await.assert_served_by("older");
    assert_eq!(b.echo("newer").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_order_breaks_a_tie_between_equally_old_ingresses() {
    let created = "2024-01-01T00:00:00Z";
    let (_b, weir) = TestWeir::with_backends(
        &["alpha", "beta"],
        &[
            // File names in the opposite order, so file order cannot be what decides.
            ("1-beta.yaml", &dated_ingress("default", "beta", created, "beta")),
            ("2-alpha.yaml", &dated_ingress("default", "alpha", created, "alpha")),
        ],
    )
    .await;

    weir.get("foo.com", "/app").await.assert_served_by("alpha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_is_compared_before_name_in_a_tie() {
    let in_a = backends("a-ns", &["in-a-ns"]).await;
    let in_b = backends("b-ns", &["in-b-ns"]).await;
    let created = "2024-01-01T00:00:00Z";
    let weir = TestWeir::start(&[
        ("backends-a.yaml", &in_a.yaml),
        ("backends-b.yaml", &in_b.yaml),
        // b-ns/aaa sorts first by name, a-ns/zzz first by namespace/name.
        ("1.yaml", &dated_ingress("b-ns", "aaa", created, "in-b-ns")),
        ("2.yaml", &dated_ingress("a-ns", "zzz", created, "in-a-ns")),
    ])
    .await;

    weir.get("foo.com", "/app").await.assert_served_by("in-a-ns");
}

// ---------------------------------------------------------------------------------------------
// defaultBackend and no match

const WITH_DEFAULT_BACKEND: &str = r#"
    defaultBackend: {service: {name: fallback, port: {number: 80}}}
    rules:
    - host: foo.com
      http:
        paths:
        - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_serves_paths_of_the_ingress_hosts_that_match_no_rule() {
    let (_b, weir) = TestWeir::with_backends(
        &["api", "fallback"],
        &[("ingress.yaml", &ingress_with_spec("web", WITH_DEFAULT_BACKEND))],
    )
    .await;

    weir.get("foo.com", "/api/users").await.assert_served_by("api");
    let resp = weir.get("foo.com", "/elsewhere?x=1").await;
    resp.assert_served_by("fallback");
    assert_eq!(resp.upstream_path(), "/elsewhere?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_serves_hosts_that_no_rule_matches() {
    let (_b, weir) = TestWeir::with_backends(
        &["api", "fallback"],
        &[("ingress.yaml", &ingress_with_spec("web", WITH_DEFAULT_BACKEND))],
    )
    .await;

    let resp = weir.get("unknown.com", "/api/users").await;
    resp.assert_served_by("fallback");
    assert_eq!(resp.upstream_host(), "unknown.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_matching_nothing_gets_404() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
    "#;
    let (b, weir) = TestWeir::with_backends(&["api"], &[("ingress.yaml", &ingress_with_spec("web", spec))]).await;

    let wrong_path = weir.get("foo.com", "/web").await;
    wrong_path.assert_status(404);
    assert_eq!(wrong_path.echo_name(), None, "404 must come from weir: {wrong_path}");
    weir.get("bar.com", "/api").await.assert_status(404);
    assert_eq!(b.echo("api").requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// TLS redirect

/// Ingress `default/secure` with `annotations` (YAML lines under `metadata`): secure.com (TLS from
/// Secret `secure-tls`) and plain.com, both → `a`. Returns weir serving it and backend `a`.
async fn start_tls_redirect(annotations: &str) -> (Backends, TestWeir) {
    let ingress = format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  namespace: default
  name: secure
{annotations}spec:
  ingressClassName: weir
  tls:
  - hosts: [secure.com]
    secretName: secure-tls
  rules:
  - host: secure.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: a, port: {{number: 80}}}}}}}}
  - host: plain.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: a, port: {{number: 80}}}}}}}}
"
    );
    TestWeir::with_backends(
        &["a"],
        &[("secret.yaml", &tls_secret("default", "secure-tls", &["secure.com"])), ("ingress.yaml", &ingress)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_request_for_a_tls_host_is_redirected_to_https_with_308() {
    let (b, weir) = start_tls_redirect("").await;

    let resp = weir.get("secure.com", "/path/page?q=1&r=2").await;
    resp.assert_status(308);
    let expected = format!("https://secure.com:{}/path/page?q=1&r=2", weir.https.port());
    assert_eq!(resp.location(), Some(expected.as_str()), "{resp}");
    assert_eq!(b.echo("a").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_not_listed_under_tls_is_not_redirected() {
    let (_b, weir) = start_tls_redirect("").await;

    weir.get("plain.com", "/path").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_redirect_false_annotation_disables_the_redirect() {
    let (_b, weir) =
        start_tls_redirect("  annotations:\n    nginx.ingress.kubernetes.io/ssl-redirect: \"false\"\n").await;

    let resp = weir.get("secure.com", "/path?q=1").await;
    resp.assert_served_by("a");
    assert_eq!(resp.upstream_path(), "/path?q=1");
}

// ---------------------------------------------------------------------------------------------
// Backends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_service_port_can_be_referenced_by_name() {
    let spec = format!(
        "rules:
- host: foo.com
  http:
    paths:
    - {{path: /, pathType: Prefix, backend: {{service: {{name: named, port: {{name: {SERVICE_PORT_NAME}}}}}}}}}
"
    );
    let (_b, weir) = TestWeir::with_backends(&["named"], &[("ingress.yaml", &ingress_with_spec("web", &spec))]).await;

    weir.get("foo.com", "/").await.assert_served_by("named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_with_a_missing_backend_service_is_rejected_and_not_served() {
    let spec = r#"
        rules:
        - host: foo.com
          http:
            paths:
            - {path: /ok, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
            - {path: /missing, pathType: Prefix, backend: {service: {name: no-such-service, port: {number: 80}}}}
    "#;
    let (_b, weir) = TestWeir::with_backends(
        &["a"],
        &[("broken.yaml", &ingress_with_spec("broken", spec)), ("good.yaml", &ingress("good", "good.com", "a"))],
    )
    .await;

    // The whole Ingress is left out, including its path whose Service exists...
    weir.get("foo.com", "/missing").await.assert_status(404);
    weir.get("foo.com", "/ok").await.assert_status(404);
    // ...while the rest of the configuration is served.
    weir.get("good.com", "/").await.assert_served_by("a");

    let rejection = weir.expect_rejection("Ingress", "default", "broken").await;
    let reason = rejection["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no-such-service"), "reason should name the Service: {rejection}");
    assert!(
        rejection["file"].as_str().unwrap_or_default().ends_with("broken.yaml"),
        "rejection should name the file: {rejection}"
    );
    assert!(weir.rejection("Ingress", "default", "good").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_ready_endpoints_answers_503() {
    // The echo server is up, but its only endpoint is not ready: weir must not use it.
    let (echo, _) = backend("default", "unready").await;
    let port = echo.addr().port();
    let manifests = docs(&[
        service_with_target_port("default", "unready", 80, "http", port),
        endpoint_slice("default", "unready", "http", port, &[(echo.addr(), false)]),
    ]);
    let weir =
        TestWeir::start(&[("backends.yaml", &manifests), ("ingress.yaml", &ingress("web", "foo.com", "unready"))])
            .await;

    weir.get("foo.com", "/").await.assert_status(503);
    assert_eq!(echo.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_any_endpoint_slice_answers_503() {
    let weir = TestWeir::start(&[
        ("service.yaml", &service("default", "empty", 80, "http")),
        ("ingress.yaml", &ingress("web", "foo.com", "empty")),
    ])
    .await;

    weir.get("foo.com", "/").await.assert_status(503);
    assert!(weir.rejection("Ingress", "default", "web").await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Changes while running

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_ingress_file_is_served_without_restart() {
    let (_b, weir) = TestWeir::with_backends(&["a", "b"], &[("a.yaml", &ingress("a", "a.com", "a"))]).await;
    weir.get("b.com", "/").await.assert_status(404);

    weir.apply("b.yaml", &ingress("b", "b.com", "b")).await;

    weir.get("b.com", "/").await.assert_served_by("b");
    weir.get("a.com", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_ingress_file_is_no_longer_served() {
    let (_b, weir) = TestWeir::with_backends(
        &["a", "b"],
        &[("a.yaml", &ingress("a", "a.com", "a")), ("b.yaml", &ingress("b", "b.com", "b"))],
    )
    .await;
    weir.get("b.com", "/").await.assert_served_by("b");

    weir.delete("b.yaml").await;

    weir.get("b.com", "/").await.assert_status(404);
    weir.get("a.com", "/").await.assert_served_by("a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_endpoints_are_followed_without_restart() {
    let (first, first_yaml) = backend("default", "svc").await;
    let weir = TestWeir::start(&[("svc.yaml", &first_yaml), ("ingress.yaml", &ingress("web", "foo.com", "svc"))]).await;
    weir.get("foo.com", "/").await.assert_served_by("svc");

    // The Service's pod moves: a new echo server (named differently) takes over.
    let second = weir::demo::echo::EchoServer::start("svc-moved", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    weir.apply("svc.yaml", &service_at("default", "svc", &[second.addr()])).await;
    first.stop();

    weir.get("foo.com", "/").await.assert_served_by("svc-moved");
}
