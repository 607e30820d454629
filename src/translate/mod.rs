//! Store → validated model: a pure function. One bad object never blocks the others; each
//! rejected object (or part of one) comes back as a [`Rejection`] saying what to fix.
//!
//! The model is plain data (no pools, no metric handles); [`crate::snapshot::compile`] turns it
//! into the snapshot the request path reads. `weir validate` stops at the model.

pub mod backend;
pub mod gateway;
pub mod grpc;
pub mod ingress;
pub mod last_good;
pub mod mesh;
pub mod passthrough;
pub mod status;
pub mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::policy::BackendPolicyModel;
use crate::routing::{HostPattern, Order, RequestMatch};
use crate::store::{Rejection, Store};

pub use backend::PoolKey;
pub use last_good::build_keeping_last_good;

/// Settings the translation depends on that come from the command line.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    /// Address of the plaintext Ingress listener (already bound, so its real port).
    pub ingress_http: SocketAddr,
    /// Address of the TLS Ingress listener.
    pub ingress_https: SocketAddr,
    /// Address Gateway listeners bind on, without a pool.
    pub gateway_address: IpAddr,
    /// `--gateway-addresses`: each Gateway gets an address of its own from these networks.
    pub gateway_addresses: Vec<ipnet::IpNet>,
    /// IngressClass name weir serves.
    pub ingress_class: String,
    /// `controllerName` of the GatewayClasses weir serves (`--controller-name`).
    pub controller_name: String,
    /// Also serve Ingresses that name no class.
    pub watch_ingress_without_class: bool,
    /// The TLS policy of each certificate's context (`--tls-min-version`, `--tls-ciphers`).
    pub tls: crate::tls::TlsPolicy,
}

impl TranslateOptions {
    /// weir's default listener addresses (Ingress on 8080 and 8443 of every address, Gateways
    /// on every address) for `ingress_class`: what `weir validate` and the tests translate with.
    pub fn defaults(ingress_class: &str) -> TranslateOptions {
        let any = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        TranslateOptions {
            ingress_http: SocketAddr::new(any, 8080),
            ingress_https: SocketAddr::new(any, 8443),
            gateway_address: any,
            gateway_addresses: vec![],
            ingress_class: ingress_class.to_string(),
            controller_name: gateway::GATEWAY_CONTROLLER.to_string(),
            watch_ingress_without_class: false,
            tls: crate::tls::TlsPolicy::default(),
        }
    }
}

/// The validated configuration: listeners with their routes, and the pools they use.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub listeners: BTreeMap<SocketAddr, ListenerModel>,
    pub pools: BTreeMap<PoolKey, PoolSpec>,
    pub rejections: Vec<Rejection>,
    /// Conditions per object, listener and parent reference, ready to become status.
    pub statuses: status::Statuses,
}

impl last_good::Rejects for Model {
    fn rejections_mut(&mut self) -> &mut Vec<Rejection> {
        &mut self.rejections
    }

    fn statuses_mut(&mut self) -> Option<&mut status::Statuses> {
        Some(&mut self.statuses)
    }
}

/// Plain HTTP, TLS-terminating, or TLS passed through by SNI (a TLS listener of mode Passthrough:
/// each connection goes as it is to the backend of the TLSRoute for its server name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Protocol {
    Http,
    Https,
    TlsPassthrough,
}

/// One socket weir listens on.
#[derive(Clone, Debug)]
pub struct ListenerModel {
    /// `ingress-http`, `ingress-https` or `gateway:<ns>/<name>` (Gateway listeners sharing a
    /// port share a socket).
    pub name: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Certificates by SNI, for HTTPS listeners.
    pub certs: Vec<tls::CertModel>,
    pub routes: Vec<(HostPattern, RouteModel)>,
    /// The hostnames of the Gateway listeners sharing this socket: each is a virtual host of
    /// its own even with no route, so a request for it never falls to the routes of a less
    /// specific listener (Gateway API listener isolation).
    pub hosts: Vec<HostPattern>,
}

/// One match of one rule.
#[derive(Clone, Debug)]
pub struct RouteModel {
    pub matcher: RequestMatch,
    pub order: Order,
    pub action: Arc<ActionModel>,
}

