//! Mesh identity: X.509 SVIDs carrying a SPIFFE ID, and the trust bundle they chain to.
//!
//! A [`Credentials`] is one consistent set (this workload's certificate chain and key, and the CA
//! certificates it trusts), checked when loaded and compiled into the two TLS sides: the inbound
//! acceptor, which requires a client certificate chaining to the bundle whose SPIFFE ID is in our
//! trust domain, and the outbound material Pingora's connector uses (client certificate, CA list).
//! Rotation swaps the whole set; connections already open keep the set they were made with.

use std::fmt;
use std::sync::Arc;

use boring::pkey::{PKey, Private};
use boring::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use boring::x509::store::X509StoreBuilder;
use boring::x509::{X509Ref, X509StoreContext, X509VerifyError, X509};
use pingora::utils::tls::CertKey;

pub use crate::api::spiffe::SpiffeId;

/// Why a peer's certificate is not a valid identity (also the `reason` label of the handshake
/// failure metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoCertificate,
    UntrustedChain,
    Expired,
    NotYetValid,
    NoSpiffeId,
    OtherTrustDomain,
    WrongIdentity,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::UntrustedChain => "untrusted_chain",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::NoSpiffeId => "no_spiffe_id",
            Refusal::OtherTrustDomain => "other_trust_domain",
            Refusal::WrongIdentity => "wrong_identity",
        }
    }

    fn of_verify_error(e: X509VerifyError) -> Refusal {
        match e {
            X509VerifyError::CERT_HAS_EXPIRED => Refusal::Expired,
            X509VerifyError::CERT_NOT_YET_VALID => Refusal::NotYetValid,
            _ => Refusal::UntrustedChain,
        }
    }
}

/// The SPIFFE ID of a certificate: its one `spiffe://` URI SAN (the X.509-SVID rule).
pub fn spiffe_id_of(cert: &X509Ref) -> Result<SpiffeId, String> {
    let uris: Vec<String> = cert
        .subject_alt_names()
        .map(|names| names.iter().filter_map(|n| n.uri().map(str::to_string)).collect())
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err("the certificate has no URI SAN (an X.509-SVID carries its SPIFFE ID there)".into()),
        [one] => SpiffeId::parse(one),
        many => Err(format!("the certificate has {} URI SANs; an X.509-SVID has exactly one", many.len())),
    }
}

/// Called with every refused peer certificate (for the metric by reason).
pub type OnRefusal = Arc<dyn Fn(Refusal) + Send + Sync>;

/// One workload identity and the bundle it trusts, compiled for both TLS sides.
pub struct Credentials {
    pub id: SpiffeId,
    /// End of the leaf certificate's validity, as the certificate writes it.
    pub not_after: String,
    /// The inbound (server) side: mutual TLS against the bundle, SPIFFE ID in our trust domain.
    pub acceptor: SslAcceptor,
    /// Client certificate and key for Pingora's upstream peers.
    pub client_cert: Arc<CertKey>,
    /// The trust bundle for Pingora's upstream peers (`PeerOptions.ca`).
    pub bundle: Arc<Box<[X509]>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("id", &self.id).field("not_after", &self.not_after).finish()
    }
}

impl Credentials {
    /// Builds credentials from PEM: the certificate chain (leaf first), its private key, and the
    /// trust bundle. Every problem is an error that says what to fix.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
        tls: &crate::tls::TlsPolicy,
        on_refusal: OnRefusal,
    ) -> Result<Self, String> {
        let chain =
            X509::stack_from_pem(chain_pem).map_err(|e| format!("identity certificate: not PEM X.509 ({e})"))?;
        let leaf = chain.first().ok_or("identity certificate: the file holds no certificate")?.clone();
        let key =
            PKey::private_key_from_pem(key_pem).map_err(|e| format!("identity key: not a PEM private key ({e})"))?;
        let leaf_key = leaf.public_key().map_err(|e| format!("identity certificate: unreadable public key ({e})"))?;
        if !leaf_key.public_eq(&key) {
            return Err("identity key does not belong to the identity certificate".into());
        }
        let id = spiffe_id_of(&leaf).map_err(|e| format!("identity certificate: {e}"))?;
        let bundle = X509::stack_from_pem(bundle_pem).map_err(|e| format!("trust bundle: not PEM X.509 ({e})"))?;
        if bundle.is_empty() {
            return Err("trust bundle: the file holds no certificate".into());
        }
        verify_chain(&leaf, &chain[1..], &bundle).map_err(|r| match r {
            Refusal::Expired => "identity certificate has expired".to_string(),
            Refusal::NotYetValid => "identity certificate is not valid yet".to_string(),
            _ => "identity certificate does not chain to the trust bundle".to_string(),
        })?;
        let not_after = leaf.not_after().to_string();
        let acceptor = acceptor(&chain, &key, &bundle, id.trust_domain().to_string(), tls, on_refusal)
            .map_err(|e| format!("cannot build the inbound TLS context: {e}"))?;
        Ok(Credentials {
            id,
            not_after,
            acceptor,
            client_cert: Arc::new(CertKey::new(chain, key)),
            bundle: Arc::new(bundle.into_boxed_slice()),
        })
    }

    /// Whether `peer` (a server's SPIFFE ID) is acceptable where `expected` was asked for:
    /// exactly `expected`, or, with no expected ID, any ID of our trust domain.
    pub fn accepts(&self, peer: &SpiffeId, expected: Option<&SpiffeId>) -> Result<(), Refusal> {
        match expected {
            Some(want) if want == peer => Ok(()),
            Some(_) => Err(Refusal::WrongIdentity),
            None if peer.trust_domain() == self.id.trust_domain() => Ok(()),
            None => Err(Refusal::OtherTrustDomain),
        }
    }
}

