//! The demo's mesh story: `checkout` calls `payments` through the mesh. Every pod runs on its own
//! loopback address with its mesh gateway beside it, identities come from a CA made at start,
//! and one payments replica fails a third of its requests.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::DefaultPolicy;
use crate::demo::ca::Ca;
use crate::demo::echo::EchoServer;
use crate::mesh::inbound::Workload;
use crate::mesh::outbound::OutboundSettings;
use crate::mesh::source::IdentityFiles;
use crate::mesh::{start_mesh, IdentitySource, MeshHandle, MeshOptions, OutboundOptions};
use crate::source::ConfigSource;
use crate::store::Store;

/// The Services the story runs itself (the demo starts no plain backend for them).
pub const SERVICES: [&str; 2] = ["checkout", "payments"];
const NAMESPACE: &str = "shop";
const TRUST_DOMAIN: &str = "cluster.local";
/// Every `fail_every`-th request to the last payments replica fails (503).
const FAIL_EVERY: u64 = 3;

/// Ports every pod's gateway uses on the pod's address (as in a cluster, where each pod has its
/// own IP and the same ports).
#[derive(Clone, Copy, Debug)]
pub struct GatewayPorts {
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
}

impl Default for GatewayPorts {
    fn default() -> Self {
        GatewayPorts { inbound: 15008, outbound: 15001, admin: 15000 }
    }
}

/// One pod: its app's address and its gateway.
pub struct Pod {
    pub app: SocketAddr,
    pub gateway: MeshHandle,
}

