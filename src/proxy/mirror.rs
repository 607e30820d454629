//! RequestMirror: a copy of each request a rule forwards also goes to the rule's mirror
//! backends, body included. Their answers are read and dropped: nothing a mirror does (slow,
//! failing, gone) reaches the client or delays its request. A mirror that cannot keep up with
//! the body is cut off.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use pingora::http::RequestHeader;
use tokio::sync::mpsc;

use crate::snapshot::MirrorTarget;

/// A mirror's whole exchange, body included, is abandoned after this.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);
/// Body chunks waiting for a slow mirror before it is cut off.
const MIRROR_BODY_CHUNKS: usize = 16;
/// Mirrored requests in flight to one mirror of a rule: a slow mirror under load gets no more
/// copies past this, rather than tasks piling up in weir.
const MIRROR_IN_FLIGHT: usize = 1024;

/// Holds one of a mirror's in-flight places until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn take(count: &Arc<AtomicUsize>) -> Option<InFlight> {
        let taken =
            count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MIRROR_IN_FLIGHT).then_some(n + 1));
        taken.ok().map(|_| InFlight(count.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A mirror's body as hyper sends it: a body cut short is an error, so the mirrored request is
/// aborted rather than sent truncated.
type Body = BoxBody<Bytes, std::io::Error>;

/// The body of a request being mirrored: each chunk goes to every mirror still keeping up.
#[derive(Default)]
pub struct MirrorBodies(Vec<(mpsc::Sender<Bytes>, Arc<AtomicBool>)>);

impl MirrorBodies {
    /// Sends a chunk of the request's body to the mirrors; `end` completes their bodies. A
    /// mirror whose queue is full is cut off (its request aborted), as is every mirror of a
    /// request whose body never ends.
    pub fn send(&mut self, chunk: Option<&Bytes>, end: bool) {
        if let Some(chunk) = chunk.filter(|c| !c.is_empty()) {
            self.0.retain(|(tx, _)| tx.try_send(chunk.clone()).is_ok());
        }
        if end {
            for (_, complete) in self.0.drain(..) {
                complete.store(true, Ordering::Release);
            }
        }
    }
}

/// At each try of a request (`head` as it goes upstream, filters applied): the first starts
/// its rule's mirrors (`mirrored`, `bodies` kept in the request's context); a later one (a
/// retry, which sends the body again) cuts off mirrors still waiting for the body.
pub fn at_try(
    session: &mut pingora::proxy::Session,
    head: &RequestHeader,
    mirrors: &[MirrorTarget],
    mirrored: &mut bool,
    bodies: &mut MirrorBodies,
) {
    if *mirrored {
        *bodies = MirrorBodies::default();
        return;
    }
    *mirrored = true;
    if !mirrors.is_empty() {
        *bodies = start(head, mirrors, !session.is_body_empty());
    }
}

/// Starts mirroring `head` (the request as it goes upstream) to one endpoint of each of
/// `mirrors` that samples it; `with_body`: the body follows through the returned
/// [`MirrorBodies`].
pub fn start(head: &RequestHeader, mirrors: &[MirrorTarget], with_body: bool) -> MirrorBodies {
    let mut bodies = MirrorBodies::default();
    for m in mirrors.iter().filter(|m| m.sampled()) {
        let Some(place) = InFlight::take(&m.in_flight) else {
            tracing::debug!(mirror = %m.name, "{MIRROR_IN_FLIGHT} mirrored requests in flight: not mirrored");
            continue;
        };
        let Some(picked) = m.pool.select(b"", &[]) else {
            tracing::debug!(mirror = %m.name, "no endpoint to mirror to");
            continue;
        };
        let body: Body = match with_body {
            true => {
                let (tx, rx) = mpsc::channel(MIRROR_BODY_CHUNKS);
                let complete = Arc::new(AtomicBool::new(false));
                bodies.0.push((tx, complete.clone()));
                let chunks = futures_util::stream::unfold(Some(rx), move |rx| {
                    let complete = complete.clone();
                    async move {
                        let mut rx = rx?;
                        match rx.recv().await {
                            Some(chunk) => Some((Ok(Frame::data(chunk)), Some(rx))),
                            None if complete.load(Ordering::Acquire) => None,
                            None => Some((Err(std::io::Error::other("the mirrored body was cut off")), None)),
                        }
                    }
                });
                StreamBody::new(chunks).boxed()
            }
            false => Empty::new().map_err(|never| match never {}).boxed(),
        };
        let Some(request) = copy(head, body) else { continue };
        let (addr, name) = (picked.addr, m.name.clone());
        tokio::spawn(async move {
            let _place = place;
            match tokio::time::timeout(MIRROR_TIMEOUT, send(addr, request)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(mirror = %name, %addr, "mirrored request failed: {e}"),
                Err(_) => tracing::debug!(mirror = %name, %addr, "mirrored request timed out"),
            }
        });
    }
    bodies
}

/// The request for a mirror: `head`'s method, path and headers (hop-by-hop ones aside).
fn copy(head: &RequestHeader, body: Body) -> Option<http::Request<Body>> {
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut builder = http::Request::builder().method(head.method.clone()).uri(path);
    for (name, value) in head.headers.iter() {
        let hop = [http::header::CONNECTION, http::header::TRANSFER_ENCODING, http::header::UPGRADE];
        if !hop.contains(name) {
            builder = builder.header(name, value);
        }
    }
    builder.body(body).ok()
}

async fn send(addr: SocketAddr, request: http::Request<Body>) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    // read the answer to its end, so the backend sees a whole exchange, and drop it
    response.into_body().collect().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_takes_no_more_requests_than_its_in_flight_places() {
        let count = Arc::new(AtomicUsize::new(0));
        let mut held: Vec<InFlight> = (0..MIRROR_IN_FLIGHT).map(|_| InFlight::take(&count).unwrap()).collect();
        assert!(InFlight::take(&count).is_none(), "all places taken");
        held.pop();
        assert!(InFlight::take(&count).is_some(), "a finished mirror frees its place");
    }
}
