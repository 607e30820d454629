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
use crate::translate::mesh::{AuthorizationModel, AuthorizationRule, Caller, ServicePolicy};

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
    policies: HashMap<NsName, ServicePolicy>,
    trust_domain: String,
    /// A Service of this gateway's workload (by identity annotation or endpoint address) whose
    /// policy denies by default: it holds for a request no EndpointSlice resolves. Its Service
    /// (`name.namespace`) and the refusal's text after the address.
    workload_deny: Option<(String, String)>,
    default: DefaultPolicy,
}

impl Authorizer {
    /// Compiles the authorizer from the mesh's model; `trust_domain` is ours (namespace callers
    /// are in it).
    pub fn compile(model: &AuthorizationModel, trust_domain: &str, gateway: &GatewayPolicy) -> Authorizer {
        let by_identity =
            model.identities.iter().filter(|(_, id)| !gateway.own_id.is_empty() && **id == gateway.own_id);
        let by_address = gateway.workload.and_then(|ip| model.services_on.get(&ip)).into_iter().flatten();
        let workload_deny = by_identity.map(|(key, _)| key).chain(by_address).find_map(|key @ (ns, name)| {
            let p = model.policies.get(key).filter(|p| p.mode == Mode::Deny)?;
            let text = format!(
                " yet, and Service {ns}/{name} of this workload denies by default (MeshAuthorization {}); retry once the slice lists the Pod",
                p.names.join(", ")
            );
            Some((format!("{name}.{ns}"), text))
        });
        let services_at: HashMap<SocketAddr, Vec<NsName>> =
            model.services_at.iter().map(|(at, s)| (*at, s.clone())).collect();
        let labels = services_at.iter().map(|(at, s)| (*at, Arc::from(format!("{}.{}", s[0].1, s[0].0)))).collect();
        Authorizer {
            services_at,
            labels,
            policies: model.policies.iter().map(|(k, p)| (k.clone(), p.clone())).collect(),
            trust_domain: trust_domain.to_string(),
            workload_deny,
            default: gateway.default,
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
        p: &ServicePolicy,
        (ns, name): &NsName,
        caller: &SpiffeId,
        method: &http::Method,
        path: &str,
    ) -> Result<(), Denial> {
        let covering: Vec<&AuthorizationRule> =
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