/// The running story.
pub struct MeshStory {
    pub checkout: Pod,
    pub payments: Vec<(Pod, EchoServer)>,
    /// What payments last reported about its caller (`x-forwarded-client-cert`).
    caller_seen: Arc<std::sync::Mutex<String>>,
    checkout_task: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

/// What a burst of user requests showed.
#[derive(Debug)]
pub struct Report {
    pub requests: u64,
    pub succeeded: u64,
    /// Tries checkout's gateway repeated on the other replica.
    pub retries: u64,
    pub budget_exhausted: u64,
    /// Per payments replica: (address, answered 2xx, answered 5xx).
    pub replicas: Vec<(SocketAddr, u64, u64)>,
    pub checkout_identity: String,
    pub payments_identity: String,
    pub caller_seen_by_payments: String,
}

fn endpoints_of(store: &Store, service: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = vec![];
    for s in store.slices_of(NAMESPACE, service) {
        let port = s.ports.iter().flatten().find_map(|p| p.port).context("an EndpointSlice without a port")?;
        for ep in &s.endpoints {
            for a in &ep.addresses {
                out.push(SocketAddr::new(a.parse::<IpAddr>()?, port as u16));
            }
        }
    }
    anyhow::ensure!(!out.is_empty(), "the manifests have no endpoints for Service {NAMESPACE}/{service}");
    Ok(out)
}

/// Writes the identity of service account `sa` for the pod at `app`, issued by `ca`, in a
/// directory of that pod's own (as each Pod mounts its own Secret volume: replicas sharing one
/// directory would see each other's files rewritten under them, half-written at times).
fn identity(dir: &Path, ca: &Ca, sa: &str, app: SocketAddr) -> anyhow::Result<IdentityFiles> {
    let d = dir.join(format!("{sa}-{}", app.ip()));
    std::fs::create_dir_all(&d)?;
    ca.write_svid(&d, &format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}"), Duration::from_secs(86_400))
}

/// How the gateway beside the workload listening on `app` runs, as in a pod: its inbound on the
/// app's IP and `inbound_port`, the workload's one port, the identity `files`, the manifests of
/// `config_dir`, admin on `admin`, every authenticated caller allowed by default, no outbound
/// side. The demo and the tests start their gateways from this.
pub fn pod_gateway(
    app: SocketAddr,
    inbound_port: u16,
    files: IdentityFiles,
    config_dir: Option<PathBuf>,
    admin: SocketAddr,
) -> MeshOptions {
    MeshOptions {
        inbound: SocketAddr::new(app.ip(), inbound_port),
        identity: IdentitySource::Files(files),
        workload: Workload { address: app.ip(), ports: vec![app.port()] },
        source: config_dir.map(ConfigSource::Dir),
        outbound: None,
        admin,
        default_policy: DefaultPolicy::AllowAuthenticated,
        tls: crate::tls::TlsPolicy::default(),
        limits: Default::default(),
    }
}

/// An outbound side on `listen` for a workload of `namespace` (cluster domain `cluster.local`),
/// its peers' gateways listening on `mesh_port`.
pub fn outbound_side(listen: SocketAddr, namespace: &str, mesh_port: u16) -> OutboundOptions {
    let settings = OutboundSettings { namespace: namespace.into(), cluster_domain: TRUST_DOMAIN.into(), mesh_port };
    OutboundOptions { listen, settings }
}

impl MeshStory {
    /// Starts checkout (app and gateway) and the payments replicas (apps and gateways) at the
    /// addresses of their EndpointSlices in `store`; the gateways read `config_dir`.
    pub async fn start(store: &Store, config_dir: &Path, ports: GatewayPorts) -> anyhow::Result<MeshStory> {
        let dir = std::env::temp_dir().join(format!("weir-demo-{}-{}", std::process::id(), ports.inbound));
        let ca = Ca::new("weir demo mesh CA")?;
        let gateway = |app: SocketAddr, sa: &str, outbound: bool| -> anyhow::Result<MeshOptions> {
            let admin = SocketAddr::new(app.ip(), ports.admin);
            let mut opts =
                pod_gateway(app, ports.inbound, identity(&dir, &ca, sa, app)?, Some(config_dir.into()), admin);
            let listen = SocketAddr::new(app.ip(), ports.outbound);
            opts.outbound = outbound.then(|| outbound_side(listen, NAMESPACE, ports.inbound));
            Ok(opts)
        };
        let mut payments = vec![];
        let replicas = endpoints_of(store, "payments")?;
        for (i, app) in replicas.iter().enumerate() {
            let echo = EchoServer::start(&format!("payments@{}", app.ip()), *app)
                .await
                .with_context(|| format!("cannot start a payments replica on {app}"))?;
            if i + 1 == replicas.len() {
                echo.fail_every(FAIL_EVERY);
            }
            let gw = start_mesh(gateway(*app, "payments", false)?).await.context("payments' gateway")?;
            payments.push((Pod { app: *app, gateway: gw }, echo));
        }
        let app = *endpoints_of(store, "checkout")?.first().expect("checked non-empty");
        let gw = start_mesh(gateway(app, "checkout", true)?).await.context("checkout's gateway")?;
        let outbound = gw.outbound_addr.expect("checkout's gateway has an outbound side");
        let caller_seen = Arc::new(std::sync::Mutex::new(String::new()));
        let listener = TcpListener::bind(app).await.with_context(|| format!("cannot start checkout on {app}"))?;
        let checkout_task = tokio::spawn(checkout_app(listener, outbound, caller_seen.clone()));
        Ok(MeshStory { checkout: Pod { app, gateway: gw }, payments, caller_seen, checkout_task, dir })
    }

