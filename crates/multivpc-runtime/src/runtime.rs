//! Process lifecycle shared by every controller binary.

use std::{future::Future, process::ExitCode, time::Duration};

use anyhow::Context as _;
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminAddrs, CacheSync, Probes},
    args::CommonArgs,
    leader,
    metrics::Metrics,
    telemetry,
};

/// How long start-up waits for the API server before giving up with a clear error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a controller needs from its process: a client, metrics, probes and the
/// shutdown signal. Built once by [`Runtime::init`], consumed by [`Runtime::run`].
pub struct Runtime {
    name: &'static str,
    args: CommonArgs,
    client: Client,
    /// The client configuration, for the leader Lease's own client (on its own thread: a
    /// renewal must not queue behind the controller's work, or a busy leader fences itself).
    config: kube::Config,
    metrics: Metrics,
    probes: Probes,
    shutdown: CancellationToken,
    admin_addrs: AdminAddrs,
    admin_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Runtime {
    /// Initialises logging, connects to the cluster (failing fast when it is unreachable),
    /// starts the admin endpoints and installs the SIGTERM/SIGINT handler.
    pub async fn init(name: &'static str, args: CommonArgs) -> anyhow::Result<Self> {
        // Connect before logging starts: an unreachable cluster is then reported once, by
        // `main_with`, instead of also through the client's own error log lines.
        let (client, config) = connect().await?;
        telemetry::init(args.log_format);
        let metrics = Metrics::new();
        let probes = Probes::new(args.stall_timeout);
        let shutdown = CancellationToken::new();
        let (admin_addrs, admin_tasks) = admin::serve(
            args.metrics_bind_address,
            args.health_probe_bind_address,
            metrics.clone(),
            probes.clone(),
            shutdown.clone(),
        )
        .await?;
        tokio::spawn(watch_signals(shutdown.clone()));
        tracing::info!(
            controller = name,
            version = env!("CARGO_PKG_VERSION"),
            metrics = ?admin_addrs.metrics,
            probes = ?admin_addrs.probes,
            "started"
        );
        Ok(Self {
            name,
            args,
            client,
            config,
            metrics,
            probes,
            shutdown,
            admin_addrs,
            admin_tasks,
        })
    }

    /// A client of the cluster the process runs against.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The flags the process was started with.
    pub fn args(&self) -> &CommonArgs {
        &self.args
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The probes handle; the controller marks its caches synced on it.
    pub fn probes(&self) -> Probes {
        self.probes.clone()
    }

    /// Where the admin endpoints listen.
    pub fn admin_addrs(&self) -> AdminAddrs {
        self.admin_addrs
    }

    /// Runs `controller` until SIGTERM/SIGINT (or, with `--leader-elect`, while leading), then
    /// stops the admin endpoints. `controller` gets a token to drain on; it is called again
    /// each time leadership is regained.
    pub async fn run<F, Fut>(self, mut controller: F) -> anyhow::Result<()>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let leader_gauge = self.metrics.leader_status(self.name);
        let result = if self.args.leader_elect {
            leader::run_elected(
                self.config.clone(),
                &format!("multivpc-{}", self.name),
                &self.args.leader_election_namespace,
                leader_gauge,
                self.probes.clone(),
                self.shutdown.clone(),
                controller,
            )
            .await
        } else {
            leader_gauge.set(1);
            controller(self.shutdown.clone()).await
        };
        self.shutdown.cancel();
        for task in self.admin_tasks {
            let _ = task.await;
        }
        tracing::info!(controller = self.name, "stopped");
        result
    }
}

/// Infers the client configuration (in-cluster, then kubeconfig) and checks the API server
/// answers, so a wrong or missing cluster is one clear line at start-up, not a retry loop.
/// Returns the client and its configuration.
async fn connect() -> anyhow::Result<(Client, kube::Config)> {
    // The inferred-config error already names both sources it tried; its source chain would
    // only repeat them.
    let config = kube::Config::infer()
        .await
        .map_err(|err| anyhow::anyhow!("no usable Kubernetes configuration: {err}"))?;
    let url = config.cluster_url.clone();
    let client =
        Client::try_from(config.clone()).context("invalid Kubernetes client configuration")?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok((client, config)),
        Ok(Err(err)) => {
            Err(err).with_context(|| format!("cannot reach the Kubernetes API server at {url}"))
        }
        Err(_) => anyhow::bail!(
            "cannot reach the Kubernetes API server at {url}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            "cannot install signal handlers; SIGTERM will kill the process without draining"
        );
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown signal received; draining");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second shutdown signal; exiting now");
    std::process::exit(130);
}

/// Runs a binary's async `main` on a multi-threaded runtime. A failure is printed as one line
/// (`<binary>: error: <cause>: <cause>…`) and turns into exit status 1, never a panic trace.
pub fn main_with(binary: &str, main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{binary}: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{binary}: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, skipping causes whose text the previous one already
/// shows (client errors often repeat their source in their own message).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !previous.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        previous = text;
    }
    line
}

