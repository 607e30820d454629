//! TLS termination: which certificate a handshake gets (exact SNI, wildcard, default), rotation
//! of a Secret without a restart, the TLS 1.2 minimum, Secrets weir cannot use, the HTTP→HTTPS
//! redirect of Ingress TLS hosts and Gateway HTTPS listeners.
//!
//! Every certificate is generated here, signed by a test CA the client trusts; the client is
//! BoringSSL (through Pingora's tokio wrapper) verifying the chain, and each test tells which
//! certificate weir presented by comparing the peer certificate (DER, subject CN and SANs) with
//! the one it put in the Secret.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;

use boring::nid::Nid;
use boring::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use boring::x509::X509;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pingora::tls::tokio_ssl::SslStream;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate authority made for one test; the TLS client trusts only it.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate with its key, as PEM (for the Secret) and DER (to recognise it).
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    cn: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, "weir test CA");
        let key = KeyPair::generate().expect("CA key");
        Ca { issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA") }
    }

    fn x509(&self) -> X509 {
        X509::from_pem(self.issuer.pem().as_bytes()).expect("CA certificate parses")
    }

    /// A leaf with subject CN `cn` and DNS SANs `sans`.
    fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec(), cn: cn.to_string() }
    }
}

/// `kubernetes.io/tls` Secret `default/<name>` with `tls.crt`/`tls.key` in `stringData`.
fn secret(name: &str, cert_pem: &str, key_pem: &str) -> String {
    let block = |pem: &str| pem.trim_end().lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  namespace: default
  name: {name}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
        block(cert_pem),
        block(key_pem)
    )
}

fn leaf_secret(name: &str, leaf: &Leaf) -> String {
    secret(name, &leaf.cert_pem, &leaf.key_pem)
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// An Ingress `default/<name>` of class `weir`, created at `created` (RFC 3339), with TLS
/// entries `(hosts, secretName)` and rules `(host, service)` (path `/` Prefix, port 80).
fn tls_ingress(name: &str, created: &str, tls: &[(&[&str], &str)], rules: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  namespace: default
  name: {name}
  creationTimestamp: \"{created}\"
spec:
  ingressClassName: weir
"
    );
    if !tls.is_empty() {
        yaml.push_str("  tls:\n");
        for (hosts, secret) in tls {
            let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
            yaml.push_str(&format!("  - hosts: [{}]\n    secretName: {secret}\n", hosts.join(", ")));
        }
    }
    yaml.push_str("  rules:\n");
    for (host, service) in rules {
        yaml.push_str(&format!(
            "  - host: {host:?}
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}
"
        ));
    }
    yaml
}

const OLDER: &str = "2020-01-01T00:00:00Z";
const NEWER: &str = "2024-06-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// TLS client

/// How to shake hands with weir.
#[derive(Clone)]
struct TlsClient {
    addr: SocketAddr,
    /// Server name sent in the ClientHello; `None` sends no SNI.
    sni: Option<String>,
    /// CA the client trusts (the chain is always verified).
    ca: X509,
    /// Also check that the certificate names the SNI host.
    verify_hostname: bool,
    /// ALPN protocols offered (empty: no ALPN extension).
    alpn: Vec<&'static str>,
    max_version: Option<SslVersion>,
}

impl TlsClient {
    fn new(addr: SocketAddr, sni: &str, ca: &Ca) -> TlsClient {
        TlsClient {
            addr,
            sni: Some(sni.to_string()),
            ca: ca.x509(),
            verify_hostname: true,
            alpn: vec!["http/1.1"],
            max_version: None,
        }
    }

    fn no_hostname_check(mut self) -> Self {
        self.verify_hostname = false;
        self
    }

    fn no_sni(mut self) -> Self {
        self.sni = None;
        self.verify_hostname = false;
        self
    }

    fn max_version(mut self, v: SslVersion) -> Self {
        self.max_version = Some(v);
        self
    }

