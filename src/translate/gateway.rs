//! Gateway API (`gateway.networking.k8s.io/v1`): GatewayClass, Gateway, HTTPRoute, GRPCRoute and
//! TLSRoute → listeners and routes. Gateway listeners that share a port share one socket.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use gateway_api::gateways::{GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From};
use gateway_api::httproutes::*;
use http::{HeaderName, HeaderValue, Method};
use kube::core::SelectorExt;

use super::backend::{Backends, PortRef};
use super::status::ConditionType::{Accepted, Conflicted, Programmed, ResolvedRefs};
use super::status::{resolved_refs, Condition, ParentRef, ParentStatus, Problem, Reason};
use super::tls::{CertModel, Secrets};
use super::{
    created, reject, ActionKind, ActionModel, BackendRef, HeaderMods, ListenerModel, MirrorModel, Model, PathRewrite,
    Protocol, Redirect, Rewrite, RouteModel, RouteRetry, Timeouts, TranslateOptions,
};
use crate::api::duration;
use crate::routing::cors::{Cors, CorsSpec};
use crate::routing::{HostPattern, Order, PathMatch, RequestMatch, ValueMatch};
use crate::store::{Rejection, Store};

/// `controllerName` of the GatewayClasses weir serves, unless `--controller-name` says another
/// (two installations of weir in one cluster each serve their own classes).
pub const GATEWAY_CONTROLLER: &str = "weir.dev/gateway-controller";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A Gateway listener that was accepted.
struct Listener {
    gateway: (String, String),
    name: String,
    /// Where it is served: the Gateway's address and the listener's port.
    addr: SocketAddr,
    hostname: HostPattern,
    from: RouteNamespaces,
    /// The route kinds it takes.
    kinds: Vec<RouteKind>,
    /// Whether it serves (its references resolve): routes attach to it and are counted either way.
    served: bool,
}

/// The namespaces a listener takes routes from (`allowedRoutes.namespaces`).
enum RouteNamespaces {
    Same,
    All,
    /// Namespaces whose labels the selector matches.
    Selector(kube::core::Selector),
}

/// A listener's namespace selector, or what is wrong with it. Refused as the API server refuses
/// a label selector (kube's own conversion lets an `In` without values or an `Exists` with some
/// through).
fn namespace_selector(
    selector: Option<&gateway_api::gateways::GatewayListenersAllowedRoutesNamespacesSelector>,
) -> Result<kube::core::Selector, String> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let Some(selector) = selector else {
        return Err("allowedRoutes.namespaces.from is Selector but selector is missing".into());
    };
    let mut requirements = vec![];
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_ref().filter(|v| !v.is_empty());
        let where_ =
            || format!("allowedRoutes.namespaces.selector: matchExpressions key {:?} operator {}", e.key, e.operator);
        match (e.operator.as_str(), values.is_some()) {
            ("In" | "NotIn", false) => return Err(format!("{} needs at least one value", where_())),
            ("Exists" | "DoesNotExist", true) => return Err(format!("{} takes no values", where_())),
            _ => {}
        }
        requirements.push(LabelSelectorRequirement {
            key: e.key.clone(),
            operator: e.operator.clone(),
            values: values.cloned(),
        });
    }
    let selector = LabelSelector { match_labels: selector.match_labels.clone(), match_expressions: Some(requirements) };
    kube::core::Selector::try_from(selector).map_err(|e| {
        format!("allowedRoutes.namespaces.selector: {}; the operator must be In, NotIn, Exists or DoesNotExist", e.0)
    })
}

/// Adds Gateway listeners and the routes of HTTPRoutes, GRPCRoutes and TLSRoutes to `model`.
pub fn translate(
    store: &Store,
    opts: &TranslateOptions,
    backends: &mut Backends<'_>,
    secrets: &mut Secrets<'_>,
    model: &mut Model,
) {
    let classes: BTreeSet<&str> = store
        .gateway_classes
        .iter()
        .filter(|(_, c)| c.object.spec.controller_name == opts.controller_name)
        .map(|(name, _)| name.as_str())
        .collect();
    for class in &classes {
        let accepted = Condition::holds(Accepted, format!("served by {}", opts.controller_name));
        model.statuses.of("GatewayClass", "", class).conditions.push(accepted);
    }
    let mut listeners = vec![];
    let addresses = assign_addresses(store, &classes, opts);
    // listeners on one address and port share a socket, told apart by hostname: the first
    // (oldest Gateway first) has it, a later one with the same hostname is Conflicted
    let mut hostnames: BTreeMap<(SocketAddr, String), String> = BTreeMap::new();
    let mut gateways: Vec<_> = store.gateways.iter().collect();
    gateways.sort_by_key(|((ns, name), g)| (created(&g.object.metadata), ns.clone(), name.clone()));
    for ((ns, name), stored) in gateways {
        let gw = &stored.object;
        if !classes.contains(gw.spec.gateway_class_name.as_str()) {
            continue;
        }
        let ip = match addresses.get(&(ns.clone(), name.clone())) {
            Some(Ok(ip)) => *ip,
            Some(Err(problem)) => {
                let status = model.statuses.of("Gateway", ns, name);
                status.conditions = match problem.type_ {
                    Accepted => vec![
                        problem.condition(),
                        Condition::fails(Programmed, Reason::Invalid, "the Gateway is not accepted"),
                    ],
                    _ => vec![Condition::holds(Accepted, ""), problem.condition()],
                };
                status.attached_routes = gw.spec.listeners.iter().map(|l| (l.name.clone(), 0)).collect();
                model.rejections.push(reject("Gateway", ns, name, &stored.origin, problem.message.clone()));
                continue;
            }
            None => opts.gateway_address,
        };
        model.statuses.of("Gateway", ns, name).address = Some(ip);
        let mut errors = vec![];
        let mut conditions = BTreeMap::new();
        for (i, l) in gw.spec.listeners.iter().enumerate() {
            let listener_conditions = match listener(ip, secrets, ns, name, l, model) {
                Ok((accepted, Some(problem))) => {
                    // Accepted, and routes attach to it, but a reference does not resolve
                    errors.push(format!("spec.listeners[{i}] ({}): {problem}", l.name));
                    let programmed = match accepted.served {
                        true => Condition::holds(Programmed, ""),
                        false => Condition::fails(
                            Programmed,
                            Reason::Invalid,
                            "the listener is not served: see ResolvedRefs",
                        ),
                    };
                    if accepted.served {
                        hostnames
                            .entry((accepted.addr, accepted.hostname.display()))
                            .or_insert_with(|| format!("listener {} of Gateway {ns}/{name}", l.name));
                    }
                    listeners.push(accepted);
                    vec![
                        Condition::holds(Accepted, ""),
                        problem.condition(),
                        programmed,
                        Condition::fails(Conflicted, Reason::NoConflicts, ""),
                    ]
                }
                Ok((accepted, None)) => {
                    let key = (accepted.addr, accepted.hostname.display());
                    let me = format!("listener {} of Gateway {ns}/{name}", l.name);
                    match hostnames.get(&key) {
                        Some(owner) => {
                            let message =
                                format!("{owner} has hostname {} on {} already; this one is not served", key.1, key.0);
                            errors.push(format!("spec.listeners[{i}] ({}): {message}", l.name));
                            vec![
                                Condition::holds(Accepted, ""),
                                Condition::holds(ResolvedRefs, ""),
                                Condition::fails(Programmed, Reason::Invalid, message.clone()),
                                Condition {
                                    status: true,
                                    ..Condition::fails(Conflicted, Reason::HostnameConflict, message)
                                },
                            ]
                        }
                        None => {
                            hostnames.insert(key, me);
                            listeners.push(accepted);
                            let mut c: Vec<Condition> =
                                [Accepted, ResolvedRefs, Programmed].map(|t| Condition::holds(t, "")).to_vec();
                            c.push(Condition::fails(Conflicted, Reason::NoConflicts, ""));
                            c
                        }
                    }
                }
                Err(problem) => {
                    errors.push(format!("spec.listeners[{i}] ({}): {problem}", l.name));
                    let mut c: Vec<Condition> = [Accepted, ResolvedRefs]
                        .map(|t| match t == problem.type_ {
                            true => problem.condition(),
                            false => Condition::holds(t, ""),
                        })
                        .to_vec();
                    c.push(Condition::fails(
                        Programmed,
                        Reason::Invalid,
                        "the listener is not served; see its other conditions",
                    ));
                    c.push(Condition::fails(Conflicted, Reason::NoConflicts, ""));
                    c
                }
            };
            conditions.insert(l.name.clone(), listener_conditions);
        }
        let status = model.statuses.of("Gateway", ns, name);
        status.attached_routes = conditions.keys().map(|l| (l.clone(), 0)).collect();
        status.listeners = conditions;
        // Accepted while any listener is (one whose references do not resolve is), Programmed
        // while any is served
        let holding = |t| status.listeners.values().filter(|c| c.iter().any(|c| c.type_ == t && c.status)).count();
        let (accepted, served) = (holding(Accepted), holding(Programmed));
        let of_all = format!("{served} of {} listeners are served", gw.spec.listeners.len());
        status.conditions = match (accepted, served, errors.is_empty()) {
            (_, _, true) => vec![Condition::holds(Accepted, ""), Condition::holds(Programmed, "")],
            (0, _, false) => vec![
                Condition::fails(Accepted, Reason::ListenersNotValid, errors.join("; ")),
                Condition::fails(Programmed, Reason::Invalid, "no listener is valid"),
            ],
            (_, 0, false) => vec![
                Condition { reason: Reason::ListenersNotValid, ..Condition::holds(Accepted, errors.join("; ")) },
                Condition::fails(Programmed, Reason::Invalid, of_all),
            ],
            (_, _, false) => vec![
                Condition { reason: Reason::ListenersNotValid, ..Condition::holds(Accepted, errors.join("; ")) },
                Condition::holds(Programmed, of_all),
            ],
        };
        if !errors.is_empty() {
            model.rejections.push(reject("Gateway", ns, name, &stored.origin, errors.join("; ")));
        }
    }

    for ((ns, name), stored) in &store.http_routes {
        let route = Route { kind: RouteKind::Http, ns, name, origin: &stored.origin, spec: &stored.object };
        attach(&route, vec![], &listeners, backends, model);
    }
    for ((ns, name), stored) in &store.grpc_routes {
        let (as_http, problems) = super::grpc::as_http_route(&stored.object);
        let route = Route { kind: RouteKind::Grpc, ns, name, origin: &stored.origin, spec: &as_http };
        attach(&route, problems, &listeners, backends, model);
    }
    for ((ns, name), stored) in &store.tls_routes {
        let (as_http, problems) = super::passthrough::as_http_route(&stored.object);
        let route = Route { kind: RouteKind::Tls, ns, name, origin: &stored.origin, spec: &as_http };
        attach(&route, problems, &listeners, backends, model);
    }
}