/// Drives a kube `Controller::run` stream (built with `graceful_shutdown_on(shutdown)`) to its
/// end, logging each item.
///
/// kube's runner holds every reconcile until the controller's main store has listed, and once
/// shutdown has stopped the watches that list never arrives: a SIGTERM during start-up would
/// leave the graceful drain waiting forever. Before `caches` are synced no reconcile has
/// decided anything (see [`CacheSync::reconcile`]) and syncing never reverts, so a shutdown then
/// drops the controller at once; after it, the graceful drain lets running reconciles finish.
pub async fn drive_controller<K, E, S>(
    controller: S,
    caches: &CacheSync,
    shutdown: CancellationToken,
) where
    S: futures::Stream<Item = ControllerResult<K, E>>,
    K: kube::Resource,
    K::DynamicType: Clone + Eq + std::hash::Hash,
    E: std::error::Error + 'static,
{
    use futures::StreamExt as _;
    let drained = controller.for_each(|result| async move { log_controller_result(&result) });
    let unsynced_shutdown = async {
        shutdown.cancelled().await;
        if caches.is_synced() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown before the caches synced; nothing to drain");
    };
    tokio::select! {
        () = drained => {}
        () = unsynced_shutdown => {}
    }
}

/// One item of a kube `Controller::run` stream.
pub type ControllerResult<K, E> = Result<
    (
        kube::runtime::reflector::ObjectRef<K>,
        kube::runtime::controller::Action,
    ),
    kube::runtime::controller::Error<E, kube::runtime::watcher::Error>,
>;

/// Logs one item of a kube `Controller::run` stream. Watch failures (a missing CRD, a
/// forbidden list) keep the caches from syncing and are otherwise silent, so they are warnings;
/// reconcile failures are already reported by the controller's `error_policy`.
fn log_controller_result<K, E>(result: &ControllerResult<K, E>)
where
    K: kube::Resource,
    K::DynamicType: Clone + Eq + std::hash::Hash,
    E: std::error::Error + 'static,
{
    use kube::runtime::controller::Error;
    match result {
        Ok((object, _)) => tracing::debug!(%object, "reconciled"),
        Err(Error::QueueError(err)) => tracing::warn!(%err, "watch failed; retrying with backoff"),
        Err(err) => tracing::debug!(%err, "reconcile not completed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller whose main store has not listed yet, like one given SIGTERM right after it
    /// won the lease. kube's graceful drain alone never ends then.
    fn unlisted_controller(
        shutdown: &CancellationToken,
    ) -> (
        impl futures::Stream<
            Item = ControllerResult<k8s_openapi::api::core::v1::ConfigMap, std::io::Error>,
        >,
        kube::runtime::reflector::store::Writer<k8s_openapi::api::core::v1::ConfigMap>,
    ) {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::runtime::{Controller, controller::Action, reflector, watcher};
        use std::sync::Arc;
        let (reader, writer) = reflector::store::<ConfigMap>();
        let triggers = futures::stream::pending::<Result<ConfigMap, watcher::Error>>();
        let controller = Controller::for_stream(triggers, reader)
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                |_: Arc<ConfigMap>, _: Arc<()>| async {
                    Ok::<_, std::io::Error>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                Arc::new(()),
            );
        (controller, writer)
    }

    /// `drive` runs until `shutdown` is cancelled, then ends (a hang fails the test instead of
    /// stalling the suite).
    async fn stops_on_shutdown(drive: impl Future<Output = ()>, shutdown: &CancellationToken) {
        tokio::pin!(drive);
        assert!(
            futures::poll!(&mut drive).is_pending(),
            "ended before the signal"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), drive)
            .await
            .expect("the controller did not stop");
    }

    #[tokio::test]
    async fn a_shutdown_before_the_caches_sync_ends_the_controller() {
        let shutdown = CancellationToken::new();
        let (controller, _writer) = unlisted_controller(&shutdown);
        let caches = CacheSync::new(Probes::default());
        stops_on_shutdown(
            drive_controller(controller, &caches, shutdown.clone()),
            &shutdown,
        )
        .await;
    }

    #[tokio::test]
    async fn a_shutdown_after_the_caches_sync_drains_the_controller_gracefully() {
        use futures::StreamExt as _;
        use kube::runtime::watcher::Event;
        let shutdown = CancellationToken::new();
        let (controller, mut writer) = unlisted_controller(&shutdown);
        writer.apply_watcher_event(&Event::InitDone);
        let caches = CacheSync::new(Probes::default());
        let listed = caches.track(futures::stream::iter([Ok::<
            Event<k8s_openapi::api::core::v1::ConfigMap>,
            kube::runtime::watcher::Error,
        >(Event::InitDone)]));
        listed.collect::<Vec<_>>().await;
        assert!(caches.is_synced());
        stops_on_shutdown(
            drive_controller(controller, &caches, shutdown.clone()),
            &shutdown,
        )
        .await;
    }

    #[test]
    fn errors_print_on_one_line_without_repeats() {
        let err = anyhow::anyhow!("tcp connect error: refused")
            .context("client error (Connect): tcp connect error: refused")
            .context("client error (Connect)")
            .context("cannot reach the API server at https://x/");
        assert_eq!(
            one_line(&err),
            "cannot reach the API server at https://x/: client error (Connect): client error (Connect): tcp connect error: refused"
        );
        let multi = anyhow::anyhow!("a\nb");
        assert_eq!(one_line(&multi), "a b");
    }
}
