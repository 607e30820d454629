//! The outbound side of a mesh gateway: local applications send plain HTTP to it; it finds the
//! Service named by the Host, picks an endpoint from the Service port's pool (shared machinery
//! with the edge), and sends the request over mutual TLS to that endpoint's mesh gateway,
//! naming the endpoint's port in `weir-target-port`. Connections between gateways are HTTP/2,
//! reused and multiplexed. The server must prove the Service's expected SPIFFE ID (the
//! Service's `weir.dev/identity` annotation), or at least one of our trust domain; a DNS name is
//! never checked.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::HandshakeCompleteHook;
use pingora::protocols::Digest;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::identity::{spiffe_id_of, Credentials, SpiffeId};
use super::inbound::{deny, CLIENT_CERT, TARGET_PORT};
use crate::pool::{EndpointStats, Pool, PoolRegistry};
use crate::proxy::edge::{Tried, MAX_CONNECT_RETRIES};
use crate::routing::{normalize_host, HostPattern, RequestView, Router, Rule};
use crate::snapshot::{compile_action, Action, RouteAction};
use crate::store::{Rejection, Store};
use crate::telemetry::Metrics;
use crate::translate::backend::{Backends, PortRef};
use crate::translate::gateway::{compile_route, service_parents};
use crate::translate::{reject, RouteModel};

/// The Service annotation naming the SPIFFE ID its workloads must present.
pub const IDENTITY_ANNOTATION: &str = "weir.dev/identity";
/// Concurrent requests per connection between two gateways.
pub const MESH_H2_STREAMS: usize = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A Service the outbound side can reach.
pub struct Destination {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<DestinationPort>,
    /// The SPIFFE ID its endpoints must present; `None`: any of our trust domain.
    pub identity: Option<SpiffeId>,
}

/// One port of a Service: its own endpoints, and the HTTPRoutes attached to it (as a parent) that
/// send its traffic elsewhere, e.g. split by weight between versions.
pub struct DestinationPort {
    pub port: u16,
    pub pool: Arc<Pool>,
    pub routes: Option<Router<Arc<RouteAction>>>,
}

/// Every reachable Service, by (namespace, name), with what could not be used.
#[derive(Default)]
pub struct Directory {
    pub services: HashMap<(String, String), Arc<Destination>>,
    pub rejections: Vec<Rejection>,
}

impl Directory {
    /// Builds the directory from `store`, syncing `pools` (health state survives changes) and
    /// linking route metrics in `metrics`.
    pub fn build(store: &Store, pools: &PoolRegistry, metrics: &Metrics) -> Directory {
        let mut rejections = vec![];
        let mut backends = Backends::new(store, &mut rejections);
        let routes = mesh_routes(store, &mut backends, &mut rejections);
        let mut wanted = vec![];
        for ((ns, name), stored) in &store.services {
            let annotation = stored
                .object
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(IDENTITY_ANNOTATION))
                .map(|v| SpiffeId::parse(v));
            let identity = match annotation {
                None => None,
                Some(Ok(id)) => Some(id),
                Some(Err(e)) => {
                    let reason = format!("annotation {IDENTITY_ANNOTATION}: {e}; the Service is not reachable through the mesh until it is fixed");
                    rejections.push(reject("Service", ns, name, &stored.origin, reason));
                    continue;
                }
            };
            let ports = stored.object.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default();
            let mut keys = vec![];
            for p in ports {
                match backends.resolve(ns, name, &PortRef::Number(p.port as u16)) {
                    Ok(key) => keys.push((p.port as u16, key)),
                    Err(e) => rejections.push(reject("Service", ns, name, &stored.origin, e)),
                }
            }
            wanted.push((ns.clone(), name.clone(), keys, identity));
        }
        let pools = pools.sync(&backends.into_pools());
        let services = wanted
            .into_iter()
            .map(|(namespace, name, keys, identity)| {
                let attached = routes.get(&(namespace.clone(), name.clone()));
                let ports = keys
                    .into_iter()
                    .filter_map(|(port, key)| {
                        let rules: Vec<_> = attached
                            .into_iter()
                            .flatten()
                            .filter(|(p, _)| p.is_none_or(|p| p == port))
                            .map(|(_, r)| {
                                let action = Arc::new(compile_action("mesh", &r.action, &pools, metrics));
                                (HostPattern::Any, Rule { matcher: r.matcher.clone(), order: r.order.clone(), action })
                            })
                            .collect();
                        let routes = (!rules.is_empty()).then(|| Router::build(rules));
                        Some(DestinationPort { port, pool: pools.get(&key)?.clone(), routes })
                    })
                    .collect();
                let key = (namespace.clone(), name.clone());
                (key, Arc::new(Destination { namespace, name, ports, identity }))
            })
            .collect();
        Directory { services, rejections }
    }

    /// The Service and port a Host names: `payments`, `payments.shop`, `payments.shop.svc` or
    /// `payments.shop.svc.<cluster domain>`, each with an optional `:port`.
    pub fn lookup(&self, host: &str, namespace: &str, cluster_domain: &str) -> Result<(Arc<Destination>, u16), String> {
        let port = host.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
        let name = normalize_host(host);
        let suffix = format!(".svc.{cluster_domain}");
        let short = name.strip_suffix(suffix.as_str()).or_else(|| name.strip_suffix(".svc")).unwrap_or(&name);
        let (service, ns) = match short.split_once('.') {
            None => (short, namespace),
            Some((s, ns)) if !ns.contains('.') => (s, ns),
            Some(_) => {
                return Err(format!(
                    "{host} is not a Service name (name, name.namespace or name.namespace.svc.{cluster_domain})"
                ))
            }
        };
        let dest = self
            .services
            .get(&(ns.to_string(), service.to_string()))
            .ok_or_else(|| format!("no Service {ns}/{service} in the mesh"))?;
        let chosen = match port {
            Some(p) => dest.ports.iter().find(|dp| dp.port == p).map(|dp| dp.port),
            None if dest.ports.len() == 1 => Some(dest.ports[0].port),
            None => dest.ports.iter().find(|dp| dp.port == 80).map(|dp| dp.port),
        };
        match chosen {
            Some(p) => Ok((dest.clone(), p)),
            None => Err(format!(
                "Service {ns}/{service} has no port {}",
                port.map_or("80 (name one in the Host)".to_string(), |p| p.to_string())
            )),
        }
    }
}

