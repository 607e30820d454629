//! Status writes that fail are tried again. Its own test binary: it installs a cluster-wide
//! ClusterRole, and every weir that watches all namespaces would write the status of its objects.

mod common;

use std::time::Duration;

use common::*;
use gateway_api::httproutes::HttpRoute;
use kube::Api;
use weir::source::kubernetes::KubeSource;

const CONVERGE: Duration = Duration::from_secs(120);

/// A status write the apiserver refuses is tried again on its own: with the chart's RBAC minus
/// `httproutes/status` (and minus `namespaces`, which weir serves without), the route's status
/// cannot be written; once the ClusterRole grants it
/// again, weir writes it with no change to the route (a user fixing RBAC must not have to touch
/// every object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_status_write_is_tried_again_until_it_is_allowed() {
    let cluster = cluster();
    let admin = cluster.client().await;
    let home = namespace(&admin, "weir-retry").await;
    let full = chart_rbac("weir-retry", &home);
    let granted =
        "resources: [gatewayclasses/status, gateways/status, httproutes/status, grpcroutes/status, tlsroutes/status]";
    assert!(full.contains(granted), "the chart grants httproutes/status:\n{full}");
    let without = full
        .replace(granted, "resources: [gatewayclasses/status, gateways/status, grpcroutes/status, tlsroutes/status]");
    // and without Namespaces, which weir reads only for listener namespace selectors: it serves
    // without them rather than waiting for a list it may not do
    let namespaces = "resources: [services, secrets, namespaces]";
    assert!(full.contains(namespaces), "the chart grants namespaces:\n{full}");
    let without = without.replace(namespaces, "resources: [services, secrets]");
    kubectl(cluster, &["apply", "-f", "-"], Some(&without));
    let (_dir, path) = service_account_kubeconfig(cluster, &home, "weir-retry");

    let apps = namespace(&admin, "apps").await;
    apply(&admin, &apps, &echo_deployment(1, "1")).await.expect("the echo Deployment");
    let port = free_port();
    let rules = "  rules:\n  - backendRefs: [{name: echo, port: 8080}]\n";
    apply(&admin, &apps, &cluster_gateway_and_route(&apps, port, rules)).await.expect("the Gateway and route");
    let source = KubeSource { kubeconfig: Some(path), namespaces: vec![apps.clone()], ..Default::default() };
    let edge = edge_writing_status(source, &home, "weir-retry").await;
    let metrics = || async { request(edge.admin_addr).path("/metrics").send().await.text() };
    let route_writes = |metrics: String, result: &'static str| {
        metric(&metrics, "weir_status_writes_total", &[("kind", "HTTPRoute"), ("result", result)])
    };
    let route_status = || async {
        let route = Api::<HttpRoute>::namespaced(admin.clone(), &apps).get("web").await.unwrap();
        route.status.map(|s| s.parents.len()).unwrap_or(0)
    };
    // everything settles: the route serves, the Gateway's status is written, the route's refused
    wait_until("the echo answers through the Gateway", CONVERGE, || async {
        request(local(port)).path("/").try_send().await.is_ok_and(|r| r.status == 200)
    })
    .await;
    wait_for_programmed_gateway(&admin, &apps, "gw", CONVERGE).await;
    let dump = request(edge.admin_addr).path("/config_dump").send().await.json();
    let watch = dump["watches"].as_array().unwrap().iter().find(|w| w["kind"] == "Namespace").cloned();
    let watch = watch.unwrap_or_else(|| panic!("no Namespace watch: {dump:#}"));
    assert_eq!(watch["synced"], true, "{watch}");
    assert!(watch["lastError"].as_str().is_some_and(|e| e.contains("kubernetes.io/metadata.name")), "{watch}");
    wait_until("the route's status write is refused", CONVERGE, || async {
        route_writes(metrics().await, "error") >= 1.0
    })
    .await;
    assert_eq!(route_status().await, 0, "no status while the write is refused");

    // nothing weir reads changes from here on: only trying again writes the route's status
    kubectl(cluster, &["apply", "-f", "-"], Some(&full));
    wait_until("the route's status is written once it is allowed", CONVERGE, || async { route_status().await > 0 })
        .await;
    assert!(route_writes(metrics().await, "ok") >= 1.0);
    edge.shutdown().await;
}
