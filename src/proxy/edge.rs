//! The edge tier's `ProxyHttp`: thin phases that call routing, pools and telemetry.
//!
//! `request_filter` routes (one snapshot load per request), answers redirects and errors;
//! `upstream_peer` picks an endpoint; `fail_to_connect` and `error_while_proxy` mark connect
//! failures, and connections that broke before any answer to an idempotent request, retryable
//! onto a *different* endpoint; `logging` records metrics and passive health.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::answer::{counted_status, Failure, FailureKind, Reveal};
use super::decide::{decide, Arrival, Decision};
use super::drain::{Drain, InFlight};
use super::filters::{
    cors_request, filter_request, filter_response, location, normalize_request_path, respond, strict_http1, target_of,
};
use super::mirror::{self, MirrorBodies};
use super::upstream::{hash_key, DEFAULT_UPSTREAM_IO_TIMEOUT};
use crate::pool::attempt::Attempt;
use crate::pool::Pool;
use crate::resilience::retry::{FailedTry, EDGE};
use crate::resilience::TryPlan;
use crate::snapshot::{Action, RouteAction, Snapshot, Target};
use crate::telemetry::access_log::{self, AccessRecord};
use crate::translate::{Protocol, UpstreamProtocol};

/// How long an idle upstream connection is kept for reuse.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent streams per upstream HTTP/2 connection.
pub const UPSTREAM_H2_STREAMS: usize = 100;

/// The edge proxy. Shared state only; per-request state is in [`EdgeCtx`].
pub struct EdgeProxy {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub access_log: bool,
    /// Requests being served, for draining at shutdown.
    pub drain: Drain,
}

/// Per-request state.
pub struct EdgeCtx {
    _in_flight: InFlight,
    started: Instant,
    snap: Option<Arc<Snapshot>>,
    /// The listener (by the address it is bound on) the request came in on.
    listener: std::net::SocketAddr,
    action: Option<Arc<RouteAction>>,
    target: Option<usize>,
    /// Rewritten path and query, when a URLRewrite changes it.
    new_path: Option<String>,
    /// The endpoint held and those tried, for in-flight counts, passive health and retries.
    attempt: Attempt,
    upstream_started: Option<Instant>,
    /// The try being made got a response header: a failure now is not retried.
    upstream_answered: bool,
    /// What weir answered itself, if it did.
    answered: Option<FailureKind>,
    /// The request's deadline and per-try timeout (route `timeouts`, else the BackendPolicy's).
    plan: Option<TryPlan>,
    /// The request's `Origin`, when the rule's CORS filter allows it: the response says so.
    cors_origin: Option<http::HeaderValue>,
    /// The rule's mirrors got the request (once, at the first try), and get its body.
    mirrored: bool,
    mirror_bodies: MirrorBodies,
}

/// A try failed: reports its endpoint and says whether the request is tried again elsewhere
/// (counted in the retries metric).
fn retry_failed_try(ctx: &mut EdgeCtx, failed: FailedTry<'_>) -> bool {
    let Some(action) = ctx.action.clone() else { return false };
    let Some(target) = ctx.target.and_then(|i| target_of(&action, i)) else { return false };
    let Some(pool) = &target.pool else { return false };
    ctx.attempt.finish(pool, false);
    let Some(plan) = &ctx.plan else { return false };
    let granted = plan.retry_failed_try(&mut ctx.attempt, pool, failed).granted();
    if granted {
        target.metrics.retried();
    }
    granted
}

impl EdgeCtx {
    fn target(&self) -> Option<&Target> {
        target_of(self.action.as_ref()?, self.target?)
    }

    fn pool(&self) -> Option<&Arc<Pool>> {
        self.target()?.pool.as_ref()
    }
}

/// An IP address as a header value, formatted on the stack (one allocation: the value's own).
fn ip_header_value(ip: std::net::IpAddr) -> http::HeaderValue {
    use std::io::Write;
    let mut buf = [0u8; 64]; // the longest IPv6 text is 45 bytes
    let mut w = &mut buf[..];
    let _ = write!(w, "{ip}");
    let n = 64 - w.len();
    http::HeaderValue::from_bytes(&buf[..n]).expect("an IP address is a valid header value")
}

