//! TLSRoute (`gateway.networking.k8s.io/v1`) read as the HTTPRoute it means: a route by server
//! name (the connection's SNI, against `hostnames`) to weighted backends, with no matches or
//! filters. The Gateway attaches and reports it as an HTTPRoute, under its own kind, on TLS
//! listeners of mode Passthrough, whose connections go as they are to the backend
//! ([`crate::proxy::passthrough`]).

use gateway_api::httproutes::{HttpRoute, HttpRouteSpec};
use gateway_api::tlsroutes::TlsRoute;

/// `route` as an HTTPRoute, and what in it cannot be read as one (each refuses the route).
pub fn as_http_route(route: &TlsRoute) -> (HttpRoute, Vec<String>) {
    let mut problems = vec![];
    // parentRefs, hostnames and rules' names and backendRefs have HTTPRoute's shape and names
    let spec = serde_json::to_value(&route.spec).unwrap_or_default();
    let spec: HttpRouteSpec = serde_json::from_value(spec).unwrap_or_else(|e| {
        problems.push(format!("spec: {e}"));
        HttpRouteSpec::default()
    });
    (HttpRoute { metadata: route.metadata.clone(), spec, status: None }, problems)
}
