//! Store → the mesh's model: a pure function, as [`super::translate`] is for the edge.
//!
//! The model holds what the outbound side reaches (each Service's expected identity, its ports'
//! pools and the HTTPRoutes attached to them) and what the inbound side authorizes with (every
//! MeshAuthorization validated, and which Services each endpoint serves). `crate::mesh` compiles
//! it into what serves. "Keep the last good version" runs on this model, so an edit that is
//! refused touches no pool: health, ejections, breaker counts and budgets survive it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::backend::{Backends, PoolKey, PortRef};
use super::gateway::{compile_route, service_parents, RouteKind};
use super::last_good::Rejects;
use super::status::ConditionType::Accepted;
use super::status::{resolved_refs, Condition, ParentRef, ParentStatus, Reason, Statuses};
use super::{reject, ActionKind, PoolSpec, RouteModel};
use crate::api::mesh_authorization::{MeshAuthorizationSpec, Mode};
use crate::api::spiffe::{SpiffeId, IDENTITY_ANNOTATION};
use crate::store::{NsName, Rejection, Store};

/// What a mesh gateway serves, validated.
#[derive(Clone, Debug, Default)]
pub struct MeshModel {
    /// The Services the outbound side reaches (empty for a gateway without one).
    pub services: BTreeMap<NsName, MeshService>,
    pub pools: BTreeMap<PoolKey, PoolSpec>,
    pub authorization: AuthorizationModel,
    pub rejections: Vec<Rejection>,
    /// MeshAuthorizations', BackendPolicies' and routes' (per Service parent) conditions.
    pub statuses: Statuses,
}

impl Rejects for MeshModel {
    fn rejections_mut(&mut self) -> &mut Vec<Rejection> {
        &mut self.rejections
    }

    fn statuses_mut(&mut self) -> Option<&mut Statuses> {
        Some(&mut self.statuses)
    }
}

/// A Service the outbound side can reach.
#[derive(Clone, Debug)]
pub struct MeshService {
    /// The SPIFFE ID its endpoints must present; `None`: any of our trust domain.
    pub identity: Option<SpiffeId>,
    pub ports: Vec<MeshPort>,
}

/// One port of a Service: its pool, and the rules of the HTTPRoutes attached to it (as a parent)
/// that send its traffic elsewhere.
#[derive(Clone, Debug)]
pub struct MeshPort {
    pub port: u16,
    pub pool: PoolKey,
    pub routes: Vec<RouteModel>,
}

/// The inbound side's authorization.
#[derive(Clone, Debug, Default)]
pub struct AuthorizationModel {
    /// Every Service's authorization, merged from the MeshAuthorizations targeting it.
    pub policies: BTreeMap<NsName, ServicePolicy>,
    /// Endpoint (pod IP, port) → the Services selecting it.
    pub services_at: BTreeMap<SocketAddr, Vec<NsName>>,
    /// Pod IP → the Services with an endpoint there (whatever the port).
    pub services_on: BTreeMap<IpAddr, Vec<NsName>>,
    /// The `weir.dev/identity` annotation of each Service that has one.
    pub identities: BTreeMap<NsName, String>,
}

/// A validated caller of a MeshAuthorization rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Exact(SpiffeId),
    /// Every identity of this namespace in our trust domain.
    Namespace(String),
}

/// A validated operation of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Without a trailing `/` (empty: every path).
    pub path_prefix: String,
    /// Empty: every method.
    pub methods: Vec<http::Method>,
}

