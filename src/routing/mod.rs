//! Routing: a pure library from a request to the rule that serves it. No I/O.
//!
//! A [`Router`] holds virtual hosts; each holds its rules already sorted by precedence, so a
//! lookup is one host lookup (hash maps for exact hosts and wildcard suffixes) and a scan that
//! stops at the first matching rule.

pub mod cors;
pub mod host;
pub mod matcher;
pub mod path;

use std::collections::HashMap;

pub use host::{normalize_host, HostPattern};
pub use matcher::{PathMatch, Precedence, RequestMatch, RequestView, ValueMatch};
pub use path::{normalize_path, PathError};

/// Tie-breakers after [`Precedence`], smallest first: creation time of the owning object,
/// then its `namespace/name`, then rule index, then match index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    pub created: i64,
    pub owner: String,
    pub rule: usize,
    pub matched: usize,
}

/// One match of one rule, with the action it leads to.
#[derive(Clone, Debug)]
pub struct Rule<A> {
    pub matcher: RequestMatch,
    pub order: Order,
    pub action: A,
}

/// The rules of one host pattern, sorted best first.
#[derive(Clone, Debug)]
pub struct VirtualHost<A> {
    pub pattern: HostPattern,
    pub rules: Vec<Rule<A>>,
}

/// A compiled router. Built once per snapshot; lookups take no lock and do not allocate
/// (unless the Host header has uppercase letters).
#[derive(Clone, Debug)]
pub struct Router<A> {
    hosts: Vec<VirtualHost<A>>,
    exact: HashMap<String, usize>,
    /// Wildcards keyed by suffix (`.example.com`), split by label semantics.
    wild_multi: HashMap<String, usize>,
    wild_single: HashMap<String, usize>,
    any: Option<usize>,
}

impl<A> Default for Router<A> {
    fn default() -> Self {
        Router {
            hosts: vec![],
            exact: HashMap::new(),
            wild_multi: HashMap::new(),
            wild_single: HashMap::new(),
            any: None,
        }
    }
}

impl<A> Router<A> {
    /// Builds a router from rules, each under a host pattern.
    pub fn build(rules: impl IntoIterator<Item = (HostPattern, Rule<A>)>) -> Self {
        Router::build_with_hosts(&[], rules)
    }

    /// [`Router::build`], with a virtual host for each of `hosts` even if no rule is under it:
    /// a request for one of them is answered there (404 without a rule), never by the rules of
    /// a less specific host.
    pub fn build_with_hosts(hosts: &[HostPattern], rules: impl IntoIterator<Item = (HostPattern, Rule<A>)>) -> Self {
        let mut router = Router::default();
        let mut index: HashMap<HostPattern, usize> = HashMap::new();
        for pattern in hosts {
            index.entry(pattern.clone()).or_insert_with(|| {
                router.hosts.push(VirtualHost { pattern: pattern.clone(), rules: vec![] });
                router.hosts.len() - 1
            });
        }
        for (pattern, rule) in rules {
            let i = *index.entry(pattern.clone()).or_insert_with(|| {
                router.hosts.push(VirtualHost { pattern: pattern.clone(), rules: vec![] });
                router.hosts.len() - 1
            });
            router.hosts[i].rules.push(rule);
        }
        for (i, vh) in router.hosts.iter_mut().enumerate() {
            vh.rules.sort_by(|a, b| {
                b.matcher.precedence().cmp(&a.matcher.precedence()).then_with(|| a.order.cmp(&b.order))
            });
            match &vh.pattern {
                HostPattern::Exact(h) => {
                    router.exact.insert(h.clone(), i);
                }
                HostPattern::Wildcard { suffix, single_label: false } => {
                    router.wild_multi.insert(suffix.clone(), i);
                }
                HostPattern::Wildcard { suffix, single_label: true } => {
                    router.wild_single.insert(suffix.clone(), i);
                }
                HostPattern::Any => router.any = Some(i),
            }
        }
        router
    }

