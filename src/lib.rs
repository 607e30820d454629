//! weir: a Kubernetes edge and mesh proxy built on Cloudflare's Pingora.
//!
//! Data flows one way: a source (a directory of manifests, later the Kubernetes API) fills the
//! [`store`]; [`translate`] turns the store into an immutable [`snapshot::Snapshot`] plus a list
//! of rejected objects; the snapshot is published through one `ArcSwap` and read once per request
//! by the [`proxy`]. Upstream [`pool`]s live beside the snapshot so health state survives changes.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod config;
pub mod demo;
pub mod mesh;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod resilience;
pub mod routing;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod translate;
pub mod validate;
