//! Mesh authorization: `MeshAuthorization` (`weir.dev/v1alpha1`), which callers may reach a
//! Service, and the inbound gateway's decision for each request.
//!
//! A `MeshAuthorization` targets one Service of its namespace. Its rules allow callers (an exact
//! SPIFFE ID, or every identity of a namespace of our trust domain) to make some requests (a
//! path prefix, methods; every request when `to` is absent). A request that some rule covers
//! (its `to` matches) is allowed only if one of the covering rules names the caller; a request no
//! rule covers gets the default mode: `AllowAuthenticated` (every caller that passed the mutual
//! TLS handshake, the default) or `Deny`.
//!
//! The inbound gateway learns the destination Service from where the request arrived, never from
//! what the caller says: the address the caller dialed (the endpoint's IP) and the target port
//! are looked up in the EndpointSlices. When several Services select that endpoint, each of their
//! authorizations must allow the request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::identity::SpiffeId;
use super::outbound::IDENTITY_ANNOTATION;
use crate::api::mesh_authorization::{MeshAuthorizationSpec, Mode};
use crate::config::DefaultPolicy;
use crate::store::{NsName, Rejection, Store};
use crate::translate::reject;

/// A validated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Caller {
    Exact(SpiffeId),
    Namespace(String),
}

/// A validated operation.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Operation {
    /// Without a trailing `/` (empty: every path).
    path_prefix: String,
    methods: Vec<http::Method>,
}

impl Operation {
    fn covers(&self, method: &http::Method, path: &str) -> bool {
        let path_ok =
            path.strip_prefix(self.path_prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        path_ok && (self.methods.is_empty() || self.methods.contains(method))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    from: Vec<Caller>,
    /// Empty: every request.
    to: Vec<Operation>,
}

/// The authorization of one Service, merged from every MeshAuthorization targeting it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Policy {
    /// `namespace/name` of the MeshAuthorizations, for messages.
    names: Vec<String>,
    mode: Mode,
    rules: Vec<Rule>,
}

/// Why a request was refused: the `reason` label and the text for `weir-denied-reason`.
#[derive(Debug, PartialEq, Eq)]
pub struct Denial {
    pub label: &'static str,
    pub text: String,
    /// `name.namespace` of the Service whose authorization refused.
    pub service: String,
}

/// What the gateway itself brings to authorization: whose gateway it is, and its default.
#[derive(Clone, Debug, Default)]
pub struct GatewayPolicy {
    /// The gateway's SPIFFE ID: Services whose `weir.dev/identity` is this are its workload's.
    pub own_id: String,
    /// The workload's address: Services with an endpoint there are its workload's too.
    pub workload: Option<IpAddr>,
    /// What a request gets when no MeshAuthorization applies (`--default-policy`).
    pub default: DefaultPolicy,
}

/// Every Service's authorization, and which Services each endpoint serves.
#[derive(Default)]
pub struct Authorizer {
    /// Endpoint (pod IP, port) → the Services selecting it.
    services_at: HashMap<SocketAddr, Vec<NsName>>,
    /// Endpoint → `name.namespace` of its first Service, the `destination` label of metrics.
    labels: HashMap<SocketAddr, Arc<str>>,
    policies: HashMap<NsName, Policy>,
    trust_domain: String,
    /// A Service of this gateway's workload (by identity annotation or endpoint address) whose
    /// policy denies by default: it holds for a request no EndpointSlice resolves. Its Service
    /// (`name.namespace`) and the refusal's text after the address.
    workload_deny: Option<(String, String)>,
    default: DefaultPolicy,
    pub rejections: Vec<Rejection>,
}

impl Authorizer {
    /// Builds the authorizer from `store`; `trust_domain` is ours (namespace callers are in it).
    pub fn build(store: &Store, trust_domain: &str, gateway: &GatewayPolicy) -> Authorizer {
        let mut rejections = vec![];
        let mut policies: HashMap<NsName, Policy> = HashMap::new();
        for ((ns, name), stored) in &store.mesh_authorizations {
            let r = |reason: String| reject("MeshAuthorization", ns, name, &stored.origin, reason);
            let spec = &stored.object.spec;
            match compile(spec) {
                Err(problems) => {
                    // a refused policy must not open the Service: it denies until fixed
                    rejections.push(r(format!(
                        "{}; the Service denies every request until it is fixed",
                        problems.join("; ")
                    )));
                    let p = policies.entry((ns.clone(), spec.target_ref.name.clone())).or_insert_with(empty_policy);
                    p.names.push(format!("{ns}/{name}"));
                    p.mode = Mode::Deny;
                }
                Ok((mode, rules)) => {
                    if !store.services.contains_key(&(ns.clone(), spec.target_ref.name.clone())) {
                        let reason = format!(
                            "targetRef: no Service {ns}/{} (the rules apply once it exists)",
                            spec.target_ref.name
                        );
                        rejections.push(Rejection { served: true, ..r(reason) });
                    }
                    let p = policies.entry((ns.clone(), spec.target_ref.name.clone())).or_insert_with(empty_policy);
                    p.names.push(format!("{ns}/{name}"));
                    // several policies on one Service: their rules add up, and Deny wins
                    if mode == Mode::Deny {
                        p.mode = Mode::Deny;
                    }
                    p.rules.extend(rules);
                }
            }
        }
        let mut workload_services: Vec<NsName> = store
            .services
            .iter()
            .filter(|(_, s)| {
                let id = s.object.metadata.annotations.as_ref().and_then(|a| a.get(IDENTITY_ANNOTATION));
                !gateway.own_id.is_empty() && id.is_some_and(|id| id.trim() == gateway.own_id)
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut services_at: HashMap<SocketAddr, Vec<NsName>> = HashMap::new();
        for stored in store.endpoint_slices.values() {
            let slice = &stored.object;
            let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) else {
                continue;
            };
            let ns = slice.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let ports: Vec<u16> = slice.ports.iter().flatten().filter_map(|p| p.port).map(|p| p as u16).collect();
            for ep in &slice.endpoints {
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    let key = (ns.clone(), service.clone());
                    if Some(ip) == gateway.workload && !workload_services.contains(&key) {
                        workload_services.push(key.clone());
                    }
                    for port in &ports {
                        let at = services_at.entry(SocketAddr::new(ip, *port)).or_default();
                        if !at.contains(&key) {
                            at.push(key.clone());
                        }
                    }
                }
            }
        }
        let labels = services_at.iter().map(|(at, s)| (*at, Arc::from(format!("{}.{}", s[0].1, s[0].0)))).collect();
        let workload_deny = workload_services.iter().find_map(|key @ (ns, name)| {
            let p = policies.get(key).filter(|p| p.mode == Mode::Deny)?;
            let text = format!(
                " yet, and Service {ns}/{name} of this workload denies by default (MeshAuthorization {}); retry once the slice lists the Pod",
                p.names.join(", ")
            );
            Some((format!("{name}.{ns}"), text))
        });
        Authorizer {
            services_at,
            labels,
            policies,
            trust_domain: trust_domain.to_string(),
            workload_deny,
            default: gateway.default,
            rejections,
        }
    }

