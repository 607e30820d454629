//! Status for the API server: what `kubectl get gateway -o yaml` shows, computed from the same
//! typed conditions translation returned with the model that serves ([`Statuses`]), so status and
//! traffic cannot disagree.
//!
//! [`desired`] is pure: from the store (each object as last seen, its generation and its current
//! status) and the statuses, the `.status` each object of weir's should have. Conditions keep
//! their `lastTransitionTime` while their status is unchanged, and an HTTPRoute keeps the
//! entries other controllers wrote in `status.parents`, so a status equal to the current one is
//! not written again (no status loops). [`writer`] patches the changes, on the leader only
//! ([`leader`]).

pub mod leader;
pub mod writer;

use std::net::IpAddr;

use gateway_api::httproutes::HttpRouteParentRefs;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use crate::api::PolicyStatus;
use crate::store::Store;
use crate::translate::status::{Condition, ObjectStatus, Statuses};

/// The Gateway API features weir reports in `GatewayClass.status.supportedFeatures`: exactly those
/// the conformance suite passes (`scripts/conformance`, tests/conformance/reports/), which reads
/// them from there.
pub const SUPPORTED_FEATURES: [&str; 33] = [
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayHTTPListenerIsolation",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
    "TLSRoute",
];

/// What status needs besides the statuses: where weir is reachable, and which controller it is.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusContext {
    /// The address weir binds Gateways on (`--gateway-address`): every Gateway's
    /// `status.addresses` unless weir publishes others.
    pub gateway_address: Option<IpAddr>,
    /// `--publish-service NS/NAME`: the load balancer addresses of that Service (weir's own).
    pub publish_service: Option<(String, String)>,
    /// `--publish-address`: IPs or host names weir is reached at.
    pub publish_addresses: Vec<String>,
    /// `--gateway-addresses` is set: each Gateway reports the address of its own.
    pub own_addresses: bool,
    /// `--controller-name`: weir's GatewayClasses, and its entries in a route's parents.
    pub controller_name: String,
}

impl Default for StatusContext {
    fn default() -> Self {
        StatusContext {
            gateway_address: None,
            publish_service: None,
            publish_addresses: vec![],
            own_addresses: false,
            controller_name: crate::translate::gateway::GATEWAY_CONTROLLER.into(),
        }
    }
}

impl StatusContext {
    /// The addresses weir publishes (the Service's load balancer's, then the given ones).
    fn published(&self, store: &Store) -> Vec<String> {
        let mut out = vec![];
        if let Some(service) = self.publish_service.as_ref().and_then(|k| store.services.get(k)) {
            let lb = service.object.status.as_ref().and_then(|s| s.load_balancer.as_ref());
            for i in lb.and_then(|lb| lb.ingress.as_ref()).into_iter().flatten() {
                out.extend(i.ip.clone().or_else(|| i.hostname.clone()));
            }
        }
        out.extend(self.publish_addresses.iter().cloned());
        out
    }
}

/// Whether a published address is an IP (else a host name).
fn is_ip(a: &str) -> bool {
    a.parse::<IpAddr>().is_ok()
}

/// What `weir edge --source kubernetes` writes status with.
#[derive(Clone, Debug)]
pub struct StatusOptions {
    pub leader: leader::LeaderOptions,
    /// `--publish-service NS/NAME`.
    pub publish_service: Option<(String, String)>,
    /// `--publish-address`.
    pub publish_addresses: Vec<String>,
}

/// One object's status to write.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub kind: &'static str,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// The whole `.status`.
    pub status: Value,
    /// The status the object has now (`None`: none).
    pub current: Option<Value>,
    /// The object's uid: an object deleted and created again under its name is another object.
    pub uid: Option<String>,
}

