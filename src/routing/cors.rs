//! A route's CORS filter (Gateway API `HTTPRoute` filter type `CORS`): which origins may call,
//! the answer to a preflight request, and the headers an allowed actual request's response
//! gets. Pure: the proxy asks and applies. The header values are joined when the filter is
//! built, not per request.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
};
use http::{HeaderName, HeaderValue};

/// One `allowOrigins` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    /// `*`: any origin.
    Any,
    /// `scheme://host[:port]`, compared without case.
    Exact(String),
    /// `scheme://*.suffix[:port]`: any host of one or more labels before `.suffix`.
    Wildcard { scheme: String, suffix: String, port: Option<u16> },
}

/// `*`, or the values joined with `, ` (what a preflight answer sends).
#[derive(Clone, Debug, PartialEq, Eq)]
enum List {
    Any,
    Values(Option<HeaderValue>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    origins: Vec<Origin>,
    methods: List,
    headers: List,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

/// The filter's fields as the HTTPRoute gives them.
#[derive(Default)]
pub struct CorsSpec<'a> {
    pub allow_origins: &'a [String],
    pub allow_methods: &'a [String],
    pub allow_headers: &'a [String],
    pub expose_headers: &'a [String],
    pub max_age: Option<i32>,
    pub allow_credentials: bool,
}

const TRUE: HeaderValue = HeaderValue::from_static("true");

/// Splits an origin `scheme://host[:port]` (lowercased) into its parts.
fn parts(origin: &str) -> Option<(&str, &str, Option<u16>)> {
    let (scheme, rest) = origin.split_once("://")?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse().ok()?)),
        None => (rest, None),
    };
    (!scheme.is_empty() && !host.is_empty() && !host.contains('/')).then_some((scheme, host, port))
}

fn joined(values: &[String], what: &str) -> Result<List, String> {
    if values.iter().any(|v| v == "*") {
        return Ok(List::Any);
    }
    if values.is_empty() {
        return Ok(List::Values(None));
    }
    let value = HeaderValue::try_from(values.join(", ")).map_err(|_| format!("{what}: not valid header text"))?;
    Ok(List::Values(Some(value)))
}

impl Cors {
    /// The filter, or what is wrong with it.
    pub fn new(spec: &CorsSpec<'_>) -> Result<Cors, String> {
        let mut origins = vec![];
        for o in spec.allow_origins {
            let lower = o.to_ascii_lowercase();
            let origin = match parts(&lower) {
                _ if lower == "*" => Origin::Any,
                Some((scheme, host, port)) => match host.strip_prefix("*.") {
                    Some(suffix) if !suffix.contains('*') => {
                        Origin::Wildcard { scheme: scheme.into(), suffix: format!(".{suffix}"), port }
                    }
                    None if !host.contains('*') => Origin::Exact(lower.clone()),
                    _ => return Err(format!("allowOrigins {o:?}: a wildcard is allowed only as the first label")),
                },
                None => {
                    return Err(format!("allowOrigins {o:?}: use scheme://host[:port], *.domain as the host, or *"))
                }
            };
            origins.push(origin);
        }
        let expose = match joined(spec.expose_headers, "exposeHeaders")? {
            List::Any => Some(HeaderValue::from_static("*")),
            List::Values(v) => v,
        };
        Ok(Cors {
            origins,
            methods: joined(spec.allow_methods, "allowMethods")?,
            headers: joined(spec.allow_headers, "allowHeaders")?,
            expose,
            max_age: spec.max_age.filter(|a| *a > 0).map(HeaderValue::from),
            credentials: spec.allow_credentials,
        })
    }

    /// Whether `origin` (the request's `Origin` header) may call.
    pub fn allows(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else { return false };
        let lower = origin.to_ascii_lowercase();
        self.origins.iter().any(|o| match o {
            Origin::Any => true,
            Origin::Exact(e) => *e == lower,
            Origin::Wildcard { scheme, suffix, port } => parts(&lower).is_some_and(|(s, host, p)| {
                s == scheme && p == *port && host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }),
        })
    }

