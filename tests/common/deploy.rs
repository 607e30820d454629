//! The cluster's tools (kubectl, helm, built by `scripts/cluster build`), the chart rendered,
//! and a ServiceAccount's kubeconfig: for the tests of `deploy/` and of weir's RBAC.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube::config::Kubeconfig;
use weir::app::{start_edge, EdgeHandle, EdgeOptions};
use weir::source::kubernetes::KubeSource;
use weir::source::ConfigSource;
use weir::status::leader::LeaderOptions;
use weir::status::StatusOptions;

use super::{wait_until, Cluster};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn tool(name: &str) -> PathBuf {
    let path = root().join("target/cluster/bin").join(name);
    if !path.exists() {
        let built = Command::new(root().join("scripts/cluster")).arg("build").status().expect("scripts/cluster build");
        assert!(built.success(), "scripts/cluster build failed");
    }
    path
}

/// Runs `program args` (stdin from `input`), returning its stdout; panics with its stderr if it
/// fails.
pub fn run(program: &Path, args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.unwrap_or_default().as_bytes()).unwrap();
    drop(stdin);
    let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} {args:?} failed:\n{stderr}\n{stdout}", program.display());
    stdout.into_owned()
}

pub fn kubectl(cluster: &Cluster, args: &[&str], input: Option<&str>) -> String {
    let kubeconfig = format!("--kubeconfig={}", cluster.kubeconfig.display());
    run(&tool("kubectl"), &[&[kubeconfig.as_str()], args].concat(), input)
}

pub fn helm_template(release: &str, namespace: &str, extra: &[&str]) -> String {
    let chart = root().join("deploy/helm/weir");
    let args = [&["template", release, chart.to_str().unwrap(), "--namespace", namespace], extra].concat();
    run(&tool("helm"), &args, None)
}

/// A kubeconfig holding a token of ServiceAccount `home/name` (TokenRequest) instead of the
/// admin's certificate.
pub fn service_account_kubeconfig(cluster: &Cluster, home: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    let token = kubectl(cluster, &["create", "token", name, "-n", home, "--duration=1h"], None);
    let mut kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(serde_json::from_value(serde_json::json!({"token": token.trim()})).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_saphyr::to_string(&kubeconfig).unwrap()).unwrap();
    (dir, path)
}

/// weir edge reading `source`, writing status as the holder of Lease `home/lease` (15 s).
pub async fn edge_writing_status(source: KubeSource, home: &str, lease: &str) -> EdgeHandle {
    let leader = LeaderOptions {
        namespace: home.into(),
        lease_name: lease.into(),
        holder: "weir-0".into(),
        lease_duration: std::time::Duration::from_secs(15),
    };
    let status = StatusOptions { leader, publish_service: None, publish_addresses: vec![] };
    let source = ConfigSource::Kubernetes(source);
    start_edge(EdgeOptions { source, status: Some(status), ..EdgeOptions::local("unused") })
        .await
        .expect("weir edge with the ServiceAccount's token")
}

/// The chart's ServiceAccount and RBAC for release `release` installed in `home`.
pub fn chart_rbac(release: &str, home: &str) -> String {
    helm_template(
        release,
        home,
        &["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
    )
}

/// Waits (at most `within`) until Gateway `ns/name`'s status says `Programmed=True`.
pub async fn wait_for_programmed_gateway(client: &kube::Client, ns: &str, name: &str, within: std::time::Duration) {
    wait_until("the Gateway's status is written", within, || async {
        let gw = kube::Api::<gateway_api::gateways::Gateway>::namespaced(client.clone(), ns).get(name).await.unwrap();
        gw.status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Programmed" && c.status == "True"))
    })
    .await;
}
