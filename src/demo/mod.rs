//! `weir demo`: the quickstart on one machine. Starts a demo backend (an [`EchoServer`]
//! answering with its Service's name) on every address of every EndpointSlice, the mesh story
//! ([`mesh`]: checkout calling payments through mesh gateways), starts the edge, sends a burst
//! through the weighted split and one through the mesh to show them working, prints what
//! happened and what to try, and runs until Ctrl-C.
//!
//! Code only the demo and the tests use lives here: the echo backends ([`echo`]) and the
//! certificate authority that issues mesh identities ([`ca`]).

pub mod ca;
pub mod echo;
pub mod mesh;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::app::{start_edge, EdgeOptions};
use crate::config::DemoArgs;
use crate::demo::echo::EchoServer;
use crate::snapshot::Snapshot;
use crate::source::dir::DirLoader;
use crate::translate::Protocol;

/// Requests in the demo's burst through each Gateway route.
pub const BURST: usize = 100;

/// Requests in the demo's burst through the mesh.
pub const MESH_BURST: u64 = 300;
/// The host whose `/api` goes to checkout (conf/quickstart/40-mesh.yaml).
pub const MESH_HOST: &str = "shop.example.com";

/// Starts an echo backend for every endpoint in the manifests (but the mesh story's own).
async fn start_backends(store: &crate::store::Store) -> anyhow::Result<Vec<EchoServer>> {
    let mut servers = vec![];
    for stored in store.endpoint_slices.values() {
        let slice = &stored.object;
        let name = crate::store::service_of(slice).or(slice.metadata.name.as_deref()).unwrap_or_default().to_string();
        if mesh::SERVICES.contains(&name.as_str()) {
            continue;
        }
        for port in slice.ports.iter().flatten().filter_map(|p| p.port) {
            for ep in &slice.endpoints {
                for a in &ep.addresses {
                    let ip: IpAddr = a.parse().with_context(|| format!("EndpointSlice address {a} is not an IP"))?;
                    let addr = SocketAddr::new(ip, port as u16);
                    let server = EchoServer::start(&name, addr)
                        .await
                        .with_context(|| format!("cannot start the demo backend {name} on {addr}"))?;
                    servers.push(server);
                }
            }
        }
    }
    Ok(servers)
}

/// One GET over a fresh HTTP/1.1 connection; returns the status and the backend's name.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path).header("host", host).body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let name = resp.headers().get("x-echo-name").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let _ = resp.into_body().collect().await;
    Ok((status, name))
}

/// Sends a burst to every Gateway host and prints how it was split.
async fn burst(snap: &Snapshot) {
    for l in snap.listeners.values().filter(|l| l.name.starts_with("gateway:") && l.protocol == Protocol::Http) {
        for vh in l.router.virtual_hosts() {
            let host = vh.pattern.display().replace('*', "demo");
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..BURST {
                let key = match get(l.addr_for_clients(), &host, "/").await {
                    Ok((200, name)) => name,
                    Ok((status, _)) => format!("HTTP {status}"),
                    Err(e) => format!("error: {e}"),
                };
                *counts.entry(key).or_default() += 1;
            }
            let split: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  {BURST} requests to http://{host}:{}/ went to: {}", l.addr.port(), split.join(", "));
        }
    }
}

/// The address of the Gateway HTTP listener serving `host`.
pub fn gateway_for(snap: &Snapshot, host: &str) -> Option<SocketAddr> {
    snap.listeners
        .values()
        .filter(|l| l.name.starts_with("gateway:") && l.protocol == Protocol::Http)
        .find(|l| l.router.virtual_hosts().iter().any(|vh| vh.pattern.display() == host))
        .map(|l| l.addr_for_clients())
}

trait ClientAddr {
    fn addr_for_clients(&self) -> SocketAddr;
}

impl ClientAddr for crate::snapshot::Listener {
    /// A listener bound to 0.0.0.0 is reached on loopback.
    fn addr_for_clients(&self) -> SocketAddr {
        if self.addr.ip().is_unspecified() {
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), self.addr.port())
        } else {
            self.addr
        }
    }
}

fn print_tries(snap: &Snapshot, admin: SocketAddr, config_dir: &std::path::Path) {
    println!("\nTry:");
    let mut listeners: Vec<_> = snap.listeners.values().collect();
    listeners.sort_by_key(|l| l.addr.port());
    for l in listeners {
        let addr = l.addr_for_clients();
        for vh in l.router.virtual_hosts() {
            let host = vh.pattern.display().replace('*', "demo");
            let host = if host == "demo" { "anything.example".to_string() } else { host };
            match l.protocol {
                Protocol::Http => println!("  curl -si -H 'Host: {host}' http://{addr}/"),
                Protocol::Https | Protocol::TlsPassthrough => println!(
                    "  curl -sk --resolve {host}:{port}:{ip} https://{host}:{port}/",
                    port = addr.port(),
                    ip = addr.ip()
                ),
            }
        }
    }
    if let Some(addr) = gateway_for(snap, MESH_HOST) {
        println!("  curl -si -H 'Host: {MESH_HOST}' http://{addr}/api/checkout      # through the mesh");
    }
    println!("  curl -s http://{admin}/metrics | grep weir_requests_total");
    println!("  curl -s http://{admin}/config_dump");
    println!("\nweir is running; edit the manifests in {} and watch them apply. Ctrl-C stops.", config_dir.display());
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let store = DirLoader::default()
        .load(&args.config_dir)
        .with_context(|| format!("cannot read {}; run the demo from the repository root", args.config_dir.display()))?;
    let servers = start_backends(&store).await?;
    println!("weir demo: {} demo backends started", servers.len());
    for s in &servers {
        println!("  {} on {}", s.name(), s.addr());
    }
    let story = mesh::MeshStory::start(&store, &args.config_dir, mesh::GatewayPorts::default())
        .await
        .context("the mesh story (checkout and payments pods on 127.0.0.2-4)")?;
    let handle =
        start_edge(EdgeOptions::from_args(crate::source::ConfigSource::Dir(args.config_dir.clone()), &args.listen))
            .await?;
    let snap = handle.snapshot();
    for r in snap.rejections.iter() {
        println!("  rejected: {r}");
    }
    println!(
        "\nThe edge serves Ingress on {} and {} (TLS); admin on {}.",
        handle.http_addr, handle.https_addr, handle.admin_addr
    );
    burst(&snap).await;
    if let Some(edge) = gateway_for(&snap, MESH_HOST) {
        story.burst(edge, MESH_HOST, MESH_BURST).await.print(&story);
    }
    print_tries(&snap, handle.admin_addr, &args.config_dir);
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    story.shutdown();
    drop(servers);
    Ok(())
}
