//! `--source kubernetes`: the objects the directory source reads, watched on the API server with
//! kube-rs watchers, filling the same [`Store`].
//!
//! Each kind (in each watched namespace) has its own watcher. A relist replaces that kind's
//! objects as one set. A burst of events is coalesced into one publish, and a publish that
//! changes nothing is not made. Nothing is published before every kind has synced once. A kind
//! whose resource is not installed (a missing CRD) counts as synced and empty: it is reported
//! once and watched again with a backoff, so it is picked up when its CRD appears, with no
//! restart. A watch that fails (an expired resource version, a restarted apiserver, a cut
//! connection) is retried with a backoff; meanwhile the last published store keeps serving.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::dir::Loaded;
use crate::api::backend_policy::BackendPolicy;
use crate::api::mesh_authorization::MeshAuthorization;
use crate::store::{NsName, Object, Store};
use crate::telemetry::Metrics;

/// The origin of every object from the API server (where the directory source names a file).
pub const ORIGIN: &str = "kubernetes";

/// How events are coalesced: a publish waits until no event has come for this long...
pub const COALESCE: Duration = Duration::from_millis(20);
/// ...or until the burst has lasted this long, so that steady churn still publishes.
/// (50 ms: under steady churn every publish waits this long, so it bounds convergence; a
/// publish of an endpoint change costs little since stored objects are shared.)
pub const MAX_COALESCE: Duration = Duration::from_millis(50);

/// Where the API server is and what to watch.
#[derive(Clone, Debug, Default)]
pub struct KubeSource {
    /// A kubeconfig file (`--kubeconfig`); else kube-rs's inference: in-cluster, then
    /// `KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (`--watch-namespace`); empty: all.
    pub namespaces: Vec<String>,
    /// Secrets `(namespace, name)` watched by name whatever their type: the mesh identity
    /// (other Secrets are read only if they are `kubernetes.io/tls`).
    pub secrets: Vec<(String, String)>,
}

impl KubeSource {
    /// A client for the API server.
    pub async fn client(&self) -> anyhow::Result<Client> {
        // kube's rustls needs a process-wide crypto provider; ring is already in the build
        // (rcgen). Another caller may have installed one: that one is used.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .with_context(|| format!("the kubeconfig {} is not usable", path.display()))?
            }
            None => kube::Config::infer().await.context(
                "no Kubernetes configuration found: not in a cluster, and no KUBECONFIG or ~/.kube/config; give --kubeconfig",
            )?,
        };
        Client::try_from(config).context("cannot make a Kubernetes client")
    }
}

/// What one watcher saw.
enum Seen {
    /// A relist starts: the objects until [`Seen::Listed`] replace the kind's.
    Relist,
    Listed,
    Applied(NsName, Box<Object>),
    Deleted(NsName),
    /// The resource is not installed (404).
    Missing,
    /// An optional kind weir may not list (403): it serves without it.
    Forbidden(String),
    /// The watch failed (it is retried).
    Failed(String),
}

/// One watcher: a kind, in a namespace or all, or one object by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Feed {
    kind: &'static str,
    namespace: Option<String>,
    name: Option<String>,
}

impl Feed {
    /// Whether weir serves without this kind when RBAC does not let it list it: Namespaces,
    /// read only for the labels a listener's namespace selector may pick by (a weir restricted
    /// to its namespaces by a Role cannot list them).
    fn optional(&self) -> bool {
        self.kind == "Namespace"
    }

    /// What serving without this optional kind means.
    fn without(&self) -> &'static str {
        "allowedRoutes namespace selectors see only each namespace's kubernetes.io/metadata.name label; \
         grant get, list and watch on namespaces for the others"
    }
}

#[derive(Default)]
struct FeedState {
    /// The keys of the objects this watch holds (the objects are in the gatherer's store).
    objects: BTreeSet<NsName>,
    /// During a relist, the keys listed so far.
    relisting: Option<BTreeSet<NsName>>,
    synced: bool,
    missing_reported: bool,
    failures: u64,
    last_sync: Option<String>,
    last_error: Option<String>,
}

