//! Service references → pools: Service ports, EndpointSlices and BackendPolicies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::ServicePort;
use serde::Serialize;

use super::status::ConditionType::Accepted;
use super::status::{Condition, Reason, Statuses};
use super::{reject, EndpointModel, PoolSpec, UpstreamProtocol};
use crate::policy::BackendPolicyModel;
use crate::store::{NsName, Rejection, Store};

/// One pool per Service port, shared by every route that uses it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PoolKey {
    pub namespace: String,
    pub service: String,
    pub port: u16,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

/// How a route names a Service port.
#[derive(Clone, Debug)]
pub enum PortRef {
    Number(u16),
    Name(String),
    /// Not given: allowed when the Service has exactly one port.
    Unset,
}

/// `appProtocol` values that mean HTTP/2 with prior knowledge.
const H2C_APP_PROTOCOLS: [&str; 2] = ["kubernetes.io/h2c", "h2c"];

/// A policy and the Service port name it is limited to (`None`: every port).
type TargetedPolicy = (Option<String>, BackendPolicyModel);

/// Resolves Service references, collecting the pools they need.
pub struct Backends<'a> {
    store: &'a Store,
    /// (namespace, service) → policies targeting it
    policies: HashMap<(String, String), Vec<TargetedPolicy>>,
    pools: BTreeMap<PoolKey, PoolSpec>,
}

impl<'a> Backends<'a> {
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// Indexes the store's BackendPolicies, rejecting invalid ones; each gets its Accepted
    /// condition in `statuses`.
    pub fn new(store: &'a Store, rejections: &mut Vec<Rejection>, statuses: &mut Statuses) -> Self {
        Self::indexing(store, rejections, statuses, None)
    }

    /// Resolves the Services `only` alone (only their policies are read): the endpoint-only
    /// path, which must cost the change rather than the cluster's size.
    pub fn of_services(store: &'a Store, only: &BTreeSet<NsName>) -> Self {
        Self::indexing(store, &mut vec![], &mut Statuses::default(), Some(only))
    }

    fn indexing(
        store: &'a Store,
        rejections: &mut Vec<Rejection>,
        statuses: &mut Statuses,
        only: Option<&BTreeSet<NsName>>,
    ) -> Self {
        let mut policies: HashMap<_, Vec<_>> = HashMap::new();
        for ((ns, name), stored) in &store.backend_policies {
            let targets_wanted = |o: &BTreeSet<NsName>| {
                stored.object.spec.target_refs.iter().any(|t| o.contains(&(ns.clone(), t.name.clone())))
            };
            if !only.is_none_or(targets_wanted) {
                continue;
            }
            let r = |reason: String| reject("BackendPolicy", ns, name, &stored.origin, reason);
            let conditions = &mut statuses.of("BackendPolicy", ns, name).conditions;
            let model = match BackendPolicyModel::try_from(&stored.object.spec) {
                Ok(m) => m,
                Err(e) => {
                    let reason = format!("{e}; the Services it targets keep their previous settings");
                    conditions.push(Condition::fails(Accepted, Reason::Invalid, reason.clone()));
                    rejections.push(r(reason));
                    continue;
                }
            };
            let targets = &stored.object.spec.target_refs;
            let mut missing = vec![];
            for target in targets {
                if !store.services.contains_key(&(ns.clone(), target.name.clone())) {
                    let reason = format!("targets Service {ns}/{} which does not exist", target.name);
                    rejections.push(Rejection { served: true, ..r(reason.clone()) });
                    missing.push(reason);
                }
                policies
                    .entry((ns.clone(), target.name.clone()))
                    .or_default()
                    .push((target.section_name.clone(), model.clone()));
            }
            conditions.push(match missing.len() {
                n if n > 0 && n == targets.len() => {
                    Condition::fails(Accepted, Reason::TargetNotFound, missing.join("; "))
                }
                _ => Condition::holds(Accepted, missing.join("; ")),
            });
        }
        Backends { store, policies, pools: BTreeMap::new() }
    }

