//! Listener management: weir's own accept loops feeding Pingora's `HttpProxy`.
//!
//! Pingora's `Server` binds its listeners once at start; a Gateway listener on a new port must
//! come up at runtime. So weir owns the sockets: each port has an accept loop (Pingora's L4
//! listener, so streams carry Pingora's socket digests), an optional BoringSSL handshake, and
//! then `HttpProxy::process_new`, the same entry point Pingora's own services use. New ports
//! are bound and removed ports closed on each snapshot, in the running process: no re-exec, no
//! dropped connection (connections already accepted on a removed port run to completion).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use boring::ssl::SslAcceptor;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::l4::listener::Listener as L4Listener;
use pingora::protocols::Stream;
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::buffered::Buffered;
use crate::snapshot::Snapshot;
use crate::telemetry::Metrics;
use crate::tls::{TlsPolicy, HANDSHAKE_TIMEOUT};
use crate::translate::Protocol;

/// Longest a plaintext client may take to show whether it speaks HTTP/2 (h2c) or HTTP/1.
pub const PROTOCOL_SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The applications a listener hands connections to. Plaintext connections are sniffed here:
/// Pingora's own h2c detection waits for 24 bytes, which hangs a shorter HTTP/1 request.
pub struct Apps<A> {
    /// HTTP/1 and TLS connections (HTTP/2 over TLS is chosen by ALPN).
    pub http1: Arc<A>,
    /// Plaintext connections that opened with the HTTP/2 preface.
    pub h2c: Arc<A>,
}

/// What a listener holds its clients to, whatever they send (`weir edge` and `weir mesh` flags):
/// memory and time a connection may take are bounded by these.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientLimits {
    /// The most a request head may take, HTTP/1 and HTTP/2 alike (answered 431 beyond).
    pub max_request_head: usize,
    /// How long an HTTP/1 request head may take from its first byte (then the connection closes).
    pub request_head_timeout: Duration,
    /// Idle time between requests on a kept-alive HTTP/1 connection.
    pub keepalive_timeout: Duration,
    /// How long one write of a response may wait for the client to read.
    pub write_timeout: Duration,
    /// Open connections per listener; beyond, new ones are closed at once and counted in
    /// `weir_listener_connections_refused_total`.
    pub max_connections: usize,
}

