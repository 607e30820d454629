//! Where the mesh identity comes from: three PEM files (certificate chain, key, trust bundle),
//! watched, as a Kubernetes Secret volume or cert-manager's csi-driver presents them; or a Secret
//! object of the config dir (`tls.crt`, `tls.key`, `ca.crt`).
//!
//! A change is loaded as one set; a set that fails to load (a half-written file, a key that does
//! not match, an expired certificate) is reported and the last good set keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::identity::{Credentials, OnRefusal};
use crate::source::dir::Changes;
use crate::store::Store;
use crate::tls::TlsPolicy;
use crate::translate::tls::secret_field;

/// The files of one identity.
#[derive(Clone, Debug)]
pub struct IdentityFiles {
    /// The SVID's certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates of the trust domain (several during a CA rotation).
    pub bundle: PathBuf,
}

impl IdentityFiles {
    /// Reads and checks the three files.
    pub fn load(&self, tls: &TlsPolicy, on_refusal: OnRefusal) -> Result<Credentials, String> {
        let (cert, key, bundle) = self.read()?;
        Credentials::from_pem(&cert, &key, &bundle, tls, on_refusal)
    }

    /// The three files' contents.
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), String> {
        let read =
            |what: &str, p: &Path| std::fs::read(p).map_err(|e| format!("cannot read the {what} {}: {e}", p.display()));
        Ok((
            read("identity certificate", &self.cert)?,
            read("identity key", &self.key)?,
            read("trust bundle", &self.bundle)?,
        ))
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [&self.cert, &self.key, &self.bundle]
            .iter()
            .map(|p| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// What a change in the identity's directories led to.
pub enum Reload<'a> {
    /// A new set is serving.
    Loaded(&'a Credentials),
    /// The new files were refused (why); the last good set keeps serving.
    Refused(&'a str),
    /// Something changed there, but not the three files (say, a log written beside them).
    Unchanged,
}

/// Called after each change.
pub type OnReload = Arc<dyn Fn(Reload) + Send + Sync>;

/// The three PEM contents of an identity: certificate chain, key, trust bundle.
type Contents = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The identity serving, the contents it came from, and what to tell of changes. Shared by the
/// file and the Secret sources.
struct Watched {
    seen: Contents,
    current: Arc<ArcSwap<Credentials>>,
    /// The inbound listener's TLS policy, for each identity loaded.
    tls: TlsPolicy,
    on_refusal: OnRefusal,
    on_reload: OnReload,
}

impl Watched {
    /// The first identity: it must load.
    fn start(
        contents: Result<Contents, String>,
        tls: TlsPolicy,
        on_refusal: OnRefusal,
        on_reload: OnReload,
    ) -> Result<Watched, String> {
        let seen = contents?;
        let first = Credentials::from_pem(&seen.0, &seen.1, &seen.2, &tls, on_refusal.clone())?;
        Ok(Watched { seen, current: Arc::new(ArcSwap::from_pointee(first)), tls, on_refusal, on_reload })
    }

    /// New contents (or why they could not be read): loaded and served if they differ from the
    /// last seen and are valid; a refused set leaves the last good one serving.
    fn offer(&mut self, contents: Result<Contents, String>) {
        let loaded = match contents {
            Ok(contents) if contents == self.seen => return (self.on_reload)(Reload::Unchanged),
            Ok(contents) => {
                let loaded =
                    Credentials::from_pem(&contents.0, &contents.1, &contents.2, &self.tls, self.on_refusal.clone());
                self.seen = contents;
                loaded
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok(creds) => {
                (self.on_reload)(Reload::Loaded(&creds));
                self.current.store(Arc::new(creds));
            }
            Err(e) => (self.on_reload)(Reload::Refused(&e)),
        }
    }
}

/// Loads the identity (failing if it cannot be loaded at start), then keeps it current: a change
/// in the files' directories reloads the set when the files' contents differ from the last set
/// seen (other files there, such as a log, change nothing).
pub fn watch_identity(
    files: IdentityFiles,
    tls: TlsPolicy,
    on_refusal: OnRefusal,
    on_reload: OnReload,
) -> Result<Arc<ArcSwap<Credentials>>, String> {
    let mut watched = Watched::start(files.read(), tls, on_refusal, on_reload)?;
    let current = watched.current.clone();
    let dirs = files.dirs();
    // any file there: the identity's files, or the atomic writer's swap of them
    let mut changes = Changes::watch(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(), |_| true)
        .map_err(|e| format!("cannot watch the identity files: {e}"))?;
    tokio::spawn(async move {
        while changes.next().await.is_some() {
            watched.offer(files.read());
        }
    });
    Ok(current)
}

/// The identity in a Secret of the config dir, `tls.crt`, `tls.key` and `ca.crt` (the keys
/// cert-manager writes), reloaded when the Secret changes.
pub struct SecretIdentity {
    namespace: String,
    name: String,
    watched: Watched,
}

impl SecretIdentity {
    /// Loads the identity from Secret `namespace/name` in `store`; it must be there and valid.
    pub fn load(
        store: &Store,
        namespace: &str,
        name: &str,
        tls: TlsPolicy,
        on_refusal: OnRefusal,
        on_reload: OnReload,
    ) -> Result<SecretIdentity, String> {
        let watched = Watched::start(secret_contents(store, namespace, name), tls, on_refusal, on_reload)?;
        Ok(SecretIdentity { namespace: namespace.into(), name: name.into(), watched })
    }

    /// The identity serving.
    pub fn current(&self) -> Arc<ArcSwap<Credentials>> {
        self.watched.current.clone()
    }

    /// Takes the Secret's version in `store` (a change to anything else reloads nothing).
    pub fn update(&mut self, store: &Store) {
        let contents = secret_contents(store, &self.namespace, &self.name);
        if contents.as_ref().ok() != Some(&self.watched.seen) {
            self.watched.offer(contents);
        }
    }
}

fn secret_contents(store: &Store, namespace: &str, name: &str) -> Result<Contents, String> {
    let key = (namespace.to_string(), name.to_string());
    let secret = store.secrets.get(&key).ok_or_else(|| {
        format!("no Secret {namespace}/{name} in the source (it holds the mesh identity: tls.crt, tls.key, ca.crt)")
    })?;
    let field = |k| secret_field(&secret.object, k).map_err(|e| format!("Secret {namespace}/{name}: {e}"));
    Ok((field("tls.crt")?, field("tls.key")?, field("ca.crt")?))
}