    /// Resolves `ns/name` + port to a pool, creating its spec on first use.
    pub fn resolve(&mut self, ns: &str, name: &str, port: &PortRef) -> Result<PoolKey, String> {
        let Some(stored) = self.store.services.get(&(ns.to_string(), name.to_string())) else {
            return Err(format!("Service {ns}/{name} does not exist"));
        };
        let spec = stored.object.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(format!("Service {ns}/{name} is of type ExternalName, which weir does not route to"));
        }
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        let svc_port = select_port(ports, port).map_err(|e| format!("Service {ns}/{name}: {e}"))?;
        let key = PoolKey { namespace: ns.into(), service: name.into(), port: svc_port.port as u16 };
        if !self.pools.contains_key(&key) {
            let pool = PoolSpec {
                endpoints: self.endpoints(ns, name, svc_port),
                protocol: match svc_port.app_protocol.as_deref() {
                    Some(p) if H2C_APP_PROTOCOLS.contains(&p) => UpstreamProtocol::H2c,
                    _ => UpstreamProtocol::Http1,
                },
                policy: self.policy(ns, name, svc_port.name.as_deref()),
            };
            self.pools.insert(key.clone(), pool);
        }
        Ok(key)
    }

    /// Makes pool `key` speak HTTP/2 with prior knowledge (h2c) whatever its port's
    /// `appProtocol`: a GRPCRoute routes to it, and gRPC is HTTP/2 only.
    pub fn speak_h2c(&mut self, key: &PoolKey) {
        if let Some(pool) = self.pools.get_mut(key) {
            pool.protocol = UpstreamProtocol::H2c;
        }
    }

    fn policy(&self, ns: &str, name: &str, port_name: Option<&str>) -> BackendPolicyModel {
        let Some(list) = self.policies.get(&(ns.to_string(), name.to_string())) else {
            return BackendPolicyModel::default();
        };
        // a policy for this very port beats one for the whole Service
        list.iter()
            .find(|(section, _)| section.is_some() && section.as_deref() == port_name)
            .or_else(|| list.iter().find(|(section, _)| section.is_none()))
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn endpoints(&self, ns: &str, name: &str, svc_port: &ServicePort) -> Vec<EndpointModel> {
        let mut out = vec![];
        let port_name = svc_port.name.clone().unwrap_or_default();
        for slice in self.store.slices_of(ns, name) {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(port) = slice.ports.iter().flatten().find(|p| p.name.clone().unwrap_or_default() == port_name)
            else {
                continue;
            };
            let Some(port) = port.port else { continue };
            for ep in &slice.endpoints {
                let cond = ep.conditions.clone().unwrap_or_default();
                let ready = cond.ready.unwrap_or(true);
                let serving = cond.serving.unwrap_or(ready);
                let terminating = cond.terminating.unwrap_or(false);
                for addr in &ep.addresses {
                    if let Ok(ip) = addr.parse::<IpAddr>() {
                        out.push(EndpointModel { addr: SocketAddr::new(ip, port as u16), ready, serving, terminating });
                    }
                }
            }
        }
        out.sort_by_key(|e| e.addr);
        out.dedup_by_key(|e| e.addr);
        out
    }

    pub fn into_pools(self) -> BTreeMap<PoolKey, PoolSpec> {
        self.pools
    }
}

fn select_port<'p>(ports: &'p [ServicePort], want: &PortRef) -> Result<&'p ServicePort, String> {
    let found = match want {
        PortRef::Number(n) => ports.iter().find(|p| p.port == i32::from(*n)),
        PortRef::Name(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
        PortRef::Unset if ports.len() == 1 => ports.first(),
        PortRef::Unset => {
            return Err(format!("has {} ports; name the port to use", ports.len()));
        }
    };
    found.ok_or_else(|| {
        let have: Vec<String> = ports
            .iter()
            .map(|p| match &p.name {
                Some(n) => format!("{} ({n})", p.port),
                None => p.port.to_string(),
            })
            .collect();
        let want = match want {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(n) => n.clone(),
            PortRef::Unset => String::new(),
        };
        format!("has no port {want}; its ports are [{}]", have.join(", "))
    })
}
