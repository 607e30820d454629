//! The mesh gateway tier (east–west): mutual TLS between gateways with SPIFFE identities.
//!
//! Built so far: [`identity`] (SVIDs, trust bundles, the inbound acceptor and the outbound
//! client material), [`source`] (identity files, watched and rotated), [`inbound`] (the mutual-TLS
//! listener in front of a workload), [`outbound`] (Host → Service, or its HTTPRoutes → endpoint
//! → the endpoint's gateway over mutual TLS) and [`ca`] (the demo's and the tests' certificate
//! authority). Authorization, resilience and per-identity telemetry follow (issue 4).

pub mod ca;
pub mod identity;
pub mod inbound;
pub mod outbound;
pub mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::protocols::l4::listener::Listener as L4Listener;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::identity::{Credentials, OnRefusal};
use self::inbound::{InboundProxy, Workload};
use self::outbound::{server_identity_hook, Directory, OutboundProxy, OutboundSettings};
use self::source::{watch_identity, IdentityFiles, OnReload};
use crate::admin::AdminApp;
use crate::pool::PoolRegistry;
use crate::proxy::listeners::{Apps, Listeners};
use crate::snapshot::Snapshot;
use crate::source::dir::watch_dir;
use crate::telemetry::Metrics;

/// How to run a mesh gateway.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub inbound: SocketAddr,
    pub identity: IdentityFiles,
    pub workload: Workload,
    /// The outbound side, for local applications calling other Services.
    pub outbound: Option<OutboundOptions>,
    /// Admin listener: /metrics, /ready, /live.
    pub admin: SocketAddr,
}

impl MeshOptions {
    pub fn from_args(a: &crate::config::MeshArgs) -> Self {
        MeshOptions {
            inbound: a.inbound,
            identity: IdentityFiles {
                cert: a.identity_cert.clone(),
                key: a.identity_key.clone(),
                bundle: a.trust_bundle.clone(),
            },
            workload: Workload { address: a.workload_address, ports: a.workload_ports.clone() },
            admin: a.admin,
            outbound: a.config_dir.as_ref().map(|dir| OutboundOptions {
                listen: a.outbound,
                config_dir: dir.clone(),
                settings: OutboundSettings {
                    namespace: a.namespace.clone(),
                    cluster_domain: a.cluster_domain.clone(),
                    mesh_port: a.mesh_port,
                },
            }),
        }
    }
}

/// The outbound listener and where its Services come from.
#[derive(Clone, Debug)]
pub struct OutboundOptions {
    /// Plain HTTP from local applications (default 127.0.0.1:15001).
    pub listen: SocketAddr,
    /// Services, EndpointSlices (and later routes and policies) as manifests, watched.
    pub config_dir: PathBuf,
    pub settings: OutboundSettings,
}

/// A running mesh gateway.
pub struct MeshHandle {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub identity_files: IdentityFiles,
    pub metrics: Arc<Metrics>,
    pub credentials: Arc<ArcSwap<Credentials>>,
    shutdown: watch::Sender<bool>,
    inbound_task: JoinHandle<()>,
    outbound: Option<(Arc<Listeners<HttpProxy<OutboundProxy>>>, JoinHandle<()>)>,
    admin: Arc<Listeners<AdminApp>>,
}

impl MeshHandle {
    /// Stops accepting; connections already open finish on their own.
    pub fn shutdown(self) {
        self.inbound_task.abort();
        self.admin.close_all();
        if let Some((listeners, config_task)) = self.outbound {
            listeners.close_all();
            config_task.abort();
        }
        let _ = self.shutdown.send(true);
    }
}

