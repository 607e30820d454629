//! Builders for the Kubernetes manifests the tests feed weir (Services and EndpointSlices,
//! Secrets, Ingresses, GatewayClass and Gateways, HTTPRoutes, BackendPolicies), as YAML strings,
//! and echo backends with the Service + EndpointSlice that point at them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use weir::demo::echo::EchoServer;

/// The GatewayClass controller name weir serves.
pub const CONTROLLER_NAME: &str = "weir.dev/gateway-controller";

/// Port of every Service made by [`backend`] / [`backends`]; reference it as `port: 80` /
/// `port: {number: 80}` or by its name `http`.
pub const SERVICE_PORT: u16 = 80;
/// Name of the Service port made by [`backend`] / [`backends`].
pub const SERVICE_PORT_NAME: &str = "http";

/// Remove the indentation common to all non-blank lines, so manifests can be written as indented
/// raw strings in tests (YAML's `---` separator must start in column 0).
pub fn dedent(text: &str) -> String {
    let indent =
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line.get(indent..).unwrap_or("").trim_end());
        out.push('\n');
    }
    out.trim_start_matches('\n').to_string()
}

/// Indent every non-blank line of (dedented) `text` by `spaces`, to nest a YAML block.
pub fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    dedent(text)
        .lines()
        .map(|l| if l.is_empty() { String::new() } else { format!("{pad}{l}") })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A Service with one TCP port. It has no selector: its endpoints come from the EndpointSlice made
/// by [`endpoints`].
pub fn service(ns: &str, name: &str, port: u16, port_name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  namespace: {ns}
  name: {name}
spec:
  ports:
  - name: {port_name}
    port: {port}
    protocol: TCP
"
    )
}

/// Like [`service`], with an explicit numeric `targetPort` (what Kubernetes would show for a
/// Service whose pods listen on `target_port`).
pub fn service_with_target_port(ns: &str, name: &str, port: u16, port_name: &str, target_port: u16) -> String {
    format!("{}    targetPort: {target_port}\n", service(ns, name, port, port_name))
}

/// An EndpointSlice for `service` whose ready endpoints are `addrs`, all on `port` (the port the
/// pods listen on) under the Service port named `port_name`.
///
/// One slice has one port list, so every address must use `port`: to give one Service several
/// echo servers, bind them on different loopback IPs with the same port (see [`replicas`]).
pub fn endpoints(ns: &str, service: &str, port_name: &str, port: u16, addrs: &[SocketAddr]) -> String {
    let endpoints: Vec<(SocketAddr, bool)> = addrs.iter().map(|a| (*a, true)).collect();
    endpoint_slice(ns, service, port_name, port, &endpoints)
}

/// An EndpointSlice whose endpoints have an explicit `ready` condition; an empty list gives a
/// Service with no endpoints at all.
pub fn endpoint_slice(ns: &str, service: &str, port_name: &str, port: u16, endpoints: &[(SocketAddr, bool)]) -> String {
    let endpoints: Vec<EndpointConditions> =
        endpoints.iter().map(|(addr, ready)| (*addr, *ready, None, None)).collect();
    endpoint_slice_with_conditions(ns, service, port_name, port, &endpoints)
}

/// An endpoint and its conditions: address, ready, serving, terminating (`None` leaves the
/// condition out).
pub type EndpointConditions = (SocketAddr, bool, Option<bool>, Option<bool>);

/// Like [`endpoint_slice`], with every condition of each endpoint given.
pub fn endpoint_slice_with_conditions(
    ns: &str,
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[EndpointConditions],
) -> String {
    for (addr, ..) in endpoints {
        assert_eq!(
            addr.port(),
            port,
            "endpoint {addr} of Service {ns}/{service} is not on port {port}: one EndpointSlice has \
             one port list; bind the echo servers on different loopback IPs with the same port"
        );
    }
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: {ns}
  name: {service}-slice
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
ports:
- name: {port_name}
  port: {port}
  protocol: TCP
"
    );
    if endpoints.is_empty() {
        yaml.push_str("endpoints: []\n");
    } else {
        yaml.push_str("endpoints:\n");
        for (addr, ready, serving, terminating) in endpoints {
            yaml.push_str(&format!("- addresses: [\"{}\"]\n  conditions:\n    ready: {ready}\n", addr.ip()));
            if let Some(serving) = serving {
                yaml.push_str(&format!("    serving: {serving}\n"));
            }
            if let Some(terminating) = terminating {
                yaml.push_str(&format!("    terminating: {terminating}\n"));
            }
        }
    }
    yaml
}

