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
use crate::api::mesh_authorization::Mode;
use crate::config::DefaultPolicy;
use crate::store::NsName;
use crate::translate::mesh::{AuthorizationModel, Caller, ServicePolicy};

/// Why a request was refused: the `reason` label and the text for `weir-denied-reason`.
#[derive(Debug, PartialEq, Eq)]
pub struct Denial {
    pub label: &'static str,
    pub text: String,
    /// `name.namespace` of the Service whose authorization refused.
    pub service: Arc<str>,
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

/// A Service's authorization, compiled: what a decision reads, and the texts of its refusals'
/// fixed parts.
struct Guard {
    /// `namespace/name`, for refusals.
    service: String,
    /// `name.namespace`, the `destination` label of metrics.
    label: Arc<str>,
    /// `None`: no MeshAuthorization governs the Service (the gateway's default applies).
    policy: Option<ServicePolicy>,
    /// The MeshAuthorizations' `namespace/name`s, joined, for refusals.
    names: String,
}

/// Every Service's authorization, and which Services each endpoint serves.
#[derive(Default)]
pub struct Authorizer {
    /// Endpoint (pod IP, port) → the Services selecting it (never empty).
    services_at: HashMap<SocketAddr, Vec<Arc<Guard>>>,
    trust_domain: String,
    /// A Service of this gateway's workload (by identity annotation or endpoint address) whose
    /// policy denies by default: it holds for a request no EndpointSlice resolves. Its Service
    /// (`name.namespace`) and the refusal's text after the address.
    workload_deny: Option<(Arc<str>, String)>,
    default: DefaultPolicy,
}

impl Authorizer {
    /// Compiles the authorizer from the mesh's model; `trust_domain` is ours (namespace callers
    /// are in it).
    pub fn compile(model: &AuthorizationModel, trust_domain: &str, gateway: &GatewayPolicy) -> Authorizer {
        let mut guards: HashMap<NsName, Arc<Guard>> = HashMap::new();
        let mut guard = |key @ (ns, name): &NsName| -> Arc<Guard> {
            guards
                .entry(key.clone())
                .or_insert_with(|| {
                    let policy = model.policies.get(key);
                    Arc::new(Guard {
                        service: format!("{ns}/{name}"),
                        label: Arc::from(format!("{name}.{ns}")),
                        names: policy.map(|p| p.names.join(", ")).unwrap_or_default(),
                        policy: policy.cloned(),
                    })
                })
                .clone()
        };
        let by_identity =
            model.identities.iter().filter(|(_, id)| !gateway.own_id.is_empty() && **id == gateway.own_id);
        let by_address = gateway.workload.and_then(|ip| model.services_on.get(&ip)).into_iter().flatten();
        let workload_deny = by_identity.map(|(key, _)| key).chain(by_address).find_map(|key| {
            let g = guard(key);
            g.policy.as_ref().filter(|p| p.mode == Mode::Deny)?;
            let text = format!(
                " yet, and Service {} of this workload denies by default (MeshAuthorization {}); retry once the slice lists the Pod",
                g.service, g.names
            );
            Some((g.label.clone(), text))
        });
        let services_at = model
            .services_at
            .iter()
            .filter(|(_, services)| !services.is_empty())
            .map(|(at, services)| (*at, services.iter().map(&mut guard).collect()))
            .collect();
        Authorizer { services_at, trust_domain: trust_domain.to_string(), workload_deny, default: gateway.default }
    }

    /// `name.namespace` of the (first) Service the endpoint `at` serves, if any.
    pub fn label_at(&self, at: SocketAddr) -> Option<&Arc<str>> {
        self.services_at.get(&at).map(|services| &services[0].label)
    }

    /// Whether `caller` may make this request to the endpoint `at` (the address the caller
    /// dialed with the target port; `None` when the connection's local address is unknown).
    /// An allowed request costs no allocation.
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
        let Some(services) = at.and_then(|at| self.services_at.get(&at)) else {
            if let Some((service, text)) = &self.workload_deny {
                let at = at.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
                let text = format!("no EndpointSlice lists {at}{text}");
                return Err(Denial { label: "unresolved", text, service: service.clone() });
            }
            return self.default_decision(caller, method, path, None);
        };
        let mut governed = false;
        for guard in services {
            if let Some(policy) = &guard.policy {
                governed = true;
                self.check(guard, policy, caller, method, path)?;
            }
        }
        if governed {
            return Ok(());
        }
        self.default_decision(caller, method, path, Some(&services[0]))
    }

    /// What the gateway's `--default-policy` says of a request no MeshAuthorization governs.
    fn default_decision(
        &self,
        caller: &SpiffeId,
        method: &http::Method,
        path: &str,
        service: Option<&Guard>,
    ) -> Result<(), Denial> {
        match self.default {
            DefaultPolicy::AllowAuthenticated => Ok(()),
            DefaultPolicy::Deny => Err(Denial {
                label: "default_deny",
                text: format!(
                    "no MeshAuthorization lets {caller} {method} {path}, and this gateway's --default-policy is deny"
                ),
                service: service.map_or_else(|| Arc::from(""), |g| g.label.clone()),
            }),
        }
    }

    fn check(
        &self,
        g: &Guard,
        p: &ServicePolicy,
        caller: &SpiffeId,
        method: &http::Method,
        path: &str,
    ) -> Result<(), Denial> {
        let mut covered = false;
        for rule in p.rules.iter().filter(|r| r.to.is_empty() || r.to.iter().any(|o| o.covers(method, path))) {
            covered = true;
            if rule.from.iter().any(|c| self.matches(c, caller)) {
                return Ok(());
            }
        }
        let (service, names) = (&g.service, &g.names);
        let deny = |label, text| Err(Denial { label, text, service: g.label.clone() });
        match (covered, p.mode) {
            (false, Mode::AllowAuthenticated) => Ok(()),
            (false, Mode::Deny) => deny(
                "no_rule",
                format!("no rule of MeshAuthorization {names} covers {method} {path} on Service {service} (defaultMode: Deny)"),
            ),
            (true, _) => {
                deny("not_allowed", format!("{caller} may not {method} {path} on Service {service} (MeshAuthorization {names})"))
            }
        }
    }

    fn matches(&self, c: &Caller, caller: &SpiffeId) -> bool {
        match c {
            Caller::Exact(id) => id == caller,
            Caller::Namespace(ns) => caller.trust_domain() == self.trust_domain && caller.namespace() == Some(ns),
        }
    }
}
