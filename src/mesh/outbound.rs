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
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::HandshakeCompleteHook;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::identity::{spiffe_id_of, Credentials, SpiffeId};
use super::inbound::{deny, CLIENT_CERT, TARGET_PORT};
use crate::pool::attempt::Attempt;
use crate::pool::breaker::{Held, Limit, Overflow, CONNECTIONS_FULL};
use crate::pool::{Pool, PoolRegistry, RetryVerdict};
use crate::proxy::answer::{counted_status, FailureKind};
use crate::proxy::decide::{decide, Arrival, Decision, Routed};
use crate::proxy::drain::{Drain, InFlight};
use crate::proxy::filters::{
    cors_request, filter_request, filter_response, location, normalize_request_path, respond, target_of,
};
use crate::proxy::upstream::{hash_key, DEFAULT_UPSTREAM_IO_TIMEOUT};
use crate::resilience::retry::{FailedTry, MESH};
use crate::resilience::TryPlan;
use crate::routing::{normalize_host, HostPattern, Router, Rule};
use crate::snapshot::{compile_action, Action, RouteAction};
use crate::telemetry::mesh::{Hop, HopSeries};
use crate::telemetry::Metrics;
use crate::translate::mesh::MeshModel;

pub use crate::api::spiffe::IDENTITY_ANNOTATION;
/// Concurrent requests per connection between two gateways.
pub const MESH_H2_STREAMS: usize = 100;
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A Service the outbound side can reach.
pub struct Destination {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<DestinationPort>,
    /// The SPIFFE ID its endpoints must present; `None`: any of our trust domain.
    pub identity: Option<SpiffeId>,
    /// `name.namespace.svc.<cluster domain>`, sent as SNI (never verified: the SPIFFE ID is).
    pub sni: String,
    /// `name.namespace`, the `destination` label of metrics.
    pub label: String,
    /// This gateway's requests to it that no route matched.
    pub series: HopSeries,
}

/// One port of a Service: its own endpoints, and the HTTPRoutes attached to it (as a parent) that
/// send its traffic elsewhere, e.g. split by weight between versions.
pub struct DestinationPort {
    pub port: u16,
    pub pool: Arc<Pool>,
    pub routes: Option<Router<Arc<MeshRoute>>>,
}

/// A compiled HTTPRoute rule on a Service, with the series of the requests it routes.
pub struct MeshRoute {
    pub action: RouteAction,
    pub series: HopSeries,
}

impl Routed for Arc<MeshRoute> {
    fn route(&self) -> &RouteAction {
        &self.action
    }
}

impl std::ops::Deref for MeshRoute {
    type Target = RouteAction;

    fn deref(&self) -> &RouteAction {
        &self.action
    }
}

/// Every reachable Service, by (namespace, name), with what could not be used.
#[derive(Default)]
pub struct Directory {
    /// namespace → name → Service (looked up per request without building a key).
    services: HashMap<String, HashMap<String, Arc<Destination>>>,
    /// `.svc.<cluster domain>`
    svc_suffix: String,
}

impl Directory {
    /// Compiles the directory of the gateway with `settings` and SPIFFE ID `source` from the
    /// mesh's model, syncing `pools` (health state survives changes) and linking route metrics
    /// in `metrics`.
    pub fn compile(
        model: &MeshModel,
        pools: &PoolRegistry,
        metrics: &Metrics,
        settings: &OutboundSettings,
        source: &str,
    ) -> Directory {
        let cluster_domain = &settings.cluster_domain;
        let registry = pools;
        let pools = registry.sync(&model.pools);
        let mut services: HashMap<String, HashMap<String, Arc<Destination>>> = HashMap::new();
        for ((namespace, name), service) in &model.services {
            let label = format!("{name}.{namespace}");
            let series =
                |route: &str| metrics.mesh.series(&Hop { direction: "outbound", source, destination: &label, route });
            let ports = service
                .ports
                .iter()
                .filter_map(|p| {
                    let rules: Vec<_> = p
                        .routes
                        .iter()
                        .map(|r| {
                            let key = format!("mesh|{namespace}/{name}:{}|{}", p.port, r.action.name);
                            let action = compile_action("mesh", &r.action, &pools, metrics, registry.position(&key));
                            let action = Arc::new(MeshRoute { series: series(&action.name), action });
                            (HostPattern::Any, Rule { matcher: r.matcher.clone(), order: r.order.clone(), action })
                        })
                        .collect();
                    let routes = (!rules.is_empty()).then(|| Router::build(rules));
                    Some(DestinationPort { port: p.port, pool: pools.get(&p.pool)?.clone(), routes })
                })
                .collect();
            let dest = Destination {
                namespace: namespace.clone(),
                name: name.clone(),
                ports,
                identity: service.identity.clone(),
                sni: format!("{name}.{namespace}.svc.{cluster_domain}"),
                series: series(""),
                label,
            };
            services.entry(namespace.clone()).or_default().insert(name.clone(), Arc::new(dest));
        }
        Directory { services, svc_suffix: format!(".svc.{cluster_domain}") }
    }

