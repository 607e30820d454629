//! The config path under cluster churn: many Services with their EndpointSlices in the real
//! apiserver (the test control plane), EndpointSlice changes at a steady rate, and weir edge
//! (the release binary, its own process) serving routes to all of them. Measured: the share of a
//! core weir spends (churn alone, no traffic), how long from an EndpointSlice write to the first
//! request served by the new endpoint (p50, p99), and weir's RSS. The same with the directory
//! source (the same objects as files, rewritten at the same rate) for comparison.
//!
//! `cargo bench --bench churn`: 5,000 Services, 20,000 endpoints, 100 changes/s (targets:
//! convergence p99 < 100 ms, config path < 20% of a core, RSS < 150 MiB). Without `--bench`
//! (`cargo test --benches`) a small run, so that it cannot rot.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

struct Size {
    services: usize,
    endpoints: usize,
    /// EndpointSlice changes per second.
    rate: u64,
    /// Churn alone, for the CPU share.
    quiet: Duration,
    /// Convergence samples (one endpoint flip each, under churn).
    samples: usize,
}

const FULL: Size = Size { services: 5_000, endpoints: 4, rate: 100, quiet: Duration::from_secs(20), samples: 100 };
const SMALL: Size = Size { services: 40, endpoints: 4, rate: 20, quiet: Duration::from_secs(2), samples: 5 };

/// Rules per HTTPRoute (one path per Service).
const RULES_PER_ROUTE: usize = 10;
const PROBE_HOST: &str = "probe.example.com";

fn service(ns: &str, name: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{namespace: {ns}, name: {name}}}\nspec: {{ports: [{{name: http, port: 8080, targetPort: 3000}}]}}\n")
}

/// The EndpointSlice of Service `name`: `ips` on port 3000.
fn slice(ns: &str, name: &str, ips: &[String]) -> String {
    let eps: Vec<String> =
        ips.iter().map(|ip| format!("{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}")).collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  namespace: {ns}\n  name: {name}-1\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 3000}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

/// Fake endpoint addresses (never dialed: no route sends traffic to them).
fn fake_ips(service: usize, generation: u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|e| format!("10.{}.{}.{}", 100 + (generation % 100), (service / 250) % 250, (service % 250) * 4 % 250 + e))
        .collect()
}

/// The routes: `RULES_PER_ROUTE` Services each, by path, plus the probe's.
fn routes(ns: &str, services: usize, port: u16) -> Vec<String> {
    let class = cluster_class(ns);
    let mut docs = vec![format!(
        "{class}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{namespace: {ns}, name: gw}}\nspec:\n  gatewayClassName: weir-{ns}\n  listeners: [{{name: http, protocol: HTTP, port: {port}}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: {ns}, name: probe}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{PROBE_HOST}]\n  rules: [{{backendRefs: [{{name: probe, port: 8080}}]}}]\n"
    )];
    for r in 0..services.div_ceil(RULES_PER_ROUTE) {
        let rules: Vec<String> = (r * RULES_PER_ROUTE..((r + 1) * RULES_PER_ROUTE).min(services))
            .map(|i| format!("  - matches: [{{path: {{type: PathPrefix, value: /svc-{i}}}}}]\n    backendRefs: [{{name: svc-{i}, port: 8080}}]\n"))
            .collect();
        docs.push(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: {ns}, name: r-{r}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [svc.example.com]\n  rules:\n{}",
            rules.concat()
        ));
    }
    docs
}

/// weir edge, the release binary, in its own process.
struct Weir {
    child: Child,
}

