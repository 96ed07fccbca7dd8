//! The admin endpoints: `/metrics` on the metrics address, `/healthz` and `/readyz` on the
//! probe address (one listener when both addresses are the same).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use futures::{Stream, StreamExt, future::BoxFuture};
use kube::runtime::{controller::Action, watcher};

use anyhow::Context as _;
use axum::{Router, http::StatusCode, routing::get};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{args::BindAddress, liveness::Liveness, metrics::Metrics};

/// What the probes answer. `/readyz`: whether the process should receive work — its
/// controller's caches are synced, or it is a leader-election standby (standbys are healthy and
/// ready by design, so rolling updates of a multi-replica Deployment do not stall waiting for a
/// replica that will never lead). `/healthz`: whether it still gets anywhere ([`Liveness`]).
#[derive(Clone, Default)]
pub struct Probes(Arc<ProbeState>);

#[derive(Default)]
struct ProbeState {
    synced: AtomicBool,
    standby: AtomicBool,
    liveness: Liveness,
}

impl Probes {
    /// Not ready; `/healthz` fails after `stall_timeout` of a stalled watch or reconcile.
    pub fn new(stall_timeout: std::time::Duration) -> Self {
        Self(Arc::new(ProbeState {
            liveness: Liveness::new(stall_timeout),
            ..ProbeState::default()
        }))
    }

    /// The liveness state `/healthz` reads.
    pub fn liveness(&self) -> &Liveness {
        &self.0.liveness
    }

    /// Records whether the controller's caches are synced.
    pub fn set_synced(&self, synced: bool) {
        self.0.synced.store(synced, Ordering::Release);
    }

    /// Records whether this replica is waiting for the leader lease.
    pub fn set_standby(&self, standby: bool) {
        self.0.standby.store(standby, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.0.synced.load(Ordering::Acquire) || self.0.standby.load(Ordering::Acquire)
    }
}

/// Whether a controller's caches have had their initial lists. A controller must not decide
/// from a partial cache (an object not yet listed looks deleted), and it must not block a
/// reconcile waiting for the lists either (the watch streams only advance while the controller
/// polls them): reconciles check [`CacheSync::is_synced`] and come back shortly when not.
///
/// Probes is read off the watch streams themselves ([`CacheSync::track`] sees each stream's
/// first `InitDone`), not from `Store::wait_until_ready`: that future sits on a one-shot channel
/// that wakes only its latest poller, so a second waiter on the same store (kube's controller
/// waits on its main store) could hang forever.
#[derive(Clone)]
pub struct CacheSync {
    inner: Arc<CacheSyncState>,
}

struct CacheSyncState {
    pending: AtomicUsize,
    synced: tokio::sync::watch::Sender<bool>,
    probes: Probes,
}

impl CacheSync {
    /// Not yet synced; `probes` is marked when every tracked stream has listed.
    pub fn new(probes: Probes) -> Self {
        Self {
            inner: Arc::new(CacheSyncState {
                pending: AtomicUsize::new(0),
                synced: tokio::sync::watch::Sender::new(false),
                probes,
            }),
        }
    }

