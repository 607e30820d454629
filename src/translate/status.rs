//! Typed results of translation, in the Gateway API's vocabulary, ready to become status: per
//! object (GatewayClass, Gateway, BackendPolicy, MeshAuthorization), per Gateway listener and per
//! parent reference of a route, conditions with a type, a status, a reason and a message.
//!
//! They are computed with the model, from the same decisions, so what status says and what
//! weir serves cannot disagree. `/config_dump` shows them; the Kubernetes status writer patches
//! them unchanged.

use std::collections::BTreeMap;

use serde::Serialize;

/// The condition types weir sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ConditionType {
    Accepted,
    ResolvedRefs,
    Programmed,
    /// A Gateway listener's: it collides with another on its address and port.
    Conflicted,
}

/// Condition reasons, as the Gateway API (and GEP-713 for policies) names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Reason {
    Accepted,
    ResolvedRefs,
    Programmed,
    /// Something in the object is invalid (also GEP-713's reason for a policy).
    Invalid,
    /// A field's value is one weir does not support.
    UnsupportedValue,
    UnsupportedProtocol,
    /// Another listener holds the port.
    PortUnavailable,
    /// Some listeners of a Gateway are not valid; the rest are served.
    ListenersNotValid,
    InvalidCertificateRef,
    InvalidRouteKinds,
    /// A reference to another namespace that no ReferenceGrant allows.
    RefNotPermitted,
    BackendNotFound,
    /// A backend of a kind weir does not route to.
    InvalidKind,
    /// No listener of the parent matches the reference's sectionName or port.
    NoMatchingParent,
    /// The listener does not allow routes of this kind or namespace.
    NotAllowedByListeners,
    /// None of the route's hostnames matches the listener's.
    NoMatchingListenerHostname,
    /// A policy's target does not exist (GEP-713).
    TargetNotFound,
    /// The Gateway cannot have the address it asks for, or any (its `Programmed` reason).
    AddressNotUsable,
    /// The Gateway asks for an address of a type weir does not take (its `Accepted` reason).
    UnsupportedAddress,
    /// A listener's `Conflicted=False`.
    NoConflicts,
    /// Another listener on the address and port has the same hostname.
    HostnameConflict,
}

/// One condition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

impl Condition {
    /// A true condition whose reason is its type's own name ("Accepted", ...).
    pub fn holds(type_: ConditionType, message: impl Into<String>) -> Condition {
        let reason = match type_ {
            ConditionType::Accepted => Reason::Accepted,
            ConditionType::ResolvedRefs => Reason::ResolvedRefs,
            ConditionType::Programmed => Reason::Programmed,
            ConditionType::Conflicted => Reason::HostnameConflict,
        };
        Condition { type_, status: true, reason, message: message.into() }
    }

    pub fn fails(type_: ConditionType, reason: Reason, message: impl Into<String>) -> Condition {
        Condition { type_, status: false, reason, message: message.into() }
    }
}

/// What went wrong with part of an object: the condition it sets false, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub type_: ConditionType,
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(type_: ConditionType, reason: Reason, message: impl Into<String>) -> Problem {
        Problem { type_, reason, message: message.into() }
    }

    pub fn condition(&self) -> Condition {
        Condition::fails(self.type_, self.reason, self.message.clone())
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The ResolvedRefs condition of a route whose backend references had `problems`: true when
/// there are none, else false with the first problem's reason and every problem's message.
pub fn resolved_refs(problems: &[Problem]) -> Condition {
    match problems.first() {
        None => Condition::holds(ConditionType::ResolvedRefs, ""),
        Some(first) => {
            let message = problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ");
            Condition { message, ..first.condition() }
        }
    }
}

/// A route's parent, as its `parentRefs` entry names it (namespace filled in).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// The conditions of one object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObjectStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A Gateway's, by listener name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, Vec<Condition>>,
    /// A Gateway's routes attached (accepted, with a hostname in common), by listener name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attached_routes: BTreeMap<String, u32>,
    /// A route's, per parent reference.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentStatus>,
    /// A Gateway's address (its own from the pool, or the one every Gateway shares).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParentStatus {
    pub parent: ParentRef,
    pub conditions: Vec<Condition>,
}