/// `--max-request-head`'s default: 64 KiB (nginx takes 32 KiB in all, Envoy 60 KiB).
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 64 * 1024;
/// `--request-head-timeout`'s default.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: &str = "10s";
/// `--keepalive-timeout`'s default (Pingora's, and nginx's 75 s is close).
pub const DEFAULT_KEEPALIVE_TIMEOUT: &str = "60s";
/// `--write-timeout`'s default (nginx's `send_timeout`).
pub const DEFAULT_WRITE_TIMEOUT: &str = "60s";
/// `--max-connections`'s default, per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ClientLimits {
    fn default() -> Self {
        let d = |s| crate::api::duration::parse(s).expect("a default duration");
        ClientLimits {
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            request_head_timeout: d(DEFAULT_REQUEST_HEAD_TIMEOUT),
            keepalive_timeout: d(DEFAULT_KEEPALIVE_TIMEOUT),
            write_timeout: d(DEFAULT_WRITE_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ClientLimits {
    /// Sets these limits (all but the connection count, which is the listener's) on a Pingora
    /// app; `h2c`: it takes plaintext HTTP/2.
    pub fn apply<P: ProxyHttp>(&self, proxy: &mut HttpProxy<P>, h2c: bool) {
        let mut server_options = HttpServerOptions::default();
        server_options.h2c = h2c;
        server_options.h1 = pingora::apps::H1Limits {
            max_head_size: Some(self.max_request_head),
            head_timeout: Some(self.request_head_timeout),
            keepalive_secs: Some(self.keepalive_timeout.as_secs().max(1)),
            write_timeout: Some(self.write_timeout),
            pipelining: true,
        };
        // Pingora's bounded defaults (concurrent streams), with the head limit
        let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
        h2.max_header_list_size(u32::try_from(self.max_request_head).unwrap_or(u32::MAX));
        proxy.h2_options = Some(h2);
        proxy.server_options = Some(server_options);
    }
}

impl<P: ProxyHttp + Send + Sync + 'static> Apps<HttpProxy<P>> {
    /// The two Pingora apps of one `ProxyHttp`: `make` builds the proxy for each.
    pub fn proxies(conf: &Arc<ServerConf>, limits: &ClientLimits, make: impl Fn() -> P) -> Self
    where
        P::CTX: Send + Sync,
    {
        let app = |h2c: bool| {
            let mut proxy = HttpProxy::new(make(), conf.clone());
            limits.apply(&mut proxy, h2c);
            proxy.handle_init_modules();
            Arc::new(proxy)
        };
        Apps { http1: app(false), h2c: app(true) }
    }
}

impl<A> Clone for Apps<A> {
    fn clone(&self) -> Self {
        Apps { http1: self.http1.clone(), h2c: self.h2c.clone() }
    }
}

struct Bound {
    task: JoinHandle<()>,
    /// Ports bound at start (the Ingress listeners) stay even with no configuration.
    permanent: bool,
}

/// The sockets weir listens on, kept in step with the snapshot.
pub struct Listeners<A> {
    apps: Apps<A>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownWatch,
    /// By the address bound (a listener's key in the snapshot).
    bound: Mutex<HashMap<SocketAddr, Bound>>,
    /// Addresses that could not be bound, with the reason (shown in `/config_dump`).
    pub bind_errors: Mutex<BTreeMap<SocketAddr, String>>,
    /// The TLS policy of the listeners that terminate TLS.
    tls: TlsPolicy,
    /// Open connections per listener (`--max-connections`).
    max_connections: usize,
}

impl<A: ServerApp + Send + Sync + 'static> Listeners<A> {
    pub fn new(
        apps: Apps<A>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        shutdown: ShutdownWatch,
    ) -> Self {
        Listeners {
            apps,
            snapshot,
            metrics,
            shutdown,
            bound: Mutex::new(HashMap::new()),
            bind_errors: Mutex::new(BTreeMap::new()),
            tls: TlsPolicy::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// With at most `max` open connections per listener instead of the default.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// With TLS `policy` (`--tls-min-version`, `--tls-ciphers`) instead of the default.
    pub fn with_tls(mut self, policy: TlsPolicy) -> Self {
        self.tls = policy;
        self
    }

    /// Serves an already bound socket for the lifetime of the process.
    pub fn adopt(&self, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        self.start(listener, addr, true);
        Ok(addr)
    }

    fn start(&self, listener: TcpListener, key: SocketAddr, permanent: bool) {
        let snapshot = self.snapshot.clone();
        let certificate = move |sni: Option<&str>| snapshot.load().listeners.get(&key)?.certs.select(sni).cloned();
        let port = key.port();
        let acceptor = match crate::tls::acceptor(port, &self.tls, certificate) {
            Ok(a) => Arc::new(a),
            Err(e) => {
                tracing::error!(port, error = %e, "cannot set up TLS for this listener");
                return;
            }
        };
        let socket = Socket::new(listener, key, self.max_connections);
        let task = tokio::spawn(accept_loop(
            socket,
            acceptor,
            self.apps.clone(),
            self.snapshot.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
        ));
        let old = self.bound.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Bound { task, permanent });
        if let Some(old) = old {
            old.task.abort();
        }
    }

    /// Binds the listeners the snapshot has and weir lacks; closes those it no longer has.
    pub async fn reconcile(&self, snap: &Snapshot) {
        let missing: Vec<SocketAddr> = {
            let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
            snap.listeners.keys().filter(|addr| !bound.contains_key(addr)).copied().collect()
        };
        // closed first: a listener moving to another address of its port binds after
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).retain(|addr, b| {
            let keep = b.permanent || snap.listeners.contains_key(addr);
            if !keep {
                tracing::info!(%addr, "listener removed; open connections finish");
                b.task.abort();
            }
            keep
        });
        for addr in missing {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "listening");
                    self.bind_errors.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr);
                    self.start(l, addr, false);
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot listen; the listener stays down until its configuration changes");
                    self.metrics.listener_bind_failures.with_label_values(&[&addr.port().to_string()]).inc();
                    self.bind_errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(addr, format!("cannot listen on {addr}: {e}"));
                }
            }
        }
        self.bind_errors.lock().unwrap_or_else(|p| p.into_inner()).retain(|addr, _| snap.listeners.contains_key(addr));
    }

    /// Stops accepting everywhere.
    pub fn close_all(&self) {
        for (_, b) in self.bound.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            b.task.abort();
        }
    }
}