/// One watch as `/config_dump` shows it (`watches`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchState {
    pub kind: &'static str,
    /// `None`: every namespace (or a cluster-scoped kind).
    pub namespace: Option<String>,
    /// One object watched by name (the mesh identity Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Listed at least once: `/ready` waits for every watch to be.
    pub synced: bool,
    /// False while the kind's CRD is not installed: weir serves the rest and keeps watching.
    pub installed: bool,
    pub objects: usize,
    /// Watch failures so far (each retried with a backoff).
    pub failures: u64,
    /// When the last full list finished (RFC 3339).
    pub last_sync: Option<String>,
    pub last_error: Option<String>,
}

/// Every watch's state, for `/config_dump`; empty for the directory source.
pub type WatchStates = Arc<ArcSwap<Vec<WatchState>>>;

/// Starts watching and returns the stores as they change; the first value is sent once every
/// kind has synced (an empty store until then, which the config loop does not apply:
/// `Loaded::synced` is false). Each watch's state goes to `states`.
pub async fn watch_kubernetes(
    source: &KubeSource,
    metrics: Arc<Metrics>,
    states: WatchStates,
) -> anyhow::Result<watch::Receiver<Loaded>> {
    let client = source.client().await?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let namespaces: Vec<Option<String>> = match source.namespaces.is_empty() {
        true => vec![None],
        false => source.namespaces.iter().cloned().map(Some).collect(),
    };
    let mut feeds = vec![];
    let mut feed = |kind: &'static str, namespace: Option<String>, name: Option<String>| {
        let f = Feed { kind, namespace, name };
        feeds.push(f.clone());
        (f, events_tx.clone())
    };
    // cluster-scoped kinds
    spawn::<IngressClass>(
        Api::all(client.clone()),
        watcher::Config::default(),
        feed("IngressClass", None, None),
        |o| Object::IngressClass(Box::new(o)),
    );
    spawn::<GatewayClass>(
        Api::all(client.clone()),
        watcher::Config::default(),
        feed("GatewayClass", None, None),
        |o| Object::GatewayClass(Box::new(o)),
    );
    // every namespace, for their labels (a listener's allowedRoutes may select by them)
    spawn::<Namespace>(Api::all(client.clone()), watcher::Config::default(), feed("Namespace", None, None), |o| {
        Object::Namespace(Box::new(lean_namespace(o)))
    });
    for ns in namespaces {
        let ns = ns.as_deref();
        let mut feed = |kind| feed(kind, ns.map(str::to_string), None);
        let any = watcher::Config::default;
        // only what weir reads: TLS certificates, never every Secret of the cluster
        let tls = watcher::Config::default().fields("type=kubernetes.io/tls");
        spawn::<Ingress>(api(&client, ns), any(), feed("Ingress"), |o| Object::Ingress(Box::new(o)));
        spawn::<Gateway>(api(&client, ns), any(), feed("Gateway"), |o| Object::Gateway(Box::new(o)));
        spawn::<HttpRoute>(api(&client, ns), any(), feed("HTTPRoute"), |o| Object::HttpRoute(Box::new(o)));
        spawn::<GrpcRoute>(api(&client, ns), any(), feed("GRPCRoute"), |o| Object::GrpcRoute(Box::new(o)));
        spawn::<TlsRoute>(api(&client, ns), any(), feed("TLSRoute"), |o| Object::TlsRoute(Box::new(o)));
        spawn::<ReferenceGrant>(api(&client, ns), any(), feed("ReferenceGrant"), |o| {
            Object::ReferenceGrant(Box::new(o))
        });
        spawn::<Service>(api(&client, ns), any(), feed("Service"), |o| Object::Service(Box::new(o)));
        spawn::<EndpointSlice>(api(&client, ns), any(), feed("EndpointSlice"), |o| {
            Object::EndpointSlice(Box::new(lean_slice(o)))
        });
        spawn::<Secret>(api(&client, ns), tls, feed("Secret"), |o| Object::Secret(Box::new(o)));
        spawn::<BackendPolicy>(api(&client, ns), any(), feed("BackendPolicy"), |o| Object::BackendPolicy(Box::new(o)));
        spawn::<MeshAuthorization>(api(&client, ns), any(), feed("MeshAuthorization"), |o| {
            Object::MeshAuthorization(Box::new(o))
        });
    }
    for (ns, name) in &source.secrets {
        let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let f = feed("Secret", Some(ns.clone()), Some(name.clone()));
        spawn::<Secret>(Api::namespaced(client.clone(), ns), by_name, f, |o| Object::Secret(Box::new(o)));
    }
    let (tx, rx) = watch::channel(Loaded { store: Arc::default(), changed_at: Instant::now(), synced: false });
    tokio::spawn(gather(feeds, events, tx, metrics, states));
    Ok(rx)
}