/// The statuses that differ from what each object of weir's holds now. `now` (RFC 3339) is the
/// `lastTransitionTime` of a condition whose status changes.
pub fn desired(store: &Store, statuses: &Statuses, ctx: &StatusContext, now: &str) -> Vec<StatusUpdate> {
    let mut updates = vec![];
    let published = ctx.published(store);
    let gateway_addresses: Vec<Value> = match (published.is_empty(), ctx.gateway_address) {
        (false, _) => published
            .iter()
            .map(|a| json!({"type": if is_ip(a) { "IPAddress" } else { "Hostname" }, "value": a}))
            .collect(),
        (true, Some(ip)) if !ip.is_unspecified() => vec![json!({"type": "IPAddress", "value": ip.to_string()})],
        (true, _) => vec![],
    };
    let ingress_addresses: Vec<Value> =
        published.iter().map(|a| if is_ip(a) { json!({"ip": a}) } else { json!({"hostname": a}) }).collect();
    let mut push =
        |kind: &'static str, meta: &ObjectMeta, ns: &str, name: &str, current: Option<Value>, status: Value| {
            if current.as_ref() != Some(&status) {
                let uid = meta.uid.clone();
                updates.push(StatusUpdate { kind, namespace: ns.into(), name: name.into(), status, current, uid });
            }
        };
    for (name, stored) in &store.gateway_classes {
        let class = &stored.object;
        if class.spec.controller_name != ctx.controller_name {
            continue;
        }
        let Some(status) = statuses.get("GatewayClass", "", name) else { continue };
        let current = to_value(&class.status);
        let features: Vec<Value> = SUPPORTED_FEATURES.iter().map(|f| json!({"name": f})).collect();
        let status = json!({
            "conditions": conditions(&status.conditions, &class.metadata, current.as_ref().map(|c| &c["conditions"]), now),
            "supportedFeatures": features,
        });
        push("GatewayClass", &class.metadata, "", name, current, status);
    }
    for ((ns, name), stored) in &store.gateways {
        let gw = &stored.object;
        let Some(status) = statuses.get("Gateway", ns, name) else { continue };
        let current = to_value(&gw.status);
        let listeners: Vec<Value> = gw
            .spec
            .listeners
            .iter()
            .map(|l| {
                let old = current.as_ref().and_then(|c| {
                    c["listeners"].as_array()?.iter().find(|o| o["name"] == l.name.as_str()).map(|o| &o["conditions"])
                });
                let kinds: Vec<Value> = crate::translate::gateway::supported_kinds(l)
                    .into_iter()
                    .map(|(group, kind)| json!({"group": group, "kind": kind}))
                    .collect();
                json!({
                    "name": l.name,
                    "attachedRoutes": status.attached_routes.get(&l.name).copied().unwrap_or(0),
                    "supportedKinds": kinds,
                    "conditions": conditions(listener_conditions(status, &l.name), &gw.metadata, old, now),
                })
            })
            .collect();
        let addresses = match (ctx.own_addresses, status.address) {
            (true, Some(ip)) => vec![json!({"type": "IPAddress", "value": ip.to_string()})],
            (true, None) => vec![],
            (false, _) => gateway_addresses.clone(),
        };
        let status = json!({
            "addresses": addresses,
            "conditions": conditions(&status.conditions, &gw.metadata, current.as_ref().map(|c| &c["conditions"]), now),
            "listeners": listeners,
        });
        push("Gateway", &gw.metadata, ns, name, current, status);
    }
    // a route keeps the entries other controllers wrote in its parents, first
    let mut route = |kind: &'static str,
                     meta: &ObjectMeta,
                     ns: &str,
                     name: &str,
                     current: Option<Value>,
                     given: &[HttpRouteParentRefs]| {
        let Some(status) = statuses.get(kind, ns, name).filter(|s| !s.parents.is_empty()) else { return };
        let old_parents: Vec<Value> =
            current.as_ref().and_then(|c| c["parents"].as_array().cloned()).unwrap_or_default();
        let mut parents: Vec<Value> =
            old_parents.iter().filter(|p| p["controllerName"] != ctx.controller_name.as_str()).cloned().collect();
        for p in &status.parents {
            let parent_ref = parent_ref(&p.parent, ns, given);
            let old = old_parents
                .iter()
                .find(|o| o["controllerName"] == ctx.controller_name.as_str() && o["parentRef"] == parent_ref)
                .map(|o| &o["conditions"]);
            parents.push(json!({
                "parentRef": parent_ref,
                "controllerName": ctx.controller_name,
                "conditions": conditions(&p.conditions, meta, old, now),
            }));
        }
        push(kind, meta, ns, name, current, json!({"parents": parents}));
    };
    for ((ns, name), stored) in &store.http_routes {
        let r = &stored.object;
        route(
            "HTTPRoute",
            &r.metadata,
            ns,
            name,
            to_value(&r.status),
            r.spec.parent_refs.as_deref().unwrap_or_default(),
        );
    }
    for ((ns, name), stored) in &store.grpc_routes {
        let r = &stored.object;
        route("GRPCRoute", &r.metadata, ns, name, to_value(&r.status), &as_http_parent_refs(&r.spec.parent_refs));
    }
    for ((ns, name), stored) in &store.tls_routes {
        let r = &stored.object;
        route("TLSRoute", &r.metadata, ns, name, to_value(&r.status), &as_http_parent_refs(&r.spec.parent_refs));
    }
    // weir's own resources: Accepted, and why not
    let mut own = |kind: &'static str, ns: &str, name: &str, meta: &ObjectMeta, current: &Option<PolicyStatus>| {
        let Some(status) = statuses.get(kind, ns, name) else { return };
        let current = to_value(current);
        let old = current.as_ref().map(|c| &c["conditions"]);
        let status = json!({"conditions": conditions(&status.conditions, meta, old, now)});
        push(kind, meta, ns, name, current, status);
    };
    for ((ns, name), p) in &store.backend_policies {
        own("BackendPolicy", ns, name, &p.object.metadata, &p.object.status);
    }
    for ((ns, name), a) in &store.mesh_authorizations {
        own("MeshAuthorization", ns, name, &a.object.metadata, &a.object.status);
    }
    // Ingresses of weir's class, once weir publishes an address (as ingress-nginx does)
    if !ingress_addresses.is_empty() {
        for ((ns, name), stored) in &store.ingresses {
            if statuses.get("Ingress", ns, name).is_none() {
                continue;
            }
            let current = to_value(&stored.object.status);
            let meta = &stored.object.metadata;
            push("Ingress", meta, ns, name, current, json!({"loadBalancer": {"ingress": ingress_addresses}}));
        }
    }
    updates
}

