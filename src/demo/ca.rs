//! A small certificate authority that issues X.509-SVIDs: the demo's CA (made at start, so
//! `weir demo` needs no files) and the tests' (which also need broken certificates: expired,
//! not yet valid, without a SPIFFE ID).

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::mesh::source::IdentityFiles;

/// A self-signed CA, in memory.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// What to put in an issued certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// URI SANs (an SVID has exactly one, its SPIFFE ID).
    pub uris: Vec<String>,
    /// Validity.
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// An SVID for `spiffe_id`, valid from an hour ago for `valid_for`.
    pub fn svid(spiffe_id: &str, valid_for: Duration) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            uris: vec![spiffe_id.to_string()],
            not_before: now - time::Duration::HOUR,
            not_after: now + valid_for,
        }
    }

    /// Expired an hour ago.
    pub fn expired(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        (self.not_before, self.not_after) = (now - time::Duration::DAY, now - time::Duration::HOUR);
        self
    }

    /// Valid only from tomorrow.
    pub fn not_yet_valid(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        (self.not_before, self.not_after) = (now + time::Duration::DAY, now + 2 * time::Duration::DAY);
        self
    }
}

/// An issued certificate and its key, as PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new CA with a fresh P-256 key, its subject `name`.
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = (now - time::Duration::DAY, now + 365 * time::Duration::DAY);
        Ok(Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)? })
    }

    /// The CA certificate: the trust bundle of whoever trusts this CA.
    pub fn bundle_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a leaf for both TLS sides (server and client authentication).
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names =
            spec.uris.iter().map(|u| Ok(SanType::URI(u.as_str().try_into()?))).collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        (params.not_before, params.not_after) = (spec.not_before, spec.not_after);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { chain_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues an SVID for `spiffe_id` valid for `valid_for` and writes it into `dir` as a mesh
    /// gateway reads it: `tls.crt` (chain), `tls.key`, `ca.crt` (this CA's bundle).
    pub fn write_svid(&self, dir: &Path, spiffe_id: &str, valid_for: Duration) -> anyhow::Result<IdentityFiles> {
        let issued = self.issue(&LeafSpec::svid(spiffe_id, valid_for))?;
        let files = IdentityFiles { cert: dir.join("tls.crt"), key: dir.join("tls.key"), bundle: dir.join("ca.crt") };
        std::fs::write(&files.cert, issued.chain_pem)?;
        std::fs::write(&files.key, issued.key_pem)?;
        std::fs::write(&files.bundle, self.bundle_pem())?;
        Ok(files)
    }
}
