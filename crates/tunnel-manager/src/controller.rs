//! The VpcNatTunnel controller: watches, reconcile, error policy. Decisions live in
//! [`crate::resolve`] and [`crate::script`]; this module reads the caches, runs the scripts
//! through [`crate::exec`] and writes status and events.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::EventType,
        finalizer::Event as Finalizer,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use multivpc_api::{
    GatewayExIp, VpcNatTunnel, VpcNatTunnelStatus,
    conditions::{self, DesiredCondition},
    foreign::{
        kubeovn::{Subnet, Vpc, VpcNatGateway},
        submariner::{
            CLUSTER_EGRESS_IP_NAME, Cluster, ClusterGlobalEgressIP, SERVICE_DISCOVERY_NAME,
            SUBMARINER_NAMESPACE, ServiceDiscovery,
        },
    },
    gateway::KubeOvn,
    keys::TUNNEL_FINALIZER,
    net::Ipv4Cidr,
    tenancy::Tenancy,
    tunnel::PodRef,
};
use multivpc_runtime::{
    admin::{CacheSync, Probes},
    backoff::ErrorBackoff,
    events::Events,
    finalizer,
    metrics::ReconcileMetrics,
    own_writes::OwnWrites,
    status::apply_status,
    watch::{self, Decoded, WatchMetrics},
};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::{
    exec::{ExecError, Executor},
    resolve::{self, PodTarget, Resolved, Snapshot, reason},
    script::{self, CleanupConfig, Mode, Stale, TunnelConfig},
};

/// Name under which this controller writes (field manager, event reporter).
pub const MANAGER: &str = "tunnel-manager";

/// Errors of one reconcile; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster_id: Option<String>,
    pub exip_namespace: String,
    /// Where Kube-OVN runs the NAT gateway pods and how it names them.
    pub kube_ovn: KubeOvn,
    /// Period of the read-only drift verification; `None` disables it.
    pub verify_interval: Option<Duration>,
    /// Which VPCs a tunnel's namespace may program (`--tenancy`).
    pub tenancy: Tenancy,
}

/// Domain metrics besides the exec ones.
#[derive(Clone)]
pub struct TunnelMetrics {
    tunnels: IntGaugeVec,
    repairs: IntCounterVec,
    verifications: IntCounterVec,
}

/// Every state a tunnel can be in (the `Ready` reasons), pre-created at zero.
const STATES: [&str; 16] = [
    reason::PROGRAMMED,
    reason::INVALID_SPEC,
    reason::CLUSTER_ID_UNKNOWN,
    reason::REMOTE_GATEWAY_NOT_FOUND,
    reason::REMOTE_GATEWAY_INVALID,
    reason::GATEWAY_NOT_FOUND,
    reason::GATEWAY_POD_NOT_FOUND,
    reason::GATEWAY_POD_NOT_READY,
    reason::GLOBALNET_NOT_CONFIGURED,
    reason::EGRESS_IPS_NOT_ALLOCATED,
    reason::INTERFACE_NAME_CONFLICT,
    reason::REMOTE_CIDR_CONFLICT,
    reason::CONVERGE_FAILED,
    reason::VERIFICATION_FAILED,
    reason::NAMESPACE_NOT_ADMITTED,
    "Deleting",
];

impl TunnelMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let tunnels = IntGaugeVec::new(
            Opts::new(
                "multivpc_tunnel_tunnels",
                "VpcNatTunnels by state (the reason of their Ready condition)",
            ),
            &["state"],
        )?;
        let repairs = IntCounterVec::new(
            Opts::new(
                "multivpc_tunnel_repairs_total",
                "Tunnels re-programmed after their gateway state was lost or drifted, by cause (drift, pod_replaced)",
            ),
            &["cause"],
        )?;
        let verifications = IntCounterVec::new(
            Opts::new(
                "multivpc_tunnel_verifications_total",
                "Periodic read-only verifications of programmed tunnels, by result (in_sync, drift, failed)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(tunnels.clone()))?;
        registry.register(Box::new(repairs.clone()))?;
        registry.register(Box::new(verifications.clone()))?;
        for s in STATES {
            tunnels.with_label_values(&[s]).set(0);
        }
        for c in ["drift", "pod_replaced"] {
            repairs.with_label_values(&[c]);
        }
        for r in ["in_sync", "drift", "failed"] {
            verifications.with_label_values(&[r]);
        }
        Ok(Self {
            tunnels,
            repairs,
            verifications,
        })
    }
}

/// The caches the controller decides from.
#[derive(Clone)]
pub struct Stores {
    pub tunnels: Store<VpcNatTunnel>,
    pub exips: Store<GatewayExIp>,
    pub pods: Store<Pod>,
    pub clusters: Store<Cluster>,
    pub egress: Store<ClusterGlobalEgressIP>,
    /// VpcNatGateways (which VPC each serves) and Subnets (what that VPC's addresses are).
    pub gateways: Store<VpcNatGateway>,
    pub subnets: Store<Subnet>,
    /// Vpcs: which namespaces may program each (tenancy).
    pub vpcs: Store<Vpc>,
    /// Only without `--cluster-id`: ServiceDiscovery holds the broker token, which
    /// tunnel-manager has no use for, so the chart grants it only when it cannot render the ID.
    pub service_discovery: Option<Store<ServiceDiscovery>>,
    /// Bumped by every event of every watch, after its cache applied it.
    changes: Arc<AtomicU64>,
    /// The last snapshot, and the count of changes it was taken after: reconciles between two
    /// events share it (and what it works out once, such as each gateway's claims).
    latest: Arc<Mutex<Option<Latest>>>,
}

