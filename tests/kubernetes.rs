//! `--source kubernetes` against the real control plane (tests/cluster): weir watches the API
//! server and serves what is applied there, with no file in between.

mod common;

use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use kube::Api;
use serde_json::json;
use weir::app::{start_edge, EdgeOptions};
use weir::config::DefaultPolicy;
use weir::demo::ca::{Ca, LeafSpec};
use weir::demo::echo::EchoServer;
use weir::mesh::inbound::Workload;
use weir::mesh::{start_mesh, IdentitySource, MeshOptions};
use weir::source::kubernetes::KubeSource;
use weir::source::ConfigSource;
use weir::status::leader::LeaderOptions;
use weir::status::StatusOptions;

/// Bound for the cluster and weir to converge (Pods start as processes; a busy CI machine is
/// slower).
const CONVERGE: Duration = Duration::from_secs(90);

/// weir's Gateway on `port` and an HTTPRoute sending /missing to a Service that does not exist
/// and the rest to the echo Deployment.
fn gateway_and_route(ns: &str, port: u16) -> String {
    let rules = "  rules:
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: ghost, port: 8080}]
  - backendRefs: [{name: echo, port: 8080}]
";
    cluster_gateway_and_route(ns, port, rules)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_applied_to_the_cluster_is_served_and_its_changes_follow() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "edge").await;
    apply(&client, &ns, &echo_deployment(2, "1")).await.expect("apply the echo Deployment");
    let port = free_port();
    apply(&client, &ns, &gateway_and_route(&ns, port)).await.expect("apply the Gateway and HTTPRoute");

    let edge =
        start_edge(in_cluster(cluster, &ns, "replica-a", "127.0.0.1")).await.expect("weir edge --source kubernetes");

    // the Gateway's status says where it is served, and it is
    let gw = wait_for("the Gateway's status", CONVERGE, || async {
        let gw = Api::<Gateway>::namespaced(client.clone(), &ns).get("gw").await.ok()?;
        let status = serde_json::to_value(gw.status?).ok()?;
        (condition(&status["conditions"], "Programmed")?["status"] == "True").then_some(status)
    })
    .await;
    let address = gw["addresses"][0]["value"].as_str().expect("an address").to_string();
    let gateway = SocketAddr::new(address.parse().unwrap(), port);
    // the echo answers from its Pods once they are ready: both of them, through the Gateway
    let pods = std::sync::Mutex::new(std::collections::BTreeSet::new());
    wait_until("both echo Pods answer through the Gateway", CONVERGE, || {
        let (pods, ns) = (&pods, &ns);
        async move {
            let Ok(resp) = request(gateway).host("shop.example.com").path("/who").try_send().await else {
                return false;
            };
            if resp.status != 200 {
                return false;
            }
            let body = resp.json();
            assert_eq!(body["namespace"], ns.as_str(), "the echo of the test's namespace: {body}");
            let mut pods = pods.lock().unwrap();
            pods.insert(body["pod"].as_str().unwrap_or_default().to_string());
            pods.len() == 2
        }
    })
    .await;
    // every kind watched has synced, and says when
    let metrics = request(edge.admin_addr).path("/metrics").send().await.text();
    let kinds =
        ["GatewayClass", "Gateway", "HTTPRoute", "Service", "EndpointSlice", "Secret", "BackendPolicy", "Namespace"];
    for kind in kinds {
        assert_eq!(metric(&metrics, "weir_source_synced", &[("kind", kind)]), 1.0, "{kind}:\n{metrics}");
        assert!(metric(&metrics, "weir_source_last_sync_timestamp_seconds", &[("kind", kind)]) > 1.7e9, "{kind}");
    }
    for t in ["Accepted", "Programmed"] {
        let c = condition(&gw["conditions"], t).unwrap();
        assert_eq!((&c["status"], &c["observedGeneration"]), (&json!("True"), &json!(1)), "{t}: {gw:#}");
    }
    let listener = &gw["listeners"][0];
    assert_eq!((&listener["name"], &listener["attachedRoutes"]), (&json!("http"), &json!(1)), "{gw:#}");
    let kinds = json!([
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
        {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}
    ]);
    assert_eq!(listener["supportedKinds"], kinds, "{gw:#}");
    for t in ["Accepted", "ResolvedRefs", "Programmed"] {
        assert_eq!(condition(&listener["conditions"], t).unwrap()["status"], "True", "listener {t}: {gw:#}");
    }
    let class = Api::<GatewayClass>::all(client.clone()).get(&format!("weir-{ns}")).await.unwrap();
    let class = serde_json::to_value(class.status.unwrap()).unwrap();
    assert_eq!(condition(&class["conditions"], "Accepted").unwrap()["status"], "True", "{class:#}");
    assert!(class["supportedFeatures"].as_array().is_some_and(|f| f.contains(&json!({"name": "HTTPRoute"}))));

    // a rule whose Service does not exist answers 500 and is reported in the route's status; the
    // others keep serving
    get(gateway, "shop.example.com", "/missing").await.assert_status(500);
    let route = Api::<HttpRoute>::namespaced(client.clone(), &ns).get("web").await.unwrap();
    let route = serde_json::to_value(route.status.unwrap()).unwrap();
    let parent = &route["parents"][0];
    assert_eq!(parent["controllerName"], "weir.dev/gateway-controller", "{route:#}");
    assert_eq!(condition(&parent["conditions"], "Accepted").unwrap()["status"], "True", "{route:#}");
    let refs = condition(&parent["conditions"], "ResolvedRefs").unwrap();
    assert_eq!((&refs["status"], &refs["reason"]), (&json!("False"), &json!("BackendNotFound")), "{route:#}");
    let rejection = edge
        .snapshot()
        .rejections
        .iter()
        .find(|r| r.kind == "HTTPRoute" && r.name == "web")
        .cloned()
        .expect("the route's missing backend is reported");
    assert!(rejection.reason.contains(&format!("Service {ns}/ghost does not exist")), "{rejection:?}");
    assert_eq!(rejection.file, "kubernetes", "{rejection:?}");

    // a change applied to the cluster is served: the route now takes only /v2
    let narrowed = gateway_and_route(&ns, port).replace(
        "  - backendRefs: [{name: echo",
        "  - matches: [{path: {type: PathPrefix, value: /v2}}]\n    backendRefs: [{name: echo",
    );
    apply(&client, &ns, &narrowed).await.expect("apply the narrowed HTTPRoute");
    wait_until("the narrowed route applies", CONVERGE, || async {
        request(gateway).host("shop.example.com").path("/who").try_send().await.is_ok_and(|r| r.status == 404)
    })
    .await;
    get(gateway, "shop.example.com", "/v2/who").await.assert_status(200);
    // the status follows, at the route's new generation
    wait_until("the route's status follows the change", CONVERGE, || async {
        let route = Api::<HttpRoute>::namespaced(client.clone(), &ns).get("web").await.unwrap();
        let status = serde_json::to_value(route.status.unwrap()).unwrap();
        let accepted = condition(&status["parents"][0]["conditions"], "Accepted").cloned().unwrap_or_default();
        accepted["status"] == "True" && accepted["observedGeneration"] == 2
    })
    .await;
    // a listener taking routes from the namespaces a selector picks by their labels: the route
    // is refused until its namespace has the label (weir watches Namespaces for them)
    let selecting = narrowed.replace(
        &format!("port: {port}}}]"),
        &format!("port: {port}, allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchLabels: {{weir.dev/routes: allowed}}}}}}}}}}]"),
    );
    apply(&client, &ns, &selecting).await.expect("apply the Gateway with a namespace selector");
    let route_accepted = || async {
        let route = Api::<HttpRoute>::namespaced(client.clone(), &ns).get("web").await.unwrap();
        let status = serde_json::to_value(route.status.unwrap()).unwrap();
        let accepted = condition(&status["parents"][0]["conditions"], "Accepted").cloned().unwrap_or_default();
        (accepted["status"].as_str().unwrap_or("").to_string(), accepted["reason"].as_str().unwrap_or("").to_string())
    };
    wait_until("the route is refused by the selecting listener", CONVERGE, || async {
        route_accepted().await == ("False".into(), "NotAllowedByListeners".into())
    })
    .await;
    get(gateway, "shop.example.com", "/v2/who").await.assert_status(404);
    let labelled =
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{weir.dev/routes: allowed}}}}\n");
    apply(&client, &ns, &labelled).await.expect("label the namespace");
    wait_until("the route attaches once its namespace has the label", CONVERGE, || async {
        request(gateway).host("shop.example.com").path("/v2/who").try_send().await.is_ok_and(|r| r.status == 200)
    })
    .await;
    wait_until("the route's status says Accepted again", CONVERGE, || async {
        route_accepted().await == ("True".into(), "Accepted".into())
    })
    .await;

    // the Gateway once, the route at each of its generations (the class may be another test's
    // weir's to write: classes are cluster-wide)
    let text = request(edge.admin_addr).path("/metrics").send().await.text();
    let writes = |kind| metric(&text, "weir_status_writes_total", &[("kind", kind), ("result", "ok")]);
    edge.shutdown().await;
    assert!(writes("Gateway") >= 1.0 && writes("HTTPRoute") >= 2.0, "{text}");
}

