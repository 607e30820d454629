//! The mesh gateway tier (east–west): mutual TLS between gateways with SPIFFE identities.
//!
//! [`identity`] (SVIDs, trust bundles, the inbound acceptor and the outbound client material),
//! [`source`] (identity files, watched and rotated), [`inbound`] (the mutual-TLS listener in front
//! of a workload), [`authz`] (which callers may reach a Service), [`outbound`] (Host → Service, or
//! its HTTPRoutes → endpoint → the endpoint's gateway over mutual TLS, with retries, timeouts and
//! circuit breaking from `crate::resilience` and the pools). The demo's and the tests'
//! certificate authority is `crate::demo::ca`.

pub mod authz;
pub mod identity;
pub mod inbound;
pub mod outbound;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::authz::{Authorizer, GatewayPolicy};
use self::identity::{Credentials, OnRefusal};
use self::inbound::{InboundProxy, Workload};
use self::outbound::{server_identity_hook, Directory, OutboundProxy, OutboundSettings};
use self::source::{watch_identity, IdentityFiles, OnReload, Reload, SecretIdentity};
use crate::admin::AdminApp;
use crate::config::DefaultPolicy;
use crate::pool::PoolRegistry;
use crate::proxy::drain::Drain;
use crate::proxy::listeners::{Apps, ClientLimits, Listeners, Socket};
use crate::snapshot::Snapshot;
use crate::source::dir::{watch_dir, Loaded};
use crate::source::kubernetes::{watch_kubernetes, WatchStates};
use crate::source::ConfigSource;
use crate::store::{Rejection, Store};
use crate::telemetry::Metrics;
use crate::translate::{self, build_keeping_last_good};

/// How long `--source kubernetes` may take to list everything (the identity Secret among it)
/// before the gateway gives up starting.
pub const FIRST_SYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// Where the workload's identity comes from.
#[derive(Clone, Debug)]
pub enum IdentitySource {
    /// Three PEM files, watched.
    Files(IdentityFiles),
    /// A Secret `(namespace, name)` of the source: `tls.crt`, `tls.key`, `ca.crt`.
    Secret(String, String),
}

/// How to run a mesh gateway.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub inbound: SocketAddr,
    pub identity: IdentitySource,
    pub workload: Workload,
    /// Where Services, EndpointSlices, HTTPRoutes, BackendPolicies and MeshAuthorizations come
    /// from: a directory of manifests or the API server, watched. Without one no authorization
    /// policy applies (every authenticated caller of our trust domain is allowed) and there is
    /// no outbound side.
    pub source: Option<ConfigSource>,
    /// The outbound side, for local applications calling other Services (needs `source`).
    pub outbound: Option<OutboundOptions>,
    /// Admin listener: /metrics, /ready, /live.
    pub admin: SocketAddr,
    /// What a request gets when no MeshAuthorization applies (`--default-policy`).
    pub default_policy: DefaultPolicy,
    /// The inbound listener's TLS policy (`--tls-min-version`, `--tls-ciphers`).
    pub tls: crate::tls::TlsPolicy,
    /// What the inbound and outbound listeners hold their clients to (`--max-request-head` ...).
    pub limits: ClientLimits,
}

impl MeshOptions {
    /// The options `weir mesh` was given; fails, saying what to fix, on an identity given
    /// neither as files nor as a Secret.
    pub fn from_args(a: &crate::config::MeshArgs) -> anyhow::Result<Self> {
        let source = a.source.optional_source()?;
        anyhow::ensure!(
            a.identity_secret.is_none() || source.is_some(),
            "--identity-secret names a Secret of the source: give --config-dir or --source kubernetes"
        );
        let identity = match (&a.identity_secret, &a.identity_cert, &a.identity_key, &a.trust_bundle) {
            (Some(secret), None, None, None) => {
                let (ns, name) = secret.split_once('/').filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                    .ok_or_else(|| anyhow::anyhow!("--identity-secret {secret:?}: write it as <namespace>/<name>"))?;
                IdentitySource::Secret(ns.into(), name.into())
            }
            (None, Some(cert), Some(key), Some(bundle)) => {
                IdentitySource::Files(IdentityFiles { cert: cert.clone(), key: key.clone(), bundle: bundle.clone() })
            }
            _ => anyhow::bail!(
                "give the identity either as --identity-cert, --identity-key and --trust-bundle (PEM files) or as --identity-secret <namespace>/<name> (a Secret of --config-dir or of the API server)"
            ),
        };
        Ok(MeshOptions {
            inbound: a.inbound,
            identity,
            workload: Workload { address: a.workload_address, ports: a.workload_ports.clone() },
            admin: a.admin,
            default_policy: a.default_policy,
            tls: a.tls.policy(),
            limits: a.limits.limits(),
            outbound: source.as_ref().map(|_| OutboundOptions {
                listen: a.outbound,
                settings: OutboundSettings {
                    namespace: a.namespace.clone(),
                    cluster_domain: a.cluster_domain.clone(),
                    mesh_port: a.mesh_port,
                },
            }),
            source,
        })
    }
}

