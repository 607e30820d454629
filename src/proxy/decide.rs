//! The route decision, one for the edge and the mesh outbound: the request's host (normalized),
//! the rule its (already normalized) path, method, headers and query match, the matched prefix,
//! and what the rule says: a redirect and its location, or a target picked by weight and the
//! path a URLRewrite sends instead. Pure: it reads the request and the compiled router, and
//! writes nothing but the weighted cycle's position.

use std::sync::Arc;

use http::request::Parts;

use super::filters::rewritten_path;
use super::rewrite::redirect_location;
use crate::routing::{normalize_host, PathMatch, RequestView, Router};
use crate::snapshot::{Action, RouteAction};

/// A compiled rule's action, however a tier wraps it (the mesh adds its metrics series).
pub trait Routed: Clone {
    fn route(&self) -> &RouteAction;
}

impl Routed for Arc<RouteAction> {
    fn route(&self) -> &RouteAction {
        self
    }
}

/// What the route says to do with a request.
#[derive(Debug)]
pub enum Decision<T> {
    /// No rule matches.
    NoRoute,
    /// Answer `status` with `location`.
    Redirect { rule: T, status: u16, location: String },
    /// Forward to the rule's target `target` (`None`: none of its backends is available, which
    /// is answered 500), with the path and query a URLRewrite sends instead, if any.
    Forward { rule: T, target: Option<usize>, new_path: Option<String> },
}

/// Where the request arrived: its scheme and port (for redirects).
#[derive(Clone, Copy, Debug)]
pub struct Arrival<'a> {
    pub scheme: &'a str,
    pub port: u16,
}

/// Decides the route of `req` (whose path is normalized already) in `router`.
pub fn decide<T: Routed>(router: &Router<T>, req: &Parts, arrival: Arrival<'_>) -> Decision<T> {
    let raw_host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let host = normalize_host(raw_host);
    let view = RequestView {
        host: &host,
        path: req.uri.path(),
        query: req.uri.query(),
        method: &req.method,
        headers: &req.headers,
    };
    let Some(rule) = router.lookup(&view) else { return Decision::NoRoute };
    let matched_prefix = match &rule.matcher.path {
        PathMatch::Prefix(p) => Some(p.as_str()),
        _ => None,
    };
    let action = rule.action.route();
    match &action.kind {
        Action::Redirect { redirect, .. } => {
            let (path, query) = (req.uri.path(), req.uri.query());
            let location =
                redirect_location(redirect, matched_prefix, arrival.scheme, &host, arrival.port, path, query);
            Decision::Redirect { rule: rule.action.clone(), status: redirect.status, location }
        }
        Action::Forward { targets, cycle, .. } => Decision::Forward {
            rule: rule.action.clone(),
            target: cycle.next().filter(|&i| targets[i].pool.is_some()),
            new_path: rewritten_path(action, matched_prefix, &req.uri),
        },
    }
}