/// A snapshot and the count of changes it was taken after.
type Latest = (u64, Arc<Snapshot>);

/// `stream`, each item of which (a cache's event, after the cache applied it) counts in
/// `changes`.
fn counted<S: futures::Stream>(
    changes: &Arc<AtomicU64>,
    stream: S,
) -> impl futures::Stream<Item = S::Item> + use<S> {
    let changes = changes.clone();
    stream.inspect(move |_| {
        changes.fetch_add(1, Ordering::Release);
    })
}

impl Stores {
    /// What the caches hold now: the last snapshot when no watch event came since it was
    /// taken, else a new one. A reconcile triggered by an event runs after that event was
    /// counted, so it never gets a snapshot from before it.
    fn snapshot(&self, settings: &Settings) -> Arc<Snapshot> {
        let changes = self.changes.load(Ordering::Acquire);
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, snapshot)) = latest.as_ref()
            && *at == changes
        {
            return snapshot.clone();
        }
        let snapshot = Arc::new(self.take_snapshot(settings));
        *latest = Some((changes, snapshot.clone()));
        snapshot
    }

    fn take_snapshot(&self, settings: &Settings) -> Snapshot {
        let cluster_id = settings.cluster_id.clone().or_else(|| {
            self.service_discovery
                .iter()
                .flat_map(|sd| sd.state())
                .map(|sd| sd.spec.cluster_id.clone())
                .find(|id| !id.is_empty())
        });
        Snapshot {
            cluster_id,
            kube_ovn: settings.kube_ovn.clone(),
            tunnels: self.tunnels.state(),
            exips: self
                .exips
                .state()
                .into_iter()
                .map(|e| (e.name_any(), e))
                .collect::<BTreeMap<_, _>>(),
            pods: self.pods.state(),
            clusters: self
                .clusters
                .state()
                .into_iter()
                .map(|c| (c.name_any(), c))
                .collect(),
            egress: self.egress.state().into_iter().next(),
            gateways: self
                .gateways
                .state()
                .into_iter()
                .map(|g| (g.name_any(), g))
                .collect(),
            subnets: self.subnets.state(),
            vpcs: self
                .vpcs
                .state()
                .into_iter()
                .map(|v| (v.name_any(), v))
                .collect(),
            tenancy: settings.tenancy,
            claims: Default::default(),
        }
    }
}

/// What this process last programmed or verified for a tunnel.
struct Programmed {
    pod_uid: String,
    config: TunnelConfig,
    checked_at: Instant,
}

/// How often what is kept per tunnel is pruned of tunnels that are gone.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Shared state of the reconciles.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    /// No decision before every cache is synced: a gateway pod not yet listed would look gone
    /// (and a deletion would skip the pod's cleanup).
    pub caches: CacheSync,
    pub settings: Settings,
    pub events: Events,
    pub reconcile_metrics: ReconcileMetrics,
    pub metrics: TunnelMetrics,
    pub executor: Executor,
    pub backoff: ErrorBackoff,
    /// Tunnels as this process last wrote them (finalizer, status), until the cache shows it.
    pub writes: OwnWrites<VpcNatTunnel>,
    programmed: Mutex<HashMap<String, Programmed>>,
    states: Mutex<HashMap<String, &'static str>>,
}