/// The address the connection reached (an unknown one matches no listener).
fn local_addr(session: &Session) -> std::net::SocketAddr {
    session.server_addr().and_then(|a| a.as_inet()).copied().unwrap_or_else(|| ([0, 0, 0, 0], 0).into())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = EdgeCtx;

    fn new_ctx(&self) -> EdgeCtx {
        EdgeCtx {
            _in_flight: self.drain.hold(),
            started: Instant::now(),
            snap: None,
            listener: ([0, 0, 0, 0], 0).into(),
            action: None,
            target: None,
            new_path: None,
            attempt: Attempt::default(),
            upstream_started: None,
            upstream_answered: false,
            answered: None,
            plan: None,
            cors_origin: None,
            mirrored: false,
            mirror_bodies: MirrorBodies::default(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut EdgeCtx) -> Result<bool> {
        if !strict_http1(session, &mut ctx.answered).await?
            || !normalize_request_path(session, &mut ctx.answered).await?
        {
            return Ok(true);
        }
        let snap = self.snapshot.load_full();
        let Some((key, listener)) = snap.listener_at(local_addr(session)) else {
            let failure = Failure::new(FailureKind::NotFound, "this listener has no configuration");
            failure.send(session, Reveal::Text, &mut ctx.answered).await?;
            return Ok(true);
        };
        let scheme = if listener.protocol == Protocol::Https { "https" } else { "http" };
        ctx.listener = key;
        let decision = decide(&listener.router, session.req_header(), Arrival { scheme, port: key.port() });
        ctx.snap = Some(snap);
        match decision {
            Decision::NoRoute => {
                let failure = Failure::new(FailureKind::NotFound, "no route matches this host and path");
                failure.send(session, Reveal::Text, &mut ctx.answered).await?;
                return Ok(true);
            }
            Decision::Redirect { rule, status, location: to } => {
                ctx.action = Some(rule);
                respond(session, status, "", location(to)).await?;
                return Ok(true);
            }
            Decision::Forward { rule, target, new_path } => {
                ctx.target = target;
                ctx.new_path = new_path;
                if let Some(pool) = target.and_then(|i| target_of(&rule, i)).and_then(|t| t.pool.as_ref()) {
                    ctx.plan = Some(TryPlan::new(pool.spec(), rule.timeouts, rule.retry, &EDGE, ctx.started));
                }
                let cors = cors_request(session, &rule, &mut ctx.cors_origin).await?;
                ctx.action = Some(rule);
                if cors {
                    return Ok(true); // a preflight, answered
                }
                if target.is_none() {
                    const WHY: &str = "the backend of this route is not available; see weir's /config_dump";
                    Failure::new(FailureKind::BackendUnavailable, WHY)
                        .send(session, Reveal::Text, &mut ctx.answered)
                        .await?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut EdgeCtx) -> Result<Box<HttpPeer>> {
        // timeouts.request is the whole request's deadline, connect retries included; each try
        // (and each read of it) gets backendRequest, never past the deadline
        let (Some(pool), Some(plan)) = (ctx.pool().cloned(), ctx.plan.as_ref()) else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "route has no backend");
        };
        if plan.expired() {
            return Error::e_explain(ErrorType::HTTPStatus(504), "the request timed out (timeouts.request)");
        }
        let spec = pool.spec();
        let mut ip_buf = [0u8; 16];
        let key = hash_key(session, &spec.policy.algorithm, &mut ip_buf);
        let Some(addr) = ctx.attempt.pick(&pool, key) else {
            return Error::e_explain(ErrorType::HTTPStatus(503), format!("no healthy endpoint in {}", pool.key));
        };
        ctx.upstream_started = Some(Instant::now());
        ctx.upstream_answered = false;
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(plan.connect_timeout());
        o.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        o.read_timeout = Some(plan.try_timeout(DEFAULT_UPSTREAM_IO_TIMEOUT));
        o.write_timeout = o.read_timeout;
        if spec.protocol == UpstreamProtocol::H2c {
            o.set_http_version(2, 2);
            o.max_h2_streams = UPSTREAM_H2_STREAMS;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = ip_header_value(client.ip());
            let xff = match upstream.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => http::HeaderValue::try_from(format!("{prev}, {}", client.ip()))
                    .map_err(|e| Error::because(ErrorType::InternalError, "x-forwarded-for", e))?,
                None => ip.clone(),
            };
            // names as `&'static str`: Pingora turns a `HeaderName` back into bytes and parses it
            // again, where a static string costs it one allocation
            upstream.insert_header("x-forwarded-for", xff)?;
            upstream.insert_header("x-real-ip", ip)?;
        }
        let https = ctx
            .snap
            .as_ref()
            .and_then(|s| s.listeners.get(&ctx.listener))
            .is_some_and(|l| l.protocol == Protocol::Https);
        let proto = http::HeaderValue::from_static(if https { "https" } else { "http" });
        upstream.insert_header("x-forwarded-proto", proto)?;
        let Some(action) = &ctx.action else { return Ok(()) };
        filter_request(upstream, action, ctx.target(), ctx.new_path.as_deref())?;
        mirror::at_try(session, upstream, &action.mirrors, &mut ctx.mirrored, &mut ctx.mirror_bodies);
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        ctx.mirror_bodies.send(body.as_ref(), end_of_stream);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream: &mut ResponseHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        ctx.upstream_answered = true;
        if let (Some(ep), Some(t)) = (ctx.attempt.endpoint(), ctx.upstream_started) {
            ep.observe_latency(t.elapsed());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        match &ctx.action {
            Some(action) => filter_response(resp, action, ctx.target(), ctx.cors_origin.as_ref()),
            None => Ok(()),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut EdgeCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(t) = ctx.target() {
            t.metrics.connect_failed();
        }
        let retry = retry_failed_try(ctx, FailedTry::Connect);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut EdgeCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // a connection that broke before any answer (a Pod stopping at SIGTERM): tried on
        // another endpoint if the request may be; an answered or timed-out request never is
        let broke = !matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout);
        let unanswered = !ctx.upstream_answered && session.response_written().is_none();
        let retry = e.esource() == &ErrorSource::Upstream && broke && unanswered && {
            let failed = FailedTry::Unanswered {
                method: &session.req_header().method,
                replayable: !session.as_ref().retry_buffer_truncated(),
                reused: client_reused,
            };
            retry_failed_try(ctx, failed)
        };
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut EdgeCtx) -> FailToProxy {
        let Some(kind) = FailureKind::of_error(e) else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        if session.response_written().is_none() {
            let text = match kind {
                FailureKind::Unavailable => "no healthy endpoint for this route",
                FailureKind::Timeout => "the upstream did not answer in time",
                FailureKind::UpstreamFailed => "the upstream connection failed",
                _ => "request failed",
            };
            let _ = Failure::new(kind, text).send(session, Reveal::Text, &mut ctx.answered).await;
        }
        FailToProxy { error_code: kind.status(), can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut EdgeCtx) {
        let status = counted_status(session, ctx.answered);
        let elapsed = ctx.started.elapsed();
        if let Some(pool) = ctx.pool().cloned() {
            let upstream_failed = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream) || status >= 500;
            ctx.attempt.finish(&pool, !upstream_failed);
        }
        let listener = ctx.snap.as_ref().and_then(|s| s.listeners.get(&ctx.listener));
        match (ctx.target(), &ctx.action, listener) {
            (Some(t), _, _) => t.metrics.observe(status, elapsed),
            (None, Some(a), _) => match &a.kind {
                Action::Forward { unavailable, .. } => unavailable.observe(status, elapsed),
                Action::Redirect { metrics, .. } => metrics.observe(status, elapsed),
            },
            (None, None, Some(l)) => l.unmatched.observe(status, elapsed),
            _ => {}
        }
        if self.access_log {
            let req = session.req_header();
            access_log::log(&AccessRecord {
                listener: listener.map_or("", |l| l.name.as_str()),
                method: req.method.as_str(),
                host: req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
                path: req.uri.path(),
                status,
                route: ctx.action.as_ref().map_or("", |a| a.name.as_str()),
                backend: ctx.target().map_or("", |t| t.name.as_str()),
                upstream: ctx.attempt.tried().last().copied(),
                duration: elapsed,
                retries: ctx.attempt.retries,
                client: session.client_addr().map(|a| a.to_string()),
            });
        }
    }
}
