//! `--source kubernetes` when the cluster misbehaves: a CRD that is not installed yet, and an
//! apiserver that goes away and comes back. Its own test binary, so its own cluster: these
//! faults would disturb the tests of another.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DeleteParams;
use kube::Api;
use serde_json::Value;
use weir::app::{start_edge, EdgeHandle};

/// Bound for the cluster and weir to converge (Pods start as processes; the apiserver takes
/// seconds to start again; a watch retries with a backoff of up to 30 s).
const CONVERGE: Duration = Duration::from_secs(120);

const BACKEND_POLICY_CRD: &str = "backendpolicies.weir.dev";

/// weir's Gateway on `port` and an HTTPRoute sending `prefix` to the echo Deployment.
fn gateway_and_route(ns: &str, port: u16, prefix: &str) -> String {
    let rules = format!(
        "  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{name: echo, port: 8080}}]
"
    );
    cluster_gateway_and_route(ns, port, &rules)
}

/// The watch of `kind` as `/config_dump` shows it.
async fn watch_of(edge: &EdgeHandle, kind: &str) -> Value {
    let dump = request(edge.admin_addr).path("/config_dump").send().await.json();
    dump["watches"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["kind"] == kind).cloned())
        .unwrap_or_else(|| panic!("no watch of {kind} in /config_dump: {dump}"))
}

async fn status(gateway: std::net::SocketAddr, path: &str) -> Option<u16> {
    request(gateway).host("faults.example.com").path(path).try_send().await.ok().map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_serves_through_a_missing_crd_and_an_apiserver_restart_and_converges_after() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "faults").await;
    // weir's BackendPolicy CRD is not installed
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.delete(BACKEND_POLICY_CRD, &DeleteParams::default()).await.expect("delete the BackendPolicy CRD");
    wait_until("the CRD is gone", CONVERGE, || async {
        crds.get_opt(BACKEND_POLICY_CRD).await.is_ok_and(|c| c.is_none())
    })
    .await;
    apply(&client, &ns, &echo_deployment(2, "1")).await.expect("apply the echo Deployment");
    let port = free_port();
    apply(&client, &ns, &gateway_and_route(&ns, port, "/")).await.expect("apply the Gateway and HTTPRoute");

    let edge = start_edge(edge_on(cluster, &ns)).await.expect("weir edge --source kubernetes");
    let gateway = local(port);

    // 1. the rest is served, and the missing kind is reported
    wait_until("the echo answers through the Gateway", CONVERGE, || async {
        status(gateway, "/who").await == Some(200)
    })
    .await;
    let watch = watch_of(&edge, "BackendPolicy").await;
    assert_eq!((&watch["installed"], &watch["synced"]), (&Value::Bool(false), &Value::Bool(true)), "{watch}");
    assert_eq!(watch_of(&edge, "HTTPRoute").await["objects"], 1);

    // 2. the CRD is installed: weir watches it, with no restart
    let crd = std::fs::read_to_string(format!("{}/deploy/crds/{BACKEND_POLICY_CRD}.yaml", env!("CARGO_MANIFEST_DIR")))
        .expect("read the CRD");
    apply(&client, &ns, &crd).await.expect("install the CRD");
    let policy = "apiVersion: weir.dev/v1alpha1
kind: BackendPolicy
metadata: {name: echo}
spec:
  targetRefs: [{kind: Service, name: echo}]
  timeouts: {request: 10s}
";
    wait_until("the apiserver serves the new CRD", CONVERGE, || async { apply(&client, &ns, policy).await.is_ok() })
        .await;
    wait_until("weir watches BackendPolicies", CONVERGE, || async {
        let watch = watch_of(&edge, "BackendPolicy").await;
        watch["installed"] == true && watch["objects"] == 1
    })
    .await;
    let statuses = edge.snapshot().statuses.clone();
    let policy = statuses.get("BackendPolicy", &ns, "echo").expect("the policy is translated");
    assert!(policy.conditions.iter().any(|c| c.status), "and accepted: {policy:?}");

    // 3. the apiserver goes away: the last configuration keeps serving
    cluster.stop_apiserver();
    for i in 0..20 {
        assert_eq!(status(gateway, "/who").await, Some(200), "request {i} with the apiserver down");
    }
    wait_until("the HTTPRoute watch reports its failure", CONVERGE, || async {
        watch_of(&edge, "HTTPRoute").await["failures"].as_u64().unwrap_or(0) > 0
    })
    .await;

    // 4. it is back: a change made now is served
    cluster.start_apiserver();
    let client = cluster.client().await;
    apply(&client, &ns, &gateway_and_route(&ns, port, "/v2")).await.expect("narrow the route");
    wait_until("weir follows the change made after the restart", CONVERGE, || async {
        status(gateway, "/who").await == Some(404) && status(gateway, "/v2/who").await == Some(200)
    })
    .await;
    let watch = watch_of(&edge, "HTTPRoute").await;
    assert_eq!(watch["synced"], true, "{watch}");
    assert!(watch["lastError"].is_string(), "the failure is said: {watch}");
    edge.shutdown().await;
}
