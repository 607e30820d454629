//! The inbound side of a mesh gateway: terminates mutual TLS from other gateways, and forwards
//! to the workload it fronts, only to the workload's own ports: never an open relay.
//!
//! Each connection is handshaken with the credentials current when it arrives (rotation never
//! touches open connections). The caller's SPIFFE ID, taken from its verified certificate, rides
//! on the connection's TLS digest to every request, and reaches the workload in
//! `x-forwarded-client-cert` (Envoy's format), set here and never passed through from the caller.
//! Each request is authorized ([`super::authz`]) for the Service of the endpoint the caller
//! dialed.

use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::http::RequestHeader;
use pingora::listeners::TlsAccept;
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::TlsRef;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType, Result};

use tokio::time::Instant;

use super::authz::Authorizer;
use super::identity::{spiffe_id_of, Credentials, Refusal, SpiffeId};
use crate::proxy::answer::{counted_status, Failure, FailureKind, Reveal};
use crate::proxy::buffered::Buffered;
use crate::proxy::drain::{Drain, InFlight};
use crate::proxy::filters::normalize_request_path;
use crate::proxy::listeners::Socket;
use crate::telemetry::mesh::{Hop, HopSeries};
use crate::telemetry::Metrics;
use crate::tls::HANDSHAKE_TIMEOUT;

/// The header the calling gateway names the workload port in.
pub const TARGET_PORT: http::HeaderName = http::HeaderName::from_static("weir-target-port");
/// The caller's identity, for the workload: `By=<our ID>;URI=<caller ID>` (Envoy's XFCC format).
pub const CLIENT_CERT: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");
/// Why a request was refused (with a 403 or 421).
pub use crate::proxy::answer::DENIED_REASON;

/// The workload behind this gateway.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Where the workload listens (the pod's own address; 127.0.0.1 in a pod).
    pub address: IpAddr,
    /// The only ports callers may reach.
    pub ports: Vec<u16>,
}

/// The caller of a connection, kept on its TLS digest for its requests: its SPIFFE ID, and the
/// series its requests are counted in (made on its first request).
#[derive(Clone)]
struct Caller(Arc<CallerInfo>);

/// What a connection's requests share: the caller, and what is built from it once.
struct CallerInfo {
    id: SpiffeId,
    /// `By=<this gateway's ID at the handshake>;URI=<caller>` for `x-forwarded-client-cert`.
    xfcc: http::HeaderValue,
    /// The caller's metrics series.
    series: OnceLock<HopSeries>,
}

impl Caller {
    fn id(&self) -> &SpiffeId {
        &self.0.id
    }
}

/// Puts the [`Caller`] on the connection's TLS digest once the handshake is done, with what its
/// requests will need built once: `own` is the ID this gateway presented.
struct CallerIdentity<'a> {
    own: &'a SpiffeId,
}

#[async_trait]
impl TlsAccept for CallerIdentity<'_> {
    async fn handshake_complete_callback(&self, ssl: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        let id = ssl.peer_certificate().and_then(|c| spiffe_id_of(&c).ok())?;
        // SPIFFE IDs are URIs of printable ASCII, so this is always a valid header value
        let xfcc = http::HeaderValue::try_from(format!("By={};URI={id}", self.own)).ok()?;
        Some(Arc::new(Caller(Arc::new(CallerInfo { id, xfcc, series: OnceLock::new() }))))
    }
}

/// Accepts connections on `socket` (up to its limit) for as long as the task runs: mutual TLS with
/// the current credentials, then `app`. Failed handshakes are counted by reason.
pub async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    socket: Socket,
    credentials: Arc<ArcSwap<Credentials>>,
    app: Arc<A>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownWatch,
) {
    loop {
        let (stream, permit) = socket.next(&metrics).await;
        let creds = credentials.load_full();
        let (app, metrics, shutdown) = (app.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let identify = CallerIdentity { own: &creds.id };
            let handshake = pingora::protocols::tls::server::handshake_with_callback(
                &creds.acceptor,
                Buffered::new(stream),
                &identify,
            );
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    // a refused certificate was counted by the verify callback, with its reason;
                    // what it never saw: no certificate at all, or a handshake that broke before
                    // (an old TLS version, no shared cipher, not TLS)
                    let text = format!("{e}");
                    if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
                        metrics.mesh_handshake_failure(Refusal::NoCertificate.as_str());
                    } else if !text.contains("CERTIFICATE_VERIFY_FAILED") {
                        metrics.mesh_handshake_failure("handshake");
                    }
                    tracing::debug!(error = %e, "mesh inbound: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.mesh_handshake_failure("timeout");
                    return;
                }
            };
            metrics.mesh_inbound_connections.inc();
            let mut next = app.process_new(Box::new(stream), &shutdown).await;
            while let Some(reused) = next {
                next = app.process_new(reused, &shutdown).await;
            }
            drop(permit);
        });
    }
}