/// A bound listener socket and its open connections, at most `--max-connections`.
pub struct Socket {
    listener: L4Listener,
    /// Its key in the snapshot (its address).
    key: SocketAddr,
    /// A permit per open connection (`--max-connections`).
    open: Arc<tokio::sync::Semaphore>,
}

impl Socket {
    pub fn new(listener: TcpListener, key: SocketAddr, max_connections: usize) -> Self {
        Socket {
            listener: L4Listener::from(listener),
            key,
            open: Arc::new(tokio::sync::Semaphore::new(max_connections)),
        }
    }

    /// The next connection the limit lets in, with its permit (held while it is open). One over
    /// the limit is closed at once and counted.
    pub async fn next(&self, metrics: &Metrics) -> (pingora::protocols::l4::stream::Stream, OwnedSemaphorePermit) {
        let port = self.key.port();
        loop {
            let stream = accept(&self.listener, port).await;
            match self.open.clone().try_acquire_owned() {
                Ok(permit) => return (stream, permit),
                Err(_) => metrics.listener_connections_refused.with_label_values(&[&port.to_string()]).inc(),
            }
        }
    }
}

async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    socket: Socket,
    acceptor: Arc<SslAcceptor>,
    apps: Apps<A>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownWatch,
) {
    let key = socket.key;
    loop {
        let port = key.port();
        let (mut stream, permit) = socket.next(&metrics).await;
        let protocol = snapshot.load().listeners.get(&key).map(|l| (l.protocol, l.name.clone()));
        if let Some((Protocol::TlsPassthrough, _)) = protocol {
            let serve = super::passthrough::serve(stream, key, snapshot.clone(), metrics.clone());
            tokio::spawn(async move {
                serve.await;
                drop(permit);
            });
            continue;
        }
        let (apps, acceptor, metrics, shutdown) = (apps.clone(), acceptor.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut app = &apps.http1;
            let stream: Stream = match protocol {
                Some((Protocol::Https, name)) => {
                    let handshake = pingora::protocols::tls::server::handshake(&acceptor, Buffered::new(stream));
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failures.with_label_values(&[&name]).inc();
                            tracing::debug!(port, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.tls_handshake_failures.with_label_values(&[&name]).inc();
                            return;
                        }
                    }
                }
                _ => {
                    if sniff_h2c(&mut stream).await {
                        app = &apps.h2c;
                    }
                    Box::new(Buffered::new(stream))
                }
            };
            let mut next = app.process_new(stream, &shutdown).await;
            while let Some(reused) = next {
                next = app.process_new(reused, &shutdown).await;
            }
        });
    }
}

/// The next connection on `listener`, with Nagle off. Accept errors are logged and retried;
/// out of file descriptors, it waits for connections to close before trying again.
pub async fn accept(listener: &L4Listener, port: u16) -> pingora::protocols::l4::stream::Stream {
    loop {
        match listener.accept().await {
            Ok(mut stream) => {
                let _ = stream.set_nodelay();
                return stream;
            }
            Err(e) => {
                tracing::warn!(port, error = %e, "accept failed");
                if e.raw_os_error() == Some(24) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Reads just enough of a plaintext connection to tell the HTTP/2 preface from HTTP/1, then
/// puts the bytes back. Stops at the first byte that differs, so short requests are not held.
async fn sniff_h2c(stream: &mut pingora::protocols::l4::stream::Stream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 24];
    let mut n = 0;
    while n < buf.len() {
        match tokio::time::timeout(PROTOCOL_SNIFF_TIMEOUT, stream.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => {
                n += k;
                if buf[..n] != H2_PREFACE[..n] {
                    break;
                }
            }
        }
    }
    stream.rewind(&buf[..n]);
    n == buf.len()
}
