//! The compiled, immutable configuration the request path reads: one per generation, published
//! through exactly one `ArcSwap`. Everything a request needs is resolved here (routers sorted,
//! pools linked, metric handles created, TLS contexts built) so a request does lookups only.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use boring::ssl::SslContext;

use crate::pool::weighted::SmoothCycle;
use crate::pool::{Pool, PoolRegistry};
use crate::routing::{HostPattern, Router, Rule};
use crate::store::Rejection;
use crate::telemetry::{Metrics, TargetMetrics};
use crate::translate::status::Statuses;
use crate::translate::{
    ActionKind, ActionModel, HeaderMods, ListenerModel, Model, PoolKey, Protocol, Redirect, Rewrite, RouteRetry,
    Timeouts,
};

/// The one published configuration.
pub struct Snapshot {
    pub generation: u64,
    /// By the address each is bound on. Shared with the next generation when only endpoints
    /// change ([`Snapshot::with_new_endpoints`]).
    pub listeners: Arc<HashMap<SocketAddr, Listener>>,
    /// Shared with the next generation when only endpoints change, as the listeners are.
    pub rejections: Arc<Vec<Rejection>>,
    /// Conditions per object, listener and parent reference (shown in `/config_dump`).
    pub statuses: Arc<Statuses>,
    pub pools: Arc<BTreeMap<PoolKey, Arc<Pool>>>,
}

impl Snapshot {
    /// The snapshot before any configuration is loaded: no listeners, nothing served.
    pub fn empty() -> Self {
        Snapshot {
            generation: 0,
            listeners: Arc::default(),
            rejections: Arc::default(),
            statuses: Arc::default(),
            pools: Arc::default(),
        }
    }

    /// The listener a connection accepted on `local` (the address it reached) belongs to: the
    /// one bound on that very address, else the one bound on every address of its port.
    pub fn listener_at(&self, local: SocketAddr) -> Option<(SocketAddr, &Listener)> {
        if let Some(l) = self.listeners.get(&local) {
            return Some((local, l));
        }
        let any: IpAddr = match local.ip() {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let any = SocketAddr::new(any, local.port());
        self.listeners.get(&any).map(|l| (any, l))
    }

    /// The next generation after an endpoint-only change, which the pools took in place: the
    /// same compiled listeners and routes.
    pub fn with_new_endpoints(&self) -> Snapshot {
        Snapshot {
            generation: self.generation + 1,
            listeners: self.listeners.clone(),
            rejections: self.rejections.clone(),
            statuses: self.statuses.clone(),
            pools: self.pools.clone(),
        }
    }
}

/// A compiled listener.
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub certs: CertStore,
    pub router: Router<Arc<RouteAction>>,
    /// Metrics for requests no route matched.
    pub unmatched: TargetMetrics,
}

/// What a matched rule does at request time.
pub struct RouteAction {
    pub name: String,
    pub kind: Action,
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
    pub rewrite: Option<Rewrite>,
    pub timeouts: Timeouts,
    pub retry: RouteRetry,
    pub cors: Option<Arc<crate::routing::cors::Cors>>,
    /// RequestMirror backends (those with a pool).
    pub mirrors: Vec<MirrorTarget>,
}

/// One RequestMirror backend of a rule, and the share of requests it gets (`numerator /
/// denominator`); `proxy::mirror` sends the copies.
pub struct MirrorTarget {
    pub name: String,
    pub pool: Arc<Pool>,
    pub fraction: (u32, u32),
    /// Copies in flight to it (bounded by `proxy::mirror`).
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl MirrorTarget {
    pub fn new(name: String, pool: Arc<Pool>, fraction: (u32, u32)) -> MirrorTarget {
        MirrorTarget { name, pool, fraction, in_flight: Arc::default() }
    }

    /// Whether this request is one of the share it mirrors.
    pub fn sampled(&self) -> bool {
        let (n, d) = self.fraction;
        n >= d || rand::random_range(0..d) < n
    }
}

pub enum Action {
    /// Weighted backends; an empty cycle (no backends, or all weights 0) answers 500.
    Forward {
        targets: Vec<Target>,
        cycle: SmoothCycle,
        unavailable: TargetMetrics,
    },
    Redirect {
        redirect: Redirect,
        metrics: TargetMetrics,
    },
}

/// One weighted backend of a rule.
pub struct Target {
    pub name: String,
    /// `None` for an invalid reference: answered 500.
    pub pool: Option<Arc<Pool>>,
    pub metrics: TargetMetrics,
    /// The backendRef's own header modifiers (after the rule's).
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
}

/// Certificates of a TLS listener, chosen by SNI: exact name, then the longest wildcard, then
/// the default.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<SslContext>>,
    wildcards: Vec<(HostPattern, Arc<SslContext>)>,
    default: Option<Arc<SslContext>>,
    /// (hosts, secret, not after), for the config dump.
    pub listing: Vec<(String, String, String)>,
}

