//! The VpcDnsForward controller: watches, reconcile, error policy. Decisions live in
//! [`crate::plan`]; this module only reads the caches and performs the plan's API calls.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
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
    VpcDnsForward, VpcDnsForwardStatus, conditions,
    foreign::kubeovn::{Subnet, Vpc, VpcDns},
    keys::{DNS_FINALIZER, KUBE_SYSTEM, LABEL_VPC_DNS, VPC_DNS_COREFILE},
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
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    plan::{self, COREFILE_KEY, CorefileSource, Plan, Snapshot},
    repairs::RepairLimiter,
    routes::{self, PatchKind, Route},
};

/// Name under which this controller writes (field manager, event reporter, metrics label).
pub const MANAGER: &str = "dns-forwarder";
const OVN_DEFAULT: &str = "ovn-default";
const KUBE_DNS: &str = "kube-dns";
/// How often a forward whose VpcDns mounts its own Corefile ConfigMap (not watched) is looked at.
const CUSTOM_COREFILE_RECHECK: Duration = Duration::from_secs(60);

/// Errors of one reconcile; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Cleanup edited something and must look again (with fresh caches) before the finalizer goes.
    #[error("cleanup in progress")]
    CleanupInProgress,
}

/// The caches the controller decides from.
#[derive(Clone)]
pub struct Stores {
    pub forwards: Store<VpcDnsForward>,
    pub vpc_dns: Store<VpcDns>,
    pub deployments: Store<Deployment>,
    pub corefile: Store<ConfigMap>,
    pub kube_dns: Store<Service>,
    pub subnets: Store<Subnet>,
    /// Vpcs: which namespaces may change each one's DNS (tenancy).
    pub vpcs: Store<Vpc>,
}

impl Stores {
    fn snapshot(&self, namespace: &str, tenancy: Tenancy) -> Snapshot {
        Snapshot {
            namespace: namespace.to_owned(),
            forwards: self.forwards.state(),
            vpc_dns: self.vpc_dns.state(),
            deployments: self
                .deployments
                .state()
                .into_iter()
                .map(|d| (d.name_any(), d))
                .collect::<BTreeMap<_, _>>(),
            corefiles: [(
                VPC_DNS_COREFILE.to_owned(),
                match self.corefile.state().into_iter().next() {
                    Some(cm) => CorefileSource::Found(cm),
                    None => CorefileSource::Missing,
                },
            )]
            .into(),
            kube_dns: self.kube_dns.state().into_iter().next(),
            ovn_default: self.subnets.state().into_iter().next(),
            vpcs: self
                .vpcs
                .state()
                .into_iter()
                .map(|v| (v.name_any(), v))
                .collect(),
            tenancy,
        }
    }

    /// Forwards affected by a change to the vpc-dns objects of `vpc` or to `deployment`.
    fn affected(
        &self,
        vpc: Option<&str>,
        deployment: Option<&str>,
    ) -> Vec<ObjectRef<VpcDnsForward>> {
        self.forwards
            .state()
            .iter()
            .filter(|f| {
                vpc.is_some_and(|v| f.spec.vpc == v)
                    || deployment.is_some_and(|d| {
                        f.status
                            .as_ref()
                            .is_some_and(|s| s.deployments.iter().any(|x| x == d))
                    })
            })
            .map(|f| ObjectRef::from_obj(f.as_ref()))
            .collect()
    }

    fn all(&self) -> Vec<ObjectRef<VpcDnsForward>> {
        self.forwards
            .state()
            .iter()
            .map(|f| ObjectRef::from_obj(f.as_ref()))
            .collect()
    }
}

/// What the controller was configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kube-OVN's namespace: the vpc-dns Deployments and their Corefile ConfigMaps.
    pub kube_ovn_namespace: String,
    /// `--repair-spacing` (see [`RepairLimiter`]).
    pub repair_spacing: Duration,
    /// Which VPCs a forward's namespace may change (`--tenancy`).
    pub tenancy: Tenancy,
}

/// dns-forwarder's own metrics (besides the runtime's).
#[derive(Clone)]
pub struct DnsMetrics {
    pub routes_programmed: prometheus::IntGauge,
    /// Routes put back after a rewrite, by `result`: repaired, or deferred (spaced out).
    pub repairs: prometheus::IntCounterVec,
}

