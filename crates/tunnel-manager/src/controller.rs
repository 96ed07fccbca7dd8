//! The VpcNatTunnel controller: watches, reconcile, error policy. Decisions live in
//! [`crate::resolve`] and [`crate::script`]; this module reads the caches, runs the scripts
//! through [`crate::exec`] and writes status and events.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
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
    Encryption, GatewayExIp, VpcNatTunnel, VpcNatTunnelStatus,
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
    tenancy::Tenancy,
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
    health::Tracker,
    ipsec,
    plan::{self, HealthInput, Plan, Removal, Step},
    prober::{self, ProbeSettings},
    resolve::{self, PodTarget, Resolved, Snapshot, reason},
    script::{self, Mode, Stale, TunnelConfig},
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
    /// Health probes through the tunnels; `None` disables them.
    pub probes: Option<ProbeSettings>,
    /// Where the fleet's IPsec pre-shared key is, and the rekey interval; `None`: tunnels with
    /// `encryption: ipsec` are refused.
    pub ipsec: Option<IpsecSettings>,
}

/// `--ipsec-psk-secret`, `--ipsec-psk-key`, `--ipsec-rekey-interval`.
#[derive(Debug, Clone)]
pub struct IpsecSettings {
    pub namespace: String,
    pub secret: String,
    pub key: String,
    pub rekey_interval: Duration,
}

/// How long a read of the pre-shared key's Secret serves: a rotated Secret is seen within it.
const PSK_CACHE: Duration = Duration::from_secs(10);

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
    /// taken, else a new one. A reconcile triggered by a cache's event runs after that event was
    /// counted, so it never gets a snapshot from before it. (Peer wake-ups come from a watch of
    /// their own, which may deliver a change before the tunnel cache has it; caching does not
    /// widen that window, a snapshot taken afresh would miss the change as well.)
    pub(crate) fn snapshot(&self, settings: &Settings) -> Arc<Snapshot> {
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
pub(crate) struct Programmed {
    pub(crate) pod: PodTarget,
    pub(crate) config: TunnelConfig,
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
    /// By tunnel key; what the prober probes.
    pub(crate) programmed: Mutex<HashMap<String, Programmed>>,
    states: Mutex<HashMap<String, &'static str>>,
    /// What the probes saw, by tunnel key.
    pub(crate) health: Mutex<Tracker>,
    /// The pre-shared key as last read, and when.
    psk: tokio::sync::Mutex<Option<(Instant, Result<ipsec::Psk, String>)>>,
}

impl Context {
    /// The fleet's pre-shared key (`None` when none is configured), read from its Secret at
    /// most every [`PSK_CACHE`]. Why it is unusable says where to look, never what it holds.
    async fn psk(&self) -> Option<Result<ipsec::Psk, String>> {
        let settings = self.settings.ipsec.as_ref()?;
        let mut cached = self.psk.lock().await;
        if let Some((at, psk)) = cached.as_ref()
            && at.elapsed() < PSK_CACHE
        {
            return Some(psk.clone());
        }
        let (ns, name, key) = (&settings.namespace, &settings.secret, &settings.key);
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), ns);
        let psk = match Box::pin(secrets.get_opt(name)).await {
            Err(e) => Err(format!(
                "cannot read the pre-shared key's Secret {ns}/{name}: {e}"
            )),
            Ok(None) => Err(format!(
                "the pre-shared key's Secret {ns}/{name} does not exist"
            )),
            Ok(Some(secret)) => match secret.data.as_ref().and_then(|d| d.get(key)) {
                None => Err(format!("Secret {ns}/{name} has no key {key:?}")),
                Some(bytes) => ipsec::Psk::new(bytes.0.clone())
                    .map_err(|e| format!("Secret {ns}/{name} key {key:?}: {e}")),
            },
        };
        *cached = Some((Instant::now(), psk.clone()));
        Some(psk)
    }

    /// The IPsec epoch now, when IPsec is configured.
    fn epoch(&self) -> Option<ipsec::Epoch> {
        let settings = self.settings.ipsec.as_ref()?;
        Some(ipsec::epoch_at(SystemTime::now(), settings.rekey_interval))
    }

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
            .filter(|p| p.pod.uid == resolved.pod.uid && p.config == resolved.config)
            .map(|p| p.checked_at)
    }

    fn remember(&self, key: &str, resolved: &Resolved) {
        let before = self
            .programmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key.to_owned(),
                Programmed {
                    pod: resolved.pod.clone(),
                    config: resolved.config.clone(),
                    checked_at: Instant::now(),
                },
            );
        // Probes through another pod say nothing about this one.
        if before.is_some_and(|b| b.pod.uid != resolved.pod.uid) {
            self.health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k| k != key);
        }
    }

    /// Forgets everything kept for tunnels that are gone (deleted without a cleanup this
    /// process saw: a finalizer removed by hand, a deletion while it was a standby), and own
    /// writes the cache has caught up with.
    fn prune(&self) {
        let tunnels = self.stores.tunnels.state();
        let live: std::collections::HashSet<String> = tunnels.iter().map(|t| key(t)).collect();
        let versions: HashMap<&str, &str> = tunnels
            .iter()
            .filter_map(|t| {
                Some((
                    t.metadata.uid.as_deref()?,
                    t.metadata.resource_version.as_deref()?,
                ))
            })
            .collect();
        self.writes
            .prune(|uid| versions.get(uid).map(|v| (*v).to_owned()));
        self.programmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| live.contains(k));
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| live.contains(k));
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

    /// Forgets what this process programmed for `key` (and what its probes saw).
    fn forget(&self, key: &str) {
        self.programmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| k != key);
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
/// itself). Each one in flight holds memory, and more make larger batches per gateway pod
/// ([`crate::exec`]): at 5000 tunnels over 4 gateways, 64 took 163 s and 51 MiB, 128 took
/// 123 s and 58 MiB, 256 took 110 s and 70 MiB (docs/BENCHMARKS.md). A dead gateway's
/// tunnels hold their places for one exec timeout at most (its queued calls fail together).
const MAX_RECONCILES: u16 = 128;