impl Context {
    fn set_state(&self, key: &str, state: Option<&'static str>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => states.insert(key.to_owned(), s),
            None => states.remove(key),
        };
        let mut counts: HashMap<&str, i64> = STATES.iter().map(|s| (*s, 0)).collect();
        for s in states.values() {
            *counts.entry(s).or_default() += 1;
        }
        for (s, n) in counts {
            self.metrics.tunnels.with_label_values(&[s]).set(n);
        }
    }

    fn programmed_matches(&self, key: &str, resolved: &Resolved) -> Option<Instant> {
        let map = self.programmed.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|p| p.pod_uid == resolved.pod.uid && p.config == resolved.config)
            .map(|p| p.checked_at)
    }

    fn remember(&self, key: &str, resolved: &Resolved) {
        self.programmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key.to_owned(),
                Programmed {
                    pod_uid: resolved.pod.uid.clone(),
                    config: resolved.config.clone(),
                    checked_at: Instant::now(),
                },
            );
    }

    /// Forgets everything kept for tunnels that are gone (deleted without a cleanup this
    /// process saw: a finalizer removed by hand, a deletion while it was a standby).
    fn prune(&self) {
        let tunnels = self.stores.tunnels.state();
        let live: std::collections::HashSet<String> = tunnels.iter().map(|t| key(t)).collect();
        let uids: std::collections::HashSet<&str> = tunnels
            .iter()
            .filter_map(|t| t.metadata.uid.as_deref())
            .collect();
        self.writes.retain(|uid| uids.contains(uid));
        self.programmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| live.contains(k));
        let gone: Vec<String> = {
            let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            states
                .keys()
                .filter(|k| !live.contains(*k))
                .cloned()
                .collect()
        };
        for k in gone {
            self.set_state(&k, None);
        }
        self.backoff.retain(|k| live.contains(k));
    }

    fn forget(&self, key: &str) {
        self.programmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// What the other tunnels of a gateway decide from about a tunnel: its spec (conflicts, by
/// precedence), whether it is being deleted, and which pod and local route it holds (shared
/// routes, interface take-over).
#[derive(Clone, PartialEq, Eq)]
struct PeerFacts {
    uid: Option<String>,
    generation: Option<i64>,
    deleting: bool,
    pod_uid: Option<String>,
    local_route: Option<String>,
}

impl PeerFacts {
    fn of(t: &VpcNatTunnel) -> Self {
        let status = t.status.as_ref();
        Self {
            uid: t.metadata.uid.clone(),
            generation: t.metadata.generation,
            deleting: t.metadata.deletion_timestamp.is_some(),
            pod_uid: status
                .and_then(|s| s.gateway_pod.as_ref())
                .map(|p| p.uid.clone()),
            local_route: status
                .and_then(|s| s.applied.as_ref())
                .map(|a| a.local_route.clone()),
        }
    }
}

/// Reconciles in flight at most. Unbounded, 5000 tunnels created at once sent 5000 requests
/// at once: the API server answered everything late (the Lease too, so the leader fenced
/// itself). Enough for large batches per gateway pod ([`crate::exec`]); a dead gateway's
/// tunnels hold their places for one exec timeout at most (its queued calls fail together).
const MAX_RECONCILES: u16 = 256;

fn key(t: &VpcNatTunnel) -> String {
    format!("{}/{}", t.namespace().unwrap_or_default(), t.name_any())
}

fn refs(tunnels: impl IntoIterator<Item = Arc<VpcNatTunnel>>) -> Vec<ObjectRef<VpcNatTunnel>> {
    tunnels
        .into_iter()
        .map(|t| ObjectRef::from_obj(t.as_ref()))
        .collect()
}

/// Builds the controller and runs it until `shutdown`; marks `probes` once every cache is synced.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    settings: Settings,
    reconcile_metrics: ReconcileMetrics,
    metrics: TunnelMetrics,
    executor: Executor,
    probes: Probes,
    watch_metrics: WatchMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let c = client.clone();
    // Every watch stream is counted: the caches are synced when all have listed.
    let caches = CacheSync::new(probes);
    let changes = Arc::new(AtomicU64::new(0));

    let (exips, exips_stream) = watch::reflect(
        Api::<Decoded<GatewayExIp>>::namespaced(c.clone(), &settings.exip_namespace),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
    );
    let exips_stream = counted(&changes, exips_stream).touched_objects();
    let (pods, pods_stream) = watch::reflect(
        Api::<Decoded<Pod>>::namespaced(c.clone(), &settings.kube_ovn.namespace),
        watcher::Config::default().labels(&KubeOvn::pod_selector()),
        &caches,
        &watch_metrics,
    );
    let pods_stream = counted(&changes, pods_stream).touched_objects();
    // Only this cluster's Cluster is read; with the ID known, only it is watched (the chart's
    // Role then names it).
    let clusters_config = match &settings.cluster_id {
        Some(id) => watcher::Config::default().fields(&format!("metadata.name={id}")),
        None => watcher::Config::default(),
    };
    let (clusters, clusters_stream) = watch::reflect(
        Api::<Decoded<Cluster>>::namespaced(c.clone(), SUBMARINER_NAMESPACE),
        clusters_config,
        &caches,
        &watch_metrics,
    );
    let clusters_stream = counted(&changes, clusters_stream).touched_objects();
    let (egress, egress_stream) = watch::reflect(
        Api::<Decoded<ClusterGlobalEgressIP>>::all(c.clone()),
        watcher::Config::default().fields(&format!("metadata.name={CLUSTER_EGRESS_IP_NAME}")),
        &caches,
        &watch_metrics,
    );
    let egress_stream = counted(&changes, egress_stream).touched_objects();
    let (gateways, gateways_stream) = watch::reflect(
        Api::<Decoded<VpcNatGateway>>::all(c.clone()),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
    );
    let gateways_stream = counted(&changes, gateways_stream).touched_objects();
    let (subnets, subnets_stream) = watch::reflect(
        Api::<Decoded<Subnet>>::all(c.clone()),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
    );
    let subnets_stream = counted(&changes, subnets_stream).touched_objects();
    let (vpcs, vpcs_stream) = watch::reflect(
        Api::<Decoded<Vpc>>::all(c.clone()),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
    );
    let vpcs_stream = counted(&changes, vpcs_stream).touched_objects();
    let (service_discovery, sd_stream) = match settings.cluster_id {
        Some(_) => (None, None),
        None => {
            let (store, stream) = watch::reflect(
                Api::<Decoded<ServiceDiscovery>>::namespaced(c.clone(), SUBMARINER_NAMESPACE),
                watcher::Config::default()
                    .fields(&format!("metadata.name={SERVICE_DISCOVERY_NAME}")),
                &caches,
                &watch_metrics,
            );
            (
                Some(store),
                Some(counted(&changes, stream).touched_objects()),
            )
        }
    };
    let (tunnels, tunnels_stream) = watch::reflect(
        Api::<Decoded<VpcNatTunnel>>::all(c.clone()),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
    );
    let tunnels_stream = counted(&changes, tunnels_stream).applied_objects();
    // Tunnels of one gateway decide conflicts and shared routes together: a change to one
    // that they decide from ([`PeerFacts`]) wakes the others of its gateway.
    let peers_tunnels = tunnels.clone();
    let mut seen = HashMap::<String, PeerFacts>::new();
    // During a relist, the tunnels listed so far: at its end they replace `seen`, which forgets
    // the tunnels deleted while the watch was away (their peers are reconciled anyway: a
    // relist hands the controller every tunnel).
    let mut relisted: Option<HashMap<String, PeerFacts>> = None;
    let peers_stream = watch::isolate_errors(
        "VpcNatTunnel".into(),
        caches.probes().clone(),
        watch::skip_undecodable(
            watcher(
                Api::<Decoded<VpcNatTunnel>>::all(c.clone()),
                watcher::Config::default(),
            )
            .backoff(watch::backoff()),
            watch_metrics.clone(),
            |_| None,
        ),
    )
    .filter_map(|event| future::ready(event.ok()))
    .flat_map(move |event| {
        let changed: Vec<VpcNatTunnel> = match event {
            watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
                let facts = PeerFacts::of(&t);
                if let Some(listed) = relisted.as_mut() {
                    listed.insert(key(&t), facts.clone());
                }
                // A write that changed nothing its peers decide from (its own status
                // conditions, most often) wakes no one.
                if seen.insert(key(&t), facts.clone()) == Some(facts) {
                    vec![]
                } else {
                    vec![t]
                }
            }
            watcher::Event::Delete(t) => {
                seen.remove(&key(&t));
                vec![t]
            }
            watcher::Event::Init => {
                relisted = Some(HashMap::new());
                vec![]
            }
            watcher::Event::InitDone => {
                if let Some(listed) = relisted.take() {
                    seen = listed;
                }
                vec![]
            }
        };
        let peers: Vec<ObjectRef<VpcNatTunnel>> = changed
            .iter()
            .flat_map(|t| {
                let k = key(t);
                refs(peers_tunnels.state().into_iter().filter(move |o| {
                    key(o) != k
                        && (o.spec.nat_gw_dp == t.spec.nat_gw_dp || o.name_any() == t.name_any())
                }))
            })
            .collect();
        futures::stream::iter(peers)
    });

    // Bounded reconcile concurrency ([`MAX_RECONCILES`]); execs are bounded by the executor, per
    // pod and overall.
    let controller = Controller::for_stream(tunnels_stream, tunnels)
        .with_config(kube::runtime::controller::Config::default().concurrency(MAX_RECONCILES));
    let stores = Stores {
        tunnels: controller.store(),
        exips,
        pods,
        clusters,
        egress,
        gateways,
        subnets,
        vpcs,
        service_discovery,
        changes,
        latest: Arc::default(),
    };
    let (s1, s2, s3, s4, s5) = (
        stores.clone(),
        stores.clone(),
        stores.clone(),
        stores.clone(),
        stores.clone(),
    );
    let (f1, f2) = (settings.clone(), settings.clone());
    let controller = controller
        .watches_stream(exips_stream, move |e: GatewayExIp| {
            let name = e.name_any();
            let snapshot = s1.snapshot(&f1);
            refs(
                snapshot
                    .tunnels
                    .iter()
                    .filter(|t| {
                        multivpc_api::keys::gateway_exip_name(
                            &t.spec.gateway_name,
                            &t.spec.cluster_id,
                        ) == name
                            || snapshot.cluster_id.as_deref().is_some_and(|id| {
                                multivpc_api::keys::gateway_exip_name(&t.spec.nat_gw_dp, id) == name
                            })
                    })
                    .cloned(),
            )
        })
        .watches_stream(pods_stream, move |p: Pod| {
            let gw = f2.kube_ovn.gateway_of(&p);
            let name = p.name_any();
            let snapshot = s2.snapshot(&f2);
            refs(
                snapshot
                    .tunnels
                    .iter()
                    .filter(|t| {
                        gw.as_deref().is_some_and(|gw| {
                            resolve::local_instance(t, &snapshot) == gw || t.spec.nat_gw_dp == gw
                        }) || t
                            .status
                            .as_ref()
                            .and_then(|s| s.gateway_pod.as_ref())
                            .is_some_and(|g| g.name == name)
                    })
                    .cloned(),
            )
        })
        .watches_stream(clusters_stream, move |_: Cluster| refs(s3.tunnels.state()))
        .watches_stream(gateways_stream, {
            let s = stores.clone();
            move |_: VpcNatGateway| refs(s.tunnels.state())
        })
        .watches_stream(subnets_stream, {
            let s = stores.clone();
            move |_: Subnet| refs(s.tunnels.state())
        })
        .watches_stream(vpcs_stream, {
            let s = stores.clone();
            move |_: Vpc| refs(s.tunnels.state())
        })
        .watches_stream(egress_stream, move |_: ClusterGlobalEgressIP| {
            refs(s4.tunnels.state())
        })
        .reconcile_on(peers_stream);
    let controller = match sd_stream {
        Some(sd_stream) => controller.watches_stream(sd_stream, move |_: ServiceDiscovery| {
            refs(s5.tunnels.state())
        }),
        None => controller,
    }
    .graceful_shutdown_on(shutdown.clone().cancelled_owned());

    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: stores.clone(),
        caches: caches.clone(),
        settings,
        events: Events::new(client, MANAGER),
        reconcile_metrics,
        metrics,
        executor,
        backoff: ErrorBackoff::default(),
        writes: OwnWrites::default(),
        programmed: Mutex::new(HashMap::new()),
        states: Mutex::new(HashMap::new()),
    });

    let pruning = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            ctx.caches.synced().await;
            loop {
                tokio::time::sleep(PRUNE_INTERVAL).await;
                ctx.prune();
            }
        }
    });
    // Reconciles before the caches synced decided nothing: every object runs once they have.
    let controller = controller.reconcile_all_on(caches.on_synced());
    multivpc_runtime::runtime::drive_controller(
        controller.run(reconcile, error_policy, ctx),
        &caches,
        shutdown,
    )
    .await;
    pruning.abort();
    Ok(())
}