/// The outbound listener and where its Services come from.
#[derive(Clone, Debug)]
pub struct OutboundOptions {
    /// Plain HTTP from local applications (default 127.0.0.1:15001).
    pub listen: SocketAddr,
    pub settings: OutboundSettings,
}

/// A running mesh gateway.
pub struct MeshHandle {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The identity's files (`None` when it comes from a Secret).
    pub identity_files: Option<IdentityFiles>,
    pub metrics: Arc<Metrics>,
    pub credentials: Arc<ArcSwap<Credentials>>,
    shutdown: watch::Sender<bool>,
    inbound_task: JoinHandle<()>,
    outbound: Option<Arc<Listeners<HttpProxy<OutboundProxy>>>>,
    config_task: Option<JoinHandle<()>>,
    admin: Arc<Listeners<AdminApp>>,
    /// Requests in flight on both sides, for draining.
    drain: Drain,
}

impl MeshHandle {
    /// Stops accepting, then waits for the requests in flight (inbound and outbound) to finish,
    /// at most `grace`, as `weir edge` does. Returns the requests still in flight.
    pub async fn drain(self, grace: std::time::Duration) -> usize {
        let drain = self.drain.clone();
        self.shutdown();
        drain.wait(grace).await
    }

    /// Stops accepting; connections already open finish on their own.
    pub fn shutdown(self) {
        self.inbound_task.abort();
        self.admin.close_all();
        if let Some(listeners) = self.outbound {
            listeners.close_all();
        }
        if let Some(task) = self.config_task {
            task.abort();
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
        Reload::Loaded(creds) => {
            reloads.mesh_identity_reloads.with_label_values(&["ok"]).inc();
            tracing::info!(identity = %creds.id, not_after = %creds.not_after, "mesh identity reloaded");
        }
        Reload::Unchanged => reloads.mesh_identity_reloads.with_label_values(&["unchanged"]).inc(),
        Reload::Refused(e) => {
            reloads.mesh_identity_reloads.with_label_values(&["refused"]).inc();
            tracing::error!(error = %e, "mesh identity not reloaded; the previous identity keeps serving");
        }
    });
    let watches = WatchStates::default();
    let store_rx = match &opts.source {
        Some(ConfigSource::Dir(dir)) => Some(
            watch_dir(dir.clone()).with_context(|| format!("cannot read the config directory {}", dir.display()))?,
        ),
        Some(ConfigSource::Kubernetes(k)) => {
            let mut k = k.clone();
            if let IdentitySource::Secret(ns, name) = &opts.identity {
                // read by name, whatever its type
                k.secrets.push((ns.clone(), name.clone()));
            }
            let mut rx = watch_kubernetes(&k, metrics.clone(), watches.clone()).await?;
            // the identity (and the policies) come from the first full list
            let synced = tokio::time::timeout(FIRST_SYNC, rx.wait_for(|l| l.synced)).await.is_ok_and(|r| r.is_ok());
            anyhow::ensure!(
                synced,
                "the API server was not fully listed within {FIRST_SYNC:?} (see the watch errors above); the mesh gateway needs its identity and policies from it"
            );
            Some(rx)
        }
        None => None,
    };
    let (credentials, secret) = match &opts.identity {
        IdentitySource::Files(files) => (watch_identity(files.clone(), opts.tls.clone(), on_refusal, on_reload), None),
        IdentitySource::Secret(ns, name) => {
            let store = store_rx.as_ref().map(|rx| rx.borrow().store.clone()).unwrap_or_default();
            match SecretIdentity::load(&store, ns, name, opts.tls.clone(), on_refusal, on_reload) {
                Ok(s) => (Ok(s.current()), Some(s)),
                Err(e) => (Err(e), None),
            }
        }
    };
    let credentials = credentials.map_err(|e| anyhow::anyhow!("mesh identity: {e}"))?;
    let inbound = TcpListener::bind(opts.inbound)
        .await
        .with_context(|| format!("cannot listen on {} (the mesh inbound listener)", opts.inbound))?;
    let inbound_addr = inbound.local_addr()?;
    let inbound = Socket::new(inbound, inbound_addr, opts.limits.max_connections);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_rx2 = shutdown_rx.clone();
    let admin = TcpListener::bind(opts.admin)
        .await
        .with_context(|| format!("cannot listen on {} (the admin listener)", opts.admin))?;
    // no edge configuration here: the dump holds the mesh's rejections and conditions; generation
    // 1 makes /ready say what is true: the identity is loaded and the listeners are bound
    let dump = Arc::new(ArcSwap::from_pointee(Snapshot { generation: 1, ..Snapshot::empty() }));
    let admin_app =
        AdminApp { snapshot: dump.clone(), metrics: metrics.clone(), bind_errors: Arc::new(Default::default), watches };
    let (admin_addr, admin) = crate::admin::serve(admin, admin_app, shutdown_rx.clone())?;
    let config = watch_config(&opts, store_rx, secret, pools, &metrics, &credentials, dump)?;
    let drain = Drain::default();
    let proxy = InboundProxy {
        workload: opts.workload.clone(),
        credentials: credentials.clone(),
        authorizer: config.authorizer.clone(),
        metrics: metrics.clone(),
        drain: drain.clone(),
    };
    let mut app = HttpProxy::new(proxy, Arc::new(ServerConf::default()));
    opts.limits.apply(&mut app, false);
    app.handle_init_modules();
    let inbound_task =
        tokio::spawn(inbound::accept_loop(inbound, credentials.clone(), Arc::new(app), metrics.clone(), shutdown_rx));
    let outbound = match &opts.outbound {
        Some(o) => {
            let directory = config.directory.clone();
            let (credentials, metrics) = (credentials.clone(), metrics.clone());
            Some(start_outbound(o, &opts.limits, directory, credentials, metrics, drain.clone(), shutdown_rx2).await?)
        }
        None => None,
    };
    let outbound_addr = outbound.as_ref().map(|(addr, _)| *addr);
    tracing::info!(%inbound_addr, ?outbound_addr, %admin_addr, identity = %credentials.load().id, "weir mesh is serving");
    Ok(MeshHandle {
        inbound_addr,
        outbound_addr,
        admin_addr,
        admin,
        identity_files: match opts.identity {
            IdentitySource::Files(f) => Some(f),
            IdentitySource::Secret(..) => None,
        },
        metrics,
        credentials,
        shutdown: shutdown_tx,
        inbound_task,
        outbound: outbound.map(|(_, l)| l),
        config_task: config.task,
        drain,
    })
}