pub(crate) fn key(t: &VpcNatTunnel) -> String {
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
    health_metrics: prober::HealthMetrics,
    executor: Executor,
    probes: Probes,
    watch_metrics: WatchMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let c = client.clone();
    // Every watch stream is counted: the caches are synced when all have listed.
    let caches = CacheSync::new(probes);
    let changes = Arc::new(AtomicU64::new(0));

    // With the field owners a GatewayExIp's provenance is read from (resolve.rs).
    let (exips, exips_stream) = watch::reflect_trimmed(
        Api::<Decoded<GatewayExIp>>::namespaced(c.clone(), &settings.exip_namespace),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
        GatewayExIp::keep_only_provenance,
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
    // the tunnels deleted while the watch was away. Their peers are not woken by this: when the
    // API server made this watch relist (a restart, a 410), the controller's own tunnel watch
    // relists too and hands the controller every tunnel.
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
    let (report_health, health_reports) = futures::channel::mpsc::unbounded();
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
        .reconcile_on(peers_stream)
        // The prober asks for a status write when a tunnel's health report changed.
        .reconcile_on(health_reports);
    let controller = match sd_stream {
        Some(sd_stream) => controller.watches_stream(sd_stream, move |_: ServiceDiscovery| {
            refs(s5.tunnels.state())
        }),
        None => controller,
    }
    .graceful_shutdown_on(shutdown.clone().cancelled_owned());

    let ctx_probes = settings.probes;
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
        health: Mutex::new(Tracker::new(
            ctx_probes.map(|p| p.policy).unwrap_or_default(),
        )),
        psk: tokio::sync::Mutex::new(None),
    });
    let probing = tokio::spawn(prober::run(
        ctx.clone(),
        health_metrics,
        report_health,
        shutdown.clone(),
    ));

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
    probing.abort();
    Ok(())
}

async fn reconcile(tunnel: Arc<VpcNatTunnel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx2 = ctx.clone();
    ctx.reconcile_metrics
        .measure(Box::pin(async move {
            let ns = tunnel.namespace().unwrap_or_default();
            let api: Api<VpcNatTunnel> = Api::namespaced(ctx2.client.clone(), &ns);
            let k = key(&tunnel);
            ctx2.caches
                .reconcile(
                    &ctx2.backoff,
                    &k,
                    tunnel.metadata.generation,
                    Box::pin(async {
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
                    }),
                )
                .await
        }))
        .await
}