async fn reconcile(tunnel: Arc<VpcNatTunnel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx2 = ctx.clone();
    ctx.reconcile_metrics
        .measure(async move {
            let ns = tunnel.namespace().unwrap_or_default();
            let api: Api<VpcNatTunnel> = Api::namespaced(ctx2.client.clone(), &ns);
            let k = key(&tunnel);
            ctx2.caches
                .reconcile(&ctx2.backoff, &k, tunnel.metadata.generation, async {
                    finalizer::finalizer(
                        &api,
                        TUNNEL_FINALIZER,
                        MANAGER,
                        &ctx2.writes,
                        tunnel,
                        |event| async {
                            match event {
                                Finalizer::Apply(t) => apply(&t, &ctx2, &api).await,
                                Finalizer::Cleanup(t) => cleanup(&t, &ctx2).await,
                            }
                        },
                    )
                    .await
                    .map_err(|e| Error::Finalizer(Box::new(e)))
                })
                .await
        })
        .await
}

fn error_policy(tunnel: Arc<VpcNatTunnel>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx
        .backoff
        .next_delay(&key(&tunnel), tunnel.metadata.generation);
    tracing::warn!(tunnel = %key(&tunnel), %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// A stable per-tunnel delay in `[0, max)`.
fn jitter(key: &str, max: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(h.finish().checked_rem(nanos).unwrap_or(0))
}

fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    s.parse().ok()
}

/// Routes programmed under the previous spec, for the converge script to remove.
fn stale_of(
    tunnel: &VpcNatTunnel,
    old: &VpcNatTunnelStatus,
    resolved: &Resolved,
    snapshot: &Snapshot,
) -> Stale {
    let Some(applied) = &old.applied else {
        return Stale::default();
    };
    let local_cidr = parse_cidr(&applied.local_route)
        .filter(|c| !resolve::local_route_shared(tunnel, &resolved.pod.uid, *c, snapshot));
    Stale {
        remote_cidr: parse_cidr(&applied.remote_route),
        local_cidr,
    }
}

fn change_summary(stdout: &str) -> String {
    let lines = script::change_lines(stdout);
    let shown: Vec<&str> = lines.iter().take(6).copied().collect();
    let more = lines.len().saturating_sub(shown.len());
    let mut s = shown.join("; ");
    if more > 0 {
        s.push_str(&format!("; and {more} more"));
    }
    s
}

async fn apply(
    tunnel: &VpcNatTunnel,
    ctx: &Context,
    api: &Api<VpcNatTunnel>,
) -> Result<Action, Error> {
    let k = key(tunnel);
    let snapshot = ctx.stores.snapshot(&ctx.settings);
    let old = tunnel.status.clone().unwrap_or_default();
    let resolved = match resolve::resolve(tunnel, &snapshot) {
        Ok(r) => r,
        Err(nr) => {
            let mut status = old.clone();
            if nr.local_gateway.is_some() {
                status.local_gateway = nr.local_gateway.clone();
            }
            // A refused tunnel keeps nothing in the gateway: when an earlier tunnel claims its
            // interface name or remote CIDR after it was programmed, or its VPC stops admitting
            // its namespace, it withdraws.
            if [
                reason::INTERFACE_NAME_CONFLICT,
                reason::REMOTE_CIDR_CONFLICT,
                reason::NAMESPACE_NOT_ADMITTED,
            ]
            .contains(&nr.reason)
                && let Some(prev) = &old.gateway_pod
            {
                let plan = withdrawal(tunnel, &old, prev, &snapshot);
                drop(snapshot);
                withdraw(tunnel, ctx, plan).await?;
                status.gateway_pod = None;
                status.applied = None;
                ctx.forget(&k);
            }
            write_status(
                tunnel,
                ctx,
                api,
                status,
                &DesiredCondition::not_ready(nr.reason, nr.message),
            )
            .await?;
            ctx.set_state(&k, Some(nr.reason));
            return Ok(Action::await_change());
        }
    };

    // Everything decided from the caches is decided now: the snapshot (every tunnel, pod and
    // GatewayExIp) is not held across an exec, so waiting reconciles cost little memory.
    let move_out = old
        .gateway_pod
        .as_ref()
        .filter(|prev| prev.name != resolved.pod.name)
        .and_then(|prev| withdrawal(tunnel, &old, prev, &snapshot));
    let stale = stale_of(tunnel, &old, &resolved, &snapshot);
    drop(snapshot);

    // Failover: the tunnel moved to another gateway instance; take it out of the old pod.
    if let Some((target, cfg)) = move_out {
        let prev = &target;
        match ctx
            .executor
            .run(&target, "cleanup", script::Call::cleanup(&cfg))
            .await
        {
            Ok(out) if script::reported_changes(&out.stdout).unwrap_or(0) > 0 => {
                publish(
                    ctx,
                    tunnel,
                    EventType::Normal,
                    "TunnelMoved",
                    format!(
                        "removed from pod {} before programming pod {} (gateway {})",
                        prev.name, resolved.pod.name, resolved.local_gateway
                    ),
                )
                .await
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(tunnel = %k, err = %e, "could not clean the previous gateway pod")
            }
        }
    }

    let cfg = &resolved.config;
    let applied = resolve::applied_of(cfg);
    // Programmed before with this very configuration (Ready may have dropped meanwhile, e.g.
    // while the gateway pod was being replaced): changes now are repairs.
    let was_programmed = old.applied.as_ref() == Some(&applied) && old.gateway_pod.is_some();
    let interval = ctx.settings.verify_interval;
    match ctx.programmed_matches(&k, &resolved) {
        None => {
            let out = match ctx
                .executor
                .run(
                    &resolved.pod,
                    "converge",
                    script::Call::converge(cfg, &stale, Mode::Converge),
                )
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    return Err(
                        exec_failed(tunnel, ctx, api, &old, reason::CONVERGE_FAILED, e).await,
                    );
                }
            };
            let changes = script::reported_changes(&out.stdout).unwrap_or(0);
            if changes > 0 {
                tracing::info!(tunnel = %k, pod = %resolved.pod.name, changes, repair = was_programmed, "converged: {}", change_summary(&out.stdout));
            }
            if changes > 0 {
                if was_programmed {
                    let cause = if old.gateway_pod.as_ref().map(|p| p.uid.as_str())
                        != Some(resolved.pod.uid.as_str())
                    {
                        "pod_replaced"
                    } else {
                        "drift"
                    };
                    ctx.metrics.repairs.with_label_values(&[cause]).inc();
                    publish(
                        ctx,
                        tunnel,
                        EventType::Warning,
                        "Repaired",
                        format!(
                            "re-programmed pod {} ({cause}): {}",
                            resolved.pod.name,
                            change_summary(&out.stdout)
                        ),
                    )
                    .await;
                } else {
                    publish(
                        ctx,
                        tunnel,
                        EventType::Normal,
                        reason::PROGRAMMED,
                        format!(
                            "programmed pod {}: {}",
                            resolved.pod.name,
                            change_summary(&out.stdout)
                        ),
                    )
                    .await;
                }
            }
            ctx.remember(&k, &resolved);
        }
        Some(checked_at) if interval.is_some_and(|i| checked_at.elapsed() >= i) => {
            let out = match ctx
                .executor
                .run(
                    &resolved.pod,
                    "check",
                    script::Call::converge(cfg, &Stale::default(), Mode::Check),
                )
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    ctx.metrics
                        .verifications
                        .with_label_values(&["failed"])
                        .inc();
                    ctx.forget(&k);
                    return Err(exec_failed(
                        tunnel,
                        ctx,
                        api,
                        &old,
                        reason::VERIFICATION_FAILED,
                        e,
                    )
                    .await);
                }
            };
            if script::reported_changes(&out.stdout).unwrap_or(0) > 0 {
                ctx.metrics
                    .verifications
                    .with_label_values(&["drift"])
                    .inc();
                if let Err(e) = ctx
                    .executor
                    .run(
                        &resolved.pod,
                        "converge",
                        script::Call::converge(cfg, &stale, Mode::Converge),
                    )
                    .await
                {
                    ctx.forget(&k);
                    return Err(
                        exec_failed(tunnel, ctx, api, &old, reason::CONVERGE_FAILED, e).await,
                    );
                }
                ctx.metrics.repairs.with_label_values(&["drift"]).inc();
                tracing::warn!(tunnel = %k, pod = %resolved.pod.name, "drift repaired: {}", change_summary(&out.stdout));
                publish(
                    ctx,
                    tunnel,
                    EventType::Warning,
                    "DriftRepaired",
                    format!(
                        "verification found drift in pod {} and repaired it: {}",
                        resolved.pod.name,
                        change_summary(&out.stdout)
                    ),
                )
                .await;
            } else {
                ctx.metrics
                    .verifications
                    .with_label_values(&["in_sync"])
                    .inc();
            }
            ctx.remember(&k, &resolved);
        }
        Some(_) => {}
    }

    let status = VpcNatTunnelStatus {
        observed_generation: tunnel.metadata.generation,
        conditions: old.conditions.clone(),
        local_gateway: Some(resolved.local_gateway.clone()),
        gateway_pod: Some(PodRef {
            name: resolved.pod.name.clone(),
            uid: resolved.pod.uid.clone(),
        }),
        local_ip: Some(cfg.local_ip.to_string()),
        remote_ip: Some(cfg.remote_ip.to_string()),
        local_globalnet_cidr: Some(cfg.local_cidr.to_string()),
        remote_globalnet_cidr: Some(cfg.remote_cidr.to_string()),
        ovn_gateway_ip: Some(cfg.ovn_gateway.to_string()),
        egress_range: Some(cfg.snat.to_string()),
        applied: Some(applied),
    };
    let mut message = format!(
        "{} tunnel {} programmed in pod {} (gateway {})",
        cfg.encap.tunnel_type(),
        cfg.device,
        resolved.pod.name,
        resolved.local_gateway
    );
    if let Some(note) = &resolved.note {
        message.push_str("; ");
        message.push_str(note);
    }
    write_status(
        tunnel,
        ctx,
        api,
        status,
        &DesiredCondition::ready(reason::PROGRAMMED, message),
    )
    .await?;
    ctx.set_state(&k, Some(reason::PROGRAMMED));

    // Wake for the next verification (measured from the last one), spread over up to a tenth
    // of the interval so that tunnels converged together are not all verified together.
    Ok(match (interval, ctx.programmed_matches(&k, &resolved)) {
        (Some(i), Some(at)) => Action::requeue(
            (i + jitter(&k, i / 10))
                .saturating_sub(at.elapsed())
                .max(Duration::from_secs(1)),
        ),
        _ => Action::await_change(),
    })
}