/// Starts a mesh gateway on the current tokio runtime. Fails, saying why, if the identity
/// cannot be loaded or a listener cannot be bound.
pub async fn start_mesh(opts: MeshOptions) -> anyhow::Result<MeshHandle> {
    let pools = Arc::new(PoolRegistry::default());
    let metrics = Metrics::new(pools.clone());
    let counted = metrics.clone();
    let on_refusal: OnRefusal = Arc::new(move |r| counted.mesh_handshake_failure(r.as_str()));
    let reloads = metrics.clone();
    let on_reload: OnReload = Arc::new(move |result| match result {
        Ok(creds) => {
            reloads.mesh_identity_reloads.with_label_values(&["ok"]).inc();
            tracing::info!(identity = %creds.id, not_after = %creds.not_after, "mesh identity reloaded");
        }
        Err(e) => {
            reloads.mesh_identity_reloads.with_label_values(&["refused"]).inc();
            tracing::error!(error = %e, "mesh identity not reloaded; the previous identity keeps serving");
        }
    });
    let credentials = watch_identity(opts.identity.clone(), on_refusal, on_reload)
        .map_err(|e| anyhow::anyhow!("mesh identity: {e}"))?;
    let inbound = TcpListener::bind(opts.inbound)
        .await
        .with_context(|| format!("cannot listen on {} (the mesh inbound listener)", opts.inbound))?;
    let inbound_addr = inbound.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_rx2 = shutdown_rx.clone();
    let admin = TcpListener::bind(opts.admin)
        .await
        .with_context(|| format!("cannot listen on {} (the admin listener)", opts.admin))?;
    let admin_app = AdminApp {
        // no edge configuration here; generation 1 makes /ready say what is true: the identity is
        // loaded and the listeners are bound
        snapshot: Arc::new(ArcSwap::from_pointee(Snapshot { generation: 1, ..Snapshot::empty() })),
        metrics: metrics.clone(),
        bind_errors: Arc::new(Default::default),
    };
    let (admin_addr, admin) = crate::admin::serve(admin, admin_app, shutdown_rx.clone())?;
    let proxy = InboundProxy { workload: opts.workload.clone(), credentials: credentials.clone() };
    let mut app = HttpProxy::new(proxy, Arc::new(ServerConf::default()));
    app.handle_init_modules();
    let inbound_task = tokio::spawn(inbound::accept_loop(
        L4Listener::from(inbound),
        inbound_addr.port(),
        credentials.clone(),
        Arc::new(app),
        metrics.clone(),
        shutdown_rx,
    ));
    let outbound = match &opts.outbound {
        Some(o) => Some(start_outbound(o, pools, credentials.clone(), metrics.clone(), shutdown_rx2).await?),
        None => None,
    };
    let outbound_addr = outbound.as_ref().map(|(addr, _, _)| *addr);
    tracing::info!(%inbound_addr, ?outbound_addr, %admin_addr, identity = %credentials.load().id, "weir mesh is serving");
    Ok(MeshHandle {
        inbound_addr,
        outbound_addr,
        admin_addr,
        admin,
        identity_files: opts.identity,
        metrics,
        credentials,
        shutdown: shutdown_tx,
        inbound_task,
        outbound: outbound.map(|(_, l, t)| (l, t)),
    })
}

type Outbound = (SocketAddr, Arc<Listeners<HttpProxy<OutboundProxy>>>, JoinHandle<()>);

/// Binds the outbound listener and keeps its Service directory in step with the config dir.
async fn start_outbound(
    o: &OutboundOptions,
    pools: Arc<PoolRegistry>,
    credentials: Arc<ArcSwap<Credentials>>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownWatch,
) -> anyhow::Result<Outbound> {
    let listener = TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("cannot listen on {} (the mesh outbound listener)", o.listen))?;
    let mut store_rx = watch_dir(o.config_dir.clone())
        .with_context(|| format!("cannot read the config directory {}", o.config_dir.display()))?;
    let first = Directory::build(&store_rx.borrow().store, &pools, &metrics, &o.settings.cluster_domain);
    metrics.retire_unused_targets();
    log_rejections(&first);
    let directory = Arc::new(ArcSwap::from_pointee(first));
    let serving = directory.clone();
    let route_metrics = metrics.clone();
    let cluster_domain = o.settings.cluster_domain.clone();
    let config_task = tokio::spawn(async move {
        while store_rx.changed().await.is_ok() {
            let loaded = store_rx.borrow_and_update().clone();
            let next = Directory::build(&loaded.store, &pools, &route_metrics, &cluster_domain);
            route_metrics.retire_unused_targets();
            log_rejections(&next);
            serving.store(Arc::new(next));
        }
    });
    let conf = Arc::new(ServerConf::default());
    let apps = Apps::proxies(&conf, || OutboundProxy {
        settings: o.settings.clone(),
        metrics: metrics.clone(),
        directory: directory.clone(),
        credentials: credentials.clone(),
        handshake_hook: server_identity_hook(),
    });
    // no TLS listener here: an empty snapshot makes the shared listener plain HTTP (and h2c)
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let listeners = Arc::new(Listeners::new(apps, snapshot, metrics, shutdown));
    let addr = listeners.adopt(listener)?;
    Ok((addr, listeners, config_task))
}

fn log_rejections(d: &Directory) {
    for r in &d.rejections {
        tracing::warn!(kind = %r.kind, namespace = %r.namespace, name = %r.name, file = %r.file, "rejected: {}", r.reason);
    }
}