impl Operation {
    /// Whether the request is one this operation names (a path prefix matches whole segments).
    pub fn covers(&self, method: &http::Method, path: &str) -> bool {
        let path_ok =
            path.strip_prefix(self.path_prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        path_ok && (self.methods.is_empty() || self.methods.contains(method))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRule {
    pub from: Vec<Caller>,
    /// Empty: every request.
    pub to: Vec<Operation>,
}

/// The authorization of one Service, merged from every MeshAuthorization targeting it: their
/// rules add up, and Deny wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePolicy {
    /// `namespace/name` of the MeshAuthorizations, for messages.
    pub names: Vec<String>,
    pub mode: Mode,
    pub rules: Vec<AuthorizationRule>,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        ServicePolicy { names: vec![], mode: Mode::AllowAuthenticated, rules: vec![] }
    }
}

/// Translates the store for a mesh gateway. `outbound`: the namespace of the workload when the
/// gateway has an outbound side (its Services and routes are translated, as the Gateway API mesh
/// profile binds routes for that namespace); `None` translates the authorization only.
pub fn translate(store: &Store, outbound: Option<&str>) -> MeshModel {
    let mut model = MeshModel { rejections: store.source_errors.clone(), ..MeshModel::default() };
    model.authorization = authorization(store, &mut model.rejections, &mut model.statuses);
    if let Some(namespace) = outbound {
        let mut backends = Backends::new(store, &mut model.rejections, &mut model.statuses);
        let (services, rejections) = services(store, namespace, &mut backends, &mut model.statuses);
        model.pools = backends.into_pools();
        model.services = services;
        model.rejections.extend(rejections);
    }
    model.rejections.sort();
    model.rejections.dedup();
    model
}

/// The Services and their ports' routes; a route's target whose Service was refused for its
/// identity answers 500 (its pool is dropped here), never dialled with another identity.
fn services(
    store: &Store,
    namespace: &str,
    backends: &mut Backends<'_>,
    statuses: &mut Statuses,
) -> (BTreeMap<NsName, MeshService>, Vec<Rejection>) {
    let mut rejections = vec![];
    let mut routes = mesh_routes(store, namespace, backends, &mut rejections, statuses);
    let mut services = BTreeMap::new();
    let mut unverifiable: HashSet<&NsName> = HashSet::new();
    for (key @ (ns, name), stored) in &store.services {
        let annotation = stored.object.metadata.annotations.as_ref().and_then(|a| a.get(IDENTITY_ANNOTATION));
        let identity = match annotation.map(|v| SpiffeId::parse(v)) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                let reason = format!(
                    "annotation {IDENTITY_ANNOTATION}: {e}; the Service is not reachable through the mesh until it is fixed"
                );
                rejections.push(reject("Service", ns, name, &stored.origin, reason));
                unverifiable.insert(key);
                continue;
            }
        };
        let attached = routes.remove(key).unwrap_or_default();
        let mut ports = vec![];
        for p in stored.object.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default() {
            let port = p.port as u16;
            match backends.resolve(ns, name, &PortRef::Number(port)) {
                Ok(pool) => {
                    let routes = attached.iter().filter(|(p, _)| p.is_none_or(|p| p == port)).map(|(_, r)| r.clone());
                    ports.push(MeshPort { port, pool, routes: routes.collect() })
                }
                Err(e) => rejections.push(reject("Service", ns, name, &stored.origin, e)),
            }
        }
        services.insert(key.clone(), MeshService { identity, ports });
    }
    for service in services.values_mut() {
        for route in service.ports.iter_mut().flat_map(|p| p.routes.iter_mut()) {
            let ActionKind::Forward(refs) = &route.action.kind else { continue };
            let unknown = |pool: &Option<PoolKey>| {
                pool.as_ref().is_some_and(|k| unverifiable.contains(&(k.namespace.clone(), k.service.clone())))
            };
            if refs.iter().any(|b| unknown(&b.pool)) {
                let action = Arc::make_mut(&mut route.action);
                if let ActionKind::Forward(refs) = &mut action.kind {
                    refs.iter_mut().filter(|b| unknown(&b.pool)).for_each(|b| b.pool = None);
                }
            }
        }
    }
    (services, rejections)
}

/// The rules of the HTTPRoutes attached to each Service, with the parent's port.
type Attached = BTreeMap<NsName, Vec<(Option<u16>, RouteModel)>>;