/// The kind of a route a Gateway serves: an HTTPRoute, or a GRPCRoute or TLSRoute (each read
/// as the HTTPRoute it means: [`super::grpc::as_http_route`], [`super::passthrough::as_http_route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
    Tls,
}

impl RouteKind {
    pub const ALL: [RouteKind; 3] = [RouteKind::Http, RouteKind::Grpc, RouteKind::Tls];

    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }

    /// The kinds listener `l` takes by its protocol: none when weir does not serve it (a TLS
    /// listener that would terminate).
    fn of_listener(l: &GatewayListeners) -> &'static [RouteKind] {
        match l.protocol.as_str() {
            "HTTP" | "HTTPS" => &[RouteKind::Http, RouteKind::Grpc],
            "TLS" if is_passthrough(l) => &[RouteKind::Tls],
            _ => &[],
        }
    }
}

/// A route to attach to the Gateways it names.
struct Route<'a> {
    kind: RouteKind,
    ns: &'a str,
    name: &'a str,
    origin: &'a str,
    spec: &'a HttpRoute,
}

/// Attaches `route` to the listeners of the Gateways it names and gives it its status there;
/// `problems` (what its kind's translation found wrong) refuse it.
fn attach(
    route: &Route<'_>,
    problems: Vec<String>,
    listeners: &[Listener],
    backends: &mut Backends<'_>,
    model: &mut Model,
) {
    let (kind, ns, name) = (route.kind.name(), route.ns, route.name);
    let store = backends.store();
    let r = |reason: String| reject(kind, ns, name, route.origin, reason);
    // each parentRef naming a Gateway of ours: the listeners it attaches to, or why none
    let mut parents: Vec<(ParentRef, Result<Vec<&Listener>, Problem>)> = vec![];
    for p in route.spec.spec.parent_refs.iter().flatten() {
        if p.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
            || p.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue; // a Service parent (mesh) or another implementation's kind
        }
        let gw_key = (p.namespace.clone().unwrap_or_else(|| ns.to_string()), p.name.clone());
        let ours: Vec<&Listener> = listeners.iter().filter(|l| l.gateway == gw_key).collect();
        if ours.is_empty() {
            continue; // not a weir Gateway (or it does not exist): not ours to report
        }
        let mut attached = vec![];
        let mut refusals = vec![];
        for l in ours {
            if p.section_name.as_ref().is_some_and(|s| *s != l.name)
                || p.port.is_some_and(|port| port != i32::from(l.addr.port()))
            {
                continue;
            }
            let allowed = match &l.from {
                RouteNamespaces::All => true,
                RouteNamespaces::Same => l.gateway.0 == ns,
                RouteNamespaces::Selector(selector) => selector.matches(&store.namespace_labels(ns)),
            };
            if !allowed {
                refusals.push(format!(
                    "listener {}/{} {} does not allow routes from namespace {ns}",
                    gw_key.0, gw_key.1, l.name
                ));
                continue;
            }
            if !l.kinds.contains(&route.kind) {
                refusals.push(format!("listener {}/{} {} does not allow {kind}s", gw_key.0, gw_key.1, l.name));
                continue;
            }
            attached.push(l);
        }
        let parent = ParentRef {
            group: GATEWAY_GROUP.into(),
            kind: "Gateway".into(),
            namespace: gw_key.0.clone(),
            name: gw_key.1.clone(),
            section_name: p.section_name.clone(),
            port: p.port,
        };
        let result = match (attached.is_empty(), refusals.is_empty()) {
            (false, _) => Ok(attached),
            (true, false) => Err(Problem::new(Accepted, Reason::NotAllowedByListeners, refusals.join("; "))),
            (true, true) => Err(Problem::new(
                Accepted,
                Reason::NoMatchingParent,
                format!("Gateway {}/{} has no listener matching the parentRef", gw_key.0, gw_key.1),
            )),
        };
        parents.push((parent, result));
    }
    if parents.is_empty() {
        return;
    }
    let attached: Vec<&Listener> = parents.iter().filter_map(|(_, r)| r.as_ref().ok()).flatten().copied().collect();
    if attached.is_empty() {
        let refusals: Vec<&str> =
            parents.iter().filter_map(|(_, r)| r.as_ref().err()).map(|p| p.message.as_str()).collect();
        model.rejections.push(r(format!("not attached: {}", refusals.join("; "))));
        model.statuses.of(kind, ns, name).parents = parent_statuses(&parents, &resolved_refs(&[]), |_| None);
        return;
    }
    let refused = |reason: Reason, message: String, model: &mut Model| {
        let problem = Problem::new(Accepted, reason, message.clone());
        model.statuses.of(kind, ns, name).parents =
            parent_statuses(&parents, &resolved_refs(&[]), |_| Some(problem.clone()));
        model.rejections.push(r(message));
    };
    let compiled = match problems.is_empty() {
        true => compile_route(route.spec, route.kind, ns, name, backends),
        false => Err(problems),
    };
    let (compiled, resolved) = match compiled {
        Ok((rules, warnings)) => {
            let resolved = resolved_refs(&warnings);
            if !warnings.is_empty() {
                model.rejections.push(Rejection { served: true, ..r(resolved.message.clone()) });
            }
            (rules, resolved)
        }
        Err(errors) => {
            refused(Reason::UnsupportedValue, errors.join("; "), model);
            return;
        }
    };
    let route_hosts: Vec<HostPattern> = match route
        .spec
        .spec
        .hostnames
        .iter()
        .flatten()
        .map(|h| HostPattern::parse(h, false))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(h) if h.is_empty() => vec![HostPattern::Any],
        Ok(h) => h,
        Err(e) => {
            refused(Reason::UnsupportedValue, format!("spec.hostnames: {e}"), model);
            return;
        }
    };
    let hosts_of = |l: &Listener| -> BTreeSet<HostPattern> {
        route_hosts.iter().filter_map(|h| l.hostname.intersect(h)).collect()
    };
    let mut any_host = false;
    let mut counted = BTreeSet::new();
    for l in &attached {
        let hosts = hosts_of(l);
        any_host |= !hosts.is_empty();
        if !hosts.is_empty() && counted.insert((&l.gateway, &l.name)) {
            let gateway = model.statuses.of("Gateway", &l.gateway.0, &l.gateway.1);
            *gateway.attached_routes.entry(l.name.clone()).or_default() += 1;
        }
        let Some(lm) = model.listeners.get_mut(&l.addr).filter(|_| l.served) else { continue };
        for host in hosts.into_iter().filter(|h| !claimed_by_a_narrower_listener(h, l, listeners)) {
            for rm in &compiled {
                lm.routes.push((host.clone(), rm.clone()));
            }
        }
    }
    const NO_HOST: &str = "none of spec.hostnames matches the hostname of a listener it attaches to";
    let no_host = |listeners: &[&Listener]| {
        listeners
            .iter()
            .all(|l| hosts_of(l).is_empty())
            .then(|| Problem::new(Accepted, Reason::NoMatchingListenerHostname, NO_HOST))
    };
    model.statuses.of(kind, ns, name).parents = parent_statuses(&parents, &resolved, no_host);
    if !any_host {
        model.rejections.push(r(NO_HOST.into()));
    }
}