/// weir edge on `ns`'s objects as replica `holder`, binding Gateways on `address`, holding the
/// Lease of `ns` ([`LEASE`]) to write status.
fn in_cluster(cluster: &Cluster, ns: &str, holder: &str, address: &str) -> EdgeOptions {
    let leader =
        LeaderOptions { namespace: ns.into(), lease_name: "weir".into(), holder: holder.into(), lease_duration: LEASE };
    EdgeOptions {
        gateway_address: address.parse().unwrap(),
        status: Some(StatusOptions { leader, publish_service: None, publish_addresses: vec![] }),
        ..edge_on(cluster, ns)
    }
}

/// The lease of the tests' replicas: short, for a quick takeover, yet renewed (every fifth of
/// it) in time on a busy machine.
const LEASE: Duration = Duration::from_secs(5);

/// The condition `type_` of a status's `conditions`.
fn condition<'a>(conditions: &'a serde_json::Value, type_: &str) -> Option<&'a serde_json::Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_mesh_takes_its_identity_from_a_secret_of_the_cluster_and_follows_it() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "mesh").await;
    let ca = Arc::new(Ca::new("mesh CA").unwrap());
    let first = ca.issue(&LeafSpec::svid(PAYMENTS, DAY)).unwrap();
    apply(&client, &ns, &identity_secret(&ns, "Opaque", &first, &ca.bundle_pem()))
        .await
        .expect("apply the identity Secret");

    let app = EchoServer::start("payments", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let source =
        KubeSource { kubeconfig: Some(cluster.kubeconfig.clone()), namespaces: vec![ns.clone()], ..Default::default() };
    let opts = MeshOptions {
        inbound: "127.0.0.1:0".parse().unwrap(),
        identity: IdentitySource::Secret(ns.clone(), "payments-identity".into()),
        workload: Workload { address: app.addr().ip(), ports: vec![app.addr().port()] },
        source: Some(ConfigSource::Kubernetes(source)),
        outbound: None,
        admin: "127.0.0.1:0".parse().unwrap(),
        default_policy: DefaultPolicy::AllowAuthenticated,
        tls: Default::default(),
        limits: Default::default(),
    };
    // an Opaque Secret, not of type kubernetes.io/tls: weir reads it by name
    let mesh = start_mesh(opts).await.expect("weir mesh --source kubernetes --identity-secret");
    let p = Payments { mesh, ca: ca.clone(), app, _dir: tempfile::tempdir().unwrap() };
    assert_eq!(p.mesh.credentials.load().id.to_string(), PAYMENTS);
    let checkout = ca.issue(&LeafSpec::svid(CHECKOUT, DAY)).unwrap();
    call(&p, Some(&checkout), p.app.addr().port(), &[]).await.unwrap().assert_status(200);
    let dump = request(p.mesh.admin_addr).path("/config_dump").send().await.json();
    let by_name = dump["watches"].as_array().unwrap().iter().find(|w| w["name"] == "payments-identity").cloned();
    assert_eq!(by_name.map(|w| w["objects"].clone()), Some(1.into()), "the Secret is watched by name: {dump}");

    // a new certificate in the Secret is served without a restart
    let served_first = p.mesh.credentials.load().not_after.clone();
    let next = ca.issue(&LeafSpec::svid(PAYMENTS, 2 * DAY)).unwrap();
    apply(&client, &ns, &identity_secret(&ns, "Opaque", &next, &ca.bundle_pem()))
        .await
        .expect("rotate the identity Secret");
    wait_until("the gateway serves the new certificate", CONVERGE, || async {
        p.mesh.credentials.load().not_after != served_first
    })
    .await;
    call(&p, Some(&checkout), p.app.addr().port(), &[]).await.unwrap().assert_status(200);
    p.mesh.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_exactly_one_writes_status_and_the_other_takes_over_when_it_dies() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "leader").await;
    let port = free_port();
    apply(&client, &ns, &gateway_and_route(&ns, port)).await.expect("apply the Gateway and HTTPRoute");
    // each replica binds the Gateway on an address of its own and reports it: the Gateway's
    // status address says which replica wrote it
    let a = start_edge(in_cluster(cluster, &ns, "replica-a", "127.0.0.2")).await.expect("replica a");
    let b = start_edge(in_cluster(cluster, &ns, "replica-b", "127.0.0.3")).await.expect("replica b");
    let address = || async {
        let gw = Api::<Gateway>::namespaced(client.clone(), &ns).get("gw").await.ok()?;
        serde_json::to_value(gw.status?).ok()?["addresses"][0]["value"].as_str().map(str::to_string)
    };
    let gauges = |edge: &weir::app::EdgeHandle| {
        let admin = edge.admin_addr;
        async move {
            let text = request(admin).path("/metrics").send().await.text();
            // GatewayClasses are cluster-wide: the weirs of the other tests write theirs too
            let writes = |kind| metric(&text, "weir_status_writes_total", &[("kind", kind)]);
            (metric(&text, "weir_leader", &[]), writes("Gateway") + writes("HTTPRoute"))
        }
    };
    // one replica leads and writes the Gateway's and the route's status
    let a_leads = wait_for("one replica leads and writes both statuses", CONVERGE, || async {
        match (gauges(&a).await, gauges(&b).await) {
            ((leading, writes), _) if leading == 1.0 && writes >= 2.0 => Some(true),
            (_, (leading, writes)) if leading == 1.0 && writes >= 2.0 => Some(false),
            _ => None,
        }
    })
    .await;
    let (leader, follower, first) = match a_leads {
        true => (a, b, "127.0.0.2"),
        false => (b, a, "127.0.0.3"),
    };
    assert_eq!(address().await.as_deref(), Some(first), "the leader's address is in the status");
    assert_eq!(gauges(&follower).await, (0.0, 0.0), "the other replica writes nothing");

    // the leader dies without letting go of the Lease: the other takes over once it expires
    let killed = std::time::Instant::now();
    leader.shutdown().await;
    let second = wait_for("the other replica writes the Gateway's status", CONVERGE, || async {
        address().await.filter(|a| a != first)
    })
    .await;
    let took = killed.elapsed();
    eprintln!("leader killed; {second} wrote status {took:?} later (lease {LEASE:?})");
    assert_eq!(gauges(&follower).await.0, 1.0);
    assert!(took < 2 * LEASE, "taken over within the lease and a retry: {took:?}");
    follower.shutdown().await;
}