/// What the source feeds: the outbound side's Services and the inbound side's authorization.
struct Config {
    directory: Arc<ArcSwap<Directory>>,
    authorizer: Arc<ArcSwap<Authorizer>>,
    task: Option<JoinHandle<()>>,
}

/// Reads the source (if any) and keeps the directory and the authorizer in step with it.
fn watch_config(
    opts: &MeshOptions,
    store_rx: Option<watch::Receiver<Loaded>>,
    mut secret: Option<SecretIdentity>,
    pools: Arc<PoolRegistry>,
    metrics: &Arc<Metrics>,
    credentials: &Arc<ArcSwap<Credentials>>,
    dump: Arc<ArcSwap<Snapshot>>,
) -> anyhow::Result<Config> {
    let directory = Arc::new(ArcSwap::from_pointee(Directory::default()));
    // the workload and the default; the gateway's own ID is read at each build (it may rotate)
    let gateway_now = GatewayPolicy {
        own_id: credentials.load().id.to_string(),
        workload: Some(opts.workload.address),
        default: opts.default_policy,
    };
    let empty = Authorizer::compile(&Default::default(), credentials.load().id.trust_domain(), &gateway_now);
    let authorizer = Arc::new(ArcSwap::from_pointee(empty));
    let Some(mut store_rx) = store_rx else {
        anyhow::ensure!(
            opts.outbound.is_none(),
            "the mesh outbound side needs a source (--config-dir or --source kubernetes)"
        );
        return Ok(Config { directory, authorizer, task: None });
    };
    let outbound_settings = opts.outbound.as_ref().map(|o| o.settings.clone());
    let (metrics, credentials) = (metrics.clone(), credentials.clone());
    let (directory_w, authorizer_w) = (directory.clone(), authorizer.clone());
    let mut previous = Store::default();
    let mut apply = move |store: Arc<Store>| {
        if let Some(secret) = &mut secret {
            secret.update(&store);
        }
        let store = Arc::unwrap_or_clone(store);
        // translation is pure, so keeping the last good version may run it twice; what serves
        // is compiled once, from the model kept
        let namespace = outbound_settings.as_ref().map(|o| o.namespace.as_str());
        let (served, model) = build_keeping_last_good(store, &previous, |s| translate::mesh::translate(s, namespace));
        previous = served;
        let generation = dump.load().generation + 1;
        let (rejections, statuses) = (Arc::new(model.rejections.clone()), Arc::new(model.statuses.clone()));
        dump.store(Arc::new(Snapshot { generation, rejections, statuses, ..Snapshot::empty() }));
        metrics.rejected_objects.set(model.rejections.len() as i64);
        log_rejections(&model.rejections);
        let id = credentials.load().id.clone();
        let gateway = GatewayPolicy { own_id: id.to_string(), ..gateway_now.clone() };
        authorizer_w.store(Arc::new(Authorizer::compile(&model.authorization, id.trust_domain(), &gateway)));
        if let Some(o) = &outbound_settings {
            directory_w.store(Arc::new(Directory::compile(&model, &pools, &metrics, o, id.as_str())));
            metrics.retire_unused_targets();
        }
    };
    apply(store_rx.borrow().store.clone());
    let task = tokio::spawn(async move {
        while store_rx.changed().await.is_ok() {
            let loaded = store_rx.borrow_and_update().clone();
            apply(loaded.store);
        }
    });
    Ok(Config { directory, authorizer, task: Some(task) })
}