/// Verifies `leaf` (with `intermediates`) against `bundle`, now.
fn verify_chain(leaf: &X509Ref, intermediates: &[X509], bundle: &[X509]) -> Result<(), Refusal> {
    let store = trust_store(bundle).map_err(|_| Refusal::UntrustedChain)?;
    let mut untrusted = boring::stack::Stack::new().map_err(|_| Refusal::UntrustedChain)?;
    for c in intermediates {
        untrusted.push(c.clone()).map_err(|_| Refusal::UntrustedChain)?;
    }
    let mut ctx = X509StoreContext::new().map_err(|_| Refusal::UntrustedChain)?;
    let (verified, result) = ctx
        .init(&store, leaf, &untrusted, |c| Ok((c.verify_cert()?, c.verify_result())))
        .map_err(|_| Refusal::UntrustedChain)?;
    if verified {
        return Ok(());
    }
    Err(Refusal::of_verify_error(result.err().unwrap_or(X509VerifyError::UNSPECIFIED)))
}

fn trust_store(bundle: &[X509]) -> Result<boring::x509::store::X509Store, boring::error::ErrorStack> {
    let mut b = X509StoreBuilder::new()?;
    for ca in bundle {
        b.add_cert(ca.clone())?;
    }
    Ok(b.build())
}