/// Another route kind's parentRefs as an HTTPRoute's: the same fields.
fn as_http_parent_refs<T: serde::Serialize>(refs: &Option<Vec<T>>) -> Vec<HttpRouteParentRefs> {
    serde_json::to_value(refs).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
}

fn listener_conditions<'a>(status: &'a ObjectStatus, listener: &str) -> &'a [Condition] {
    status.listeners.get(listener).map_or(&[], Vec::as_slice)
}

/// A route's `parentRef` as the status echoes it: the reference's own fields, namespace included
/// only where the route's reference (`given`) has it, even when it names the route's own.
fn parent_ref(p: &crate::translate::status::ParentRef, route_ns: &str, given: &[HttpRouteParentRefs]) -> Value {
    let mut v = json!({"group": p.group, "kind": p.kind, "name": p.name});
    let spelled_out = given.iter().any(|g| {
        g.name == p.name
            && g.section_name == p.section_name
            && g.port == p.port
            && g.namespace.as_ref() == Some(&p.namespace)
    });
    if p.namespace != route_ns || spelled_out {
        v["namespace"] = json!(p.namespace);
    }
    if let Some(s) = &p.section_name {
        v["sectionName"] = json!(s);
    }
    if let Some(port) = p.port {
        v["port"] = json!(port);
    }
    v
}

/// The status as the API server holds it, or `None` when it has none.
fn to_value<T: serde::Serialize>(status: &Option<T>) -> Option<Value> {
    status.as_ref().and_then(|s| serde_json::to_value(s).ok()).filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
}