/// Whether route hostname `host`, which a route attached to listener `l` has, belongs to
/// another listener on the same socket whose hostname is narrower than `l`'s and covers all of
/// `host`: requests for it are that listener's alone (listener isolation). A route on
/// `*.example.com` naming `abc.foo.example.com` does not serve it while a listener
/// `abc.foo.example.com` (or `*.foo.example.com`) shares the socket.
fn claimed_by_a_narrower_listener(host: &HostPattern, l: &Listener, listeners: &[Listener]) -> bool {
    let within = |inner: &HostPattern, outer: &HostPattern| outer.intersect(inner).as_ref() == Some(inner);
    listeners.iter().any(|other| {
        other.addr == l.addr
            && other.served
            && other.hostname != l.hostname
            && within(&other.hostname, &l.hostname)
            && within(host, &other.hostname)
    })
}

/// Each Gateway of weir's classes' address. Without a pool (`--gateway-addresses`), every
/// Gateway is on `--gateway-address`. With one, each gets an address of its own, stable across
/// restarts: the one `spec.addresses` names (it must be in the pool), else the one its status
/// already reports (read back from the API server), else the lowest free one, Gateways taken
/// oldest first. A Gateway that cannot have one gets `Programmed=False` (`AddressNotUsable`).
fn assign_addresses(
    store: &Store,
    classes: &BTreeSet<&str>,
    opts: &TranslateOptions,
) -> BTreeMap<(String, String), Result<IpAddr, Problem>> {
    let (mut gateways, unsupported): (Vec<_>, Vec<_>) = store
        .gateways
        .iter()
        .filter(|(_, g)| classes.contains(g.object.spec.gateway_class_name.as_str()))
        .partition(|(_, g)| unsupported_address(&g.object).is_none());
    // an address type weir does not take: not Accepted, with or without a pool
    let mut out: BTreeMap<(String, String), Result<IpAddr, Problem>> =
        unsupported.into_iter().filter_map(|(k, g)| Some((k.clone(), Err(unsupported_address(&g.object)?)))).collect();
    if opts.gateway_addresses.is_empty() {
        out.extend(gateways.into_iter().map(|(k, _)| (k.clone(), Ok(opts.gateway_address))));
        return out;
    }
    gateways.sort_by_key(|((ns, name), g)| (created(&g.object.metadata), ns.clone(), name.clone()));
    let in_pool = |ip: &IpAddr| opts.gateway_addresses.iter().any(|net| net.contains(ip));
    let not_usable = |message: String| Problem::new(Programmed, Reason::AddressNotUsable, message);
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    let mut unassigned = vec![];
    for (key, stored) in &gateways {
        let gw = &stored.object;
        let requested: Vec<&str> = gw
            .spec
            .addresses
            .iter()
            .flatten()
            .filter(|a| a.r#type.as_deref().is_none_or(|t| t == "IPAddress"))
            .filter_map(|a| a.value.as_deref().filter(|v| !v.is_empty()))
            .collect();
        if let Some(value) = requested.first() {
            let result = match value.parse::<IpAddr>() {
                Ok(ip) if !in_pool(&ip) => {
                    Err(not_usable(format!("spec.addresses {ip} is not in weir's address pool ({})", pool_text(opts))))
                }
                Ok(ip) if !taken.insert(ip) => Err(not_usable(format!("spec.addresses {ip} is another Gateway's"))),
                Ok(ip) => Ok(ip),
                Err(_) => Err(not_usable(format!("spec.addresses {value:?} is not an IP address"))),
            };
            out.insert((*key).clone(), result);
            continue;
        }
        let reported = gw.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten();
        let kept =
            reported.filter_map(|a| a.value.parse::<IpAddr>().ok()).find(|ip| in_pool(ip) && !taken.contains(ip));
        match kept {
            Some(ip) => {
                taken.insert(ip);
                out.insert((*key).clone(), Ok(ip));
            }
            None => unassigned.push(*key),
        }
    }
    let mut free = opts.gateway_addresses.iter().flat_map(|net| net.hosts()).filter(|ip| !taken.contains(ip));
    for key in unassigned {
        let result = free
            .next()
            .ok_or_else(|| not_usable(format!("weir's address pool ({}) has no free address left", pool_text(opts))));
        out.insert(key.clone(), result);
    }
    out
}

/// Why a Gateway cannot be accepted for the addresses it asks for: one of a type weir does not
/// take (it takes `IPAddress`, the default type).
fn unsupported_address(gw: &gateway_api::gateways::Gateway) -> Option<Problem> {
    let other = gw.spec.addresses.iter().flatten().filter_map(|a| a.r#type.as_deref()).find(|t| *t != "IPAddress")?;
    let message = format!("spec.addresses: type {other:?} is not supported; weir takes IPAddress addresses");
    Some(Problem::new(Accepted, Reason::UnsupportedAddress, message))
}

fn pool_text(opts: &TranslateOptions) -> String {
    opts.gateway_addresses.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
}

/// A route's status per Gateway parent: Accepted unless the parent refused it (`Err`) or
/// `refusal` finds a problem with the listeners it attached to; `resolved` for ResolvedRefs.
fn parent_statuses(
    parents: &[(ParentRef, Result<Vec<&Listener>, Problem>)],
    resolved: &Condition,
    refusal: impl Fn(&[&Listener]) -> Option<Problem>,
) -> Vec<ParentStatus> {
    parents
        .iter()
        .map(|(parent, attached)| {
            let accepted = match attached {
                Err(problem) => problem.condition(),
                Ok(listeners) => refusal(listeners).map_or_else(|| Condition::holds(Accepted, ""), |p| p.condition()),
            };
            ParentStatus { parent: parent.clone(), conditions: vec![accepted, resolved.clone()] }
        })
        .collect()
}

/// Validates one listener and adds its socket (or its certificates to a shared socket).
fn listener(
    ip: IpAddr,
    secrets: &mut Secrets<'_>,
    ns: &str,
    gw_name: &str,
    l: &GatewayListeners,
    model: &mut Model,
) -> Result<(Listener, Option<Problem>), Problem> {
    let unsupported = |message: String| Problem::new(Accepted, Reason::UnsupportedValue, message);
    let protocol = match l.protocol.as_str() {
        "HTTP" => Protocol::Http,
        "HTTPS" => Protocol::Https,
        "TLS" if is_passthrough(l) => Protocol::TlsPassthrough,
        "TLS" => {
            let message = "a TLS listener with tls.mode Terminate is not supported yet; use Passthrough (the \
                           connection goes to the TLSRoute's backend as it is), or an HTTPS listener";
            return Err(unsupported(message.into()));
        }
        other => {
            let message = format!("protocol {other} is not supported yet; use HTTP, HTTPS or TLS (Passthrough)");
            return Err(Problem::new(Accepted, Reason::UnsupportedProtocol, message));
        }
    };
    let port = u16::try_from(l.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| unsupported(format!("port {} is out of range", l.port)))?;
    let hostname = match &l.hostname {
        Some(h) => HostPattern::parse(h, false).map_err(|e| unsupported(e.to_string()))?,
        None => HostPattern::Any,
    };
    let addr = SocketAddr::new(ip, port);
    // listeners of Gateways on one address and port share a socket; anything else there (the
    // Ingress listeners, another protocol, or every address of the port against one of them)
    // cannot be bound beside it
    let clash = |other: &SocketAddr| {
        other.port() == port && (other.ip() == ip || other.ip().is_unspecified() || ip.is_unspecified())
    };
    for (other, existing) in model.listeners.iter().filter(|(other, _)| clash(other)) {
        if !existing.name.starts_with("gateway:") {
            let message = format!("port {port} is already used by the {} listener", existing.name);
            return Err(Problem::new(Accepted, Reason::PortUnavailable, message));
        }
        if *other != addr {
            let message = format!("port {port} is already used on {other} by {}", existing.name);
            return Err(Problem::new(Accepted, Reason::PortUnavailable, message));
        }
        if existing.protocol != protocol {
            let message = format!("port {port} is already an {:?} listener of {}", existing.protocol, existing.name);
            return Err(Problem::new(Accepted, Reason::PortUnavailable, message));
        }
    }
    // what the listener refers to: a problem there (ResolvedRefs) leaves it Accepted, routes
    // attach to it and are counted, but it is not served until the reference resolves
    let mut unresolved = None;
    let mut certs = vec![];
    let mut certs_resolve = true;
    if protocol == Protocol::Https {
        let tls = l.tls.as_ref().ok_or_else(|| unsupported("an HTTPS listener needs tls.certificateRefs".into()))?;
        if tls.mode.as_ref().is_some_and(|m| format!("{m:?}") != "Terminate") {
            let message = "tls.mode Passthrough is for TLS listeners (with TLSRoutes); an HTTPS listener terminates";
            return Err(unsupported(message.into()));
        }
        let refs = tls.certificate_refs.as_deref().unwrap_or_default();
        if refs.is_empty() {
            return Err(unsupported("an HTTPS listener needs at least one tls.certificateRefs entry".into()));
        }
        match certificates(refs, ns, &hostname, secrets) {
            Ok(loaded) => certs = loaded,
            Err(problem) => {
                unresolved = Some(problem);
                certs_resolve = false;
            }
        }
    }
    let allowed = l.allowed_routes.as_ref();
    let namespaces = allowed.and_then(|a| a.namespaces.as_ref());
    let from = match namespaces.and_then(|n| n.from.clone()).unwrap_or(From::Same) {
        From::Same => RouteNamespaces::Same,
        From::All => RouteNamespaces::All,
        From::Selector => RouteNamespaces::Selector(
            namespace_selector(namespaces.and_then(|n| n.selector.as_ref())).map_err(unsupported)?,
        ),
    };
    let kinds: Vec<RouteKind> = route_kinds(l);
    let asked = allowed.and_then(|a| a.kinds.as_deref());
    let takes = RouteKind::of_listener(l);
    if let Some(other) = asked.into_iter().flatten().find(|k| route_kind(k).is_none_or(|k| !takes.contains(&k))) {
        let group = other.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let served: Vec<&str> = takes.iter().map(|k| k.name()).collect();
        let message = format!(
            "allowedRoutes.kinds: {group}/{} is not a kind weir serves on a {} listener; it serves {}",
            other.kind,
            l.protocol,
            served.join(" and ")
        );
        unresolved.get_or_insert(Problem::new(ResolvedRefs, Reason::InvalidRouteKinds, message));
    }
    // served unless a certificate is missing, or no kind it allows is one weir serves
    let served = certs_resolve && !kinds.is_empty();
    if served {
        let entry = model.listeners.entry(addr).or_insert_with(|| ListenerModel {
            name: format!("gateway:{ns}/{gw_name}"),
            addr,
            protocol,
            certs: vec![],
            routes: vec![],
            hosts: vec![],
        });
        entry.certs.extend(certs);
        if hostname != HostPattern::Any && !entry.hosts.contains(&hostname) {
            entry.hosts.push(hostname.clone());
        }
    }
    let listener =
        Listener { gateway: (ns.into(), gw_name.into()), name: l.name.clone(), addr, hostname, from, kinds, served };
    Ok((listener, unresolved))
}

/// The route kinds of a listener weir serves: HTTPRoute and GRPCRoute on HTTP and HTTPS, TLSRoute
/// on TLS, or those of them `allowedRoutes.kinds` lists (its status's `supportedKinds`).
pub fn supported_kinds(l: &GatewayListeners) -> Vec<(&'static str, &'static str)> {
    route_kinds(l).into_iter().map(|k| (GATEWAY_GROUP, k.name())).collect()
}

/// Whether the listener's `tls.mode` is Passthrough (Terminate when unset).
fn is_passthrough(l: &GatewayListeners) -> bool {
    l.tls.as_ref().and_then(|t| t.mode.as_ref()).is_some_and(|m| format!("{m:?}") == "Passthrough")
}

fn route_kinds(l: &GatewayListeners) -> Vec<RouteKind> {
    let kinds = RouteKind::of_listener(l).iter().copied();
    match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_deref()) {
        None => kinds.collect(),
        Some(asked) => kinds.filter(|k| asked.iter().any(|a| route_kind(a) == Some(*k))).collect(),
    }
}

fn route_kind(k: &gateway_api::gateways::GatewayListenersAllowedRoutesKinds) -> Option<RouteKind> {
    if k.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP {
        return None;
    }
    RouteKind::ALL.into_iter().find(|r| r.name() == k.kind)
}

/// An HTTPS listener's certificates, or the first reference that does not resolve.
fn certificates(
    refs: &[gateway_api::gateways::GatewayListenersTlsCertificateRefs],
    ns: &str,
    hostname: &HostPattern,
    secrets: &mut Secrets<'_>,
) -> Result<Vec<CertModel>, Problem> {
    let mut certs = vec![];
    for c in refs {
        if c.kind.as_deref().unwrap_or("Secret") != "Secret" || !c.group.as_deref().unwrap_or("").is_empty() {
            let message = format!("certificateRef {}: only core Secrets are supported", c.name);
            return Err(Problem::new(ResolvedRefs, Reason::InvalidCertificateRef, message));
        }
        let secret_ns = c.namespace.as_deref().unwrap_or(ns);
        if !secrets.store().grants("Gateway", ns, "Secret", secret_ns, &c.name) {
            let message = format!(
                "certificateRef {secret_ns}/{}: a Secret in another namespace needs a ReferenceGrant in {secret_ns} \
                 allowing Gateways of {ns}",
                c.name
            );
            return Err(Problem::new(ResolvedRefs, Reason::RefNotPermitted, message));
        }
        let loaded = secrets
            .load(secret_ns, &c.name)
            .map_err(|e| Problem::new(ResolvedRefs, Reason::InvalidCertificateRef, e))?;
        let hosts = if *hostname == HostPattern::Any { vec![] } else { vec![hostname.clone()] };
        certs.push(CertModel {
            hosts,
            secret: format!("{secret_ns}/{}", c.name),
            context: loaded.context,
            not_after: loaded.not_after,
        });
    }
    Ok(certs)
}

/// A route's rules, and the problems with its backends (it is served; they answer 500).
pub(crate) type Compiled = (Vec<RouteModel>, Vec<Problem>);

/// The Services an HTTPRoute attaches to as its parents (the Gateway API mesh profile), with the
/// parent's namespace and optional port.
pub fn service_parents(route: &HttpRoute, ns: &str) -> Vec<(String, String, Option<u16>)> {
    route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .filter(|p| matches!(p.group.as_deref(), Some("" | "core")) && p.kind.as_deref() == Some("Service"))
        .map(|p| {
            let port = p.port.and_then(|port| u16::try_from(port).ok());
            (p.namespace.clone().unwrap_or_else(|| ns.to_string()), p.name.clone(), port)
        })
        .collect()
}

/// Compiles every rule of a route. Hard errors reject the route; warnings (an invalid
/// backendRef, which then answers 500) are reported but the route is served.
pub(crate) fn compile_route(
    route: &HttpRoute,
    kind: RouteKind,
    ns: &str,
    name: &str,
    backends: &mut Backends<'_>,
) -> Result<Compiled, Vec<String>> {
    let mut errors = vec![];
    let mut warnings = vec![];
    let mut out = vec![];
    let retry = RouteRetry::from_annotations(route.metadata.annotations.as_ref()).unwrap_or_else(|e| {
        errors.push(e);
        RouteRetry::default()
    });
    for (ri, rule) in route.spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{ri}]");
        let default_match = [HttpRouteRulesMatches::default()];
        let matches = match rule.matches.as_deref() {
            Some(m) if !m.is_empty() => m,
            _ => &default_match[..],
        };
        let mut matchers = vec![];
        for (mi, m) in matches.iter().enumerate() {
            match request_match(m) {
                Ok(rm) => matchers.push(rm),
                Err(e) => errors.push(format!("{at}.matches[{mi}]: {e}")),
            }
        }
        let action = match rule_action(rule, kind, ns, &at, backends, &matchers, &mut warnings) {
            Ok(kind) => kind,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let rule_name = format!("{}/{ns}/{name}/rule/{ri}", kind.name().to_ascii_lowercase());
        let action = Arc::new(ActionModel { name: rule_name, retry, ..action });
        for (mi, matcher) in matchers.into_iter().enumerate() {
            let order =
                Order { created: created(&route.metadata), owner: format!("{ns}/{name}"), rule: ri, matched: mi };
            out.push(RouteModel { matcher, order, action: action.clone() });
        }
    }
    if errors.is_empty() {
        Ok((out, warnings))
    } else {
        Err(errors)
    }
}

