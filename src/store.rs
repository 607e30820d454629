//! Typed Kubernetes objects by kind, namespace and name. Sources apply and delete; the
//! translator reads. Nothing else writes it.

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::Serialize;

use crate::api::backend_policy::BackendPolicy;
use crate::api::mesh_authorization::MeshAuthorization;

/// The Gateway API's group, of the kinds a ReferenceGrant lets refer across namespaces.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// `namespace/name` (cluster-scoped objects have an empty namespace).
pub type NsName = (String, String);

/// The store's maps: persistent, so a copy of the store (each publish makes one) shares every
/// node, and comparing or diffing two copies skips the nodes they share. Under endpoint churn a
/// publish costs the change, not the number of objects in the cluster.
pub type Map<K, V> = imbl::OrdMap<K, V>;

/// The label the API server sets on every Namespace to its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An object and where it came from (a file path, or `kubernetes`). The object is shared:
/// copying a store (each publish does) copies pointers, and comparing two stores compares an
/// object only when the two copies are not the same allocation.
#[derive(Debug)]
pub struct Stored<T> {
    pub object: std::sync::Arc<T>,
    pub origin: std::sync::Arc<str>,
}

impl<T> Clone for Stored<T> {
    fn clone(&self) -> Self {
        Stored { object: self.object.clone(), origin: self.origin.clone() }
    }
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
    GrpcRoute(Box<GrpcRoute>),
    TlsRoute(Box<TlsRoute>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Secret(Box<Secret>),
    BackendPolicy(Box<BackendPolicy>),
    MeshAuthorization(Box<MeshAuthorization>),
    ReferenceGrant(Box<ReferenceGrant>),
    /// Read for its labels: a Gateway listener's `allowedRoutes` may select namespaces by them.
    Namespace(Box<Namespace>),
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
    pub ingresses: Map<NsName, Stored<Ingress>>,
    pub ingress_classes: Map<String, Stored<IngressClass>>,
    pub gateway_classes: Map<String, Stored<GatewayClass>>,
    pub gateways: Map<NsName, Stored<Gateway>>,
    pub http_routes: Map<NsName, Stored<HttpRoute>>,
    pub grpc_routes: Map<NsName, Stored<GrpcRoute>>,
    pub tls_routes: Map<NsName, Stored<TlsRoute>>,
    pub services: Map<NsName, Stored<Service>>,
    /// Keyed by the slice's own namespace/name; [`Store::slices_of`] has them by Service.
    pub endpoint_slices: Map<NsName, Stored<EndpointSlice>>,
    /// (namespace, Service) → its slices ([`SERVICE_NAME_LABEL`]) by name, kept by `apply` and
    /// `remove` beside `endpoint_slices`. A Service has few: a shared slice of them is lighter
    /// than a map for each of thousands of Services.
    slices_by_service: Map<NsName, std::sync::Arc<[Stored<EndpointSlice>]>>,
    pub secrets: Map<NsName, Stored<Secret>>,
    pub backend_policies: Map<NsName, Stored<BackendPolicy>>,
    pub mesh_authorizations: Map<NsName, Stored<MeshAuthorization>>,
    pub reference_grants: Map<NsName, Stored<ReferenceGrant>>,
    pub namespaces: Map<String, Stored<Namespace>>,
    /// Objects the source could not even read (parse errors, unknown kinds).
    pub source_errors: Vec<Rejection>,
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> NsName {
    (meta.namespace.clone().unwrap_or_else(|| "default".to_string()), meta.name.clone().unwrap_or_default())
}

/// Puts `new` at `key` unless the same object is there (which keeps its allocation, so that
/// comparisons of copies stay quick); returns whether the map changed.
fn put<K: Ord + Clone, T: PartialEq>(map: &mut Map<K, Stored<T>>, key: K, new: Stored<T>) -> bool {
    if map.get(&key).is_some_and(|old| *old == new) {
        return false;
    }
    map.insert(key, new);
    true
}

/// The Service an EndpointSlice belongs to.
pub fn service_of(slice: &EndpointSlice) -> Option<&str> {
    slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL).map(String::as_str)
}

impl Store {
    /// Adds or replaces an object; returns whether that changed the store (a watch's relist
    /// applies every object again, most of them as they were). Namespaced objects without a
    /// namespace land in `default`, as `kubectl apply` would put them.
    pub fn apply(&mut self, object: Object, origin: &str) -> bool {
        let origin: std::sync::Arc<str> = origin.into();
        macro_rules! put {
            ($map:ident, $o:expr, namespaced) => {{
                let mut o = *$o;
                let key = ns_name(&o.metadata);
                o.metadata.namespace = Some(key.0.clone());
                put(&mut self.$map, key, Stored { object: std::sync::Arc::new(o), origin })
            }};
            ($map:ident, $o:expr, cluster) => {{
                let o = *$o;
                let key = o.metadata.name.clone().unwrap_or_default();
                put(&mut self.$map, key, Stored { object: std::sync::Arc::new(o), origin })
            }};
        }
        match object {
            Object::Ingress(o) => put!(ingresses, o, namespaced),
            Object::IngressClass(o) => put!(ingress_classes, o, cluster),
            Object::GatewayClass(o) => put!(gateway_classes, o, cluster),
            Object::Gateway(o) => put!(gateways, o, namespaced),
            Object::HttpRoute(o) => put!(http_routes, o, namespaced),
            Object::GrpcRoute(o) => put!(grpc_routes, o, namespaced),
            Object::TlsRoute(o) => put!(tls_routes, o, namespaced),
            Object::Service(o) => put!(services, o, namespaced),
            Object::EndpointSlice(o) => {
                let key = ns_name(&o.metadata);
                let before = self.endpoint_slices.get(&key).cloned();
                let changed = put!(endpoint_slices, o, namespaced);
                if changed {
                    self.index_slice(&key, before.as_ref(), self.endpoint_slices.get(&key).cloned());
                }
                changed
            }
            Object::Secret(o) => put!(secrets, o, namespaced),
            Object::BackendPolicy(o) => put!(backend_policies, o, namespaced),
            Object::MeshAuthorization(o) => put!(mesh_authorizations, o, namespaced),
            Object::ReferenceGrant(o) => put!(reference_grants, o, namespaced),
            Object::Namespace(o) => put!(namespaces, o, cluster),
        }
    }