/// Binds the outbound listener, serving the Services of `directory`.
async fn start_outbound(
    o: &OutboundOptions,
    limits: &ClientLimits,
    directory: Arc<ArcSwap<Directory>>,
    credentials: Arc<ArcSwap<Credentials>>,
    metrics: Arc<Metrics>,
    drain: Drain,
    shutdown: ShutdownWatch,
) -> anyhow::Result<(SocketAddr, Arc<Listeners<HttpProxy<OutboundProxy>>>)> {
    let listener = TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("cannot listen on {} (the mesh outbound listener)", o.listen))?;
    let conf = Arc::new(ServerConf::default());
    let apps = Apps::proxies(&conf, limits, || OutboundProxy {
        settings: o.settings.clone(),
        metrics: metrics.clone(),
        directory: directory.clone(),
        credentials: credentials.clone(),
        handshake_hook: server_identity_hook(),
        drain: drain.clone(),
    });
    // no TLS listener here: an empty snapshot makes the shared listener plain HTTP (and h2c)
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let listeners =
        Arc::new(Listeners::new(apps, snapshot, metrics, shutdown).with_max_connections(limits.max_connections));
    let addr = listeners.adopt(listener)?;
    Ok((addr, listeners))
}

fn log_rejections(rejections: &[Rejection]) {
    for r in rejections {
        tracing::warn!(kind = %r.kind, namespace = %r.namespace, name = %r.name, file = %r.file, "rejected: {}", r.reason);
    }
}
