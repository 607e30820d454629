//! `networking.k8s.io/v1` Ingress → routes on the two Ingress listeners.
//!
//! Semantics follow the Kubernetes spec and ingress-nginx: Exact/Prefix paths
//! (ImplementationSpecific is Prefix), the longest path wins, Exact beats Prefix, older
//! Ingresses win ties, `defaultBackend` catches the rest, and plain-HTTP requests for TLS hosts
//! are redirected to HTTPS with 308 unless `ssl-redirect: "false"`.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use super::backend::{Backends, PortRef};
use super::tls::{CertModel, Secrets};
use super::{
    created, reject, ActionKind, ActionModel, BackendRef, ListenerModel, Model, Protocol, Redirect, RouteModel,
    TranslateOptions,
};
use crate::routing::{HostPattern, Order, PathMatch, RequestMatch};
use crate::store::Store;

/// `controller` of the IngressClass objects weir serves.
pub const INGRESS_CONTROLLER: &str = "weir.dev/ingress-controller";
/// Annotations that turn the HTTP→HTTPS redirect for TLS hosts off when set to `"false"`.
pub const SSL_REDIRECT_ANNOTATIONS: [&str; 2] = ["weir.dev/ssl-redirect", "nginx.ingress.kubernetes.io/ssl-redirect"];
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Listener names, also the `listener` metrics label.
pub const HTTP_LISTENER: &str = "ingress-http";
pub const HTTPS_LISTENER: &str = "ingress-https";

fn annotation<'a>(ing: &'a Ingress, key: &str) -> Option<&'a str> {
    ing.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether weir serves this Ingress, from its class.
fn serves(store: &Store, opts: &TranslateOptions, ing: &Ingress) -> bool {
    let spec_class = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
    match spec_class.or_else(|| annotation(ing, LEGACY_CLASS_ANNOTATION)) {
        Some(class) => {
            class == opts.ingress_class
                && store.ingress_classes.get(class).is_none_or(|c| {
                    c.object.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(INGRESS_CONTROLLER)
                })
        }
        None => {
            opts.watch_ingress_without_class
                || store.ingress_classes.values().any(|c| {
                    c.object.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(INGRESS_CONTROLLER)
                        && c.object.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                            == Some(&"true".to_string())
                })
        }
    }
}

fn backend_ref(backends: &mut Backends<'_>, ns: &str, b: &IngressBackend) -> Result<BackendRef, String> {
    let Some(svc) = &b.service else {
        return Err("resource backends are not supported; use a service backend".into());
    };
    let port = match &svc.port {
        Some(p) if p.number.is_some() => PortRef::Number(p.number.unwrap_or_default() as u16),
        Some(p) if p.name.is_some() => PortRef::Name(p.name.clone().unwrap_or_default()),
        _ => PortRef::Unset,
    };
    let pool = backends.resolve(ns, &svc.name, &port)?;
    Ok(BackendRef { name: pool.to_string(), weight: 1, pool: Some(pool), ..BackendRef::default() })
}

