//! Shared harness for weir's integration tests: a real weir ([`TestWeir`]) reading manifests from
//! a temporary directory, real echo upstreams ([`backend`]), manifest builders ([`ingress`],
//! [`weighted_route`], …), a real HTTP client ([`get`], [`request`], [`H1`]), a TLS client and
//! test certificates ([`TlsClient`], [`Ca`]), a `/metrics` reader ([`parse_metrics`], [`metric`])
//! a bounded polling helper ([`wait_until`]), and the test control plane ([`cluster`], [`apply`]).
//!
//! Tests need a multi-thread runtime:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn exact_host_is_routed() {
//!     let (_a, a_yaml) = backend("default", "a").await;
//!     let weir = TestWeir::start(&[("a.yaml", &a_yaml), ("ingress.yaml", INGRESS)]).await;
//!     weir.get("foo.com", "/").await.assert_served_by("a");
//! }
//! ```
#![allow(dead_code)]

mod client;
mod cluster;
mod deploy;
mod manifests;
mod mesh;
mod metrics;
mod tls;

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use deploy::*;
#[allow(unused_imports)]
pub use manifests::*;
#[allow(unused_imports)]
pub use mesh::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use tls::*;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir::app::{start_edge, EdgeHandle, EdgeOptions};

/// Bound for every wait in the harness (weir promises to apply changes within 1 s).
pub const WAIT: Duration = Duration::from_secs(10);

/// Poll `condition` (every 20 ms) until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Poll `probe` (every 20 ms) until it returns `Some`, and return that value; panics with `what`
/// after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 for a Gateway listener (whose port comes from a manifest).
///
/// Ports are taken below the kernel's ephemeral range: a port picked from the ephemeral range
/// (bind port 0, read it, close) can be handed out again to any socket bound to port 0 meanwhile,
/// such as an echo server of a test running in parallel, before weir binds it. Each port is given
/// out once per test process, and only if it can be bound now.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports, see [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_min.max(10_001));
    let span = high - low;
    // Different test processes start at different places.
    let offset = std::process::id().wrapping_mul(7919);
    let mut held = Vec::new();
    for _ in 0..span {
        let port = low + offset.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port as u16)) {
            held.push(listener);
            if held.len() == n {
                return held.iter().map(|l| l.local_addr().expect("local address").port()).collect();
            }
        }
    }
    panic!("no {n} free ports between {low} and {high}");
}

