//! A small HTTP client over real TCP: HTTP/1.1, or h2c with prior knowledge. Every request uses a
//! fresh connection, so no state carries over between requests of a test; [`H1`] keeps one
//! HTTP/1.1 connection (TCP or TLS) open across requests when a test needs that.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;

/// How long one request (connect, send, read the whole body) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET http://<host><path>` over HTTP/1.1 to `addr`. Panics if no response arrives.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    request(addr).host(host).path(path).send().await
}

/// `GET` over h2c (HTTP/2 with prior knowledge) to `addr`; `host` becomes `:authority`.
pub async fn get_h2c(addr: SocketAddr, host: &str, path: &str) -> Resp {
    request(addr).host(host).path(path).h2c().send().await
}

/// Start building a request to `addr` (default: `GET /`, HTTP/1.1, Host = `addr`).
pub fn request(addr: SocketAddr) -> RequestBuilder {
    RequestBuilder {
        addr,
        method: Method::GET,
        host: None,
        path: "/".to_string(),
        headers: Vec::new(),
        body: Bytes::new(),
        h2c: false,
    }
}

/// A request under construction; see [`request`].
#[derive(Clone, Debug)]
pub struct RequestBuilder {
    addr: SocketAddr,
    method: Method,
    host: Option<String>,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    h2c: bool,
}

impl RequestBuilder {
    pub fn method(mut self, method: &str) -> Self {
        self.method = Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
        self
    }

    /// The Host header (HTTP/1.1) or `:authority` (h2c), e.g. `"foo.com"` or `"foo.com:8080"`.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }

    /// Path plus optional query, e.g. `"/api/users?id=1"`.
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_string();
        self
    }

    /// Add a request header (call again with the same name to send it twice).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Use HTTP/2 over cleartext with prior knowledge instead of HTTP/1.1.
    pub fn h2c(mut self) -> Self {
        self.h2c = true;
        self
    }

    /// Send the request; panics (naming the request) on connection errors or timeout.
    pub async fn send(self) -> Resp {
        let what = format!("{self}");
        match self.try_send().await {
            Ok(resp) => resp,
            Err(e) => panic!("{what} failed: {e:#}"),
        }
    }

    /// Send the request; errors if the connection fails, breaks or times out.
    pub async fn try_send(self) -> anyhow::Result<Resp> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send_inner())
            .await
            .map_err(|_| anyhow::anyhow!("no complete response within {REQUEST_TIMEOUT:?}"))?
    }

    async fn send_inner(self) -> anyhow::Result<Resp> {
        let host = self.host.clone().unwrap_or_else(|| self.addr.to_string());
        let mut builder = Request::builder().method(self.method.clone());
        if self.h2c {
            builder = builder.uri(format!("http://{host}{}", self.path)).version(Version::HTTP_2);
        } else {
            builder = builder.uri(self.path.as_str()).header(http::header::HOST, host.as_str());
        }
        let mut req = builder.body(Full::new(self.body.clone()))?;
        for (name, value) in &self.headers {
            req.headers_mut().append(HeaderName::from_bytes(name.as_bytes())?, HeaderValue::from_str(value)?);
        }

        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let resp = if self.h2c {
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        };
        Resp::read(resp).await
    }
}

impl fmt::Display for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host.as_deref().unwrap_or("<addr>");
        let proto = if self.h2c { "h2c" } else { "HTTP/1.1" };
        write!(f, "{} http://{host}{} ({proto} to {})", self.method, self.path, self.addr)
    }
}

/// An HTTP/1.1 keep-alive connection over any stream (TCP, TLS). Requests go one after another on
/// it; a request fails if the connection was closed: it is never silently reopened.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The task driving the connection; finished once the connection is closed.
    pub conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl H1 {
    /// A TCP connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<H1> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        H1::over(stream).await
    }

    /// HTTP/1.1 over an established `stream`.
    pub async fn over<S>(stream: S) -> anyhow::Result<H1>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(H1 { sender, conn: tokio::spawn(conn) })
    }

    /// `GET <path>` with `Host: <host>` on this connection (bounded by [`REQUEST_TIMEOUT`]).
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<Resp> {
        self.send(Request::get(path).header(http::header::HOST, host).body(Full::<Bytes>::default())?).await
    }

    /// Sends `req` on this connection and reads the whole response (bounded by [`REQUEST_TIMEOUT`]).
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<Resp> {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            self.sender.ready().await?;
            Resp::read(self.sender.send_request(req).await?).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no complete response to {what} within {REQUEST_TIMEOUT:?}"))?
    }
}

/// A complete response.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    /// Read the whole of `resp` (body and trailers).
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<Resp> {
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await?;
        let trailers = collected.trailers().cloned();
        Ok(Resp { status, version, headers, body: collected.to_bytes(), trailers })
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics (showing the response) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self}"))
    }

    /// A response header as a string (the first value if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Which echo server answered (`x-echo-name`), if any.
    pub fn echo_name(&self) -> Option<&str> {
        self.header(weir::demo::echo::ECHO_NAME_HEADER)
    }

    /// The `Location` header of a redirect.
    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    /// The path and query the echo upstream received.
    pub fn upstream_path(&self) -> String {
        self.echo_field("path")
    }

    /// The Host (or `:authority`) the echo upstream received.
    pub fn upstream_host(&self) -> String {
        self.echo_field("host")
    }

    /// The method the echo upstream received.
    pub fn upstream_method(&self) -> String {
        self.echo_field("method")
    }

    /// A request header as the echo upstream received it (repeated headers joined by ", ").
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name.to_ascii_lowercase()].as_str().map(str::to_string)
    }

    fn echo_field(&self, field: &str) -> String {
        match self.json()[field].as_str() {
            Some(value) => value.to_string(),
            None => panic!("echo response has no string field {field:?}: {self}"),
        }
    }

    /// Assert the status code; returns `self` for chaining.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status: {self}");
        self
    }

    /// Assert that the echo server `name` answered with 200.
    #[track_caller]
    pub fn assert_served_by(&self, name: &str) -> &Self {
        assert!(
            self.status == 200 && self.echo_name() == Some(name),
            "expected a 200 from echo server {name:?}, got: {self}"
        );
        self
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.status, self.version)?;
        for (name, value) in &self.headers {
            write!(f, "\n  {name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
        }
        let text = self.text();
        let shown: String = text.chars().take(800).collect();
        let ellipsis = if shown.len() < text.len() { "…" } else { "" };
        write!(f, "\n  body: {shown}{ellipsis}")
    }
}