/// What taking `tunnel` out of pod `prev` (where it was programmed) removes, if that pod still
/// holds its state.
fn withdrawal(
    tunnel: &VpcNatTunnel,
    old: &VpcNatTunnelStatus,
    prev: &PodRef,
    snapshot: &Snapshot,
) -> Option<(PodTarget, CleanupConfig)> {
    let holds = snapshot.pods.iter().any(|p| {
        p.name_any() == prev.name
            && p.uid().as_deref() == Some(&prev.uid)
            && resolve::pod_may_hold_state(p)
    });
    let cfg = cleanup_config(tunnel, old, &prev.uid, snapshot).filter(|_| holds)?;
    let target = PodTarget {
        name: prev.name.clone(),
        uid: prev.uid.clone(),
    };
    Some((target, cfg))
}

/// Removes a refused tunnel's state from the pod it was programmed into ([`withdrawal`]).
async fn withdraw(
    tunnel: &VpcNatTunnel,
    ctx: &Context,
    plan: Option<(PodTarget, CleanupConfig)>,
) -> Result<(), Error> {
    let Some((target, cfg)) = plan else {
        return Ok(());
    };
    let prev = &target;
    let out = ctx
        .executor
        .run(&target, "cleanup", script::Call::cleanup(&cfg))
        .await?;
    publish(
        ctx,
        tunnel,
        EventType::Warning,
        "Withdrawn",
        format!(
            "refused by a conflict: removed from pod {}: {}",
            prev.name,
            change_summary(&out.stdout)
        ),
    )
    .await;
    Ok(())
}

