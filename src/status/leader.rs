//! Leader election on a `coordination.k8s.io/v1` Lease: every replica serves; the holder of the
//! Lease writes status.
//!
//! Each write of the Lease is a replace conditional on the version read just before (as
//! client-go's leader election does): of several replicas that see it expire at once, one takes
//! it and the others get a conflict. (kube-leader-election, used before, patched the Lease
//! unconditionally, so with three replicas two could both believe they had taken it.)

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::telemetry::Metrics;

/// The Lease and how this replica holds it.
#[derive(Clone, Debug)]
pub struct LeaderOptions {
    /// weir's own namespace (`--leader-election-namespace`, else `POD_NAMESPACE`).
    pub namespace: String,
    /// The Lease's name (`--lease-name`).
    pub lease_name: String,
    /// This replica's identity in the Lease (the Pod's name, else host and process).
    pub holder: String,
    /// How long a Lease not renewed stays its holder's (`--lease-duration`, whole seconds): a
    /// replica that stops renewing is replaced within it.
    pub lease_duration: Duration,
}

impl LeaderOptions {
    /// The identity of this replica: `POD_NAME`, else the host name and the process ID.
    pub fn default_holder() -> String {
        std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
    }

    /// How often the Lease is renewed, or tried for: a fifth of its duration (3 s of 15 s;
    /// client-go retries every 2 s), so a takeover comes soon after the Lease expires.
    pub fn retry_period(&self) -> Duration {
        (self.lease_duration / 5).max(Duration::from_millis(200))
    }
}

/// Tries for the Lease for as long as it runs; the receiver says whether this replica holds it.
/// A holder that cannot renew (the apiserver is gone) stops saying so once its Lease may have
/// expired, since another replica may hold it by then.
pub fn spawn_leader(
    client: Client,
    opts: LeaderOptions,
    metrics: std::sync::Arc<Metrics>,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let lock = LeaseLock::new(Api::namespaced(client, &opts.namespace), &opts);
        let mut renewed: Option<Instant> = None;
        loop {
            let attempt = Instant::now();
            match lock.try_acquire_or_renew().await {
                Ok(true) => renewed = Some(attempt),
                Ok(false) => renewed = None,
                Err(e) => tracing::warn!(
                    error = %e,
                    lease = %format!("{}/{}", opts.namespace, opts.lease_name),
                    "cannot renew or take the Lease; trying again"
                ),
            }
            let leading = renewed.is_some_and(|t| t.elapsed() < opts.lease_duration);
            if *tx.borrow() != leading {
                match leading {
                    true => tracing::info!(holder = %opts.holder, "this replica leads: it writes status"),
                    false => tracing::info!(holder = %opts.holder, "this replica no longer leads"),
                }
            }
            metrics.leader.set(i64::from(leading));
            // only a change wakes the writer (a renewal is not news to it)
            tx.send_if_modified(|was| std::mem::replace(was, leading) != leading);
            tokio::time::sleep(opts.retry_period()).await;
        }
    });
    (rx, task)
}

/// One replica's hold on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    duration: Duration,
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, opts: &LeaderOptions) -> Self {
        LeaseLock { api, name: opts.lease_name.clone(), holder: opts.holder.clone(), duration: opts.lease_duration }
    }

    /// Renews the Lease if this replica holds it, takes it if it is free or has expired; returns
    /// whether this replica holds it now. Losing a race to another replica is not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let seconds = self.duration.as_secs().max(1) as i32;
        let won = |r: Result<Lease, kube::Error>| match r {
            Ok(_) => Ok(true),
            // another replica wrote it since it was read (or created it first)
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.holder.clone()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_duration_seconds: Some(seconds),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return won(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.holder.as_str());
        let held_until = spec.renew_time.as_ref().map(|t| {
            let duration =
                k8s_openapi::jiff::SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
            t.0.saturating_add(duration).unwrap_or(t.0)
        });
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty) || held_until.is_none_or(|t| t < now);
        if !ours && !free {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.holder.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // the Lease as read keeps its resourceVersion: the replace fails if anyone wrote since
        won(self.api.replace(&self.name, &PostParams::default(), &lease).await)
    }
}
