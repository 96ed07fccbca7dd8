//! Lease-based leader election: the controller runs only while this replica holds the Lease,
//! is stopped (drained) when the Lease is lost, and started again when it is won back.

use std::future::Future;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::admin::Probes;

/// Lease timing: a leader that stops renewing is replaced after `DURATION` seconds; it renews
/// `GRACE` seconds before expiry (controller-runtime uses 15 s / 10 s renew deadline).
const DURATION_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 5;

/// Identity of this replica in the Lease: the pod name when running in a pod.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}_{}_{nanos:08x}", std::process::id())
}

/// Runs `controller` while this replica leads `lease` in `namespace`, until `shutdown`.
///
/// `controller` receives a token cancelled when leadership is lost or the process shuts down;
/// it must return once it has drained. A controller that returns on its own (an error) ends
/// the process with that result.
pub async fn run_elected<F, Fut>(
    client: Client,
    lease: &str,
    namespace: &str,
    leader_gauge: prometheus::IntGauge,
    probes: Probes,
    shutdown: CancellationToken,
    mut controller: F,
) -> anyhow::Result<()>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(namespace)
        .with_identity(identity())
        .with_duration(DURATION_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await
        .with_context(|| format!("cannot set up leader election Lease {namespace}/{lease}"))?;
    let (mut is_leader, lease_task) = manager.watch().await;

    let result = loop {
        leader_gauge.set(0);
        probes.set_standby(true);
        tracing::info!(lease, namespace, "waiting for leadership");
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            changed = is_leader.wait_for(|leading| *leading) => {
                if changed.is_err() {
                    break Err(anyhow::anyhow!("leader election task stopped"));
                }
            }
        }
        tracing::info!(lease, "became leader; starting controller");
        leader_gauge.set(1);
        probes.set_standby(false);
        let term = shutdown.child_token();
        let run = controller(term.clone());
        tokio::pin!(run);
        tokio::select! {
            ended = &mut run => break ended,
            lost = is_leader.wait_for(|leading| !*leading) => {
                tracing::warn!(lease, "lost leadership; stopping controller");
                term.cancel();
                let drained = run.await;
                probes.set_synced(false);
                if lost.is_err() {
                    break drained.and(Err(anyhow::anyhow!("leader election task stopped")));
                }
                drained?;
            }
        }
    };
    leader_gauge.set(0);
    // Dropping the receiver makes the lease task release the Lease for a quick hand-over.
    drop(is_leader);
    if let Ok(Err(err)) = lease_task.await {
        tracing::warn!(%err, "could not release the leader Lease");
    }
    result
}
