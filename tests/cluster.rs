//! The test control plane is a real cluster: Deployments become Pods with IPs of their own that
//! answer HTTP, EndpointSlices follow scaling and rolling updates (terminating Pods included),
//! the apiserver enforces the Gateway API CRDs' validation, and RBAC denies what no Role grants.
//! One cluster for the binary ([`common::cluster`]), a namespace per test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{apply, cluster, echo_deployment, get, namespace, wait_for, wait_until, ECHO_PORT};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

/// Bound for the cluster to converge: Pods start as processes, controllers react in a second or
/// two, but a busy 2-core CI machine is slower.
const CONVERGE: Duration = Duration::from_secs(90);

/// One endpoint of an EndpointSlice: address and (ready, serving, terminating).
type Conditions = (bool, bool, bool);

/// The endpoints of the Service's slices, by address.
fn endpoints(slices: &[EndpointSlice]) -> BTreeMap<String, Conditions> {
    let mut out = BTreeMap::new();
    for slice in slices {
        for ep in &slice.endpoints {
            let c = ep.conditions.clone().unwrap_or_default();
            let conds = (c.ready == Some(true), c.serving == Some(true), c.terminating == Some(true));
            for addr in &ep.addresses {
                out.insert(addr.clone(), conds);
            }
        }
    }
    out
}

async fn slices(client: &Client, ns: &str) -> Vec<EndpointSlice> {
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("kubernetes.io/service-name=echo"))
        .await
        .expect("list EndpointSlices")
        .items
}

/// The Running and Ready Pods of the Deployment (not terminating), by name with their IPs.
async fn ready_pods(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let pods =
        Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default().labels("app=echo")).await.unwrap();
    pods.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status?;
            let ready = status.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && status.phase.as_deref() == Some("Running")).then_some((p.metadata.name?, status.pod_ip?))
        })
        .collect()
}

/// Waits until the Deployment has exactly `n` Pods, all Running and Ready, and the Service's
/// slices list exactly their IPs as ready; returns the Pods by name with their IPs.
async fn converged(client: &Client, ns: &str, n: usize) -> BTreeMap<String, String> {
    wait_for(&format!("{n} ready echo Pods, each a ready endpoint"), CONVERGE, || async {
        let pods = ready_pods(client, ns).await;
        let all =
            Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default().labels("app=echo")).await.ok()?;
        let eps = endpoints(&slices(client, ns).await);
        let ips: BTreeSet<&String> = pods.values().collect();
        let ready: BTreeSet<&String> = eps.iter().filter(|(_, c)| c.0).map(|(a, _)| a).collect();
        (pods.len() == n && all.items.len() == n && ips == ready && eps.len() == n).then_some(pods)
    })
    .await
}

