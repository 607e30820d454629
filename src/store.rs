//! Typed Kubernetes objects by kind, namespace and name. Sources apply and delete; the
//! translator reads. Nothing else writes it.

use std::collections::BTreeMap;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::Serialize;

use crate::api::backend_policy::BackendPolicy;
use crate::api::mesh_authorization::MeshAuthorization;

/// The Gateway API's group, of the kinds a ReferenceGrant lets refer across namespaces.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// `namespace/name` (cluster-scoped objects have an empty namespace).
pub type NsName = (String, String);

/// An object and where it came from (a file path, or `kubernetes`). The object is shared:
/// copying a store (each publish does) copies pointers, and comparing two stores compares an
/// object only when the two copies are not the same allocation.
#[derive(Clone, Debug)]
pub struct Stored<T> {
    pub object: std::sync::Arc<T>,
    pub origin: std::sync::Arc<str>,
}

impl<T: PartialEq> PartialEq for Stored<T> {
    fn eq(&self, other: &Self) -> bool {
        (std::sync::Arc::ptr_eq(&self.object, &other.object) || self.object == other.object)
            && self.origin == other.origin
    }
}

/// One object of any kind weir understands.
#[derive(Clone, Debug)]
pub enum Object {
    Ingress(Box<Ingress>),
    IngressClass(Box<IngressClass>),
    GatewayClass(Box<GatewayClass>),
    Gateway(Box<Gateway>),
    HttpRoute(Box<HttpRoute>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Secret(Box<Secret>),
    BackendPolicy(Box<BackendPolicy>),
    MeshAuthorization(Box<MeshAuthorization>),
    ReferenceGrant(Box<ReferenceGrant>),
}

/// An object weir could not use, and why. Shown in `/config_dump`, in the log and by
/// `weir validate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct Rejection {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The file (or `kubernetes`) the object came from.
    pub file: String,
    pub reason: String,
    /// The object is served despite this problem (say, one invalid backendRef of a route
    /// answers 500 while the rest of the route works).
    pub served: bool,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.file)?;
        if !self.kind.is_empty() || !self.name.is_empty() {
            let ns = if self.namespace.is_empty() { String::new() } else { format!("{}/", self.namespace) };
            write!(f, "{} {}{}: ", self.kind, ns, self.name)?;
        }
        write!(f, "{}", self.reason)
    }
}

/// Every object weir knows about, by kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Store {
    pub ingresses: BTreeMap<NsName, Stored<Ingress>>,
    pub ingress_classes: BTreeMap<String, Stored<IngressClass>>,
    pub gateway_classes: BTreeMap<String, Stored<GatewayClass>>,
    pub gateways: BTreeMap<NsName, Stored<Gateway>>,
    pub http_routes: BTreeMap<NsName, Stored<HttpRoute>>,
    pub services: BTreeMap<NsName, Stored<Service>>,
    /// Keyed by the slice's own namespace/name; grouped by Service at translation.
    pub endpoint_slices: BTreeMap<NsName, Stored<EndpointSlice>>,
    pub secrets: BTreeMap<NsName, Stored<Secret>>,
    pub backend_policies: BTreeMap<NsName, Stored<BackendPolicy>>,
    pub mesh_authorizations: BTreeMap<NsName, Stored<MeshAuthorization>>,
    pub reference_grants: BTreeMap<NsName, Stored<ReferenceGrant>>,
    /// Objects the source could not even read (parse errors, unknown kinds).
    pub source_errors: Vec<Rejection>,
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> NsName {
    (meta.namespace.clone().unwrap_or_else(|| "default".to_string()), meta.name.clone().unwrap_or_default())
}

impl Store {
    /// Adds or replaces an object. Namespaced objects without a namespace land in `default`,
    /// as `kubectl apply` would put them.
    pub fn apply(&mut self, object: Object, origin: &str) {
        let origin: std::sync::Arc<str> = origin.into();
        macro_rules! put {
            ($map:ident, $o:expr, namespaced) => {{
                let mut o = *$o;
                let key = ns_name(&o.metadata);
                o.metadata.namespace = Some(key.0.clone());
                self.$map.insert(key, Stored { object: std::sync::Arc::new(o), origin })
            }};
            ($map:ident, $o:expr, cluster) => {{
                let o = *$o;
                let key = o.metadata.name.clone().unwrap_or_default();
                self.$map.insert(key, Stored { object: std::sync::Arc::new(o), origin })
            }};
        }
        match object {
            Object::Ingress(o) => drop(put!(ingresses, o, namespaced)),
            Object::IngressClass(o) => drop(put!(ingress_classes, o, cluster)),
            Object::GatewayClass(o) => drop(put!(gateway_classes, o, cluster)),
            Object::Gateway(o) => drop(put!(gateways, o, namespaced)),
            Object::HttpRoute(o) => drop(put!(http_routes, o, namespaced)),
            Object::Service(o) => drop(put!(services, o, namespaced)),
            Object::EndpointSlice(o) => drop(put!(endpoint_slices, o, namespaced)),
            Object::Secret(o) => drop(put!(secrets, o, namespaced)),
            Object::BackendPolicy(o) => drop(put!(backend_policies, o, namespaced)),
            Object::MeshAuthorization(o) => drop(put!(mesh_authorizations, o, namespaced)),
            Object::ReferenceGrant(o) => drop(put!(reference_grants, o, namespaced)),
        }
    }

