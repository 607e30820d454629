//! What the upstream sides of both tiers share (the edge and the mesh outbound): the default I/O
//! timeout and the consistent-hashing key.

use std::time::Duration;

use pingora::proxy::Session;

use crate::policy::{AlgorithmModel, HashKey};

/// Longest wait for the upstream to send (or accept) more of a response when the route sets no
/// timeout: ingress-nginx's `proxy-read-timeout` default. Pingora's own default is no limit.
pub const DEFAULT_UPSTREAM_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The key consistent hashing uses, borrowed from the request where possible.
pub fn hash_key<'a>(session: &'a Session, algorithm: &AlgorithmModel, ip_buf: &'a mut [u8; 16]) -> &'a [u8] {
    let AlgorithmModel::ConsistentHash(key) = algorithm else { return &[] };
    let req = session.req_header();
    match key {
        HashKey::Header(name) => req.headers.get(name.as_str()).map_or(&[], |v| v.as_bytes()),
        HashKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| kv.trim().strip_prefix(name.as_str())?.strip_prefix('='))
            .map_or(&[], str::as_bytes),
        HashKey::SourceIp => match session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            Some(std::net::IpAddr::V4(ip)) => {
                ip_buf[..4].copy_from_slice(&ip.octets());
                &ip_buf[..4]
            }
            Some(std::net::IpAddr::V6(ip)) => {
                *ip_buf = ip.octets();
                &ip_buf[..]
            }
            None => &[],
        },
    }
}
