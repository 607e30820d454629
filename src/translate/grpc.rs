//! GRPCRoute (`gateway.networking.k8s.io/v1`) read as the HTTPRoute it means. A gRPC call is an
//! HTTP/2 POST to `/<service>/<method>`: a method match is a path match, and the header
//! matches, filters, backendRefs, parentRefs and hostnames have HTTPRoute's shape. The Gateway
//! then attaches, routes and reports the route as it does an HTTPRoute, under its own kind, and
//! its backends speak h2c ([`super::backend::Backends::speak_h2c`]).

use gateway_api::grpcroutes::{
    GrpcRoute, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethod,
    GrpcRouteRulesMatchesMethodType,
};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType as PathType, HttpRouteSpec,
};

/// `route` as an HTTPRoute, and what in it cannot be read as one (each refuses the route).
pub fn as_http_route(route: &GrpcRoute) -> (HttpRoute, Vec<String>) {
    let mut problems = vec![];
    // the matches are what differ; every other field has HTTPRoute's shape and names
    let mut spec = serde_json::to_value(&route.spec).unwrap_or_default();
    for rule in spec["rules"].as_array_mut().into_iter().flatten() {
        rule.as_object_mut().map(|r| r.remove("matches"));
    }
    let mut http: HttpRouteSpec = serde_json::from_value(spec).unwrap_or_else(|e| {
        problems.push(format!("spec: {e}"));
        HttpRouteSpec::default()
    });
    let grpc_rules = route.spec.rules.iter().flatten();
    for (ri, (rule, grpc_rule)) in http.rules.iter_mut().flatten().zip(grpc_rules).enumerate() {
        let mut matches = vec![];
        for (mi, m) in grpc_rule.matches.iter().flatten().enumerate() {
            match request_match(m) {
                Ok(m) => matches.push(m),
                Err(e) => problems.push(format!("spec.rules[{ri}].matches[{mi}].{e}")),
            }
        }
        rule.matches = (!matches.is_empty()).then_some(matches);
    }
    (HttpRoute { metadata: route.metadata.clone(), spec: http, status: None }, problems)
}

fn request_match(m: &GrpcRouteRulesMatches) -> Result<HttpRouteRulesMatches, String> {
    let headers = m.headers.as_ref().map(|headers| {
        headers
            .iter()
            .map(|h| HttpRouteRulesMatchesHeaders {
                name: h.name.clone(),
                value: h.value.clone(),
                r#type: Some(match h.r#type {
                    Some(GrpcRouteRulesMatchesHeadersType::RegularExpression) => {
                        HttpRouteRulesMatchesHeadersType::RegularExpression
                    }
                    _ => HttpRouteRulesMatchesHeadersType::Exact,
                }),
            })
            .collect()
    });
    let path = m.method.as_ref().map(method_path).transpose()?;
    Ok(HttpRouteRulesMatches { headers, path, ..Default::default() })
}

