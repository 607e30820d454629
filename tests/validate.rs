//! `weir validate DIR…` and `weir crds`, run as the real binary on temporary directories.
//!
//! Every bad input is added next to a good configuration: the command must exit non-zero, print
//! a line naming the bad file with a reason that says what to fix, and still translate the rest
//! (its summary line keeps counting the good listeners and routes).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{dedent, docs, ingress_with_tls, secret};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

// ---------------------------------------------------------------------------------------------
// Helpers

/// What `weir validate` printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The line naming `file` (a path) whose text contains every one of `fragments`.
    #[track_caller]
    fn line_for(&self, file: &Path, fragments: &[&str]) -> String {
        let prefix = format!("{}: ", file.display());
        let candidates: Vec<&str> = self.lines().into_iter().filter(|l| l.starts_with(&prefix)).collect();
        assert!(!candidates.is_empty(), "no line names {}:\n{self}", file.display());
        match candidates.iter().find(|l| fragments.iter().all(|f| l.contains(f))) {
            Some(l) => l.to_string(),
            None => panic!("no line for {} contains all of {fragments:?}:\n{self}", file.display()),
        }
    }

    /// The summary line of `dir`.
    #[track_caller]
    fn summary(&self, dir: &Path) -> Summary {
        let prefix = format!("{}: ", dir.display());
        let line = self
            .lines()
            .into_iter()
            .rev()
            .find(|l| l.starts_with(&prefix) && l.ends_with(" rejected"))
            .unwrap_or_else(|| panic!("no summary line for {}:\n{self}", dir.display()))
            .to_string();
        Summary::parse(&line[prefix.len()..]).unwrap_or_else(|| panic!("cannot parse summary line {line:?}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// `N objects, N listeners, N routes, N pools, N rejected`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Summary {
    objects: usize,
    listeners: usize,
    routes: usize,
    pools: usize,
    rejected: usize,
}

impl Summary {
    fn parse(text: &str) -> Option<Summary> {
        let mut values = std::collections::HashMap::new();
        for part in text.split(", ") {
            let (n, what) = part.split_once(' ')?;
            values.insert(what.to_string(), n.parse::<usize>().ok()?);
        }
        Some(Summary {
            objects: *values.get("objects")?,
            listeners: *values.get("listeners")?,
            routes: *values.get("routes")?,
            pools: *values.get("pools")?,
            rejected: *values.get("rejected")?,
        })
    }
}

fn run(args: &[&str]) -> Run {
    let Output { status, stdout, stderr } = Command::new(WEIR)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("run the weir binary");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn validate(dirs: &[&Path]) -> Run {
    let mut args = vec!["validate".to_string()];
    args.extend(dirs.iter().map(|d| d.display().to_string()));
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A temporary directory of manifests.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        let dir = Dir(tempfile::tempdir().expect("temporary directory"));
        for (name, yaml) in files {
            dir.write(name, yaml);
        }
        dir
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn write(&self, name: &str, yaml: &str) {
        std::fs::write(self.file(name), dedent(yaml)).expect("write manifest");
    }
}

/// A good configuration: Service `default/web` (port 80 `http`) with an endpoint, an Ingress
/// `web` for web.example.com, a Gateway `gw` with an HTTP listener on 8081 and an HTTPRoute
/// `shop` for shop.example.com, all routed to `web`.
const GOOD: &str = r#"
    apiVersion: gateway.networking.k8s.io/v1
    kind: GatewayClass
    metadata: {name: weir}
    spec: {controllerName: weir.dev/gateway-controller}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: default}
    spec:
      ports: [{name: http, port: 80, targetPort: 9090}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: web-1
      namespace: default
      labels: {kubernetes.io/service-name: web}
    addressType: IPv4
    ports: [{name: http, port: 9090}]
    endpoints:
      - addresses: ["127.0.0.1"]
        conditions: {ready: true}
    ---
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata: {name: web, namespace: default}
    spec:
      ingressClassName: weir
      rules:
        - host: web.example.com
          http:
            paths:
              - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: gw, namespace: default}
    spec:
      gatewayClassName: weir
      listeners:
        - {name: http, protocol: HTTP, port: 8081}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: shop, namespace: default}
    spec:
      parentRefs: [{name: gw}]
      hostnames: [shop.example.com]
      rules:
        - backendRefs: [{name: web, port: 80}]
"#;

/// What `weir validate` reports for [`GOOD`] alone: GatewayClass, Service, EndpointSlice,
/// Ingress, Gateway, HTTPRoute; the two Ingress listeners and the Gateway's; the Ingress rule
/// on both Ingress listeners plus the HTTPRoute rule; one pool.
const GOOD_SUMMARY: Summary = Summary { objects: 6, listeners: 3, routes: 3, pools: 1, rejected: 0 };

/// Validates [`GOOD`] plus `bad.yaml` holding `bad`, and checks what every bad input must give:
/// a non-zero exit, a line naming `bad.yaml` that contains every `fragment`, and a summary that
/// still counts the good configuration's routes (plus `extra_routes` the bad file adds).
#[track_caller]
fn check_bad(bad: &str, fragments: &[&str], extra_routes: usize) -> (Run, String, Summary) {
    let dir = Dir::new(&[("good.yaml", GOOD), ("bad.yaml", bad)]);
    let out = validate(&[dir.path()]);
    assert_eq!(out.code, Some(1), "a configuration with a bad object must exit 1:\n{out}");
    let line = out.line_for(&dir.file("bad.yaml"), fragments);
    let summary = out.summary(dir.path());
    assert_eq!(
        summary.routes,
        GOOD_SUMMARY.routes + extra_routes,
        "the good routes must still translate next to the bad input:\n{out}"
    );
    assert!(summary.listeners >= GOOD_SUMMARY.listeners, "the good listeners must still translate:\n{out}");
    assert!(summary.rejected >= 1, "the summary must count the rejection:\n{out}");
    assert!(
        !out.lines().iter().any(|l| l.starts_with(&format!("{}: ", dir.file("good.yaml").display()))),
        "nothing in the good file may be reported:\n{out}"
    );
    (out, line, summary)
}

/// A fresh self-signed certificate for secure.example.com and its key (PEM).
fn secure_cert() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["secure.example.com".to_string()]).expect("certificate");
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