/// Adds the Ingress listeners and their routes to `model`.
pub fn translate(
    store: &Store,
    opts: &TranslateOptions,
    backends: &mut Backends<'_>,
    secrets: &mut Secrets<'_>,
    model: &mut Model,
) {
    let mut http = vec![];
    let mut https = vec![];
    let mut certs: Vec<CertModel> = vec![];
    let mut ingresses: Vec<_> = store.ingresses.iter().filter(|(_, s)| serves(store, opts, &s.object)).collect();
    // older first, so the oldest TLS secret becomes the default certificate
    ingresses.sort_by_key(|((ns, name), s)| (created(&s.object.metadata), ns.clone(), name.clone()));

    for ((ns, name), stored) in ingresses {
        // weir's: its status gets weir's published address
        model.statuses.of("Ingress", ns, name);
        let ing = &stored.object;
        let spec = ing.spec.clone().unwrap_or_default();
        let file = &stored.origin;
        let mut errors = vec![];
        let owner = format!("{ns}/{name}");
        let order = |rule: usize, matched: usize| Order {
            created: created(&ing.metadata),
            owner: owner.clone(),
            rule,
            matched,
        };

        let mut tls_hosts = vec![];
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let mut hosts = vec![];
            for h in tls.hosts.iter().flatten() {
                match HostPattern::parse(h, true) {
                    Ok(p) => hosts.push(p),
                    Err(e) => errors.push(format!("spec.tls[{i}].hosts: {e}")),
                }
            }
            tls_hosts.extend(hosts.iter().cloned());
            if let Some(secret) = &tls.secret_name {
                match secrets.load(ns, secret) {
                    Ok(c) => certs.push(CertModel {
                        hosts,
                        secret: format!("{ns}/{secret}"),
                        context: c.context,
                        not_after: c.not_after,
                    }),
                    // the Secret is reported on its own; the hosts use the default certificate
                    Err(e) => tracing::warn!(ingress = %owner, "{e}"),
                }
            }
        }

        let action = |kind| {
            Arc::new(ActionModel {
                name: format!("ingress/{owner}"),
                kind,
                request_headers: Default::default(),
                response_headers: Default::default(),
                cors: None,
                mirrors: vec![],
                rewrite: None,
                timeouts: Default::default(),
                retry: Default::default(),
            })
        };
        let ssl_redirect = SSL_REDIRECT_ANNOTATIONS.iter().all(|a| annotation(ing, a) != Some("false"));
        let redirect = action(ActionKind::Redirect(Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: (opts.ingress_https.port() != 443).then_some(opts.ingress_https.port()),
            path: None,
            status: 308,
        }));
        let redirects = |host: &HostPattern| ssl_redirect && tls_hosts.contains(host);

        let mut routes = vec![];
        let mut hosts_seen = vec![];
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match &rule.host {
                Some(h) => match HostPattern::parse(h, true) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(format!("spec.rules[{ri}].host: {e}"));
                        continue;
                    }
                },
                None => HostPattern::Any,
            };
            hosts_seen.push(host.clone());
            for (pi, path) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let at = format!("spec.rules[{ri}].http.paths[{pi}]");
                let p = path.path.clone().unwrap_or_else(|| "/".into());
                if !p.starts_with('/') {
                    errors.push(format!("{at}.path: {p:?} must start with '/'"));
                    continue;
                }
                let path_match = match path.path_type.as_str() {
                    "Exact" => PathMatch::Exact(p),
                    "Prefix" | "ImplementationSpecific" => PathMatch::prefix(&p),
                    other => {
                        errors.push(format!("{at}.pathType: {other:?} is not Exact, Prefix or ImplementationSpecific"));
                        continue;
                    }
                };
                match backend_ref(backends, ns, &path.backend) {
                    Ok(b) => {
                        let matcher = RequestMatch { path: path_match, method: None, headers: vec![], query: vec![] };
                        routes.push((host.clone(), matcher, order(ri, pi), action(ActionKind::Forward(vec![b]))));
                    }
                    Err(e) => errors.push(format!("{at}.backend: {e}")),
                }
            }
        }
        if let Some(default) = &spec.default_backend {
            match backend_ref(backends, ns, default) {
                Ok(b) => {
                    let forward = action(ActionKind::Forward(vec![b]));
                    hosts_seen.push(HostPattern::Any);
                    hosts_seen.sort();
                    hosts_seen.dedup();
                    for host in &hosts_seen {
                        let matcher =
                            RequestMatch { path: PathMatch::Fallback, method: None, headers: vec![], query: vec![] };
                        routes.push((host.clone(), matcher, order(usize::MAX, 0), forward.clone()));
                    }
                }
                Err(e) => errors.push(format!("spec.defaultBackend: {e}")),
            }
        }

        if !errors.is_empty() {
            model.rejections.push(reject("Ingress", ns, name, file, errors.join("; ")));
            continue;
        }
        for (host, matcher, order, forward) in routes {
            let on_http = if redirects(&host) { redirect.clone() } else { forward.clone() };
            http.push((host.clone(), RouteModel { matcher: matcher.clone(), order: order.clone(), action: on_http }));
            https.push((host, RouteModel { matcher, order, action: forward }));
        }
    }

    // the oldest Ingress's first certificate answers handshakes no SNI name matches
    if let Some(first) = certs.first() {
        let mut default = first.clone();
        default.hosts.clear();
        certs.push(default);
    }
    model.listeners.insert(
        opts.ingress_http,
        ListenerModel {
            hosts: vec![],
            name: HTTP_LISTENER.into(),
            addr: opts.ingress_http,
            protocol: Protocol::Http,
            certs: vec![],
            routes: http,
        },
    );
    model.listeners.insert(
        opts.ingress_https,
        ListenerModel {
            hosts: vec![],
            name: HTTPS_LISTENER.into(),
            addr: opts.ingress_https,
            protocol: Protocol::Https,
            certs,
            routes: https,
        },
    );
}
