//! Lease-based leader election: the controller runs only while this replica holds the Lease,
//! is stopped (drained) when the Lease is lost, and started again when it is won back.
//!
//! Fencing: the lease manager reports a lost Lease only once it can read the Lease again, so a
//! leader cut off from the API server would go on acting after a standby took over. Here the
//! leader reads its Lease back every [`FENCE_CHECK`] and may act only until
//! `renewTime + leaseDuration - FENCE_MARGIN` of the last renewal it saw: one it cannot see
//! renewed stops before a standby may take over (at `renewTime + leaseDuration`, judged by the
//! standby against the same renewTime).
//!
//! The Lease and the fence run on a thread of their own, with their own runtime and client: a
//! controller busy on every worker thread (thousands of reconciles at once) would otherwise
//! delay the renewal and the fence's reading until the leader fenced itself.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::admin::Probes;

/// Lease timing: a leader that stops renewing is replaced after `DURATION` seconds; it renews
/// `GRACE` seconds before expiry, so every 5 s (controller-runtime: 15 s, retrying every 2 s).
/// A renewal that waits behind a busy API server then still lands long before the fence
/// ([`FENCE_MARGIN`] before expiry) would stop the controller.
const DURATION_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 10;

/// How often a leader reads its Lease back (and the longest one reading may take).
const FENCE_CHECK: Duration = Duration::from_secs(2);
/// How long before its Lease expires an unrenewed leader stops: the time a stop signal takes to
/// reach every task, with the slack of one check.
const FENCE_MARGIN: Duration = Duration::from_secs(3);

/// Until when `identity` may act, as `lease` says: its renewal plus the lease duration, less
/// [`FENCE_MARGIN`]. `None` when another replica (or none) holds it.
fn acts_until(lease: &Lease, identity: &str) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = SystemTime::from(spec.renew_time.as_ref()?.0);
    let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    renewed.checked_add(duration)?.checked_sub(FENCE_MARGIN)
}