    /// Connect and complete the handshake (bounded by the harness's request timeout).
    async fn connect(&self) -> anyhow::Result<SslStream<TcpStream>> {
        let mut b = SslConnector::builder(SslMethod::tls())?;
        b.cert_store_mut().add_cert(self.ca.clone())?;
        b.set_verify(SslVerifyMode::PEER);
        if !self.alpn.is_empty() {
            let mut wire = vec![];
            for p in &self.alpn {
                wire.push(p.len() as u8);
                wire.extend_from_slice(p.as_bytes());
            }
            b.set_alpn_protos(&wire)?;
        }
        if let Some(max) = self.max_version {
            b.set_min_proto_version(Some(SslVersion::TLS1))?;
            b.set_max_proto_version(Some(max))?;
        }
        let connector = b.build();
        let mut config = connector.configure()?;
        config.set_verify_hostname(self.verify_hostname);
        config.set_use_server_name_indication(self.sni.is_some());
        let ssl = config.into_ssl(self.sni.as_deref().unwrap_or("no-sni.invalid"))?;
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream = SslStream::new(ssl, tcp)?;
        tokio::time::timeout(REQUEST_TIMEOUT, Pin::new(&mut stream).connect())
            .await
            .map_err(|_| anyhow::anyhow!("TLS handshake with {} did not finish in time", self.addr))?
            .map_err(|e| anyhow::anyhow!("TLS handshake with {} failed: {e}", self.addr))?;
        Ok(stream)
    }

    /// Handshake and return the certificate weir presented.
    async fn peer(&self) -> anyhow::Result<Peer> {
        let stream = self.connect().await?;
        Ok(Peer::of(&stream))
    }

    /// Handshake, then `GET <path>` with `Host: <host>` over HTTP/1.1 on that connection.
    async fn get(&self, host: &str, path: &str) -> anyhow::Result<(Peer, Resp)> {
        let stream = self.connect().await?;
        let peer = Peer::of(&stream);
        let mut conn = H1::over(stream).await?;
        Ok((peer, conn.get(host, path).await?))
    }
}

/// What a handshake showed of the server certificate.
#[derive(Clone, Debug, PartialEq)]
struct Peer {
    der: Vec<u8>,
    cn: String,
    sans: Vec<String>,
}

impl Peer {
    fn of(stream: &SslStream<TcpStream>) -> Peer {
        let cert = stream.ssl().peer_certificate().expect("the server presented a certificate");
        let cn = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
            .unwrap_or_default();
        let sans = cert
            .subject_alt_names()
            .map(|names| names.iter().filter_map(|n| n.dnsname().map(str::to_string)).collect())
            .unwrap_or_default();
        Peer { der: cert.to_der().expect("DER"), cn, sans }
    }

    /// Whether this is `leaf`.
    fn is(&self, leaf: &Leaf) -> bool {
        self.der == leaf.der
    }

    #[track_caller]
    fn assert_is(&self, leaf: &Leaf, sans: &[&str]) {
        assert!(
            self.is(leaf),
            "expected the certificate {:?}, weir presented CN={:?} SANs={:?}",
            leaf.cn,
            self.cn,
            self.sans
        );
        assert_eq!(self.cn, leaf.cn);
        assert_eq!(self.sans, sans);
    }
}