/// The API of a namespaced kind in `ns`, or in every namespace.
fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs one watcher, sending what it sees as `feed`.
fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    (feed, tx): (Feed, mpsc::UnboundedSender<(Feed, Seen)>),
    wrap: fn(K) -> Object,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().modify(trim).boxed();
        while let Some(event) = stream.next().await {
            let seen = match event {
                Ok(watcher::Event::Init) => Seen::Relist,
                Ok(watcher::Event::InitDone) => Seen::Listed,
                Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                    Seen::Applied(key(&o), Box::new(wrap(o)))
                }
                Ok(watcher::Event::Delete(o)) => Seen::Deleted(key(&o)),
                Err(watcher::Error::InitialListFailed(kube::Error::Api(e))) if e.code == 404 => Seen::Missing,
                Err(watcher::Error::InitialListFailed(kube::Error::Api(e))) if e.code == 403 && feed.optional() => {
                    Seen::Forbidden(e.message)
                }
                Err(e) => Seen::Failed(e.to_string()),
            };
            if tx.send((feed.clone(), seen)).is_err() {
                return;
            }
        }
    });
}

/// What weir never reads goes before an object is kept: the server-side-apply bookkeeping
/// (`managedFields`) and kubectl's copy of the whole applied object (an annotation), often most
/// of an object's size.
fn trim<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// An EndpointSlice as weir reads it: each endpoint's addresses and conditions (the Pod it
/// belongs to, its node, zone and topology hints are dropped; a cluster has tens of thousands).
fn lean_slice(mut slice: EndpointSlice) -> EndpointSlice {
    for e in &mut slice.endpoints {
        e.target_ref = None;
        e.node_name = None;
        e.zone = None;
        e.hints = None;
        e.deprecated_topology = None;
    }
    slice
}