/// Keeps `may_act` true exactly while this replica's last reading of its Lease lets it act
/// ([`acts_until`]); a reading that fails keeps the previous one, which runs out on its own.
async fn fence(
    api: Api<Lease>,
    name: String,
    identity: String,
    wake: Arc<Notify>,
    may_act: watch::Sender<bool>,
) {
    let mut until: Option<SystemTime> = None;
    loop {
        match tokio::time::timeout(FENCE_CHECK, api.get_opt(&name)).await {
            Ok(Ok(lease)) => until = lease.as_ref().and_then(|l| acts_until(l, &identity)),
            Ok(Err(err)) => tracing::debug!(%err, "cannot read the leader Lease"),
            Err(_) => tracing::debug!("no answer reading the leader Lease"),
        }
        let now = SystemTime::now();
        let acting = until.is_some_and(|u| now < u);
        may_act.send_if_modified(|was| std::mem::replace(was, acting) != acting);
        // Look again after FENCE_CHECK, or when the deadline passes, or when woken.
        let left = until
            .and_then(|u| u.duration_since(now).ok())
            .unwrap_or(FENCE_CHECK)
            .min(FENCE_CHECK);
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Waits until `rx` holds `want`; false once its sender is gone. The borrow ends here: a
/// `watch::Ref` held across an await blocks the sender's next send, and with it a runtime
/// worker thread (a leader draining its controller while the fence reports would hang).
async fn wait_until(rx: &mut watch::Receiver<bool>, want: bool) -> bool {
    rx.wait_for(|v| *v == want).await.is_ok()
}

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

/// The Lease side of an election, running on its own thread: whether this replica holds the
/// Lease, whether the fence lets it act, and the thread's end.
struct LeaseThread {
    is_leader: watch::Receiver<bool>,
    may_act: watch::Receiver<bool>,
    wake_fence: Arc<Notify>,
    /// The lease task's result, sent once it has ended (after `is_leader` is dropped, once the
    /// Lease is released).
    released: oneshot::Receiver<anyhow::Result<()>>,
}

type Started = anyhow::Result<(watch::Receiver<bool>, watch::Receiver<bool>)>;

impl LeaseThread {
    /// Starts the thread and waits until the Lease manager is set up.
    async fn start(config: kube::Config, lease: &str, namespace: &str) -> anyhow::Result<Self> {
        let (started_tx, started) = oneshot::channel::<Started>();
        let (released_tx, released) = oneshot::channel();
        let wake_fence = Arc::new(Notify::new());
        let wake = wake_fence.clone();
        let (lease, namespace) = (lease.to_owned(), namespace.to_owned());
        std::thread::Builder::new()
            .name("leader-lease".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = started_tx.send(Err(anyhow::Error::from(err)
                            .context("cannot start the leader election runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Built here: a client's connection tasks run on the runtime it is made on.
                    let setup = async {
                        let client = Client::try_from(config)
                            .context("invalid Kubernetes client configuration")?;
                        let me = identity();
                        let manager = LeaseManagerBuilder::new(client.clone(), &lease)
                            .with_namespace(&namespace)
                            .with_identity(me.clone())
                            .with_duration(DURATION_SECONDS)
                            .with_grace(GRACE_SECONDS)
                            .build()
                            .await
                            .with_context(|| {
                                format!("cannot set up leader election Lease {namespace}/{lease}")
                            })?;
                        anyhow::Ok((client, me, manager))
                    };
                    let (client, me, manager) = match setup.await {
                        Ok(set_up) => set_up,
                        Err(err) => {
                            let _ = started_tx.send(Err(err));
                            return;
                        }
                    };
                    let (is_leader, lease_task) = manager.watch().await;
                    let (may_act_tx, may_act) = watch::channel(false);
                    let fence_task = tokio::spawn(fence(
                        Api::namespaced(client, &namespace),
                        lease,
                        me,
                        wake,
                        may_act_tx,
                    ));
                    if started_tx.send(Ok((is_leader, may_act))).is_err() {
                        fence_task.abort();
                    }
                    let ended = match lease_task.await {
                        Ok(result) => result.map(drop).map_err(anyhow::Error::from),
                        Err(err) => Err(anyhow::anyhow!("leader election task failed: {err}")),
                    };
                    fence_task.abort();
                    let _ = released_tx.send(ended);
                });
            })
            .context("cannot start the leader election thread")?;
        let (is_leader, may_act) = started
            .await
            .map_err(|_| anyhow::anyhow!("the leader election thread stopped"))??;
        Ok(Self {
            is_leader,
            may_act,
            wake_fence,
            released,
        })
    }
}

/// Runs `controller` while this replica leads `lease` in `namespace`, until `shutdown`.
/// `config` is the cluster's client configuration; the Lease gets a client of its own.
///
/// `controller` receives a token cancelled when leadership is lost or the process shuts down;
/// it must return once it has drained. A controller that returns on its own (an error) ends
/// the process with that result.
pub async fn run_elected<F, Fut>(
    config: kube::Config,
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
    let LeaseThread {
        mut is_leader,
        mut may_act,
        wake_fence,
        released,
    } = tokio::select! {
        started = LeaseThread::start(config, lease, namespace) => started?,
        _ = shutdown.cancelled() => return Ok(()),
    };

    let result = loop {
        leader_gauge.set(0);
        probes.set_standby(true);
        tracing::info!(lease, namespace, "waiting for leadership");
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            open = wait_until(&mut is_leader, true) => {
                if !open {
                    break Err(anyhow::anyhow!("leader election task stopped"));
                }
            }
        }
        // Act only once the Lease is seen held and fresh (after a fence, once it is renewed).
        wake_fence.notify_one();
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            open = wait_until(&mut may_act, true) => {
                if !open {
                    break Err(anyhow::anyhow!("leader fencing task stopped"));
                }
            }
            _ = wait_until(&mut is_leader, false) => continue,
        }
        tracing::info!(lease, "became leader; starting controller");
        leader_gauge.set(1);
        probes.set_standby(false);
        let term = shutdown.child_token();
        let run = controller(term.clone());
        tokio::pin!(run);
        tokio::select! {
            ended = &mut run => break ended,
            open = wait_until(&mut is_leader, false) => {
                tracing::warn!(lease, "lost leadership; stopping controller");
                term.cancel();
                let drained = run.await;
                probes.set_synced(false);
                if !open {
                    break drained.and(Err(anyhow::anyhow!("leader election task stopped")));
                }
                drained?;
            }
            open = wait_until(&mut may_act, false) => {
                if !open {
                    term.cancel();
                    break run.await.and(Err(anyhow::anyhow!("leader fencing task stopped")));
                }
                tracing::warn!(
                    lease,
                    "cannot see the leader Lease renewed before it expires; stopping controller"
                );
                leader_gauge.set(0);
                term.cancel();
                let drained = run.await;
                probes.set_synced(false);
                drained?;
            }
        }
    };
    leader_gauge.set(0);
    // Dropping the receivers makes the lease task release the Lease for a quick hand-over.
    drop((is_leader, may_act));
    // Bounded: an API server that does not answer must not hold up the exit (the Lease then
    // expires on its own, as after a crash).
    match tokio::time::timeout(Duration::from_secs(DURATION_SECONDS), released).await {
        Ok(Ok(Err(err))) => tracing::warn!(%err, "could not release the leader Lease"),
        Err(_) => tracing::warn!("no answer releasing the leader Lease; it expires on its own"),
        Ok(_) => {}
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: SystemTime, seconds: i32) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "l"},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": seconds,
                "renewTime": k8s_openapi::jiff::Timestamp::try_from(renewed).unwrap().to_string(),
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_leader_acts_only_until_shortly_before_its_lease_expires() {
        let renewed = SystemTime::now();
        let until = acts_until(&lease("me", renewed, 15), "me").unwrap();
        assert_eq!(
            until.duration_since(renewed).unwrap(),
            Duration::from_secs(15) - FENCE_MARGIN
        );
        assert_eq!(acts_until(&lease("other", renewed, 15), "me"), None);
        let mut unheld = lease("me", renewed, 15);
        unheld.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(acts_until(&unheld, "me"), None);
        let mut unrenewed = lease("me", renewed, 15);
        unrenewed.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(acts_until(&unrenewed, "me"), None);
    }
}