/// An object: kind, namespace (empty for cluster-scoped kinds), name.
pub type ObjectKey = (String, String, String);

/// Every object's conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statuses(pub BTreeMap<ObjectKey, ObjectStatus>);

impl Statuses {
    /// The status of `kind ns/name`, created empty.
    pub fn of(&mut self, kind: &str, ns: &str, name: &str) -> &mut ObjectStatus {
        self.0.entry((kind.to_string(), ns.to_string(), name.to_string())).or_default()
    }

    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<&ObjectStatus> {
        self.0.get(&(kind.to_string(), ns.to_string(), name.to_string()))
    }

    /// Adds `other`'s objects (the mesh's to the edge's, say); an object in both gets both.
    pub fn extend(&mut self, other: Statuses) {
        for (key, status) in other.0 {
            let mine = self.0.entry(key).or_default();
            mine.conditions.extend(status.conditions);
            mine.listeners.extend(status.listeners);
            for (listener, n) in status.attached_routes {
                *mine.attached_routes.entry(listener).or_default() += n;
            }
            mine.parents.extend(status.parents);
            mine.address = mine.address.or(status.address);
        }
    }
}

impl Serialize for Statuses {
    /// A list of `{kind, namespace, name, conditions, listeners, parents}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a> {
            kind: &'a str,
            namespace: &'a str,
            name: &'a str,
            #[serde(flatten)]
            status: &'a ObjectStatus,
        }
        s.collect_seq(self.0.iter().map(|((kind, namespace, name), status)| Entry { kind, namespace, name, status }))
    }
}

#[cfg(test)]
mod tests {
    use super::ConditionType::*;
    use super::*;
    use crate::source::manifest::parse_manifests;
    use crate::store::Store;
    use crate::translate::{build_keeping_last_good, translate, Model, TranslateOptions};

    const CLASS_AND_GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weir}