/// HTTPRoutes whose parent is a Service, compiled, by that Service (with the parent's port), as
/// the Gateway API mesh profile binds them for a workload in `namespace`: "consumer" routes (in
/// `namespace`, for another namespace's Service) replace that Service's "producer" routes (in its
/// own namespace, for every caller). Consumer routes of other namespaces are not for this gateway.
fn mesh_routes(
    store: &Store,
    namespace: &str,
    backends: &mut Backends<'_>,
    rejections: &mut Vec<Rejection>,
    statuses: &mut Statuses,
) -> Attached {
    let mut producer: Attached = BTreeMap::new();
    let mut consumer: Attached = BTreeMap::new();
    for ((ns, name), stored) in &store.http_routes {
        let parents = service_parents(&stored.object, ns);
        if parents.is_empty() || (ns != namespace && parents.iter().all(|(parent_ns, ..)| parent_ns != ns)) {
            continue;
        }
        let r = |reason: String| reject("HTTPRoute", ns, name, &stored.origin, reason);
        // a mirror would be sent in plain text to the mirror's endpoints, around mutual TLS
        let compiled =
            compile_route(&stored.object, RouteKind::Http, ns, name, backends).and_then(|(models, warnings)| {
                match models.iter().any(|m| !m.action.mirrors.is_empty()) {
                    true => Err(vec!["RequestMirror is not supported on a mesh route (a Service parent) yet".into()]),
                    false => Ok((models, warnings)),
                }
            });
        let conditions = match &compiled {
            Err(errors) => vec![Condition::fails(Accepted, Reason::UnsupportedValue, errors.join("; "))],
            Ok((_, warnings)) => vec![Condition::holds(Accepted, ""), resolved_refs(warnings)],
        };
        statuses.of("HTTPRoute", ns, name).parents.extend(parents.iter().map(|(parent_ns, service, port)| {
            let parent = ParentRef {
                group: String::new(),
                kind: "Service".into(),
                namespace: parent_ns.clone(),
                name: service.clone(),
                section_name: None,
                port: port.map(i32::from),
            };
            ParentStatus { parent, conditions: conditions.clone() }
        }));
        let (models, warnings) = match compiled {
            Ok(compiled) => compiled,
            Err(errors) => {
                rejections.push(r(errors.join("; ")));
                continue;
            }
        };
        if !warnings.is_empty() {
            rejections.push(Rejection { served: true, ..r(resolved_refs(&warnings).message) });
        }
        for (parent_ns, service, port) in parents {
            let bound = match (parent_ns == *ns, ns == namespace) {
                (true, _) => &mut producer,
                (false, true) => &mut consumer,
                (false, false) => continue,
            };
            bound.entry((parent_ns, service)).or_default().extend(models.iter().map(|m| (port, m.clone())));
        }
    }
    producer.extend(consumer);
    producer
}

/// Every MeshAuthorization validated and merged by Service, and the endpoints' Services.
fn authorization(store: &Store, rejections: &mut Vec<Rejection>, statuses: &mut Statuses) -> AuthorizationModel {
    let mut model = AuthorizationModel::default();
    for ((ns, name), stored) in &store.mesh_authorizations {
        let r = |reason: String| reject("MeshAuthorization", ns, name, &stored.origin, reason);
        let conditions = &mut statuses.of("MeshAuthorization", ns, name).conditions;
        let spec = &stored.object.spec;
        let policy = model.policies.entry((ns.clone(), spec.target_ref.name.clone())).or_default();
        policy.names.push(format!("{ns}/{name}"));
        match authorization_rules(spec) {
            Err(problems) => {
                // a refused policy must not open the Service: it denies until fixed
                let reason = format!("{}; the Service denies every request until it is fixed", problems.join("; "));
                conditions.push(Condition::fails(Accepted, Reason::Invalid, reason.clone()));
                rejections.push(r(reason));
                policy.mode = Mode::Deny;
            }
            Ok((mode, rules)) => {
                if !store.services.contains_key(&(ns.clone(), spec.target_ref.name.clone())) {
                    let reason =
                        format!("targetRef: no Service {ns}/{} (the rules apply once it exists)", spec.target_ref.name);
                    conditions.push(Condition::fails(Accepted, Reason::TargetNotFound, reason.clone()));
                    rejections.push(Rejection { served: true, ..r(reason) });
                } else {
                    conditions.push(Condition::holds(Accepted, ""));
                }
                if mode == Mode::Deny {
                    policy.mode = Mode::Deny;
                }
                policy.rules.extend(rules);
            }
        }
    }
    for (key, stored) in &store.services {
        if let Some(id) = stored.object.metadata.annotations.as_ref().and_then(|a| a.get(IDENTITY_ANNOTATION)) {
            model.identities.insert(key.clone(), id.trim().to_string());
        }
    }
    for stored in store.endpoint_slices.values() {
        let slice = &stored.object;
        let Some(service) = crate::store::service_of(slice) else {
            continue;
        };
        let key = (slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), service.to_string());
        let ports: BTreeSet<u16> = slice.ports.iter().flatten().filter_map(|p| p.port).map(|p| p as u16).collect();
        for ip in slice.endpoints.iter().flat_map(|e| &e.addresses).filter_map(|a| a.parse::<IpAddr>().ok()) {
            add_once(model.services_on.entry(ip).or_default(), &key);
            for port in &ports {
                add_once(model.services_at.entry(SocketAddr::new(ip, *port)).or_default(), &key);
            }
        }
    }
    model
}

