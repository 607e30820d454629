//! Protocols through the edge: HTTP/2 negotiated by ALPN on TLS, h2c with prior knowledge, many
//! concurrent streams on one connection, WebSocket upgrades (plain and over TLS, Ingress and
//! HTTPRoute), HTTP/2 to `appProtocol: kubernetes.io/h2c` Services, and gRPC unary calls with
//! their trailers, over h2c and over TLS, routed by an Ingress or by a GRPCRoute.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingora::tls::tokio_ssl::SslStream;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use weir::demo::echo::EchoServer;

// ---------------------------------------------------------------------------------------------
// Manifests

/// A test CA, and the manifests serving `host` over TLS with a leaf it signed: Secret
/// `default/<name>-tls` and Ingress `default/<name>` (`host` → Service `service` port 80).
fn tls_host(name: &str, host: &str, service: &str) -> (Ca, String) {
    let ca = Ca::new();
    let secret = format!("{name}-tls");
    let leaf = ca.leaf(host, &[host]);
    (ca, docs(&[leaf_secret(&secret, &leaf), ingress_with_tls(name, host, service, &secret)]))
}

/// An echo server with a Service `default/<name>` whose port 80 has
/// `appProtocol: kubernetes.io/h2c`, and its EndpointSlice.
async fn h2c_backend(name: &str) -> (EchoServer, String) {
    let echo = EchoServer::start(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("start echo server");
    let port = echo.addr().port();
    let svc = service_with_target_port("default", name, SERVICE_PORT, SERVICE_PORT_NAME, port)
        + "    appProtocol: kubernetes.io/h2c\n";
    let yaml = docs(&[svc, endpoints("default", name, SERVICE_PORT_NAME, port, &[echo.addr()])]);
    (echo, yaml)
}

// ---------------------------------------------------------------------------------------------
// Clients

/// TLS handshake with `addr`, SNI `host`, offering `alpn`, trusting only `ca`.
async fn tls_connect(addr: SocketAddr, host: &str, ca: &Ca, alpn: &[&'static str]) -> SslStream<TcpStream> {
    TlsClient::new(addr, host, ca).alpn(alpn).connect().await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// An HTTP/2 connection (over TLS or cleartext), for several requests.
#[derive(Clone)]
struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    scheme: &'static str,
}

impl H2 {
    async fn over<S>(io: S, scheme: &'static str) -> H2
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake with weir");
        tokio::spawn(conn);
        H2 { sender, scheme }
    }

    async fn h2c(addr: SocketAddr) -> H2 {
        let tcp = TcpStream::connect(addr).await.expect("connect to weir");
        tcp.set_nodelay(true).unwrap();
        H2::over(tcp, "http").await
    }

    fn request(&self, method: &str, host: &str, path: &str) -> http::request::Builder {
        Request::builder().method(method).uri(format!("{}://{host}{path}", self.scheme)).version(Version::HTTP_2)
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        let mut sender = self.sender.clone();
        let exchange = async move {
            sender.ready().await.expect("HTTP/2 connection usable");
            let resp = sender.send_request(req).await.expect("response");
            let status = resp.status().as_u16();
            let version = resp.version();
            let headers = resp.headers().clone();
            // read frame by frame: data, then (for gRPC) trailers
            let mut body = resp.into_body();
            let mut data = BytesMut::new();
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.expect("response body frame");
                match frame.into_data() {
                    Ok(chunk) => data.extend_from_slice(&chunk),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                }
            }
            Answer { resp: Resp { status, version, headers, body: data.freeze(), trailers: None }, trailers }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.expect("complete HTTP/2 response in time")
    }

    async fn get(&self, host: &str, path: &str) -> Resp {
        self.send(self.request("GET", host, path).body(Full::default()).unwrap()).await.resp
    }
}

/// A response and the trailers read from its frames.
struct Answer {
    resp: Resp,
    trailers: Option<HeaderMap>,
}

/// A gRPC message frame: uncompressed flag, 4-byte big-endian length, message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message);
    b.freeze()
}

/// A gRPC unary call `/weir.test.Echo/Say` carrying `message`.
fn grpc_request(h2: &H2, host: &str, message: &[u8]) -> Request<Full<Bytes>> {
    h2.request("POST", host, "/weir.test.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .body(Full::new(grpc_frame(message)))
        .unwrap()
}

/// HTTP/2 frame flag END_STREAM.
const END_STREAM: u8 = 0x1;

/// The flags of the first HEADERS frame weir answers a gRPC call (`POST path`, no message) with,
/// over h2c: frames as they are on the wire, which an HTTP/2 library would fold together.
async fn first_response_headers_flags(addr: SocketAddr, host: &str, path: &str) -> u8 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    // HPACK literal fields without indexing, no Huffman (every name and value is short)
    let mut block = vec![];
    let fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", host),
        ("content-type", "application/grpc"),
    ];
    for (name, value) in fields {
        block.push(0);
        for s in [name, value] {
            block.push(s.len() as u8);
            block.extend(s.as_bytes());
        }
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4 | END_STREAM, 1, &block)); // HEADERS, END_HEADERS
    let mut tcp = TcpStream::connect(addr).await.expect("connect to weir");
    tcp.write_all(&out).await.unwrap();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            tcp.read_exact(&mut head).await.expect("a frame from weir");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0; len];
            tcp.read_exact(&mut payload).await.unwrap();
            if head[3] == 0x1 && stream == 1 {
                return head[4];
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read).await.expect("weir's HEADERS frame in time")
}