fn request_match(m: &HttpRouteRulesMatches) -> Result<RequestMatch, String> {
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.unwrap_or_else(|| "/".into());
    let path = match path.r#type.unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix) {
        HttpRouteRulesMatchesPathType::Exact | HttpRouteRulesMatchesPathType::PathPrefix if !value.starts_with('/') => {
            return Err(format!("path {value:?} must start with '/'"));
        }
        HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value),
        HttpRouteRulesMatchesPathType::PathPrefix => PathMatch::prefix(&value),
        HttpRouteRulesMatchesPathType::RegularExpression => {
            PathMatch::regex(&value).map_err(|e| format!("path regular expression {value:?} is invalid: {e}"))?
        }
    };
    let value_match = |exact: bool, v: &str, what: &str| -> Result<ValueMatch, String> {
        if exact {
            Ok(ValueMatch::Exact(v.to_string()))
        } else {
            ValueMatch::regex(v).map_err(|e| format!("{what} regular expression {v:?} is invalid: {e}"))
        }
    };
    let mut headers = vec![];
    for h in m.headers.iter().flatten() {
        let name = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("header name {:?} is not valid", h.name))?;
        let exact = !matches!(h.r#type, Some(HttpRouteRulesMatchesHeadersType::RegularExpression));
        headers.push((name, value_match(exact, &h.value, "header")?));
    }
    let mut query = vec![];
    for q in m.query_params.iter().flatten() {
        let exact = !matches!(q.r#type, Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression));
        query.push((q.name.clone(), value_match(exact, &q.value, "query")?));
    }
    let method = m.method.as_ref().map(|me| {
        // the serde names are the HTTP method names
        let s = serde_json::to_value(me).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        Method::from_bytes(s.as_bytes()).unwrap_or(Method::GET)
    });
    Ok(RequestMatch { path, method, headers, query })
}

