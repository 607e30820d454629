//! TLSRoute on a Gateway TLS listener of mode Passthrough: connections go by their server name
//! (SNI) to the route's backend with the TLS session untouched — the client completes its
//! handshake with the backend's own certificate, which weir never holds.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;

use boring::pkey::PKey;
use boring::ssl::{SslAcceptor, SslMethod};
use boring::x509::X509;
use common::*;
use pingora::tls::tokio_ssl::SslStream;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A TLS server presenting `leaf` that greets each connection with `hello <name>` and then
/// echoes each line back, and the Service `default/<name>` (port 443) with its EndpointSlice.
async fn tls_backend(name: &'static str, leaf: &Leaf) -> String {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate(&X509::from_pem(leaf.cert_pem.as_bytes()).unwrap()).unwrap();
    b.set_private_key(&PKey::private_key_from_pem(leaf.key_pem.as_bytes()).unwrap()).unwrap();
    let acceptor = b.build();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let ssl = boring::ssl::Ssl::new(acceptor.context()).unwrap();
            tokio::spawn(async move {
                let mut tls = SslStream::new(ssl, tcp).unwrap();
                if Pin::new(&mut tls).accept().await.is_err() {
                    return;
                }
                let (read, mut write) = tokio::io::split(tls);
                let _ = write.write_all(format!("hello {name}\n").as_bytes()).await;
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = write.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
        }
    });
    let svc = service_with_target_port("default", name, 443, "tls", addr.port());
    docs(&[svc, endpoints("default", name, "tls", addr.port(), &[addr])])
}

/// Gateway `default/edge` with one TLS listener of mode Passthrough on `port`, for `*.example.com`.
fn passthrough_gateway(port: u16) -> String {
    docs(&[
        gateway_class(),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{namespace: default, name: edge}}
spec:
  gatewayClassName: weir
  listeners:
  - name: tls
    protocol: TLS
    port: {port}
    hostname: \"*.example.com\"
    tls: {{mode: Passthrough}}
"
        ),
    ])
}

fn tls_route(name: &str, hostname: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{namespace: default, name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [\"{hostname}\"]
  rules:
  - backendRefs: [{{name: {service}, port: 443}}]
"
    )
}

/// The greeting and one echoed line over a TLS session with `sni`, and the certificate shown.
async fn converse(gateway: SocketAddr, sni: &str, ca: &Ca) -> anyhow::Result<(Peer, String, String)> {
    let stream = TlsClient::new(gateway, sni, ca).connect().await?;
    let peer = Peer::of(&stream);
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    let greeting = lines.next_line().await?.unwrap_or_default();
    write.write_all(b"ping\n").await?;
    let echoed = lines.next_line().await?.unwrap_or_default();
    Ok((peer, greeting, echoed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_go_by_server_name_to_their_backend_with_the_session_untouched() {
    let ca = Ca::new();
    let (leaf_a, leaf_b) = (ca.leaf("a.example.com", &["a.example.com"]), ca.leaf("b.example.com", &["b.example.com"]));
    let backends = docs(&[tls_backend("a", &leaf_a).await, tls_backend("b", &leaf_b).await]);
    let port = free_port();
    let weir = TestWeir::start(&[
        ("gateway.yaml", &passthrough_gateway(port)),
        ("backends.yaml", &backends),
        ("routes.yaml", &docs(&[tls_route("a", "a.example.com", "a"), tls_route("b", "b.example.com", "b")])),
    ])
    .await;
    let gateway = weir.gateway_listener(port).await;

    for (sni, leaf, name) in [("a.example.com", &leaf_a, "a"), ("b.example.com", &leaf_b, "b")] {
        let (peer, greeting, echoed) = converse(gateway, sni, &ca).await.unwrap_or_else(|e| panic!("{sni}: {e:#}"));
        peer.assert_is(leaf, &[sni]);
        assert_eq!((greeting.as_str(), echoed.as_str()), (format!("hello {name}").as_str(), "ping"), "{sni}");
    }
    // a name no route has: the connection is closed, the handshake fails
    let refused = converse(gateway, "c.example.com", &ca).await;
    assert!(refused.is_err(), "no TLSRoute for c.example.com, yet: {refused:?}");
    let closed = [("listener", "gateway:default/edge"), ("result", "no_route")];
    assert_eq!(metric(&weir.metrics().await, "weir_passthrough_connections_total", &closed), 1.0);
    let forwarded = [("route", "tlsroute/default/a/rule/0"), ("result", "forwarded")];
    assert_eq!(metric(&weir.metrics().await, "weir_passthrough_connections_total", &forwarded), 1.0);

    let route = weir.status("TLSRoute", "default", "a").await;
    let accepted = &route["parents"][0]["conditions"][0];
    assert_eq!((&accepted["type"], &accepted["status"]), (&"Accepted".into(), &true.into()), "{route:#}");
    let gateway = weir.status("Gateway", "default", "edge").await;
    assert_eq!(gateway["attached_routes"]["tls"], 2, "{gateway:#}");
}

/// A TLS listener that would terminate (mode Terminate, the default) is not served: weir says so
/// on the listener, and an HTTPRoute cannot attach to a passthrough listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_tls_listener_is_refused_and_a_passthrough_one_takes_tlsroutes_alone() {
    let port = free_port();
    let gateway = passthrough_gateway(port).replace("    tls: {mode: Passthrough}\n", "");
    let weir = TestWeir::start(&[("gateway.yaml", &gateway)]).await;
    let rejection = weir.expect_rejection("Gateway", "default", "edge").await;
    let reason = rejection["reason"].as_str().unwrap();
    assert!(
        reason.contains("a TLS listener with tls.mode Terminate is not supported yet; use Passthrough"),
        "{reason}"
    );

    weir.apply("gateway.yaml", &passthrough_gateway(port)).await;
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {namespace: default, name: web}
spec:
  parentRefs: [{name: edge}]
  rules:
  - backendRefs: [{name: web, port: 80}]
";
    weir.apply("route.yaml", route).await;
    let rejection = weir.expect_rejection("HTTPRoute", "default", "web").await;
    let reason = rejection["reason"].as_str().unwrap();
    assert!(reason.contains("listener default/edge tls does not allow HTTPRoutes"), "{reason}");
}
