//! Zero failed requests under continuous load (at least 300 req/s) while the cluster changes
//! under weir: a rolling update of the backend Deployment (the endpoint-removal race at each
//! Pod's SIGTERM), a scale-down and scale-up, and a blue-green flip of an HTTPRoute's weights;
//! a certificate Secret rotated on an HTTPS listener; and a 3:1 split that holds while
//! EndpointSlices churn.
//! Against the real control plane; its own test binary, so its own cluster and no other test's
//! load beside it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use weir::app::start_edge;

const CONVERGE: Duration = Duration::from_secs(120);
const HOST: &str = "load.example.com";
/// Clients, each on its keep-alive connection, each sending this many requests a second.
const CLIENTS: usize = 4;
const PER_CLIENT: u32 = 110;
/// The least rate each phase must have run at.
const MIN_RATE: f64 = 300.0;

/// weir's Gateway on `port` and an HTTPRoute for [`HOST`] splitting between `backends` (Service,
/// weight).
fn gateway_and_route(ns: &str, port: u16, backends: &[(&str, u32)]) -> String {
    let refs: Vec<String> =
        backends.iter().map(|(name, weight)| format!("{{name: {name}, port: 8080, weight: {weight}}}")).collect();
    let spec = format!("  hostnames: [{HOST}]\n  rules:\n  - backendRefs: [{}]\n", refs.join(", "));
    cluster_gateway_and_route(ns, port, &spec)
}

/// Continuous load: every request and every failure, and which Pod answered.
#[derive(Default)]
struct Load {
    sent: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Pod name → requests it answered.
    served: Mutex<BTreeMap<String, u64>>,
    /// Pods that answered the last requests, newest last.
    recent: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// Opens a client connection to weir.
type Connect = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, anyhow::Result<H1>> + Send + Sync>;

impl Load {
    /// Plain HTTP to `gateway`, each client on one keep-alive connection.
    fn start(gateway: SocketAddr) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
        Load::start_with(Arc::new(move || Box::pin(H1::connect(gateway))), None)
    }