/// A Request- or ResponseHeaderModifier (of a rule or of a backendRef: the same shape in
/// different generated types) as [`HeaderMods`].
macro_rules! header_modifier {
    ($m:expr) => {
        header_mods(
            $m.set.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
            $m.add.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
            $m.remove.as_deref().unwrap_or_default(),
        )
    };
}

fn header_mods<'a>(
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: &[String],
) -> Result<HeaderMods, String> {
    let pair = |(n, v): (&str, &str)| -> Result<(HeaderName, HeaderValue), String> {
        Ok((
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("header name {n:?} is not valid"))?,
            HeaderValue::from_str(v).map_err(|_| format!("header value {v:?} is not valid"))?,
        ))
    };
    Ok(HeaderMods {
        set: set.map(pair).collect::<Result<_, _>>()?,
        add: add.map(pair).collect::<Result<_, _>>()?,
        remove: remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("header name {n:?} is not valid"))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn path_rewrite(
    full: Option<&String>,
    prefix: Option<&String>,
    is_full: bool,
    matchers: &[RequestMatch],
) -> Result<PathRewrite, String> {
    if is_full {
        return full.cloned().map(PathRewrite::Full).ok_or("ReplaceFullPath needs replaceFullPath".into());
    }
    if !matchers.iter().all(|m| matches!(m.path, PathMatch::Prefix(_))) {
        return Err("ReplacePrefixMatch needs every match of the rule to be a PathPrefix match".into());
    }
    prefix.cloned().map(PathRewrite::Prefix).ok_or("ReplacePrefixMatch needs replacePrefixMatch".into())
}

fn rule_action(
    rule: &HttpRouteRules,
    kind: RouteKind,
    ns: &str,
    at: &str,
    backends: &mut Backends<'_>,
    matchers: &[RequestMatch],
    warnings: &mut Vec<Problem>,
) -> Result<ActionModel, String> {
    let mut request_headers = HeaderMods::default();
    let mut response_headers = HeaderMods::default();
    let mut rewrite = None;
    let mut redirect = None;
    let mut cors = None;
    let mut mirrors = vec![];
    for (fi, f) in rule.filters.iter().flatten().enumerate() {
        let fat = format!("{at}.filters[{fi}]");
        let err = |e: String| format!("{fat}: {e}");
        match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                let m =
                    f.request_header_modifier.clone().ok_or_else(|| err("requestHeaderModifier is missing".into()))?;
                request_headers = header_modifier!(m).map_err(err)?;
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                let m = f
                    .response_header_modifier
                    .clone()
                    .ok_or_else(|| err("responseHeaderModifier is missing".into()))?;
                response_headers = header_modifier!(m).map_err(err)?;
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                let r = f.request_redirect.clone().ok_or_else(|| err("requestRedirect is missing".into()))?;
                let path = match &r.path {
                    Some(p) => Some(
                        path_rewrite(
                            p.replace_full_path.as_ref(),
                            p.replace_prefix_match.as_ref(),
                            p.r#type == HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
                            matchers,
                        )
                        .map_err(err)?,
                    ),
                    None => None,
                };
                redirect = Some(Redirect {
                    scheme: r.scheme.map(|s| match s {
                        HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_string(),
                        HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_string(),
                    }),
                    hostname: r.hostname.clone(),
                    port: r.port.and_then(|p| u16::try_from(p).ok()),
                    path,
                    status: match r.status_code {
                        Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
                        None => 302,
                        Some(other) => {
                            return Err(err(format!(
                                "statusCode {other} is not a redirect status; use 301, 302, 303, 307 or 308"
                            )))
                        }
                    },
                });
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                let u = f.url_rewrite.clone().ok_or_else(|| err("urlRewrite is missing".into()))?;
                let path = match &u.path {
                    Some(p) => Some(
                        path_rewrite(
                            p.replace_full_path.as_ref(),
                            p.replace_prefix_match.as_ref(),
                            p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
                            matchers,
                        )
                        .map_err(err)?,
                    ),
                    None => None,
                };
                rewrite = Some(Rewrite { hostname: u.hostname.clone(), path });
            }
            HttpRouteRulesFiltersType::Cors => {
                let c = f.cors.as_ref().ok_or_else(|| err("cors is missing".into()))?;
                let spec = CorsSpec {
                    allow_origins: c.allow_origins.as_deref().unwrap_or_default(),
                    allow_methods: c.allow_methods.as_deref().unwrap_or_default(),
                    allow_headers: c.allow_headers.as_deref().unwrap_or_default(),
                    expose_headers: c.expose_headers.as_deref().unwrap_or_default(),
                    max_age: c.max_age,
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                };
                cors = Some(Arc::new(Cors::new(&spec).map_err(|e| err(format!("cors.{e}")))?));
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                let m = f.request_mirror.as_ref().ok_or_else(|| err("requestMirror is missing".into()))?;
                let fraction = match (m.percent, &m.fraction) {
                    (Some(_), Some(_)) => return Err(err("requestMirror: set percent or fraction, not both".into())),
                    (Some(p), None) if (0..=100).contains(&p) => (p as u32, 100),
                    (None, Some(f)) => {
                        let d = f.denominator.unwrap_or(100);
                        if d <= 0 || !(0..=d).contains(&f.numerator) {
                            return Err(err(format!(
                                "requestMirror.fraction {}/{d}: needs 0 <= numerator <= denominator, denominator > 0",
                                f.numerator
                            )));
                        }
                        (f.numerator as u32, d as u32)
                    }
                    (None, None) => (1, 1),
                    (Some(p), None) => return Err(err(format!("requestMirror.percent {p} is outside 0..=100"))),
                };
                let b = &m.backend_ref;
                let to =
                    ServiceRef { group: &b.group, kind: &b.kind, name: &b.name, namespace: &b.namespace, port: b.port };
                match to.resolve(kind, ns, backends) {
                    (name, Ok(pool)) => mirrors.push(MirrorModel { name, pool, fraction }),
                    (_, Err((reason, e))) => {
                        let message = format!("{fat}.requestMirror.backendRef: {e}; requests are not mirrored there");
                        warnings.push(Problem::new(ResolvedRefs, reason, message));
                    }
                }
            }
            ref other => return Err(err(format!("filter type {other:?} is not supported yet"))),
        }
    }
    if redirect.is_some() && rewrite.is_some() {
        return Err(format!("{at}: RequestRedirect and URLRewrite cannot be used together"));
    }
    let timeouts = match &rule.timeouts {
        Some(t) => {
            let parse = |v: &Option<String>, what: &str| -> Result<Option<std::time::Duration>, String> {
                match v.as_deref() {
                    None => Ok(None),
                    Some(s) => match duration::parse(s) {
                        Ok(d) if d.is_zero() => Ok(None), // 0s disables the timeout
                        Ok(d) => Ok(Some(d)),
                        Err(e) => Err(format!("{at}.timeouts.{what}: {e}")),
                    },
                }
            };
            Timeouts {
                request: parse(&t.request, "request")?,
                backend_request: parse(&t.backend_request, "backendRequest")?,
            }
        }
        None => Timeouts::default(),
    };
    let kind = match redirect {
        Some(r) => ActionKind::Redirect(r),
        None => ActionKind::Forward(backend_refs(rule, kind, ns, at, backends, warnings)?),
    };
    Ok(ActionModel {
        name: String::new(),
        kind,
        request_headers,
        response_headers,
        rewrite,
        timeouts,
        retry: RouteRetry::default(),
        cors,
        mirrors,
    })
}

