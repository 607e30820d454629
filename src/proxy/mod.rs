//! The `ProxyHttp` implementations (edge today; mesh later) and the listeners feeding them.

pub mod buffered;
pub mod drain;
pub mod edge;
pub mod filters;
pub mod listeners;
pub mod rewrite;

pub use edge::EdgeProxy;