    /// Removes object `kind ns/name` (`ns` empty for cluster-scoped kinds); `kind` as the
    /// Kubernetes source names its watches. Returns whether it was there.
    pub fn remove(&mut self, kind: &str, ns: &str, name: &str) -> bool {
        let key = (ns.to_string(), name.to_string());
        match kind {
            "Ingress" => self.ingresses.remove(&key).is_some(),
            "IngressClass" => self.ingress_classes.remove(name).is_some(),
            "GatewayClass" => self.gateway_classes.remove(name).is_some(),
            "Gateway" => self.gateways.remove(&key).is_some(),
            "HTTPRoute" => self.http_routes.remove(&key).is_some(),
            "GRPCRoute" => self.grpc_routes.remove(&key).is_some(),
            "TLSRoute" => self.tls_routes.remove(&key).is_some(),
            "Service" => self.services.remove(&key).is_some(),
            "EndpointSlice" => match self.endpoint_slices.remove(&key) {
                Some(gone) => {
                    self.index_slice(&key, Some(&gone), None);
                    true
                }
                None => false,
            },
            "Secret" => self.secrets.remove(&key).is_some(),
            "BackendPolicy" => self.backend_policies.remove(&key).is_some(),
            "MeshAuthorization" => self.mesh_authorizations.remove(&key).is_some(),
            "ReferenceGrant" => self.reference_grants.remove(&key).is_some(),
            "Namespace" => self.namespaces.remove(name).is_some(),
            _ => false,
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
            "GRPCRoute" => restore!(grpc_routes, key),
            "TLSRoute" => restore!(tls_routes, key),
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
            grpc_routes,
            tls_routes,
            services,
            endpoint_slices: _,
            slices_by_service: _,
            secrets,
            backend_policies,
            mesh_authorizations,
            reference_grants,
            namespaces,
            source_errors,
        } = self;
        *ingresses == other.ingresses
            && *ingress_classes == other.ingress_classes
            && *gateway_classes == other.gateway_classes
            && *gateways == other.gateways
            && *http_routes == other.http_routes
            && *grpc_routes == other.grpc_routes
            && *tls_routes == other.tls_routes
            && *services == other.services
            && *secrets == other.secrets
            && *backend_policies == other.backend_policies
            && *mesh_authorizations == other.mesh_authorizations
            && *reference_grants == other.reference_grants
            && *namespaces == other.namespaces
            && *source_errors == other.source_errors
    }

    /// The Services (namespace, name) whose EndpointSlices differ between `previous` and this
    /// store (a slice that moved to another Service counts for both). Skips what the two
    /// stores share.
    pub fn services_with_changed_endpoints(&self, previous: &Store) -> std::collections::BTreeSet<NsName> {
        use imbl::ordmap::DiffItem;
        let service = |d: DiffItem<'_, '_, NsName, _>| match d {
            DiffItem::Add(k, _) | DiffItem::Remove(k, _) | DiffItem::Update { new: (k, _), .. } => k.clone(),
        };
        previous.slices_by_service.diff(&self.slices_by_service).map(service).collect()
    }

    /// Takes `other`'s EndpointSlices in place of this store's, keeping everything else.
    pub fn set_endpoints_from(&mut self, other: &Store) {
        self.endpoint_slices = other.endpoint_slices.clone();
        self.slices_by_service = other.slices_by_service.clone();
    }