/// Two Gateways on one port, each on an address of its own from `--gateway-addresses`, each
/// serving its own route; a restarted weir gives each the same address again.
/// Three replicas find the Lease expired at the same moment (its holder stopped renewing an
/// hour ago): one takes it, the others are told it is taken; then the holder renews and the
/// others keep waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_replicas_racing_for_an_expired_lease_exactly_one_takes_it() {
    use k8s_openapi::api::coordination::v1::Lease;
    use weir::status::leader::LeaseLock;
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "lease").await;
    let api = Api::<Lease>::namespaced(client.clone(), &ns);
    let an_hour_ago = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
    let gone = json!({
        "metadata": {"name": "weir"},
        "spec": {"holderIdentity": "weir-gone", "renewTime": an_hour_ago.to_string(), "leaseDurationSeconds": 15, "leaseTransitions": 3}
    });
    api.create(&Default::default(), &serde_json::from_value(gone).unwrap()).await.expect("the Lease");
    let locks: Vec<LeaseLock> = (0..3)
        .map(|i| {
            let opts = LeaderOptions {
                namespace: ns.clone(),
                lease_name: "weir".into(),
                holder: format!("weir-{i}"),
                lease_duration: Duration::from_secs(15),
            };
            LeaseLock::new(api.clone(), &opts)
        })
        .collect();

    let tries = futures_util::future::join_all(locks.iter().map(|l| l.try_acquire_or_renew())).await;
    let took: Vec<usize> = (0..3).filter(|i| *tries[*i].as_ref().expect("no error, a lost race included")).collect();
    assert_eq!(took.len(), 1, "exactly one replica takes the Lease: {tries:?}");
    let spec = api.get("weir").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity, Some(format!("weir-{}", took[0])));
    assert_eq!(spec.lease_transitions, Some(4));

    for (i, lock) in locks.iter().enumerate() {
        assert_eq!(lock.try_acquire_or_renew().await.unwrap(), i == took[0], "replica {i} the next round");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_one_port_get_addresses_of_their_own_and_keep_them_across_a_restart() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "addresses").await;
    apply(&client, &ns, &named_echo_deployment("one", 1, "1")).await.expect("Deployment one");
    apply(&client, &ns, &named_echo_deployment("two", 1, "1")).await.expect("Deployment two");
    let port = free_port();
    let both = |gw: &str, backend: &str| {
        let rules = format!("  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n");
        gateway_with_route(&ns, gw, gw, port, &rules)
    };
    let class = cluster_class(&ns);
    let gateways = format!("{class}---{}---{}", both("first", "one"), both("second", "two"));
    apply(&client, &ns, &gateways).await.expect("Gateways");
    // a /28 on loopback that no other test uses
    let pool: ipnet::IpNet = "127.0.42.0/28".parse().unwrap();
    let start = || async {
        let mut opts = in_cluster(cluster, &ns, "replica-a", "127.0.0.1");
        opts.gateway_addresses = vec![pool];
        start_edge(opts).await.expect("weir edge --gateway-addresses")
    };
    let addresses = || async {
        let api = Api::<Gateway>::namespaced(client.clone(), &ns);
        let mut out = vec![];
        for name in ["first", "second"] {
            let status = serde_json::to_value(api.get(name).await.ok()?.status?).ok()?;
            out.push(status["addresses"][0]["value"].as_str()?.parse::<std::net::IpAddr>().ok()?);
        }
        Some(out)
    };
    let edge = start().await;
    let first = wait_for("both Gateways report an address", CONVERGE, || async { addresses().await }).await;
    assert!(first.iter().all(|ip| pool.contains(ip)) && first[0] != first[1], "{first:?}");
    // each address serves its own Gateway's route, on the same port
    for (ip, app) in first.iter().zip(["one", "two"]) {
        let at = SocketAddr::new(*ip, port);
        wait_until(&format!("{at} answers from {app}"), CONVERGE, || async {
            request(at).host("any.example.com").path("/").try_send().await.is_ok_and(|r| {
                r.status == 200 && r.json()["pod"].as_str().is_some_and(|p| p.starts_with(&format!("{app}-")))
            })
        })
        .await;
    }
    edge.shutdown().await;

    // while weir is down, the first Gateway goes and a third comes: started again, weir reads
    // the second's address back from its status (without that, the second, now the oldest,
    // would take the lowest address), and the third gets the freed one
    Api::<Gateway>::namespaced(client.clone(), &ns)
        .delete("first", &Default::default())
        .await
        .expect("delete the first Gateway");
    apply(&client, &ns, &both("third", "one")).await.expect("a third Gateway");
    let edge = start().await;
    let third = wait_for("the third Gateway reports an address", CONVERGE, || async {
        let gw = Api::<Gateway>::namespaced(client.clone(), &ns).get("third").await.ok()?;
        let status = serde_json::to_value(gw.status?).ok()?;
        status["addresses"][0]["value"].as_str()?.parse::<std::net::IpAddr>().ok()
    })
    .await;
    let second = Api::<Gateway>::namespaced(client.clone(), &ns).get("second").await.unwrap();
    let second = serde_json::to_value(second.status.unwrap()).unwrap()["addresses"][0]["value"].clone();
    assert_eq!(second, first[1].to_string(), "the second Gateway keeps its address");
    assert_eq!(third, first[0], "the third takes the freed one");
    let resp = request(SocketAddr::new(first[1], port)).host("any.example.com").path("/").send().await;
    assert!(resp.json()["pod"].as_str().unwrap_or_default().starts_with("two-"), "{resp}");
    edge.shutdown().await;
}