/// Join manifests into one multi-document YAML string.
pub fn docs<S: AsRef<str>>(manifests: &[S]) -> String {
    manifests.iter().map(|m| m.as_ref().trim_end().to_string()).collect::<Vec<_>>().join("\n---\n") + "\n"
}

/// Start an echo server named `name` on 127.0.0.1:0 and return it with the YAML of a Service
/// `ns/name` (port 80, named `http`) and its EndpointSlice pointing at the echo server.
///
/// Keep the returned server alive (`let (_a, yaml) = …`, not `let (_, yaml) = …`): dropping it
/// stops it.
pub async fn backend(ns: &str, name: &str) -> (EchoServer, String) {
    let echo = EchoServer::start(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("start echo server");
    let yaml = service_at(ns, name, &[echo.addr()]);
    (echo, yaml)
}

/// Several backends at once, each its own echo server, Service and EndpointSlice in `ns`.
pub async fn backends(ns: &str, names: &[&str]) -> Backends {
    let mut echoes = Vec::new();
    let mut manifests = Vec::new();
    for name in names {
        let (echo, yaml) = backend(ns, name).await;
        echoes.push(echo);
        manifests.push(yaml);
    }
    Backends { echoes, yaml: docs(&manifests) }
}

/// Echo servers plus the YAML of their Services and EndpointSlices; see [`backends`].
pub struct Backends {
    pub echoes: Vec<EchoServer>,
    pub yaml: String,
}

impl Backends {
    /// The echo server behind the Service `name`.
    pub fn echo(&self, name: &str) -> &EchoServer {
        self.echoes.iter().find(|e| e.name() == name).unwrap_or_else(|| panic!("no backend named {name:?}"))
    }
}

/// One Service `ns/name` backed by `count` echo servers named `name-1`, `name-2`, … bound on
/// 127.0.0.2, 127.0.0.3, … with the same port, in one EndpointSlice.
pub async fn replicas(ns: &str, name: &str, count: usize) -> (Vec<EchoServer>, String) {
    assert!((1..=200).contains(&count));
    let echoes: Vec<EchoServer> = on_one_port(count, |i, addr| async move {
        let echo = EchoServer::start(&format!("{name}-{}", i + 1), addr).await?;
        let addr = echo.addr();
        Ok((echo, addr))
    })
    .await
    .into_iter()
    .map(|(echo, _)| echo)
    .collect();
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr()).collect();
    let yaml = service_at(ns, name, &addrs);
    (echoes, yaml)
}

/// Binds `count` endpoints on 127.0.0.2, 127.0.0.3, … with one port (an EndpointSlice has one
/// port list). `start(i, addr)` starts endpoint `i` on `addr` and returns it with its address;
/// when an address is taken, every endpoint is started again on a new port.
pub async fn on_one_port<T, F, Fut>(count: usize, mut start: F) -> Vec<(T, SocketAddr)>
where
    F: FnMut(usize, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(T, SocketAddr)>>,
{
    'attempt: for _ in 0..20 {
        let first = start(0, "127.0.0.2:0".parse().unwrap()).await.expect("bind on 127.0.0.2");
        let port = first.1.port();
        let mut all = vec![first];
        for i in 1..count {
            // The port may be taken on that IP by someone else: try again with a new one.
            match start(i, SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 2)), port)).await {
                Ok(e) => all.push(e),
                Err(_) => continue 'attempt,
            }
        }
        return all;
    }
    panic!("could not bind {count} endpoints on one port");
}

/// A Service `ns/name` (port 80 named `http`, targeting the port of `addrs`) and its
/// EndpointSlice listing every address of `addrs` as ready (all on one port).
pub fn service_at(ns: &str, name: &str, addrs: &[SocketAddr]) -> String {
    let port = addrs[0].port();
    docs(&[
        service_with_target_port(ns, name, SERVICE_PORT, SERVICE_PORT_NAME, port),
        endpoints(ns, name, SERVICE_PORT_NAME, port, addrs),
    ])
}

/// A Secret `ns/name` of type `type_` (e.g. `kubernetes.io/tls`) with `tls.crt` and `tls.key`
/// (PEM, base64-encoded in `data`).
pub fn secret(ns: &str, name: &str, type_: &str, crt: &str, key: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  namespace: {ns}
  name: {name}
type: {type_}
data:
  tls.crt: {}
  tls.key: {}
",
        b64(crt),
        b64(key)
    )
}

