//! Wiring: listeners, the Pingora proxy, the config loop and the admin listener.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminApp;
use crate::config::ListenArgs;
use crate::pool::PoolRegistry;
use crate::proxy::drain::Drain;
use crate::proxy::listeners::{Apps, ClientLimits, Listeners};
use crate::proxy::EdgeProxy;
use crate::snapshot::{compile, Snapshot};
use crate::source::dir::{watch_dir, Loaded};
use crate::source::kubernetes::{watch_kubernetes, WatchStates};
use crate::source::ConfigSource;
use crate::status::leader::spawn_leader;
use crate::status::writer::{spawn_writer, StatusInput, StatusInputs};
use crate::status::{StatusContext, StatusOptions};
use crate::store::{Rejection, Store};
use crate::telemetry::{AccessLogFormat, Metrics};
use crate::translate::{build_keeping_last_good, pools_only, translate, PoolKey, TranslateOptions};

/// What `weir edge` runs.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    pub source: ConfigSource,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub gateway_address: IpAddr,
    /// `--gateway-addresses`: a pool each Gateway gets an address of its own from.
    pub gateway_addresses: Vec<ipnet::IpNet>,
    pub admin: SocketAddr,
    pub ingress_class: String,
    /// `controllerName` of the GatewayClasses served.
    pub controller_name: String,
    pub watch_ingress_without_class: bool,
    pub access_log: Option<AccessLogFormat>,
    /// With `--source kubernetes`: how status is written, by the replica holding the Lease
    /// (`None`: nothing is written).
    pub status: Option<StatusOptions>,
    /// `--tls-min-version`, `--tls-ciphers`: every TLS listener's and certificate's policy.
    pub tls: crate::tls::TlsPolicy,
    /// What each listener holds its clients to (`--max-request-head`, `--max-connections`, ...).
    pub limits: ClientLimits,
}

impl EdgeOptions {
    /// Everything on loopback with OS-assigned ports: for tests and local tries.
    pub fn local(config_dir: impl Into<PathBuf>) -> Self {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        EdgeOptions {
            source: ConfigSource::Dir(config_dir.into()),
            http: any,
            https: any,
            gateway_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            gateway_addresses: vec![],
            admin: any,
            ingress_class: crate::config::DEFAULT_INGRESS_CLASS.into(),
            controller_name: crate::translate::gateway::GATEWAY_CONTROLLER.into(),
            watch_ingress_without_class: false,
            access_log: None,
            status: None,
            tls: crate::tls::TlsPolicy::default(),
            limits: ClientLimits::default(),
        }
    }

    pub fn from_args(source: ConfigSource, a: &ListenArgs) -> Self {
        EdgeOptions {
            source,
            http: a.http,
            https: a.https,
            gateway_address: a.gateway_address,
            gateway_addresses: a.gateway_addresses.clone(),
            admin: a.admin,
            ingress_class: a.ingress_class.clone(),
            controller_name: a.controller_name.clone(),
            watch_ingress_without_class: a.watch_ingress_without_class,
            access_log: a.access_log,
            status: None,
            tls: a.tls.policy(),
            limits: a.limits.limits(),
        }
    }
}

/// A running edge.
pub struct EdgeHandle {
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    snapshot: Arc<ArcSwap<Snapshot>>,
    shutdown: watch::Sender<bool>,
    proxy_listeners: Arc<Listeners<HttpProxy<EdgeProxy>>>,
    admin_listeners: Arc<Listeners<AdminApp>>,
    config_task: JoinHandle<()>,
    /// The Lease loop and the status writer, with `--source kubernetes`.
    status_tasks: Vec<JoinHandle<()>>,
    drain: Drain,
}

impl EdgeHandle {
    /// Generation of the snapshot serving traffic (0 before the first).
    pub fn generation(&self) -> u64 {
        self.snapshot.load().generation
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Stops accepting and tells open connections to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.config_task.abort();
        for t in &self.status_tasks {
            t.abort();
        }
        self.proxy_listeners.close_all();
        self.admin_listeners.close_all();
    }

    /// Stops accepting, then waits for the requests in flight to finish, at most `grace`.
    /// Responses sent meanwhile say `Connection: close`; idle keep-alive connections close
    /// when the process exits, as nginx's graceful shutdown does. Returns the requests still
    /// in flight.
    pub async fn drain(self, grace: std::time::Duration) -> usize {
        let drain = self.drain.clone();
        self.shutdown().await;
        drain.wait(grace).await
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} listener; pick another address with --{what}"))
}