/// HTTPRoutes whose parent is a Service, compiled, by that Service (with the parent's port).
/// Only producer routes (in the Service's own namespace) for now.
fn mesh_routes(
    store: &Store,
    backends: &mut Backends<'_>,
    rejections: &mut Vec<Rejection>,
) -> HashMap<(String, String), Vec<(Option<u16>, RouteModel)>> {
    let mut out: HashMap<_, Vec<_>> = HashMap::new();
    for ((ns, name), stored) in &store.http_routes {
        let parents = service_parents(&stored.object, ns);
        if parents.is_empty() {
            continue;
        }
        let r = |reason: String| reject("HTTPRoute", ns, name, &stored.origin, reason);
        let (models, warnings) = match compile_route(&stored.object, ns, name, backends) {
            Ok(compiled) => compiled,
            Err(errors) => {
                rejections.push(r(errors.join("; ")));
                continue;
            }
        };
        if !warnings.is_empty() {
            rejections.push(Rejection { served: true, ..r(warnings.join("; ")) });
        }
        for (parent_ns, service, port) in parents {
            if parent_ns != *ns {
                rejections.push(r(format!(
                    "parentRef Service {parent_ns}/{service}: routes for another namespace's Service (consumer routes) are not supported yet"
                )));
                continue;
            }
            out.entry((parent_ns, service)).or_default().extend(models.iter().map(|m| (port, m.clone())));
        }
    }
    out
}

/// Settings of the outbound side.
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    /// Namespace of the workload this gateway serves (for short names such as `payments`).
    pub namespace: String,
    pub cluster_domain: String,
    /// Port of the peers' inbound (mutual TLS) listeners.
    pub mesh_port: u16,
}

/// The outbound `ProxyHttp`.
pub struct OutboundProxy {
    pub settings: OutboundSettings,
    pub directory: Arc<ArcSwap<Directory>>,
    pub credentials: Arc<ArcSwap<Credentials>>,
    /// Records the server's SPIFFE ID on each new connection between gateways.
    pub handshake_hook: HandshakeCompleteHook,
}

/// The hook that puts a server's SPIFFE ID on its connection's TLS digest.
pub fn server_identity_hook() -> HandshakeCompleteHook {
    Arc::new(|ssl| {
        let id = ssl.peer_certificate().and_then(|c| spiffe_id_of(&c).ok())?;
        Some(Arc::new(id) as Arc<dyn Any + Send + Sync>)
    })
}

/// Per-request state of the outbound proxy.
pub struct OutboundCtx {
    destination: Option<Arc<Destination>>,
    pool: Option<Arc<Pool>>,
    endpoint: Option<Arc<EndpointStats>>,
    target_port: u16,
    /// Endpoints already tried (a connect failure is retried on another, as on the edge).
    tried: Tried,
    retries: u32,
}

#[async_trait]
impl ProxyHttp for OutboundProxy {
    type CTX = OutboundCtx;

