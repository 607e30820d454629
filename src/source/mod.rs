//! Where objects come from. Today: a directory of manifests ([`dir`]); the Kubernetes API
//! watcher will fill the same [`crate::store::Store`].

pub mod dir;
pub mod manifest;
