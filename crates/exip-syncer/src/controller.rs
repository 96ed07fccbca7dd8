//! The local controller: watches the NAT gateways, their pods, the VPCs, the Submariner Cluster
//! and the GatewayExIps, and on every change runs one pass over all of them: failover decisions
//! ([`crate::failover`]), route patches, then publishing ([`crate::publish`]).
//!
//! One pass covers every gateway because failover couples the gateways of a VPC, the VPC's
//! routes and several GatewayExIps; a pass with nothing to change makes no API call.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use multivpc_api::{
    GatewayExIp, VpcNatTunnel,
    foreign::{
        kubeovn::{Subnet, Vpc, VpcNatGateway},
        submariner::{Cluster, SERVICE_DISCOVERY_NAME, SUBMARINER_NAMESPACE, ServiceDiscovery},
    },
    gateway::KubeOvn,
    keys::{LABEL_ACTIVE_GATEWAY, LABEL_GATEWAY},
    net::Ipv4Cidr,
};
use multivpc_runtime::{
    admin::{CacheSync, Probes},
    backoff::ErrorBackoff,
    events::Events,
    metrics::ReconcileMetrics,
    watch::{self, Decoded, WatchMetrics},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, BrokerSettings},
    failover::{self, Health, MoveKind, Policy, RouteMove, VpcRoutes},
    metrics::SyncerMetrics,
    model, pruning, publish,
};

/// Field manager, event reporter and log name.
pub const MANAGER: &str = multivpc_api::keys::EXIP_SYNCER_MANAGER;
/// Bursts of watch events are coalesced into one pass.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// What the controller was configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// From `--cluster-id`; otherwise read from ServiceDiscovery at start.
    pub cluster_id: Option<String>,
    /// Namespace of the GatewayExIps.
    pub namespace: String,
    /// Where Kube-OVN runs the NAT gateway pods and how it names them.
    pub kube_ovn: KubeOvn,
    pub globalnet_cidr: Option<String>,
    pub policy: Policy,
    pub broker: BrokerSettings,
}

/// Errors of one pass; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("route patch of Vpc {0}: {1}")]
    RoutePatch(String, #[source] kube::Error),
}

/// The caches a pass decides from.
#[derive(Clone)]
pub struct Stores {
    pub gateways: Store<VpcNatGateway>,
    pub pods: Store<Pod>,
    pub vpcs: Store<Vpc>,
    pub clusters: Option<Store<Cluster>>,
    pub subnets: Store<Subnet>,
    pub exips: Store<GatewayExIp>,
    /// VpcNatTunnels: the addresses each gateway publishes for its far ends' probes.
    pub tunnels: Store<VpcNatTunnel>,
}

impl Stores {
    /// This cluster's own ranges, which no imported GatewayExIp may overlap: its Globalnet,
    /// Service and Pod CIDRs (Submariner's Cluster, or `--globalnet-cidr`) and its overlay
    /// subnets. Underlay attachment subnets (a provider `<nad>.<namespace>`, such as the NAT
    /// gateways' external network) are left out: other clusters' gateways live there too.
    pub fn local_ranges(&self, globalnet_flag: Option<&str>) -> Vec<(String, Ipv4Cidr)> {
        let mut ranges = Vec::new();
        let mut add = |what: &str, text: &str| {
            for part in text.split(',') {
                if let Ok(cidr) = part.trim().parse::<Ipv4Cidr>() {
                    ranges.push((what.to_owned(), cidr.network()));
                }
            }
        };
        if let Some(flag) = globalnet_flag {
            add("Globalnet CIDR", flag);
        }
        for cluster in self.clusters.iter().flat_map(|c| c.state()) {
            for c in &cluster.spec.global_cidr {
                add("Globalnet CIDR", c);
            }
            for c in &cluster.spec.service_cidr {
                add("Service CIDR", c);
            }
            for c in &cluster.spec.cluster_cidr {
                add("Pod CIDR", c);
            }
        }
        for subnet in self.subnets.state() {
            let provider = subnet.spec.provider.as_deref().unwrap_or("ovn");
            if provider == "ovn" || provider.ends_with(".ovn") {
                add(
                    &format!("subnet {}", subnet.name_any()),
                    &subnet.spec.cidr_block,
                );
            }
        }
        ranges
    }
}