impl DnsMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let routes_programmed = prometheus::IntGauge::new(
            "multivpc_dns_routes_programmed",
            "vpc-dns Deployments carrying the route to the cluster DNS",
        )?;
        registry.register(Box::new(routes_programmed.clone()))?;
        let repairs = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "multivpc_dns_route_repairs_total",
                "Routes put back on a vpc-dns Deployment after someone removed them (each restarts vpc-dns); result=deferred when held back to space repairs out",
            ),
            &["result"],
        )?;
        for result in ["repaired", "deferred"] {
            repairs.with_label_values(&[result]);
        }
        registry.register(Box::new(repairs.clone()))?;
        Ok(Self {
            routes_programmed,
            repairs,
        })
    }
}

/// Shared state of the reconciles.
pub struct Context {
    pub client: Client,
    /// Kube-OVN's namespace: the vpc-dns Deployments and the Corefile ConfigMap.
    pub kube_ovn_namespace: String,
    pub tenancy: Tenancy,
    pub stores: Stores,
    /// No decision before every cache is synced (a Deployment not yet listed would look like
    /// one the forward left).
    pub caches: CacheSync,
    pub events: Events,
    pub reconcile_metrics: ReconcileMetrics,
    pub metrics: DnsMetrics,
    pub repair_limiter: RepairLimiter,
    pub backoff: ErrorBackoff,
    /// Forwards as this process last wrote them (finalizer, status), until the cache shows it.
    pub writes: OwnWrites<VpcDnsForward>,
}

