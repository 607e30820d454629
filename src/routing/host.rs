//! Host patterns and the request-side host normalisation they are matched against.

use std::borrow::Cow;

/// A hostname a rule answers for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Matches exactly this (lowercase) host.
    Exact(String),
    /// `*.example.com`: `suffix` is `.example.com`. Gateway API wildcards match any number of
    /// extra labels; Ingress wildcards (`single_label`) match exactly one.
    Wildcard { suffix: String, single_label: bool },
    /// No hostname: every host no other pattern claims.
    Any,
}

/// Why a hostname was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("hostname {0:?} is not valid: use lowercase DNS labels, optionally starting with '*.'")]
    Invalid(String),
}

impl HostPattern {
    /// Parses a manifest hostname. `single_label` selects Ingress wildcard semantics.
    pub fn parse(host: &str, single_label: bool) -> Result<Self, HostError> {
        let lower = host.to_ascii_lowercase();
        let (wild, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if rest.is_empty() || rest.len() > 253 || !rest.split('.').all(valid_label) {
            return Err(HostError::Invalid(host.to_string()));
        }
        Ok(if wild {
            HostPattern::Wildcard { suffix: format!(".{rest}"), single_label }
        } else {
            HostPattern::Exact(rest.to_string())
        })
    }

    /// Whether `host` (already normalised by [`normalize_host`]) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard { suffix, single_label } => {
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && (!single_label || !host[..host.len() - suffix.len()].contains('.'))
            }
            HostPattern::Any => true,
        }
    }

    /// The pattern as a user wrote it, for logs and the config dump.
    pub fn display(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard { suffix, .. } => format!("*{suffix}"),
            HostPattern::Any => "*".to_string(),
        }
    }

    /// The intersection of a listener hostname and a route hostname (Gateway API rules):
    /// the more specific of the two when one contains the other, else `None`.
    pub fn intersect(&self, other: &HostPattern) -> Option<HostPattern> {
        use HostPattern::*;
        match (self, other) {
            (Any, x) | (x, Any) => Some(x.clone()),
            (Exact(a), Exact(b)) => (a == b).then(|| self.clone()),
            (Exact(h), w @ Wildcard { .. }) | (w @ Wildcard { .. }, Exact(h)) => w.matches(h).then(|| Exact(h.clone())),
            (Wildcard { suffix: a, .. }, Wildcard { suffix: b, .. }) => {
                if a.ends_with(b.as_str()) {
                    Some(self.clone())
                } else if b.ends_with(a.as_str()) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }
}

/// Lowercases a Host header value and strips its port (`Example.com:8080` → `example.com`,
/// `[::1]:80` → `[::1]`). Borrows when nothing needs changing, which is the common case.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(i) if raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
            _ => raw,
        }
    };
    let without_dot = without_port.strip_suffix('.').unwrap_or(without_port);
    if without_dot.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(without_dot.to_ascii_lowercase())
    } else {
        Cow::Borrowed(without_dot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_wildcard_matches_any_number_of_labels() {
        let p = HostPattern::parse("*.example.com", false).unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("aexample.com"));
    }

    #[test]
    fn ingress_wildcard_matches_exactly_one_label() {
        let p = HostPattern::parse("*.foo.com", true).unwrap();
        assert!(p.matches("bar.foo.com"));
        assert!(!p.matches("baz.bar.foo.com"));
        assert!(!p.matches("foo.com"));
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for bad in ["", "*.", "a..b", "-a.com", "a b.com", "*", "foo.*.com"] {
            assert!(HostPattern::parse(bad, false).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn host_header_is_normalised() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert!(matches!(normalize_host("a.b"), Cow::Borrowed(_)));
    }

    #[test]
    fn intersection_follows_gateway_rules() {
        let l = HostPattern::parse("*.example.com", false).unwrap();
        let r = HostPattern::parse("foo.example.com", false).unwrap();
        assert_eq!(l.intersect(&r), Some(r.clone()));
        let other = HostPattern::parse("foo.other.com", false).unwrap();
        assert_eq!(l.intersect(&other), None);
        let narrower = HostPattern::parse("*.a.example.com", false).unwrap();
        assert_eq!(l.intersect(&narrower), Some(narrower.clone()));
        assert_eq!(HostPattern::Any.intersect(&r), Some(r));
    }
}
