//! `kubernetes.io/tls` Secrets → ready-to-use BoringSSL contexts, one per Secret.

use std::collections::HashMap;
use std::sync::Arc;

use boring::asn1::Asn1Time;
use boring::pkey::PKey;
use boring::ssl::{SslContext, SslContextBuilder, SslMethod};
use boring::x509::X509;

use super::reject;
use crate::routing::HostPattern;
use crate::store::{NsName, Rejection, Store};
use crate::tls::TlsPolicy;

/// A certificate a TLS listener can present.
#[derive(Clone)]
pub struct CertModel {
    /// SNI names it is chosen for; empty = the listener's default certificate.
    pub hosts: Vec<HostPattern>,
    /// `ns/name` of the Secret.
    pub secret: String,
    pub context: Arc<SslContext>,
    /// The leaf's expiry, as BoringSSL prints it, for the config dump.
    pub not_after: String,
}

impl std::fmt::Debug for CertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertModel").field("hosts", &self.hosts).field("secret", &self.secret).finish()
    }
}

/// A loaded key pair.
#[derive(Clone)]
pub struct LoadedCert {
    pub context: Arc<SslContext>,
    pub not_after: String,
}

/// Loads Secrets on demand, each once per translation, and reports bad ones once.
pub struct Secrets<'a> {
    store: &'a Store,
    /// The TLS policy each certificate's context gets (a handshake runs on the context SNI picks).
    policy: &'a TlsPolicy,
    cache: HashMap<NsName, Result<LoadedCert, String>>,
    rejections: Vec<Rejection>,
}

impl<'a> Secrets<'a> {
    pub fn new(store: &'a Store, policy: &'a TlsPolicy) -> Self {
        Secrets { store, policy, cache: HashMap::new(), rejections: vec![] }
    }

    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// The certificate in Secret `ns/name`, or why it cannot be used.
    pub fn load(&mut self, ns: &str, name: &str) -> Result<LoadedCert, String> {
        let key = (ns.to_string(), name.to_string());
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let result = match self.store.secrets.get(&key) {
            None => Err(format!("Secret {ns}/{name} does not exist")),
            Some(stored) => {
                let r = load_secret(&stored.object, self.policy);
                if let Err(reason) = &r {
                    self.rejections.push(reject("Secret", ns, name, &stored.origin, reason.clone()));
                }
                r.map_err(|e| format!("Secret {ns}/{name} cannot be used: {e}"))
            }
        };
        self.cache.insert(key, result.clone());
        result
    }

    pub fn into_rejections(self) -> Vec<Rejection> {
        self.rejections
    }
}

fn load_secret(secret: &k8s_openapi::api::core::v1::Secret, policy: &TlsPolicy) -> Result<LoadedCert, String> {
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!(
            "its type is {:?}; a certificate Secret must be of type kubernetes.io/tls",
            secret.type_.as_deref().unwrap_or("")
        ));
    }
    let (crt, key) = (secret_field(secret, "tls.crt")?, secret_field(secret, "tls.key")?);
    build_context(&crt, &key, policy)
}

/// The value of `key` in a Secret's `data` (or `stringData`).
pub(crate) fn secret_field(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Result<Vec<u8>, String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Ok(v.0.clone());
    }
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Ok(v.as_bytes().to_vec());
    }
    Err(format!("it has no {key}"))
}

/// Builds a server context from a PEM chain and key, checking that they belong together and
/// that the leaf is currently valid, with TLS `policy`.
pub fn build_context(crt_pem: &[u8], key_pem: &[u8], policy: &TlsPolicy) -> Result<LoadedCert, String> {
    let chain = X509::stack_from_pem(crt_pem).map_err(|e| format!("tls.crt is not a PEM certificate: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("tls.crt holds no certificate".into());
    };
    let key = PKey::private_key_from_pem(key_pem).map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let now = Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
    if leaf.not_after() < now {
        return Err(format!("its certificate expired on {}", leaf.not_after()));
    }
    if leaf.not_before() > now {
        return Err(format!("its certificate is not valid before {}", leaf.not_before()));
    }
    let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(|e| e.to_string())?;
    policy.apply(&mut b).map_err(|e| e.to_string())?;
    b.set_certificate(leaf).map_err(|e| format!("tls.crt: {e}"))?;
    for extra in chain.iter().skip(1) {
        b.add_extra_chain_cert(extra.clone()).map_err(|e| format!("tls.crt chain: {e}"))?;
    }
    let mismatch = |_| "tls.key does not match the certificate in tls.crt".to_string();
    b.set_private_key(&key).map_err(mismatch)?;
    b.check_private_key().map_err(mismatch)?;
    crate::tls::offer_h2(&mut b);
    Ok(LoadedCert { context: Arc::new(b.build()), not_after: leaf.not_after().to_string() })
}