/// What a rule does, shared by all its matches and hostnames.
#[derive(Clone, Debug)]
pub struct ActionModel {
    /// `ingress/<ns>/<name>` or `httproute/<ns>/<name>/rule/<i>`: the metrics `route` label.
    pub name: String,
    pub kind: ActionKind,
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
    pub rewrite: Option<Rewrite>,
    pub timeouts: Timeouts,
    /// The route's own retry settings (mesh), over its Service's.
    pub retry: RouteRetry,
    /// The rule's CORS filter.
    pub cors: Option<Arc<crate::routing::cors::Cors>>,
    /// The rule's RequestMirror filters (those whose Service resolves).
    pub mirrors: Vec<MirrorModel>,
}

/// A RequestMirror's backend and the share of requests it gets (`numerator / denominator`).
#[derive(Clone, Debug)]
pub struct MirrorModel {
    /// `ns/service:port`.
    pub name: String,
    pub pool: PoolKey,
    pub fraction: (u32, u32),
}

#[derive(Clone, Debug)]
pub enum ActionKind {
    Forward(Vec<BackendRef>),
    Redirect(Redirect),
}

/// A weighted backend of a rule.
#[derive(Clone, Debug, Default)]
pub struct BackendRef {
    /// `ns/service:port` for metrics and the config dump.
    pub name: String,
    pub weight: u32,
    /// `None` when the reference is invalid: requests it gets are answered 500 (Gateway API).
    pub pool: Option<PoolKey>,
    /// The backendRef's own header modifiers, applied after the rule's to what it gets.
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
}

#[derive(Clone, Debug, Default)]
pub struct HeaderMods {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMods {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A path rewrite, for redirects and URLRewrite.
#[derive(Clone, Debug)]
pub enum PathRewrite {
    Full(String),
    /// Replace the matched prefix with this.
    Prefix(String),
}

#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

#[derive(Clone, Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    /// `Some(None)` would be meaningless; `None` = derive from the scheme/listener.
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

/// Retry settings an HTTPRoute gives in its annotations (the standard HTTPRoute has no `retry`
/// field; Linkerd configures route retries the same way): each overrides its Service's
/// BackendPolicy for the requests the route matches (mesh tier).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteRetry {
    /// `weir.dev/retry-attempts`: retries after the first try, 0 to 5.
    pub attempts: Option<u32>,
    /// `weir.dev/retry-non-idempotent`: "true" retries POST and PATCH too.
    pub non_idempotent: Option<bool>,
}

/// Annotation of an HTTPRoute: its retries (0 to 5).
pub const RETRY_ATTEMPTS_ANNOTATION: &str = "weir.dev/retry-attempts";
/// Annotation of an HTTPRoute: "true" retries its non-idempotent requests too.
pub const RETRY_NON_IDEMPOTENT_ANNOTATION: &str = "weir.dev/retry-non-idempotent";

impl RouteRetry {
    /// Reads the annotations; an invalid value is an error naming the annotation and what to write.
    pub fn from_annotations(
        annotations: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<RouteRetry, String> {
        let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
        let attempts = match get(RETRY_ATTEMPTS_ANNOTATION) {
            None => None,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if n <= crate::policy::MAX_RETRY_ATTEMPTS => Some(n),
                _ => {
                    return Err(format!(
                        "annotation {RETRY_ATTEMPTS_ANNOTATION}: {v:?} is not a number of retries from 0 to {}",
                        crate::policy::MAX_RETRY_ATTEMPTS
                    ))
                }
            },
        };
        let non_idempotent = match get(RETRY_NON_IDEMPOTENT_ANNOTATION) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(v) => {
                return Err(format!(
                    "annotation {RETRY_NON_IDEMPOTENT_ANNOTATION}: {v:?} must be \"true\" or \"false\""
                ))
            }
        };
        Ok(RouteRetry { attempts, non_idempotent })
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    /// Whole request (HTTPRoute `timeouts.request`).
    pub request: Option<Duration>,
    /// Each try to a backend (HTTPRoute `timeouts.backendRequest`).
    pub backend_request: Option<Duration>,
}

/// How traffic reaches a pool's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (`appProtocol: kubernetes.io/h2c`); gRPC backends.
    H2c,
}

