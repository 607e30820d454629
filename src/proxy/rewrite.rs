//! Path rewrites and redirect locations (Gateway API RequestRedirect and URLRewrite semantics).

use crate::translate::{PathRewrite, Redirect};

/// The rewritten path. `matched_prefix` is the rule's PathPrefix (without trailing slash).
pub fn rewrite_path(rewrite: &PathRewrite, matched_prefix: Option<&str>, path: &str) -> String {
    match rewrite {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::Prefix(replacement) => {
            let prefix = matched_prefix.unwrap_or("");
            let rest = path.get(prefix.len()..).unwrap_or("");
            let replacement = replacement.trim_end_matches('/');
            match (replacement.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_string(),
                (true, false) => rest.to_string(),
                (false, _) => format!("{replacement}{rest}"),
            }
        }
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// The `Location` of a redirect. Port rules follow the Gateway API: an explicit port wins; a
/// changed scheme uses that scheme's well-known port; otherwise the listener's port. Well-known
/// ports are left out of the URL.
pub fn redirect_location(
    r: &Redirect,
    matched_prefix: Option<&str>,
    request_scheme: &str,
    request_host: &str,
    listener_port: u16,
    path: &str,
    query: Option<&str>,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(request_scheme);
    let host = r.hostname.as_deref().unwrap_or(request_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => default_port(s),
        (None, None) => listener_port,
    };
    let path = match &r.path {
        Some(p) => rewrite_path(p, matched_prefix, path),
        None => path.to_string(),
    };
    let mut out = format!("{scheme}://{host}");
    if port != default_port(scheme) {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(&path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrite_keeps_the_rest_of_the_path() {
        let r = PathRewrite::Prefix("/v2".into());
        assert_eq!(rewrite_path(&r, Some("/api"), "/api/users"), "/v2/users");
        assert_eq!(rewrite_path(&r, Some("/api"), "/api"), "/v2");
        let root = PathRewrite::Prefix("/".into());
        assert_eq!(rewrite_path(&root, Some("/api"), "/api/users"), "/users");
        assert_eq!(rewrite_path(&root, Some("/api"), "/api"), "/");
        assert_eq!(rewrite_path(&PathRewrite::Full("/x".into()), Some("/api"), "/api/y"), "/x");
    }

    #[test]
    fn redirect_ports_follow_the_gateway_api() {
        let r = |scheme: Option<&str>, port| Redirect {
            scheme: scheme.map(str::to_string),
            hostname: None,
            port,
            path: None,
            status: 302,
        };
        assert_eq!(
            redirect_location(&r(Some("https"), None), None, "http", "a.com", 8080, "/p", Some("q=1")),
            "https://a.com/p?q=1"
        );
        assert_eq!(redirect_location(&r(None, None), None, "http", "a.com", 8080, "/p", None), "http://a.com:8080/p");
        assert_eq!(
            redirect_location(&r(Some("https"), Some(8443)), None, "http", "a.com", 80, "/", None),
            "https://a.com:8443/"
        );
        assert_eq!(redirect_location(&r(None, None), None, "http", "a.com", 80, "/", None), "http://a.com/");
    }
}
