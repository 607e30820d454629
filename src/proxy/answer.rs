//! weir's own answers, when no backend answers: one typed failure for both tiers, mapped to the
//! wire in one place. An HTTP caller gets the status and a short text; a gRPC caller (content-type
//! `application/grpc...`) gets what its library understands, a trailers-only response with
//! `grpc-status` and `grpc-message` (HTTP 200, as gRPC requires), the way Envoy answers it.
//! Mesh gateways also name the reason in `weir-denied-reason` (the edge does not show its
//! internals to the Internet).

use std::borrow::Cow;

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

/// Why weir answers a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// 400: the request cannot be served as sent (a path climbing above the root).
    BadRequest,
    /// 403: authorization refused the caller.
    Forbidden,
    /// 404: no route (or no Service) for the request.
    NotFound,
    /// 421: the request reached a gateway that does not serve what it names.
    Misdirected,
    /// 500: the route's backend is not available (an invalid reference, see `/config_dump`).
    BackendUnavailable,
    /// 502: the upstream failed.
    UpstreamFailed,
    /// 503: no healthy endpoint, or a circuit-breaker limit.
    Unavailable,
    /// 504: a timeout.
    Timeout,
    /// Any other status an error carries.
    Status(u16),
}

impl FailureKind {
    /// The kind of an HTTP status.
    pub fn of_status(status: u16) -> FailureKind {
        match status {
            400 => FailureKind::BadRequest,
            403 => FailureKind::Forbidden,
            404 => FailureKind::NotFound,
            421 => FailureKind::Misdirected,
            500 => FailureKind::BackendUnavailable,
            502 => FailureKind::UpstreamFailed,
            503 => FailureKind::Unavailable,
            504 => FailureKind::Timeout,
            other => FailureKind::Status(other),
        }
    }

    /// The kind of a failed request's error, or `None` when there is no one to answer (the
    /// client is gone): the error's own status, 504 for timeouts, 502 for other upstream
    /// failures.
    pub fn of_error(e: &Error) -> Option<FailureKind> {
        let status = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => return None,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        Some(FailureKind::of_status(status))
    }

    pub fn status(self) -> u16 {
        match self {
            FailureKind::BadRequest => 400,
            FailureKind::Forbidden => 403,
            FailureKind::NotFound => 404,
            FailureKind::Misdirected => 421,
            FailureKind::BackendUnavailable => 500,
            FailureKind::UpstreamFailed => 502,
            FailureKind::Unavailable => 503,
            FailureKind::Timeout => 504,
            FailureKind::Status(s) => s,
        }
    }

    /// The gRPC status code: gRPC's HTTP-to-gRPC mapping (doc/http-grpc-status-mapping.md),
    /// with two kinds weir knows better than their status: a timeout is DEADLINE_EXCEEDED, an
    /// unavailable backend UNAVAILABLE.
    pub fn grpc_status(self) -> u8 {
        const INTERNAL: u8 = 13;
        const UNAUTHENTICATED: u8 = 16;
        const PERMISSION_DENIED: u8 = 7;
        const UNIMPLEMENTED: u8 = 12;
        const UNAVAILABLE: u8 = 14;
        const DEADLINE_EXCEEDED: u8 = 4;
        const UNKNOWN: u8 = 2;
        match self {
            FailureKind::Timeout => DEADLINE_EXCEEDED,
            FailureKind::BackendUnavailable => UNAVAILABLE,
            other => match other.status() {
                400 => INTERNAL,
                401 => UNAUTHENTICATED,
                403 => PERMISSION_DENIED,
                404 => UNIMPLEMENTED,
                429 | 502 | 503 | 504 => UNAVAILABLE,
                _ => UNKNOWN,
            },
        }
    }
}

/// A request weir answers itself, and why in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: Cow<'static, str>,
}

/// Whether the answer names its reason in `weir-denied-reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reveal {
    /// The edge: status and text only.
    Text,
    /// A mesh gateway: also the reason header, for the calling application and its operators.
    ReasonHeader,
}

/// The header a mesh gateway names the reason of its own answers in.
pub const DENIED_REASON: http::HeaderName = http::HeaderName::from_static("weir-denied-reason");

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<Cow<'static, str>>) -> Failure {
        Failure { kind, message: message.into() }
    }

    /// Writes the answer, and records its kind in `answered` (a gRPC answer is HTTP 200 on the
    /// wire; metrics count it as its failure's status: see [`counted_status`]). The request
    /// ends here.
    pub async fn send(&self, session: &mut Session, reveal: Reveal, answered: &mut Option<FailureKind>) -> Result<()> {
        *answered = Some(self.kind);
        let grpc = session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let status = if grpc { 200 } else { self.kind.status() };
        let mut resp = ResponseHeader::build(status, Some(4))?;
        if reveal == Reveal::ReasonHeader {
            resp.insert_header(DENIED_REASON, self.message.as_ref())?;
        }
        if grpc {
            resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
            resp.insert_header("grpc-status", self.kind.grpc_status().to_string())?;
            resp.insert_header("grpc-message", grpc_message(&self.message))?;
            // trailers-only: one HEADERS frame ending the stream (the vendored Pingora's patch)
            return session.write_response_header(Box::new(resp), true).await;
        }
        let body = bytes::Bytes::from(format!("{}\n", self.message));
        resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

/// The status metrics and logs count for the request: the failure weir answered, else what was
/// written (0: nothing).
pub fn counted_status(session: &Session, answered: Option<FailureKind>) -> u16 {
    answered.map_or_else(|| session.response_written().map_or(0, |r| r.status.as_u16()), FailureKind::status)
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b' '..=b'~' if b != b'%' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status_and_grpc_code() {
        let cases = [
            (FailureKind::BadRequest, 400, 13),
            (FailureKind::Forbidden, 403, 7),
            (FailureKind::NotFound, 404, 12),
            (FailureKind::Misdirected, 421, 2),
            (FailureKind::BackendUnavailable, 500, 14),
            (FailureKind::UpstreamFailed, 502, 14),
            (FailureKind::Unavailable, 503, 14),
            (FailureKind::Timeout, 504, 4),
            (FailureKind::Status(401), 401, 16),
            (FailureKind::Status(429), 429, 14),
        ];
        for (kind, status, grpc) in cases {
            assert_eq!((kind.status(), kind.grpc_status()), (status, grpc), "{kind:?}");
            assert_eq!(FailureKind::of_status(status), kind);
        }
    }

    #[test]
    fn errors_map_to_the_status_a_caller_gets() {
        let of = |etype, source| {
            let e = match source {
                ErrorSource::Upstream => Error::new_up(etype),
                ErrorSource::Downstream => Error::new_down(etype),
                _ => Error::new_in(etype),
            };
            FailureKind::of_error(&e)
        };
        assert_eq!(of(ErrorType::ReadTimedout, ErrorSource::Upstream), Some(FailureKind::Timeout));
        assert_eq!(of(ErrorType::ConnectRefused, ErrorSource::Upstream), Some(FailureKind::UpstreamFailed));
        assert_eq!(of(ErrorType::HTTPStatus(503), ErrorSource::Internal), Some(FailureKind::Unavailable));
        assert_eq!(of(ErrorType::ConnectionClosed, ErrorSource::Downstream), None, "nobody to answer");
        assert_eq!(of(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream), Some(FailureKind::BadRequest));
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("no route: 100% sure"), "no route: 100%25 sure");
        assert_eq!(grpc_message("é\n"), "%C3%A9%0A");
    }
}
