//! An echo upstream (HTTP/1.1, h2c, WebSocket and gRPC on one port) that answers every request with a JSON description of what it received; used by the integration tests and by `weir demo`.
//!
//! Normal requests get the configured status (default 200), the headers `x-echo-name: <name>`
//! and `content-type: application/json`, and a body like
//!
//! ```json
//! {"name": "a", "method": "GET", "path": "/foo?x=1", "host": "example.com",
//!  "version": "HTTP/1.1", "headers": {"host": "example.com", "x-extra": "1"}}
//! ```
//!
//! Header names are lowercased; a header sent several times is reported once with its values
//! joined by `", "`.
//!
//! * `GET /healthz` answers the health status (default 200) with body `ok` (2xx) or `unhealthy`,
//!   and is not counted in [`EchoServer::requests`].
//! * A request with `Upgrade: websocket` is upgraded; text messages are echoed back as
//!   `"<name>: <text>"`, binary messages unchanged.
//! * A request with `content-type: application/grpc*` gets `content-type: application/grpc`, the
//!   request body (the length-prefixed message) echoed back unchanged and the trailers
//!   `grpc-status: 0` and `grpc-message:` (empty).
//! * [`EchoServer::stop`] closes the listening socket at once (a later connect is refused) and
//!   ends every open connection, including upgraded WebSockets.

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Header naming the echo server that answered.
pub const ECHO_NAME_HEADER: &str = "x-echo-name";

type EchoBody = BoxBody<Bytes, Infallible>;

/// A running echo upstream. Dropping it stops it (see [`EchoServer::stop`]).
pub struct EchoServer {
    state: Arc<State>,
    addr: SocketAddr,
    /// The listener lives here (not inside the accept task) so that `stop` can close it
    /// synchronously instead of waiting for the runtime to drop a cancelled task.
    listener: Arc<Mutex<Option<TcpListener>>>,
    stopped: watch::Sender<bool>,
}

struct State {
    name: String,
    requests: AtomicU64,
    status: AtomicU16,
    health_status: AtomicU16,
    fail_every: AtomicU64,
    /// Normal requests seen since the last `fail_every` call.
    since_fail_every: AtomicU64,
    /// Milliseconds to wait before answering a normal request.
    delay_ms: AtomicU64,
}

impl EchoServer {
    /// Bind `addr` (use 127.0.0.1:0 in tests) and serve until dropped/stopped, on the current
    /// tokio runtime.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.to_string(),
            requests: AtomicU64::new(0),
            status: AtomicU16::new(200),
            health_status: AtomicU16::new(200),
            fail_every: AtomicU64::new(0),
            since_fail_every: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let listener = Arc::new(Mutex::new(Some(listener)));
        let (stopped, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(state.clone(), listener.clone(), stop_rx));
        Ok(EchoServer { state, addr, listener, stopped })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name reported in `x-echo-name` and in the JSON body.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests served so far, excluding `GET /healthz`.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Status for normal requests (default 200).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Status for `GET /healthz` (default 200).
    pub fn set_health_status(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// If `n > 0`, every n-th normal request from now on answers 503 (`0` turns it off).
    pub fn fail_every(&self, n: u64) {
        self.state.since_fail_every.store(0, Ordering::SeqCst);
        self.state.fail_every.store(n, Ordering::SeqCst);
    }

    /// Wait this long before answering each normal request (a slow upstream).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stop accepting and close the listener (a later connect is refused), and end every open
    /// connection. Idempotent.
    pub fn stop(&self) {
        // Dropping the tokio listener deregisters and closes the socket right here.
        drop(lock(&self.listener).take());
        self.stopped.send_replace(true);
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for EchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoServer")
            .field("name", &self.state.name)
            .field("addr", &self.addr)
            .field("requests", &self.requests())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resolves once `stop` was called (or the server was dropped).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        let is_stopped = *rx.borrow_and_update();
        if is_stopped || rx.changed().await.is_err() {
            return;
        }
    }
}

async fn accept_loop(state: Arc<State>, listener: Arc<Mutex<Option<TcpListener>>>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => return,
            accepted = poll_fn(|cx| match lock(&listener).as_ref() {
                Some(l) => l.poll_accept(cx).map(Some),
                None => Poll::Ready(None),
            }) => accepted,
        };
        match accepted {
            None => return,
            Some(Ok((stream, _peer))) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(state.clone(), stream, stop.clone()));
            }
            // Transient accept errors (e.g. out of file descriptors): back off a little.
            Some(Err(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn serve_connection(state: Arc<State>, stream: tokio::net::TcpStream, mut stop: watch::Receiver<bool>) {
    let service_stop = stop.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        let stop = service_stop.clone();
        async move { Ok::<_, Infallible>(handle(state, stop, req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = stopped(&mut stop) => {}
    }
}

async fn handle(state: Arc<State>, stop: watch::Receiver<bool>, req: Request<Incoming>) -> Response<EchoBody> {
    if req.method() == Method::GET && req.uri().path() == "/healthz" {
        let status = state.health_status.load(Ordering::SeqCst);
        let body = if (200..300).contains(&status) { "ok" } else { "unhealthy" };
        return response(&state, status, "text/plain", full(body));
    }

    state.requests.fetch_add(1, Ordering::SeqCst);
    let status = effective_status(&state);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }

    if is_websocket(&req) {
        return websocket(state, stop, req, status);
    }

    let is_grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc {
        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static(""));
        let body = Full::new(body).with_trailers(std::future::ready(Some(Ok(trailers)))).boxed();
        return response(&state, status, "application/grpc", body);
    }

    let description = describe(&state.name, &req);
    // Read the request body so the connection stays reusable; its content is not reported.
    let _ = req.into_body().collect().await;
    response(&state, status, "application/json", full(description.to_string()))
}

/// The status for a normal request: the configured one, or 503 when `fail_every` says so.
fn effective_status(state: &State) -> u16 {
    let n = state.fail_every.load(Ordering::SeqCst);
    let seen = state.since_fail_every.fetch_add(1, Ordering::SeqCst) + 1;
    if n > 0 && seen.is_multiple_of(n) {
        503
    } else {
        state.status.load(Ordering::SeqCst)
    }
}

/// The JSON description of a request.
fn describe<B>(name: &str, req: &Request<B>) -> serde_json::Value {
    let path = req.uri().path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_else(|| "/".to_string());
    let host = req
        .headers()
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let joined = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(name.as_str().to_string(), joined.into());
    }
    serde_json::json!({
        "name": name,
        "method": req.method().as_str(),
        "path": path,
        "host": host,
        "version": format!("{:?}", req.version()),
        "headers": headers,
    })
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|proto| proto.trim().eq_ignore_ascii_case("websocket"))
}