/// Starts the edge on the current (multi-thread) tokio runtime.
pub async fn start_edge(opts: EdgeOptions) -> anyhow::Result<EdgeHandle> {
    let http = bind(opts.http, "http").await?;
    let https = bind(opts.https, "https").await?;
    let admin = bind(opts.admin, "admin").await?;
    let translate_opts = TranslateOptions {
        ingress_http: http.local_addr()?,
        ingress_https: https.local_addr()?,
        gateway_address: opts.gateway_address,
        gateway_addresses: opts.gateway_addresses.clone(),
        ingress_class: opts.ingress_class.clone(),
        controller_name: opts.controller_name.clone(),
        watch_ingress_without_class: opts.watch_ingress_without_class,
        tls: opts.tls.clone(),
    };
    let pools = Arc::new(PoolRegistry::default());
    let metrics = Metrics::new(pools.clone());
    let watches = WatchStates::default();
    let store_rx = match &opts.source {
        ConfigSource::Dir(dir) => {
            watch_dir(dir.clone()).with_context(|| format!("cannot read the config directory {}", dir.display()))?
        }
        ConfigSource::Kubernetes(k) => watch_kubernetes(k, metrics.clone(), watches.clone()).await?,
    };

    let (status, status_tasks) = match (&opts.source, &opts.status) {
        (ConfigSource::Kubernetes(k), Some(status)) => {
            let client = k.client().await?;
            let (leading, lease_task) = spawn_leader(client.clone(), status.leader.clone(), metrics.clone());
            let (tx, rx) = watch::channel(None);
            let ctx = StatusContext {
                gateway_address: Some(opts.gateway_address),
                publish_service: status.publish_service.clone(),
                publish_addresses: status.publish_addresses.clone(),
                own_addresses: !opts.gateway_addresses.is_empty(),
                controller_name: opts.controller_name.clone(),
            };
            let writer = spawn_writer(client, ctx, rx, leading, metrics.clone());
            (Some(tx), vec![lease_task, writer])
        }
        _ => (None, vec![]),
    };

    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let conf = Arc::new(ServerConf::default());
    let drain = Drain::default();
    let apps = Apps::proxies(&conf, &opts.limits, || EdgeProxy {
        snapshot: snapshot.clone(),
        access_log: opts.access_log.is_some(),
        drain: drain.clone(),
    });
    let proxy_listeners = Arc::new(
        Listeners::new(apps, snapshot.clone(), metrics.clone(), shutdown_rx.clone())
            .with_tls(opts.tls.clone())
            .with_max_connections(opts.limits.max_connections),
    );
    let http_addr = proxy_listeners.adopt(http)?;
    let https_addr = proxy_listeners.adopt(https)?;

    let mut config = ConfigLoop {
        opts: translate_opts,
        pools,
        metrics: metrics.clone(),
        snapshot: snapshot.clone(),
        listeners: proxy_listeners.clone(),
        previous_rejections: BTreeSet::new(),
        previous_store: Store::default(),
        previous_loaded: None,
        status,
    };
    let first = store_rx.borrow().clone();
    config.apply(first).await;
    let config_task = tokio::spawn(config.run(store_rx));

    let errors_from = proxy_listeners.clone();
    let admin_app = AdminApp {
        snapshot: snapshot.clone(),
        metrics: metrics.clone(),
        bind_errors: Arc::new(move || errors_from.bind_errors.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        watches,
    };
    let (admin_addr, admin_listeners) = crate::admin::serve(admin, admin_app, shutdown_rx)?;
    tracing::info!(%http_addr, %https_addr, %admin_addr, source = %opts.source, "weir edge is serving");
    Ok(EdgeHandle {
        http_addr,
        https_addr,
        admin_addr,
        snapshot,
        shutdown: shutdown_tx,
        proxy_listeners,
        admin_listeners,
        config_task,
        status_tasks,
        drain,
    })
}

/// Turns each loaded store into a published snapshot.
struct ConfigLoop {
    opts: TranslateOptions,
    pools: Arc<PoolRegistry>,
    metrics: Arc<Metrics>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: Arc<Listeners<HttpProxy<EdgeProxy>>>,
    previous_rejections: BTreeSet<Rejection>,
    /// The store the serving snapshot was built from, after last-good substitutions, with the
    /// current EndpointSlices.
    previous_store: Store,
    /// The store as loaded, once a snapshot serves it: a change to EndpointSlices only goes
    /// to the pools directly.
    previous_loaded: Option<Arc<Store>>,
    /// Where the status writer takes each served model's statuses from.
    status: Option<watch::Sender<Option<StatusInput>>>,
}

impl ConfigLoop {
    async fn run(mut self, mut rx: watch::Receiver<Loaded>) {
        while rx.changed().await.is_ok() {
            let loaded = rx.borrow_and_update().clone();
            self.apply(loaded).await;
        }
    }

    async fn apply(&mut self, loaded: Loaded) {
        if !loaded.synced {
            // the source has not read everything yet: serving part of it would answer 404s
            return;
        }
        if let Some(previous) = self.previous_loaded.as_ref().filter(|p| p.same_but_endpoints(&loaded.store)) {
            // endpoints moved: the pools take them in place, and the next generation shares
            // every compiled route
            let current = self.snapshot.load_full();
            // only the pools of the Services whose slices changed
            let changed = loaded.store.services_with_changed_endpoints(previous);
            let keys = changed.iter().flat_map(|(namespace, service)| {
                let port = |port| PoolKey { namespace: namespace.clone(), service: service.clone(), port };
                current.pools.range(port(0)..=port(u16::MAX)).map(|(k, _)| k)
            });
            let moved = self.pools.refresh(&pools_only(&loaded.store, keys));
            // the last-good store follows the slices too: kept at their old versions, every
            // slice that ever changed would stay in memory twice
            self.previous_store.set_endpoints_from(&loaded.store);
            self.previous_loaded = Some(loaded.store);
            if !moved {
                // no pool's endpoints changed (a slice of no Service served, a field weir does
                // not read): nothing is published
                return;
            }
            let snap = current.with_new_endpoints();
            self.metrics.config_generation.set(snap.generation as i64);
            self.snapshot.store(Arc::new(snap));
            self.metrics.config_endpoint_updates.inc();
            self.metrics.config_apply_seconds.observe(loaded.changed_at.elapsed().as_secs_f64());
            return;
        }
        let started = Instant::now();
        let loaded_store = loaded.store;
        let (store, model) =
            build_keeping_last_good((*loaded_store).clone(), &self.previous_store, |s| translate(s, &self.opts));
        self.metrics.translate_seconds.observe(started.elapsed().as_secs_f64());
        let current = self.snapshot.load_full();
        let routes = |m: &crate::translate::Model| m.listeners.values().map(|l| l.routes.len()).sum::<usize>();
        let had_routes = current.listeners.values().any(|l| l.router.rule_count() > 0);
        // a source that could not read some of its objects (a file that does not parse) and
        // is left with no valid route keeps the last good configuration whole; a source that
        // read everything is taken at its word (the last route deleted, the only one left
        // refused by its Gateway: its status must say so)
        let unreadable = !store.source_errors.is_empty();
        if unreadable && routes(&model) == 0 && had_routes && !model.rejections.is_empty() {
            tracing::error!(
                rejected = model.rejections.len(),
                "no object of the new configuration is valid; the last good configuration keeps serving"
            );
            for r in &model.rejections {
                tracing::error!("{r}");
            }
            return;
        }
        let rejections: BTreeSet<Rejection> = model.rejections.iter().cloned().collect();
        for r in rejections.difference(&self.previous_rejections) {
            tracing::warn!(kind = %r.kind, namespace = %r.namespace, name = %r.name, file = %r.file, "rejected: {}", r.reason);
        }
        self.previous_rejections = rejections;
        self.previous_store = store;
        if let Some(status) = &self.status {
            // MeshAuthorizations are the mesh's to judge: the same translation its gateways run
            let mut statuses = model.statuses.clone();
            let mesh = crate::translate::mesh::translate(&loaded_store, None).statuses;
            statuses.0.extend(mesh.0.into_iter().filter(|((kind, _, _), _)| kind == "MeshAuthorization"));
            // status never reads EndpointSlices: the writer's copy must not pin their versions
            let store = Arc::new(loaded_store.without_endpoints());
            status.send_replace(Some(Arc::new(StatusInputs { store, statuses })));
        }
        self.previous_loaded = Some(loaded_store);
        let generation = current.generation + 1;
        let snap = Arc::new(compile(&model, generation, &self.pools, &self.metrics));
        self.snapshot.store(snap.clone());
        self.metrics.retire_unused_targets();
        self.listeners.reconcile(&snap).await;
        self.metrics.config_generation.set(generation as i64);
        self.metrics.rejected_objects.set(model.rejections.len() as i64);
        self.metrics.config_apply_seconds.observe(loaded.changed_at.elapsed().as_secs_f64());
        tracing::info!(
            generation,
            listeners = snap.listeners.len(),
            rejected = model.rejections.len(),
            "configuration applied"
        );
    }
}