    /// The Service `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<Destination>> {
        self.services.get(namespace)?.get(name)
    }

    /// The Service and which of its ports a Host names: `payments`, `payments.shop`,
    /// `payments.shop.svc` or `payments.shop.svc.<cluster domain>`, each with an optional
    /// `:port` (else the Service's only port, or 80). `namespace`: the one of short names.
    pub fn lookup(&self, host: &str, namespace: &str) -> Result<(&Arc<Destination>, usize), String> {
        let port = host.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
        let name = normalize_host(host);
        let short = name.strip_suffix(self.svc_suffix.as_str()).or_else(|| name.strip_suffix(".svc")).unwrap_or(&name);
        let (service, ns) = match short.split_once('.') {
            None => (short, namespace),
            Some((s, ns)) if !ns.contains('.') => (s, ns),
            Some(_) => {
                return Err(format!(
                    "{host} is not a Service name (name, name.namespace or name.namespace{})",
                    self.svc_suffix
                ))
            }
        };
        let dest = self.get(ns, service).ok_or_else(|| format!("no Service {ns}/{service} in the mesh"))?;
        let chosen = match port {
            Some(p) => dest.ports.iter().position(|dp| dp.port == p),
            None if dest.ports.len() == 1 => Some(0),
            None => dest.ports.iter().position(|dp| dp.port == 80),
        };
        match chosen {
            Some(i) => Ok((dest, i)),
            None => Err(format!(
                "Service {ns}/{service} has no port {}",
                port.map_or("80 (name one in the Host)".to_string(), |p| p.to_string())
            )),
        }
    }
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
    pub metrics: Arc<Metrics>,
    pub directory: Arc<ArcSwap<Directory>>,
    pub credentials: Arc<ArcSwap<Credentials>>,
    /// Records the server's SPIFFE ID on each new connection between gateways.
    pub handshake_hook: HandshakeCompleteHook,
    /// Requests in flight, for draining at shutdown.
    pub drain: Drain,
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
    _in_flight: InFlight,
    started: Instant,
    /// The Service addressed (for metrics: the parent, not the backend a route chose).
    addressed: Option<Arc<Destination>>,
    /// The Service whose endpoints serve the request (its identity is verified).
    destination: Option<Arc<Destination>>,
    route: Option<Arc<MeshRoute>>,
    /// The route's backend chosen (an index into its targets).
    target: Option<usize>,
    /// The request's `Origin`, when the rule's CORS filter allows it.
    cors_origin: Option<http::HeaderValue>,
    pool: Option<Arc<Pool>>,
    target_port: u16,
    /// The endpoint held and those tried.
    attempt: Attempt,
    /// Deadline, per-try timeout and retry settings.
    plan: Option<TryPlan>,
    /// Counted against the pool's `maxRequests` while routed, `maxPendingRequests` while connecting.
    in_flight: Option<Held>,
    pending: Option<Held>,
    /// The upstream answered a status the plan retries, and a retry was granted.
    retrying_status: bool,
    /// Wait before the next try.
    backoff: Option<Duration>,
    /// Why the request failed, for `weir-denied-reason` (set with the error).
    failure: Option<String>,
    /// The failure is an overload answer, counted in metrics: not logged as an error.
    overflowed: bool,
    /// The path and query the route's URLRewrite sends instead (every try).
    new_path: Option<String>,
    /// What the gateway answered itself, if it did.
    answered: Option<FailureKind>,
}

impl OutboundCtx {
    fn hop<'a>(&'a self, source: &'a SpiffeId) -> Hop<'a> {
        Hop {
            direction: "outbound",
            source: source.as_str(),
            destination: self.addressed.as_ref().map_or("", |d| d.label.as_str()),
            route: self.route.as_ref().map_or("", |r| r.name.as_str()),
        }
    }
}

