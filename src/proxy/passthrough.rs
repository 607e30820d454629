//! TLS passthrough (a Gateway's TLS listener of mode Passthrough, with TLSRoutes): weir reads the
//! client's ClientHello for its server name (rustls parses it; weir holds no certificate), picks
//! the TLSRoute for that name as it picks an HTTPRoute for a host (exact, then the longest
//! wildcard, then a route without hostnames), a backend by weight and an endpoint of its pool,
//! then sends the bytes it read and copies both ways. The TLS session is the client's and the
//! backend's: weir sees neither its keys nor its data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::routing::normalize_host;
use crate::snapshot::{Action, Snapshot};
use crate::telemetry::Metrics;

/// Most a ClientHello may take (TLS allows 16 KiB records; a hello with post-quantum key shares
/// is under 2 KiB): a client that has not said its server name by then is closed.
const MAX_HELLO: usize = 16 * 1024;

/// What a connection's ClientHello says, and every byte read to learn it.
pub struct Hello {
    /// The server name (SNI), lowercased; `None` when the client sent none.
    pub server_name: Option<String>,
    pub bytes: Vec<u8>,
}

/// Reads the client's ClientHello. `Err`: not TLS, or a hello too long or cut short.
pub async fn read_hello<S: AsyncRead + Unpin>(client: &mut S) -> Result<Hello, String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = client.read(&mut buf).await.map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("the client closed before its ClientHello".into());
        }
        bytes.extend_from_slice(&buf[..n]);
        let mut new = &buf[..n];
        while !new.is_empty() {
            match acceptor.read_tls(&mut new) {
                Ok(0) => return Err(format!("no complete ClientHello in {} bytes", bytes.len())),
                Ok(_) => {}
                Err(e) => return Err(format!("not a TLS ClientHello: {e}")),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted.client_hello().server_name().map(|n| n.to_ascii_lowercase());
                return Ok(Hello { server_name, bytes });
            }
            Ok(None) if bytes.len() < MAX_HELLO => continue,
            Ok(None) => return Err(format!("no complete ClientHello in {MAX_HELLO} bytes")),
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
}

/// Where a connection goes.
struct Destination {
    route: String,
    endpoint: SocketAddr,
    /// The pool's connect timeout (BackendPolicy `connectTimeout`).
    connect_timeout: Duration,
}

/// Where a connection that said `server_name` goes on listener `key`, or why nowhere (the
/// `result` label).
fn destination(snap: &Snapshot, key: SocketAddr, server_name: Option<&str>) -> Result<Destination, &'static str> {
    let listener = snap.listeners.get(&key).ok_or("no_route")?;
    let host = normalize_host(server_name.unwrap_or(""));
    let rule = listener.router.host(&host).and_then(|vh| vh.rules.first()).ok_or("no_route")?;
    let Action::Forward { targets, cycle, .. } = &rule.action.kind else { return Err("no_route") };
    let pool = cycle.next().and_then(|i| targets[i].pool.as_ref()).ok_or("no_endpoint")?;
    let picked = pool.select(b"", &[]).ok_or("no_endpoint")?;
    let connect_timeout = pool.spec().policy.connect_timeout;
    Ok(Destination { route: rule.action.name.clone(), endpoint: picked.addr, connect_timeout })
}

/// Serves one connection of the passthrough listener bound on `key`.
pub async fn serve<S>(mut client: S, key: SocketAddr, snapshot: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, read_hello(&mut client)).await;
    // the configuration as it is once the client has said where it goes
    let snap = snapshot.load_full();
    let listener = snap.listeners.get(&key).map(|l| l.name.clone()).unwrap_or_default();
    let count = |route: &str, result: &str| {
        metrics.passthrough_connections.with_label_values(&[&listener, route, result]).inc();
    };
    let hello = match hello {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            tracing::debug!(%key, error = %e, "passthrough: closed");
            return count("", "not_tls");
        }
        Err(_) => return count("", "not_tls"),
    };
    let Destination { route, endpoint, connect_timeout } = match destination(&snap, key, hello.server_name.as_deref()) {
        Ok(d) => d,
        Err(result) => {
            tracing::debug!(%key, server_name = ?hello.server_name, result, "passthrough: no backend; closed");
            return count("", result);
        }
    };
    let mut upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%endpoint, route, error = %e, "passthrough: cannot connect to the endpoint");
            return count(&route, "connect_failed");
        }
        Err(_) => return count(&route, "connect_failed"),
    };
    let _ = upstream.set_nodelay(true);
    count(&route, "forwarded");
    drop(snap);
    if upstream.write_all(&hello.bytes).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use boring::ssl::{SslConnector, SslMethod};

    #[tokio::test]
    async fn the_server_name_is_read_from_a_hello_that_comes_in_pieces() {
        // a 64-byte pipe: the hello arrives in many reads
        let (client, mut server) = tokio::io::duplex(64);
        let connector = SslConnector::builder(SslMethod::tls()).unwrap().build();
        let ssl = connector.configure().unwrap().into_ssl("A.Example.com").unwrap();
        let handshake = tokio::spawn(async move {
            let mut tls = pingora::tls::tokio_ssl::SslStream::new(ssl, client).unwrap();
            let _ = std::pin::Pin::new(&mut tls).connect().await; // no server answers
        });
        let hello = read_hello(&mut server).await.unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("a.example.com"));
        assert!(hello.bytes.len() > 64 && hello.bytes[0] == 0x16, "the handshake record, whole");
        handshake.abort();
    }

    #[tokio::test]
    async fn a_client_that_does_not_speak_tls_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").await.unwrap();
        let err = read_hello(&mut server).await.err().unwrap();
        assert!(err.starts_with("not a TLS ClientHello"), "{err}");
        drop(client);
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        assert_eq!(read_hello(&mut server).await.err().unwrap(), "the client closed before its ClientHello");
    }
}