    /// The headers answering a preflight from allowed `origin` asking for `method` and
    /// `headers` (its Access-Control-Request-* values). A wildcard list answers with what was
    /// asked: `*` means nothing to a browser sending credentials.
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        method: &HeaderValue,
        headers: Option<&HeaderValue>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = self.allowed(origin);
        match &self.methods {
            List::Any => out.push((ACCESS_CONTROL_ALLOW_METHODS, method.clone())),
            List::Values(Some(v)) => out.push((ACCESS_CONTROL_ALLOW_METHODS, v.clone())),
            List::Values(None) => {}
        }
        match (&self.headers, headers) {
            (List::Any, Some(asked)) => out.push((ACCESS_CONTROL_ALLOW_HEADERS, asked.clone())),
            (List::Values(Some(v)), _) => out.push((ACCESS_CONTROL_ALLOW_HEADERS, v.clone())),
            _ => {}
        }
        if let Some(expose) = &self.expose {
            out.push((ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
        if let Some(age) = &self.max_age {
            out.push((ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        out
    }

    /// The headers of the response to an actual request from allowed `origin`.
    pub fn response(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = self.allowed(origin);
        if let Some(expose) = &self.expose {
            out.push((ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
        out
    }

    /// The origin echoed (so that credentials work with it), and credentials if allowed.
    fn allowed(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())];
        if self.credentials {
            out.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn origins_match_exactly_by_wildcard_host_or_all() {
        let origins = strings(&["https://www.foo.com", "https://*.bar.com", "http://local:8080"]);
        let cors = Cors::new(&CorsSpec { allow_origins: &origins, ..CorsSpec::default() }).unwrap();
        for ok in [
            "https://www.foo.com",
            "HTTPS://WWW.FOO.COM",
            "https://a.bar.com",
            "https://xpto.www.bar.com",
            "http://local:8080",
        ] {
            assert!(cors.allows(ok.as_bytes()), "{ok}");
        }
        for refused in [
            "http://www.foo.com",
            "https://bar.com",
            "https://a.bar.com:8443",
            "https://foobar.com",
            "http://local",
            "null",
        ] {
            assert!(!cors.allows(refused.as_bytes()), "{refused}");
        }
        let any = strings(&["*"]);
        assert!(Cors::new(&CorsSpec { allow_origins: &any, ..CorsSpec::default() }).unwrap().allows(b"https://x.org"));
        for bad in ["www.foo.com", "https://www.*.com", "https://*"] {
            let origins = strings(&[bad]);
            assert!(Cors::new(&CorsSpec { allow_origins: &origins, ..CorsSpec::default() }).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_preflight_is_answered_with_the_lists_or_what_was_asked_for_a_wildcard() {
        let (origins, methods, headers, expose) =
            (strings(&["*"]), strings(&["GET", "OPTIONS"]), strings(&["x-header-1", "x-header-2"]), strings(&["x-3"]));
        let spec = CorsSpec {
            allow_origins: &origins,
            allow_methods: &methods,
            allow_headers: &headers,
            expose_headers: &expose,
            max_age: Some(3600),
            allow_credentials: true,
        };
        let cors = Cors::new(&spec).unwrap();
        let origin = HeaderValue::from_static("https://a.org");
        let text = |h: Vec<(HeaderName, HeaderValue)>| -> Vec<String> {
            h.iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap())).collect()
        };
        assert_eq!(
            text(cors.preflight(&origin, &HeaderValue::from_static("GET"), None)),
            [
                "access-control-allow-origin: https://a.org",
                "access-control-allow-credentials: true",
                "access-control-allow-methods: GET, OPTIONS",
                "access-control-allow-headers: x-header-1, x-header-2",
                "access-control-expose-headers: x-3",
                "access-control-max-age: 3600",
            ]
        );
        assert_eq!(
            text(cors.response(&origin)),
            [
                "access-control-allow-origin: https://a.org",
                "access-control-allow-credentials: true",
                "access-control-expose-headers: x-3"
            ]
        );
        let any = strings(&["*"]);
        let wild = Cors::new(&CorsSpec {
            allow_origins: &any,
            allow_methods: &any,
            allow_headers: &any,
            ..CorsSpec::default()
        })
        .unwrap();
        let asked = HeaderValue::from_static("x-a, x-b");
        assert_eq!(
            text(wild.preflight(&origin, &HeaderValue::from_static("PUT"), Some(&asked))),
            [
                "access-control-allow-origin: https://a.org",
                "access-control-allow-methods: PUT",
                "access-control-allow-headers: x-a, x-b"
            ]
        );
    }
}