/// A Secret `default/<name>` of `type_` holding `crt` and `key` (PEM), and an Ingress
/// `default/secure` for secure.example.com → web terminating TLS with it.
fn secure_ingress(name: &str, type_: &str, crt: &str, key: &str) -> String {
    docs(&[secret("default", name, type_, crt, key), ingress_with_tls("secure", "secure.example.com", "web", name)])
}

// ---------------------------------------------------------------------------------------------
// A clean configuration

#[test]
fn clean_directory_exits_0_with_a_summary_line() {
    let dir = Dir::new(&[("good.yaml", GOOD)]);
    let out = validate(&[dir.path()]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.lines(),
        vec![format!("{}: 6 objects, 3 listeners, 3 routes, 1 pools, 0 rejected", dir.path().display())],
        "a clean directory prints exactly its summary line:\n{out}"
    );
    assert_eq!(out.summary(dir.path()), GOOD_SUMMARY);
}

#[test]
fn every_shipped_configuration_validates() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&conf)
        .expect("read conf/")
        .map(|e| e.expect("conf/ entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "conf/ has no configuration directories");
    for dir in dirs {
        let out = validate(&[&dir]);
        assert_eq!(out.code, Some(0), "{} does not validate:\n{out}", dir.display());
        let summary = out.summary(&dir);
        assert_eq!(summary.rejected, 0, "{}:\n{out}", dir.display());
        assert!(summary.routes > 0, "{} validates but routes nothing:\n{out}", dir.display());
    }
}

#[test]
fn several_directories_get_one_summary_each_and_one_bad_one_fails_the_run() {
    let good = Dir::new(&[("good.yaml", GOOD)]);
    let bad = Dir::new(&[("bad.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")]);
    let out = validate(&[good.path(), bad.path()]);
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.summary(good.path()), GOOD_SUMMARY, "{out}");
    assert_eq!(out.summary(bad.path()).rejected, 1, "{out}");
    out.line_for(&bad.file("bad.yaml"), &["Deployment"]);

    let only_good = validate(&[good.path(), good.path()]);
    assert_eq!(only_good.code, Some(0), "{only_good}");
}

#[test]
fn a_directory_that_does_not_exist_fails_and_says_so() {
    let dir = Dir::new(&[]);
    let missing = dir.path().join("no-such-dir");
    let out = validate(&[&missing]);
    assert_eq!(out.code, Some(1), "{out}");
    let line = out.line_for(&missing, &["cannot be read"]);
    assert!(line.to_lowercase().contains("no such file"), "the reason should say why: {line}");
}