    /// A copy without EndpointSlices, for what never reads them: holding it does not keep
    /// every slice's version of the moment alive while the slices churn.
    pub fn without_endpoints(&self) -> Store {
        Store { endpoint_slices: Map::new(), slices_by_service: Map::new(), ..self.clone() }
    }

    /// The EndpointSlices of Service `ns/service`.
    pub fn slices_of(&self, ns: &str, service: &str) -> impl Iterator<Item = &EndpointSlice> {
        let slices = self.slices_by_service.get(&(ns.to_string(), service.to_string()));
        slices.into_iter().flat_map(|s| s.iter()).map(|s| &*s.object)
    }

    /// Moves slice `key` in the by-Service index from the Service `before` named to the one
    /// `after` names (either may be none).
    fn index_slice(
        &mut self,
        key: &NsName,
        before: Option<&Stored<EndpointSlice>>,
        after: Option<Stored<EndpointSlice>>,
    ) {
        let (ns, name) = key;
        let owner = |s: &Stored<EndpointSlice>| Some((ns.clone(), service_of(&s.object)?.to_string()));
        let others = |slices: Option<&std::sync::Arc<[Stored<EndpointSlice>]>>| -> Vec<Stored<EndpointSlice>> {
            let others = slices.into_iter().flat_map(|s| s.iter());
            others.filter(|s| s.object.metadata.name.as_ref() != Some(name)).cloned().collect()
        };
        if let Some(old) = before.and_then(owner) {
            match others(self.slices_by_service.get(&old)) {
                rest if rest.is_empty() => drop(self.slices_by_service.remove(&old)),
                rest => drop(self.slices_by_service.insert(old, rest.into())),
            }
        }
        if let Some((new, slice)) = after.and_then(|s| Some((owner(&s)?, s))) {
            let mut slices = others(self.slices_by_service.get(&new));
            slices.push(slice);
            slices.sort_by(|a, b| a.object.metadata.name.cmp(&b.object.metadata.name));
            self.slices_by_service.insert(new, slices.into());
        }
    }

    /// Number of objects held (not counting source errors).
    pub fn len(&self) -> usize {
        self.ingresses.len()
            + self.ingress_classes.len()
            + self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.tls_routes.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.backend_policies.len()
            + self.mesh_authorizations.len()
            + self.reference_grants.len()
            + self.namespaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Namespace `ns`'s labels, with the one the API server gives every namespace
    /// (`kubernetes.io/metadata.name`), also when the namespace is not in the store (a
    /// directory need not declare its namespaces).
    pub fn namespace_labels(&self, ns: &str) -> std::collections::BTreeMap<String, String> {
        let stored = self.namespaces.get(ns).and_then(|n| n.object.metadata.labels.clone());
        let mut labels = stored.unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), ns.into());
        labels
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, service: &str, ip: &str) -> Object {
        let yaml = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: shop, name: {name}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{ip}\"]}}]\n"
        );
        Object::EndpointSlice(Box::new(serde_saphyr::from_str(&yaml).unwrap()))
    }

    fn names(store: &Store, service: &str) -> Vec<String> {
        store.slices_of("shop", service).map(|s| s.metadata.name.clone().unwrap()).collect()
    }

    fn service(name: &str) -> NsName {
        ("shop".into(), name.into())
    }

    #[test]
    fn slices_are_found_by_service_as_they_change_and_a_diff_names_the_services_they_moved() {
        let mut store = Store::default();
        assert!(store.apply(slice("a-1", "a", "10.0.0.1"), "k"));
        assert!(store.apply(slice("a-2", "a", "10.0.0.2"), "k"));
        assert_eq!(names(&store, "a"), ["a-1", "a-2"]);
        let before = store.clone();
        assert!(!store.apply(slice("a-1", "a", "10.0.0.1"), "k"), "the same slice again changes nothing");
        assert!(store.services_with_changed_endpoints(&before).is_empty());

        // a-2 moves to Service b (its label changed)
        assert!(store.apply(slice("a-2", "b", "10.0.0.2"), "k"));
        assert_eq!((names(&store, "a"), names(&store, "b")), (vec!["a-1".into()], vec!["a-2".to_string()]));
        assert_eq!(store.services_with_changed_endpoints(&before), [service("a"), service("b")].into());
        assert_eq!(names(&before, "a"), ["a-1", "a-2"], "a copy keeps its own version");

        // an endpoint of a-1 changes; then a-2 is deleted
        let moved = store.clone();
        assert!(store.apply(slice("a-1", "a", "10.0.0.9"), "k"));
        assert!(store.remove("EndpointSlice", "shop", "a-2"));
        assert!(!store.remove("EndpointSlice", "shop", "a-2"));
        assert_eq!(names(&store, "b"), Vec::<String>::new());
        assert_eq!(store.services_with_changed_endpoints(&moved), [service("a"), service("b")].into());
        assert!(store.same_but_endpoints(&moved) && store != moved);
    }
}