/// HTTP from the host to a Pod's own IP, answered by the echo inside it.
async fn echo_at(ip: &str) -> serde_json::Value {
    let addr = SocketAddr::new(ip.parse().expect("Pod IP"), ECHO_PORT);
    let resp = get(addr, "echo", "/who").await;
    resp.assert_status(200);
    resp.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_get_ips_answer_http_and_scale_into_the_endpoint_slice() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "deploy").await;
    apply(&client, &ns, &echo_deployment(2, "1")).await.expect("apply the echo Deployment");

    let pods = converged(&client, &ns, 2).await;
    let ips: BTreeSet<&String> = pods.values().collect();
    assert_eq!(ips.len(), 2, "each Pod has an IP of its own: {pods:?}");
    for (name, ip) in &pods {
        let addr: IpAddr = ip.parse().unwrap();
        let IpAddr::V4(v4) = addr else { panic!("{ip} is not IPv4") };
        assert!(
            !v4.is_loopback() && v4.octets()[..2] == [10, 244],
            "{name}'s IP {ip} is in the pod CIDR 10.244.0.0/16"
        );
        let echo = echo_at(ip).await;
        assert_eq!(echo["pod"], name.as_str(), "the echo at {ip} is Pod {name}: {echo}");
        assert_eq!(echo["namespace"], ns.as_str(), "the echo knows its namespace (downward API): {echo}");
        assert_eq!(echo["path"], "/who");
    }

    // scale to 3: one more Pod, one more ready endpoint, the first two untouched
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    deployments
        .patch("echo", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})))
        .await
        .expect("scale to 3");
    let scaled = converged(&client, &ns, 3).await;
    for (name, ip) in &pods {
        assert_eq!(scaled.get(name), Some(ip), "scaling up keeps Pod {name} at {ip}");
    }
    let (new_name, new_ip) = scaled.iter().find(|(n, _)| !pods.contains_key(*n)).expect("a third Pod");
    assert_eq!(echo_at(new_ip).await["pod"], new_name.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_shows_old_pods_terminating_then_gone() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "rollout").await;
    apply(&client, &ns, &echo_deployment(2, "1")).await.expect("apply the echo Deployment");
    let old = converged(&client, &ns, 2).await;

    // every state of the slices from here on, in order
    let seen: Arc<Mutex<Vec<BTreeMap<String, Conditions>>>> = Arc::default();
    let api = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    let config = watcher::Config::default().labels("kubernetes.io/service-name=echo");
    let (record, ready) = (seen.clone(), Arc::new(tokio::sync::Notify::new()));
    let started = ready.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).default_backoff().applied_objects().boxed();
        let mut latest: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        started.notify_one();
        while let Some(Ok(slice)) = stream.next().await {
            latest.insert(slice.metadata.name.clone().unwrap_or_default(), slice);
            let all: Vec<EndpointSlice> = latest.values().cloned().collect();
            record.lock().unwrap().push(endpoints(&all));
        }
    });
    ready.notified().await;
    wait_until("the watch has seen the slice", CONVERGE, || async { !seen.lock().unwrap().is_empty() }).await;

    apply(&client, &ns, &echo_deployment(2, "2")).await.expect("roll the Deployment");
    let new = wait_for("two ready Pods of the new template", CONVERGE, || async {
        let pods = converged(&client, &ns, 2).await;
        pods.keys().all(|n| !old.contains_key(n)).then_some(pods)
    })
    .await;
    // the list above may be ahead of the watch: stop recording once the watch has caught up
    let new_ips: BTreeSet<&String> = new.values().collect();
    wait_until("the watch has seen the slice of the new Pods only", CONVERGE, || async {
        seen.lock().unwrap().last().is_some_and(|eps| eps.keys().collect::<BTreeSet<_>>() == new_ips)
    })
    .await;
    watch.abort();

    let history = seen.lock().unwrap().clone();
    for (name, ip) in &old {
        // an IP may be handed out again after its Pod is gone; look at the history up to then
        let draining = history.iter().any(|eps| matches!(eps.get(ip), Some((false, true, true))));
        assert!(
            draining,
            "old Pod {name} ({ip}) showed as terminating and still serving while it drained: {history:#?}"
        );
        let gone = history
            .iter()
            .position(|eps| matches!(eps.get(ip), Some((_, _, true))))
            .map(|first_terminating| history[first_terminating..].iter().any(|eps| !eps.contains_key(ip)));
        assert_eq!(gone, Some(true), "old Pod {name} ({ip}) left the slice after terminating: {history:#?}");
    }
    // no moment without a ready endpoint: maxUnavailable 0 holds through the rollout
    for eps in &history {
        assert!(eps.values().any(|c| c.0), "a ready endpoint at every step of the rollout: {history:#?}");
    }
    let last = endpoints(&slices(&client, &ns).await);
    let expected: BTreeSet<&String> = new.values().collect();
    assert_eq!(last.keys().collect::<BTreeSet<_>>(), expected, "only the new Pods remain");
    assert!(last.values().all(|c| *c == (true, true, false)), "the new Pods are ready: {last:?}");
    for (name, ip) in &new {
        assert_eq!(echo_at(ip).await["pod"], name.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_rejects_an_invalid_httproute_with_the_crd_message() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "crd").await;
    let route = |path: &str| {
        format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: "{path}"}}
    backendRefs: [{{name: shop, port: 8080}}]
"#
        )
    };
    apply(&client, &ns, &route("/shop")).await.expect("a valid HTTPRoute is stored");

    let err = apply(&client, &ns, &route("shop")).await.expect_err("a PathPrefix without a leading / is refused");
    let kube::Error::Api(status) = err else { panic!("expected the apiserver's refusal, got {err:?}") };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("must be an absolute path and start with '/'"),
        "the CRD's own validation message: {}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denies_a_service_account_that_no_role_grants() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "rbac").await;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    apply(&client, &ns, "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: reader\n").await.unwrap();
    let request: TokenRequest = serde_json::from_value(serde_json::json!({"spec": {"audiences": []}})).unwrap();
    let token = accounts
        .create_token_request("reader", &PostParams::default(), &request)
        .await
        .expect("a token for the ServiceAccount")
        .status
        .expect("token")
        .token;
    let as_reader = cluster.client_with_token(&token).await;
    let pods = Api::<Pod>::namespaced(as_reader.clone(), &ns);

    let err = pods.list(&ListParams::default()).await.expect_err("no Role grants reader anything");
    let kube::Error::Api(status) = err else { panic!("expected a 403 from RBAC, got {err:?}") };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status.message.contains(&format!("system:serviceaccount:{ns}:reader"))
            && status.message.contains("cannot list resource \"pods\""),
        "the denial names the account and the verb: {}",
        status.message
    );

    // the same token is let in once a Role grants it: the 403 was RBAC's, not a broken token
    apply(
        &client,
        &ns,
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader}
rules:
- {apiGroups: [""], resources: [pods], verbs: [list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-reads-pods}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {kind: ServiceAccount, name: reader}
"#,
    )
    .await
    .unwrap();
    wait_until("the Role lets reader list Pods", CONVERGE, || async {
        pods.list(&ListParams::default()).await.is_ok()
    })
    .await;
    let other = Api::<Pod>::namespaced(as_reader, "default");
    let err = other.list(&ListParams::default()).await.expect_err("the Role is for its namespace only");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err:?}");
}
