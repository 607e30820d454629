//! A route's filters at request time, shared by the edge and the mesh outbound: URL rewrites,
//! request and response header modifiers, and the answer of a redirect.

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::answer::{Failure, FailureKind, Reveal};
use super::rewrite::rewrite_path;
use crate::routing::normalize_path;
use crate::snapshot::{Action, RouteAction, Target};
use crate::translate::HeaderMods;

/// The path and query a URLRewrite filter sends upstream instead of the request's, if the route
/// has one (`matched_prefix`: the rule's path prefix, for ReplacePrefixMatch).
pub fn rewritten_path(action: &RouteAction, matched_prefix: Option<&str>, uri: &http::Uri) -> Option<String> {
    let rewrite = action.rewrite.as_ref()?.path.as_ref()?;
    let mut p = rewrite_path(rewrite, matched_prefix, uri.path());
    if let Some(q) = uri.query() {
        p.push('?');
        p.push_str(q);
    }
    Some(p)
}

/// Applies the route's filters to the request sent upstream: the URLRewrite hostname and path
/// (`new_path`, from [`rewritten_path`]), the rule's RequestHeaderModifier, then the chosen
/// backend's (`target`).
pub fn filter_request(
    upstream: &mut RequestHeader,
    action: &RouteAction,
    target: Option<&Target>,
    new_path: Option<&str>,
) -> Result<()> {
    if let Some(host) = action.rewrite.as_ref().and_then(|r| r.hostname.as_ref()) {
        upstream.insert_header(http::header::HOST, host.as_str())?;
    }
    if let Some(p) = new_path {
        let uri = p.parse::<http::Uri>().map_err(|e| Error::because(ErrorType::InternalError, "rewritten path", e))?;
        upstream.set_uri(uri);
    }
    if !action.request_headers.is_empty() {
        apply_mods(upstream, &action.request_headers)?;
    }
    match target {
        Some(t) if !t.request_headers.is_empty() => apply_mods(upstream, &t.request_headers),
        _ => Ok(()),
    }
}

/// Applies the rule's ResponseHeaderModifier, then the chosen backend's, to the response sent
/// downstream, and the CORS headers for the origin [`cors_request`] allowed.
pub fn filter_response(
    resp: &mut ResponseHeader,
    action: &RouteAction,
    target: Option<&Target>,
    cors_origin: Option<&HeaderValue>,
) -> Result<()> {
    if let (Some(cors), Some(origin)) = (&action.cors, cors_origin) {
        for (name, value) in cors.response(origin) {
            resp.insert_header(name, value)?;
        }
        resp.append_header(http::header::VARY, "origin")?;
    }
    if !action.response_headers.is_empty() {
        apply_mods(resp, &action.response_headers)?;
    }
    match target {
        Some(t) if !t.response_headers.is_empty() => apply_mods(resp, &t.response_headers),
        _ => Ok(()),
    }
}

/// Target `index` of a forwarding action.
pub fn target_of(action: &RouteAction, index: usize) -> Option<&Target> {
    match &action.kind {
        Action::Forward { targets, .. } => targets.get(index),
        Action::Redirect { .. } => None,
    }
}

/// The rule's CORS filter on a request (`action.cors`). A preflight (OPTIONS with `Origin` and
/// `Access-Control-Request-Method`) is answered here: 204 with the filter's headers for an
/// allowed origin, 403 without them for another; returns true then. For any other request from
/// an allowed origin, `allowed` gets the origin, for [`filter_response`] to answer it.
pub async fn cors_request(
    session: &mut Session,
    action: &RouteAction,
    allowed: &mut Option<HeaderValue>,
) -> Result<bool> {
    let Some(cors) = &action.cors else { return Ok(false) };
    let req = session.req_header();
    let Some(origin) = req.headers.get(http::header::ORIGIN).cloned() else { return Ok(false) };
    let asked = req.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD).cloned();
    let preflight = req.method == http::Method::OPTIONS && asked.is_some();
    let allows = cors.allows(origin.as_bytes());
    match (preflight, asked) {
        (true, Some(method)) => {
            let (status, headers) = match allows {
                true => {
                    let asked_headers = req.headers.get(http::header::ACCESS_CONTROL_REQUEST_HEADERS);
                    (204, cors.preflight(&origin, &method, asked_headers))
                }
                false => (403, vec![]),
            };
            let mut resp = ResponseHeader::build(status, Some(headers.len() + 1))?;
            for (name, value) in headers {
                resp.append_header(name, value)?;
            }
            resp.insert_header(http::header::VARY, "origin")?;
            if status != 204 {
                resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
            }
            session.write_response_header(Box::new(resp), true).await?;
            Ok(true)
        }
        _ => {
            if allows {
                *allowed = Some(origin);
            }
            Ok(false)
        }
    }
}