/// `127.0.0.1:<port>`, where weir binds the Gateway listeners of the tests.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Wait until something accepts TCP connections on `addr` (e.g. a Gateway listener).
pub async fn wait_listening(addr: SocketAddr) {
    wait_until(&format!("{addr} accepts connections"), WAIT, || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}

/// A running weir, configured from manifests in its own temporary directory.
///
/// Dropping it shuts weir down (bounded by [`WAIT`]).
pub struct TestWeir {
    /// The plaintext Ingress listener.
    pub http: SocketAddr,
    /// The TLS Ingress listener.
    pub https: SocketAddr,
    /// The admin listener (`/metrics`, `/ready`, `/live`, `/config_dump`).
    pub admin: SocketAddr,
    edge: Option<EdgeHandle>,
    dir: tempfile::TempDir,
}

impl TestWeir {
    /// Write `files` (name, YAML) into a fresh directory, start weir on it with
    /// [`EdgeOptions::local`], and wait until `/ready` answers 200.
    pub async fn start(files: &[(&str, &str)]) -> TestWeir {
        Self::start_with(files, |_| {}).await
    }

    /// Start echo servers `names` with their Services in `default` ([`backends`], written to
    /// `backends.yaml`) and weir on them plus `files`.
    pub async fn with_backends(names: &[&str], files: &[(&str, &str)]) -> (Backends, TestWeir) {
        let backends = backends("default", names).await;
        let mut all = vec![("backends.yaml", backends.yaml.as_str())];
        all.extend_from_slice(files);
        let weir = TestWeir::start(&all).await;
        (backends, weir)
    }

    /// Like [`TestWeir::start`], letting `configure` change the options first.
    pub async fn start_with(files: &[(&str, &str)], configure: impl FnOnce(&mut EdgeOptions)) -> TestWeir {
        let dir = tempfile::tempdir().expect("temporary config directory");
        for (name, yaml) in files {
            write_atomically(dir.path(), name, yaml);
        }
        let mut opts = EdgeOptions::local(dir.path());
        configure(&mut opts);
        let edge = start_edge(opts).await.expect("weir starts");
        let weir =
            TestWeir { http: edge.http_addr, https: edge.https_addr, admin: edge.admin_addr, edge: Some(edge), dir };
        let admin = weir.admin;
        wait_until("weir's /ready answers 200", WAIT, || async move {
            matches!(request(admin).path("/ready").try_send().await, Ok(r) if r.status == 200)
        })
        .await;
        weir
    }

    /// The snapshot serving traffic.
    pub fn snapshot(&self) -> std::sync::Arc<weir::snapshot::Snapshot> {
        self.edge.as_ref().expect("weir is running").snapshot()
    }

    /// The directory weir watches.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Write (or replace) the manifest file `name` atomically (write + rename), without waiting.
    /// Common indentation is removed (see [`dedent`]).
    pub fn write(&self, name: &str, yaml: &str) {
        write_atomically(self.dir.path(), name, yaml);
    }

    /// Remove the manifest file `name`, without waiting.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(name)).expect("remove manifest file");
    }

    /// Write `name` and wait until weir has applied a new configuration.
    pub async fn apply(&self, name: &str, yaml: &str) {
        let before = self.generation().await;
        self.write(name, yaml);
        self.wait_generation_after(before).await;
    }

    /// Remove `name` and wait until weir has applied a new configuration.
    pub async fn delete(&self, name: &str) {
        let before = self.generation().await;
        self.remove(name);
        self.wait_generation_after(before).await;
    }

    /// The configuration generation weir reports in `/config_dump`.
    pub async fn generation(&self) -> u64 {
        generation_of(&self.config_dump().await)
    }

    /// Poll `/config_dump` until its generation is greater than `generation`; returns the new one.
    pub async fn wait_generation_after(&self, generation: u64) -> u64 {
        let what = format!("weir applies a configuration newer than generation {generation}");
        wait_for(&what, WAIT, || async move {
            let now = generation_of(&self.config_dump().await);
            (now > generation).then_some(now)
        })
        .await
    }

    /// `GET /config_dump` on the admin listener, as JSON.
    pub async fn config_dump(&self) -> Value {
        request(self.admin).path("/config_dump").send().await.assert_status(200).json()
    }

    /// The status `/config_dump` shows for object `kind` `namespace/name` (its conditions, and a
    /// route's parents or a Gateway's listeners); panics, with the dump, if it has none.
    pub async fn status(&self, kind: &str, namespace: &str, name: &str) -> Value {
        let dump = self.config_dump().await;
        let statuses = dump["statuses"].as_array().cloned().unwrap_or_default();
        statuses
            .into_iter()
            .find(|s| s["kind"] == kind && s["namespace"] == namespace && s["name"] == name)
            .unwrap_or_else(|| panic!("no status for {kind} {namespace}/{name}: {dump:#}"))
    }

    /// The `rejections` array of `/config_dump`.
    pub async fn rejections(&self) -> Vec<Value> {
        let dump = self.config_dump().await;
        match dump.get("rejections").and_then(Value::as_array) {
            Some(list) => list.clone(),
            None => panic!("/config_dump has no rejections array: {dump}"),
        }
    }

    /// The rejection of the object `kind` `namespace/name`, if weir rejected it.
    pub async fn rejection(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.rejections()
            .await
            .into_iter()
            .find(|r| r["kind"] == kind && r["namespace"] == namespace && r["name"] == name)
    }

    /// The rejection of the object `kind` `namespace/name`; panics, listing every rejection, if
    /// there is none.
    pub async fn expect_rejection(&self, kind: &str, namespace: &str, name: &str) -> Value {
        let all = self.rejections().await;
        all.iter()
            .find(|r| r["kind"] == kind && r["namespace"] == namespace && r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("expected a rejection of {kind} {namespace}/{name}; rejections: {all:#?}"))
    }

    /// `GET /metrics` on the admin listener, as text.
    pub async fn metrics(&self) -> String {
        request(self.admin).path("/metrics").send().await.assert_status(200).text()
    }

    /// The address of weir's Gateway listener on `port`, once it accepts connections. Panics if
    /// `/config_dump` reports that weir could not bind it (e.g. someone else holds the port).
    pub async fn gateway_listener(&self, port: u16) -> SocketAddr {
        let dump = self.config_dump().await;
        let listeners = dump["listeners"].as_array().cloned().unwrap_or_default();
        for listener in &listeners {
            let on_port = listener["address"].as_str().is_some_and(|a| a.ends_with(&format!(":{port}")));
            if on_port && !listener["bindError"].is_null() {
                panic!("weir could not bind its Gateway listener on port {port}: {listener}");
            }
        }
        let addr = local(port);
        wait_listening(addr).await;
        addr
    }

    /// `GET http://<host><path>` on the plaintext Ingress listener.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        get(self.http, host, path).await
    }

    /// A request builder aimed at the plaintext Ingress listener.
    pub fn request(&self) -> RequestBuilder {
        request(self.http)
    }

    /// Shut weir down and wait for it.
    pub async fn shutdown(mut self) {
        if let Some(edge) = self.edge.take() {
            edge.shutdown().await;
        }
    }

    /// Stop accepting and wait up to `grace` for open connections to finish, as on SIGTERM;
    /// returns the connections still open then.
    pub async fn drain(mut self, grace: Duration) -> usize {
        match self.edge.take() {
            Some(edge) => edge.drain(grace).await,
            None => 0,
        }
    }
}

impl Drop for TestWeir {
    fn drop(&mut self) {
        let Some(edge) = self.edge.take() else { return };
        // Shut down properly when dropped at the end of a test body on a multi-thread runtime;
        // otherwise (panicking, no runtime) just drop the handle.
        if std::thread::panicking() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        tokio::task::block_in_place(|| {
            runtime.block_on(async {
                let _ = tokio::time::timeout(WAIT, edge.shutdown()).await;
            })
        });
    }
}

fn generation_of(dump: &Value) -> u64 {
    dump.get("generation")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("/config_dump has no numeric generation: {dump}"))
}

fn write_atomically(dir: &Path, name: &str, yaml: &str) {
    let target: PathBuf = dir.join(name);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).expect("create manifest directory");
    }
    // Not *.yaml, so weir never reads a half-written file.
    let file_name = target.file_name().expect("manifest file name").to_string_lossy();
    let tmp = target.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, dedent(yaml)).expect("write manifest");
    std::fs::rename(&tmp, &target).expect("rename manifest into place");
}