    /// Counts `stream` (a watcher stream, typically after `.reflect(writer)` so the store has
    /// the list when it counts) among those that must list before the caches are synced.
    /// Call it for every stream before the controller starts.
    pub fn track<K, S>(&self, stream: S) -> impl Stream<Item = S::Item> + Send + use<K, S>
    where
        K: Send,
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        let inner = self.inner.clone();
        let mut listed = false;
        stream.inspect(move |event| {
            if !listed && matches!(event, Ok(watcher::Event::InitDone)) {
                listed = true;
                if inner.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    inner.synced.send_replace(true);
                    inner.probes.set_synced(true);
                    tracing::info!("caches synced");
                }
            }
        })
    }

    /// Whether every tracked stream has had its initial list (non-blocking).
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Runs one reconcile of the object `key` (at `generation`) once the caches are synced;
    /// before that it returns at once without deciding anything and without a requeue (5000
    /// objects retried every 200 ms while one watch could not list were 25,000 reconciles a
    /// second): give the controller [`CacheSync::on_synced`] to reconcile every object once the
    /// caches have synced. An object still in
    /// its error backoff comes back at its retry time instead (see [`crate::backoff`]). A
    /// success forgets the object's failures in `backoff`. The work comes boxed, as
    /// [`crate::metrics::ReconcileMetrics::measure`] says why.
    pub async fn reconcile<E>(
        &self,
        backoff: &crate::backoff::ErrorBackoff,
        key: &str,
        generation: Option<i64>,
        reconcile: BoxFuture<'_, Result<Action, E>>,
    ) -> Result<Action, E> {
        if !self.is_synced() {
            return Ok(Action::await_change());
        }
        if let Some(wait) = backoff.held(key, generation) {
            return Ok(Action::requeue(wait));
        }
        let _running = self
            .inner
            .probes
            .liveness()
            .running(format!("reconcile of {key}"));
        let action = reconcile.await?;
        backoff.reset(key);
        Ok(action)
    }

    /// Emits once, when the caches have synced: the trigger of a controller's
    /// `reconcile_all_on`, so that every object deferred by [`CacheSync::reconcile`] runs then.
    pub fn on_synced(&self) -> impl Stream<Item = ()> + Send + 'static {
        let this = self.clone();
        futures::stream::once(async move { this.synced().await })
    }

    /// The probes this marks ready (watches report their failures on them).
    pub fn probes(&self) -> &Probes {
        &self.inner.probes
    }

    /// Resolves once every tracked stream has had its initial list (any number of waiters).
    pub async fn synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }
}

/// Addresses the admin servers actually listen on (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct AdminAddrs {
    pub metrics: Option<SocketAddr>,
    pub probes: Option<SocketAddr>,
}

fn metrics_routes(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    metrics.render(),
                )
            }
        }),
    )
}

fn probe_routes(probes: Probes) -> Router {
    Router::new()
        .route(
            "/healthz",
            get({
                let probes = probes.clone();
                move || {
                    let stalled = probes.liveness().stalled();
                    async move {
                        match stalled {
                            None => (StatusCode::OK, "ok".to_owned()),
                            Some(why) => {
                                tracing::warn!(%why, "failing /healthz: the controller is stalled");
                                (StatusCode::SERVICE_UNAVAILABLE, why)
                            }
                        }
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = probes.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                    }
                }
            }),
        )
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

fn spawn(listener: TcpListener, app: Router, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(%err, "admin server failed");
        }
    })
}