    fn new_ctx(&self) -> OutboundCtx {
        OutboundCtx { destination: None, pool: None, endpoint: None, target_port: 0, tried: Tried::new(), retries: 0 }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut OutboundCtx) -> Result<bool> {
        let req = session.req_header();
        let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or(req.uri.host()).unwrap_or("");
        let s = &self.settings;
        let directory = self.directory.load();
        let (dest, port) = match directory.lookup(host, &s.namespace, &s.cluster_domain) {
            Ok(found) => found,
            Err(reason) => return deny(session, 404, &reason).await,
        };
        let Some(dp) = dest.ports.iter().find(|dp| dp.port == port) else {
            return deny(session, 404, "no such port").await;
        };
        ctx.pool = match &dp.routes {
            None => Some(dp.pool.clone()),
            Some(router) => {
                let view = RequestView {
                    host: &normalize_host(host),
                    path: req.uri.path(),
                    query: req.uri.query(),
                    method: &req.method,
                    headers: &req.headers,
                };
                match router.lookup(&view).map(|rule| &rule.action.kind) {
                    Some(Action::Forward { targets, cycle, .. }) => {
                        match cycle.next().and_then(|i| targets[i].pool.clone()) {
                            Some(pool) => Some(pool),
                            None => return deny(session, 500, "the route's backend is not available").await,
                        }
                    }
                    Some(Action::Redirect { .. }) => {
                        return deny(session, 501, "redirects are not supported by the mesh yet").await;
                    }
                    None => {
                        let reason = format!("no route of Service {}/{} matches", dest.namespace, dest.name);
                        return deny(session, 404, &reason).await;
                    }
                }
            }
        };
        // the server to verify is the chosen backend's (a route may send payments to payments-v2)
        let backend = ctx.pool.as_ref().map(|p| (p.key.namespace.clone(), p.key.service.clone()));
        ctx.destination = backend.and_then(|key| directory.services.get(&key).cloned()).or(Some(dest));
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut OutboundCtx) -> Result<Box<HttpPeer>> {
        let (Some(pool), Some(dest)) = (&ctx.pool, &ctx.destination) else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "no destination");
        };
        let Some(picked) = pool.select(&[], ctx.tried.as_slice()) else {
            return Error::e_explain(ErrorType::HTTPStatus(503), format!("no healthy endpoint in {}", pool.key));
        };
        if ctx.tried.as_slice().is_empty() {
            pool.retry_budget.deposit();
        }
        if let Some(previous) = ctx.endpoint.take() {
            previous.inflight.fetch_sub(1, Relaxed);
        }
        picked.stats.inflight.fetch_add(1, Relaxed);
        ctx.endpoint = Some(picked.stats);
        ctx.tried.push(picked.addr);
        ctx.target_port = picked.addr.port();
        let gateway = SocketAddr::new(picked.addr.ip(), self.settings.mesh_port);
        // the name is sent as SNI only; verification is of the SPIFFE ID (connected_to_upstream)
        let sni = format!("{}.{}.svc.{}", dest.name, dest.namespace, self.settings.cluster_domain);
        let mut peer = HttpPeer::new(gateway, true, sni);
        let creds = self.credentials.load();
        let o = &mut peer.options;
        o.verify_cert = true;
        o.verify_hostname = false;
        o.ca = Some(creds.bundle.clone());
        o.set_http_version(2, 2);
        o.max_h2_streams = MESH_H2_STREAMS;
        o.connection_timeout = Some(CONNECT_TIMEOUT);
        o.idle_timeout = Some(IDLE_TIMEOUT);
        o.upstream_tls_handshake_complete_hook = Some(self.handshake_hook.clone());
        peer.client_cert_key = Some(creds.client_cert.clone());
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&Digest>,
        ctx: &mut OutboundCtx,
    ) -> Result<()> {
        let server = digest.and_then(|d| d.ssl_digest.as_ref()).and_then(|s| s.extension.get::<SpiffeId>());
        let expected = ctx.destination.as_ref().and_then(|d| d.identity.as_ref());
        let verdict = match server {
            Some(id) => self.credentials.load().accepts(id, expected).map_err(|r| format!("{id}: {}", r.as_str())),
            None => Err("no SPIFFE ID".to_string()),
        };
        verdict.or_else(|why| {
            Error::e_explain(
                ErrorType::HTTPStatus(502),
                format!("the mesh gateway at {} is not who it should be ({why})", peer._address),
            )
        })
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut OutboundCtx,
    ) -> Result<()> {
        // the caller's identity is the certificate this gateway presents, never a header
        upstream.remove_header(&CLIENT_CERT);
        upstream.insert_header(TARGET_PORT, ctx.target_port.to_string())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut OutboundCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(pool) = ctx.pool.clone() else { return e };
        if let Some(ep) = ctx.endpoint.take() {
            ep.inflight.fetch_sub(1, Relaxed);
            pool.report(&ep, false);
        }
        // nothing was sent: retry on another endpoint, within the pool's retry budget
        if ctx.retries < MAX_CONNECT_RETRIES && pool.may_retry_elsewhere(ctx.tried.as_slice()) {
            ctx.retries += 1;
            e.set_retry(true);
        }
        e
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut OutboundCtx) {
        if let (Some(ep), Some(pool)) = (ctx.endpoint.take(), &ctx.pool) {
            ep.inflight.fetch_sub(1, Relaxed);
            pool.report(&ep, !e.is_some_and(|e| e.esource() == &ErrorSource::Upstream));
        }
    }
}
