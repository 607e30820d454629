//! TLS for the tests: a certificate authority made per test with leaves it signs ([`Ca`],
//! [`Leaf`]), `kubernetes.io/tls` Secrets holding them ([`pem_secret`], [`leaf_secret`]), and a
//! BoringSSL client (through Pingora's tokio wrapper) that trusts only the test CA and verifies the
//! chain ([`TlsClient`]), telling which certificate weir presented ([`Peer`]).

use std::net::SocketAddr;
use std::pin::Pin;

use boring::nid::Nid;
use boring::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use boring::x509::X509;
use pingora::tls::tokio_ssl::SslStream;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::net::TcpStream;

use super::{Resp, H1, REQUEST_TIMEOUT};

/// A certificate authority made for one test; the TLS client trusts only it.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate with its key, as PEM (for the Secret) and DER (to recognise it).
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    pub cn: String,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, "weir test CA");
        let key = KeyPair::generate().expect("CA key");
        Ca { issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA") }
    }

    pub fn x509(&self) -> X509 {
        X509::from_pem(self.issuer.pem().as_bytes()).expect("CA certificate parses")
    }

    /// A leaf with subject CN `cn` and DNS SANs `sans` (an ECDSA P-256 key).
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        self.leaf_with(cn, sans, KeyPair::generate().expect("leaf key"))
    }

    /// [`Ca::leaf`] with an RSA 2048 key, for the TLS 1.2 suites of RSA certificates.
    pub fn rsa_leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        let rsa = boring::pkey::PKey::from_rsa(boring::rsa::Rsa::generate(2048).expect("RSA key")).expect("PKey");
        let pem = String::from_utf8(rsa.private_key_to_pem_pkcs8().expect("PKCS#8")).unwrap();
        self.leaf_with(cn, sans, KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("RSA"))
    }

    fn leaf_with(&self, cn: &str, sans: &[&str], key: KeyPair) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec(), cn: cn.to_string() }
    }
}

/// `kubernetes.io/tls` Secret `default/<name>` with `tls.crt`/`tls.key` in `stringData`.
pub fn pem_secret(name: &str, cert_pem: &str, key_pem: &str) -> String {
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

/// [`pem_secret`] `default/<name>` holding `leaf` and its key.
pub fn leaf_secret(name: &str, leaf: &Leaf) -> String {
    pem_secret(name, &leaf.cert_pem, &leaf.key_pem)
}

/// How to shake hands with weir.
#[derive(Clone)]
pub struct TlsClient {
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
    /// The TLS 1.2 suites offered, in the client's order (OpenSSL names); `None`: BoringSSL's.
    ciphers: Option<String>,
}

impl TlsClient {
    /// SNI `sni`, verifying the chain up to `ca` and the host name, offering ALPN `http/1.1`.
    pub fn new(addr: SocketAddr, sni: &str, ca: &Ca) -> TlsClient {
        TlsClient {
            addr,
            sni: Some(sni.to_string()),
            ca: ca.x509(),
            verify_hostname: true,
            alpn: vec!["http/1.1"],
            max_version: None,
            ciphers: None,
        }
    }

    pub fn no_hostname_check(mut self) -> Self {
        self.verify_hostname = false;
        self
    }

    pub fn no_sni(mut self) -> Self {
        self.sni = None;
        self.verify_hostname = false;
        self
    }

    pub fn max_version(mut self, v: SslVersion) -> Self {
        self.max_version = Some(v);
        self
    }

    /// Offer only these TLS 1.2 suites (an OpenSSL cipher string), in this order.
    pub fn ciphers(mut self, ciphers: &str) -> Self {
        self.ciphers = Some(ciphers.to_string());
        self
    }

    /// Offer these ALPN protocols instead of `http/1.1`.
    pub fn alpn(mut self, protocols: &[&'static str]) -> Self {
        self.alpn = protocols.to_vec();
        self
    }

    /// Connect and complete the handshake (bounded by the harness's request timeout).
    pub async fn connect(&self) -> anyhow::Result<SslStream<TcpStream>> {
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
        if let Some(ciphers) = &self.ciphers {
            b.set_strict_cipher_list(ciphers)?;
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
    pub async fn peer(&self) -> anyhow::Result<Peer> {
        let stream = self.connect().await?;
        Ok(Peer::of(&stream))
    }

    /// Handshake, then `GET <path>` with `Host: <host>` over HTTP/1.1 on that connection.
    pub async fn get(&self, host: &str, path: &str) -> anyhow::Result<(Peer, Resp)> {
        let stream = self.connect().await?;
        let peer = Peer::of(&stream);
        let mut conn = H1::over(stream).await?;
        Ok((peer, conn.get(host, path).await?))
    }
}

/// What a handshake showed of the server certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub der: Vec<u8>,
    pub cn: String,
    pub sans: Vec<String>,
}

impl Peer {
    pub fn of(stream: &SslStream<TcpStream>) -> Peer {
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
    pub fn is(&self, leaf: &Leaf) -> bool {
        self.der == leaf.der
    }

    #[track_caller]
    pub fn assert_is(&self, leaf: &Leaf, sans: &[&str]) {
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
