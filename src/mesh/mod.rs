//! The mesh gateway tier (east–west): mutual TLS between gateways with SPIFFE identities.
//!
//! Built so far: [`identity`] (SVIDs, trust bundles, the inbound acceptor and the outbound
//! client material), [`source`] (identity files, watched and rotated), [`inbound`] (the mutual-TLS
//! listener in front of a workload) and [`ca`] (the demo's and the tests' certificate
//! authority). The outbound listener, mesh routing, authorization and resilience follow (issue 4).

pub mod ca;
pub mod identity;
pub mod inbound;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::protocols::l4::listener::Listener as L4Listener;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::identity::{Credentials, OnRefusal};
use self::inbound::{InboundProxy, Workload};
use self::source::{watch_identity, IdentityFiles, OnReload};
use crate::pool::PoolRegistry;
use crate::telemetry::Metrics;

/// Default address of the inbound (mutual TLS) listener.
pub const DEFAULT_INBOUND: &str = "0.0.0.0:15008";

/// How to run a mesh gateway.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub inbound: SocketAddr,
    pub identity: IdentityFiles,
    pub workload: Workload,
}

/// A running mesh gateway.
pub struct MeshHandle {
    pub inbound_addr: SocketAddr,
    pub identity_files: IdentityFiles,
    pub metrics: Arc<Metrics>,
    pub credentials: Arc<ArcSwap<Credentials>>,
    shutdown: watch::Sender<bool>,
    inbound_task: JoinHandle<()>,
}

impl MeshHandle {
    /// Stops accepting; connections already open finish on their own.
    pub fn shutdown(self) {
        self.inbound_task.abort();
        let _ = self.shutdown.send(true);
    }
}

/// Starts a mesh gateway on the current tokio runtime. Fails, saying why, if the identity
/// cannot be loaded or a listener cannot be bound.
pub async fn start_mesh(opts: MeshOptions) -> anyhow::Result<MeshHandle> {
    let metrics = Metrics::new(Arc::new(PoolRegistry::default()));
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
    tracing::info!(%inbound_addr, identity = %credentials.load().id, "weir mesh inbound is serving");
    Ok(MeshHandle {
        inbound_addr,
        identity_files: opts.identity,
        metrics,
        credentials,
        shutdown: shutdown_tx,
        inbound_task,
    })
}