/// One endpoint of a pool, with its EndpointSlice conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointModel {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// Everything a pool needs: endpoints, protocol, policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSpec {
    pub endpoints: Vec<EndpointModel>,
    pub protocol: UpstreamProtocol,
    pub policy: BackendPolicyModel,
}

impl PoolSpec {
    /// A pool of ready HTTP/1 endpoints (benchmarks and tests build pools without manifests).
    pub fn ready(addrs: impl IntoIterator<Item = SocketAddr>, policy: BackendPolicyModel) -> Self {
        PoolSpec {
            endpoints: addrs
                .into_iter()
                .map(|addr| EndpointModel { addr, ready: true, serving: true, terminating: false })
                .collect(),
            protocol: UpstreamProtocol::Http1,
            policy,
        }
    }

    /// Endpoints that take new requests: the ready ones; if none is ready, the serving ones
    /// that are terminating (as kube-proxy and Envoy do), so a rollout's last pods still serve.
    pub fn routable(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let any_ready = self.endpoints.iter().any(|e| e.ready);
        self.endpoints.iter().filter(move |e| if any_ready { e.ready } else { e.serving }).map(|e| e.addr)
    }
}

/// Builds a rejection for an object.
pub(crate) fn reject(kind: &str, ns: &str, name: &str, file: &str, reason: impl Into<String>) -> Rejection {
    Rejection {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
        file: file.into(),
        reason: reason.into(),
        served: false,
    }
}

/// Seconds since the epoch of an object's creationTimestamp (0 if unset), for precedence.
pub(crate) fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
}

/// The pools `keys` as `store` has them now: what an endpoint-only change updates, with no
/// route translated again (see [`Store::same_but_endpoints`]). A key whose Service is gone is
/// left out.
pub fn pools_only<'a>(store: &Store, keys: impl IntoIterator<Item = &'a PoolKey>) -> BTreeMap<PoolKey, PoolSpec> {
    let keys: Vec<&PoolKey> = keys.into_iter().collect();
    let services = keys.iter().map(|k| (k.namespace.clone(), k.service.clone())).collect();
    let mut backends = backend::Backends::of_services(store, &services);
    for key in keys {
        let _ = backends.resolve(&key.namespace, &key.service, &backend::PortRef::Number(key.port));
    }
    backends.into_pools()
}

/// Translates the whole store.
pub fn translate(store: &Store, opts: &TranslateOptions) -> Model {
    let mut model = Model { rejections: store.source_errors.clone(), ..Model::default() };
    let mut backends = backend::Backends::new(store, &mut model.rejections, &mut model.statuses);
    let mut secrets = tls::Secrets::new(store, &opts.tls);
    ingress::translate(store, opts, &mut backends, &mut secrets, &mut model);
    gateway::translate(store, opts, &mut backends, &mut secrets, &mut model);
    model.pools = backends.into_pools();
    model.rejections.extend(secrets.into_rejections());
    model.rejections.sort();
    model.rejections.dedup();
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_retry_annotations_are_checked() {
        let of = |pairs: &[(&str, &str)]| {
            let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            RouteRetry::from_annotations(Some(&map))
        };
        assert_eq!(of(&[]), Ok(RouteRetry::default()));
        assert_eq!(
            of(&[(RETRY_ATTEMPTS_ANNOTATION, "3"), (RETRY_NON_IDEMPOTENT_ANNOTATION, "true")]),
            Ok(RouteRetry { attempts: Some(3), non_idempotent: Some(true) })
        );
        let err = of(&[(RETRY_ATTEMPTS_ANNOTATION, "9")]).unwrap_err();
        assert!(err.contains("weir.dev/retry-attempts: \"9\" is not a number of retries from 0 to 5"), "{err}");
        let err = of(&[(RETRY_NON_IDEMPOTENT_ANNOTATION, "yes")]).unwrap_err();
        assert!(err.contains("must be \"true\" or \"false\""), "{err}");
    }
}
