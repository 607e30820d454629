//! The test control plane for integration tests: a real kube-apiserver, etcd,
//! kube-controller-manager and kubelet-sim (`scripts/cluster`, `tests/cluster/`).
//!
//! The tests of one binary share one cluster, each in namespaces of its own, so the binary pays
//! for bring-up once. [`cluster`] starts it on first use, named after the test process, and a
//! reaper takes it down when the process exits, however it exits. With `WEIR_TEST_CLUSTER=NAME`
//! the tests use that cluster instead (starting it if it is not up) and leave it running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Api, Client, Config};

/// Names a cluster to use (and leave running) instead of one per test binary.
pub const CLUSTER_ENV: &str = "WEIR_TEST_CLUSTER";

/// The field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "weir-tests";

/// A running test cluster.
pub struct Cluster {
    pub name: String,
    pub kubeconfig: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster of this test binary, started on first use (seconds once its binaries are built;
/// `scripts/cluster build` builds them ahead). Call it from a multi-thread runtime: it blocks.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (name, owned) = match std::env::var(CLUSTER_ENV) {
            Ok(name) if !name.is_empty() => (name, false),
            _ => (format!("test-{}", std::process::id()), true),
        };
        let mut up = Command::new(root.join("scripts/cluster"));
        up.args(["up", &name]);
        if owned {
            up.args(["--owner-pid", &std::process::id().to_string()]);
        }
        let out = tokio::task::block_in_place(|| up.stderr(Stdio::inherit()).output()).expect("run scripts/cluster up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "scripts/cluster up {name} failed (its progress is above): {stdout}");
        let kubeconfig = stdout
            .lines()
            .last()
            .and_then(|line| line.strip_prefix("export KUBECONFIG="))
            .unwrap_or_else(|| panic!("scripts/cluster up printed no `export KUBECONFIG=` last: {stdout}"));
        Cluster { name, kubeconfig: PathBuf::from(kubeconfig) }
    })
}

impl Cluster {
    /// The cluster's admin configuration (client certificate, `system:masters`).
    pub async fn config(&self) -> Config {
        // kube's rustls client needs a process-wide provider. ring is already built for rcgen;
        // rustls deprecates it for lacking post-quantum key exchange, which a loopback test
        // cluster does not need (aws-lc-rs would add a second C crypto build).
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read the cluster's kubeconfig");
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig")
    }

    /// Stops the kube-apiserver alone (etcd, the controllers and the Pods keep running).
    pub fn stop_apiserver(&self) {
        self.control("stop-apiserver");
    }

    /// Starts the kube-apiserver again, as it was, and waits until it is ready.
    pub fn start_apiserver(&self) {
        self.control("start-apiserver");
    }

    fn control(&self, command: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster");
        let status = tokio::task::block_in_place(|| {
            Command::new(script).args([command, &self.name]).stdout(Stdio::null()).status()
        })
        .expect("run scripts/cluster");
        assert!(status.success(), "scripts/cluster {command} {} failed (see above)", self.name);
    }

    /// An admin client. Make one per test: a client belongs to the runtime that made it.
    pub async fn client(&self) -> Client {
        Client::try_from(self.config().await).expect("kube client")
    }

    /// A client that authenticates with a bearer token (a ServiceAccount's, say) instead.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let mut config = self.config().await;
        config.auth_info = serde_json::from_value::<AuthInfo>(serde_json::json!({ "token": token })).unwrap();
        Client::try_from(config).expect("kube client")
    }
}

/// `weir edge --source kubernetes` on the objects of namespace `ns` of `cluster`, everything
/// else as [`EdgeOptions::local`] (no status written).
pub fn edge_on(cluster: &Cluster, ns: &str) -> weir::app::EdgeOptions {
    let source = weir::source::kubernetes::KubeSource {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        namespaces: vec![ns.to_string()],
        ..Default::default()
    };
    weir::app::EdgeOptions {
        source: weir::source::ConfigSource::Kubernetes(source),
        ..weir::app::EdgeOptions::local("unused")
    }
}

/// Creates a namespace of its own for a test, named `prefix-` and a random suffix.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "generateName": format!("{prefix}-") }
    }))
    .unwrap();
    let created =
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
    created.metadata.name.expect("namespace name")
}

/// Applies every document of `yaml` with server-side apply (as `kubectl apply --server-side
/// --force-conflicts`), in `namespace` unless a document names its own; returns what the
/// apiserver stored, or its first refusal.
pub async fn apply(client: &Client, namespace: &str, yaml: &str) -> Result<Vec<DynamicObject>, kube::Error> {
    let mut applied = Vec::new();
    for value in serde_saphyr::from_multiple::<serde_json::Value>(yaml).expect("YAML documents") {
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value).expect("a Kubernetes object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion");
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
        let name = obj.metadata.name.clone().expect("metadata.name");
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            let ns = obj.metadata.namespace.as_deref().unwrap_or(namespace);
            Api::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        applied.push(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await?);
    }
    Ok(applied)
}

/// The echo's port in its Pod (echo-basic's default HTTP port).
pub const ECHO_PORT: u16 = 3000;

/// A Deployment of the Gateway API's echo image behind a Service `echo`. `version` goes into an
/// env var, so changing it rolls the Deployment. Old Pods drain for 2 s in a preStop hook.
pub fn echo_deployment(replicas: u32, version: &str) -> String {
    named_echo_deployment("echo", replicas, version)
}

/// [`echo_deployment`] named `name` (the Deployment, its Pods' `app` label and the Service).
pub fn named_echo_deployment(name: &str, replicas: u32, version: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-basic:v1.5.1
        ports:
        - {{name: http, containerPort: {ECHO_PORT}}}
        env:
        - {{name: VERSION, value: "{version}"}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: NAMESPACE
          valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
        readinessProbe:
          httpGet: {{path: /ready, port: http}}
          periodSeconds: 1
        lifecycle:
          preStop:
            sleep: {{seconds: 2}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 8080, targetPort: http}}
"#
    )
}

/// A GatewayClass of weir's named `weir-<ns>` (classes are cluster-wide: one per test
/// namespace), its Gateway `gw` in the namespace with one HTTP listener on `port`, and an
/// HTTPRoute `web` on it: `route_spec` is the route's spec below `parentRefs` (YAML at two
/// spaces, such as `  rules: ...`).
pub fn cluster_gateway_and_route(ns: &str, port: u16, route_spec: &str) -> String {
    format!("{}---{}", cluster_class(ns), gateway_with_route(ns, "gw", "web", port, route_spec))
}

/// The GatewayClass `weir-<ns>` of weir's.
pub fn cluster_class(ns: &str) -> String {
    format!(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: weir-{ns}}}
spec: {{controllerName: weir.dev/gateway-controller}}
"
    )
}

/// Gateway `gateway` of class `weir-<ns>` with one HTTP listener on `port`, and HTTPRoute `route`
/// on it with `route_spec` below its `parentRefs`.
pub fn gateway_with_route(ns: &str, gateway: &str, route: &str, port: u16, route_spec: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {gateway}}}
spec:
  gatewayClassName: weir-{ns}
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {route}}}
spec:
  parentRefs: [{{name: {gateway}}}]
{route_spec}"#
    )
}