/// Builds the controller and runs it until `shutdown`; marks `probes` once every cache is synced.
pub async fn run(
    client: Client,
    settings: Settings,
    reconcile_metrics: ReconcileMetrics,
    metrics: DnsMetrics,
    probes: Probes,
    watch_metrics: WatchMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Settings {
        kube_ovn_namespace,
        repair_spacing,
        tenancy,
    } = settings;
    let (c, ns) = (client.clone(), kube_ovn_namespace.as_str());
    // Every watch stream is counted: the caches are synced when all have listed.
    let caches = CacheSync::new(probes);

    let (vpc_dns, vpc_dns_stream) = watch::reflect(
        Api::<Decoded<VpcDns>>::all(c.clone()),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
    );
    let vpc_dns_stream = vpc_dns_stream.touched_objects();
    let (deployments, deployments_stream) = watch::reflect(
        Api::<Decoded<Deployment>>::namespaced(c.clone(), ns),
        watcher::Config::default().labels(&format!("{LABEL_VPC_DNS}=true")),
        &caches,
        &watch_metrics,
    );
    let deployments_stream = deployments_stream.touched_objects();
    let (corefile, corefile_stream) = watch::reflect(
        Api::<Decoded<ConfigMap>>::namespaced(c.clone(), ns),
        watcher::Config::default().fields(&format!("metadata.name={VPC_DNS_COREFILE}")),
        &caches,
        &watch_metrics,
    );
    let corefile_stream = corefile_stream.touched_objects();
    let (kube_dns, kube_dns_stream) = watch::reflect(
        // The cluster DNS is Kubernetes', in kube-system whatever Kube-OVN's namespace.
        Api::<Decoded<Service>>::namespaced(c.clone(), KUBE_SYSTEM),
        watcher::Config::default().fields(&format!("metadata.name={KUBE_DNS}")),
        &caches,
        &watch_metrics,
    );
    let kube_dns_stream = kube_dns_stream.touched_objects();
    let (subnets, subnets_stream) = watch::reflect(
        Api::<Decoded<Subnet>>::all(c.clone()),
        watcher::Config::default().fields(&format!("metadata.name={OVN_DEFAULT}")),
        &caches,
        &watch_metrics,
    );
    let subnets_stream = subnets_stream.touched_objects();
    let (vpcs, vpcs_stream) = watch::reflect(
        Api::<Decoded<Vpc>>::all(c.clone()),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
    );
    let vpcs_stream = vpcs_stream.touched_objects();

    let (forwards, forwards_stream) = watch::reflect(
        Api::<Decoded<VpcDnsForward>>::all(c.clone()),
        watcher::Config::default(),
        &caches,
        &watch_metrics,
    );
    let forwards_stream = forwards_stream.applied_objects();
    let controller = Controller::for_stream(forwards_stream, forwards)
        // The Corefile and the vpc-dns Deployments are shared by all forwards: one reconcile at
        // a time keeps their edits from racing each other.
        .with_config(kube::runtime::controller::Config::default().concurrency(1));
    let stores = Stores {
        forwards: controller.store(),
        vpc_dns,
        deployments,
        corefile,
        kube_dns,
        subnets,
        vpcs,
    };
    let (s1, s2, s3, s4, s5, s6) = (
        stores.clone(),
        stores.clone(),
        stores.clone(),
        stores.clone(),
        stores.clone(),
        stores.clone(),
    );
    let controller = controller
        .watches_stream(vpc_dns_stream, move |d: VpcDns| {
            s1.affected(
                Some(&d.spec.vpc),
                Some(&format!("{}{}", plan::DEPLOYMENT_PREFIX, d.name_any())),
            )
        })
        .watches_stream(deployments_stream, move |d: Deployment| {
            let name = d.name_any();
            let vpc = name
                .strip_prefix(plan::DEPLOYMENT_PREFIX)
                .and_then(|n| s2.vpc_dns.get(&ObjectRef::new(n)))
                .map(|v| v.spec.vpc.clone());
            s2.affected(vpc.as_deref(), Some(&name))
        })
        .watches_stream(corefile_stream, move |_: ConfigMap| s3.all())
        .watches_stream(kube_dns_stream, move |_: Service| s4.all())
        .watches_stream(subnets_stream, move |_: Subnet| s5.all())
        // A forward refused or admitted changes what the others of its VPC share: all look.
        .watches_stream(vpcs_stream, move |_: Vpc| s6.all())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());

    let ctx = Arc::new(Context {
        client: client.clone(),
        kube_ovn_namespace: kube_ovn_namespace.clone(),
        tenancy,
        stores: stores.clone(),
        caches: caches.clone(),
        events: Events::new(client, MANAGER),
        reconcile_metrics,
        metrics,
        repair_limiter: RepairLimiter::new(repair_spacing),
        backoff: ErrorBackoff::default(),
        writes: OwnWrites::default(),
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

/// How often what is kept per forward is pruned of forwards that are gone.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

impl Context {
    /// Forgets what is kept for forwards deleted without a cleanup this process saw (a
    /// finalizer removed by hand, a deletion while it was a standby), and own writes the cache
    /// has caught up with.
    fn prune(&self) {
        let forwards = self.stores.forwards.state();
        let keys: std::collections::HashSet<String> = forwards.iter().map(|f| key(f)).collect();
        let versions: HashMap<&str, &str> = forwards
            .iter()
            .filter_map(|f| {
                Some((
                    f.metadata.uid.as_deref()?,
                    f.metadata.resource_version.as_deref()?,
                ))
            })
            .collect();
        self.backoff.retain(|k| keys.contains(k));
        self.writes
            .prune(|uid| versions.get(uid).map(|v| (*v).to_owned()));
    }
}

fn key(forward: &VpcDnsForward) -> String {
    format!(
        "{}/{}",
        forward.namespace().unwrap_or_default(),
        forward.name_any()
    )
}

async fn reconcile(forward: Arc<VpcDnsForward>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx2 = ctx.clone();
    ctx.reconcile_metrics
        .measure(Box::pin(async move {
            let ns = forward.namespace().unwrap_or_default();
            let api: Api<VpcDnsForward> = Api::namespaced(ctx2.client.clone(), &ns);
            let k = key(&forward);
            ctx2.caches
                .reconcile(
                    &ctx2.backoff,
                    &k,
                    forward.metadata.generation,
                    Box::pin(async {
                        finalizer::finalizer(
                            &api,
                            DNS_FINALIZER,
                            MANAGER,
                            &ctx2.writes,
                            forward,
                            |event| async {
                                match event {
                                    Finalizer::Apply(f) => apply(&f, &ctx2, &api).await,
                                    Finalizer::Cleanup(f) => cleanup(&f, &ctx2).await,
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

fn error_policy(forward: Arc<VpcDnsForward>, err: &Error, ctx: Arc<Context>) -> Action {
    if is_cleanup_in_progress(err) {
        // Normally once (look again with fresh caches); spaced out like any retry, so a route
        // something keeps re-adding is not patched away, and vpc-dns restarted, every second.
        return Action::requeue(
            ctx.backoff
                .next_delay(&key(&forward), forward.metadata.generation),
        );
    }
    let delay = ctx
        .backoff
        .next_delay(&key(&forward), forward.metadata.generation);
    tracing::warn!(forward = %key(&forward), %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn is_cleanup_in_progress(err: &Error) -> bool {
    matches!(err, Error::Finalizer(e) if matches!(**e, kube::runtime::finalizer::Error::CleanupFailed(Error::CleanupInProgress)))
}

async fn apply(
    forward: &VpcDnsForward,
    ctx: &Context,
    api: &Api<VpcDnsForward>,
) -> Result<Action, Error> {
    let mut snapshot = ctx.stores.snapshot(&ctx.kube_ovn_namespace, ctx.tenancy);
    let custom = read_corefiles(forward, ctx, &mut snapshot).await?;
    let mut plan = plan::plan(forward, &snapshot, false);
    let (repairs, deferred) = space_repairs(forward, ctx, &mut plan);
    tracing::debug!(
        forward = %key(forward),
        reason = plan.condition.reason,
        edits = plan.edits.len(),
        corefile_edits = plan.corefiles.len(),
        kube_dns = snapshot.kube_dns.is_some(),
        deployments = snapshot.deployments.len(),
        "planned"
    );
    execute(forward, ctx, &plan).await?;
    let now = std::time::Instant::now();
    for deployment in &repairs {
        ctx.repair_limiter.record(deployment, now);
        ctx.metrics.repairs.with_label_values(&["repaired"]).inc();
    }
    update_gauge(ctx, &snapshot, &plan);
    write_status(forward, ctx, api, &plan).await?;
    // A Corefile ConfigMap other than the default is read, not watched: look again later.
    Ok(match (deferred, custom) {
        (Some(wait), _) => Action::requeue(wait.min(CUSTOM_COREFILE_RECHECK)),
        (None, true) => Action::requeue(CUSTOM_COREFILE_RECHECK),
        (None, false) => Action::await_change(),
    })
}

/// Holds back the plan's repairs (a route put back on a Deployment that carried it, per the
/// forward's status) that come too soon after the last one. Returns the repairs left in the
/// plan (recorded once written) and when to look again for those held back. The forward is
/// then not Ready (`RepairDeferred`): its route is missing until then.
fn space_repairs(
    forward: &VpcDnsForward,
    ctx: &Context,
    plan: &mut Plan,
) -> (Vec<String>, Option<Duration>) {
    let had = forward
        .status
        .as_ref()
        .map(|s| s.deployments.clone())
        .unwrap_or_default();
    let now = std::time::Instant::now();
    let mut wait: Option<Duration> = None;
    let mut held = Vec::new();
    let mut repairs = Vec::new();
    plan.edits.retain(|edit| {
        if !edit.adds || !had.contains(&edit.deployment) {
            return true;
        }
        match ctx.repair_limiter.check(&edit.deployment, now) {
            Ok(()) => {
                repairs.push(edit.deployment.clone());
                true
            }
            Err(w) => {
                ctx.metrics.repairs.with_label_values(&["deferred"]).inc();
                wait = Some(wait.map_or(w, |x| x.min(w)));
                held.push(edit.deployment.clone());
                false
            }
        }
    });
    let Some(wait) = wait else {
        return (repairs, None);
    };
    plan.condition = conditions::DesiredCondition::not_ready(
        "RepairDeferred",
        format!(
            "the route was removed again from {} (each repair restarts vpc-dns): next repair in {}s",
            held.join(", "),
            wait.as_secs().max(1)
        ),
    );
    (repairs, Some(wait))
}

/// Reads the Corefile ConfigMaps other than the default one that `forward` touches (named by
/// a VpcDns `spec.corefile`, Kube-OVN v1.16+, or recorded in its status) into `snapshot`.
/// Returns whether there were any. Only the names granted in the chart
/// (`dns-forwarder.corefileConfigMaps`) can be read; another is `CorefileUnreadable`.
async fn read_corefiles(
    forward: &VpcDnsForward,
    ctx: &Context,
    snapshot: &mut Snapshot,
) -> Result<bool, Error> {
    let mut names = plan::corefiles_of(snapshot, &forward.spec.vpc);
    if let Some(status) = &forward.status {
        names.extend(status.corefiles.iter().cloned());
    }
    names.remove(VPC_DNS_COREFILE);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.kube_ovn_namespace);
    for name in &names {
        let source = if !multivpc_api::net::is_object_name(name) {
            CorefileSource::Unreadable("not a valid ConfigMap name".into())
        } else {
            match cms.get_opt(name).await {
                Ok(Some(cm)) => CorefileSource::Found(Arc::new(cm)),
                Ok(None) => CorefileSource::Missing,
                Err(kube::Error::Api(e)) if e.code == 403 => CorefileSource::Unreadable(
                    "dns-forwarder may not read it: add it to the chart value dns-forwarder.corefileConfigMaps".into(),
                ),
                Err(e) => return Err(e.into()),
            }
        };
        snapshot.corefiles.insert(name.clone(), source);
    }
    Ok(!names.is_empty())
}

async fn cleanup(forward: &VpcDnsForward, ctx: &Context) -> Result<Action, Error> {
    let mut snapshot = ctx.stores.snapshot(&ctx.kube_ovn_namespace, ctx.tenancy);
    read_corefiles(forward, ctx, &mut snapshot).await?;
    let plan = plan::plan(forward, &snapshot, true);
    execute(forward, ctx, &plan).await?;
    update_gauge(ctx, &snapshot, &plan);
    if !plan.edits.is_empty() || !plan.corefiles.is_empty() {
        // Edits go one per deployment per pass: look again with the caches updated by the
        // edits' own watch events, and release the finalizer only when nothing is left.
        return Err(Error::CleanupInProgress);
    }
    Ok(Action::await_change())
}

async fn execute(forward: &VpcDnsForward, ctx: &Context, plan: &Plan) -> Result<(), Error> {
    let reference = forward.object_ref(&());
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.kube_ovn_namespace);
    for edit in &plan.corefiles {
        let patch = json!({
            "metadata": { "resourceVersion": edit.resource_version },
            "data": { COREFILE_KEY: edit.text },
        });
        cms.patch(
            &edit.configmap,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        publish(
            ctx,
            &reference,
            EventType::Normal,
            "CorefileUpdated",
            "Edit",
            format!(
                "updated the clusterset.local section of {}/{}",
                ctx.kube_ovn_namespace, edit.configmap
            ),
        )
        .await;
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ctx.kube_ovn_namespace);
    for edit in &plan.edits {
        let params = PatchParams::default();
        match edit.kind {
            PatchKind::Strategic => {
                deployments
                    .patch(&edit.deployment, &params, &Patch::Strategic(&edit.patch))
                    .await?
            }
            PatchKind::Merge => {
                deployments
                    .patch(&edit.deployment, &params, &Patch::Merge(&edit.patch))
                    .await?
            }
        };
        let (reason, verb) = if edit.adds {
            ("RouteAdded", "added")
        } else {
            ("RouteRemoved", "removed")
        };
        publish(
            ctx,
            &reference,
            EventType::Normal,
            reason,
            "Edit",
            format!(
                "{verb} route {} on Deployment {}/{}",
                edit.route, ctx.kube_ovn_namespace, edit.deployment
            ),
        )
        .await;
    }
    Ok(())
}

/// Counts the vpc-dns Deployments carrying the route after the plan's edits.
fn update_gauge(ctx: &Context, snapshot: &Snapshot, plan: &Plan) {
    let Ok(route) = plan::route(snapshot) else {
        return;
    };
    let carrying = snapshot
        .deployments
        .iter()
        .filter(|(name, d)| {
            match plan
                .edits
                .iter()
                .find(|e| &e.deployment == *name && e.route == route)
            {
                Some(edit) => edit.adds,
                None => routes::has_route(d, &route).unwrap_or(false),
            }
        })
        .count();
    ctx.metrics
        .routes_programmed
        .set(i64::try_from(carrying).unwrap_or(i64::MAX));
}

async fn write_status(
    forward: &VpcDnsForward,
    ctx: &Context,
    api: &Api<VpcDnsForward>,
    plan: &Plan,
) -> Result<(), Error> {
    let old = forward.status.clone().unwrap_or_default();
    let mut status = VpcDnsForwardStatus {
        observed_generation: forward.metadata.generation,
        conditions: old.conditions.clone(),
        vpc_dns: plan.vpc_dns.clone(),
        corefiles: plan.corefile_configmaps.clone(),
        deployments: plan.deployments.clone(),
        route: plan.route.map(|r: Route| r.to_string()),
    };
    let old_ready = conditions::find(&old.conditions, conditions::READY).cloned();
    conditions::set_condition(
        &mut status.conditions,
        &plan.condition,
        forward.metadata.generation,
        jiff::Timestamp::now(),
    );
    if status == old {
        return Ok(()); // Steady state: no write.
    }
    let changed_reason = old_ready.is_none_or(|c| c.reason != plan.condition.reason);
    if changed_reason {
        let kind = if plan.condition.status.is_true() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(
            ctx,
            &forward.object_ref(&()),
            kind,
            plan.condition.reason,
            "Reconcile",
            plan.condition.message.clone(),
        )
        .await;
    }
    let written = apply_status(api, &forward.name_any(), MANAGER, &status).await?;
    ctx.writes.wrote(forward, written);
    Ok(())
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    ctx.events
        .publish(reference, type_, reason, action, note)
        .await;
}