impl Weir {
    /// `profile`: `release` to measure, `debug` for the small run (scripts/test builds it);
    /// `WEIR_BIN` names another build.
    fn start(source: &[&str], admin: u16, profile: &str) -> Weir {
        let bin = std::env::var_os("WEIR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(profile).join("weir"));
        assert!(
            bin.exists(),
            "build weir first: cargo build {} --bin weir ({})",
            if profile == "release" { "--release" } else { "" },
            bin.display()
        );
        let admin = format!("127.0.0.1:{admin}");
        let child = Command::new(bin)
            .arg("edge")
            .args(source)
            .args([
                "--http",
                "127.0.0.1:0",
                "--https",
                "127.0.0.1:0",
                "--gateway-address",
                "127.0.0.1",
                "--admin",
                &admin,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start weir");
        Weir { child }
    }

    /// CPU seconds (user + system) so far.
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0 // utime and stime, at 100 ticks a second
    }

    /// Resident memory now and at its peak, MiB.
    fn rss(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a change is written: to the apiserver or to the config directory.
#[derive(Clone)]
enum Writer {
    Api(Client, String),
    Dir(PathBuf),
}

impl Writer {
    /// Writes the EndpointSlice of `name` with `ips`.
    async fn slice(&self, name: &str, ips: &[String]) {
        match self {
            Writer::Api(client, ns) => {
                let yaml = slice(ns, name, ips);
                let obj: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
                let api = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(client.clone(), ns);
                let params = PatchParams::apply(FIELD_MANAGER).force();
                api.patch(&format!("{name}-1"), &params, &Patch::Apply(&obj)).await.expect("write an EndpointSlice");
            }
            Writer::Dir(dir) => {
                let ns = "churn";
                let text = format!("{}---\n{}", service(ns, name), slice(ns, name, ips));
                let aside = dir.join(format!(".{name}.tmp"));
                std::fs::write(&aside, text).unwrap();
                std::fs::rename(&aside, dir.join(format!("{name}.yaml"))).unwrap();
            }
        }
    }
}

/// The echo Pod that answers a probe request, if one does.
async fn answered_by(gateway: SocketAddr) -> Option<String> {
    let r = request(gateway).host(PROBE_HOST).path("/").try_send().await.ok()?;
    (r.status == 200).then(|| r.json()["pod"].as_str().map(str::to_string)).flatten()
}

struct Figures {
    cpu_share: f64,
    changes_per_s: f64,
    p50: Duration,
    p99: Duration,
    rss: (f64, f64),
}

/// Churns `services` slices at `size.rate` while `measure` runs.
async fn measure(writer: &Writer, weir: &Weir, gateway: SocketAddr, pods: &[(String, String)], size: &Size) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let churn = {
        let (writer, stop, changes) = (writer.clone(), stop.clone(), changes.clone());
        let (services, endpoints, rate) = (size.services, size.endpoints, size.rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let i = (n as usize * 7919) % services;
                writer.slice(&format!("svc-{i}"), &fake_ips(i, n, endpoints)).await;
                changes.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // churn alone: the config path's CPU
    let (cpu0, t0, c0) = (weir.cpu(), Instant::now(), changes.load(Ordering::SeqCst));
    tokio::time::sleep(size.quiet).await;
    let cpu_share = (weir.cpu() - cpu0) / t0.elapsed().as_secs_f64();
    let changes_per_s = (changes.load(Ordering::SeqCst) - c0) as f64 / t0.elapsed().as_secs_f64();
    // under churn: from a write to the first request the new endpoint answers
    let mut took = vec![];
    for s in 0..size.samples {
        let (ip, pod) = &pods[(s + 1) % 2];
        let written = Instant::now();
        writer.slice("probe", std::slice::from_ref(ip)).await;
        loop {
            if answered_by(gateway).await.as_deref() == Some(pod.as_str()) {
                took.push(written.elapsed());
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(30), "sample {s}: {pod} never answered");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    churn.await.unwrap();
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    Figures { cpu_share, changes_per_s, p50: at(0.5), p99: at(0.99), rss: weir.rss() }
}

fn report(what: &str, f: &Figures) {
    println!(
        "{what:<11} config path {:>5.1}% of a core at {:>5.1} changes/s; write -> served p50 {:>6.1} ms, p99 {:>6.1} ms; RSS {:.1} MiB (peak {:.1})",
        f.cpu_share * 100.0,
        f.changes_per_s,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.rss.0,
        f.rss.1
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full { FULL } else { SMALL };
    println!(
        "churn: {} Services, {} endpoints, {} EndpointSlice changes/s{}",
        size.services,
        size.services * size.endpoints,
        size.rate,
        if full { "" } else { " (test mode; `cargo bench --bench churn` for the full size)" }
    );
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "churn").await;
    // two echo Pods: the probe Service's endpoint flips between them
    apply(&client, &ns, &named_echo_deployment("probe-pods", 2, "1")).await.expect("the echo Deployment");
    let pods = wait_for("two ready echo Pods", Duration::from_secs(120), || async {
        let list = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app=probe-pods"))
            .await
            .ok()?;
        let ready: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| Some((p.status.as_ref()?.pod_ip.clone()?, p.metadata.name.clone()?)))
            .collect();
        (ready.len() == 2).then_some(ready)
    })
    .await;

    // the objects, in the apiserver and as files
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut docs: Vec<String> = (0..size.services)
        .map(|i| {
            format!(
                "{}---\n{}",
                service(&ns, &format!("svc-{i}")),
                slice(&ns, &format!("svc-{i}"), &fake_ips(i, 0, size.endpoints))
            )
        })
        .collect();
    docs.push(format!("{}---\n{}", service(&ns, "probe"), slice(&ns, "probe", &[pods[0].0.clone()])));
    docs.extend(routes(&ns, size.services, port));
    stream::iter(docs.iter())
        .for_each_concurrent(32, |doc| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                apply(&client, &ns, doc).await.expect("create the objects");
            }
        })
        .await;
    println!("created {} objects in {:.1?}", docs.len() * 2, started.elapsed());
    for (i, doc) in docs.iter().enumerate() {
        std::fs::write(
            dir.path().join(format!("{i}.yaml")),
            doc.replace(&format!("namespace: {ns}"), "namespace: churn").replace(&format!("weir-{ns}"), "weir-churn"),
        )
        .unwrap();
    }
    // the dir's per-Service files are rewritten by name: move them to those names
    for i in 0..size.services {
        std::fs::rename(dir.path().join(format!("{i}.yaml")), dir.path().join(format!("svc-{i}.yaml"))).unwrap();
    }
    std::fs::rename(dir.path().join(format!("{}.yaml", size.services)), dir.path().join("probe.yaml")).unwrap();

    let gateway = local(port);
    let mut results = BTreeMap::new();
    for source in ["kubernetes", "directory"] {
        let admin = free_port();
        let kubeconfig = cluster.kubeconfig.display().to_string();
        let dir_arg = dir.path().display().to_string();
        let (args, writer): (Vec<&str>, Writer) = match source {
            "kubernetes" => (
                vec!["--source", "kubernetes", "--kubeconfig", &kubeconfig, "--watch-namespace", &ns],
                Writer::Api(client.clone(), ns.clone()),
            ),
            _ => (vec!["--config-dir", &dir_arg], Writer::Dir(dir.path().to_path_buf())),
        };
        let weir = Weir::start(&args, admin, if full { "release" } else { "debug" });
        let up = Instant::now();
        wait_until(&format!("weir ({source}) serves the probe"), Duration::from_secs(300), || async {
            answered_by(gateway).await.is_some()
        })
        .await;
        println!("{source}: serving all routes {:.1?} after start", up.elapsed());
        // the probe starts on the first Pod
        writer.slice("probe", std::slice::from_ref(&pods[0].0)).await;
        wait_until("the probe is on the first Pod", Duration::from_secs(60), || async {
            answered_by(gateway).await.as_deref() == Some(pods[0].1.as_str())
        })
        .await;
        let figures = measure(&writer, &weir, gateway, &pods, &size).await;
        report(source, &figures);
        results.insert(source, figures);
    }
    if full {
        let k = &results["kubernetes"];
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "targets (kubernetes): convergence p99 < 100 ms: {}; config path < 20% of a core: {}; RSS < 150 MiB: {}",
            met(k.p99 < Duration::from_millis(100)),
            met(k.cpu_share < 0.2),
            met(k.rss.1 < 150.0)
        );
    }
}