    /// The virtual host serving `host`: exact first, then the longest matching wildcard, then
    /// the catch-all. Rules of a less specific host are never consulted (no fallback), as in
    /// Envoy's virtual hosts and ingress-nginx's server blocks.
    pub fn host(&self, host: &str) -> Option<&VirtualHost<A>> {
        if let Some(&i) = self.exact.get(host) {
            return Some(&self.hosts[i]);
        }
        let mut first = true;
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            let suffix = &rest[dot..];
            if first {
                if let Some(&i) = self.wild_single.get(suffix) {
                    return Some(&self.hosts[i]);
                }
                first = false;
            }
            if let Some(&i) = self.wild_multi.get(suffix) {
                return Some(&self.hosts[i]);
            }
            rest = &rest[dot + 1..];
        }
        self.any.map(|i| &self.hosts[i])
    }

    /// The best rule for a request.
    pub fn lookup(&self, req: &RequestView<'_>) -> Option<&Rule<A>> {
        self.host(req.host)?.rules.iter().find(|r| r.matcher.matches(req))
    }

    pub fn virtual_hosts(&self) -> &[VirtualHost<A>] {
        &self.hosts
    }

    pub fn rule_count(&self) -> usize {
        self.hosts.iter().map(|h| h.rules.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    fn rule(path: PathMatch, owner: &str, created: i64, name: &'static str) -> Rule<&'static str> {
        Rule {
            matcher: RequestMatch { path, method: None, headers: vec![], query: vec![] },
            order: Order { created, owner: owner.into(), rule: 0, matched: 0 },
            action: name,
        }
    }

    fn get<'a>(router: &'a Router<&'static str>, host: &str, path: &str) -> Option<&'static str> {
        let headers = HeaderMap::new();
        let req = RequestView { host, path, query: None, method: &Method::GET, headers: &headers };
        router.lookup(&req).map(|r| r.action)
    }

    #[test]
    fn a_claimed_host_without_rules_answers_nothing_rather_than_a_wider_hosts_rules() {
        let p = |h| HostPattern::parse(h, false).unwrap();
        let router = Router::build_with_hosts(
            &[p("*.foo.example.com")],
            [(p("*.example.com"), rule(PathMatch::prefix("/"), "a", 0, "wide"))],
        );
        assert_eq!(get(&router, "x.foo.example.com", "/"), None, "the claimed host has no rule");
        assert_eq!(get(&router, "x.example.com", "/"), Some("wide"));
        assert_eq!(router.rule_count(), 1);
    }

    #[test]
    fn exact_host_beats_wildcard_and_longer_wildcard_beats_shorter() {
        let p = |h| HostPattern::parse(h, false).unwrap();
        let router = Router::build([
            (p("*.example.com"), rule(PathMatch::prefix("/"), "a", 0, "wide")),
            (p("*.b.example.com"), rule(PathMatch::prefix("/"), "a", 0, "narrow")),
            (p("x.b.example.com"), rule(PathMatch::prefix("/"), "a", 0, "exact")),
            (HostPattern::Any, rule(PathMatch::prefix("/"), "a", 0, "any")),
        ]);
        assert_eq!(get(&router, "x.b.example.com", "/"), Some("exact"));
        assert_eq!(get(&router, "y.b.example.com", "/"), Some("narrow"));
        assert_eq!(get(&router, "y.c.example.com", "/"), Some("wide"));
        assert_eq!(get(&router, "other.org", "/"), Some("any"));
    }

    #[test]
    fn most_specific_host_does_not_fall_back() {
        let p = |h| HostPattern::parse(h, false).unwrap();
        let router = Router::build([
            (p("a.example.com"), rule(PathMatch::Exact("/only".into()), "a", 0, "exact")),
            (p("*.example.com"), rule(PathMatch::prefix("/"), "a", 0, "wide")),
        ]);
        assert_eq!(get(&router, "a.example.com", "/other"), None);
    }

    #[test]
    fn older_then_alphabetical_breaks_ties() {
        let router = Router::build([
            (HostPattern::Any, rule(PathMatch::prefix("/p"), "ns/b", 5, "b-old")),
            (HostPattern::Any, rule(PathMatch::prefix("/p"), "ns/a", 9, "a-new")),
            (HostPattern::Any, rule(PathMatch::prefix("/q"), "ns/z", 1, "z")),
            (HostPattern::Any, rule(PathMatch::prefix("/q"), "ns/y", 1, "y")),
        ]);
        assert_eq!(get(&router, "h", "/p"), Some("b-old"));
        assert_eq!(get(&router, "h", "/q"), Some("y"));
    }

    #[test]
    fn longest_prefix_wins_and_exact_beats_prefix() {
        let router = Router::build([
            (HostPattern::Any, rule(PathMatch::prefix("/"), "n/a", 0, "root")),
            (HostPattern::Any, rule(PathMatch::prefix("/api"), "n/a", 0, "api")),
            (HostPattern::Any, rule(PathMatch::prefix("/api/v1"), "n/a", 0, "v1")),
            (HostPattern::Any, rule(PathMatch::Exact("/api".into()), "n/a", 0, "exact")),
            (HostPattern::Any, rule(PathMatch::Fallback, "n/a", 0, "default")),
        ]);
        assert_eq!(get(&router, "h", "/api"), Some("exact"));
        assert_eq!(get(&router, "h", "/api/"), Some("api"));
        assert_eq!(get(&router, "h", "/api/v1/x"), Some("v1"));
        assert_eq!(get(&router, "h", "/apix"), Some("root"));
    }
}