    /// Sends `n` user requests to `/api/checkout` on the edge at `edge` (Host `host`) and reports
    /// what happened.
    pub async fn burst(&self, edge: SocketAddr, host: &str, n: u64) -> Report {
        let mut succeeded = 0;
        for _ in 0..n {
            succeeded += u64::from(matches!(super::get(edge, host, "/api/checkout").await, Ok((200, _))));
        }
        // payments' gateways count a request when they log it, just after answering: wait (at
        // most a second) until they have counted every request their replicas saw
        let answered = |p: &Pod| sum(&p.gateway.metrics, "weir_mesh_requests_total", &[("direction", "inbound")]);
        for _ in 0..100 {
            if self.payments.iter().all(|(p, echo)| answered(p) >= echo.requests()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }

        let co = &self.checkout.gateway;
        Report {
            requests: n,
            succeeded,
            retries: sum(&co.metrics, "weir_mesh_retries_total", &[]),
            budget_exhausted: sum(&co.metrics, "weir_mesh_retry_budget_exhausted_total", &[]),
            replicas: self
                .payments
                .iter()
                .map(|(p, _)| {
                    let labels = |c| [("direction", "inbound"), ("status_class", c)];
                    let class = |c| sum(&p.gateway.metrics, "weir_mesh_requests_total", &labels(c));
                    (p.app, class("2xx"), class("5xx"))
                })
                .collect(),
            checkout_identity: co.credentials.load().id.to_string(),
            payments_identity: self.payments[0].0.gateway.credentials.load().id.to_string(),
            caller_seen_by_payments: self.caller_seen.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    pub fn shutdown(self) {
        self.checkout_task.abort();
        self.checkout.gateway.shutdown();
        for (p, _) in self.payments {
            p.gateway.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Report {
    /// The summary `weir demo` prints.
    pub fn print(&self, story: &MeshStory) {
        let rate = self.succeeded as f64 * 100.0 / self.requests.max(1) as f64;
        println!("\nThe mesh: user -> edge /api -> checkout ({}) -> its gateway -> mutual TLS, HTTP/2 -> payments' gateways -> payments", story.checkout.app.ip());
        println!("  {} of {} user requests succeeded ({rate:.1}%)", self.succeeded, self.requests);
        for (addr, ok, failed) in &self.replicas {
            println!("  payments replica {addr}: answered {ok} ok, {failed} failed");
        }
        println!(
            "  checkout's gateway retried {} failed tries on the other replica (retry budget exhausted {} times)",
            self.retries, self.budget_exhausted
        );
        println!("  identities: checkout's gateway is {}", self.checkout_identity);
        println!("              payments' gateways are {} (checkout verified it)", self.payments_identity);
        println!("              payments saw its caller as: x-forwarded-client-cert: {}", self.caller_seen_by_payments);
        println!("  metrics: checkout's gateway http://{}/metrics", story.checkout.gateway.admin_addr);
        for (p, _) in &story.payments {
            println!("           payments' gateway http://{}/metrics", p.gateway.admin_addr);
        }
    }
}

/// Sums the samples of counter `name` whose labels include `labels`.
fn sum(metrics: &crate::telemetry::Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let name = name.strip_prefix("weir_").unwrap_or(name);
    metrics
        .registry
        .gather()
        .iter()
        .filter(|f| f.name().strip_prefix("weir_").unwrap_or(f.name()) == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
        .map(|m| m.get_counter().value() as u64)
        .sum()
}

/// The checkout app: every request charges payments (through the gateway at `outbound`), and
/// succeeds if the charge does.
async fn checkout_app(listener: TcpListener, outbound: SocketAddr, caller_seen: Arc<std::sync::Mutex<String>>) {
    let orders = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (orders, caller_seen) = (orders.clone(), caller_seen.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_req: hyper::Request<Incoming>| {
                let order = orders.fetch_add(1, Relaxed) + 1;
                let caller_seen = caller_seen.clone();
                async move {
                    let (status, body) = match charge(outbound, order).await {
                        Ok((200, payment)) => {
                            let xfcc = payment["headers"]["x-forwarded-client-cert"].as_str().unwrap_or("").to_string();
                            *caller_seen.lock().unwrap_or_else(|p| p.into_inner()) = xfcc;
                            (200, serde_json::json!({"order": order, "paid": true, "payments": payment["name"]}))
                        }
                        Ok((status, _)) => {
                            (502, serde_json::json!({"order": order, "paid": false, "payments_status": status}))
                        }
                        Err(e) => (502, serde_json::json!({"order": order, "paid": false, "error": e.to_string()})),
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .header("x-echo-name", "checkout")
                        .body(Full::new(Bytes::from(body.to_string())))
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// `POST /charge` to payments through checkout's gateway; the status and payments' JSON answer.
async fn charge(outbound: SocketAddr, order: u64) -> anyhow::Result<(u16, serde_json::Value)> {
    let stream = tokio::net::TcpStream::connect(outbound).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post("/charge")
        .header("host", "payments")
        .header("idempotency-key", format!("order-{order}"))
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}