/// Records a failed exec in the condition and an event; returns the error to retry with.
async fn exec_failed(
    tunnel: &VpcNatTunnel,
    ctx: &Context,
    api: &Api<VpcNatTunnel>,
    old: &VpcNatTunnelStatus,
    why: &'static str,
    err: ExecError,
) -> Error {
    let message = err.to_string();
    // The condition carries the latest failure (exit status and stderr); its event comes with
    // the first failure of this reason (write_status), not with every retry: the retries back
    // off and count in multivpc_tunnel_exec_failures_total.
    if let Err(e) = write_status(
        tunnel,
        ctx,
        api,
        old.clone(),
        &DesiredCondition::not_ready(why, message),
    )
    .await
    {
        tracing::warn!(tunnel = %key(tunnel), err = %e, "could not record the exec failure");
    }
    ctx.set_state(&key(tunnel), Some(why));
    Error::Exec(err)
}

/// What cleanup removes from pod `pod_uid`. When another live tunnel of the same name has taken
/// the interface over (while this one is deleted or refused), only this tunnel's tagged rules go.
fn cleanup_config(
    tunnel: &VpcNatTunnel,
    old: &VpcNatTunnelStatus,
    pod_uid: &str,
    snapshot: &Snapshot,
) -> Option<CleanupConfig> {
    let device = resolve::device_of(tunnel).ok()?;
    let tag = resolve::tag_of(tunnel).ok()?;
    let taken = snapshot.tunnels.iter().any(|o| {
        o.metadata.deletion_timestamp.is_none()
            && o.name_any() == tunnel.name_any()
            && key(o) != key(tunnel)
            && o.status
                .as_ref()
                .and_then(|s| s.gateway_pod.as_ref())
                .is_some_and(|p| p.uid == pod_uid)
    });
    let applied = old.applied.as_ref();
    Some(CleanupConfig {
        device,
        delete_device: !taken,
        tag,
        remote_cidr: applied
            .and_then(|a| parse_cidr(&a.remote_route))
            .filter(|_| !taken),
        local_cidr: applied
            .and_then(|a| parse_cidr(&a.local_route))
            .filter(|c| !resolve::local_route_shared(tunnel, pod_uid, *c, snapshot)),
    })
}