/// Conditions as the API server holds them, at the object's generation; each keeps the
/// `lastTransitionTime` of the same type in `old` if its status did not change.
fn conditions(conds: &[Condition], meta: &ObjectMeta, old: Option<&Value>, now: &str) -> Vec<Value> {
    let old: &[Value] = old.and_then(Value::as_array).map_or(&[], Vec::as_slice);
    conds
        .iter()
        .map(|c| {
            let type_ = format!("{:?}", c.type_);
            let status = if c.status { "True" } else { "False" };
            let since = old
                .iter()
                .find(|o| o["type"] == type_.as_str() && o["status"] == status)
                .and_then(|o| o["lastTransitionTime"].as_str())
                .unwrap_or(now);
            json!({
                "type": type_,
                "status": status,
                "reason": format!("{:?}", c.reason),
                "message": c.message,
                "observedGeneration": meta.generation.unwrap_or(0),
                "lastTransitionTime": since,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::parse_manifests;
    use crate::translate::gateway::GATEWAY_CONTROLLER;
    use crate::translate::{translate, TranslateOptions};

    const OBJECTS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weir, generation: 1}
spec: {controllerName: weir.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other, generation: 1}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {namespace: shop, name: gw, generation: 3}
spec:
  gatewayClassName: weir
  listeners:
  - {name: web, protocol: HTTP, port: 9080}
  - {name: api, protocol: HTTP, port: 9081, hostname: api.example.com}
---
apiVersion: v1
kind: Service
metadata: {namespace: shop, name: web}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {namespace: shop, name: web, generation: 2}
spec:
  parentRefs: [{name: gw}]
  hostnames: [www.example.com]
  rules:
  - backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /ghost}}]
    backendRefs: [{name: ghost, port: 80}]
";

    fn store(yaml: &str) -> Store {
        let mut store = Store::default();
        let (objects, errors) = parse_manifests(yaml, "kubernetes");
        assert!(errors.is_empty(), "{errors:?}");
        for o in objects {
            store.apply(o, "kubernetes");
        }
        store
    }

    /// The store's first HTTPRoute, to change (as another writer would).
    fn first_route_mut(store: &mut Store) -> &mut gateway_api::httproutes::HttpRoute {
        let key = store.http_routes.keys().next().unwrap().clone();
        std::sync::Arc::make_mut(&mut store.http_routes.get_mut(&key).unwrap().object)
    }

    fn ctx() -> StatusContext {
        StatusContext { gateway_address: Some("10.0.0.7".parse().unwrap()), ..StatusContext::default() }
    }

    fn updates(store: &Store, now: &str) -> Vec<StatusUpdate> {
        let model = translate(store, &TranslateOptions::defaults("weir"));
        desired(store, &model.statuses, &ctx(), now)
    }

    fn find<'a>(updates: &'a [StatusUpdate], kind: &str) -> &'a Value {
        &updates.iter().find(|u| u.kind == kind).unwrap_or_else(|| panic!("no {kind} in {updates:#?}")).status
    }

    fn condition<'a>(conditions: &'a Value, type_: &str) -> &'a Value {
        conditions.as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap_or_else(|| panic!("{conditions}"))
    }

    #[test]
    fn with_another_controller_name_weir_serves_and_reports_that_class_alone() {
        // a second weir in the cluster, of `--controller-name example.com/other`: the class
        // `other` is its own, `weir` the first installation's
        let yaml = OBJECTS.replace("gatewayClassName: weir", "gatewayClassName: other");
        let store = store(&yaml);
        let opts =
            TranslateOptions { controller_name: "example.com/other".into(), ..TranslateOptions::defaults("weir") };
        let model = translate(&store, &opts);
        let gateway_port = |m: &crate::translate::Model| m.listeners.keys().any(|a| a.port() == 9080);
        assert!(gateway_port(&model), "the Gateway of class other is served: {:?}", model.listeners.keys());
        let other = StatusContext { controller_name: "example.com/other".into(), ..ctx() };
        let updates = desired(&store, &model.statuses, &other, "t");
        let kinds: Vec<(&str, &str)> = updates.iter().map(|u| (u.kind, u.name.as_str())).collect();
        assert_eq!(kinds, [("GatewayClass", "other"), ("Gateway", "gw"), ("HTTPRoute", "web")]);
        assert_eq!(find(&updates, "HTTPRoute")["parents"][0]["controllerName"], "example.com/other");

        // the default controller name serves none of it
        let model = translate(&store, &TranslateOptions::defaults("weir"));
        assert!(!gateway_port(&model));
        let kinds: Vec<&str> = desired(&store, &model.statuses, &ctx(), "t").iter().map(|u| u.kind).collect();
        assert_eq!(kinds, ["GatewayClass"], "its own class weir is Accepted, nothing else");
    }

    #[test]
    fn grpc_and_tls_routes_get_their_status_under_their_own_kinds() {
        let yaml = format!(
            "{OBJECTS}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{namespace: shop, name: tls, generation: 1}}
spec:
  gatewayClassName: weir
  listeners: [{{name: pass, protocol: TLS, port: 9443, tls: {{mode: Passthrough}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{namespace: shop, name: rpc, generation: 4}}
spec:
  parentRefs: [{{name: gw, namespace: shop, sectionName: web}}]
  rules: [{{matches: [{{method: {{service: pkg.Svc}}}}], backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{namespace: shop, name: pass, generation: 5}}
spec:
  parentRefs: [{{name: tls}}]
  hostnames: [pass.example.com]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
"
        );
        let store = store(&yaml);
        let updates = updates(&store, "t");
        let grpc = find(&updates, "GRPCRoute");
        let parent = &grpc["parents"][0];
        // the namespace the route spelled out is echoed, as for an HTTPRoute
        let expected = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "shop", "name": "gw", "sectionName": "web"});
        assert_eq!(parent["parentRef"], expected);
        assert_eq!(
            (
                &condition(&parent["conditions"], "Accepted")["status"],
                &condition(&parent["conditions"], "Accepted")["observedGeneration"]
            ),
            (&json!("True"), &json!(4))
        );
        let tls = find(&updates, "TLSRoute");
        assert_eq!(condition(&tls["parents"][0]["conditions"], "Accepted")["status"], "True");
        let gateway = updates.iter().find(|u| u.kind == "Gateway" && u.name == "tls").unwrap();
        let listener = &gateway.status["listeners"][0];
        assert_eq!(listener["supportedKinds"], json!([{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]));
        assert_eq!(listener["attachedRoutes"], 1);
    }

    #[test]
    fn weirs_objects_get_the_gateway_apis_status_and_others_none() {
        let store = store(OBJECTS);
        let updates = updates(&store, "2026-12-05T10:00:00Z");
        let kinds: Vec<(&str, &str)> = updates.iter().map(|u| (u.kind, u.name.as_str())).collect();
        assert_eq!(kinds, [("GatewayClass", "weir"), ("Gateway", "gw"), ("HTTPRoute", "web")], "not the other class");

        let class = find(&updates, "GatewayClass");
        assert_eq!(condition(&class["conditions"], "Accepted")["status"], "True");
        assert_eq!(class["supportedFeatures"][0]["name"], "Gateway");

        let gw = find(&updates, "Gateway");
        assert_eq!(gw["addresses"], json!([{"type": "IPAddress", "value": "10.0.0.7"}]));
        let programmed = condition(&gw["conditions"], "Programmed");
        assert_eq!((&programmed["status"], &programmed["observedGeneration"]), (&json!("True"), &json!(3)));
        let web = &gw["listeners"][0];
        assert_eq!((&web["name"], &web["attachedRoutes"]), (&json!("web"), &json!(1)));
        let kinds = json!([
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
            {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}
        ]);
        assert_eq!(web["supportedKinds"], kinds, "a listener without allowedRoutes.kinds takes both");
        assert_eq!(gw["listeners"][1]["attachedRoutes"], 0, "no hostname in common with api.example.com");
        for t in ["Accepted", "ResolvedRefs", "Programmed"] {
            assert_eq!(condition(&web["conditions"], t)["status"], "True", "{t}");
        }

        let route = find(&updates, "HTTPRoute");
        let parent = &route["parents"][0];
        assert_eq!(parent["parentRef"], json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}));
        assert_eq!(parent["controllerName"], GATEWAY_CONTROLLER);
        assert_eq!(condition(&parent["conditions"], "Accepted")["status"], "True");
        let refs = condition(&parent["conditions"], "ResolvedRefs");
        assert_eq!((&refs["status"], &refs["reason"]), (&json!("False"), &json!("BackendNotFound")));
        assert!(refs["message"].as_str().unwrap().contains("Service shop/ghost does not exist"), "{refs}");
        assert_eq!(refs["observedGeneration"], 2);

        // a parentRef that spells out the route's own namespace is echoed with it (the suite
        // compares the two)
        let spelled = super::tests::store(
            &OBJECTS.replace("parentRefs: [{name: gw}]", "parentRefs: [{name: gw, namespace: shop}]"),
        );
        let spelled = super::tests::updates(&spelled, "t");
        let parent = &find(&spelled, "HTTPRoute")["parents"][0];
        let expected =
            json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "shop", "name": "gw"});
        assert_eq!(parent["parentRef"], expected);
    }

    /// Writes `updates` into the store's objects, as the API server would.
    fn written(mut store: Store, updates: &[StatusUpdate]) -> Store {
        for u in updates {
            let key = (u.namespace.clone(), u.name.clone());
            match u.kind {
                "GatewayClass" => {
                    let c = store.gateway_classes.get_mut(&u.name).unwrap();
                    std::sync::Arc::make_mut(&mut c.object).status =
                        Some(serde_json::from_value(u.status.clone()).unwrap());
                }
                "Gateway" => {
                    std::sync::Arc::make_mut(&mut store.gateways.get_mut(&key).unwrap().object).status =
                        Some(serde_json::from_value(u.status.clone()).unwrap())
                }
                "HTTPRoute" => {
                    std::sync::Arc::make_mut(&mut store.http_routes.get_mut(&key).unwrap().object).status =
                        Some(serde_json::from_value(u.status.clone()).unwrap())
                }
                "Ingress" => {
                    std::sync::Arc::make_mut(&mut store.ingresses.get_mut(&key).unwrap().object).status =
                        Some(serde_json::from_value(u.status.clone()).unwrap())
                }
                "BackendPolicy" => {
                    std::sync::Arc::make_mut(&mut store.backend_policies.get_mut(&key).unwrap().object).status =
                        Some(serde_json::from_value(u.status.clone()).unwrap())
                }
                "MeshAuthorization" => {
                    std::sync::Arc::make_mut(&mut store.mesh_authorizations.get_mut(&key).unwrap().object).status =
                        Some(serde_json::from_value(u.status.clone()).unwrap())
                }
                k => panic!("{k}"),
            }
        }
        store
    }

    #[test]
    fn a_status_written_is_not_written_again_and_a_change_keeps_unchanged_transition_times() {
        let first = updates(&store(OBJECTS), "2026-12-05T10:00:00Z");
        let store = written(store(OBJECTS), &first);
        assert_eq!(updates(&store, "2026-12-05T11:00:00Z"), [], "no status loop");

        // the ghost Service appears: ResolvedRefs turns true, Accepted keeps its time
        let fixed = OBJECTS.replace("name: ghost, port: 80", "name: web, port: 80");
        let mut changed = crate::store::Store::default();
        for o in parse_manifests(&fixed, "kubernetes").0 {
            changed.apply(o, "kubernetes");
        }
        first_route_mut(&mut changed).status = store.http_routes.values().next().unwrap().object.status.clone();
        let later = updates(&changed, "2026-12-05T12:00:00Z");
        let route = find(&later, "HTTPRoute");
        let conditions = &route["parents"][0]["conditions"];
        assert_eq!(condition(conditions, "Accepted")["lastTransitionTime"], "2026-12-05T10:00:00Z");
        let refs = condition(conditions, "ResolvedRefs");
        assert_eq!((&refs["status"], &refs["lastTransitionTime"]), (&json!("True"), &json!("2026-12-05T12:00:00Z")));
    }

    #[test]
    fn ingresses_of_weirs_class_and_gateways_get_the_published_addresses() {
        let yaml = format!(
            "{OBJECTS}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{namespace: shop, name: ours}}
spec: {{ingressClassName: weir, defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{namespace: shop, name: theirs}}
spec: {{ingressClassName: nginx, defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{namespace: weir, name: weir}}
spec: {{type: LoadBalancer, ports: [{{port: 80}}]}}
status: {{loadBalancer: {{ingress: [{{ip: 203.0.113.9}}]}}}}
"
        );
        let store = store(&yaml);
        let model = translate(&store, &TranslateOptions::defaults("weir"));
        assert_eq!(desired(&store, &model.statuses, &ctx(), "t").iter().filter(|u| u.kind == "Ingress").count(), 0);
        let ctx = StatusContext {
            publish_service: Some(("weir".into(), "weir".into())),
            publish_addresses: vec!["edge.example.com".into()],
            ..ctx()
        };
        let updates = desired(&store, &model.statuses, &ctx, "t");
        let ingresses: Vec<&StatusUpdate> = updates.iter().filter(|u| u.kind == "Ingress").collect();
        assert_eq!(ingresses.len(), 1, "only weir's class: {ingresses:#?}");
        assert_eq!(ingresses[0].name, "ours");
        let lb = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "edge.example.com"}]}});
        assert_eq!(ingresses[0].status, lb);
        let gw = find(&updates, "Gateway");
        assert_eq!(
            gw["addresses"],
            json!([{"type": "IPAddress", "value": "203.0.113.9"}, {"type": "Hostname", "value": "edge.example.com"}])
        );
    }

    #[test]
    fn weirs_own_resources_say_whether_they_are_accepted_and_why_not() {
        let yaml = format!(
            "{OBJECTS}---
apiVersion: weir.dev/v1alpha1
kind: BackendPolicy
metadata: {{namespace: shop, name: good, generation: 4}}
spec: {{targetRefs: [{{kind: Service, name: web}}]}}
---
apiVersion: weir.dev/v1alpha1
kind: BackendPolicy
metadata: {{namespace: shop, name: lost, generation: 1}}
spec: {{targetRefs: [{{kind: Service, name: ghost}}]}}
---
apiVersion: weir.dev/v1alpha1
kind: MeshAuthorization
metadata: {{namespace: shop, name: wrong, generation: 1}}
spec: {{targetRef: {{kind: Deployment, name: web}}}}
"
        );
        let store = store(&yaml);
        let mut statuses = translate(&store, &TranslateOptions::defaults("weir")).statuses;
        statuses.extend(crate::translate::mesh::translate(&store, None).statuses);
        let updates = desired(&store, &statuses, &ctx(), "2026-12-05T10:00:00Z");
        let of = |name: &str| {
            let u = updates.iter().find(|u| u.name == name).unwrap_or_else(|| panic!("{name}: {updates:#?}"));
            condition(&u.status["conditions"], "Accepted").clone()
        };
        assert_eq!((&of("good")["status"], &of("good")["observedGeneration"]), (&json!("True"), &json!(4)));
        assert_eq!((&of("lost")["status"], &of("lost")["reason"]), (&json!("False"), &json!("TargetNotFound")));
        assert_eq!((&of("wrong")["status"], &of("wrong")["reason"]), (&json!("False"), &json!("Invalid")));
        assert!(of("wrong")["message"].as_str().unwrap().contains("spec.targetRef"), "{}", of("wrong"));
        // what the API server keeps is what is computed: nothing to write again
        let store = written(store, &updates);
        assert_eq!(desired(&store, &statuses, &ctx(), "2026-12-05T11:00:00Z"), []);
    }

    #[test]
    fn other_controllers_parents_are_kept() {
        let mut store = store(OBJECTS);
        let theirs = json!({"parents": [{
            "parentRef": {"name": "their-gw"},
            "controllerName": "example.com/other",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}],
        }]});
        first_route_mut(&mut store).status = Some(serde_json::from_value(theirs).unwrap());
        let updates = updates(&store, "2026-12-05T10:00:00Z");
        let parents = find(&updates, "HTTPRoute")["parents"].as_array().unwrap().clone();
        assert_eq!(parents.len(), 2, "{parents:#?}");
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(parents[1]["controllerName"], GATEWAY_CONTROLLER);
    }
}