spec: {controllerName: weir.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {namespace: infra, name: gw}
spec:
  gatewayClassName: weir
  listeners:
  - {name: web, protocol: HTTP, port: 9080, hostname: '*.example.com'}
  - {name: raw, protocol: TCP, port: 9081}
  - name: secure
    protocol: HTTPS
    port: 9443
    tls: {certificateRefs: [{name: cert, namespace: vault}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: infra, name: web}
spec: {ports: [{name: http, port: 80}]}
";

    fn store(yaml: &str) -> Store {
        let mut store = Store::default();
        let (objects, errors) = parse_manifests(yaml, "test.yaml");
        assert!(errors.is_empty(), "{errors:?}");
        for o in objects {
            store.apply(o, "test.yaml");
        }
        store
    }

    fn model(store: &Store) -> Model {
        translate(store, &TranslateOptions::defaults("weir"))
    }

    /// `(status, reason)` of condition `t` in `conditions`.
    fn of(conditions: &[Condition], t: ConditionType) -> (bool, Reason) {
        let c = conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t:?} in {conditions:?}"));
        (c.status, c.reason)
    }

    fn route(name: &str, parent: &str, hostnames: &str, backend: &str) -> String {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{namespace: infra, name: {name}}}
spec:
  parentRefs: [{parent}]
  hostnames: {hostnames}
  rules: [{{backendRefs: [{backend}]}}]
"
        )
    }

    #[test]
    fn a_gateway_says_which_listeners_it_serves_and_why_not_the_others() {
        let m = model(&store(CLASS_AND_GATEWAY));
        let class = m.statuses.get("GatewayClass", "", "weir").unwrap();
        assert_eq!(of(&class.conditions, Accepted), (true, Reason::Accepted));
        let gw = m.statuses.get("Gateway", "infra", "gw").unwrap();
        assert_eq!(of(&gw.conditions, Accepted), (true, Reason::ListenersNotValid));
        assert_eq!(of(&gw.conditions, Programmed), (true, Reason::Programmed));
        let web = &gw.listeners["web"];
        assert_eq!([of(web, Accepted), of(web, ResolvedRefs), of(web, Programmed)].map(|c| c.0), [true; 3]);
        assert_eq!(of(web, Conflicted), (false, Reason::NoConflicts));
        let raw = &gw.listeners["raw"];
        assert_eq!(of(raw, Accepted), (false, Reason::UnsupportedProtocol));
        assert_eq!(of(raw, Programmed), (false, Reason::Invalid));
        let secure = &gw.listeners["secure"];
        assert_eq!(of(secure, Accepted), (true, Reason::Accepted));
        assert_eq!(of(secure, ResolvedRefs), (false, Reason::RefNotPermitted));
        assert!(secure.iter().any(|c| c.message.contains("ReferenceGrant in vault")), "{secure:?}");
    }

    #[test]
    fn a_route_gets_conditions_per_parent_reference() {
        let yaml = [
            CLASS_AND_GATEWAY,
            &route("good", "{name: gw, sectionName: web}", "[a.example.com]", "{name: web, port: 80}"),
            &route("no-section", "{name: gw, sectionName: nope}", "[]", "{name: web, port: 80}"),
            // (the secure listener, whose certificate is not permitted, takes routes of any
            // hostname: they attach, counted, and are served once it resolves)
            &route("elsewhere", "{name: gw, sectionName: web}", "[a.example.org]", "{name: web, port: 80}"),
            &route("missing", "{name: gw}", "[]", "{name: ghost, port: 80}"),
            &route("foreign", "{name: gw}", "[]", "{name: web, namespace: other, port: 80}"),
            &route("kind", "{name: gw}", "[]", "{group: example.com, kind: Bucket, name: b}"),
        ]
        .concat();
        let m = model(&store(&yaml));
        let parent = |name: &str| {
            let s = m.statuses.get("HTTPRoute", "infra", name).unwrap_or_else(|| panic!("no status for {name}"));
            assert_eq!(s.parents.len(), 1, "{s:?}");
            assert_eq!((s.parents[0].parent.kind.as_str(), s.parents[0].parent.name.as_str()), ("Gateway", "gw"));
            s.parents[0].conditions.clone()
        };
        assert_eq!(of(&parent("good"), Accepted), (true, Reason::Accepted));
        assert_eq!(of(&parent("good"), ResolvedRefs), (true, Reason::ResolvedRefs));
        assert_eq!(of(&parent("no-section"), Accepted), (false, Reason::NoMatchingParent));
        assert_eq!(of(&parent("elsewhere"), Accepted), (false, Reason::NoMatchingListenerHostname));
        assert_eq!(of(&parent("missing"), Accepted), (true, Reason::Accepted));
        assert_eq!(of(&parent("missing"), ResolvedRefs), (false, Reason::BackendNotFound));
        assert_eq!(of(&parent("foreign"), ResolvedRefs), (false, Reason::RefNotPermitted));
        assert_eq!(of(&parent("kind"), ResolvedRefs), (false, Reason::InvalidKind));
    }

    #[test]
    fn a_refused_edit_keeps_serving_its_last_good_version_and_its_status_says_why() {
        let good = [CLASS_AND_GATEWAY, &route("r", "{name: gw}", "[]", "{name: web, port: 80}")].concat();
        let bad = good
            .replace("rules: [{backendRefs:", "rules: [{matches: [{path: {type: Exact, value: nope}}], backendRefs:");
        let (served, _) = build_keeping_last_good(store(&good), &Store::default(), model);
        let (_, m) = build_keeping_last_good(store(&bad), &served, model);
        assert_eq!(m.listeners[&"0.0.0.0:9080".parse().unwrap()].routes.len(), 1, "the last good version serves");
        let s = m.statuses.get("HTTPRoute", "infra", "r").unwrap();
        assert_eq!(of(&s.parents[0].conditions, Accepted), (false, Reason::UnsupportedValue));
        assert!(s.parents[0].conditions[0].message.contains("must start with '/'"), "{s:?}");
    }
}