struct Context {
    client: Client,
    settings: Settings,
    cluster_id: String,
    stores: Stores,
    events: Events,
    metrics: SyncerMetrics,
    /// Gateway availability and since when (in memory: a restart restarts the grace period).
    health: HashMap<String, Health>,
    /// (vpc, gateway) outages already reported as having no standby.
    stranded: BTreeSet<(String, String)>,
    /// The missing Globalnet CIDR was reported (once per absence, not on every pass).
    warned_no_globalnet: bool,
    /// Whether this cluster's API server keeps `spec.tunnels` (an old CRD drops it).
    servers: pruning::Servers,
    /// Gateways failed over because their tunnels all stopped answering, and when: unfit to
    /// carry or stand by for `--unhealthy-failover-holddown` (in memory, as `health` is).
    held_down: HashMap<String, Instant>,
}

/// Reads the cluster ID from Submariner's ServiceDiscovery, retrying until it is there.
async fn resolve_cluster_id(client: &Client, shutdown: &CancellationToken) -> Option<String> {
    let api: Api<ServiceDiscovery> = Api::namespaced(client.clone(), SUBMARINER_NAMESPACE);
    let mut delay = Duration::from_secs(1);
    loop {
        match api.get_opt(SERVICE_DISCOVERY_NAME).await {
            Ok(Some(sd)) if !sd.spec.cluster_id.is_empty() => return Some(sd.spec.cluster_id),
            Ok(_) => tracing::warn!(
                "no --cluster-id and no clusterID in {SUBMARINER_NAMESPACE}/{SERVICE_DISCOVERY_NAME}; waiting for Submariner"
            ),
            Err(err) => {
                tracing::warn!(%err, "cannot read {SUBMARINER_NAMESPACE}/{SERVICE_DISCOVERY_NAME} for the cluster ID")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// A cache of `api`'s objects and its stream, which pokes `notifies` on every change.
fn reflect<K>(
    api: Api<Decoded<K>>,
    config: watcher::Config,
    notifies: Vec<Arc<Notify>>,
    caches: &CacheSync,
    watch_metrics: &WatchMetrics,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: watch::Watched,
{
    let (store, stream) = watch::reflect(api, config, caches, watch_metrics);
    let stream = stream.map(move |event| match &event {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
            for n in &notifies {
                n.notify_one();
            }
        }
        Ok(_) => {}
        Err(err) => tracing::debug!(%err, "watch error (retrying)"),
    });
    (store, stream)
}

/// Runs the controller and the broker sync until `shutdown`.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: SyncerMetrics,
    reconcile_metrics: ReconcileMetrics,
    probes: Probes,
    watch_metrics: WatchMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cluster_id = match &settings.cluster_id {
        Some(id) => id.clone(),
        None => match resolve_cluster_id(&client, &shutdown).await {
            Some(id) => id,
            None => return Ok(()),
        },
    };
    tracing::info!(
        cluster_id,
        namespace = settings.namespace,
        kube_ovn_namespace = settings.kube_ovn.namespace,
        "starting"
    );
    let ns = settings.namespace.as_str();
    let local = Arc::new(Notify::new());
    let sync = Arc::new(Notify::new());
    let mut streams = Vec::new();
    // Every watch stream is counted: the caches are synced when all have listed.
    let caches = CacheSync::new(probes.clone());

    let (gateways, s) = reflect(
        Api::<Decoded<VpcNatGateway>>::all(client.clone()),
        watcher::Config::default(),
        vec![local.clone()],
        &caches,
        &watch_metrics,
    );
    streams.push(s.boxed());
    let (pods, s) = reflect(
        Api::<Decoded<Pod>>::namespaced(client.clone(), &settings.kube_ovn.namespace),
        watcher::Config::default().labels(&KubeOvn::pod_selector()),
        vec![local.clone()],
        &caches,
        &watch_metrics,
    );
    streams.push(s.boxed());
    let (vpcs, s) = reflect(
        Api::<Decoded<Vpc>>::all(client.clone()),
        watcher::Config::default(),
        vec![local.clone()],
        &caches,
        &watch_metrics,
    );
    streams.push(s.boxed());
    let clusters = if settings.globalnet_cidr.is_none() {
        let (clusters, s) = reflect(
            Api::<Decoded<Cluster>>::namespaced(client.clone(), SUBMARINER_NAMESPACE),
            watcher::Config::default().fields(&format!("metadata.name={cluster_id}")),
            vec![local.clone()],
            &caches,
            &watch_metrics,
        );
        streams.push(s.boxed());
        Some(clusters)
    } else {
        None
    };
    // Only for the import checks (this cluster's overlay ranges): no pass needs waking.
    let (subnets, s) = reflect(
        Api::<Decoded<Subnet>>::all(client.clone()),
        watcher::Config::default(),
        vec![sync.clone()],
        &caches,
        &watch_metrics,
    );
    streams.push(s.boxed());
    let (exips, s) = reflect(
        Api::<Decoded<GatewayExIp>>::namespaced(client.clone(), ns),
        watcher::Config::default(),
        vec![local.clone(), sync.clone()],
        &caches,
        &watch_metrics,
    );
    streams.push(s.boxed());
    // Only a tunnel's spec and Ready condition matter here, but every status write of
    // tunnel-manager arrives too: the debounced pass absorbs them and writes nothing new.
    let (tunnels, s) = reflect(
        Api::<Decoded<VpcNatTunnel>>::all(client.clone()),
        watcher::Config::default(),
        vec![local.clone()],
        &caches,
        &watch_metrics,
    );
    streams.push(s.boxed());
    let stores = Stores {
        gateways,
        pods,
        vpcs,
        clusters,
        subnets,
        exips,
        tunnels,
    };
    let servers = pruning::Servers::default();

    let watches = tokio::spawn(futures::stream::select_all(streams).for_each(|_| async {}));

    let ready_task = {
        let caches = caches.clone();
        let local = local.clone();
        tokio::spawn(async move {
            caches.synced().await;
            local.notify_one();
        })
    };

    let broker_task = tokio::spawn(broker::run(
        client.clone(),
        settings.broker.clone(),
        cluster_id.clone(),
        settings.namespace.clone(),
        stores.clone(),
        settings.globalnet_cidr.clone(),
        caches.clone(),
        sync,
        servers.clone(),
        metrics.clone(),
        watch_metrics.clone(),
        shutdown.clone(),
    ));

    let mut ctx = Context {
        events: Events::new(client.clone(), MANAGER),
        client,
        settings,
        cluster_id,
        stores,
        metrics,
        health: HashMap::new(),
        stranded: BTreeSet::new(),
        warned_no_globalnet: false,
        servers,
        held_down: HashMap::new(),
    };
    let backoff = ErrorBackoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut next: Option<tokio::time::Instant> = None;
    loop {
        let wake = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = local.notified() => {}
            _ = wake => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        if !caches.is_synced() {
            continue;
        }
        let mut next_check = None;
        let result = reconcile_metrics
            .measure(Box::pin(async {
                let _running = probes.liveness().running("the sync pass");
                let n = pass(&mut ctx).await?;
                next_check = n;
                Ok::<_, Error>(match n {
                    Some(at) => Action::requeue(at.saturating_duration_since(Instant::now())),
                    None => Action::await_change(),
                })
            }))
            .await;
        next = match result {
            Ok(_) => {
                backoff.reset("pass");
                next_check.map(tokio::time::Instant::from_std)
            }
            Err(err) => {
                let delay = backoff.next_delay("pass", None);
                tracing::warn!(%err, retry_in = ?delay, "pass failed");
                Some(tokio::time::Instant::now() + delay)
            }
        };
    }
    ready_task.abort();
    let _ = broker_task.await;
    watches.abort();
    Ok(())
}

/// One pass: decide, repoint routes, publish. Returns when to look again without a change.
async fn pass(ctx: &mut Context) -> Result<Option<Instant>, Error> {
    let now = Instant::now();
    let ns = ctx.settings.namespace.clone();
    let mut gateways = model::gateways(
        &ctx.stores.gateways.state(),
        &ctx.stores.pods.state(),
        &ctx.settings.kube_ovn,
    );
    let holddown = ctx.settings.policy.unhealthy_holddown;
    ctx.held_down
        .retain(|_, at| now.saturating_duration_since(*at) < holddown);
    let holddown_ends = ctx.held_down.values().map(|at| *at + holddown).min();
    if ctx.settings.policy.on_unhealthy_tunnels {
        let unhealthy = model::unhealthy(&ctx.stores.tunnels.state());
        for (name, gw) in gateways.iter_mut() {
            gw.tunnels_failing = unhealthy.contains(name) || ctx.held_down.contains_key(name);
        }
    }
    failover::observe(&mut ctx.health, &gateways, now);
    let vpcs: Vec<VpcRoutes> = ctx
        .stores
        .vpcs
        .state()
        .iter()
        .filter(|v| !v.spec.static_routes.is_empty())
        .map(|v| VpcRoutes {
            name: v.name_any(),
            routes: v.spec.static_routes.clone(),
        })
        .collect();
    let existing: Vec<GatewayExIp> = ctx
        .stores
        .exips
        .state()
        .iter()
        .map(|o| (**o).clone())
        .collect();
    let actives: BTreeMap<String, String> = existing
        .iter()
        .filter(|o| o.is_own(&ctx.cluster_id))
        .filter_map(|o| {
            Some((
                o.labels().get(LABEL_GATEWAY)?.clone(),
                o.labels().get(LABEL_ACTIVE_GATEWAY)?.clone(),
            ))
        })
        .collect();
    let decisions = failover::decide(
        &vpcs,
        &gateways,
        &ctx.health,
        &actives,
        &ctx.settings.policy,
        now,
    );
    report_stranded(ctx, &decisions.stranded).await;

    // Routes first: the GatewayExIp follows the routes (see failover::active_for), so a
    // failure here leaves the published objects consistent with the routes. A Vpc that cannot
    // be patched (e.g. a concurrent edit made a `test` op fail) does not hold up the others:
    // its moves are left out of this pass and the pass is retried.
    let mut applied: Vec<RouteMove> = Vec::new();
    let mut route_error = None;
    for vpc in &vpcs {
        let moves: Vec<RouteMove> = decisions
            .moves
            .iter()
            .filter(|m| m.vpc == vpc.name)
            .cloned()
            .collect();
        let Some(patch) = failover::route_patch(vpc, &moves) else {
            continue;
        };
        let patch: json_patch::Patch =
            serde_json::from_value(patch).expect("route_patch builds a valid JSON patch");
        let api: Api<Vpc> = Api::all(ctx.client.clone());
        if let Err(err) = api
            .patch(
                &vpc.name,
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await
        {
            for m in &moves {
                ctx.metrics
                    .failovers
                    .with_label_values(&[kind_label(m.kind), "error"])
                    .inc();
            }
            route_error.get_or_insert(Error::RoutePatch(vpc.name.clone(), err));
            continue;
        }
        applied.extend(moves.iter().cloned());
        for m in &moves {
            tracing::info!(
                vpc = m.vpc, kind = kind_label(m.kind), from = m.from_gw, from_ip = %m.from_ip,
                to = m.to_gw, to_ip = %m.to_ip, "repointed static routes"
            );
            let reference = vpc_reference(ctx, &m.vpc);
            // A carrier whose pod is fine was failed over for its tunnels: held down.
            let for_tunnels = m.kind == MoveKind::Failover
                && gateways.get(&m.from_gw).is_some_and(|g| g.available());
            if for_tunnels {
                ctx.held_down.insert(m.from_gw.clone(), now);
            }
            let (type_, reason, what) = match m.kind {
                MoveKind::Failover if for_tunnels => (
                    EventType::Warning,
                    "GatewayFailover",
                    "up but none of its tunnels answering",
                ),
                MoveKind::Failover => (EventType::Warning, "GatewayFailover", "unavailable"),
                MoveKind::Failback => (EventType::Normal, "GatewayFailback", "available again"),
            };
            publish_event(
                ctx,
                &reference,
                type_,
                reason,
                format!(
                    "NAT gateway {} ({}) {what} for {:.1}s: static routes via {} now via {} ({})",
                    m.from_gw,
                    m.from_ip,
                    now.duration_since(m.since).as_secs_f64(),
                    m.from_ip,
                    m.to_ip,
                    m.to_gw,
                ),
            )
            .await;
        }
    }

    let globalnet = ctx.settings.globalnet_cidr.clone().or_else(|| {
        ctx.stores.clusters.as_ref().and_then(|c| {
            c.state()
                .first()
                .and_then(|c| c.spec.global_cidr.first().cloned())
        })
    });
    if globalnet.is_some() {
        ctx.warned_no_globalnet = false;
    } else if !ctx.warned_no_globalnet {
        ctx.warned_no_globalnet = true;
        tracing::warn!(
            cluster_id = ctx.cluster_id,
            "no Globalnet CIDR (Submariner Cluster {SUBMARINER_NAMESPACE}/{} has no global_cidr and no --globalnet-cidr): not publishing new GatewayExIps",
            ctx.cluster_id
        );
    }
    let tunnels = if ctx.servers.local.kept() {
        model::tunnel_addresses(&ctx.stores.tunnels.state())
    } else {
        BTreeMap::new()
    };
    let ops = publish::plan(&publish::Inputs {
        cluster_id: &ctx.cluster_id,
        namespace: &ns,
        gateways: &gateways,
        vpcs: &vpcs,
        moves: &applied,
        existing: &existing,
        globalnet_cidr: globalnet.as_deref(),
        tunnels: &tunnels,
    });
    let api: Api<GatewayExIp> = Api::namespaced(ctx.client.clone(), &ns);
    let mut published = existing
        .iter()
        .filter(|o| o.is_own(&ctx.cluster_id))
        .count() as i64;
    for op in ops {
        match op {
            publish::Op::Apply { object, created } => {
                let name = object.name_any();
                let stored = match api
                    .patch(
                        &name,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&object),
                    )
                    .await
                {
                    Ok(stored) => stored,
                    Err(err) => {
                        // An old CRD refuses the field: the retried pass writes without it.
                        if ctx.servers.local.observe_refusal(&object, &err) {
                            warn_tunnels_dropped("this cluster's");
                        }
                        return Err(err.into());
                    }
                };
                if ctx.servers.local.observe(&object, &stored) {
                    warn_tunnels_dropped("this cluster's");
                }
                if created {
                    published += 1;
                }
                tracing::info!(
                    name,
                    externalip = object.spec.externalip,
                    active = object
                        .labels()
                        .get(LABEL_ACTIVE_GATEWAY)
                        .map(String::as_str),
                    created,
                    "published GatewayExIp"
                );
            }
            publish::Op::Delete { name } => {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(err) => return Err(err.into()),
                }
                published -= 1;
                tracing::info!(name, "unpublished GatewayExIp (gateway deleted)");
            }
        }
    }
    ctx.metrics.published.set(published.max(0));
    for m in &applied {
        ctx.metrics
            .failovers
            .with_label_values(&[kind_label(m.kind), "success"])
            .inc();
        if m.kind == MoveKind::Failover {
            ctx.metrics
                .failover_duration
                .observe(Instant::now().duration_since(m.since).as_secs_f64());
        }
    }
    match route_error {
        Some(err) => Err(err),
        // A hold-down ending makes a gateway fit again: look then.
        None => Ok(match (decisions.next_check, holddown_ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }),
    }
}

/// Says once that an API server's GatewayExIp CRD predates `spec.tunnels`.
pub fn warn_tunnels_dropped(whose: &str) {
    tracing::warn!(
        retry_in = ?pruning::RETRY_AFTER,
        "{whose} API server dropped or refused spec.tunnels of a GatewayExIp: its CRD predates the field \
         (Helm does not upgrade CRDs; apply the chart's crds/). Publishing without tunnel \
         addresses meanwhile, so the far ends cannot probe these tunnels (Healthy=Unknown)"
    );
}

fn kind_label(kind: MoveKind) -> &'static str {
    match kind {
        MoveKind::Failover => "failover",
        MoveKind::Failback => "failback",
    }
}

async fn report_stranded(ctx: &mut Context, stranded: &[(String, String)]) {
    let now: BTreeSet<(String, String)> = stranded.iter().cloned().collect();
    for (vpc, gw) in now.difference(&ctx.stranded.clone()) {
        tracing::warn!(
            vpc,
            gateway = gw,
            "NAT gateway unavailable and no standby of its VPC is ready"
        );
        ctx.metrics
            .failovers
            .with_label_values(&["failover", "stranded"])
            .inc();
        publish_event(
            ctx,
            &vpc_reference(ctx, vpc),
            EventType::Warning,
            "NoStandbyGateway",
            format!("NAT gateway {gw} is unavailable and no other ready gateway serves VPC {vpc}"),
        )
        .await;
    }
    ctx.stranded = now;
}

fn vpc_reference(ctx: &Context, vpc: &str) -> ObjectReference {
    match ctx.stores.vpcs.get(&ObjectRef::new(vpc)) {
        Some(obj) => obj.object_ref(&()),
        None => Vpc::new(vpc, Default::default()).object_ref(&()),
    }
}

async fn publish_event(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    ctx.events
        .publish(reference, type_, reason, "Failover", note)
        .await;
}
