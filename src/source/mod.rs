//! Where objects come from: a directory of manifests ([`dir`]) or the Kubernetes API server
//! ([`kubernetes`]), filling the same [`crate::store::Store`].

pub mod dir;
pub mod kubernetes;
pub mod manifest;

use std::path::PathBuf;

/// Where a tier's configuration comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A directory of manifests, watched (`--config-dir`).
    Dir(PathBuf),
    /// The API server (`--source kubernetes`).
    Kubernetes(kubernetes::KubeSource),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Dir(dir) => write!(f, "the directory {}", dir.display()),
            ConfigSource::Kubernetes(k) if k.namespaces.is_empty() => f.write_str("Kubernetes, every namespace"),
            ConfigSource::Kubernetes(k) => write!(f, "Kubernetes, namespaces {}", k.namespaces.join(", ")),
        }
    }
}