/// An HTTP/1.1 keep-alive connection over TLS.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl H1 {
    async fn over(stream: SslStream<TcpStream>) -> anyhow::Result<H1> {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(H1 { sender, conn: tokio::spawn(conn) })
    }

    async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<Resp> {
        let req = Request::get(path).header(http::header::HOST, host).body(Full::<Bytes>::default())?;
        let exchange = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let version = resp.version();
            let headers = resp.headers().clone();
            let collected = resp.into_body().collect().await?;
            let trailers = collected.trailers().cloned();
            anyhow::Ok(Resp { status, version, headers, body: collected.to_bytes(), trailers })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no complete response to GET {host}{path} within {REQUEST_TIMEOUT:?}"))?
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing the certificate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_of_the_exact_host() {
    let ca = Ca::new();
    let foo = ca.leaf("foo cert", &["foo.example.com"]);
    let bar = ca.leaf("bar cert", &["bar.example.com"]);
    let b = backends("default", &["foo", "bar"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("secrets.yaml", &docs(&[leaf_secret("foo-tls", &foo), leaf_secret("bar-tls", &bar)])),
        ("foo.yaml", &tls_ingress("foo", OLDER, &[(&["foo.example.com"], "foo-tls")], &[("foo.example.com", "foo")])),
        ("bar.yaml", &tls_ingress("bar", NEWER, &[(&["bar.example.com"], "bar-tls")], &[("bar.example.com", "bar")])),
    ])
    .await;

    // bar's certificate is not the default one (foo's Ingress is older), so getting it proves SNI
    let (peer, resp) =
        TlsClient::new(weir.https, "bar.example.com", &ca).get("bar.example.com", "/").await.expect("bar over TLS");
    peer.assert_is(&bar, &["bar.example.com"]);
    resp.assert_served_by("bar");
    assert_eq!(resp.upstream_header("x-forwarded-proto").as_deref(), Some("https"));

    let (peer, resp) =
        TlsClient::new(weir.https, "foo.example.com", &ca).get("foo.example.com", "/").await.expect("foo over TLS");
    peer.assert_is(&foo, &["foo.example.com"]);
    resp.assert_served_by("foo");

    // SNI is case-insensitive
    let peer = TlsClient::new(weir.https, "BAR.Example.COM", &ca).peer().await.expect("upper-case SNI");
    assert!(peer.is(&bar), "SNI BAR.Example.COM got {peer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_certificate_serves_subdomains() {
    let ca = Ca::new();
    let default = ca.leaf("default cert", &["plain.example.com"]);
    let wild = ca.leaf("wildcard cert", &["*.wild.example.com"]);
    let special = ca.leaf("special cert", &["special.wild.example.com"]);
    let b = backends("default", &["plain", "wild", "special"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        (
            "secrets.yaml",
            &docs(&[
                leaf_secret("plain-tls", &default),
                leaf_secret("wild-tls", &wild),
                leaf_secret("special-tls", &special),
            ]),
        ),
        (
            "plain.yaml",
            &tls_ingress("plain", OLDER, &[(&["plain.example.com"], "plain-tls")], &[("plain.example.com", "plain")]),
        ),
        (
            "wild.yaml",
            &tls_ingress(
                "wild",
                NEWER,
                &[(&["*.wild.example.com"], "wild-tls"), (&["special.wild.example.com"], "special-tls")],
                &[("*.wild.example.com", "wild"), ("special.wild.example.com", "special")],
            ),
        ),
    ])
    .await;

    for host in ["a.wild.example.com", "bee.wild.example.com"] {
        let (peer, resp) = TlsClient::new(weir.https, host, &ca).get(host, "/").await.expect("subdomain over TLS");
        peer.assert_is(&wild, &["*.wild.example.com"]);
        resp.assert_served_by("wild");
    }

    // an exact certificate beats the wildcard
    let (peer, resp) = TlsClient::new(weir.https, "special.wild.example.com", &ca)
        .get("special.wild.example.com", "/")
        .await
        .expect("exact host under the wildcard");
    peer.assert_is(&special, &["special.wild.example.com"]);
    resp.assert_served_by("special");

    // the wildcard covers exactly one label: not the apex, not two labels deep
    for host in ["wild.example.com", "x.y.wild.example.com"] {
        let peer = TlsClient::new(weir.https, host, &ca).no_hostname_check().peer().await.expect("handshake");
        assert!(peer.is(&default), "SNI {host} must get the default certificate, got {peer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_gets_the_oldest_ingress_first_certificate() {
    let ca = Ca::new();
    let oldest_first = ca.leaf("oldest first", &["old.example.com"]);
    let oldest_second = ca.leaf("oldest second", &["old2.example.com"]);
    let newer = ca.leaf("newer", &["new.example.com"]);
    let b = backends("default", &["old", "new"]).await;
    // named so that sorting by name would put the newer Ingress first
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        (
            "secrets.yaml",
            &docs(&[
                leaf_secret("old-tls", &oldest_first),
                leaf_secret("old2-tls", &oldest_second),
                leaf_secret("new-tls", &newer),
            ]),
        ),
        (
            "a-newer.yaml",
            &tls_ingress("a-newer", NEWER, &[(&["new.example.com"], "new-tls")], &[("new.example.com", "new")]),
        ),
        (
            "z-older.yaml",
            &tls_ingress(
                "z-older",
                OLDER,
                &[(&["old.example.com"], "old-tls"), (&["old2.example.com"], "old2-tls")],
                &[("old.example.com", "old"), ("old2.example.com", "old")],
            ),
        ),
    ])
    .await;

    let peer = TlsClient::new(weir.https, "unknown.example.org", &ca)
        .no_hostname_check()
        .peer()
        .await
        .expect("a name no certificate covers still gets a certificate");
    peer.assert_is(&oldest_first, &["old.example.com"]);

    let peer = TlsClient::new(weir.https, "ignored", &ca)
        .no_sni()
        .peer()
        .await
        .expect("a client without SNI still gets a certificate");
    peer.assert_is(&oldest_first, &["old.example.com"]);

    // the named hosts still get their own
    let peer = TlsClient::new(weir.https, "new.example.com", &ca).peer().await.expect("new host");
    peer.assert_is(&newer, &["new.example.com"]);
    let peer = TlsClient::new(weir.https, "old2.example.com", &ca).peer().await.expect("old2 host");
    peer.assert_is(&oldest_second, &["old2.example.com"]);
}

// ---------------------------------------------------------------------------------------------
// Rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_is_served_by_new_handshakes_and_open_connections_keep_working() {
    let ca = Ca::new();
    let v1 = ca.leaf("rotate v1", &["rotate.example.com"]);
    let v2 = ca.leaf("rotate v2", &["rotate.example.com"]);
    let b = backends("default", &["app"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("secret.yaml", &leaf_secret("rotate-tls", &v1)),
        (
            "ingress.yaml",
            &tls_ingress("rotate", OLDER, &[(&["rotate.example.com"], "rotate-tls")], &[("rotate.example.com", "app")]),
        ),
    ])
    .await;
    let client = TlsClient::new(weir.https, "rotate.example.com", &ca);

    // a keep-alive connection opened before the rotation
    let stream = client.connect().await.expect("handshake before rotation");
    Peer::of(&stream).assert_is(&v1, &["rotate.example.com"]);
    let mut open = H1::over(stream).await.expect("HTTP/1.1 over TLS");
    open.get("rotate.example.com", "/before").await.expect("request before rotation").assert_served_by("app");

    weir.write("secret.yaml", &leaf_secret("rotate-tls", &v2));
    let rotated = wait_for("a new handshake presents the rotated certificate", WAIT, || {
        let (client, want) = (client.clone(), v2.der.clone());
        async move { client.peer().await.ok().filter(|p| p.der == want) }
    })
    .await;
    rotated.assert_is(&v2, &["rotate.example.com"]);
    let (peer, resp) = client.get("rotate.example.com", "/after").await.expect("new connection after rotation");
    peer.assert_is(&v2, &["rotate.example.com"]);
    resp.assert_served_by("app");

    // the connection opened before the rotation still works
    let resp = open.get("rotate.example.com", "/still-open").await.expect("request on the pre-rotation connection");
    resp.assert_served_by("app");
    assert_eq!(resp.upstream_path(), "/still-open");
    assert!(!open.conn.is_finished(), "the pre-rotation connection was closed");
}

// ---------------------------------------------------------------------------------------------
// Protocol versions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_limited_to_tls_1_1_are_refused() {
    let ca = Ca::new();
    let leaf = ca.leaf("versions", &["v.example.com"]);
    let b = backends("default", &["app"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("secret.yaml", &leaf_secret("v-tls", &leaf)),
        ("ingress.yaml", &tls_ingress("v", OLDER, &[(&["v.example.com"], "v-tls")], &[("v.example.com", "app")])),
    ])
    .await;
    let client = TlsClient::new(weir.https, "v.example.com", &ca);

    for max in [SslVersion::TLS1_1, SslVersion::TLS1] {
        let refused = client.clone().max_version(max).get("v.example.com", "/").await;
        assert!(refused.is_err(), "a client limited to {max:?} was served: {:?}", refused.map(|(_, r)| r.status));
    }
    assert_eq!(b.echo("app").requests(), 0, "a request over TLS < 1.2 reached the upstream");
    wait_until("the refused handshakes are counted in weir_tls_handshake_failures_total", WAIT, || async {
        let metrics = weir.metrics().await;
        metrics.lines().any(|l| {
            l.strip_prefix("weir_tls_handshake_failures_total{listener=\"ingress-https\"} ")
                .and_then(|n| n.trim().parse::<f64>().ok())
                .is_some_and(|n| n >= 2.0)
        })
    })
    .await;

    // TLS 1.2 is accepted, and a modern client gets TLS 1.3
    let stream = client.clone().max_version(SslVersion::TLS1_2).connect().await.expect("TLS 1.2 handshake");
    assert_eq!(stream.ssl().version2(), Some(SslVersion::TLS1_2));
    let (_, resp) = client.clone().max_version(SslVersion::TLS1_2).get("v.example.com", "/").await.expect("TLS 1.2");
    resp.assert_served_by("app");
    let stream = client.connect().await.expect("default handshake");
    assert_eq!(stream.ssl().version2(), Some(SslVersion::TLS1_3));
}