fn add_once(services: &mut Vec<NsName>, key: &NsName) {
    if !services.contains(key) {
        services.push(key.clone());
    }
}

/// Validates a MeshAuthorization's spec: every problem, each with its field and what to do.
fn authorization_rules(spec: &MeshAuthorizationSpec) -> Result<(Mode, Vec<AuthorizationRule>), Vec<String>> {
    let mut problems = vec![];
    let t = &spec.target_ref;
    if !(t.group.is_empty() || t.group == "core") || t.kind != "Service" {
        problems.push(format!(
            "spec.targetRef: {}/{} is not supported; a MeshAuthorization targets a Service (group \"\", kind Service)",
            t.group, t.kind
        ));
    }
    if t.name.is_empty() {
        problems.push("spec.targetRef.name: is empty; name a Service of this namespace".into());
    }
    let mut rules = vec![];
    for (i, r) in spec.rules.iter().enumerate() {
        if r.from.is_empty() {
            problems.push(format!("spec.rules[{i}].from: is empty; list the callers allowed (identity or namespace)"));
        }
        let mut from = vec![];
        for (j, c) in r.from.iter().enumerate() {
            let at = format!("spec.rules[{i}].from[{j}]");
            match (&c.identity, &c.namespace) {
                (Some(id), None) => match SpiffeId::parse(id) {
                    Ok(id) => from.push(Caller::Exact(id)),
                    Err(e) => problems.push(format!("{at}.identity: {e}")),
                },
                (None, Some(ns)) if !ns.is_empty() => from.push(Caller::Namespace(ns.clone())),
                (None, Some(_)) => problems.push(format!("{at}.namespace: is empty; name a namespace")),
                _ => problems.push(format!("{at}: set exactly one of identity or namespace")),
            }
        }
        let mut to = vec![];
        for (j, o) in r.to.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].to[{j}]");
            let prefix = o.path_prefix.as_deref().unwrap_or("/");
            if !prefix.starts_with('/') {
                problems.push(format!("{at}.pathPrefix: {prefix:?} must start with /"));
            }
            let mut methods = vec![];
            for m in o.methods.iter().flatten() {
                match http::Method::from_bytes(m.as_bytes()) {
                    Ok(method) if m.chars().all(|c| c.is_ascii_uppercase()) => methods.push(method),
                    _ => problems.push(format!("{at}.methods: {m:?} is not an HTTP method in upper case, e.g. GET")),
                }
            }
            to.push(Operation { path_prefix: prefix.trim_end_matches('/').to_string(), methods });
        }
        rules.push(AuthorizationRule { from, to });
    }
    if problems.is_empty() {
        Ok((spec.default_mode.unwrap_or_default(), rules))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> MeshAuthorizationSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn invalid_authorizations_say_every_problem() {
        let problems = authorization_rules(&spec(
            "targetRef: {kind: Deployment, name: ''}
rules:
- from: [{identity: 'http://x'}, {}, {identity: 'spiffe://cluster.local/ns/a/sa/b', namespace: a}]
  to: [{pathPrefix: pay, methods: [get, POST]}]
- from: []",
        ))
        .unwrap_err();
        let text = problems.join("\n");
        for needle in [
            "spec.targetRef: /Deployment is not supported",
            "spec.targetRef.name: is empty",
            "spec.rules[0].from[0].identity: \"http://x\" is not a SPIFFE ID",
            "spec.rules[0].from[1]: set exactly one of identity or namespace",
            "spec.rules[0].from[2]: set exactly one",
            "spec.rules[0].to[0].pathPrefix: \"pay\" must start with /",
            "spec.rules[0].to[0].methods: \"get\" is not an HTTP method in upper case",
            "spec.rules[1].from: is empty",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn path_prefixes_match_whole_segments() {
        let o = Operation { path_prefix: "/pay".into(), methods: vec![http::Method::POST] };
        assert!(o.covers(&http::Method::POST, "/pay") && o.covers(&http::Method::POST, "/pay/42"));
        assert!(!o.covers(&http::Method::POST, "/payments") && !o.covers(&http::Method::GET, "/pay"));
        let all = Operation { path_prefix: String::new(), methods: vec![] };
        assert!(all.covers(&http::Method::DELETE, "/") && all.covers(&http::Method::GET, "/x"));
    }
}
