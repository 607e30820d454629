//! The edge's `ProxyHttp` and the listeners feeding it, and the rooms both tiers share: draining,
//! request filters and path normalization, upstream defaults, and weir's own answers.

pub mod answer;
pub mod buffered;
pub mod decide;
pub mod drain;
pub mod edge;
pub mod filters;
pub mod listeners;
pub mod mirror;
pub mod passthrough;
pub mod rewrite;
pub mod upstream;

pub use edge::EdgeProxy;
