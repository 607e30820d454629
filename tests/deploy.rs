//! `deploy/`: the Helm chart (rendered by helm built from the helm.sh/helm/v4 module), the plain
//! manifests made from it, and the chart's RBAC, against the real control plane. Its own test
//! binary: it installs cluster-wide objects (the chart's ClusterRole and its binding).

mod common;

use std::time::Duration;

use common::*;
use kube::Api;
use weir::source::kubernetes::KubeSource;

const CONVERGE: Duration = Duration::from_secs(120);

#[test]
fn the_plain_manifests_are_the_chart_rendered() {
    let rendered = run(&root().join("scripts/deploy-render"), &[], None);
    let file = std::fs::read_to_string(root().join("deploy/weir.yaml")).unwrap();
    assert!(rendered == file, "deploy/weir.yaml differs from the chart: run scripts/deploy-render > deploy/weir.yaml");
    // the chart ships the CRDs weir's code describes
    for crd in ["backendpolicies.weir.dev.yaml", "meshauthorizations.weir.dev.yaml"] {
        let chart = std::fs::read_to_string(root().join("deploy/helm/weir/crds").join(crd)).unwrap();
        let source = std::fs::read_to_string(root().join("deploy/crds").join(crd)).unwrap();
        assert!(chart == source, "deploy/helm/weir/crds/{crd} differs from deploy/crds/{crd}: copy it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_and_the_manifests_are_accepted_by_the_apiserver() {
    let cluster = cluster();
    // the namespace the manifests install into must exist for a dry run of what goes in it
    kubectl(cluster, &["apply", "-f", "-"], Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: weir-system}\n"));
    let out = kubectl(cluster, &["apply", "--dry-run=server", "-f", "deploy/weir.yaml"], None);
    for kind in ["deployment.apps/weir", "clusterrole.rbac.authorization.k8s.io/weir", "gatewayclass", "service/weir"] {
        assert!(out.contains(kind), "{kind} not applied:\n{out}");
    }
    let chart =
        helm_template("edge", "weir-system", &["--include-crds", "--set", "metrics.serviceMonitor.enabled=false"]);
    let out = kubectl(cluster, &["apply", "--dry-run=server", "-f", "-"], Some(&chart));
    assert!(out.contains("deployment.apps/edge-weir"), "{out}");
}

/// weir with a ServiceAccount token of the chart (TokenRequest) and the chart's RBAC only:
/// it lists and watches everything it reads, holds the Lease and writes status, with no
/// refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_runs_with_the_charts_service_account_and_rbac_alone() {
    let cluster = cluster();
    let admin = cluster.client().await;
    let home = namespace(&admin, "weir").await;
    let rbac = chart_rbac("weir", &home);
    kubectl(cluster, &["apply", "-f", "-"], Some(&rbac));
    let (_dir, path) = service_account_kubeconfig(cluster, &home, "weir");

    let apps = namespace(&admin, "apps").await;
    apply(&admin, &apps, &echo_deployment(1, "1")).await.expect("the echo Deployment");
    let port = free_port();
    let rules = "  rules:\n  - backendRefs: [{name: echo, port: 8080}]\n";
    apply(&admin, &apps, &cluster_gateway_and_route(&apps, port, rules)).await.expect("the Gateway and route");
    let policy = "apiVersion: weir.dev/v1alpha1
kind: BackendPolicy
metadata: {name: echo}
spec: {targetRefs: [{kind: Service, name: echo}]}
";
    apply(&admin, &apps, policy).await.expect("a BackendPolicy");

    // every namespace, as the chart runs it
    let source = KubeSource { kubeconfig: Some(path), ..Default::default() };
    let edge = edge_writing_status(source, &home, "weir").await;
    wait_until("the echo answers through the Gateway", CONVERGE, || async {
        request(local(port)).host("rbac.example.com").path("/").try_send().await.is_ok_and(|r| r.status == 200)
    })
    .await;
    wait_for_programmed_gateway(&admin, &apps, "gw", CONVERGE).await;
    wait_until("the BackendPolicy's status says Accepted", CONVERGE, || async {
        let api = Api::<weir::api::backend_policy::BackendPolicy>::namespaced(admin.clone(), &apps);
        let p = api.get("echo").await.unwrap();
        p.status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "True"))
    })
    .await;
    // every watch synced and none was refused (another failure, a watch the apiserver closed
    // while the parallel test dry-runs the CRDs, say, is retried and is not what this checks)
    let dump = request(edge.admin_addr).path("/config_dump").send().await.json();
    for watch in dump["watches"].as_array().expect("watches") {
        assert_eq!(watch["synced"], true, "{watch}");
        let error = watch["lastError"].as_str().unwrap_or_default().to_lowercase();
        assert!(!error.contains("403") && !error.contains("forbidden"), "a watch was refused: {watch}");
    }
    let metrics = request(edge.admin_addr).path("/metrics").send().await.text();
    assert_eq!(metric(&metrics, "weir_status_writes_total", &[("result", "error")]), 0.0, "{metrics}");
    assert!(metric(&metrics, "weir_status_writes_total", &[("result", "ok")]) >= 4.0, "{metrics}");
    assert_eq!(metric(&metrics, "weir_leader", &[]), 1.0, "the Lease in its own namespace");
    edge.shutdown().await;
}

/// The dashboard asks only for metrics weir has: each `weir_*` name in its queries is one weir
/// registers (a renamed metric would leave a panel empty).
#[test]
fn the_grafana_dashboard_queries_weirs_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy/grafana/weir-dashboard.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut registered = String::new();
    for dir in ["src/telemetry", "src/pool"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            registered.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
        }
    }
    let names = regex::Regex::new(r"weir_([a-z_]+?)(_bucket|_count|_sum)?\b").unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{}", panels.len());
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let found: Vec<_> = names.captures_iter(expr).collect();
            assert!(!found.is_empty(), "panel {}: no weir metric in {expr}", panel["title"]);
            for c in found {
                let name = &c[1];
                assert!(
                    registered.contains(&format!("\"{name}\"")),
                    "panel {}: weir has no metric weir_{name}",
                    panel["title"]
                );
            }
        }
    }
}
