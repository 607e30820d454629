//! Leader election on a `coordination.k8s.io/v1` Lease (kube-leader-election): every replica
//! serves; the holder of the Lease writes status.

use std::time::Duration;

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
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
        let lock = LeaseLock::new(
            client,
            &opts.namespace,
            LeaseLockParams {
                lease_name: opts.lease_name.clone(),
                holder_id: opts.holder.clone(),
                lease_ttl: opts.lease_duration,
            },
        );
        let mut renewed: Option<Instant> = None;
        loop {
            match lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => renewed = Some(Instant::now()),
                Ok(LeaseLockResult::NotAcquired(_)) => renewed = None,
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