/// A Namespace as weir reads it: its name and labels.
fn lean_namespace(ns: Namespace) -> Namespace {
    let meta = ObjectMeta { name: ns.metadata.name, labels: ns.metadata.labels, ..ObjectMeta::default() };
    Namespace { metadata: meta, ..Namespace::default() }
}

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn key<K: Resource>(o: &K) -> NsName {
    let meta = o.meta();
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// Keeps every feed's objects and publishes the store when a burst of events has settled, once
/// every feed has synced.
async fn gather(
    feeds: Vec<Feed>,
    mut events: mpsc::UnboundedReceiver<(Feed, Seen)>,
    tx: watch::Sender<Loaded>,
    metrics: Arc<Metrics>,
    states: WatchStates,
) {
    let mut state: HashMap<Feed, FeedState> = feeds.into_iter().map(|f| (f, FeedState::default())).collect();
    // kept as events come (objects are shared, so publishing a copy copies pointers); an object
    // a relist no longer lists, or a deleted one, leaves it unless another watch holds it
    let mut store = Store::default();
    // whether the store changed since it was last published
    let mut dirty = false;
    while let Some(first) = events.recv().await {
        let changed_at = Instant::now();
        let mut batch = vec![first];
        // coalesce: take events until none has come for COALESCE, at most MAX_COALESCE
        let until = tokio::time::Instant::now() + MAX_COALESCE;
        while let Ok(Some(next)) =
            tokio::time::timeout_at(until.min(tokio::time::Instant::now() + COALESCE), events.recv()).await
        {
            batch.push(next);
        }
        for (feed, seen) in batch {
            let s = state.entry(feed.clone()).or_default();
            let mut gone: Vec<NsName> = vec![];
            match seen {
                Seen::Relist => s.relisting = Some(BTreeSet::new()),
                Seen::Listed => {
                    if let Some(listed) = s.relisting.take() {
                        gone = s.objects.difference(&listed).cloned().collect();
                        s.objects = listed;
                    }
                    if !s.synced {
                        tracing::info!(kind = feed.kind, namespace = ?feed.namespace, objects = s.objects.len(), "synced");
                    }
                    s.synced = true;
                    s.missing_reported = false;
                    metrics.source_synced.with_label_values(&[feed.kind]).set(1);
                    let now = k8s_openapi::jiff::Timestamp::now();
                    metrics.source_last_sync.with_label_values(&[feed.kind]).set(now.as_millisecond() as f64 / 1e3);
                    s.last_sync = Some(now.to_string());
                }
                Seen::Applied(k, o) => {
                    dirty |= store.apply(*o, ORIGIN);
                    s.relisting.as_mut().unwrap_or(&mut s.objects).insert(k);
                }
                Seen::Deleted(k) => {
                    s.objects.remove(&k);
                    if let Some(r) = s.relisting.as_mut() {
                        r.remove(&k);
                    }
                    gone.push(k);
                }
                Seen::Missing => {
                    if !s.missing_reported {
                        tracing::warn!(
                            kind = feed.kind,
                            "the {} resource is not installed (its CRD is missing); weir serves the rest and watches for it",
                            feed.kind
                        );
                        s.missing_reported = true;
                    }
                    gone = std::mem::take(&mut s.objects).into_iter().collect();
                    s.synced = true;
                }
                Seen::Forbidden(e) => {
                    // an optional kind weir may not list: it serves without it
                    if !s.missing_reported {
                        tracing::warn!(
                            kind = feed.kind,
                            error = %e,
                            "weir may not list {}s (RBAC); it serves without them: {}",
                            feed.kind,
                            feed.without()
                        );
                        s.missing_reported = true;
                    }
                    s.last_error = Some(format!("{e}; {}", feed.without()));
                    gone = std::mem::take(&mut s.objects).into_iter().collect();
                    s.synced = true;
                }
                Seen::Failed(e) => {
                    metrics.source_watch_failures.with_label_values(&[feed.kind]).inc();
                    s.failures += 1;
                    s.last_error = Some(e.clone());
                    tracing::warn!(
                    kind = feed.kind,
                    namespace = ?feed.namespace,
                    error = %e,
                    "watch failed; retrying, and the last configuration keeps serving"
                    )
                }
            }
            for (ns, name) in gone {
                let key = (ns, name);
                let held = state.iter().any(|(f, s)| {
                    f.kind == feed.kind
                        && (s.objects.contains(&key) || s.relisting.as_ref().is_some_and(|r| r.contains(&key)))
                });
                if !held {
                    dirty |= store.remove(feed.kind, &key.0, &key.1);
                }
            }
        }
        let mut report: Vec<WatchState> = state
            .iter()
            .map(|(feed, s)| WatchState {
                kind: feed.kind,
                namespace: feed.namespace.clone(),
                name: feed.name.clone(),
                synced: s.synced,
                installed: !s.missing_reported,
                objects: s.objects.len(),
                failures: s.failures,
                last_sync: s.last_sync.clone(),
                last_error: s.last_error.clone(),
            })
            .collect();
        report.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        states.store(Arc::new(report));
        if !state.values().all(|s| s.synced) {
            continue;
        }
        tx.send_if_modified(|current| {
            let publish = !current.synced || dirty;
            if publish {
                *current = Loaded { store: Arc::new(store.clone()), changed_at, synced: true };
            }
            publish
        });
        dirty = false;
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> (NsName, Box<Object>) {
        let mut s = Service::default();
        s.metadata.namespace = Some("shop".into());
        s.metadata.name = Some(name.into());
        (("shop".into(), name.into()), Box::new(Object::Service(Box::new(s))))
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_before_the_first_sync_a_burst_is_one_publish_and_steady_churn_still_publishes() {
        let feed = Feed { kind: "Service", namespace: None, name: None };
        let (events_tx, events) = mpsc::unbounded_channel();
        let (tx, mut rx) = watch::channel(Loaded { store: Arc::default(), changed_at: Instant::now(), synced: false });
        let states = WatchStates::default();
        tokio::spawn(gather(vec![feed.clone()], events, tx, Metrics::new(Default::default()), states.clone()));
        let send = |seen: Seen| events_tx.send((feed.clone(), seen)).unwrap();
        let applied = |name: &str| {
            let (k, o) = service(name);
            Seen::Applied(k, o)
        };
        send(Seen::Relist);
        send(applied("a"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!rx.has_changed().unwrap(), "not listed yet: nothing to serve");
        assert!(!states.load()[0].synced, "/config_dump says what is being waited for");
        send(Seen::Listed);
        rx.changed().await.unwrap();
        assert!(rx.borrow_and_update().synced);
        assert!(states.load()[0].synced && states.load()[0].last_sync.is_some());
        assert_eq!(states.load()[0].objects, 1);
        for i in 0..100 {
            send(applied(&format!("b{i}")));
        }
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().store.services.len(), 101, "the burst in one publish");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!rx.has_changed().unwrap(), "and only one");
        // an event every 10 ms for a second: never 20 ms of quiet, yet it publishes as it goes
        let churn = tokio::spawn({
            let events_tx = events_tx.clone();
            let feed = feed.clone();
            async move {
                for i in 0..100 {
                    let (k, o) = service(&format!("c{i}"));
                    events_tx.send((feed.clone(), Seen::Applied(k, o))).unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        let mut publishes = 0;
        while tokio::time::timeout(MAX_COALESCE + COALESCE, rx.changed()).await.is_ok() {
            publishes += 1;
            rx.borrow_and_update();
        }
        churn.await.unwrap();
        let expected = (1000 / MAX_COALESCE.as_millis()) as usize;
        assert!(
            (expected.saturating_sub(3)..=expected + 3).contains(&publishes),
            "about one publish per {MAX_COALESCE:?} over a second ({expected}): {publishes}"
        );
        assert_eq!(rx.borrow().store.services.len(), 201);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_drops_what_it_no_longer_lists_unless_another_watch_holds_it() {
        let (mine, other) = (
            Feed { kind: "Service", namespace: None, name: None },
            Feed { kind: "Service", namespace: Some("shop".into()), name: Some("b".into()) },
        );
        let (events_tx, events) = mpsc::unbounded_channel();
        let (tx, mut rx) = watch::channel(Loaded { store: Arc::default(), changed_at: Instant::now(), synced: false });
        let feeds = vec![mine.clone(), other.clone()];
        tokio::spawn(gather(feeds, events, tx, Metrics::new(Default::default()), WatchStates::default()));
        let send = |feed: &Feed, seen: Seen| events_tx.send((feed.clone(), seen)).unwrap();
        let applied = |name: &str| {
            let (k, o) = service(name);
            Seen::Applied(k, o)
        };
        let names = |rx: &mut watch::Receiver<Loaded>| -> Vec<String> {
            rx.borrow_and_update().store.services.keys().map(|(_, n)| n.clone()).collect()
        };
        for seen in [Seen::Relist, applied("a"), applied("b"), applied("c"), Seen::Listed] {
            send(&mine, seen);
        }
        for seen in [Seen::Relist, applied("b"), Seen::Listed] {
            send(&other, seen);
        }
        rx.changed().await.unwrap();
        assert_eq!(names(&mut rx), ["a", "b", "c"]);
        // a relist of the same objects (a watch that resumed) publishes nothing
        for seen in [Seen::Relist, applied("a"), applied("b"), applied("c"), Seen::Listed] {
            send(&mine, seen);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!rx.has_changed().unwrap(), "the same objects again: nothing to publish");
        // a relist (after a 410 Gone, say) that lists only a: c goes, b stays (the other watch)
        for seen in [Seen::Relist, applied("a"), Seen::Listed] {
            send(&mine, seen);
        }
        rx.changed().await.unwrap();
        assert_eq!(names(&mut rx), ["a", "b"]);
        send(&other, Seen::Deleted(("shop".into(), "b".into())));
        rx.changed().await.unwrap();
        assert_eq!(names(&mut rx), ["a"]);
    }
}
