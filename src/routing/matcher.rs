//! Request matchers (path, method, headers, query) and the precedence order between them.

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

/// How a rule matches the request path.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The whole path, byte for byte.
    Exact(String),
    /// Element-wise prefix on `/` boundaries, stored without a trailing slash (`""` is `/`).
    Prefix(String),
    /// A regular expression that must match the whole path.
    Regex(Regex),
    /// Ingress `defaultBackend`: matches everything, below every other rule.
    Fallback,
}

impl PathMatch {
    /// A prefix match; a trailing slash in the prefix is ignored, as both Ingress and the
    /// Gateway API specify.
    pub fn prefix(prefix: &str) -> Self {
        PathMatch::Prefix(prefix.trim_end_matches('/').to_string())
    }

    /// A regex that must match the whole path.
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$")).map(PathMatch::Regex)
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str()) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::Fallback => true,
        }
    }

    fn precedence(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (3, p.len()),
            // the pattern without our anchors
            PathMatch::Regex(r) => (2, r.as_str().len() - 6),
            PathMatch::Prefix(p) => (1, p.len()),
            PathMatch::Fallback => (0, 0),
        }
    }

    /// The matcher as it appears in a manifest, for the config dump.
    pub fn display(&self) -> String {
        match self {
            PathMatch::Exact(p) => format!("Exact {p}"),
            PathMatch::Prefix(p) if p.is_empty() => "Prefix /".to_string(),
            PathMatch::Prefix(p) => format!("Prefix {p}"),
            PathMatch::Regex(r) => format!("RegularExpression {}", &r.as_str()[4..r.as_str().len() - 2]),
            PathMatch::Fallback => "default backend".to_string(),
        }
    }
}

/// A header or query value condition.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$")).map(ValueMatch::Regex)
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(v) => v.as_bytes() == value,
            ValueMatch::Regex(r) => std::str::from_utf8(value).is_ok_and(|v| r.is_match(v)),
        }
    }
}

/// One `matches[]` entry of a route rule: every condition must hold.
#[derive(Clone, Debug)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

/// The parts of a request that routing looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Normalised host (see [`super::host::normalize_host`]).
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl RequestMatch {
    /// Matches any request path under `/`.
    pub fn any() -> Self {
        RequestMatch { path: PathMatch::prefix("/"), method: None, headers: vec![], query: vec![] }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self
                .headers
                .iter()
                .all(|(name, v)| req.headers.get_all(name).iter().any(|value| v.matches(value.as_bytes())))
            && self.query.iter().all(|(name, v)| query_values(req.query, name).any(|value| v.matches(value.as_bytes())))
    }

    /// Gateway API precedence, greatest first: Exact path, then RegularExpression (longer
    /// first; their rank is implementation-specific), then the longest prefix, then a method
    /// match, then more header matches, then more query matches.
    pub fn precedence(&self) -> Precedence {
        let (kind, len) = self.path.precedence();
        Precedence {
            path_kind: kind,
            path_len: len,
            has_method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
        }
    }
}

/// Specificity of a match; compared with `Ord`, the greater wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path_kind: u8,
    path_len: usize,
    has_method: bool,
    headers: usize,
    query: usize,
}

/// Values of query parameter `name` in a raw query string.
fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.unwrap_or("").split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_whole_path_elements() {
        let p = PathMatch::prefix("/foo");
        assert!(p.matches("/foo"));
        assert!(p.matches("/foo/"));
        assert!(p.matches("/foo/bar"));
        assert!(!p.matches("/foobar"));
        let trailing = PathMatch::prefix("/foo/");
        assert!(trailing.matches("/foo"));
        assert!(trailing.matches("/foo/bar"));
        let root = PathMatch::prefix("/");
        assert!(root.matches("/"));
        assert!(root.matches("/anything"));
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let r = PathMatch::regex("/v[0-9]+/.*").unwrap();
        assert!(r.matches("/v1/users"));
        assert!(!r.matches("/api/v1/users"));
    }

    #[test]
    fn precedence_orders_exact_regex_prefix() {
        let m = |path| RequestMatch { path, method: None, headers: vec![], query: vec![] };
        let exact = m(PathMatch::Exact("/a".into())).precedence();
        let regex = m(PathMatch::regex("/a.*").unwrap()).precedence();
        let long = m(PathMatch::prefix("/abc/def")).precedence();
        let short = m(PathMatch::prefix("/abc")).precedence();
        assert!(exact > regex && regex > long && long > short);
        let mut with_method = m(PathMatch::prefix("/abc"));
        with_method.method = Some(Method::GET);
        assert!(with_method.precedence() > short);
        assert!(long > with_method.precedence());
    }

    #[test]
    fn query_values_are_found() {
        let vals: Vec<_> = query_values(Some("a=1&b=2&a=3&flag"), "a").collect();
        assert_eq!(vals, ["1", "3"]);
        assert_eq!(query_values(Some("flag"), "flag").collect::<Vec<_>>(), [""]);
    }
}
