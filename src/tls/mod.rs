//! BoringSSL for downstream TLS: one acceptor per TLS listener whose SNI callback asks for the
//! certificate at each handshake (the listener asks the current snapshot), so a rotated Secret
//! is served by the next handshake. Nothing here knows the snapshot: it is handed a lookup.

use std::sync::Arc;

use boring::ssl::{
    select_next_proto, AlpnError, NameType, SniError, SslAcceptor, SslAlert, SslContext, SslContextBuilder, SslMethod,
    SslOptions, SslVersion,
};

/// Longest a client may take to finish its TLS handshake (or, on a passthrough listener, to send
/// its ClientHello).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The TLS 1.2 suites weir takes by default: ECDHE key exchange and AEAD ciphers alone, in
/// Mozilla's "intermediate" order (its DHE suites aside: BoringSSL has none). TLS 1.3 has only
/// such suites, and BoringSSL enables all of them.
pub const DEFAULT_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// The protocol versions and suites of every server context weir builds (a listener's, each
/// certificate's, the mesh's): `--tls-min-version` and `--tls-ciphers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    pub min_version: TlsVersion,
    /// The TLS 1.2 suites, in weir's order of preference (an OpenSSL cipher string).
    pub ciphers: String,
}

/// The lowest TLS version weir accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    Tls13,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy { min_version: TlsVersion::Tls12, ciphers: DEFAULT_CIPHERS.into() }
    }
}

/// `--tls-ciphers`: the suites if BoringSSL knows every one of them, else what to give instead.
pub fn parse_ciphers(ciphers: &str) -> Result<String, String> {
    let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(|e| e.to_string())?;
    match b.set_strict_cipher_list(ciphers) {
        Ok(()) => Ok(ciphers.to_string()),
        Err(_) => Err(format!(
            "{ciphers:?} is not a list of TLS 1.2 suites BoringSSL knows; give OpenSSL names such as \
             ECDHE-RSA-AES128-GCM-SHA256, separated by ':'"
        )),
    }
}

impl TlsPolicy {
    /// Sets the policy on a server context: the minimum version, the suites and the server's
    /// preference among them.
    pub fn apply(&self, b: &mut SslContextBuilder) -> Result<(), boring::error::ErrorStack> {
        let min = match self.min_version {
            TlsVersion::Tls12 => SslVersion::TLS1_2,
            TlsVersion::Tls13 => SslVersion::TLS1_3,
        };
        b.set_min_proto_version(Some(min))?;
        b.set_strict_cipher_list(&self.ciphers)?;
        b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
        Ok(())
    }
}

/// ALPN protocols offered, in preference order (wire format).
const ALPN_H2_H1: &[u8] = b"\x02h2\x08http/1.1";

/// Negotiates HTTP/2 when the client offers it. Set on the acceptor *and* on every certificate's
/// context: BoringSSL reads the ALPN callback from the context the SNI callback switched to.
pub fn offer_h2(b: &mut boring::ssl::SslContextBuilder) {
    b.set_alpn_select_callback(|_, offered| select_next_proto(ALPN_H2_H1, offered).ok_or(AlpnError::NOACK));
}

/// Builds the acceptor of the TLS listener on `port`, whose certificate for a server name (or
/// none) `certificate` gives at each handshake (a context built with the same `policy`).
pub fn acceptor<F>(port: u16, policy: &TlsPolicy, certificate: F) -> Result<SslAcceptor, boring::error::ErrorStack>
where
    F: Fn(Option<&str>) -> Option<Arc<SslContext>> + Send + Sync + 'static,
{
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    policy.apply(&mut b)?;
    offer_h2(&mut b);
    b.set_servername_callback(move |ssl, alert| {
        let name = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let ctx = certificate(name.as_deref());
        match ctx {
            Some(ctx) => ssl.set_ssl_context(&ctx).map_err(|_| SniError::ALERT_FATAL),
            None => {
                tracing::debug!(port, sni = ?name, "no certificate for this server name");
                *alert = SslAlert::UNRECOGNIZED_NAME;
                Err(SniError::ALERT_FATAL)
            }
        }
    });
    Ok(b.build())
}

/// Keeps Pingora's upstream connectors from loading the system trust store.
///
/// Each Pingora connector (two per `HttpProxy`, one per HTTP or TCP health check, and a check
/// per endpoint address when the check has no `host`) loads the system CA bundle into its own
/// TLS context: about 1.2 MB and 40,000 allocations each. weir never verifies an upstream against
/// the system store (edge upstreams and health checks are plaintext; the mesh verifies peers
/// against its SPIFFE trust bundle only, and must never fall back to public CAs), so weir points
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` at nothing in its own process, whatever they were.
/// `/dev/null` because it exists: Pingora's probe keeps an existing path and replaces a missing one.
///
/// Call before any other thread starts: it sets environment variables.
pub fn skip_system_trust_store() {
    std::env::set_var("SSL_CERT_FILE", "/dev/null");
    std::env::set_var("SSL_CERT_DIR", "/dev/null");
}