/// The inbound `ProxyHttp`: checks the target port, authorizes the caller, names it, forwards to
/// the workload.
pub struct InboundProxy {
    pub workload: Workload,
    pub credentials: Arc<ArcSwap<Credentials>>,
    pub authorizer: Arc<ArcSwap<Authorizer>>,
    pub metrics: Arc<Metrics>,
    /// Requests in flight, for draining at shutdown.
    pub drain: Drain,
}

/// Per-request state of the inbound proxy.
pub struct InboundCtx {
    _in_flight: InFlight,
    started: Instant,
    caller: Option<Caller>,
    target: Option<SocketAddr>,
    /// `name.namespace` of the Service the caller reached (metrics), if the endpoint is known.
    service: Option<Arc<str>>,
    /// What the gateway answered itself, if it did.
    answered: Option<FailureKind>,
}

impl InboundCtx {
    fn hop<'a>(&'a self, caller: &'a SpiffeId) -> Hop<'a> {
        Hop {
            direction: "inbound",
            source: caller.as_str(),
            destination: self.service.as_deref().unwrap_or(""),
            route: "",
        }
    }
}

fn caller_of(session: &Session) -> Option<Caller> {
    let digest = session.digest()?.ssl_digest.as_ref()?;
    digest.extension.get::<Caller>().cloned()
}

/// Answers a mesh request with a failure of `kind`, naming `reason` (also in
/// `weir-denied-reason`); the request ends here.
pub async fn deny(
    session: &mut Session,
    kind: FailureKind,
    reason: &str,
    answered: &mut Option<FailureKind>,
) -> Result<bool> {
    Failure::new(kind, reason.to_string()).send(session, Reveal::ReasonHeader, answered).await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for InboundProxy {
    type CTX = InboundCtx;

    fn new_ctx(&self) -> InboundCtx {
        InboundCtx {
            _in_flight: self.drain.hold(),
            started: Instant::now(),
            caller: None,
            target: None,
            service: None,
            answered: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut InboundCtx) -> Result<bool> {
        let Some(caller) = caller_of(session) else {
            // the handshake requires a SPIFFE ID, so this is a bug, not a caller's mistake
            return deny(session, FailureKind::Forbidden, "the caller presented no SPIFFE identity", &mut ctx.answered)
                .await;
        };
        let port = session.req_header().headers.get(&TARGET_PORT).and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
        let Some(port) = port else {
            const NO_PORT: &str = "the request names no workload port (weir-target-port)";
            return deny(session, FailureKind::Misdirected, NO_PORT, &mut ctx.answered).await;
        };
        if !self.workload.ports.contains(&port) {
            let reason = format!("port {port} is not a port of this workload");
            return deny(session, FailureKind::Forbidden, &reason, &mut ctx.answered).await;
        }
        // authorization checks, and the workload receives, the same normalized path
        if !normalize_request_path(session, &mut ctx.answered).await? {
            return Ok(true);
        }
        // the Service is found from where the caller connected, not from anything it says; an
        // endpoint no slice lists still gets a decision (the workload's Deny, or the default)
        let dialed = session.server_addr().and_then(|a| a.as_inet()).map(|a| SocketAddr::new(a.ip(), port));
        let authorizer = self.authorizer.load();
        ctx.service = dialed.and_then(|at| authorizer.label_at(at).cloned());
        let req = session.req_header();
        if let Err(denial) = authorizer.decide(caller.id(), dialed, &req.method, req.uri.path()) {
            let hop = Hop { destination: &denial.service, ..ctx.hop(caller.id()) };
            self.metrics.mesh.denied(&hop, denial.label);
            ctx.caller = Some(caller);
            return deny(session, FailureKind::Forbidden, &denial.text, &mut ctx.answered).await;
        }
        ctx.caller = Some(caller);
        ctx.target = Some(SocketAddr::new(self.workload.address, port));
        Ok(false)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut InboundCtx) {
        if let Some(caller) = &ctx.caller {
            let status = counted_status(session, ctx.answered);
            let hop = ctx.hop(caller.id());
            let series = caller.0.series.get_or_init(|| self.metrics.mesh.series(&hop));
            if series.destination() == hop.destination {
                series.observe(status, ctx.started.elapsed());
            } else {
                // a request to another of the workload's Services than the connection's first
                self.metrics.mesh.observe(&hop, status, ctx.started.elapsed());
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut InboundCtx) -> Result<Box<HttpPeer>> {
        let Some(target) = ctx.target else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "no workload target");
        };
        let mut peer = HttpPeer::new(target, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut InboundCtx,
    ) -> Result<()> {
        upstream.remove_header(&TARGET_PORT);
        upstream.remove_header(&CLIENT_CERT);
        if let Some(caller) = &ctx.caller {
            upstream.insert_header(CLIENT_CERT, caller.0.xfcc.clone())?;
        }
        Ok(())
    }
}