// ---------------------------------------------------------------------------------------------
// Manifests that cannot be read

#[test]
fn yaml_syntax_error_is_reported_with_its_line_and_the_good_documents_still_count() {
    // Line 9 opens a flow mapping that line 10 never closes. The first document is fine.
    let bad = "apiVersion: v1
kind: Service
metadata: {name: extra, namespace: default}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default
spec: {}
";
    let (out, line, summary) = check_bad(bad, &["YAML does not parse"], 0);
    assert!(
        line.contains("line 9") || line.contains("line 10"),
        "the reason must give the line of the file where the YAML breaks (9 or 10): {line}\n{out}"
    );
    assert!(line.contains("document 2"), "the reason should name the broken document: {line}");
    assert_eq!(summary.objects, GOOD_SUMMARY.objects + 1, "the good first document still counts:\n{out}");
    assert_eq!(summary.rejected, 1, "{out}");
}

#[test]
fn document_with_a_missing_required_field_names_the_field() {
    let bad = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: classless, namespace: default}
        spec:
          listeners: [{name: http, protocol: HTTP, port: 8082}]
    "#;
    let (_, line, summary) = check_bad(bad, &["Gateway default/classless", "does not match its schema"], 0);
    assert!(line.contains("gatewayClassName"), "the reason must name the missing field: {line}");
    assert_eq!(summary.listeners, GOOD_SUMMARY.listeners);
}

#[test]
fn document_with_a_field_of_the_wrong_type_names_the_field() {
    // `ports` must be a list. A reason that only says "expected a sequence" does not tell which
    // of the document's fields to fix.
    let bad = r#"
        apiVersion: v1
        kind: Service
        metadata: {name: typo, namespace: default}
        spec:
          ports: "80"
    "#;
    let (_, line, _) = check_bad(bad, &["Service default/typo", "does not match its schema"], 0);
    assert!(line.contains("ports"), "the reason must name the field with the wrong type (spec.ports): {line}");
}

#[test]
fn unknown_kind_is_rejected_naming_the_kinds_weir_reads() {
    let bad = r#"
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: api, namespace: default}
        spec: {replicas: 1}
    "#;
    let (_, line, summary) =
        check_bad(bad, &["Deployment default/api", "apps/v1 Deployment is not a kind weir reads"], 0);
    for kind in ["Ingress", "HTTPRoute", "Service", "BackendPolicy"] {
        assert!(line.contains(kind), "the reason should list the kinds weir reads ({kind}): {line}");
    }
    assert_eq!(summary.objects, GOOD_SUMMARY.objects);
    assert_eq!(summary.rejected, 1);
}

#[test]
fn document_without_metadata_name_is_rejected() {
    let bad = r#"
        apiVersion: v1
        kind: Service
        metadata: {namespace: default}
        spec:
          ports: [{port: 80}]
    "#;
    check_bad(bad, &["Service", "metadata.name is missing"], 0);
}

// ---------------------------------------------------------------------------------------------
// References that do not resolve

#[test]
fn ingress_to_a_missing_service_is_rejected_naming_the_service() {
    let bad = r#"
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: lost, namespace: default}
        spec:
          ingressClassName: weir
          rules:
            - host: lost.example.com
              http:
                paths:
                  - {path: /, pathType: Prefix, backend: {service: {name: ghost, port: {number: 80}}}}
    "#;
    check_bad(
        bad,
        &["Ingress default/lost", "spec.rules[0].http.paths[0].backend", "Service default/ghost does not exist"],
        0,
    );
}

#[test]
fn httproute_to_a_missing_service_is_served_with_500_and_reported() {
    let bad = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: lost, namespace: default}
        spec:
          parentRefs: [{name: gw}]
          hostnames: [lost.example.com]
          rules:
            - backendRefs: [{name: ghost, port: 80}]
    "#;
    // the route is accepted (its requests get 500), so it counts as a route
    check_bad(
        bad,
        &["HTTPRoute default/lost", "spec.rules[0].backendRefs[0]", "Service default/ghost does not exist", "500"],
        1,
    );
}

#[test]
fn route_to_a_service_port_that_does_not_exist_lists_the_ports_it_has() {
    let bad = r#"
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: wrong-port, namespace: default}
        spec:
          ingressClassName: weir
          rules:
            - host: wrong.example.com
              http:
                paths:
                  - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}
    "#;
    check_bad(bad, &["Ingress default/wrong-port", "Service default/web", "has no port 8080", "80 (http)"], 0);
}