// ---------------------------------------------------------------------------------------------
// Secrets weir cannot use

/// Whether a rejection's reason names `tls.key` and says it does not match the certificate.
fn says_key_does_not_match(rejection: &serde_json::Value) -> bool {
    let reason = rejection["reason"].as_str().unwrap_or_default().to_ascii_lowercase();
    reason.contains("tls.key") && (reason.contains("does not match") || reason.contains("mismatch"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_whose_key_does_not_match_is_rejected_and_others_keep_serving() {
    let ca = Ca::new();
    let good = ca.leaf("good", &["good.example.com"]);
    let bad_cert = ca.leaf("bad", &["bad.example.com"]);
    let other_key = ca.leaf("other", &["bad.example.com"]);
    let b = backends("default", &["good", "bad"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("good-secret.yaml", &leaf_secret("good-tls", &good)),
        ("bad-secret.yaml", &secret("bad-tls", &bad_cert.cert_pem, &other_key.key_pem)),
        (
            "good.yaml",
            &tls_ingress("good", OLDER, &[(&["good.example.com"], "good-tls")], &[("good.example.com", "good")]),
        ),
        ("bad.yaml", &tls_ingress("bad", NEWER, &[(&["bad.example.com"], "bad-tls")], &[("bad.example.com", "bad")])),
    ])
    .await;

    let rejection = weir.expect_rejection("Secret", "default", "bad-tls").await;
    assert!(says_key_does_not_match(&rejection), "the rejection should say the key does not match: {rejection}");
    assert!(weir.rejection("Secret", "default", "good-tls").await.is_none());

    // the good Secret is unaffected
    let (peer, resp) =
        TlsClient::new(weir.https, "good.example.com", &ca).get("good.example.com", "/").await.expect("good host");
    peer.assert_is(&good, &["good.example.com"]);
    resp.assert_served_by("good");

    // the unusable certificate is never presented
    let peer = TlsClient::new(weir.https, "bad.example.com", &ca).no_hostname_check().peer().await.expect("handshake");
    assert!(!peer.is(&bad_cert), "weir presented a certificate whose key it does not have");
}

/// Desired behaviour: replacing a good Secret with one whose key does not match must not take
/// the host's TLS down; the last good certificate keeps being served (as weir does for files
/// that stop parsing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_replaced_by_a_mismatched_key_keeps_serving_the_last_good_certificate() {
    let ca = Ca::new();
    let v1 = ca.leaf("keep v1", &["keep.example.com"]);
    let v2 = ca.leaf("keep v2", &["keep.example.com"]);
    let unrelated = ca.leaf("unrelated", &["keep.example.com"]);
    let b = backends("default", &["app"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("secret.yaml", &leaf_secret("keep-tls", &v1)),
        (
            "ingress.yaml",
            &tls_ingress("keep", OLDER, &[(&["keep.example.com"], "keep-tls")], &[("keep.example.com", "app")]),
        ),
    ])
    .await;
    let client = TlsClient::new(weir.https, "keep.example.com", &ca);
    client.peer().await.expect("handshake before the bad update").assert_is(&v1, &["keep.example.com"]);

    weir.apply("secret.yaml", &secret("keep-tls", &v2.cert_pem, &unrelated.key_pem)).await;

    let rejection = weir.expect_rejection("Secret", "default", "keep-tls").await;
    assert!(says_key_does_not_match(&rejection), "the rejection should say the key does not match: {rejection}");
    assert!(
        rejection["reason"].as_str().unwrap_or_default().contains("previous version keeps serving"),
        "the rejection should say the previous version keeps serving: {rejection}"
    );
    let after = client.get("keep.example.com", "/").await;
    match after {
        Ok((peer, resp)) => {
            peer.assert_is(&v1, &["keep.example.com"]);
            resp.assert_served_by("app");
        }
        Err(e) => panic!(
            "after a bad Secret update, keep.example.com lost TLS instead of keeping the last good certificate: {e:#}"
        ),
    }

    // fixing the Secret serves the new certificate and clears the rejection
    weir.write("secret.yaml", &leaf_secret("keep-tls", &v2));
    wait_for("a new handshake presents the fixed certificate", WAIT, || {
        let (client, want) = (client.clone(), v2.der.clone());
        async move { client.peer().await.ok().filter(|p| p.der == want) }
    })
    .await;
    assert!(weir.rejection("Secret", "default", "keep-tls").await.is_none(), "the fixed Secret is still rejected");
    client.get("keep.example.com", "/").await.expect("HTTPS after the fix").1.assert_served_by("app");
}

/// The last good certificate must keep serving "until this is fixed" (as the rejection says),
/// not only until the next, unrelated, configuration change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_good_certificate_survives_later_unrelated_config_changes() {
    let ca = Ca::new();
    let v1 = ca.leaf("survive v1", &["survive.example.com"]);
    let v2 = ca.leaf("survive v2", &["survive.example.com"]);
    let unrelated = ca.leaf("unrelated", &["survive.example.com"]);
    let b = backends("default", &["app", "other"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("secret.yaml", &leaf_secret("survive-tls", &v1)),
        (
            "ingress.yaml",
            &tls_ingress(
                "survive",
                OLDER,
                &[(&["survive.example.com"], "survive-tls")],
                &[("survive.example.com", "app")],
            ),
        ),
    ])
    .await;
    let client = TlsClient::new(weir.https, "survive.example.com", &ca);
    client.peer().await.expect("handshake before the bad update").assert_is(&v1, &["survive.example.com"]);

    weir.apply("secret.yaml", &secret("survive-tls", &v2.cert_pem, &unrelated.key_pem)).await;
    weir.expect_rejection("Secret", "default", "survive-tls").await;
    client.peer().await.expect("handshake right after the bad update").assert_is(&v1, &["survive.example.com"]);

    // someone adds an unrelated Ingress; the Secret is still broken
    weir.apply("other.yaml", &tls_ingress("other", NEWER, &[], &[("other.example.com", "other")])).await;
    weir.get("other.example.com", "/").await.assert_served_by("other");
    let rejection = weir.expect_rejection("Secret", "default", "survive-tls").await;
    assert!(says_key_does_not_match(&rejection), "{rejection}");

    let after = client.get("survive.example.com", "/").await;
    match after {
        Ok((peer, resp)) => {
            peer.assert_is(&v1, &["survive.example.com"]);
            resp.assert_served_by("app");
        }
        Err(e) => panic!(
            "after an unrelated change, survive.example.com lost the last good certificate its rejection promised \
             to keep serving (rejection: {rejection}): {e:#}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP → HTTPS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_host_is_redirected_with_308_and_https_serves_it() {
    let ca = Ca::new();
    let leaf = ca.leaf("secure", &["secure.example.com"]);
    let b = backends("default", &["secure", "open"]).await;
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("secret.yaml", &leaf_secret("secure-tls", &leaf)),
        (
            "secure.yaml",
            &tls_ingress(
                "secure",
                OLDER,
                &[(&["secure.example.com"], "secure-tls")],
                &[("secure.example.com", "secure")],
            ),
        ),
        ("open.yaml", &tls_ingress("open", NEWER, &[], &[("open.example.com", "open")])),
    ])
    .await;

    let redirect = weir.get("secure.example.com", "/some/path?x=1").await;
    redirect.assert_status(308);
    let expected = format!("https://secure.example.com:{}/some/path?x=1", weir.https.port());
    assert_eq!(redirect.location(), Some(expected.as_str()), "{redirect}");
    assert_eq!(b.echo("secure").requests(), 0, "the plain request must not reach the upstream");

    // follow it
    let location: http::Uri = expected.parse().unwrap();
    let host = location.host().unwrap();
    assert_eq!(location.port_u16(), Some(weir.https.port()));
    let (peer, resp) = TlsClient::new(weir.https, host, &ca)
        .get(host, location.path_and_query().unwrap().as_str())
        .await
        .expect("the redirect target answers");
    peer.assert_is(&leaf, &["secure.example.com"]);
    resp.assert_served_by("secure");
    assert_eq!(resp.upstream_path(), "/some/path?x=1");
    assert_eq!(resp.upstream_header("x-forwarded-proto").as_deref(), Some("https"));

    // a host without TLS is served in plain HTTP
    weir.get("open.example.com", "/").await.assert_served_by("open");
}

// ---------------------------------------------------------------------------------------------
// Gateway API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_https_listener_terminates_tls_for_its_routes() {
    let ca = Ca::new();
    let leaf = ca.leaf("gateway cert", &["gw.example.com"]);
    let b = backends("default", &["app"]).await;
    let port = free_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  namespace: default
  name: edge
spec:
  gatewayClassName: weir
  listeners:
  - name: https
    protocol: HTTPS
    port: {port}
    hostname: gw.example.com
    tls:
      mode: Terminate
      certificateRefs:
      - kind: Secret
        name: gw-tls
"
    );
    let route = "
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata:
          namespace: default
          name: app
        spec:
          parentRefs:
          - name: edge
          hostnames: [gw.example.com]
          rules:
          - backendRefs:
            - {name: app, port: 80}
    ";
    let weir = TestWeir::start(&[
        ("backends.yaml", &b.yaml),
        ("class.yaml", &gateway_class()),
        ("secret.yaml", &leaf_secret("gw-tls", &leaf)),
        ("gateway.yaml", &gateway),
        ("route.yaml", route),
    ])
    .await;
    let addr = local(port);
    wait_listening(addr).await;
    assert!(weir.rejections().await.is_empty(), "rejections: {:#?}", weir.rejections().await);

    let (peer, resp) = TlsClient::new(addr, "gw.example.com", &ca)
        .get("gw.example.com", "/hello")
        .await
        .expect("HTTPS through the Gateway listener");
    peer.assert_is(&leaf, &["gw.example.com"]);
    resp.assert_served_by("app");
    assert_eq!(resp.upstream_path(), "/hello");
    assert_eq!(resp.upstream_header("x-forwarded-proto").as_deref(), Some("https"));

    // the listener speaks TLS only
    let plain = request(addr).host("gw.example.com").try_send().await;
    assert!(plain.is_err() || plain.as_ref().is_ok_and(|r| r.status >= 400), "plain HTTP was served: {plain:?}");
    assert_eq!(b.echo("app").requests(), 1);
}