    /// Removes object `kind ns/name` (`ns` empty for cluster-scoped kinds); `kind` as the
    /// Kubernetes source names its watches.
    pub fn remove(&mut self, kind: &str, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        match kind {
            "Ingress" => drop(self.ingresses.remove(&key)),
            "IngressClass" => drop(self.ingress_classes.remove(name)),
            "GatewayClass" => drop(self.gateway_classes.remove(name)),
            "Gateway" => drop(self.gateways.remove(&key)),
            "HTTPRoute" => drop(self.http_routes.remove(&key)),
            "Service" => drop(self.services.remove(&key)),
            "EndpointSlice" => drop(self.endpoint_slices.remove(&key)),
            "Secret" => drop(self.secrets.remove(&key)),
            "BackendPolicy" => drop(self.backend_policies.remove(&key)),
            "MeshAuthorization" => drop(self.mesh_authorizations.remove(&key)),
            "ReferenceGrant" => drop(self.reference_grants.remove(&key)),
            _ => {}
        }
    }

    /// Puts `previous`'s version of object `kind ns/name` in place of this store's, if
    /// `previous` has a different one; returns whether it did. Used to keep serving the last
    /// good version of an object whose new version is rejected.
    pub fn restore_from(&mut self, previous: &Store, kind: &str, ns: &str, name: &str) -> bool {
        let key = (ns.to_string(), name.to_string());
        macro_rules! restore {
            ($map:ident, $key:expr) => {{
                match previous.$map.get(&$key) {
                    Some(old) if self.$map.get(&$key).map(|o| &o.object) != Some(&old.object) => {
                        self.$map.insert($key, old.clone());
                        true
                    }
                    _ => false,
                }
            }};
        }
        match kind {
            "Ingress" => restore!(ingresses, key),
            "Gateway" => restore!(gateways, key),
            "HTTPRoute" => restore!(http_routes, key),
            "Service" => restore!(services, key),
            "Secret" => restore!(secrets, key),
            "BackendPolicy" => restore!(backend_policies, key),
            "MeshAuthorization" => restore!(mesh_authorizations, key),
            _ => false,
        }
    }

    /// Whether `other` holds the same objects as this store, EndpointSlices aside: a change
    /// between the two moves endpoints only, and no route needs translating again.
    pub fn same_but_endpoints(&self, other: &Store) -> bool {
        // every field named, so that a new kind cannot be forgotten here
        let Store {
            ingresses,
            ingress_classes,
            gateway_classes,
            gateways,
            http_routes,
            services,
            endpoint_slices: _,
            secrets,
            backend_policies,
            mesh_authorizations,
            reference_grants,
            source_errors,
        } = self;
        *ingresses == other.ingresses
            && *ingress_classes == other.ingress_classes
            && *gateway_classes == other.gateway_classes
            && *gateways == other.gateways
            && *http_routes == other.http_routes
            && *services == other.services
            && *secrets == other.secrets
            && *backend_policies == other.backend_policies
            && *mesh_authorizations == other.mesh_authorizations
            && *reference_grants == other.reference_grants
            && *source_errors == other.source_errors
    }

    /// The Services (namespace, name) whose EndpointSlices differ between `previous` and this
    /// store (a slice names its Service in the `kubernetes.io/service-name` label).
    pub fn services_with_changed_endpoints(&self, previous: &Store) -> std::collections::BTreeSet<NsName> {
        let owner = |((ns, _), s): (&NsName, &Stored<EndpointSlice>)| {
            let labels = s.object.metadata.labels.as_ref()?;
            Some((ns.clone(), labels.get("kubernetes.io/service-name")?.clone()))
        };
        // a changed slice counts for its Service before and after (its label may have moved it)
        let now = self.endpoint_slices.iter().filter(|(k, s)| previous.endpoint_slices.get(*k) != Some(*s));
        let before = previous.endpoint_slices.iter().filter(|(k, s)| self.endpoint_slices.get(*k) != Some(*s));
        now.chain(before).filter_map(owner).collect()
    }

    /// Number of objects held (not counting source errors).
    pub fn len(&self) -> usize {
        self.ingresses.len()
            + self.ingress_classes.len()
            + self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.backend_policies.len()
            + self.mesh_authorizations.len()
            + self.reference_grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a Gateway API `from_kind` (HTTPRoute, Gateway) in `from_ns` may refer to the core
    /// `to_kind` (Service, Secret) `to_ns/to_name`: the same namespace, or a ReferenceGrant in
    /// `to_ns` allows it.
    pub fn grants(&self, from_kind: &str, from_ns: &str, to_kind: &str, to_ns: &str, to_name: &str) -> bool {
        let in_to_ns = self.reference_grants.range((to_ns.to_string(), String::new())..);
        from_ns == to_ns
            || in_to_ns.take_while(|((ns, _), _)| ns == to_ns).any(|(_, g)| {
                let spec = &g.object.spec;
                let from = |f: &gateway_api::referencegrants::ReferenceGrantFrom| {
                    f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_ns
                };
                let to = |t: &gateway_api::referencegrants::ReferenceGrantTo| {
                    matches!(t.group.as_str(), "" | "core")
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                };
                spec.from.iter().any(from) && spec.to.iter().any(to)
            })
    }
}