#[test]
fn httproute_to_a_service_port_that_does_not_exist_is_reported() {
    let bad = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: wrong-port, namespace: default}
        spec:
          parentRefs: [{name: gw}]
          hostnames: [wrong.example.com]
          rules:
            - backendRefs: [{name: web, port: 81}]
    "#;
    check_bad(bad, &["HTTPRoute default/wrong-port", "has no port 81", "80 (http)"], 1);
}

// ---------------------------------------------------------------------------------------------
// Certificates

#[test]
fn secret_whose_key_does_not_match_its_certificate_is_rejected() {
    let (cert, _) = secure_cert();
    let other_key = rcgen::KeyPair::generate().expect("key pair");
    let bad = secure_ingress("mismatch", "kubernetes.io/tls", &cert, &other_key.serialize_pem());
    // the Ingress itself is served (its host falls back to the default certificate)
    check_bad(&bad, &["Secret default/mismatch", "tls.key does not match the certificate in tls.crt"], 2);
}

#[test]
fn secret_with_an_expired_certificate_is_rejected_with_the_date() {
    let mut params = rcgen::CertificateParams::new(vec!["secure.example.com".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let bad = secure_ingress("expired", "kubernetes.io/tls", &cert.pem(), &key.serialize_pem());
    check_bad(&bad, &["Secret default/expired", "expired", "2021"], 2);
}

#[test]
fn secret_of_the_wrong_type_is_rejected_naming_the_right_type() {
    let (cert, key) = secure_cert();
    let bad = secure_ingress("opaque", "Opaque", &cert, &key);
    check_bad(&bad, &["Secret default/opaque", "\"Opaque\"", "kubernetes.io/tls"], 2);
}

#[test]
fn a_valid_tls_secret_is_not_reported() {
    let (cert, key) = secure_cert();
    let dir = Dir::new(&[("good.yaml", GOOD), ("tls.yaml", &secure_ingress("fine", "kubernetes.io/tls", &cert, &key))]);
    let out = validate(&[dir.path()]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.summary(dir.path()).routes, GOOD_SUMMARY.routes + 2, "{out}");
}

// ---------------------------------------------------------------------------------------------
// Invalid rules and policies

#[test]
fn invalid_regex_in_an_httproute_path_rejects_the_route() {
    let bad = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: regex, namespace: default}
        spec:
          parentRefs: [{name: gw}]
          hostnames: [regex.example.com]
          rules:
            - matches: [{path: {type: RegularExpression, value: "/items/(unclosed"}}]
              backendRefs: [{name: web, port: 80}]
    "#;
    check_bad(
        bad,
        &["HTTPRoute default/regex", "spec.rules[0].matches[0]", "regular expression", "/items/(unclosed", "invalid"],
        0,
    );
}

#[test]
fn invalid_backend_policy_lists_every_problem_at_once() {
    let bad = r#"
        apiVersion: weir.dev/v1alpha1
        kind: BackendPolicy
        metadata: {name: tuned, namespace: default}
        spec:
          targetRefs: [{kind: Service, name: web}]
          connectTimeout: fast
          healthCheck:
            interval: 0s
            http: {path: healthz}
          outlierDetection:
            maxEjectionPercent: 150
    "#;
    let (_, line, _) = check_bad(bad, &["BackendPolicy default/tuned", "4 problems"], 0);
    for field in [
        "spec.connectTimeout",
        "spec.healthCheck.interval",
        "spec.healthCheck.http.path",
        "spec.outlierDetection.maxEjectionPercent",
    ] {
        assert!(line.contains(field), "the reason must list the problem with {field}: {line}");
    }
    for fix in ["\"fast\"", "greater than zero", "must start with /", "150"] {
        assert!(line.contains(fix), "the reason must say what is wrong ({fix}): {line}");
    }
}

#[test]
fn backend_policy_for_a_missing_service_is_reported() {
    let bad = r#"
        apiVersion: weir.dev/v1alpha1
        kind: BackendPolicy
        metadata: {name: orphan, namespace: default}
        spec:
          targetRefs: [{kind: Service, name: ghost}]
    "#;
    check_bad(bad, &["BackendPolicy default/orphan", "Service default/ghost which does not exist"], 0);
}

#[test]
fn what_a_mesh_gateway_would_refuse_is_reported() {
    // a Service whose expected identity is not a SPIFFE ID, and a consumer route (namespace
    // checkout, for Service shop/payments) that only checkout's mesh gateway reads
    let bad = r#"
        apiVersion: v1
        kind: Service
        metadata: {name: payments, namespace: shop, annotations: {weir.dev/identity: payments}}
        spec: {ports: [{name: http, port: 80}]}
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: steer, namespace: checkout}
        spec:
          parentRefs: [{group: "", kind: Service, name: payments, namespace: shop, port: 80}]
          rules:
          - matches: [{path: {type: RegularExpression, value: "/("}}]
            backendRefs: [{name: payments, namespace: shop, port: 80}]
    "#;
    let dir = Dir::new(&[("good.yaml", GOOD), ("bad.yaml", bad)]);
    let out = validate(&[dir.path()]);
    assert_eq!(out.code, Some(1), "{out}");
    out.line_for(&dir.file("bad.yaml"), &["Service shop/payments", "weir.dev/identity", "not a SPIFFE ID"]);
    out.line_for(&dir.file("bad.yaml"), &["HTTPRoute checkout/steer", "regular expression"]);
    assert_eq!(out.summary(dir.path()).rejected, 2, "{out}");
}