/// Binds the admin listeners (so a taken port fails start-up at once) and serves them until
/// `shutdown` is cancelled.
pub async fn serve(
    metrics_addr: BindAddress,
    probe_addr: BindAddress,
    metrics: Metrics,
    probes: Probes,
    shutdown: CancellationToken,
) -> anyhow::Result<(AdminAddrs, Vec<JoinHandle<()>>)> {
    let mut tasks = Vec::new();
    let mut addrs = AdminAddrs {
        metrics: None,
        probes: None,
    };
    match (metrics_addr, probe_addr) {
        (BindAddress::Socket(m), BindAddress::Socket(p)) if m == p && m.port() != 0 => {
            let listener = bind(m, "metrics and probes").await?;
            let local = listener.local_addr()?;
            addrs = AdminAddrs {
                metrics: Some(local),
                probes: Some(local),
            };
            let app = metrics_routes(metrics).merge(probe_routes(probes));
            tasks.push(spawn(listener, app, shutdown));
        }
        (m, p) => {
            if let BindAddress::Socket(m) = m {
                let listener = bind(m, "metrics").await?;
                addrs.metrics = Some(listener.local_addr()?);
                tasks.push(spawn(listener, metrics_routes(metrics), shutdown.clone()));
            }
            if let BindAddress::Socket(p) = p {
                let listener = bind(p, "health probes").await?;
                addrs.probes = Some(listener.local_addr()?);
                tasks.push(spawn(listener, probe_routes(probes), shutdown));
            }
        }
    }
    Ok((addrs, tasks))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = String::new();
        stream.read_to_string(&mut buf).await.unwrap();
        let code = buf[9..12].parse().unwrap();
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }

    #[tokio::test]
    async fn probes_and_metrics_are_served() {
        let metrics = Metrics::new();
        let _ = metrics.controller("demo");
        let probes = Probes::default();
        let shutdown = CancellationToken::new();
        let local: BindAddress = "127.0.0.1:0".parse().unwrap();
        let (addrs, tasks) = serve(local, local, metrics, probes.clone(), shutdown.clone())
            .await
            .unwrap();
        let (m, p) = (addrs.metrics.unwrap(), addrs.probes.unwrap());

        assert_eq!(get(p, "/healthz").await.0, 200);
        assert_eq!(
            get(p, "/readyz").await.0,
            503,
            "not ready before caches sync"
        );
        probes.set_synced(true);
        assert_eq!(get(p, "/readyz").await.0, 200);
        probes.set_synced(false);
        probes.set_standby(true);
        assert_eq!(get(p, "/readyz").await.0, 200, "a standby is ready");

        let (code, body) = get(m, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            body.contains("controller_runtime_reconcile_total{controller=\"demo\""),
            "{body}"
        );
        assert_eq!(
            get(m, "/healthz").await.0,
            404,
            "probes live on their own address"
        );

        shutdown.cancel();
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn healthz_fails_while_a_reconcile_is_stalled_and_says_which() {
        let probes = Probes::new(Duration::from_millis(20));
        let local: BindAddress = "127.0.0.1:0".parse().unwrap();
        let shutdown = CancellationToken::new();
        let (addrs, _tasks) = serve(
            BindAddress::Disabled,
            local,
            Metrics::new(),
            probes.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let p = addrs.probes.unwrap();
        let running = probes.liveness().running("reconcile of ns/t");
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (code, body) = get(p, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.starts_with("reconcile of ns/t has run for"), "{body}");
        drop(running);
        assert_eq!(get(p, "/healthz").await, (200, "ok".to_owned()));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn cache_sync_marks_ready_once_every_stream_listed() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let probes = Probes::default();
        let sync = CacheSync::new(probes.clone());
        let listed = || {
            futures::stream::iter(vec![
                Ok(watcher::Event::<ConfigMap>::Init),
                Ok(watcher::Event::InitDone),
                // A later re-list must not count twice.
                Ok(watcher::Event::Init),
                Ok(watcher::Event::InitDone),
            ])
        };
        let first = sync.track(listed());
        let second = sync.track(listed());
        let waiter = tokio::spawn({
            let sync = sync.clone();
            async move { sync.synced().await }
        });
        assert_eq!(first.count().await, 4);
        assert!(
            !sync.is_synced() && !probes.is_ready(),
            "one stream still listing"
        );
        assert_eq!(second.count().await, 4);
        assert!(sync.is_synced() && probes.is_ready());
        waiter.await.unwrap();
        sync.synced().await;
    }

    #[tokio::test]
    async fn reconcile_waits_for_the_caches_and_resets_backoff() {
        use crate::backoff::ErrorBackoff;
        use k8s_openapi::api::core::v1::ConfigMap;
        let sync = CacheSync::new(Probes::default());
        let backoff = ErrorBackoff::new(Duration::from_secs(1), Duration::from_secs(8));
        backoff.next_delay("k", None);
        let ran = std::sync::atomic::AtomicBool::new(false);
        let run = || async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(Action::await_change())
        };
        let early = sync
            .reconcile(&backoff, "k", Some(1), Box::pin(run()))
            .await
            .unwrap();
        assert_eq!(
            early,
            Action::await_change(),
            "deferred to on_synced, not requeued"
        );
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "nothing decided before sync"
        );
        let listed = futures::stream::iter(vec![Ok(watcher::Event::<ConfigMap>::InitDone)]);
        sync.track(listed).count().await;
        assert_eq!(
            sync.reconcile(&backoff, "k", Some(1), Box::pin(run()))
                .await,
            Ok(Action::await_change())
        );
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(
            backoff.next_delay("k", None),
            Duration::from_secs(1),
            "success reset the backoff"
        );
    }

    #[tokio::test]
    async fn disabled_metrics_bind_nothing() {
        let local: BindAddress = "127.0.0.1:0".parse().unwrap();
        let (addrs, _tasks) = serve(
            BindAddress::Disabled,
            local,
            Metrics::new(),
            Probes::default(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(addrs.metrics.is_none() && addrs.probes.is_some());
    }
}
