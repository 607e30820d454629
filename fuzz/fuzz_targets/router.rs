//! The request router: rules under host patterns, then requests as a client may send them. The
//! rule a lookup picks must match the request, be the first matching rule of the most specific
//! host, and a request no rule of its host matches must get none.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use weir::routing::{
    normalize_host, normalize_path, HostPattern, Order, PathMatch, RequestMatch, RequestView, Router, Rule, ValueMatch,
};

const HEADERS: [&str; 3] = ["x-canary", "accept", "x-user"];
const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS];

#[derive(Arbitrary, Debug)]
enum Path {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Arbitrary, Debug)]
struct RuleSpec {
    host: Option<String>,
    ingress: bool,
    path: Path,
    method: Option<u8>,
    header: Option<(u8, String, bool)>,
    query: Option<(String, String)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<RuleSpec>,
    host: String,
    path: String,
    query: Option<String>,
    method: u8,
    headers: Vec<(u8, String)>,
}

fn value(pattern: &str, regex: bool) -> Option<ValueMatch> {
    if regex {
        ValueMatch::regex(pattern).ok()
    } else {
        Some(ValueMatch::Exact(pattern.to_string()))
    }
}

fn rule(spec: &RuleSpec, index: usize) -> Option<(HostPattern, Rule<usize>)> {
    let host = match &spec.host {
        Some(h) => HostPattern::parse(h, spec.ingress).ok()?,
        None => HostPattern::Any,
    };
    let path = match &spec.path {
        Path::Exact(p) => PathMatch::Exact(normalize_path(p).ok()?.into_owned()),
        Path::Prefix(p) => PathMatch::prefix(&normalize_path(p).ok()?),
        Path::Regex(p) => PathMatch::regex(p).ok()?,
    };
    let mut headers = vec![];
    if let Some((name, pattern, regex)) = &spec.header {
        headers.push((HeaderName::from_static(HEADERS[*name as usize % HEADERS.len()]), value(pattern, *regex)?));
    }
    let query = spec.query.iter().map(|(name, v)| (name.clone(), ValueMatch::Exact(v.clone()))).collect();
    let method = spec.method.map(|m| METHODS[m as usize % METHODS.len()].clone());
    let order = Order { created: 0, owner: "fuzz/route".into(), rule: index, matched: 0 };
    Some((host, Rule { matcher: RequestMatch { path, method, headers, query }, order, action: index }))
}

fuzz_target!(|input: Input| {
    let rules: Vec<_> = input.rules.iter().take(16).enumerate().filter_map(|(i, s)| rule(s, i)).collect();
    let patterns: Vec<HostPattern> = rules.iter().map(|(h, _)| h.clone()).collect();
    let router = Router::build(rules);
    let host = normalize_host(&input.host);
    let Ok(path) = normalize_path(&input.path) else { return };
    let mut headers = HeaderMap::new();
    for (name, v) in &input.headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.append(HeaderName::from_static(HEADERS[*name as usize % HEADERS.len()]), v);
        }
    }
    let method = &METHODS[input.method as usize % METHODS.len()];
    let req = RequestView { host: &host, path: &path, query: input.query.as_deref(), method, headers: &headers };

    let Some(vhost) = router.host(&host) else {
        assert!(!patterns.iter().any(|p| p.matches(&host)), "{host:?} matches a pattern but found no host");
        assert!(router.lookup(&req).is_none());
        return;
    };
    assert!(vhost.pattern.matches(&host), "{host:?} routed to {:?}", vhost.pattern);
    if patterns.contains(&HostPattern::Exact(host.to_string())) {
        assert_eq!(vhost.pattern, HostPattern::Exact(host.to_string()), "an exact host comes first");
    }
    let first = vhost.rules.iter().position(|r| r.matcher.matches(&req));
    match router.lookup(&req) {
        Some(found) => {
            assert!(found.matcher.matches(&req), "the rule found does not match the request");
            assert_eq!(Some(found.action), first.map(|i| vhost.rules[i].action), "not the first matching rule");
        }
        None => assert_eq!(first, None, "a rule of {host:?} matches but lookup found none"),
    }
    // rules are ordered by precedence, greatest first
    for pair in vhost.rules.windows(2) {
        assert!(pair[0].matcher.precedence() >= pair[1].matcher.precedence());
    }
});