// ---------------------------------------------------------------------------------------------
// Gateway listeners

#[test]
fn gateway_listener_on_the_ingress_port_is_rejected() {
    let bad = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: clash, namespace: default}
        spec:
          gatewayClassName: weir
          listeners:
            - {name: web, protocol: HTTP, port: 8080}
    "#;
    let (_, _, summary) = check_bad(
        bad,
        &["Gateway default/clash", "spec.listeners[0] (web)", "port 8080 is already used", "ingress-http"],
        0,
    );
    assert_eq!(summary.listeners, GOOD_SUMMARY.listeners, "no listener may be added on 8080");
}

#[test]
fn gateway_listener_with_an_unsupported_protocol_is_rejected() {
    let bad = r#"
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: tcp, namespace: default}
        spec:
          gatewayClassName: weir
          listeners:
            - {name: db, protocol: TCP, port: 5432}
    "#;
    let (_, _, summary) = check_bad(
        bad,
        &[
            "Gateway default/tcp",
            "spec.listeners[0] (db)",
            "protocol TCP is not supported",
            "use HTTP, HTTPS or TLS (Passthrough)",
        ],
        0,
    );
    assert_eq!(summary.listeners, GOOD_SUMMARY.listeners, "no listener may be added for TCP");
}

#[test]
fn every_bad_input_at_once_is_reported_file_by_file() {
    let dir = Dir::new(&[
        ("good.yaml", GOOD),
        ("broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: b\n"),
        ("deployment.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"),
        (
            "tcp.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tcp}\n\
             spec: {gatewayClassName: weir, listeners: [{name: db, protocol: TCP, port: 5432}]}\n",
        ),
    ]);
    let out = validate(&[dir.path()]);
    assert_eq!(out.code, Some(1), "{out}");
    out.line_for(&dir.file("broken.yaml"), &["YAML does not parse"]);
    out.line_for(&dir.file("deployment.yaml"), &["not a kind weir reads"]);
    out.line_for(&dir.file("tcp.yaml"), &["protocol TCP"]);
    let summary = out.summary(dir.path());
    assert_eq!(summary.rejected, 3, "{out}");
    assert_eq!(summary.routes, GOOD_SUMMARY.routes, "{out}");
    assert_eq!(out.lines().len(), 4, "three rejections and one summary:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// weir crds

#[test]
fn crds_prints_the_crds_shipped_in_deploy() {
    let out = run(&["crds"]);
    assert_eq!(out.code, Some(0), "{out}");
    let shipped = |file: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds").join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    let files = ["backendpolicies.weir.dev.yaml", "meshauthorizations.weir.dev.yaml"];
    assert!(
        out.stdout == files.map(shipped).join("---\n"),
        "`weir crds` and deploy/crds/ differ; regenerate the files from `weir crds` (one document each)"
    );
    // documents a cluster accepts: v1 CRDs of the weir.dev group
    let kinds: Vec<String> = out
        .stdout
        .split("---\n")
        .map(|doc| {
            let crd: serde_json::Value = serde_saphyr::from_str(doc).expect("`weir crds` prints valid YAML");
            assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
            assert_eq!(crd["spec"]["group"], "weir.dev");
            crd["spec"]["names"]["kind"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(kinds, ["BackendPolicy", "MeshAuthorization"]);
}