fn websocket(
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    mut req: Request<Incoming>,
    status: u16,
) -> Response<EchoBody> {
    if status >= 400 {
        let description = describe(&state.name, &req);
        return response(&state, status, "application/json", full(description.to_string()));
    }
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return response(&state, 400, "text/plain", full("missing sec-websocket-key"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let name = state.name.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        loop {
            let msg = tokio::select! {
                msg = ws.next() => msg,
                _ = stopped(&mut stop) => return,
            };
            let reply = match msg {
                Some(Ok(Message::Text(text))) => Message::text(format!("{name}: {}", text.as_str())),
                Some(Ok(Message::Binary(data))) => Message::Binary(data),
                // Pings are answered and close frames acknowledged by tungstenite itself.
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    });
    let mut resp = response(&state, 101, "text/plain", full(""));
    resp.headers_mut().remove(CONTENT_TYPE);
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", accept);
    }
    resp
}

fn full(body: impl Into<Bytes>) -> EchoBody {
    Full::new(body.into()).boxed()
}

fn response(state: &State, status: u16, content_type: &'static str, body: EchoBody) -> Response<EchoBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(name) = HeaderValue::from_str(&state.name) {
        headers.insert(HeaderName::from_static(ECHO_NAME_HEADER), name);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;
    use tokio::net::TcpStream;

    const LOCAL: &str = "127.0.0.1:0";

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    }

    impl Answer {
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }
    }

    /// Send one request over a fresh connection, HTTP/1.1 or h2c (prior knowledge).
    async fn send(addr: SocketAddr, req: Request<Full<Bytes>>, h2: bool) -> Answer {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let resp = if h2 {
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        Answer { status, headers, body: collected.to_bytes(), trailers }
    }

    async fn get(addr: SocketAddr, path: &str) -> Answer {
        let req = Request::get(path).header(HOST, "example.com").body(Full::default()).unwrap();
        send(addr, req, false).await
    }

    async fn echo(name: &str) -> EchoServer {
        EchoServer::start(name, LOCAL.parse().unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn describes_an_http1_request() {
        let server = echo("alpha").await;
        let req = Request::post("/some/path?a=1&b=two")
            .header(HOST, "Example.com:8080")
            .header("X-Custom", "v1")
            .header("x-custom", "v2")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let answer = send(server.addr(), req, false).await;

        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers[ECHO_NAME_HEADER], "alpha");
        assert_eq!(answer.headers[CONTENT_TYPE], "application/json");
        let json = answer.json();
        assert_eq!(json["name"], "alpha");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/some/path?a=1&b=two");
        assert_eq!(json["host"], "Example.com:8080");
        assert_eq!(json["version"], "HTTP/1.1");
        assert_eq!(json["headers"]["x-custom"], "v1, v2");
        assert_eq!(json["headers"]["host"], "Example.com:8080");
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn serves_h2c_with_prior_knowledge_on_the_same_port() {
        let server = echo("beta").await;
        let req = Request::get("http://h2.example.com/h2?x=1").version(Version::HTTP_2).body(Full::default()).unwrap();
        let answer = send(server.addr(), req, true).await;

        assert_eq!(answer.status, 200);
        let json = answer.json();
        assert_eq!(json["version"], "HTTP/2.0");
        assert_eq!(json["host"], "h2.example.com");
        assert_eq!(json["path"], "/h2?x=1");
        assert_eq!(answer.headers[ECHO_NAME_HEADER], "beta");
    }

    #[tokio::test]
    async fn configured_status_applies_to_normal_requests() {
        let server = echo("s").await;
        server.set_status(418);
        let answer = get(server.addr(), "/").await;
        assert_eq!(answer.status, 418);
        assert_eq!(answer.json()["name"], "s");
        assert_eq!(get(server.addr(), "/healthz").await.status, 200);
    }

    #[tokio::test]
    async fn healthz_reports_health_status_and_is_not_counted() {
        let server = echo("h").await;
        let healthy = get(server.addr(), "/healthz").await;
        assert_eq!((healthy.status, &healthy.body[..]), (200, &b"ok"[..]));

        server.set_health_status(503);
        let unhealthy = get(server.addr(), "/healthz").await;
        assert_eq!((unhealthy.status, &unhealthy.body[..]), (503, &b"unhealthy"[..]));
        assert_eq!(server.requests(), 0);

        assert_eq!(get(server.addr(), "/other").await.status, 200);
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn fail_every_answers_503_on_every_nth_request() {
        let server = echo("f").await;
        server.fail_every(3);
        let mut statuses = Vec::new();
        for _ in 0..7 {
            statuses.push(get(server.addr(), "/").await.status);
        }
        assert_eq!(statuses, [200, 200, 503, 200, 200, 503, 200]);

        server.fail_every(0);
        for _ in 0..4 {
            assert_eq!(get(server.addr(), "/").await.status, 200);
        }
    }

    #[tokio::test]
    async fn grpc_request_is_echoed_with_trailers() {
        let server = echo("g").await;
        let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
        let req = Request::post("http://grpc.local/pkg.Svc/Method")
            .version(Version::HTTP_2)
            .header(CONTENT_TYPE, "application/grpc+proto")
            .header("te", "trailers")
            .body(Full::new(message.clone()))
            .unwrap();
        let answer = send(server.addr(), req, true).await;

        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(answer.headers[ECHO_NAME_HEADER], "g");
        assert_eq!(answer.body, message);
        let trailers = answer.trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "");
    }

    #[tokio::test]
    async fn websocket_messages_are_echoed_with_the_name() {
        let server = echo("ws").await;
        let url = format!("ws://{}/chat", server.addr());
        let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.expect("ws handshake");
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()[ECHO_NAME_HEADER], "ws");

        ws.send(Message::text("hello")).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::text("ws: hello"));

        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::binary(vec![1u8, 2, 3]));

        ws.close(None).await.unwrap();
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn stop_refuses_new_connections_and_closes_open_ones() {
        let server = echo("gone").await;
        let addr = server.addr();
        // An idle keep-alive connection opened before stop.
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        let first = sender
            .send_request(Request::get("/").header(HOST, "x").body(Full::<Bytes>::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(first.status(), 200);
        drop(first);

        server.stop();

        let err = TcpStream::connect(addr).await.expect_err("connect after stop must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        // The open connection is closed by the server: the client's connection task ends.
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("open connection closed after stop")
            .unwrap()
            .ok();
    }

    #[tokio::test]
    async fn different_loopback_addresses_can_share_a_port() {
        // The port is free on 127.0.0.2 but could, rarely, be taken on 127.0.0.3: retry then.
        for _ in 0..20 {
            let first = EchoServer::start("one", "127.0.0.2:0".parse().unwrap()).await.unwrap();
            let port = first.addr().port();
            let Ok(second) = EchoServer::start("two", SocketAddr::from(([127, 0, 0, 3], port))).await else {
                continue;
            };
            assert_eq!(second.addr().port(), first.addr().port());
            assert_eq!(get(first.addr(), "/").await.json()["name"], "one");
            assert_eq!(get(second.addr(), "/").await.json()["name"], "two");
            return;
        }
        panic!("no port was free on both 127.0.0.2 and 127.0.0.3");
    }
}
