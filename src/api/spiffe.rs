//! SPIFFE IDs as weir's manifests write them: a Service's `weir.dev/identity` annotation and a
//! MeshAuthorization's callers. The mesh checks certificates against them.

use std::fmt;

/// The Service annotation naming the SPIFFE ID its workloads must present.
pub const IDENTITY_ANNOTATION: &str = "weir.dev/identity";

/// A SPIFFE ID, `spiffe://<trust-domain>/<path>`, checked against the SPIFFE ID specification.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The whole ID, `spiffe://<trust domain><path>`.
    uri: String,
    /// Length of `spiffe://<trust domain>`: the path starts there.
    path_start: usize,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<SpiffeId, String> {
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| format!("{s:?} is not a SPIFFE ID (spiffe://...)"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(format!("{s:?} has no trust domain"));
        }
        if let Some(c) = td.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')) {
            return Err(format!("trust domain {td:?} has {c:?}; only lowercase letters, digits, '.', '-', '_'"));
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(format!("{s:?} has an empty, '.' or '..' path segment"));
                }
                if let Some(c) =
                    segment.chars().find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
                {
                    return Err(format!("{s:?} has {c:?} in its path; only letters, digits, '.', '-', '_'"));
                }
            }
        }
        Ok(SpiffeId { uri: s.to_string(), path_start: "spiffe://".len() + td.len() })
    }

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`, the form Istio and weir use for Kubernetes workloads.
    pub fn for_service_account(trust_domain: &str, namespace: &str, service_account: &str) -> Result<SpiffeId, String> {
        SpiffeId::parse(&format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"))
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.path_start]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The path with its leading `/`; empty for the trust domain's own ID.
    fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The namespace of a `/ns/<ns>/sa/<sa>` ID.
    pub fn namespace(&self) -> Option<&str> {
        self.k8s_parts().map(|(ns, _)| ns)
    }

    /// The service account of a `/ns/<ns>/sa/<sa>` ID.
    pub fn service_account(&self) -> Option<&str> {
        self.k8s_parts().map(|(_, sa)| sa)
    }

    fn k8s_parts(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_follow_the_specification() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/payments").unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("cluster.local", Some("shop"), Some("payments"))
        );
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/payments");
        assert_eq!(SpiffeId::for_service_account("cluster.local", "shop", "payments").unwrap(), id);
        let other = SpiffeId::parse("spiffe://example.org/workload/batch-7").unwrap();
        assert_eq!(other.namespace(), None, "not the Kubernetes form");
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe:///ns/a",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://td//a",
            "spiffe://td/a/",
            "spiffe://td/a/../b",
            "spiffe://td/a b",
            "spiffe://td:8080/a",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