/// A backendRef's filters: its request and response header modifiers.
fn backend_filters(filters: &[HttpRouteRulesBackendRefsFilters], at: &str) -> Result<(HeaderMods, HeaderMods), String> {
    let (mut request, mut response) = (HeaderMods::default(), HeaderMods::default());
    for (fi, f) in filters.iter().enumerate() {
        let err = |e: String| format!("{at}.filters[{fi}]: {e}");
        match f.r#type {
            HttpRouteRulesBackendRefsFiltersType::RequestHeaderModifier => {
                let m =
                    f.request_header_modifier.as_ref().ok_or_else(|| err("requestHeaderModifier is missing".into()))?;
                request = header_modifier!(m).map_err(err)?;
            }
            HttpRouteRulesBackendRefsFiltersType::ResponseHeaderModifier => {
                let m = f
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(|| err("responseHeaderModifier is missing".into()))?;
                response = header_modifier!(m).map_err(err)?;
            }
            ref other => {
                return Err(err(format!(
                    "filter type {other:?} is not supported on a backendRef; RequestHeaderModifier and \
                     ResponseHeaderModifier are"
                )))
            }
        }
    }
    Ok((request, response))
}

/// A route's reference to a Service (a backendRef, a mirror's backendRef).
struct ServiceRef<'a> {
    group: &'a Option<String>,
    kind: &'a Option<String>,
    name: &'a str,
    namespace: &'a Option<String>,
    port: Option<i32>,
}

impl ServiceRef<'_> {
    /// Its `ns/service:port` name, and its pool or why it has none (a route of `kind` in `ns`).
    /// A GRPCRoute's backends speak HTTP/2.
    fn resolve(
        &self,
        kind: RouteKind,
        ns: &str,
        backends: &mut Backends<'_>,
    ) -> (String, Result<super::PoolKey, (Reason, String)>) {
        let target_ns = self.namespace.clone().unwrap_or_else(|| ns.to_string());
        let name = format!("{target_ns}/{}:{}", self.name, self.port.map(|p| p.to_string()).unwrap_or_default());
        let pool = if !self.group.as_deref().unwrap_or("").is_empty()
            || self.kind.as_deref().unwrap_or("Service") != "Service"
        {
            let kind = self.kind.as_deref().unwrap_or("");
            Err((Reason::InvalidKind, format!("only Service backends are supported, not {kind}")))
        } else if !backends.store().grants(kind.name(), ns, "Service", &target_ns, self.name) {
            Err((
                Reason::RefNotPermitted,
                format!(
                    "a Service in another namespace needs a ReferenceGrant in {target_ns} allowing {}s of {ns}",
                    kind.name()
                ),
            ))
        } else if let Some(port) = self.port.and_then(|p| u16::try_from(p).ok()) {
            let pool = backends.resolve(&target_ns, self.name, &PortRef::Number(port));
            if let (Ok(pool), RouteKind::Grpc) = (&pool, kind) {
                backends.speak_h2c(pool);
            }
            pool.map_err(|e| (Reason::BackendNotFound, e))
        } else {
            Err((Reason::BackendNotFound, "port is required for a Service backend".to_string()))
        };
        (name, pool)
    }
}