    /// Connections from `connect`; each client opens a new one every `reconnect_every`
    /// requests, if given (new TLS handshakes, say).
    fn start_with(connect: Connect, reconnect_every: Option<u64>) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
        let load = Arc::new(Load::default());
        let clients = (0..CLIENTS)
            .map(|c| {
                let (load, connect) = (load.clone(), connect.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1) / PER_CLIENT);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut conn = None;
                    let mut mine = 0u64;
                    while !load.stop.load(Ordering::SeqCst) {
                        tick.tick().await;
                        mine += 1;
                        if reconnect_every.is_some_and(|n| mine % n == 0) {
                            conn = None;
                        }
                        if conn.is_none() {
                            conn = connect().await.ok();
                        }
                        let outcome = match conn.as_mut() {
                            Some(h1) => h1.get(HOST, "/who").await,
                            None => Err(anyhow::anyhow!("cannot connect")),
                        };
                        load.sent.fetch_add(1, Ordering::SeqCst);
                        match outcome {
                            Ok(r) if r.status == 200 => {
                                let pod = r.json()["pod"].as_str().unwrap_or_default().to_string();
                                *load.served.lock().unwrap().entry(pod.clone()).or_default() += 1;
                                let mut recent = load.recent.lock().unwrap();
                                recent.push(pod);
                                let excess = recent.len().saturating_sub(40);
                                recent.drain(..excess);
                            }
                            Ok(r) => load.failures.lock().unwrap().push(format!("client {c}: {r}")),
                            Err(e) => {
                                load.failures.lock().unwrap().push(format!("client {c}: {e:#}"));
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        (load, clients)
    }

    /// Runs `phase` (and the load for at least a second), then says how many requests ran
    /// meanwhile and at what rate; panics on any failure.
    async fn through<F: std::future::Future<Output = ()>>(&self, what: &str, phase: F) {
        let (sent, started) = (self.sent.load(Ordering::SeqCst), Instant::now());
        phase.await;
        // a phase weir takes in a blink is still measured over a second of load
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
        let n = self.sent.load(Ordering::SeqCst) - sent;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let failures = self.failures.lock().unwrap().clone();
        eprintln!("{what}: {n} requests in {:.1?} ({rate:.0} req/s), {} failed", started.elapsed(), failures.len());
        assert!(failures.is_empty(), "{what}: {} requests failed:\n{}", failures.len(), failures.join("\n"));
        assert!(rate >= MIN_RATE, "{what}: the load ran at {rate:.0} req/s");
    }

    /// The Pods that answered the last 40 requests.
    fn recent(&self) -> BTreeSet<String> {
        self.recent.lock().unwrap().iter().cloned().collect()
    }
}

/// The names of the running Pods of Deployment `app` (none terminating).
async fn pods(client: &Client, ns: &str, app: &str) -> BTreeSet<String> {
    let list = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

/// Waits until Deployment `app` has rolled out `replicas` ready Pods of its current template and
/// no other Pod is left; returns their names.
async fn rolled_out(client: &Client, ns: &str, app: &str, replicas: i32) -> BTreeSet<String> {
    wait_for(&format!("{app} rolled out with {replicas} ready Pods and no other"), CONVERGE, || async {
        let d = Api::<Deployment>::namespaced(client.clone(), ns).get(app).await.ok()?;
        let s = d.status?;
        let current = s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(replicas)
            && s.ready_replicas == Some(replicas)
            && s.replicas == Some(replicas);
        let pods = pods(client, ns, app).await;
        (current && pods.len() == replicas as usize).then_some(pods)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_through_a_rollout_scaling_a_blue_green_flip_a_split_under_churn_and_a_certificate_rotation() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "load").await;
    let port = free_port();
    apply(&client, &ns, &named_echo_deployment("blue", 2, "1")).await.expect("the blue Deployment");
    apply(&client, &ns, &named_echo_deployment("green", 2, "1")).await.expect("the green Deployment");
    apply(&client, &ns, &gateway_and_route(&ns, port, &[("blue", 100), ("green", 0)])).await.expect("the route");
    let edge = start_edge(edge_on(cluster, &ns)).await.expect("weir edge --source kubernetes");
    let gateway = local(port);
    let blue = rolled_out(&client, &ns, "blue", 2).await;
    rolled_out(&client, &ns, "green", 2).await;
    wait_until("both blue Pods answer", CONVERGE, || async {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            if let Ok(r) = request(gateway).host(HOST).path("/who").try_send().await {
                seen.extend(r.json()["pod"].as_str().map(str::to_string));
            }
        }
        seen == blue
    })
    .await;

    let (load, clients) = Load::start(gateway);
    wait_until("the load runs", CONVERGE, || async { load.sent.load(Ordering::SeqCst) >= 100 }).await;

    // 1. a rolling update: each old Pod is marked terminating, drains for 2 s and exits
    load.through("rolling update", async {
        apply(&client, &ns, &named_echo_deployment("blue", 2, "2")).await.expect("roll blue");
        let new = rolled_out(&client, &ns, "blue", 2).await;
        assert!(new.is_disjoint(&blue), "every Pod was replaced: {blue:?} then {new:?}");
        wait_until("only the new Pods answer", CONVERGE, || async { load.recent() == new }).await;
    })
    .await;

    // 2. down to one Pod, and back to three
    load.through("scale down to 1", async {
        apply(&client, &ns, &named_echo_deployment("blue", 1, "2")).await.expect("scale down");
        let one = rolled_out(&client, &ns, "blue", 1).await;
        wait_until("only the remaining Pod answers", CONVERGE, || async { load.recent() == one }).await;
    })
    .await;
    load.through("scale up to 3", async {
        apply(&client, &ns, &named_echo_deployment("blue", 3, "2")).await.expect("scale up");
        let three = rolled_out(&client, &ns, "blue", 3).await;
        wait_until("all three Pods answer", CONVERGE, || async { load.recent() == three }).await;
    })
    .await;

    // 3. blue-green: the route's weights flip from 100/0 to 0/100
    load.through("blue-green flip", async {
        let green = pods(&client, &ns, "green").await;
        apply(&client, &ns, &gateway_and_route(&ns, port, &[("blue", 0), ("green", 100)])).await.expect("flip");
        wait_until("only green answers", CONVERGE, || async { load.recent() == green }).await;
    })
    .await;

    // 4. a 3:1 split holds while EndpointSlices churn (another Deployment, routed on a host of
    //    its own, scaling up and down: each change moves its pool's endpoints and is a new
    //    generation, which used to start the split over)
    apply(&client, &ns, &named_echo_deployment("noise", 1, "1")).await.expect("the noise Deployment");
    let noise_route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: noise}
spec:
  parentRefs: [{name: gw}]
  hostnames: [noise.example.com]
  rules: [{backendRefs: [{name: noise, port: 8080}]}]
";
    apply(&client, &ns, noise_route).await.expect("the noise route");
    apply(&client, &ns, &gateway_and_route(&ns, port, &[("blue", 3), ("green", 1)])).await.expect("3:1");
    wait_until("both colours answer", CONVERGE, || async {
        let recent = load.recent();
        recent.iter().any(|p| p.starts_with("blue-")) && recent.iter().any(|p| p.starts_with("green-"))
    })
    .await;
    let generation = || edge.generation();
    let (before, generation_before) = (load.served.lock().unwrap().clone(), generation());
    let sent = load.sent.load(Ordering::SeqCst);
    let mut replicas = 1;
    load.through("3:1 split under churn", async {
        while load.sent.load(Ordering::SeqCst) < sent + 1_000 {
            replicas = if replicas == 1 { 3 } else { 1 };
            apply(&client, &ns, &named_echo_deployment("noise", replicas, "1")).await.expect("churn");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    let after = load.served.lock().unwrap().clone();
    let delta = |colour: &str| -> u64 {
        after.iter().filter(|(p, _)| p.starts_with(colour)).map(|(p, n)| n - before.get(p).copied().unwrap_or(0)).sum()
    };
    let (blue_n, green_n) = (delta("blue-"), delta("green-"));
    let share = blue_n as f64 / (blue_n + green_n) as f64;
    eprintln!(
        "3:1 under churn: blue {blue_n}, green {green_n} ({:.1}% blue), {} generations",
        share * 100.0,
        generation() - generation_before
    );
    assert!(
        generation() - generation_before >= 3,
        "the slices churned: {} generations",
        generation() - generation_before
    );
    assert!((0.70..=0.80).contains(&share), "75% ± 5% to blue: {:.1}% ({blue_n}:{green_n})", share * 100.0);

    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    eprintln!("served: {:?}", load.served.lock().unwrap());

    // 5. the certificate Secret of an HTTPS listener is rotated under load over TLS, each
    //    client making a new handshake every 20 requests
    let tls_port = free_port();
    let ca = Ca::new();
    let (first, next) = (ca.leaf(HOST, &[HOST]), ca.leaf(HOST, &[HOST]));
    let secret = |leaf: &Leaf| leaf_secret("cert", leaf).replace("namespace: default", &format!("namespace: {ns}"));
    apply(&client, &ns, &secret(&first)).await.expect("the certificate Secret");
    let https = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: secure}}
spec:
  gatewayClassName: weir-{ns}
  listeners:
  - {{name: https, protocol: HTTPS, port: {tls_port}, tls: {{certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure}}
spec:
  parentRefs: [{{name: secure}}]
  rules: [{{backendRefs: [{{name: green, port: 8080}}]}}]
"
    );
    apply(&client, &ns, &https).await.expect("the HTTPS Gateway");
    let tls = TlsClient::new(local(tls_port), HOST, &ca);
    wait_until("the HTTPS listener serves the first certificate", CONVERGE, || async {
        tls.get(HOST, "/who").await.is_ok_and(|(peer, r)| peer.is(&first) && r.status == 200)
    })
    .await;
    let connect: Connect = {
        let tls = tls.clone();
        Arc::new(move || {
            let tls = tls.clone();
            Box::pin(async move { H1::over(tls.connect().await?).await })
        })
    };
    let (load, clients) = Load::start_with(connect, Some(50));
    wait_until("the TLS load runs", CONVERGE, || async { load.sent.load(Ordering::SeqCst) >= 100 }).await;
    load.through("certificate rotation", async {
        apply(&client, &ns, &secret(&next)).await.expect("rotate the certificate");
        wait_until("new handshakes get the new certificate", CONVERGE, || async {
            tls.peer().await.is_ok_and(|p| p.is(&next))
        })
        .await;
        // and the load keeps handshaking with it for a while
        let sent = load.sent.load(Ordering::SeqCst);
        wait_until("the load runs on", CONVERGE, || async { load.sent.load(Ordering::SeqCst) >= sent + 400 }).await;
    })
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    edge.shutdown().await;
}