    /// The Services the endpoint `at` (the address a caller dialed, with the target port) serves.
    pub fn services_at(&self, at: SocketAddr) -> &[NsName] {
        self.services_at.get(&at).map_or(&[], Vec::as_slice)
    }

    /// `name.namespace` of the (first) Service the endpoint `at` serves, if any.
    pub fn label_at(&self, at: SocketAddr) -> Option<&Arc<str>> {
        self.labels.get(&at)
    }

    /// Whether `caller` may make this request to the endpoint `at` (the address the caller
    /// dialed with the target port; `None` when the connection's local address is unknown).
    ///
    /// Never open by accident: a request whose endpoint no EndpointSlice lists (a new Pod, a slice
    /// lagging behind) is refused while any Service of the workload has a Deny policy, and gets
    /// the gateway's default otherwise, as does a request to Services without any policy.
    pub fn decide(
        &self,
        caller: &SpiffeId,
        at: Option<SocketAddr>,
        method: &http::Method,
        path: &str,
    ) -> Result<(), Denial> {
        let services = at.map_or(&[][..], |at| self.services_at(at));
        if services.is_empty() {
            if let Some((service, text)) = &self.workload_deny {
                let at = at.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
                let text = format!("no EndpointSlice lists {at}{text}");
                return Err(Denial { label: "unresolved", text, service: service.clone() });
            }
            return self.default_decision(caller, method, path, "");
        }
        let mut governed = false;
        for service in services {
            if let Some(policy) = self.policies.get(service) {
                governed = true;
                self.check(policy, service, caller, method, path)?;
            }
        }
        if governed {
            return Ok(());
        }
        let (ns, name) = &services[0];
        self.default_decision(caller, method, path, &format!("{name}.{ns}"))
    }

    /// What the gateway's `--default-policy` says of a request no MeshAuthorization governs.
    fn default_decision(
        &self,
        caller: &SpiffeId,
        method: &http::Method,
        path: &str,
        service: &str,
    ) -> Result<(), Denial> {
        match self.default {
            DefaultPolicy::AllowAuthenticated => Ok(()),
            DefaultPolicy::Deny => Err(Denial {
                label: "default_deny",
                text: format!(
                    "no MeshAuthorization lets {caller} {method} {path}, and this gateway's --default-policy is deny"
                ),
                service: service.to_string(),
            }),
        }
    }

    fn check(
        &self,
        p: &Policy,
        (ns, name): &NsName,
        caller: &SpiffeId,
        method: &http::Method,
        path: &str,
    ) -> Result<(), Denial> {
        let covering: Vec<&Rule> =
            p.rules.iter().filter(|r| r.to.is_empty() || r.to.iter().any(|o| o.covers(method, path))).collect();
        let names = p.names.join(", ");
        let deny = |label, text| Err(Denial { label, text, service: format!("{name}.{ns}") });
        if covering.is_empty() {
            return match p.mode {
                Mode::AllowAuthenticated => Ok(()),
                Mode::Deny => deny(
                    "no_rule",
                    format!("no rule of MeshAuthorization {names} covers {method} {path} on Service {ns}/{name} (defaultMode: Deny)"),
                ),
            };
        }
        if covering.iter().any(|r| r.from.iter().any(|c| self.matches(c, caller))) {
            return Ok(());
        }
        deny(
            "not_allowed",
            format!("{caller} may not {method} {path} on Service {ns}/{name} (MeshAuthorization {names})"),
        )
    }

    fn matches(&self, c: &Caller, caller: &SpiffeId) -> bool {
        match c {
            Caller::Exact(id) => id == caller,
            Caller::Namespace(ns) => caller.trust_domain() == self.trust_domain && caller.namespace() == Some(ns),
        }
    }
}

fn empty_policy() -> Policy {
    Policy { names: vec![], mode: Mode::AllowAuthenticated, rules: vec![] }
}

/// Validates a spec: every problem, each with its field and what to do.
fn compile(spec: &MeshAuthorizationSpec) -> Result<(Mode, Vec<Rule>), Vec<String>> {
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
        rules.push(Rule { from, to });
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
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn invalid_specs_say_every_problem() {
        let problems = compile(&spec(
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