/// A method match as the path match of the calls it takes.
fn method_path(m: &GrpcRouteRulesMatchesMethod) -> Result<HttpRouteRulesMatchesPath, String> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let path = |t, v: String| HttpRouteRulesMatchesPath { r#type: Some(t), value: Some(v) };
    let regex = matches!(m.r#type, Some(GrpcRouteRulesMatchesMethodType::RegularExpression));
    if regex {
        for (field, value) in [("service", service), ("method", method)] {
            if let Some(v) = value {
                regex::Regex::new(v)
                    .map_err(|e| format!("method.{field}: regular expression {v:?} is invalid: {e}"))?;
            }
        }
    } else if let Some((field, v)) = [("service", service), ("method", method)]
        .into_iter()
        .find_map(|(field, v)| v.filter(|v| v.contains('/')).map(|v| (field, v)))
    {
        return Err(format!("method.{field}: {v:?} has a '/', which an exact gRPC name cannot have"));
    }
    Ok(match (regex, service, method) {
        (_, None, None) => return Err("method: give a service, a method or both".into()),
        (false, Some(s), Some(m)) => path(PathType::Exact, format!("/{s}/{m}")),
        (false, Some(s), None) => path(PathType::PathPrefix, format!("/{s}")),
        (false, None, Some(m)) => path(PathType::RegularExpression, format!("/[^/]+/{}", regex::escape(m))),
        (true, s, m) => {
            let (s, m) = (s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+"));
            path(PathType::RegularExpression, format!("/(?:{s})/(?:{m})"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::PathMatch;

    fn route(yaml: &str) -> (HttpRoute, Vec<String>) {
        let route: GrpcRoute = serde_saphyr::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: r, namespace: ns}}\n{yaml}"
        ))
        .unwrap();
        as_http_route(&route)
    }

    /// The paths (calls) the first rule's first match takes among `calls`.
    fn takes(yaml: &str, calls: &[&'static str]) -> Vec<&'static str> {
        let (http, problems) = route(yaml);
        assert_eq!(problems, Vec::<String>::new());
        let m = &http.spec.rules.unwrap()[0].matches.clone().unwrap()[0];
        let path = m.path.clone().unwrap();
        let value = path.value.unwrap();
        let matcher = match path.r#type.unwrap() {
            PathType::Exact => PathMatch::Exact(value),
            PathType::PathPrefix => PathMatch::prefix(&value),
            PathType::RegularExpression => PathMatch::regex(&value).unwrap(),
        };
        calls.iter().copied().filter(|c| matcher.matches(c)).collect()
    }

    const CALLS: [&str; 4] = ["/pkg.Echo/Echo", "/pkg.Echo/EchoTwo", "/pkg.Other/Echo", "/pkg.EchoX/Echo"];

    #[test]
    fn a_method_match_takes_the_calls_of_its_service_and_method() {
        let rule = |m: &str| format!("spec: {{rules: [{{matches: [{{method: {m}}}]}}]}}");
        assert_eq!(takes(&rule("{service: pkg.Echo, method: Echo}"), &CALLS), ["/pkg.Echo/Echo"]);
        assert_eq!(takes(&rule("{service: pkg.Echo}"), &CALLS), ["/pkg.Echo/Echo", "/pkg.Echo/EchoTwo"]);
        assert_eq!(takes(&rule("{method: Echo}"), &CALLS), ["/pkg.Echo/Echo", "/pkg.Other/Echo", "/pkg.EchoX/Echo"]);
        let regex = rule("{type: RegularExpression, service: 'pkg\\.Echo.*', method: 'Echo.+'}");
        assert_eq!(takes(&regex, &CALLS), ["/pkg.Echo/EchoTwo"]);
    }

    #[test]
    fn headers_filters_and_backends_keep_their_meaning() {
        let (http, problems) = route(
            "spec:
  parentRefs: [{name: gw, sectionName: grpc}]
  hostnames: [grpc.example.com]
  rules:
  - name: first
    matches: [{headers: [{name: version, value: two}, {name: color, type: RegularExpression, value: 'or.*'}]}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-a, value: b}]}}]
    backendRefs: [{name: v2, port: 8080, weight: 3}]",
        );
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(http.spec.parent_refs.unwrap()[0].section_name.as_deref(), Some("grpc"));
        assert_eq!(http.spec.hostnames.unwrap(), ["grpc.example.com"]);
        let rule = &http.spec.rules.unwrap()[0];
        assert_eq!(rule.name.as_deref(), Some("first"));
        let headers = rule.matches.clone().unwrap()[0].headers.clone().unwrap();
        assert_eq!(headers[1].r#type, Some(HttpRouteRulesMatchesHeadersType::RegularExpression));
        assert_eq!((headers[0].name.as_str(), headers[0].value.as_str()), ("version", "two"));
        assert!(rule.filters.clone().unwrap()[0].response_header_modifier.is_some());
        let backend = &rule.backend_refs.clone().unwrap()[0];
        assert_eq!((backend.name.as_str(), backend.port, backend.weight), ("v2", Some(8080), Some(3)));
    }

    #[test]
    fn a_method_match_that_names_nothing_or_an_impossible_name_is_refused_with_its_field() {
        let (_, problems) = route("spec: {rules: [{matches: [{method: {type: Exact}}]}]}");
        assert_eq!(problems, ["spec.rules[0].matches[0].method: give a service, a method or both"]);
        let (_, problems) = route("spec: {rules: [{matches: [{headers: []}, {method: {service: a/b, method: M}}]}]}");
        assert_eq!(
            problems,
            ["spec.rules[0].matches[1].method.service: \"a/b\" has a '/', which an exact gRPC name cannot have"]
        );
        let (_, problems) = route("spec: {rules: [{matches: [{method: {type: RegularExpression, method: '(('}}]}]}");
        assert!(problems[0].starts_with("spec.rules[0].matches[0].method.method: regular expression \"((\" is invalid"));
    }
}