/// The inbound TLS context: our SVID, weir's TLS policy (TLS 1.2 minimum, forward-secret AEAD
/// suites in its order), HTTP/2 by ALPN, and a client certificate required, chaining to the
/// bundle and carrying a SPIFFE ID of `trust_domain`.
fn acceptor(
    chain: &[X509],
    key: &PKey<Private>,
    bundle: &[X509],
    trust_domain: String,
    tls: &crate::tls::TlsPolicy,
    on_refusal: OnRefusal,
) -> Result<SslAcceptor, boring::error::ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    tls.apply(&mut b)?;
    b.set_certificate(&chain[0])?;
    for c in &chain[1..] {
        b.add_extra_chain_cert(c.clone())?;
    }
    b.set_private_key(key)?;
    b.check_private_key()?;
    b.set_cert_store(trust_store(bundle)?);
    crate::tls::offer_h2(&mut b);
    b.set_verify_callback(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT, move |ok, ctx| {
        if !ok {
            // report once, at the certificate that failed
            on_refusal(Refusal::of_verify_error(ctx.verify_result().err().unwrap_or(X509VerifyError::UNSPECIFIED)));
            return false;
        }
        if ctx.error_depth() > 0 {
            return true;
        }
        let refusal = match ctx.current_cert().map(spiffe_id_of) {
            Some(Ok(id)) if id.trust_domain() == trust_domain => return true,
            Some(Ok(_)) => Refusal::OtherTrustDomain,
            Some(Err(_)) | None => Refusal::NoSpiffeId,
        };
        on_refusal(refusal);
        ctx.set_error(Err(X509VerifyError::APPLICATION_VERIFICATION));
        false
    });
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::demo::ca::{Ca, Issued, LeafSpec};
    use crate::tls::TlsPolicy;

    const DAY: Duration = Duration::from_secs(86_400);
    const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

    fn ignore() -> OnRefusal {
        Arc::new(|_| {})
    }

    fn load(issued: &Issued, ca: &Ca) -> Result<Credentials, String> {
        Credentials::from_pem(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            ca.bundle_pem().as_bytes(),
            &TlsPolicy::default(),
            ignore(),
        )
    }

    #[test]
    fn the_inbound_context_takes_the_tls_policy_given() {
        let ca = Ca::new("mesh CA").unwrap();
        let issued = ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap();
        let bundle = ca.bundle_pem();
        let min_version = |tls: &TlsPolicy| {
            let creds = Credentials::from_pem(
                issued.chain_pem.as_bytes(),
                issued.key_pem.as_bytes(),
                bundle.as_bytes(),
                tls,
                ignore(),
            )
            .unwrap();
            boring::ssl::Ssl::new(creds.acceptor.context()).unwrap().min_proto_version()
        };
        assert_eq!(min_version(&TlsPolicy::default()), Some(boring::ssl::SslVersion::TLS1_2));
        let tls13 = TlsPolicy { min_version: crate::tls::TlsVersion::Tls13, ..TlsPolicy::default() };
        assert_eq!(min_version(&tls13), Some(boring::ssl::SslVersion::TLS1_3));
    }

    #[test]
    fn a_valid_svid_loads_with_its_identity() {
        let ca = Ca::new("mesh CA").unwrap();
        let creds = load(&ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap(), &ca).unwrap();
        assert_eq!(creds.id.to_string(), PAYMENTS);
        assert_eq!(creds.bundle.len(), 1);
    }

    #[test]
    fn unusable_identities_are_refused_saying_what_is_wrong() {
        let ca = Ca::new("mesh CA").unwrap();
        let other_ca = Ca::new("another CA").unwrap();
        let good = ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap();
        let two_uris = LeafSpec {
            uris: vec![PAYMENTS.into(), "spiffe://cluster.local/ns/x/sa/y".into()],
            ..LeafSpec::svid(PAYMENTS, DAY)
        };
        let cases: Vec<(&str, Result<Credentials, String>, &str)> = vec![
            ("expired", load(&ca.issue(&LeafSpec::svid(PAYMENTS, DAY).expired()).unwrap(), &ca), "has expired"),
            (
                "not yet valid",
                load(&ca.issue(&LeafSpec::svid(PAYMENTS, DAY).not_yet_valid()).unwrap(), &ca),
                "not valid yet",
            ),
            (
                "another CA",
                load(&other_ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap(), &ca),
                "does not chain to the trust bundle",
            ),
            (
                "no URI SAN",
                load(&ca.issue(&LeafSpec { uris: vec![], ..LeafSpec::svid(PAYMENTS, DAY) }).unwrap(), &ca),
                "no URI SAN",
            ),
            ("two URI SANs", load(&ca.issue(&two_uris).unwrap(), &ca), "exactly one"),
            (
                "not SPIFFE",
                load(&ca.issue(&LeafSpec::svid("https://payments.example", DAY)).unwrap(), &ca),
                "not a SPIFFE ID",
            ),
            (
                "someone else's key",
                Credentials::from_pem(
                    good.chain_pem.as_bytes(),
                    ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap().key_pem.as_bytes(),
                    ca.bundle_pem().as_bytes(),
                    &TlsPolicy::default(),
                    ignore(),
                ),
                "does not belong",
            ),
            (
                "empty bundle",
                Credentials::from_pem(
                    good.chain_pem.as_bytes(),
                    good.key_pem.as_bytes(),
                    b"",
                    &TlsPolicy::default(),
                    ignore(),
                ),
                "trust bundle",
            ),
            (
                "garbage certificate",
                Credentials::from_pem(
                    b"hello",
                    good.key_pem.as_bytes(),
                    ca.bundle_pem().as_bytes(),
                    &TlsPolicy::default(),
                    ignore(),
                ),
                "identity certificate",
            ),
        ];
        for (what, result, says) in cases {
            match result {
                Ok(c) => panic!("{what}: loaded as {}", c.id),
                Err(e) => assert!(e.contains(says), "{what}: {e:?} should say {says:?}"),
            }
        }
    }

    #[test]
    fn servers_are_accepted_by_exact_identity_or_trust_domain() {
        let ca = Ca::new("mesh CA").unwrap();
        let creds =
            load(&ca.issue(&LeafSpec::svid("spiffe://cluster.local/ns/shop/sa/checkout", DAY)).unwrap(), &ca).unwrap();
        let payments = SpiffeId::parse(PAYMENTS).unwrap();
        let impostor = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/impostor").unwrap();
        let foreign = SpiffeId::parse("spiffe://evil.example/ns/shop/sa/payments").unwrap();
        assert_eq!(creds.accepts(&payments, Some(&payments)), Ok(()));
        assert_eq!(creds.accepts(&impostor, Some(&payments)), Err(Refusal::WrongIdentity));
        assert_eq!(creds.accepts(&impostor, None), Ok(()), "same trust domain");
        assert_eq!(creds.accepts(&foreign, None), Err(Refusal::OtherTrustDomain));
    }
}