impl CertStore {
    fn build(certs: &[crate::translate::tls::CertModel]) -> Self {
        let mut store = CertStore::default();
        for c in certs {
            let hosts: Vec<String> = c.hosts.iter().map(HostPattern::display).collect();
            store.listing.push((
                if hosts.is_empty() { "(default)".into() } else { hosts.join(",") },
                c.secret.clone(),
                c.not_after.clone(),
            ));
            if c.hosts.is_empty() && store.default.is_none() {
                store.default = Some(c.context.clone());
            }
            for h in &c.hosts {
                match h {
                    HostPattern::Exact(name) => {
                        store.exact.entry(name.clone()).or_insert_with(|| c.context.clone());
                    }
                    HostPattern::Wildcard { .. } => store.wildcards.push((h.clone(), c.context.clone())),
                    HostPattern::Any => {
                        store.default.get_or_insert_with(|| c.context.clone());
                    }
                }
            }
        }
        // longest suffix first
        store.wildcards.sort_by_key(|(h, _)| std::cmp::Reverse(h.display().len()));
        store
    }

    /// The context for a ClientHello's server name.
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<SslContext>> {
        if let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) {
            if let Some(c) = self.exact.get(&name) {
                return Some(c);
            }
            if let Some((_, c)) = self.wildcards.iter().find(|(h, _)| h.matches(&name)) {
                return Some(c);
            }
        }
        self.default.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.exact.is_empty() && self.wildcards.is_empty()
    }
}

/// Compiles a model: links pools (creating or updating them in place) and metric handles.
pub fn compile(model: &Model, generation: u64, registry: &PoolRegistry, metrics: &Metrics) -> Snapshot {
    let pools = registry.sync(&model.pools);
    let listeners = Arc::new(
        model.listeners.iter().map(|(addr, l)| (*addr, compile_listener(l, &pools, registry, metrics))).collect(),
    );
    Snapshot {
        generation,
        listeners,
        rejections: Arc::new(model.rejections.clone()),
        statuses: Arc::new(model.statuses.clone()),
        pools: Arc::new(pools),
    }
}

fn compile_listener(
    l: &ListenerModel,
    pools: &BTreeMap<PoolKey, Arc<Pool>>,
    registry: &PoolRegistry,
    metrics: &Metrics,
) -> Listener {
    // a rule shared by several matches or hostnames compiles once
    let mut actions: HashMap<*const ActionModel, Arc<RouteAction>> = HashMap::new();
    let rules = l.routes.iter().map(|(host, r)| {
        let action = actions
            .entry(Arc::as_ptr(&r.action))
            .or_insert_with(|| {
                let position = registry.position(&format!("{}|{}", l.name, r.action.name));
                Arc::new(compile_action(&l.name, &r.action, pools, metrics, position))
            })
            .clone();
        (host.clone(), Rule { matcher: r.matcher.clone(), order: r.order.clone(), action })
    });
    Listener {
        name: l.name.clone(),
        addr: l.addr,
        protocol: l.protocol,
        certs: CertStore::build(&l.certs),
        router: Router::build_with_hosts(&l.hosts, rules.collect::<Vec<_>>()),
        unmatched: metrics.target(&l.name, "", ""),
    }
}

/// Compiles a rule's action; its weighted split continues from `position` (kept across builds
/// by [`PoolRegistry::position`]).
pub(crate) fn compile_action(
    listener: &str,
    a: &ActionModel,
    pools: &BTreeMap<PoolKey, Arc<Pool>>,
    metrics: &Metrics,
    position: Arc<std::sync::atomic::AtomicUsize>,
) -> RouteAction {
    let kind = match &a.kind {
        ActionKind::Redirect(r) => {
            Action::Redirect { redirect: r.clone(), metrics: metrics.target(listener, &a.name, "") }
        }
        ActionKind::Forward(refs) => Action::Forward {
            cycle: SmoothCycle::continuing(&refs.iter().map(|b| b.weight).collect::<Vec<_>>(), position),
            targets: refs
                .iter()
                .map(|b| Target {
                    name: b.name.clone(),
                    pool: b.pool.as_ref().and_then(|k| pools.get(k).cloned()),
                    metrics: metrics.target(listener, &a.name, &b.name),
                    request_headers: b.request_headers.clone(),
                    response_headers: b.response_headers.clone(),
                })
                .collect(),
            unavailable: metrics.target(listener, &a.name, ""),
        },
    };
    RouteAction {
        name: a.name.clone(),
        kind,
        request_headers: a.request_headers.clone(),
        response_headers: a.response_headers.clone(),
        rewrite: a.rewrite.clone(),
        timeouts: a.timeouts,
        retry: a.retry,
        cors: a.cors.clone(),
        mirrors: a
            .mirrors
            .iter()
            .filter_map(|m| {
                let pool = pools.get(&m.pool)?.clone();
                Some(MirrorTarget::new(m.name.clone(), pool, m.fraction))
            })
            .collect(),
    }
}