/// Answers the request with `status`, a short plain-text `body` and one more header if given (a
/// redirect's `location`, a refusal's reason); the request ends here.
pub async fn respond(
    session: &mut Session,
    status: u16,
    body: impl Into<Bytes>,
    header: Option<(http::HeaderName, String)>,
) -> Result<()> {
    let body = body.into();
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some((name, value)) = header {
        resp.insert_header(name, value)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// A redirect's one header.
pub fn location(to: String) -> Option<(http::HeaderName, String)> {
    Some((http::header::LOCATION, to))
}

/// The header operations pingora's request and response headers share.
trait EditHeaders {
    fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()>;
    fn add(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &http::HeaderName);
}

macro_rules! edit_headers {
    ($t:ty) => {
        impl EditHeaders for $t {
            fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()> {
                self.insert_header(name, value).map(|_| ())
            }
            fn add(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
            fn remove(&mut self, name: &http::HeaderName) {
                self.remove_header(name);
            }
        }
    };
}
edit_headers!(RequestHeader);
edit_headers!(ResponseHeader);

/// Applies a RequestHeaderModifier or ResponseHeaderModifier filter.
fn apply_mods(headers: &mut impl EditHeaders, mods: &HeaderMods) -> Result<()> {
    for (n, v) in &mods.set {
        headers.set(n.clone(), v.clone())?;
    }
    for (n, v) in &mods.add {
        headers.add(n.clone(), v.clone())?;
    }
    for n in &mods.remove {
        headers.remove(n);
    }
    Ok(())
}

/// Holds an HTTP/1 request to RFC 9112's framing before anything reads it: HTTP/1.1 without
/// Host is answered 400; a Content-Length given more than once is one header when every value
/// is the same (so the upstream sees one), else 400; a transfer coding other than `chunked`
/// (`gzip, chunked`: weir would drop the gzip) is answered 501. Returns `false` when answered.
pub async fn strict_http1(session: &mut Session, answered: &mut Option<FailureKind>) -> Result<bool> {
    if session.as_downstream().is_http2() {
        return Ok(true);
    }
    let req = session.req_header();
    let refusal =
        if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
            Some((FailureKind::BadRequest, "an HTTP/1.1 request needs a Host header"))
        } else if req.headers.get_all(http::header::TRANSFER_ENCODING).iter().any(|v| {
            v.to_str().map_or(true, |v| v.split(',').any(|coding| !coding.trim().eq_ignore_ascii_case("chunked")))
        }) {
            Some((FailureKind::Status(501), "weir takes no transfer coding but chunked"))
        } else {
            let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter().peekable();
            match (lengths.next(), lengths.peek().is_some()) {
                (Some(first), true) if lengths.all(|v| v == first) => {
                    let one = first.clone();
                    let header = session.req_header_mut();
                    header.remove_header(&http::header::CONTENT_LENGTH);
                    header.insert_header(http::header::CONTENT_LENGTH, one)?;
                    None
                }
                (Some(_), true) => {
                    Some((FailureKind::BadRequest, "Content-Length is given more than once, with different values"))
                }
                _ => None,
            }
        };
    match refusal {
        Some((kind, why)) => {
            Failure::new(kind, why).send(session, Reveal::Text, answered).await?;
            Ok(false)
        }
        None => Ok(true),
    }
}

/// Replaces the request's path with its normalized form ([`normalize_path`]) before anything
/// routes, authorizes or forwards it, so all three see the same path. A path that climbs above
/// the root is answered 400; then this returns `false` and the request ends.
pub async fn normalize_request_path(session: &mut Session, answered: &mut Option<FailureKind>) -> Result<bool> {
    let uri = &session.req_header().uri;
    let normal = match normalize_path(uri.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(true),
        Ok(std::borrow::Cow::Owned(path)) => path,
        Err(e) => {
            Failure::new(FailureKind::BadRequest, e.to_string()).send(session, Reveal::Text, answered).await?;
            return Ok(false);
        }
    };
    let path_and_query = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .or_else(|e| Error::e_explain(ErrorType::InvalidHTTPHeader, format!("normalized path: {e}")))?,
    );
    let uri = http::Uri::from_parts(parts)
        .or_else(|e| Error::e_explain(ErrorType::InvalidHTTPHeader, format!("normalized URI: {e}")))?;
    session.req_header_mut().set_uri(uri);
    Ok(true)
}
