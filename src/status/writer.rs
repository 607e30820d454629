//! Writes the statuses [`super::desired`] computes, on the leader only: a merge patch of each
//! changed object's status subresource.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{desired, StatusContext, StatusUpdate};
use crate::api::backend_policy::BackendPolicy;
use crate::api::mesh_authorization::MeshAuthorization;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::translate::status::Statuses;

/// What a status is computed from: the store as loaded (each object's generation and current
/// status) and the statuses of the model serving.
pub struct StatusInputs {
    pub store: Arc<Store>,
    pub statuses: Statuses,
}

pub type StatusInput = Arc<StatusInputs>;

/// A write that failed is tried again (with what is current then) after this, doubling up to
/// [`RETRY_MAX`] while writes keep failing.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Writes status while `leading` says so, each time `inputs` changes (and on becoming leader);
/// writes that failed (a refusal, an apiserver away) are tried again with a backoff.
pub fn spawn_writer(
    client: Client,
    ctx: StatusContext,
    mut inputs: watch::Receiver<Option<StatusInput>>,
    mut leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut written = Written::default();
        // after a failed write: when to try again, and the wait after that
        let mut retry: Option<(Instant, Duration)> = None;
        loop {
            let retry_at = retry.map(|(at, _)| at);
            tokio::select! {
                r = inputs.changed() => if r.is_err() { return },
                r = leading.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
            }
            if !*leading.borrow_and_update() {
                written.clear();
                retry = None;
                continue;
            }
            let Some(input) = inputs.borrow_and_update().clone() else { continue };
            let mut failed = false;
            for u in desired(&input.store, &input.statuses, &ctx, &now()) {
                if written.already(&u) {
                    continue;
                }
                let result = match patch(&client, &u).await {
                    Ok(()) => {
                        written.wrote(&u);
                        "ok"
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(kind = u.kind, namespace = %u.namespace, name = %u.name, error = %e, "cannot write status; it is tried again");
                        "error"
                    }
                };
                metrics.status_writes.with_label_values(&[u.kind, result]).inc();
            }
            retry = failed.then(|| {
                let wait = retry.map_or(RETRY_FIRST, |(_, wait)| wait);
                (Instant::now() + wait, (wait * 2).min(RETRY_MAX))
            });
        }
    })
}

/// What was written, and the status the object had then: until the store shows the write,
/// the same status is not written again. By uid: an object deleted and created again under its
/// name within the second (the conformance suite does) would otherwise get no status, its own
/// being equal, to the second, to the one written for the object before it.
#[derive(Default)]
struct Written(HashMap<(&'static str, String, String, Option<String>), (Option<Value>, Value)>);

impl Written {
    fn key(u: &StatusUpdate) -> (&'static str, String, String, Option<String>) {
        (u.kind, u.namespace.clone(), u.name.clone(), u.uid.clone())
    }

    fn already(&self, u: &StatusUpdate) -> bool {
        self.0.get(&Written::key(u)).is_some_and(|(before, status)| *before == u.current && *status == u.status)
    }

    fn wrote(&mut self, u: &StatusUpdate) {
        self.0.insert(Written::key(u), (u.current.clone(), u.status.clone()));
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Now, to the second, as the API server keeps condition times.
fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

async fn patch(client: &Client, u: &StatusUpdate) -> Result<(), kube::Error> {
    let (c, ns) = (client.clone(), u.namespace.as_str());
    match u.kind {
        "GatewayClass" => patch_status(Api::<GatewayClass>::all(c), u).await,
        "Gateway" => patch_status(Api::<Gateway>::namespaced(c, ns), u).await,
        "HTTPRoute" => patch_status(Api::<HttpRoute>::namespaced(c, ns), u).await,
        "GRPCRoute" => patch_status(Api::<GrpcRoute>::namespaced(c, ns), u).await,
        "TLSRoute" => patch_status(Api::<TlsRoute>::namespaced(c, ns), u).await,
        "Ingress" => patch_status(Api::<Ingress>::namespaced(c, ns), u).await,
        "BackendPolicy" => patch_status(Api::<BackendPolicy>::namespaced(c, ns), u).await,
        "MeshAuthorization" => patch_status(Api::<MeshAuthorization>::namespaced(c, ns), u).await,
        kind => unreachable!("no status is computed for {kind}"),
    }
}

/// A merge patch of the status subresource: the lists in it (conditions, parents) are replaced
/// whole, other controllers' parents included as [`super::desired`] kept them.
async fn patch_status<K>(api: Api<K>, u: &StatusUpdate) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = Patch::Merge(json!({"status": u.status}));
    api.patch_status(&u.name, &PatchParams::default(), &body).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(uid: &str) -> StatusUpdate {
        StatusUpdate {
            kind: "HTTPRoute",
            namespace: "infra".into(),
            name: "request-header-modifier".into(),
            status: json!({"parents": [{"conditions": [{"type": "Accepted", "lastTransitionTime": "2026-12-05T19:46:46Z"}]}]}),
            current: None,
            uid: Some(uid.into()),
        }
    }

    #[test]
    fn an_object_created_again_under_its_name_gets_its_status_written() {
        let mut written = Written::default();
        let first = update("uid-1");
        assert!(!written.already(&first));
        written.wrote(&first);
        assert!(written.already(&first), "the same status for the same object is not written twice");
        // deleted and created again within the second: the same status, to the second
        assert!(!written.already(&update("uid-2")), "the new object has no status yet");
    }
}