async fn cleanup(tunnel: &VpcNatTunnel, ctx: &Context) -> Result<Action, Error> {
    let k = key(tunnel);
    ctx.set_state(&k, Some("Deleting"));
    let snapshot = ctx.stores.snapshot(&ctx.settings);
    let old = tunnel.status.clone().unwrap_or_default();
    // Only the pod this tunnel was programmed into holds its state; a pod that is gone (or no
    // longer running) took that state with it.
    let target = old.gateway_pod.as_ref().and_then(|prev| {
        snapshot
            .pods
            .iter()
            .find(|p| p.name_any() == prev.name && resolve::pod_may_hold_state(p))
            .map(|p| PodTarget {
                name: prev.name.clone(),
                uid: p.uid().unwrap_or_default(),
            })
    });
    let plan = target.and_then(|t| cleanup_config(tunnel, &old, &t.uid, &snapshot).map(|c| (t, c)));
    drop(snapshot);
    match plan {
        Some((target, cfg)) => {
            let out = ctx
                .executor
                .run(&target, "cleanup", script::Call::cleanup(&cfg))
                .await?;
            tracing::info!(tunnel = %k, pod = %target.name, changes = ?script::reported_changes(&out.stdout), "tunnel removed");
            publish(
                ctx,
                tunnel,
                EventType::Normal,
                "Removed",
                format!(
                    "removed from pod {}: {}",
                    target.name,
                    change_summary(&out.stdout)
                ),
            )
            .await;
        }
        None => {
            tracing::info!(tunnel = %k, "no gateway pod holds the tunnel; releasing the finalizer")
        }
    }
    ctx.forget(&k);
    ctx.set_state(&k, None);
    Ok(Action::await_change())
}