impl OutboundProxy {
    /// A failed try (`why` for the retries metric): reports the endpoint and, if the plan and the
    /// budget allow, schedules a retry on another endpoint. A request that was sent is retried
    /// only if its method is idempotent (or the policy says so) and its body can be replayed,
    /// after a backoff; one that never left (connect failure) at once, whatever its method.
    fn retry_after_failure(&self, session: &Session, ctx: &mut OutboundCtx, why: &str, sent: bool) -> bool {
        let (Some(pool), Some(plan)) = (ctx.pool.clone(), ctx.plan.as_ref()) else { return false };
        ctx.attempt.finish(&pool, false);
        if session.response_written().is_some() {
            return false;
        }
        let failed = match sent {
            false => FailedTry::Connect,
            true => FailedTry::Sent {
                method: &session.req_header().method,
                replayable: !session.as_ref().retry_buffer_truncated(),
            },
        };
        let verdict = plan.retry_failed_try(&mut ctx.attempt, &pool, failed);
        let wait = sent.then(|| plan.backoff(ctx.attempt.retries));
        let creds = self.credentials.load();
        match verdict {
            RetryVerdict::Granted => {
                tracing::debug!(why, retry = ctx.attempt.retries, "mesh outbound: retrying on another endpoint");
                self.metrics.mesh.retry(&ctx.hop(&creds.id), why);
                ctx.backoff = wait;
                true
            }
            RetryVerdict::BudgetSpent => {
                self.metrics.mesh.budget_exhausted(&ctx.hop(&creds.id));
                false
            }
            RetryVerdict::NotRetryable | RetryVerdict::AttemptsUsed | RetryVerdict::NoEndpointLeft => false,
        }
    }

    /// Fails the request at once with 503: a circuit-breaker limit is reached.
    fn overflow(&self, ctx: &mut OutboundCtx, o: &Overflow) -> Box<Error> {
        self.metrics.mesh.overflow(&ctx.hop(&self.credentials.load().id), o.limit.as_str());
        ctx.overflowed = true;
        ctx.failure = Some(format!("{o} for {}", ctx.pool.as_ref().map_or(String::new(), |p| p.key.to_string())));
        Error::explain(ErrorType::HTTPStatus(503), "circuit breaker open")
    }
}

#[async_trait]
impl ProxyHttp for OutboundProxy {
    type CTX = OutboundCtx;

