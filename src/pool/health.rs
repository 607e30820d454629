//! Active health checks (pingora's HTTP and TCP checks, swappable when the policy changes) and
//! passive ejection with re-admission after a growing backoff.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;

use super::{EndpointStats, Pool};
use crate::policy::{HealthCheckKind, HealthCheckModel, OutlierModel};

/// The pool's active check; replaced in place when its BackendPolicy changes, so health state
/// survives the change. With no check configured, every endpoint passes.
#[derive(Default)]
pub struct SwappableCheck {
    inner: ArcSwapOption<Box<dyn HealthCheck + Send + Sync>>,
}

impl SwappableCheck {
    pub fn set(&self, model: Option<&HealthCheckModel>) {
        self.inner.store(model.map(|m| Arc::new(build(m))));
    }
}

fn build(m: &HealthCheckModel) -> Box<dyn HealthCheck + Send + Sync> {
    match &m.kind {
        HealthCheckKind::Tcp => {
            let mut c = TcpHealthCheck::new();
            c.consecutive_success = m.healthy_threshold;
            c.consecutive_failure = m.unhealthy_threshold;
            c.peer_template.options.connection_timeout = Some(m.timeout);
            c
        }
        HealthCheckKind::Http { host: Some(host), .. } => Box::new(http_check(m, host)),
        HealthCheckKind::Http { host: None, .. } => {
            Box::new(PerEndpointHost { model: m.clone(), checks: Mutex::new(HashMap::new()) })
        }
    }
}

/// pingora's HTTP check for one Host header value.
fn http_check(m: &HealthCheckModel, host: &str) -> HttpHealthCheck {
    let HealthCheckKind::Http { path, expected, .. } = &m.kind else { unreachable!("an HTTP check model") };
    let mut c = HttpHealthCheck::new(host, false);
    c.consecutive_success = m.healthy_threshold;
    c.consecutive_failure = m.unhealthy_threshold;
    c.peer_template.options.connection_timeout = Some(m.timeout);
    c.peer_template.options.read_timeout = Some(m.timeout);
    c.peer_template.options.total_connection_timeout = Some(m.timeout);
    if let Ok(mut req) = pingora::http::RequestHeader::build("GET", path.as_bytes(), None) {
        let _ = req.insert_header("Host", host);
        let _ = req.insert_header("User-Agent", "weir-health-check");
        c.req = req;
    }
    let expected = expected.clone();
    c.validator = Some(Box::new(move |resp: &ResponseHeader| {
        let code = resp.status.as_u16();
        if expected.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code)) {
            Ok(())
        } else {
            pingora::Error::e_explain(pingora::ErrorType::HTTPStatus(code), "unexpected health check status")
        }
    }));
    c
}

/// Per-endpoint checks kept before the cache is emptied.
const MAX_PROBED_HOSTS: usize = 4096;

/// With no `host` configured, each endpoint is probed with its own address as the Host header
/// (as a kubelet probe would), so one pingora check per endpoint address.
struct PerEndpointHost {
    model: HealthCheckModel,
    checks: Mutex<HashMap<String, Arc<HttpHealthCheck>>>,
}

#[async_trait]
impl HealthCheck for PerEndpointHost {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let host = target.addr.to_string();
        let check = {
            let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            if checks.len() > MAX_PROBED_HOSTS {
                // endpoints come and go; forget the ones probed long ago
                checks.clear();
            }
            checks.entry(host.clone()).or_insert_with(|| Arc::new(http_check(&self.model, &host))).clone()
        };
        check.check(target).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.model.healthy_threshold
        } else {
            self.model.unhealthy_threshold
        }
    }
}

#[async_trait]
impl HealthCheck for SwappableCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        match self.inner.load_full() {
            Some(c) => c.check(target).await,
            None => Ok(()),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(endpoint = %target.addr, "endpoint passes its health check again");
        } else {
            tracing::warn!(endpoint = %target.addr, "endpoint failed its health check; no traffic until it passes");
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.load().as_ref().map_or(1, |c| c.health_threshold(success))
    }
}

/// The registry owns its check; the pool keeps a handle to swap it.
pub struct SharedCheck(pub Arc<SwappableCheck>);

#[async_trait]
impl HealthCheck for SharedCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.0.check(target).await
    }
    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.0.health_status_change(target, healthy).await
    }
    fn health_threshold(&self, success: bool) -> usize {
        self.0.health_threshold(success)
    }
}

/// Takes an endpoint out of the pool for `base × times ejected` (capped), then lets it back.
pub(super) fn eject(pool: Arc<Pool>, endpoint: &EndpointStats, outlier: &OutlierModel) {
    let times = endpoint.ejections.fetch_add(1, Relaxed) + 1;
    endpoint.ejected.store(true, Relaxed);
    let duration = outlier.base_ejection.saturating_mul(times).min(outlier.max_ejection);
    let addr = endpoint.addr;
    tracing::warn!(pool = %pool.key, endpoint = %addr, ?duration, times,
        "endpoint ejected after consecutive failures");
    pool.set_enabled(addr, false);
    let weak = Arc::downgrade(&pool);
    drop(pool);
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        let Some(pool) = weak.upgrade() else { return };
        let stats = pool.stats.lock().unwrap_or_else(|p| p.into_inner()).get(&addr).cloned();
        if let Some(s) = stats {
            s.consecutive_failures.store(0, Relaxed);
            s.ejected.store(false, Relaxed);
        }
        pool.set_enabled(addr, true);
        tracing::info!(pool = %pool.key, endpoint = %addr, "endpoint re-admitted after ejection");
    });
}