/// A `kubernetes.io/tls` Secret holding a fresh self-signed certificate for `hosts`.
pub fn tls_secret(ns: &str, name: &str, hosts: &[&str]) -> String {
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let key = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
    secret(ns, name, "kubernetes.io/tls", &key.cert.pem(), &key.signing_key.serialize_pem())
}

/// An Ingress `default/<name>` of class `weir`; `spec` is the rest of its spec, below
/// `ingressClassName` (indented YAML is dedented first, see [`indent`]).
pub fn ingress_with_spec(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  namespace: default
  name: {name}
spec:
  ingressClassName: weir
{}",
        indent(spec, 2)
    )
}

/// An Ingress `default/<name>` of class `weir` with one rule: `host` (any host when empty), path
/// `/` Prefix → Service `service` port 80.
pub fn ingress(name: &str, host: &str, service: &str) -> String {
    ingress_with_spec(name, &ingress_rule(host, service))
}

/// Like [`ingress`], terminating TLS for `host` with the Secret `default/<tls_secret>`.
pub fn ingress_with_tls(name: &str, host: &str, service: &str, tls_secret: &str) -> String {
    let tls = format!("tls:\n- hosts: [{host}]\n  secretName: {tls_secret}\n");
    ingress_with_spec(name, &(tls + &ingress_rule(host, service)))
}

fn ingress_rule(host: &str, service: &str) -> String {
    let host_line = if host.is_empty() { String::new() } else { format!("host: {host}\n  ") };
    format!(
        "rules:
- {host_line}http:
    paths:
    - path: /
      pathType: Prefix
      backend: {{service: {{name: {service}, port: {{number: 80}}}}}}
"
    )
}

/// The GatewayClass `weir`, handled by weir's controller.
pub fn gateway_class() -> String {
    gateway_class_for("weir", CONTROLLER_NAME)
}

/// A GatewayClass with any controller name.
pub fn gateway_class_for(name: &str, controller: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: {name}
spec:
  controllerName: {controller}
"
    )
}

/// A Gateway of class `weir` with one HTTP listener named `http` on `port`, admitting routes from
/// its own namespace (the default). The YAML ends with the listener: more of its fields can be
/// appended, indented by 4 spaces.
pub fn gateway(ns: &str, name: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  namespace: {ns}
  name: {name}
spec:
  gatewayClassName: weir
  listeners:
  - name: http
    protocol: HTTP
    port: {port}
"
    )
}

/// A ReferenceGrant `ns/name` letting `from_kind`s (Gateway API group) of `from_ns` refer to the
/// core `to_kind`s of `ns`: every one, or only `to_name`.
pub fn reference_grant(
    ns: &str,
    name: &str,
    (from_kind, from_ns): (&str, &str),
    to_kind: &str,
    to_name: Option<&str>,
) -> String {
    let only = to_name.map(|n| format!(", name: {n}")).unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {{namespace: {ns}, name: {name}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]
  to: [{{group: '', kind: {to_kind}{only}}}]
"
    )
}

/// [`gateway_class`] and [`gateway`] `ns/name` (one HTTP listener on `port`), as one YAML.
pub fn class_and_gateway(ns: &str, name: &str, port: u16) -> String {
    docs(&[gateway_class(), gateway(ns, name, port)])
}

/// An HTTPRoute `default/<name>` on Gateway `default/<parent>` for `hostnames` (any host when
/// empty) with one rule splitting traffic between `backends` (Service, weight), all on port 80.
pub fn weighted_route(name: &str, parent: &str, hostnames: &[&str], backends: &[(&str, u32)]) -> String {
    let mut yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{namespace: default, name: {name}}}
spec:
  parentRefs: [{{name: {parent}}}]
"
    );
    if !hostnames.is_empty() {
        let quoted: Vec<String> = hostnames.iter().map(|h| format!("\"{h}\"")).collect();
        yaml.push_str(&format!("  hostnames: [{}]\n", quoted.join(", ")));
    }
    yaml.push_str("  rules:\n  - backendRefs:\n");
    for (service, weight) in backends {
        yaml.push_str(&format!("    - {{name: {service}, port: 80, weight: {weight}}}\n"));
    }
    yaml
}

/// A BackendPolicy `default/<name>` targeting Service `service`; `spec` is the rest of its spec,
/// below `targetRefs` (indented YAML is dedented first, see [`indent`]).
pub fn backend_policy(name: &str, service: &str, spec: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1
kind: BackendPolicy
metadata: {{namespace: default, name: {name}}}
spec:
  targetRefs: [{{kind: Service, name: {service}}}]
{}",
        indent(spec, 2)
    )
}