#[track_caller]
fn assert_grpc_ok(answer: &Answer, message: &[u8], echo: &str) {
    let resp = &answer.resp;
    assert_eq!(resp.status, 200, "{resp}");
    assert_eq!(resp.version, Version::HTTP_2);
    assert_eq!(resp.header("content-type"), Some("application/grpc"), "{resp}");
    assert_eq!(resp.echo_name(), Some(echo), "{resp}");
    assert_eq!(resp.body, grpc_frame(message), "the gRPC message was not echoed intact");
    let trailers = answer.trailers.as_ref().unwrap_or_else(|| panic!("no trailers after the gRPC response: {resp}"));
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]), "trailers: {trailers:?}");
}

// ---------------------------------------------------------------------------------------------
// HTTP/2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_is_negotiated_by_alpn() {
    let (ca, tls_yaml) = tls_host("h2", "h2.example.com", "app");
    let (b, weir) = TestWeir::with_backends(&["app"], &[("ingress.yaml", &tls_yaml)]).await;

    let stream = tls_connect(weir.https, "h2.example.com", &ca, &["h2", "http/1.1"]).await;
    assert_eq!(stream.ssl().selected_alpn_protocol(), Some(&b"h2"[..]), "weir did not pick h2 by ALPN");
    let h2 = H2::over(stream, "https").await;
    let resp = h2.get("h2.example.com", "/over/h2?x=1").await;
    assert_eq!(resp.version, Version::HTTP_2);
    resp.assert_served_by("app");
    assert_eq!(resp.upstream_path(), "/over/h2?x=1");
    assert_eq!(resp.upstream_host(), "h2.example.com");
    assert_eq!(resp.upstream_header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(b.echo("app").requests(), 1, "the echo upstream did not see the request");

    // a client offering only HTTP/1.1 gets HTTP/1.1
    let stream = tls_connect(weir.https, "h2.example.com", &ca, &["http/1.1"]).await;
    assert_eq!(stream.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));
    let resp = H1::over(stream).await.unwrap().get("h2.example.com", "/over/h1").await.unwrap();
    assert_eq!((resp.status, resp.version), (200, Version::HTTP_11));
    assert_eq!(b.echo("app").requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_learns_the_client_address_as_ingress_nginx_tells_it() {
    let (_b, weir) =
        TestWeir::with_backends(&["app"], &[("ingress.yaml", &ingress("xff", "xff.example.com", "app"))]).await;

    let resp = weir.get("xff.example.com", "/").await;
    resp.assert_served_by("app");
    assert_eq!(resp.upstream_header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(resp.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));

    // a client behind another proxy: weir appends the address it sees
    let resp = weir.request().host("xff.example.com").header("x-forwarded-for", "203.0.113.7").send().await;
    assert_eq!(resp.upstream_header("x-forwarded-for").as_deref(), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(resp.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_is_served_on_the_plain_listener() {
    let (b, weir) =
        TestWeir::with_backends(&["app"], &[("ingress.yaml", &ingress("h2c", "h2c.example.com", "app"))]).await;

    let resp = get_h2c(weir.http, "h2c.example.com", "/prior?k=v").await;
    assert_eq!(resp.version, Version::HTTP_2);
    resp.assert_served_by("app");
    assert_eq!(resp.upstream_path(), "/prior?k=v");
    assert_eq!(resp.upstream_host(), "h2c.example.com");
    assert_eq!(resp.upstream_header("x-forwarded-proto").as_deref(), Some("http"));

    // HTTP/1.1 still works on the same listener
    let resp = weir.get("h2c.example.com", "/h1").await;
    assert_eq!(resp.version, Version::HTTP_11);
    resp.assert_served_by("app");
    assert_eq!(b.echo("app").requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_h2_streams_share_one_connection() {
    const STREAMS: usize = 64;
    let (ca, tls_yaml) = tls_host("many", "many.example.com", "app");
    let (b, weir) = TestWeir::with_backends(
        &["app"],
        &[("ingress.yaml", &tls_yaml), ("plain.yaml", &ingress("many-plain", "plain.example.com", "app"))],
    )
    .await;

    for (h2, host) in [
        (H2::over(tls_connect(weir.https, "many.example.com", &ca, &["h2"]).await, "https").await, "many.example.com"),
        (H2::h2c(weir.http).await, "plain.example.com"),
    ] {
        let before = b.echo("app").requests();
        let all = futures_util::future::join_all((0..STREAMS).map(|i| {
            let h2 = h2.clone();
            async move { (i, h2.get(host, &format!("/stream/{i}")).await) }
        }))
        .await;
        for (i, resp) in &all {
            assert_eq!(resp.version, Version::HTTP_2);
            resp.assert_served_by("app");
            assert_eq!(resp.upstream_path(), format!("/stream/{i}"), "stream {i} got another stream's answer");
        }
        assert_eq!(b.echo("app").requests() - before, STREAMS as u64);
        // the connection is still usable afterwards
        h2.get(host, "/after").await.assert_served_by("app");
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// WebSocket sessions opened in a row by each WebSocket test: a user's page opens many, and each
/// one has to work (one failing in a few is a broken product).
const WS_SESSIONS: usize = 20;

/// Sends several text messages (and one binary) on `ws` and checks each echo.
async fn chat<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, name: &str, session: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for text in ["hello", "second message", "third ✓"] {
        ws.send(Message::text(text)).await.expect("send text");
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("session {session}: no reply to {text:?} in time"))
            .unwrap_or_else(|| panic!("session {session}: the WebSocket closed before the reply to {text:?}"))
            .unwrap_or_else(|e| panic!("session {session}: no reply to {text:?}: {e}"));
        assert_eq!(reply, Message::text(format!("{name}: {text}")), "session {session}");
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.expect("send binary");
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await.expect("in time").unwrap().unwrap();
    assert_eq!(reply, Message::binary(vec![0u8, 1, 2, 255]), "session {session}");
    ws.close(None).await.expect("close");
}

/// Opens a WebSocket to `url` over `stream` and checks the 101 came from the echo `name`.
async fn open_ws<S>(url: &str, stream: S, name: &str) -> tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (ws, resp) = tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("WebSocket handshake in time")
        .unwrap_or_else(|e| panic!("WebSocket handshake for {url} through weir: {e}"));
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers().get(weir::demo::echo::ECHO_NAME_HEADER).map(|v| v.as_bytes()), Some(name.as_bytes()));
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_through_an_ingress() {
    let (b, weir) =
        TestWeir::with_backends(&["chat"], &[("ingress.yaml", &ingress("ws", "ws.example.com", "chat"))]).await;

    for session in 0..WS_SESSIONS {
        let tcp = TcpStream::connect(weir.http).await.unwrap();
        let mut ws = open_ws("ws://ws.example.com/chat", tcp, "chat").await;
        chat(&mut ws, "chat", session).await;
    }
    assert_eq!(b.echo("chat").requests(), WS_SESSIONS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_through_an_httproute() {
    let port = free_port();
    let route = "
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata:
          namespace: default
          name: chat
        spec:
          parentRefs:
          - name: edge
          hostnames: [chat.example.com]
          rules:
          - matches:
            - path: {type: PathPrefix, value: /socket}
            backendRefs:
            - {name: chat, port: 80}
    ";
    let (_b, _weir) = TestWeir::with_backends(
        &["chat"],
        &[("gateway.yaml", &class_and_gateway("default", "edge", port)), ("route.yaml", route)],
    )
    .await;
    wait_listening(local(port)).await;

    for session in 0..WS_SESSIONS {
        let tcp = TcpStream::connect(local(port)).await.unwrap();
        let mut ws = open_ws("ws://chat.example.com/socket/room", tcp, "chat").await;
        chat(&mut ws, "chat", session).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_over_tls() {
    let (ca, tls_yaml) = tls_host("wss", "wss.example.com", "chat");
    let (_b, weir) = TestWeir::with_backends(&["chat"], &[("ingress.yaml", &tls_yaml)]).await;

    for session in 0..WS_SESSIONS {
        let stream = tls_connect(weir.https, "wss.example.com", &ca, &["http/1.1"]).await;
        let mut ws = open_ws("wss://wss.example.com/live", stream, "chat").await;
        chat(&mut ws, "chat", session).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 upstreams and gRPC

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_app_protocol_service_receives_http2_from_weir() {
    let (_grpc, grpc_yaml) = h2c_backend("grpc").await;
    let b = backends("default", &["plain"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &docs(&[grpc_yaml.as_str(), b.yaml.as_str()])),
        ("grpc.yaml", &ingress("grpc", "grpc.example.com", "grpc")),
        ("plain.yaml", &ingress("plain", "plain.example.com", "plain")),
    ])
    .await;

    // an HTTP/1.1 client; weir speaks HTTP/2 to the h2c Service
    let resp = weir.get("grpc.example.com", "/v?1").await;
    resp.assert_served_by("grpc");
    assert_eq!(resp.json()["version"], "HTTP/2.0", "the appProtocol h2c Service got: {resp}");
    assert_eq!(resp.upstream_path(), "/v?1");

    // a Service without appProtocol gets HTTP/1.1
    let resp = weir.get("plain.example.com", "/").await;
    resp.assert_served_by("plain");
    assert_eq!(resp.json()["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_over_h2c_echoes_the_message_and_trailers() {
    let (grpc, grpc_yaml) = h2c_backend("grpc").await;
    let weir =
        TestWeir::start(&[("backends.yaml", &grpc_yaml), ("grpc.yaml", &ingress("grpc", "grpc.example.com", "grpc"))])
            .await;

    let h2 = H2::h2c(weir.http).await;
    for message in [&b"hello gRPC"[..], &[7u8; 3000][..], &b""[..]] {
        let answer = h2.send(grpc_request(&h2, "grpc.example.com", message)).await;
        assert_grpc_ok(&answer, message, "grpc");
    }
    assert_eq!(grpc.requests(), 3);
}

/// weir's own answers reach a gRPC caller as gRPC statuses (a trailers-only response, HTTP 200),
/// not as a text/plain page its library cannot read; metrics count them by what failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_weirs_own_failures_as_grpc_statuses() {
    let (_grpc, grpc_yaml) = h2c_backend("grpc").await;
    let weir =
        TestWeir::start(&[("backends.yaml", &grpc_yaml), ("grpc.yaml", &ingress("grpc", "grpc.example.com", "grpc"))])
            .await;
    let h2 = H2::h2c(weir.http).await;

    let cases = [("nope.example.com", "/weir.test.Echo/Say", "12", "no route matches this host and path")];
    for (host, path, code, text) in cases {
        let mut req = grpc_request(&h2, host, b"hi");
        *req.uri_mut() = format!("http://{host}{path}").parse().unwrap();
        let answer = h2.send(req).await;
        let resp = &answer.resp;
        assert_eq!(resp.status, 200, "gRPC answers are HTTP 200: {resp}");
        assert_eq!(resp.header("content-type"), Some("application/grpc"), "{resp}");
        assert_eq!(resp.header("grpc-status"), Some(code), "{resp}");
        assert_eq!(resp.header("grpc-message"), Some(text), "{resp}");
        assert!(resp.body.is_empty() && answer.trailers.is_none(), "trailers-only: {resp}");
        // on the wire: one HEADERS frame that ends the stream (grpc-go reads headers and then
        // an empty DATA frame as "closed without sending trailers", code Internal)
        let flags = first_response_headers_flags(weir.http, host, path).await;
        assert_eq!(flags & END_STREAM, END_STREAM, "the HEADERS frame's flags: {flags:#04x}");
    }
    // the same request without gRPC's content-type gets the plain answer
    let resp = h2.get("nope.example.com", "/weir.test.Echo/Say").await;
    resp.assert_status(404);
    assert_eq!(resp.header("content-type"), Some("text/plain; charset=utf-8"), "{resp}");

    let unmatched = [("listener", "ingress-http"), ("route", ""), ("backend", ""), ("status_class", "4xx")];
    wait_until("both refusals are counted", WAIT, || async {
        metric(&weir.metrics().await, "weir_requests_total", &unmatched) >= 2.0
    })
    .await;
    let ok = [("listener", "ingress-http"), ("route", ""), ("backend", ""), ("status_class", "2xx")];
    assert_eq!(metric(&weir.metrics().await, "weir_requests_total", &ok), 0.0, "the gRPC refusal is no 200");
}

/// A GRPCRoute routes calls by service and method and by metadata (headers); a call it has no
/// rule for is Unimplemented; its backends get HTTP/2 even from a Service port that does not say
/// h2c, and its status says Accepted with the Gateway counting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcroute_routes_calls_by_method_and_metadata_to_backends_it_speaks_http2_to() {
    let port = free_port();
    let route = "
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {namespace: default, name: echo}
        spec:
          parentRefs: [{name: edge}]
          hostnames: [grpc.example.com]
          rules:
          - matches: [{method: {service: weir.test.Echo, method: Say}}]
            backendRefs: [{name: say, port: 80}]
          - matches: [{headers: [{name: version, value: two}]}]
            filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-rule, value: two}]}}]
            backendRefs: [{name: two, port: 80}]
    ";
    // Services without appProtocol: a GRPCRoute's backends speak HTTP/2 anyway
    let (b, weir) = TestWeir::with_backends(
        &["say", "two"],
        &[("gateway.yaml", &class_and_gateway("default", "edge", port)), ("route.yaml", route)],
    )
    .await;
    let gateway = weir.gateway_listener(port).await;
    let h2 = H2::h2c(gateway).await;
    let call = |path: &str, version: Option<&str>| {
        let mut req = grpc_request(&h2, "grpc.example.com", b"hi");
        *req.uri_mut() = format!("http://grpc.example.com{path}").parse().unwrap();
        if let Some(v) = version {
            req.headers_mut().insert("version", v.parse().unwrap());
        }
        req
    };

    assert_grpc_ok(&h2.send(call("/weir.test.Echo/Say", None)).await, b"hi", "say");
    // the method rule comes first: a Say call with the header still goes there
    assert_grpc_ok(&h2.send(call("/weir.test.Echo/Say", Some("two"))).await, b"hi", "say");
    let answer = h2.send(call("/weir.test.Echo/Other", Some("two"))).await;
    assert_grpc_ok(&answer, b"hi", "two");
    assert_eq!(answer.resp.header("x-rule"), Some("two"), "the rule's filter: {}", answer.resp);
    // no rule for this call: Unimplemented, as a gRPC server says for a method it lacks
    let answer = h2.send(call("/weir.test.Echo/Other", None)).await;
    assert_eq!(answer.resp.header("grpc-status"), Some("12"), "{}", answer.resp);
    assert_eq!(b.echo("two").requests(), 1);

    // how the backend was spoken to: HTTP/2, though its Service port has no appProtocol
    let resp = h2.get("grpc.example.com", "/weir.test.Echo/Say").await;
    resp.assert_served_by("say");
    assert_eq!(resp.json()["version"], "HTTP/2.0", "{resp}");

    let route = weir.status("GRPCRoute", "default", "echo").await;
    let accepted = &route["parents"][0]["conditions"][0];
    assert_eq!((&accepted["type"], &accepted["status"]), (&"Accepted".into(), &true.into()), "{route:#}");
    let gateway = weir.status("Gateway", "default", "edge").await;
    assert_eq!(gateway["attached_routes"]["http"], 1, "{gateway:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_over_tls_h2_echoes_the_message_and_trailers() {
    let (ca, tls_yaml) = tls_host("grpcs", "grpcs.example.com", "grpc");
    let (grpc, grpc_yaml) = h2c_backend("grpc").await;
    let weir = TestWeir::start(&[("backends.yaml", &grpc_yaml), ("grpc.yaml", &tls_yaml)]).await;

    let stream = tls_connect(weir.https, "grpcs.example.com", &ca, &["h2"]).await;
    assert_eq!(stream.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let h2 = H2::over(stream, "https").await;
    let message = b"\x0a\x05hello over TLS";
    let answer = h2.send(grpc_request(&h2, "grpcs.example.com", message)).await;
    assert_grpc_ok(&answer, message, "grpc");
    assert_eq!(grpc.requests(), 1);
}
