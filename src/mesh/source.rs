//! Where the mesh identity comes from: three PEM files (certificate chain, key, trust bundle),
//! watched, as a Kubernetes Secret volume or cert-manager's csi-driver presents them.
//!
//! A change is loaded as one set; a set that fails to load (a half-written file, a key that does
//! not match, an expired certificate) is reported and the last good set keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::identity::{Credentials, OnRefusal};
use crate::source::dir::Changes;

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
    pub fn load(&self, on_refusal: OnRefusal) -> Result<Credentials, String> {
        let (cert, key, bundle) = self.read()?;
        Credentials::from_pem(&cert, &key, &bundle, on_refusal)
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

/// Loads the identity (failing if it cannot be loaded at start), then keeps it current: a change
/// in the files' directories reloads the set when the files' contents differ from the last set
/// seen (other files there, such as a log, change nothing).
pub fn watch_identity(
    files: IdentityFiles,
    on_refusal: OnRefusal,
    on_reload: OnReload,
) -> Result<Arc<ArcSwap<Credentials>>, String> {
    let mut seen = files.read()?;
    let first = Credentials::from_pem(&seen.0, &seen.1, &seen.2, on_refusal.clone())?;
    let current = Arc::new(ArcSwap::from_pointee(first));
    let dirs = files.dirs();
    let mut changes = Changes::watch(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>())
        .map_err(|e| format!("cannot watch the identity files: {e}"))?;
    let serving = current.clone();
    tokio::spawn(async move {
        while changes.next().await.is_some() {
            let loaded = match files.read() {
                Ok(contents) if contents == seen => {
                    on_reload(Reload::Unchanged);
                    continue;
                }
                Ok(contents) => {
                    let loaded = Credentials::from_pem(&contents.0, &contents.1, &contents.2, on_refusal.clone());
                    seen = contents;
                    loaded
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(creds) => {
                    on_reload(Reload::Loaded(&creds));
                    serving.store(Arc::new(creds));
                }
                Err(e) => on_reload(Reload::Refused(&e)),
            }
        }
    });
    Ok(current)
}