fn backend_refs(
    rule: &HttpRouteRules,
    kind: RouteKind,
    ns: &str,
    at: &str,
    backends: &mut Backends<'_>,
    warnings: &mut Vec<Problem>,
) -> Result<Vec<BackendRef>, String> {
    let mut out = vec![];
    for (bi, b) in rule.backend_refs.iter().flatten().enumerate() {
        let bat = format!("{at}.backendRefs[{bi}]");
        let (request_headers, response_headers) = backend_filters(b.filters.as_deref().unwrap_or_default(), &bat)?;
        let weight = b.weight.unwrap_or(1);
        if !(0..=1_000_000).contains(&weight) {
            return Err(format!("{bat}.weight: {weight} is outside 0..=1000000"));
        }
        let to = ServiceRef { group: &b.group, kind: &b.kind, name: &b.name, namespace: &b.namespace, port: b.port };
        let (name, pool) = to.resolve(kind, ns, backends);
        let pool = match pool {
            Ok(p) => Some(p),
            Err((reason, e)) => {
                let message = format!("{bat}: {e}; requests for this backend get 500");
                warnings.push(Problem::new(ResolvedRefs, reason, message));
                None
            }
        };
        out.push(BackendRef { name, weight: weight as u32, pool, request_headers, response_headers });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::parse_manifests;
    use crate::translate::status::ConditionType;
    use crate::translate::translate;

    /// Gateway `shop/<name>` of class weir created at `created`, one HTTP listener on port 80.
    fn gateway(name: &str, created: &str, extra: &str) -> String {
        gateway_with(name, created, "{name: http, protocol: HTTP, port: 80}", extra)
    }

    fn gateway_with(name: &str, created: &str, listener: &str, extra: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{namespace: shop, name: {name}, creationTimestamp: '{created}'}}
spec:
  gatewayClassName: weir
  listeners: [{listener}]
{extra}---
"
        )
    }

    /// Translates weir's GatewayClass and `yaml`, with `opts`.
    fn translated_with(yaml: &str, opts: &TranslateOptions) -> Model {
        let mut store = Store::default();
        let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n---\n";
        let (objects, errors) = parse_manifests(&format!("{class}{yaml}"), "kubernetes");
        assert!(errors.is_empty(), "{errors:?}");
        for o in objects {
            store.apply(o, "kubernetes");
        }
        translate(&store, opts)
    }

    /// [`translated_with`] an address pool of 127.0.10.0/29.
    fn translated(yaml: &str) -> Model {
        let opts = TranslateOptions {
            gateway_addresses: vec!["127.0.10.0/29".parse().unwrap()],
            ..TranslateOptions::defaults("weir")
        };
        translated_with(yaml, &opts)
    }

    fn address(m: &Model, name: &str) -> Option<IpAddr> {
        m.statuses.get("Gateway", "shop", name).and_then(|s| s.address)
    }

    #[test]
    fn each_gateway_gets_an_address_of_its_own_and_keeps_it() {
        let yaml = [
            gateway("old", "2026-01-01T00:00:00Z", ""),
            gateway("new", "2026-01-03T00:00:00Z", ""),
            gateway("asks", "2026-01-02T00:00:00Z", "  addresses: [{type: IPAddress, value: 127.0.10.5}]\n"),
            gateway("outside", "2026-01-04T00:00:00Z", "  addresses: [{value: 10.0.0.1}]\n"),
        ]
        .concat();
        let m = translated(&yaml);
        assert_eq!(address(&m, "old"), Some("127.0.10.1".parse().unwrap()), "the oldest, the lowest");
        assert_eq!(address(&m, "asks"), Some("127.0.10.5".parse().unwrap()), "spec.addresses");
        assert_eq!(address(&m, "new"), Some("127.0.10.2".parse().unwrap()));
        // one socket per Gateway on the same port
        let keys: Vec<String> = m.listeners.keys().map(|a| a.to_string()).collect();
        for addr in ["127.0.10.1:80", "127.0.10.2:80", "127.0.10.5:80"] {
            assert!(keys.contains(&addr.to_string()), "{addr} in {keys:?}");
        }
        let outside = m.statuses.get("Gateway", "shop", "outside").unwrap();
        let programmed = outside.conditions.iter().find(|c| c.type_ == ConditionType::Programmed).unwrap();
        assert_eq!((programmed.status, programmed.reason), (false, Reason::AddressNotUsable), "{programmed:?}");
        assert!(programmed.message.contains("not in weir's address pool (127.0.10.0/29)"), "{programmed:?}");
        assert_eq!(outside.address, None);

        // a restarted weir reads the addresses back from status: a Gateway keeps its own even
        // when an older one no longer holds a lower one
        let kept = [
            gateway("new", "2026-01-03T00:00:00Z", ""),
            "status: {addresses: [{type: IPAddress, value: 127.0.10.2}]}\n---\n".into(),
            gateway("newer", "2026-01-05T00:00:00Z", ""),
        ]
        .concat()
        .replace("---\nstatus:", "status:");
        let m = translated(&kept);
        assert_eq!(address(&m, "new"), Some("127.0.10.2".parse().unwrap()), "kept from status");
        assert_eq!(address(&m, "newer"), Some("127.0.10.1".parse().unwrap()), "the lowest free");
    }

    #[test]
    fn a_grpcroute_attaches_where_listeners_take_its_kind_and_reaches_services_its_grants_allow() {
        let listeners = "{name: any, protocol: HTTP, port: 80}, \
                         {name: http-only, protocol: HTTP, port: 81, allowedRoutes: {kinds: [{kind: HTTPRoute}]}}";
        let route = |name: &str, section: &str, backend_ns: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{namespace: shop, name: {name}}}\n\
                 spec: {{parentRefs: [{{name: gw, sectionName: {section}}}], \
                 rules: [{{backendRefs: [{{name: svc, namespace: {backend_ns}, port: 9000}}]}}]}}\n---\n"
            )
        };
        let service = |ns: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{namespace: {ns}, name: svc}}\n\
                 spec: {{ports: [{{port: 9000}}]}}\n---\n"
            )
        };
        let grant = |from_kind: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
                 metadata: {{namespace: backends, name: g}}\nspec: {{from: [{{group: gateway.networking.k8s.io, \
                 kind: {from_kind}, namespace: shop}}], to: [{{group: '', kind: Service}}]}}\n---\n"
            )
        };
        let base = [
            gateway_with("gw", "2026-01-01T00:00:00Z", listeners, ""),
            service("shop"),
            service("backends"),
            route("served", "any", "shop"),
            route("refused", "http-only", "shop"),
            route("across", "any", "backends"),
        ]
        .concat();
        let condition = |m: &Model, name: &str, t: ConditionType| {
            let status = m.statuses.get("GRPCRoute", "shop", name).unwrap_or_else(|| panic!("no status for {name}"));
            let c = status.parents[0].conditions.iter().find(|c| c.type_ == t).unwrap();
            (c.status, c.reason)
        };
        // a grant for HTTPRoutes is not one for GRPCRoutes
        let m = translated(&(base.clone() + &grant("HTTPRoute")));
        assert_eq!(condition(&m, "served", Accepted), (true, Reason::Accepted));
        assert_eq!(condition(&m, "refused", Accepted), (false, Reason::NotAllowedByListeners));
        assert_eq!(condition(&m, "across", ResolvedRefs), (false, Reason::RefNotPermitted));
        let m = translated(&(base + &grant("GRPCRoute")));
        assert_eq!(condition(&m, "across", ResolvedRefs), (true, Reason::ResolvedRefs));
        // its backends speak HTTP/2 though the Service port does not say so
        let pool = m.pools.iter().find(|(k, _)| k.namespace == "backends").map(|(_, p)| p.protocol);
        assert_eq!(pool, Some(crate::translate::UpstreamProtocol::H2c));
        let status = m.statuses.get("Gateway", "shop", "gw").unwrap();
        assert_eq!(status.attached_routes.get("any"), Some(&2), "served and across");
        assert_eq!(status.attached_routes.get("http-only"), Some(&0));
    }

    #[test]
    fn a_tls_listener_takes_tlsroutes_when_it_passes_through_and_nothing_when_it_would_terminate() {
        let listeners = "{name: pass, protocol: TLS, port: 443, tls: {mode: Passthrough}, \
                         allowedRoutes: {kinds: [{kind: TCPRoute}, {kind: TLSRoute}]}}, \
                         {name: term, protocol: TLS, port: 8443, tls: {mode: Terminate, certificateRefs: [{name: c}]}}";
        let yaml = gateway_with("gw", "2026-01-01T00:00:00Z", listeners, "");
        let m = translated(&yaml);
        let status = m.statuses.get("Gateway", "shop", "gw").unwrap();
        let condition = |l: &str, t: ConditionType| {
            let c = status.listeners[l].iter().find(|c| c.type_ == t).unwrap();
            (c.status, c.reason)
        };
        assert_eq!(condition("pass", Accepted), (true, Reason::Accepted));
        assert_eq!(condition("pass", ResolvedRefs), (false, Reason::InvalidRouteKinds), "TCPRoute is not served");
        assert_eq!(condition("pass", Programmed), (true, Reason::Programmed));
        assert_eq!(condition("term", Accepted), (false, Reason::UnsupportedValue));
        let gateway_listeners = m.listeners.values().filter(|l| l.name.starts_with("gateway:"));
        let served: Vec<(u16, Protocol)> = gateway_listeners.map(|l| (l.addr.port(), l.protocol)).collect();
        assert_eq!(served, [(443, Protocol::TlsPassthrough)], "the terminating one is not served");

        let gw: gateway_api::gateways::Gateway = serde_saphyr::from_str(yaml.trim_end_matches("---\n")).unwrap();
        let kinds: Vec<_> = gw.spec.listeners.iter().map(supported_kinds).collect();
        assert_eq!(kinds, [vec![(GATEWAY_GROUP, "TLSRoute")], vec![]]);
    }

    #[test]
    fn a_listener_takes_routes_from_the_namespaces_its_selector_picks_by_their_labels() {
        let listener = "{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: Selector, \
                        selector: {matchLabels: {team: a}, matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}}}}";
        let namespace = |name: &str, labels: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n---\n")
        };
        let route = |ns: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: {ns}, name: r}}\n\
                 spec: {{parentRefs: [{{name: gw, namespace: shop}}]}}\n---\n"
            )
        };
        let yaml = [
            gateway_with("gw", "2026-01-01T00:00:00Z", listener, ""),
            namespace("team-a", "team: a"),
            namespace("team-b", "team: b"),
            namespace("team-a-prod", "team: a, env: prod"),
            route("team-a"),
            route("team-b"),
            route("team-a-prod"),
            route("undeclared"),
        ]
        .concat();
        let m = translated(&yaml);
        let accepted = |ns: &str| {
            let status = m.statuses.get("HTTPRoute", ns, "r").unwrap();
            let c = status.parents[0].conditions.iter().find(|c| c.type_ == ConditionType::Accepted).unwrap();
            (c.status, c.reason)
        };
        assert_eq!(accepted("team-a"), (true, Reason::Accepted));
        let refused = (false, Reason::NotAllowedByListeners);
        for ns in ["team-b", "team-a-prod", "undeclared"] {
            assert_eq!(accepted(ns), refused, "{ns}");
        }
        assert_eq!(m.statuses.get("Gateway", "shop", "gw").unwrap().attached_routes["http"], 1);

        // the name label every namespace has; a selector the API server would refuse
        let by_name = "{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: Selector, \
                       selector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [undeclared]}]}}}}";
        let m = translated(&[gateway_with("gw", "2026-01-01T00:00:00Z", by_name, ""), route("undeclared")].concat());
        let status = m.statuses.get("HTTPRoute", "undeclared", "r").unwrap();
        assert!(status.parents[0].conditions.iter().any(|c| c.type_ == ConditionType::Accepted && c.status));
        let bad = "{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: Selector, \
                   selector: {matchExpressions: [{key: team, operator: Exists, values: [a]}]}}}}";
        let m = translated(&gateway_with("gw", "2026-01-01T00:00:00Z", bad, ""));
        let listener = &m.statuses.get("Gateway", "shop", "gw").unwrap().listeners["http"];
        let accepted = listener.iter().find(|c| c.type_ == ConditionType::Accepted).unwrap();
        assert!(!accepted.status && accepted.message.contains("operator Exists takes no values"), "{accepted:?}");
        let unknown = bad.replace("operator: Exists, values: [a]", "operator: Like, values: [a]");
        let m = translated(&gateway_with("gw", "2026-01-01T00:00:00Z", &unknown, ""));
        let listener = &m.statuses.get("Gateway", "shop", "gw").unwrap().listeners["http"];
        let accepted = listener.iter().find(|c| c.type_ == ConditionType::Accepted).unwrap();
        assert!(!accepted.status && accepted.message.contains("the operator must be In, NotIn"), "{accepted:?}");
    }

    #[test]
    fn a_listener_whose_references_do_not_resolve_counts_its_routes_but_serves_only_what_resolves() {
        const ANY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        let listeners = "{name: tls, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: does-not-exist}]}}, \
                         {name: odd, protocol: HTTP, port: 80, hostname: odd.example.com, allowedRoutes: {kinds: [{kind: InvalidRoute}]}}, \
                         {name: mixed, protocol: HTTP, port: 80, allowedRoutes: {kinds: [{kind: InvalidRoute}, {kind: HTTPRoute}]}}";
        let route = |section: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: shop, name: {section}}}\n\
                 spec: {{parentRefs: [{{name: gw, sectionName: {section}}}], rules: [{{backendRefs: [{{name: web, port: 80}}]}}]}}\n---\n"
            )
        };
        let yaml = [gateway_with("gw", "2026-01-01T00:00:00Z", listeners, ""), route("tls"), route("mixed")].concat();
        let m = translated(&yaml);
        let status = m.statuses.get("Gateway", "shop", "gw").unwrap();
        let condition = |listener: &str, t: ConditionType| {
            let c = status.listeners[listener].iter().find(|c| c.type_ == t).unwrap();
            (c.status, c.reason)
        };
        assert_eq!(condition("tls", Accepted), (true, Reason::Accepted));
        assert_eq!(condition("tls", ResolvedRefs), (false, Reason::InvalidCertificateRef));
        assert_eq!(condition("tls", Programmed), (false, Reason::Invalid));
        assert_eq!(status.attached_routes["tls"], 1, "the route attaches to it all the same");
        assert_eq!(condition("odd", ResolvedRefs), (false, Reason::InvalidRouteKinds));
        assert_eq!(condition("odd", Programmed), (false, Reason::Invalid), "no kind it allows is served");
        assert_eq!(condition("mixed", ResolvedRefs), (false, Reason::InvalidRouteKinds));
        assert_eq!(condition("mixed", Programmed), (true, Reason::Programmed), "it serves HTTPRoutes");
        assert_eq!(status.attached_routes["mixed"], 1);
        let gateway = |t: ConditionType| status.conditions.iter().find(|c| c.type_ == t).map(|c| (c.status, c.reason));
        assert_eq!(gateway(Accepted), Some((true, Reason::ListenersNotValid)));
        assert_eq!(gateway(Programmed), Some((true, Reason::Programmed)), "one listener is served");
        // only port 80 is served, with the route of the mixed listener
        let served: Vec<u16> = m.listeners.keys().filter(|a| a.ip() != ANY).map(|a| a.port()).collect();
        assert_eq!(served, [80], "beside the Ingress listeners on every address");
        assert_eq!(m.listeners.values().find(|l| l.addr.port() == 80).unwrap().routes.len(), 1);

        let gw: gateway_api::gateways::Gateway =
            serde_saphyr::from_str(gateway_with("gw", "2026-01-01T00:00:00Z", listeners, "").trim_end_matches("---\n"))
                .unwrap();
        let kinds: Vec<_> = gw.spec.listeners.iter().map(supported_kinds).collect();
        let (http_route, grpc_route) = ((GATEWAY_GROUP, "HTTPRoute"), (GATEWAY_GROUP, "GRPCRoute"));
        // no allowedRoutes.kinds: both kinds; a list: the kinds of it weir serves
        assert_eq!(kinds, [vec![http_route, grpc_route], vec![], vec![http_route]]);
    }

    #[test]
    fn a_request_is_served_by_the_routes_of_the_narrowest_listener_matching_its_host_alone() {
        // the conformance suite's GatewayHTTPListenerIsolation, with hostname intersection
        let listeners = "{name: any, protocol: HTTP, port: 80}, \
                         {name: wide, protocol: HTTP, port: 80, hostname: '*.example.com'}, \
                         {name: foo, protocol: HTTP, port: 80, hostname: '*.foo.example.com'}, \
                         {name: abc, protocol: HTTP, port: 80, hostname: abc.foo.example.com}";
        let route = |name: &str, section: &str, hostnames: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: shop, name: {name}}}\n\
                 spec: {{parentRefs: [{{name: gw, sectionName: {section}}}], hostnames: {hostnames}, \
                 rules: [{{backendRefs: [{{name: web, port: 80}}]}}]}}\n---\n"
            )
        };
        let yaml = [
            gateway_with("gw", "2026-01-01T00:00:00Z", listeners, ""),
            route("on-any", "any", "['abc.foo.example.com', 'x.example.com', 'other.org']"),
            route("on-foo", "foo", "[bar.com, '*.example.com', '*.foo.example.com', abc.foo.example.com]"),
        ]
        .concat();
        let m = translated(&yaml);
        let socket = m.listeners.values().find(|l| l.addr.port() == 80).unwrap();
        let hosts_of = |route: &str| {
            let hosts = socket.routes.iter().filter(|(_, r)| r.order.owner.ends_with(&format!("/{route}")));
            let mut hosts: Vec<String> = hosts.map(|(h, _)| h.display()).collect();
            hosts.dedup();
            hosts
        };
        // abc.foo.example.com is the abc listener's, x.example.com the wide one's
        assert_eq!(hosts_of("on-any"), ["other.org"]);
        assert_eq!(hosts_of("on-foo"), ["*.foo.example.com"]);
        let hosts: Vec<String> = socket.hosts.iter().map(|h| h.display()).collect();
        assert_eq!(hosts, ["*.example.com", "*.foo.example.com", "abc.foo.example.com"], "each claims its hostname");
        // the routes are Accepted all the same: their hostnames intersect their listeners'
        for name in ["on-any", "on-foo"] {
            let status = m.statuses.get("HTTPRoute", "shop", name).unwrap();
            assert!(status.parents[0].conditions.iter().any(|c| c.type_ == Accepted && c.status), "{name}");
        }
    }

    #[test]
    fn a_gateway_asking_for_an_address_type_weir_does_not_take_is_not_accepted() {
        // the conformance suite's GatewayStaticAddresses, step by step
        let asking =
            |addresses: &str| gateway("static", "2026-01-01T00:00:00Z", &format!("  addresses: {addresses}\n"));
        let condition = |m: &Model, t: ConditionType| {
            let status = m.statuses.get("Gateway", "shop", "static").unwrap();
            status.conditions.iter().find(|c| c.type_ == t).map(|c| (c.status, c.reason))
        };
        let invalid = "[{type: test/fake-invalid-type, value: 'fake'}, {type: IPAddress, value: 10.0.0.1}, {type: IPAddress, value: 127.0.10.5}]";
        let m = translated(&asking(invalid));
        assert_eq!(condition(&m, Accepted), Some((false, Reason::UnsupportedAddress)));
        assert_eq!(condition(&m, Programmed), Some((false, Reason::Invalid)));
        let opts = TranslateOptions::defaults("weir");
        let without_pool = translated_with(&asking(invalid), &opts);
        assert_eq!(condition(&without_pool, Accepted), Some((false, Reason::UnsupportedAddress)), "with no pool too");

        let m = translated(&asking("[{type: IPAddress, value: 10.0.0.1}, {type: IPAddress, value: 127.0.10.5}]"));
        assert_eq!(condition(&m, Accepted), Some((true, Reason::Accepted)));
        assert_eq!(condition(&m, Programmed), Some((false, Reason::AddressNotUsable)));
        let m = translated(&asking("[{type: IPAddress, value: 127.0.10.5}]"));
        assert_eq!(condition(&m, Programmed), Some((true, Reason::Programmed)));
        assert_eq!(address(&m, "static"), Some("127.0.10.5".parse().unwrap()));
        // an IPAddress without a value gets one from the pool (GatewayAddressEmpty)
        let m = translated(&asking("[{type: IPAddress}]"));
        assert_eq!(address(&m, "static"), Some("127.0.10.1".parse().unwrap()));
    }

    #[test]
    fn an_exhausted_pool_says_so() {
        let yaml: String =
            (0..7).map(|i| gateway(&format!("g{i}"), &format!("2026-01-0{}T00:00:00Z", i + 1), "")).collect();
        let m = translated(&yaml);
        let last = m.statuses.get("Gateway", "shop", "g6").unwrap();
        assert!(
            last.conditions
                .iter()
                .any(|c| c.reason == Reason::AddressNotUsable && c.message.contains("no free address")),
            "{last:?}"
        );
        assert_eq!(address(&m, "g5"), Some("127.0.10.6".parse().unwrap()), "a /29 has 6 hosts");
    }

    #[test]
    fn listeners_on_one_socket_with_the_same_hostname_conflict_and_the_oldest_wins() {
        let on = |name: &str, created: &str, host: &str| {
            gateway_with(name, created, &format!("{{name: web, protocol: HTTP, port: 9080, hostname: {host}}}"), "")
        };
        let yaml = [
            on("younger", "2026-01-02T00:00:00Z", "a.example.com"),
            on("older", "2026-01-01T00:00:00Z", "a.example.com"),
            on("other", "2026-01-03T00:00:00Z", "b.example.com"),
        ]
        .concat();
        let m = translated_with(&yaml, &TranslateOptions::defaults("weir"));
        let listener = |gw: &str| m.statuses.get("Gateway", "shop", gw).unwrap().listeners["web"].clone();
        let conflicted = |gw: &str| {
            let c = listener(gw).into_iter().find(|c| c.type_ == ConditionType::Conflicted).unwrap();
            (c.status, c.reason)
        };
        assert_eq!(conflicted("older"), (false, Reason::NoConflicts));
        assert_eq!(conflicted("other"), (false, Reason::NoConflicts), "another hostname on the socket");
        assert_eq!(conflicted("younger"), (true, Reason::HostnameConflict));
        let programmed = listener("younger").into_iter().find(|c| c.type_ == ConditionType::Programmed).unwrap();
        assert!(!programmed.status && programmed.message.contains("Gateway shop/older"), "{programmed:?}");
    }
}