async fn write_status(
    tunnel: &VpcNatTunnel,
    ctx: &Context,
    api: &Api<VpcNatTunnel>,
    mut status: VpcNatTunnelStatus,
    condition: &DesiredCondition,
) -> Result<(), Error> {
    let old = tunnel.status.clone().unwrap_or_default();
    status.observed_generation = tunnel.metadata.generation;
    let old_ready = conditions::find(&old.conditions, conditions::READY).cloned();
    conditions::set_condition(
        &mut status.conditions,
        condition,
        tunnel.metadata.generation,
        jiff::Timestamp::now(),
    );
    if status == old {
        return Ok(()); // Steady state: no write.
    }
    if old_ready.is_none_or(|c| c.reason != condition.reason) && !condition.status {
        publish(
            ctx,
            tunnel,
            EventType::Warning,
            condition.reason,
            condition.message.clone(),
        )
        .await;
    }
    let written = apply_status(api, &tunnel.name_any(), MANAGER, &status).await?;
    ctx.writes.wrote(tunnel, written);
    Ok(())
}

async fn publish(
    ctx: &Context,
    tunnel: &VpcNatTunnel,
    type_: EventType,
    reason: &str,
    note: String,
) {
    ctx.events
        .publish(&tunnel.object_ref(&()), type_, reason, "Reconcile", note)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use multivpc_api::{TunnelType, VpcNatTunnelSpec, tunnel::AppliedTunnel};

    fn tunnel(ns: &str, name: &str, pod_uid: Option<&str>, local_route: &str) -> VpcNatTunnel {
        let mut t = VpcNatTunnel::new(
            name,
            VpcNatTunnelSpec {
                cluster_id: "cluster2".into(),
                gateway_name: "rgw".into(),
                interface_addr: "10.100.0.1/24".into(),
                nat_gw_dp: "gw1".into(),
                tunnel_type: TunnelType::Vxlan,
                vni: None,
                dst_port: None,
            },
        );
        t.metadata.namespace = Some(ns.into());
        t.status = Some(VpcNatTunnelStatus {
            gateway_pod: pod_uid.map(|uid| PodRef {
                name: "vpc-nat-gw-gw1-0".into(),
                uid: uid.into(),
            }),
            applied: Some(AppliedTunnel {
                local_route: local_route.into(),
                remote_route: "242.1.0.0/16".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        t
    }

    fn snapshot(tunnels: Vec<VpcNatTunnel>) -> Snapshot {
        Snapshot {
            tunnels: tunnels.into_iter().map(Arc::new).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cleanup_keeps_what_others_still_use() {
        let me = tunnel("ns1", "vx1", Some("u1"), "242.0.0.0/16");
        let alone = cleanup_config(
            &me,
            me.status.as_ref().unwrap(),
            "u1",
            &snapshot(vec![me.clone()]),
        )
        .unwrap();
        assert_eq!(alone.local_cidr, Some("242.0.0.0/16".parse().unwrap()));
        assert_eq!(alone.remote_cidr, Some("242.1.0.0/16".parse().unwrap()));
        assert_eq!(alone.tag.to_string(), "multivpc-tunnel:ns1/vx1");

        // Another live tunnel of the same pod records the same local route: it stays.
        let sibling = tunnel("ns1", "vx2", Some("u1"), "242.0.0.0/16");
        let shared = cleanup_config(
            &me,
            me.status.as_ref().unwrap(),
            "u1",
            &snapshot(vec![me.clone(), sibling]),
        )
        .unwrap();
        assert_eq!(shared.local_cidr, None);

        // A live tunnel of the same name (another namespace) has taken the device over: only
        // this tunnel's rules go (the heir also records the local route).
        let heir = tunnel("ns2", "vx1", Some("u1"), "242.0.0.0/16");
        let rules_only = cleanup_config(
            &me,
            me.status.as_ref().unwrap(),
            "u1",
            &snapshot(vec![me.clone(), heir.clone()]),
        )
        .unwrap();
        assert!(!rules_only.delete_device);
        assert_eq!(rules_only.remote_cidr, None);
        assert_eq!(rules_only.local_cidr, None);
        // ... unless it is being deleted too.
        let mut leaving = heir;
        leaving.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(1).unwrap()));
        assert!(
            cleanup_config(
                &me,
                me.status.as_ref().unwrap(),
                "u1",
                &snapshot(vec![me.clone(), leaving])
            )
            .unwrap()
            .delete_device
        );
    }

    #[test]
    fn jitter_is_bounded_and_stable() {
        let max = Duration::from_secs(30);
        assert!(jitter("ns/a", max) < max);
        assert_eq!(jitter("ns/a", max), jitter("ns/a", max));
        assert_eq!(jitter("ns/a", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn change_summaries_are_bounded() {
        let out: String = (0..10).map(|i| format!("change: step {i}\n")).collect();
        let s = change_summary(&out);
        assert!(s.starts_with("step 0; step 1"), "{s}");
        assert!(s.ends_with("and 4 more"), "{s}");
        assert_eq!(change_summary("multivpc-changes=0\n"), "");
    }
}
