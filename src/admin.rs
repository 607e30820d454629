//! The admin listener: `/metrics`, `/ready`, `/live`, `/config_dump`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::proxy::listeners::{Apps, Listeners};
use crate::snapshot::{Action, Snapshot};
use crate::source::kubernetes::{WatchState, WatchStates};
use crate::telemetry::Metrics;

/// Serves the admin endpoints.
pub struct AdminApp {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// Listener addresses that could not be bound, with why.
    pub bind_errors: Arc<dyn Fn() -> BTreeMap<SocketAddr, String> + Send + Sync>,
    /// The Kubernetes source's watches (none for a directory).
    pub watches: WatchStates,
}

/// Serves the admin endpoints on `listener` until `shutdown`; returns the bound address and the
/// listener set (to close it).
pub fn serve(
    listener: tokio::net::TcpListener,
    app: AdminApp,
    shutdown: pingora::server::ShutdownWatch,
) -> std::io::Result<(std::net::SocketAddr, Arc<Listeners<AdminApp>>)> {
    let (snapshot, metrics) = (app.snapshot.clone(), app.metrics.clone());
    let app = Arc::new(app);
    let listeners = Arc::new(Listeners::new(Apps { http1: app.clone(), h2c: app }, snapshot, metrics, shutdown));
    let addr = listeners.adopt(listener)?;
    Ok((addr, listeners))
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

/// The whole running configuration as JSON: listeners with their routes and certificates,
/// pools with endpoint health, and every rejected object with its reason.
pub fn config_dump(snap: &Snapshot, bind_errors: &BTreeMap<SocketAddr, String>, watches: &[WatchState]) -> Value {
    let mut listeners: Vec<_> = snap.listeners.values().collect();
    listeners.sort_by_key(|l| l.addr.port());
    let listeners: Vec<Value> = listeners
        .into_iter()
        .map(|l| {
            let hosts: Vec<Value> = l
                .router
                .virtual_hosts()
                .iter()
                .map(|vh| {
                    let routes: Vec<Value> = vh
                        .rules
                        .iter()
                        .map(|r| {
                            let m = &r.matcher;
                            let action = match &r.action.kind {
                                Action::Forward { targets, .. } => json!({
                                    "forward": targets.iter().map(|t| json!({
                                        "backend": t.name,
                                        "available": t.pool.is_some(),
                                    })).collect::<Vec<_>>()
                                }),
                                Action::Redirect { redirect: rd, .. } => json!({"redirect": {
                                    "scheme": rd.scheme, "hostname": rd.hostname, "port": rd.port, "status": rd.status,
                                }}),
                            };
                            json!({
                                "route": r.action.name,
                                "path": m.path.display(),
                                "method": m.method.as_ref().map(|x| x.to_string()),
                                "headers": m.headers.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
                                "query": m.query.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                                "action": action,
                            })
                        })
                        .collect();
                    json!({"host": vh.pattern.display(), "routes": routes})
                })
                .collect();
            json!({
                "name": l.name,
                "address": l.addr.to_string(),
                "protocol": l.protocol,
                "bindError": bind_errors.get(&l.addr),
                "certificates": l.certs.listing.iter().map(|(hosts, secret, not_after)| json!({
                    "hosts": hosts, "secret": secret, "notAfter": not_after,
                })).collect::<Vec<_>>(),
                "virtualHosts": hosts,
            })
        })
        .collect();
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|(key, pool)| {
            let spec = pool.spec();
            json!({
                "name": key.to_string(),
                "protocol": spec.protocol,
                "algorithm": format!("{:?}", spec.policy.algorithm),
                "healthCheck": spec.policy.health_check.as_ref().map(|h| format!("{h:?}")),
                "endpoints": pool.status(),
                "terminating": spec.endpoints.iter().filter(|e| e.terminating).map(|e| e.addr.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "listeners": listeners,
        "pools": pools,
        "rejections": &*snap.rejections,
        "statuses": &*snap.statuses,
        "watches": watches,
    })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = &session.req_header().method;
        if method != http::Method::GET && method != http::Method::HEAD {
            let mut r = reply(405, "text/plain", b"the admin endpoints are read-only: GET or HEAD\n".to_vec());
            r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => reply(200, "text/plain; version=0.0.4", self.metrics.encode().into_bytes()),
            "/live" => reply(200, "text/plain", b"live\n".to_vec()),
            "/ready" => {
                if self.snapshot.load().generation > 0 {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(503, "text/plain", b"no configuration loaded yet\n".to_vec())
                }
            }
            "/config_dump" => {
                let dump = config_dump(&self.snapshot.load(), &(self.bind_errors)(), &self.watches.load());
                reply(200, "application/json", serde_json::to_vec_pretty(&dump).unwrap_or_default())
            }
            _ => reply(404, "text/plain", b"admin endpoints: /metrics /ready /live /config_dump\n".to_vec()),
        }
    }
}