    fn new_ctx(&self) -> OutboundCtx {
        OutboundCtx {
            _in_flight: self.drain.hold(),
            started: Instant::now(),
            addressed: None,
            destination: None,
            route: None,
            target: None,
            cors_origin: None,
            pool: None,
            target_port: 0,
            attempt: Attempt::default(),
            plan: None,
            in_flight: None,
            pending: None,
            retrying_status: false,
            backoff: None,
            failure: None,
            overflowed: false,
            new_path: None,
            answered: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut OutboundCtx) -> Result<bool> {
        if !normalize_request_path(session, &mut ctx.answered).await? {
            return Ok(true);
        }
        let req = session.req_header();
        let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or(req.uri.host()).unwrap_or("");
        let directory = self.directory.load();
        let (dest, dp) = match directory.lookup(host, &self.settings.namespace) {
            Ok((dest, i)) => (dest, &dest.ports[i]),
            Err(reason) => return deny(session, FailureKind::NotFound, &reason, &mut ctx.answered).await,
        };
        ctx.addressed = Some(dest.clone());
        let pool = match &dp.routes {
            None => dp.pool.clone(),
            // the application spoke plain HTTP to the Service's port
            Some(router) => match decide(router, req, Arrival { scheme: "http", port: dp.port }) {
                Decision::NoRoute => {
                    let reason = format!("no route of Service {}/{} matches", dest.namespace, dest.name);
                    return deny(session, FailureKind::NotFound, &reason, &mut ctx.answered).await;
                }
                Decision::Redirect { rule, status, location: to } => {
                    ctx.route = Some(rule);
                    respond(session, status, "", location(to)).await?;
                    return Ok(true);
                }
                Decision::Forward { rule, target, new_path } => {
                    ctx.new_path = new_path;
                    ctx.target = target;
                    let pool = match &rule.kind {
                        Action::Forward { targets, .. } => target.and_then(|i| targets[i].pool.clone()),
                        Action::Redirect { .. } => None,
                    };
                    let cors = cors_request(session, &rule, &mut ctx.cors_origin).await?;
                    ctx.route = Some(rule);
                    if cors {
                        return Ok(true); // a preflight, answered
                    }
                    match pool {
                        Some(pool) => pool,
                        None => {
                            const WHY: &str = "the route's backend is not available";
                            return deny(session, FailureKind::BackendUnavailable, WHY, &mut ctx.answered).await;
                        }
                    }
                }
            },
        };
        // the server to verify is the chosen backend's (a route may send payments to payments-v2),
        // never the addressed Service's in its place
        let Some(backend) = directory.get(&pool.key.namespace, &pool.key.service) else {
            let reason = format!(
                "Service {}/{} of the route's backend is not in the mesh (see /config_dump)",
                pool.key.namespace, pool.key.service
            );
            return deny(session, FailureKind::BackendUnavailable, &reason, &mut ctx.answered).await;
        };
        ctx.destination = Some(backend.clone());
        let (timeouts, retry) = ctx.route.as_ref().map(|r| (r.timeouts, r.retry)).unwrap_or_default();
        ctx.plan = Some(TryPlan::new(pool.spec(), timeouts, retry, &MESH, ctx.started));
        ctx.pool = Some(pool.clone());
        match pool.hold(Limit::Requests) {
            Ok(held) => ctx.in_flight = Some(held),
            Err(o) => {
                let e = self.overflow(ctx, &o);
                let reason = ctx.failure.clone().unwrap_or_else(|| e.to_string());
                return deny(session, FailureKind::Unavailable, &reason, &mut ctx.answered).await;
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut OutboundCtx) -> Result<Box<HttpPeer>> {
        let (Some(pool), Some(dest)) = (ctx.pool.clone(), ctx.destination.clone()) else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "no destination");
        };
        if let Some(wait) = ctx.backoff.take() {
            tokio::time::sleep(wait).await;
        }
        let plan = ctx.plan.as_ref().expect("routed requests have a plan");
        if plan.expired() {
            ctx.failure = Some("the request timed out (timeouts.request)".into());
            return Error::e_explain(ErrorType::HTTPStatus(504), "request timeout");
        }
        let (connect_timeout, try_timeout) = (plan.connect_timeout(), plan.try_timeout(DEFAULT_UPSTREAM_IO_TIMEOUT));
        match pool.hold(Limit::Pending) {
            Ok(held) => ctx.pending = Some(held),
            Err(o) => return Err(self.overflow(ctx, &o)),
        }
        let mut ip_buf = [0u8; 16];
        let key = hash_key(session, &plan.spec().policy.algorithm, &mut ip_buf);
        let Some(endpoint) = ctx.attempt.pick(&pool, key) else {
            ctx.pending = None;
            ctx.failure = Some(format!("no healthy endpoint in {}", pool.key));
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy endpoint");
        };
        ctx.target_port = endpoint.port();
        let gateway = SocketAddr::new(endpoint.ip(), self.settings.mesh_port);
        let mut peer = HttpPeer::new(gateway, true, dest.sni.clone());
        let creds = self.credentials.load();
        let o = &mut peer.options;
        o.verify_cert = true;
        o.verify_hostname = false;
        o.ca = Some(creds.bundle.clone());
        o.set_http_version(2, 2);
        o.max_h2_streams = MESH_H2_STREAMS;
        o.connection_timeout = Some(connect_timeout);
        o.read_timeout = Some(try_timeout);
        o.write_timeout = Some(try_timeout);
        o.idle_timeout = Some(IDLE_TIMEOUT);
        o.upstream_tls_handshake_complete_hook = Some(self.handshake_hook.clone());
        o.connection_gate = Some(pool.gate.clone());
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
        ctx.pending = None;
        let server = digest.and_then(|d| d.ssl_digest.as_ref()).and_then(|s| s.extension.get::<SpiffeId>());
        let expected = ctx.destination.as_ref().and_then(|d| d.identity.as_ref());
        let verdict = match server {
            Some(id) => self.credentials.load().accepts(id, expected).map_err(|r| format!("{id}: {}", r.as_str())),
            None => Err("no SPIFFE ID".to_string()),
        };
        verdict.or_else(|why| {
            let why = format!("the mesh gateway at {} is not who it should be ({why})", peer._address);
            ctx.failure = Some(why.clone());
            Error::e_explain(ErrorType::HTTPStatus(502), why)
        })
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut OutboundCtx,
    ) -> Result<()> {
        if let Some(route) = &ctx.route {
            filter_request(upstream, route, ctx.target.and_then(|i| target_of(route, i)), ctx.new_path.as_deref())?;
        }
        // the caller's identity is the certificate this gateway presents, never a header
        upstream.remove_header(&CLIENT_CERT);
        upstream.insert_header(TARGET_PORT, ctx.target_port.to_string())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut OutboundCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if !ctx.plan.as_ref().is_some_and(|p| p.status_retryable(status)) {
            return Ok(());
        }
        if !self.retry_after_failure(session, ctx, status_reason(status), true) {
            return Ok(()); // the answer goes to the caller as it is
        }
        // nothing was sent to the caller yet: drop this answer and try another endpoint
        ctx.retrying_status = true;
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "retrying on another endpoint");
        e.set_retry(true);
        Err(e)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut OutboundCtx,
    ) -> Result<()> {
        match &ctx.route {
            Some(route) => {
                filter_response(resp, route, ctx.target.and_then(|i| target_of(route, i)), ctx.cors_origin.as_ref())
            }
            None => Ok(()),
        }
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut OutboundCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if std::mem::take(&mut ctx.retrying_status) {
            e.set_retry(true);
            return e;
        }
        let why = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
            _ => "reset",
        };
        let retry = e.esource() == &ErrorSource::Upstream && self.retry_after_failure(session, ctx, why, true);
        e.set_retry(retry);
        e
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut OutboundCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.pending = None;
        if e.etype() == &CONNECTIONS_FULL {
            // the whole pool is at maxConnections, so another endpoint would not do either; and
            // it is not the endpoint's failure (outlier detection does not count it)
            ctx.attempt.release();
            let max = ctx.pool.as_ref().map_or(0, |p| p.spec().policy.circuit_breaker.max_connections);
            return self.overflow(ctx, &Overflow { limit: Limit::Connections, max });
        }
        // nothing was sent: another endpoint at once, no backoff
        let retry = self.retry_after_failure(session, ctx, "connect", false);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut OutboundCtx) -> FailToProxy {
        let Some(kind) = FailureKind::of_error(e) else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        if session.response_written().is_none() {
            let reason = ctx.failure.take().unwrap_or_else(|| match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    match ctx.plan.as_ref().is_some_and(TryPlan::expired) {
                        true => "the request timed out (timeouts.request)".to_string(),
                        false => "the endpoint did not answer in time (timeouts.perTry)".to_string(),
                    }
                }
                _ => format!("the upstream failed: {}", e.etype().as_str()),
            });
            let _ = deny(session, kind, &reason, &mut ctx.answered).await;
        }
        FailToProxy { error_code: kind.status(), can_reuse_downstream: false }
    }

    /// Retries are counted (`weir_mesh_retries_total`), not logged one by one.
    fn suppress_proxy_warn_log(&self, _: &Session, _: &OutboundCtx, _: &Error, c: ProxyWarnLogContext) -> bool {
        matches!(c, ProxyWarnLogContext::UpstreamRetry)
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &OutboundCtx, _error: &Error) -> bool {
        ctx.overflowed
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut OutboundCtx) {
        let status = counted_status(session, ctx.answered);
        if let Some(pool) = ctx.pool.clone() {
            let failed = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream) || status >= 500;
            ctx.attempt.finish(&pool, !failed);
        }
        if let Some(addressed) = &ctx.addressed {
            let creds = self.credentials.load();
            let series = ctx.route.as_ref().map_or(&addressed.series, |r| &r.series);
            if series.source() == creds.id.as_str() {
                series.observe(status, ctx.started.elapsed());
            } else {
                // the identity changed its SPIFFE ID since the directory was built
                self.metrics.mesh.observe(&ctx.hop(&creds.id), status, ctx.started.elapsed());
            }
        }
    }
}

/// The retries metric's reason for a retried status.
fn status_reason(status: u16) -> &'static str {
    match status {
        500 => "status_500",
        502 => "status_502",
        503 => "status_503",
        504 => "status_504",
        _ => "status_5xx",
    }
}