fn error_policy(tunnel: Arc<VpcNatTunnel>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx
        .backoff
        .next_delay(&key(&tunnel), tunnel.metadata.generation);
    tracing::warn!(tunnel = %key(&tunnel), %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
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
    let psk = match tunnel.spec.encryption {
        Encryption::Ipsec => ctx.psk().await,
        Encryption::None => None,
    };
    // Everything decided from the caches is decided here: the snapshot (every tunnel, pod and
    // GatewayExIp) is not held across an exec, so waiting reconciles cost little memory.
    let decided = {
        let snapshot = ctx.stores.snapshot(&ctx.settings);
        let resolution = resolve::with_esp(
            tunnel,
            resolve::resolve(tunnel, &snapshot),
            psk.as_ref(),
            ctx.epoch().map_or(0, |e| e.number),
        );
        let since_checked = resolution
            .as_ref()
            .ok()
            .and_then(|r| ctx.programmed_matches(&k, r))
            .map(|at| at.elapsed());
        let observed = ctx
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observed(&k);
        plan::plan(
            tunnel,
            resolution,
            &snapshot,
            since_checked,
            ctx.settings.verify_interval,
            HealthInput {
                probing: ctx.settings.probes.is_some(),
                observed: observed.as_ref(),
            },
        )
    };
    match decided {
        Plan::Refuse(refusal) => refuse(tunnel, ctx, api, *refusal).await,
        Plan::Program(programming) => program(tunnel, ctx, api, *programming).await,
    }
}

/// Executes a [`plan::Refusal`].
async fn refuse(
    tunnel: &VpcNatTunnel,
    ctx: &Context,
    api: &Api<VpcNatTunnel>,
    refusal: plan::Refusal,
) -> Result<Action, Error> {
    let k = key(tunnel);
    if let Some(removal) = &refusal.removal {
        withdraw(tunnel, ctx, removal).await?;
    }
    if refusal.leaves_pod {
        ctx.forget(&k);
    }
    let reason = refusal.condition.reason;
    write_status(
        tunnel,
        ctx,
        api,
        refusal.status,
        &refusal.condition,
        Some(&refusal.healthy),
    )
    .await?;
    ctx.set_state(&k, Some(reason));
    // The pre-shared key's Secret is read, not watched: look again once the read expires.
    if reason == reason::IPSEC_KEY_UNAVAILABLE {
        return Ok(Action::requeue(PSK_CACHE + Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

/// Executes a [`plan::Programming`]: out of the previous pod, the step's script, the status.
async fn program(
    tunnel: &VpcNatTunnel,
    ctx: &Context,
    api: &Api<VpcNatTunnel>,
    programming: plan::Programming,
) -> Result<Action, Error> {
    let k = key(tunnel);
    let plan::Programming {
        resolved,
        move_out,
        stale,
        step,
        mut status,
        condition,
        healthy,
    } = programming;
    let old = tunnel.status.clone().unwrap_or_default();

    // Failover: the tunnel moved to another gateway instance; take it out of the old pod.
    if let Some(removal) = move_out {
        match ctx
            .executor
            .run(
                &removal.pod,
                "cleanup",
                script::Call::cleanup(&removal.cleanup),
            )
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
                        removal.pod.name, resolved.pod.name, resolved.local_gateway
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
    let converge = || {
        ctx.executor.run(
            &resolved.pod,
            "converge",
            script::Call::converge(cfg, &stale, Mode::Converge),
        )
    };
    match step {
        Step::Converge { repair } => {
            let out = match converge().await {
                Ok(out) => out,
                Err(e) => {
                    return Err(
                        exec_failed(tunnel, ctx, api, &old, reason::CONVERGE_FAILED, e).await,
                    );
                }
            };
            status.mtu = script::reported_mtu(&out.stdout).or(status.mtu);
            let changes = script::reported_changes(&out.stdout).unwrap_or(0);
            if changes > 0 {
                let summary = change_summary(&out.stdout);
                tracing::info!(tunnel = %k, pod = %resolved.pod.name, changes, repair = repair.is_some(), "converged: {summary}");
                let pod = &resolved.pod.name;
                let (type_, why, note) = match repair {
                    Some(cause) => {
                        ctx.metrics.repairs.with_label_values(&[cause]).inc();
                        (
                            EventType::Warning,
                            "Repaired",
                            format!("re-programmed pod {pod} ({cause}): {summary}"),
                        )
                    }
                    None => (
                        EventType::Normal,
                        reason::PROGRAMMED,
                        format!("programmed pod {pod}: {summary}"),
                    ),
                };
                publish(ctx, tunnel, type_, why, note).await;
            }
            ctx.remember(&k, &resolved);
        }
        Step::Verify => {
            let check = ctx
                .executor
                .run(
                    &resolved.pod,
                    "check",
                    script::Call::converge(cfg, &Stale::default(), Mode::Check),
                )
                .await;
            let out = match check {
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
            // The check reports the MTU the device has or, on drift, the one converge sets.
            status.mtu = script::reported_mtu(&out.stdout).or(status.mtu);
            if script::reported_changes(&out.stdout).unwrap_or(0) > 0 {
                ctx.metrics
                    .verifications
                    .with_label_values(&["drift"])
                    .inc();
                if let Err(e) = converge().await {
                    ctx.forget(&k);
                    return Err(
                        exec_failed(tunnel, ctx, api, &old, reason::CONVERGE_FAILED, e).await,
                    );
                }
                ctx.metrics.repairs.with_label_values(&["drift"]).inc();
                let summary = change_summary(&out.stdout);
                tracing::warn!(tunnel = %k, pod = %resolved.pod.name, "drift repaired: {summary}");
                publish(
                    ctx,
                    tunnel,
                    EventType::Warning,
                    "DriftRepaired",
                    format!(
                        "verification found drift in pod {} and repaired it: {summary}",
                        resolved.pod.name
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
        Step::Nothing => {}
    }

    write_status(tunnel, ctx, api, status, &condition, Some(&healthy)).await?;
    ctx.set_state(&k, Some(reason::PROGRAMMED));
    let since_checked = ctx.programmed_matches(&k, &resolved).map(|at| at.elapsed());
    // An encrypted tunnel moves to the next epoch's keys at its boundary (a second after it,
    // so the clock has surely crossed it).
    let rekey = resolved.config.esp.as_ref().and_then(|_| {
        let next = ctx.epoch()?.next_at;
        Some(next.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(1))
    });
    let verify = plan::next_verification(&k, ctx.settings.verify_interval, since_checked);
    Ok(match verify.into_iter().chain(rekey).min() {
        Some(wait) => Action::requeue(wait),
        None => Action::await_change(),
    })
}

/// Removes a refused tunnel's state from the pod it was programmed into.
async fn withdraw(tunnel: &VpcNatTunnel, ctx: &Context, removal: &Removal) -> Result<(), Error> {
    let prev = &removal.pod;
    let out = ctx
        .executor
        .run(prev, "cleanup", script::Call::cleanup(&removal.cleanup))
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
        None,
    )
    .await
    {
        tracing::warn!(tunnel = %key(tunnel), err = %e, "could not record the exec failure");
    }
    ctx.set_state(&key(tunnel), Some(why));
    Error::Exec(err)
}

async fn cleanup(tunnel: &VpcNatTunnel, ctx: &Context) -> Result<Action, Error> {
    let k = key(tunnel);
    ctx.set_state(&k, Some("Deleting"));
    let removal = plan::deletion(tunnel, &ctx.stores.snapshot(&ctx.settings));
    match removal {
        Some(Removal {
            pod: target,
            cleanup,
        }) => {
            let out = ctx
                .executor
                .run(&target, "cleanup", script::Call::cleanup(&cleanup))
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

/// Writes `status` with the Ready `condition` and, when given, the `healthy` one (an exec
/// failure leaves Healthy as it was), unless that changes nothing.
async fn write_status(
    tunnel: &VpcNatTunnel,
    ctx: &Context,
    api: &Api<VpcNatTunnel>,
    mut status: VpcNatTunnelStatus,
    condition: &DesiredCondition,
    healthy: Option<&DesiredCondition>,
) -> Result<(), Error> {
    let old = tunnel.status.clone().unwrap_or_default();
    status.observed_generation = tunnel.metadata.generation;
    let old_ready = conditions::find(&old.conditions, conditions::READY).cloned();
    let now = jiff::Timestamp::now();
    for c in std::iter::once(condition).chain(healthy) {
        conditions::set_condition(&mut status.conditions, c, tunnel.metadata.generation, now);
    }
    if status == old {
        return Ok(()); // Steady state: no write.
    }
    if old_ready.is_none_or(|c| c.reason != condition.reason) && !condition.status.is_true() {
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

    #[test]
    fn change_summaries_are_bounded() {
        let out: String = (0..10).map(|i| format!("change: step {i}\n")).collect();
        let s = change_summary(&out);
        assert!(s.starts_with("step 0; step 1"), "{s}");
        assert!(s.ends_with("and 4 more"), "{s}");
        assert_eq!(change_summary("multivpc-changes=0\n"), "");
    }

    /// Every reconcile in flight (up to [`MAX_RECONCILES`]) holds this future; its work is
    /// boxed once (multivpc_runtime's `measure` says why). Unboxed it was 42 KiB.
    #[test]
    fn a_reconcile_in_flight_holds_its_work_once() {
        fn future_size<A, B, F: std::future::Future>(_: impl Fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(reconcile);
        assert!(size < 1024, "reconcile future: {size} bytes");
    }
}
