//! The mesh harness: a payments workload behind its gateway, checkout's gateway in front of it,
//! and a caller's side of the mutual-TLS hop, started with the options the demo's pods use.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use boring::ssl::{SslConnector, SslMethod, SslVerifyMode};
use boring::x509::X509;
use bytes::Bytes;
use http_body_util::Full;
use pingora::tls::tokio_ssl::SslStream;
use tempfile::TempDir;
use tokio::net::TcpStream;
use weir::config::DefaultPolicy;
use weir::demo::ca::{Ca, Issued};
use weir::demo::echo::EchoServer;
use weir::demo::mesh::{outbound_side, pod_gateway};
use weir::mesh::source::IdentityFiles;
use weir::mesh::{start_mesh, MeshHandle, MeshOptions};

use super::{docs, endpoints, get, indent, metric, Resp, H1, REQUEST_TIMEOUT};

pub const DAY: Duration = Duration::from_secs(86_400);
pub const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
pub const CHECKOUT: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

/// A Secret `ns/payments-identity` of type `type_` holding `issued` and `bundle_pem` as
/// `tls.crt`, `tls.key` and `ca.crt`.
pub fn identity_secret(ns: &str, type_: &str, issued: &Issued, bundle_pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{namespace: {ns}, name: payments-identity}}\ntype: {type_}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}  ca.crt: |\n{}",
        indent(&issued.chain_pem, 4),
        indent(&issued.key_pem, 4),
        indent(bundle_pem, 4)
    )
}

/// A payments workload (an echo server) behind its mesh gateway.
pub struct Payments {
    pub mesh: MeshHandle,
    pub ca: Arc<Ca>,
    pub app: EchoServer,
    pub _dir: TempDir,
}

pub async fn payments() -> Payments {
    payments_at(Arc::new(Ca::new("mesh CA").unwrap()), "payments", "127.0.0.1", 0).await
}

/// A workload `name` listening on `ip` (as a pod with its own IP), its gateway on `ip:inbound_port`
/// (0: any free port), with an identity issued by `ca`.
pub async fn payments_at(ca: Arc<Ca>, name: &str, ip: &str, inbound_port: u16) -> Payments {
    let app = EchoServer::start(name, format!("{ip}:0").parse().unwrap()).await.unwrap();
    behind_gateway(ca, app, inbound_port).await
}

/// `app` behind its gateway on the app's IP and `inbound_port` (0: any free port).
pub async fn behind_gateway(ca: Arc<Ca>, app: EchoServer, inbound_port: u16) -> Payments {
    behind_gateway_with(ca, app, inbound_port, None, DefaultPolicy::AllowAuthenticated).await
}

/// [`behind_gateway`], the gateway reading `config` (if any) from its config dir, with
/// `--default-policy` `default_policy`.
pub async fn behind_gateway_with(
    ca: Arc<Ca>,
    app: EchoServer,
    inbound_port: u16,
    config: Option<&str>,
    default_policy: DefaultPolicy,
) -> Payments {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = config.map(|c| {
        let d = dir.path().join("config");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("mesh.yaml"), c).unwrap();
        d
    });
    let files = identity_files(dir.path(), &ca, PAYMENTS);
    let admin = "127.0.0.1:0".parse().unwrap();
    let opts = MeshOptions { default_policy, ..pod_gateway(app.addr(), inbound_port, files, config_dir, admin) };
    let mesh = start_mesh(opts).await.unwrap();
    Payments { mesh, ca, app, _dir: dir }
}

/// Writes an identity issued by `ca` for `spiffe_id` into `dir`.
pub fn identity_files(dir: &std::path::Path, ca: &Ca, spiffe_id: &str) -> IdentityFiles {
    ca.write_svid(dir, spiffe_id, DAY).expect("write the identity files")
}

/// checkout's gateway, whose outbound side knows the Service `shop/payments` (port 80, its
/// endpoint the payments workload, reached through payments' gateway). `annotations` go on the
/// Service's metadata.
pub async fn checkout_gateway(p: &Payments, annotations: &str) -> (MeshHandle, TempDir) {
    let app = p.app.addr();
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{namespace: shop, name: payments{annotations}}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {}}}]}}\n",
        app.port()
    );
    checkout_gateway_with(p, &docs(&[service, endpoints("shop", "payments", "http", app.port(), &[app])])).await
}

/// checkout's gateway with `config` in its outbound config dir; peers' gateways on `p`'s port.
pub async fn checkout_gateway_with(p: &Payments, config: &str) -> (MeshHandle, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(config_dir.join("mesh.yaml"), config).unwrap();
    // checkout's own workload is not the point here: its inbound takes any free port
    let files = identity_files(dir.path(), &p.ca, CHECKOUT);
    let (any, admin) = ("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap());
    let mut opts = pod_gateway(any, 0, files, Some(config_dir), admin);
    opts.workload.ports = vec![];
    opts.outbound = Some(outbound_side(any, "shop", p.mesh.inbound_addr.port()));
    (start_mesh(opts).await.unwrap(), dir)
}

/// A caller gateway's side of the hop: trusts `bundle_pem`, presents `identity` if any.
pub async fn connect(
    addr: SocketAddr,
    bundle_pem: &str,
    identity: Option<&Issued>,
) -> anyhow::Result<SslStream<TcpStream>> {
    let mut b = SslConnector::builder(SslMethod::tls())?;
    for ca in X509::stack_from_pem(bundle_pem.as_bytes())? {
        b.cert_store_mut().add_cert(ca)?;
    }
    b.set_verify(SslVerifyMode::PEER);
    if let Some(id) = identity {
        let chain = X509::stack_from_pem(id.chain_pem.as_bytes())?;
        b.set_certificate(&chain[0])?;
        let key = boring::pkey::PKey::private_key_from_pem(id.key_pem.as_bytes())?;
        b.set_private_key(&key)?;
    }
    b.set_alpn_protos(b"\x08http/1.1")?;
    let mut config = b.build().configure()?;
    config.set_verify_hostname(false); // the mesh verifies SPIFFE IDs, not names
    let ssl = config.into_ssl("payments.shop.svc.cluster.local")?;
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = SslStream::new(ssl, tcp)?;
    tokio::time::timeout(REQUEST_TIMEOUT, Pin::new(&mut stream).connect()).await??;
    Ok(stream)
}

/// `GET /` to workload port `port` through the inbound listener at `addr`, with extra headers.
pub async fn call_via(
    addr: SocketAddr,
    bundle_pem: &str,
    identity: Option<&Issued>,
    port: u16,
    headers: &[(&str, &str)],
) -> anyhow::Result<Resp> {
    let mut conn = H1::over(connect(addr, bundle_pem, identity).await?).await?;
    let mut req = http::Request::get("/").header("host", "payments").header("weir-target-port", port.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    conn.send(req.body(Full::<Bytes>::default())?).await
}

/// [`call_via`] `p`'s gateway, trusting `p`'s CA.
pub async fn call(
    p: &Payments,
    identity: Option<&Issued>,
    port: u16,
    headers: &[(&str, &str)],
) -> anyhow::Result<Resp> {
    call_via(p.mesh.inbound_addr, &p.ca.bundle_pem(), identity, port, headers).await
}

/// Refused handshakes under `reason`, read from the gateway's admin `/metrics` as a user would.
pub async fn refusals(p: &Payments, reason: &str) -> f64 {
    let text = get(p.mesh.admin_addr, "localhost", "/metrics").await.text();
    metric(&text, "weir_mesh_tls_handshake_failures_total", &[("reason", reason)])
}
