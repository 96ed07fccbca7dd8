//! The broker side: credentials, connection, the broker watch and the sync loop. Runs beside
//! the local controller and never blocks it: while the broker is unreachable the local work
//! goes on, `multivpc_broker_connected` is 0, and reconnecting re-lists everything (a full
//! resync).

use multivpc_runtime::admin::CacheSync;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use multivpc_api::{
    GatewayExIp, foreign::submariner::Cluster, keys::SUBMARINER_CLUSTER_ID, net::Ipv4Cidr,
};
use multivpc_runtime::{
    backoff::ErrorBackoff,
    events::Events,
    watch::{self, Decoded, WatchMetrics},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    controller::{MANAGER, Stores},
    metrics::SyncerMetrics,
    pruning,
    sync::{self, Direction, Op},
    trust::ImportPolicy,
};

pub use multivpc_runtime::broker::{Access, Source};

/// How to reach the broker, and what to import from it.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub access: Access,
    /// Import caps: objects per origin cluster, and in all.
    pub max_imported_per_cluster: usize,
    pub max_imported: usize,
}

/// How the watch task and the sync loop wake each other: `sync` when the broker view changed,
/// `reconnect` when the broker refused the credentials.
struct Signals {
    sync: Arc<Notify>,
    reconnect: Notify,
}

/// What the sync loop knows about the broker.
#[derive(Default)]
struct BrokerView {
    /// Client and namespace while connected and listed.
    connection: Option<(Client, String)>,
    objects: BTreeMap<String, GatewayExIp>,
    /// Submariner's Cluster objects in the broker namespace, by name.
    clusters: BTreeMap<String, Cluster>,
}

/// The Globalnet CIDRs Submariner records on the broker, by cluster ID. Any member may write a
/// Cluster object, so a cluster ID claimed by objects that disagree (or whose clusterID label
/// disagrees with their spec) is left out: its imports are refused until that is resolved.
fn recorded_globalnet(clusters: &BTreeMap<String, Cluster>) -> BTreeMap<String, Vec<Ipv4Cidr>> {
    let mut by_id: BTreeMap<String, Option<Vec<Ipv4Cidr>>> = BTreeMap::new();
    for c in clusters.values() {
        let id = &c.spec.cluster_id;
        let label = c.labels().get(SUBMARINER_CLUSTER_ID);
        let cidrs: Option<Vec<Ipv4Cidr>> = c
            .spec
            .global_cidr
            .iter()
            .map(|g| g.trim().parse::<Ipv4Cidr>().ok())
            .collect();
        let consistent = !id.is_empty() && label.is_none_or(|l| l == id);
        let entry = by_id.entry(id.clone()).or_insert_with(|| cidrs.clone());
        if !consistent || *entry != cidrs {
            *entry = None;
        }
    }
    by_id
        .into_iter()
        .filter_map(|(id, cidrs)| Some((id, cidrs?)))
        .collect()
}

/// Runs the broker connection and the sync loop until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    local_client: Client,
    settings: BrokerSettings,
    cluster_id: String,
    local_ns: String,
    local: Stores,
    globalnet_flag: Option<String>,
    local_caches: CacheSync,
    sync_notify: Arc<Notify>,
    servers: pruning::Servers,
    metrics: SyncerMetrics,
    watch_metrics: WatchMetrics,
    shutdown: CancellationToken,
) {
    if settings.access.source == Source::Disabled {
        tracing::info!("broker sync disabled");
        return;
    }
    let view = Arc::new(Mutex::new(BrokerView::default()));
    // A write the broker refuses as Unauthorized (a rotated token) makes the watch task drop
    // the connection and re-read the credentials, rather than wait for its watch to expire.
    let signals = Arc::new(Signals {
        sync: sync_notify.clone(),
        reconnect: Notify::new(),
    });
    let watch = tokio::spawn(watch_broker(
        local_client.clone(),
        settings.clone(),
        view.clone(),
        signals.clone(),
        metrics.clone(),
        watch_metrics,
        shutdown.clone(),
    ));
    // (name, direction, result, resource versions) of skips already logged and counted.
    let mut logged: BTreeSet<(String, &'static str, &'static str, String)> = BTreeSet::new();
    let events = Events::new(local_client.clone(), MANAGER);
    let backoff = ErrorBackoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let wake = async {
            match retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sync_notify.notified() => {}
            _ = wake => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        retry = None;
        let (connection, broker, broker_globalnet) = {
            let v = view.lock().unwrap_or_else(|p| p.into_inner());
            (
                v.connection.clone(),
                v.objects.values().cloned().collect::<Vec<_>>(),
                recorded_globalnet(&v.clusters),
            )
        };
        let Some((client, broker_ns)) = connection else {
            continue; // Not connected: the watch task pokes us when it is.
        };
        // Never sync from a partial local cache: an object not yet listed would look deleted.
        if !local_caches.is_synced() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = local_caches.synced() => {}
            }
        }
        let policy = ImportPolicy {
            broker_globalnet,
            local_ranges: local.local_ranges(globalnet_flag.as_deref()),
            max_per_cluster: settings.max_imported_per_cluster,
            max_total: settings.max_imported,
        };
        let local_objects: Vec<GatewayExIp> =
            local.exips.state().iter().map(|o| (**o).clone()).collect();
        let plan = sync::plan(
            &cluster_id,
            &local_ns,
            &broker_ns,
            &local_objects,
            &broker,
            &policy,
            sync::Kept {
                local: servers.local.kept(),
                broker: servers.broker.kept(),
            },
        );
        // Logged and counted once per object version, not on every pass; forgotten once
        // resolved.
        // The resource versions behind each name (broker, then local), built once per pass: a
        // flood of refused objects must not cost a scan of everything per refusal.
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        for o in broker.iter().chain(local_objects.iter()) {
            let entry = by_name.entry(o.name_any()).or_default();
            if !entry.is_empty() {
                entry.push(',');
            }
            entry.push_str(o.resource_version().as_deref().unwrap_or_default());
        }
        let versions = |name: &str| by_name.get(name).cloned().unwrap_or_default();
        let local_by_name: BTreeMap<String, &GatewayExIp> =
            local_objects.iter().map(|o| (o.name_any(), o)).collect();
        let current: BTreeSet<_> = plan
            .skipped
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.direction.label(),
                    s.result,
                    versions(&s.name),
                )
            })
            .collect();
        for s in &plan.skipped {
            let key = (
                s.name.clone(),
                s.direction.label(),
                s.result,
                versions(&s.name),
            );
            if logged.insert(key) {
                tracing::warn!(
                    name = s.name,
                    direction = s.direction.label(),
                    result = s.result,
                    reason = s.reason,
                    "GatewayExIp not synced"
                );
                metrics
                    .broker_sync
                    .with_label_values(&[s.direction.label(), s.result])
                    .inc();
                // The owner of the local object of that name (ours, or a copy imported
                // earlier) sees why it is not synced: a forged name, a value refused, a clash.
                if let Some(affected) = local_by_name.get(&s.name) {
                    let reason = if s.result == "conflict" {
                        "SyncConflict"
                    } else {
                        "SyncRefused"
                    };
                    let way = match s.direction {
                        Direction::ToBroker => "to the broker",
                        Direction::FromBroker => "from the broker",
                    };
                    events
                        .publish(
                            &kube::Resource::object_ref(*affected, &()),
                            kube::runtime::events::EventType::Warning,
                            reason,
                            "Sync",
                            format!("GatewayExIp {} not synced {way}: {}", s.name, s.reason),
                        )
                        .await;
                }
            }
        }
        logged.retain(|k| current.contains(k));
        let broker_api: Api<GatewayExIp> = Api::namespaced(client, &broker_ns);
        let local_api: Api<GatewayExIp> = Api::namespaced(local_client.clone(), &local_ns);
        let mut failed = false;
        let mut unauthorized = false;
        for (direction, ops, api, kept) in [
            (
                Direction::ToBroker,
                &plan.to_broker,
                &broker_api,
                &servers.broker,
            ),
            (
                Direction::FromBroker,
                &plan.from_broker,
                &local_api,
                &servers.local,
            ),
        ] {
            for op in ops {
                let result = execute(api, op).await;
                let noticed = match (&result, op) {
                    (Ok(Some(stored)), Op::Apply(sent) | Op::Create(sent)) => {
                        kept.observe(sent, stored)
                    }
                    // Retried, without the field, after the backoff.
                    (Err(err), Op::Apply(sent) | Op::Create(sent)) => {
                        kept.observe_refusal(sent, err)
                    }
                    _ => false,
                };
                if noticed {
                    crate::controller::warn_tunnels_dropped(match direction {
                        Direction::ToBroker => "the broker's",
                        Direction::FromBroker => "this cluster's",
                    });
                }
                let label = if result.is_ok() { "success" } else { "error" };
                metrics
                    .broker_sync
                    .with_label_values(&[direction.label(), label])
                    .inc();
                match result {
                    Ok(_) => tracing::info!(
                        direction = direction.label(),
                        op = describe(op),
                        "synced GatewayExIp"
                    ),
                    Err(err) => {
                        failed = true;
                        unauthorized |= direction == Direction::ToBroker
                            && matches!(&err, kube::Error::Api(s) if s.code == 401);
                        tracing::warn!(direction = direction.label(), op = describe(op), %err, "GatewayExIp sync failed");
                    }
                }
            }
        }
        if unauthorized {
            signals.reconnect.notify_waiters();
        }
        if failed {
            let delay = backoff.next_delay("sync", None);
            retry = Some(tokio::time::Instant::now() + delay);
        } else {
            backoff.reset("sync");
        }
    }
    let _ = watch.await;
}

fn describe(op: &Op) -> String {
    match op {
        Op::Apply(o) | Op::Create(o) => format!(
            "{} {}/{} externalip={}",
            if matches!(op, Op::Create(_)) {
                "create"
            } else {
                "apply"
            },
            o.namespace().unwrap_or_default(),
            o.name_any(),
            o.spec.externalip
        ),
        Op::Delete { name, namespace } => format!("delete {namespace}/{name}"),
    }
}

/// Runs `op`; what the server stored, for a create or an apply.
async fn execute(api: &Api<GatewayExIp>, op: &Op) -> Result<Option<GatewayExIp>, kube::Error> {
    match op {
        Op::Create(obj) => {
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            api.create(&params, obj).await.map(Some)
        }
        Op::Apply(obj) => api
            .patch(
                &obj.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await
            .map(Some),
        Op::Delete { name, .. } => match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(err) => Err(err),
        },
    }
}

/// A watch of the broker namespace's `K`s that skips objects that do not decode; `cache` names
/// the view's map the stream feeds, so that an object that stops decoding leaves it.
fn broker_watch<K>(
    client: &Client,
    ns: &str,
    view: &Arc<Mutex<BrokerView>>,
    cache: fn(&BrokerView) -> &BTreeMap<String, K>,
    watch_metrics: &WatchMetrics,
) -> futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: watch::Watched + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let api: Api<Decoded<K>> = Api::namespaced(client.clone(), ns);
    let view = view.clone();
    let known = move |meta: &kube::api::ObjectMeta| {
        let name = meta.name.as_deref().unwrap_or_default();
        cache(&view.lock().unwrap_or_else(|p| p.into_inner()))
            .get(name)
            .cloned()
    };
    watch::skip_undecodable(
        watcher(api, watcher::Config::default()),
        watch_metrics.clone(),
        known,
    )
    .boxed()
}

/// Applies one watch event to `map` (by name); a relist is buffered and replaces it whole.
/// True when the event completes a list.
fn apply_event<K: ResourceExt>(
    map: &mut BTreeMap<String, K>,
    buffer: &mut Option<BTreeMap<String, K>>,
    event: watcher::Event<K>,
) -> bool {
    match event {
        watcher::Event::Init => *buffer = Some(BTreeMap::new()),
        watcher::Event::InitApply(o) => {
            buffer.get_or_insert_default().insert(o.name_any(), o);
        }
        watcher::Event::InitDone => {
            *map = buffer.take().unwrap_or_default();
            return true;
        }
        watcher::Event::Apply(o) => {
            map.insert(o.name_any(), o);
        }
        watcher::Event::Delete(o) => {
            map.remove(&o.name_any());
        }
    }
    false
}

/// Keeps a list+watch of the broker namespace's GatewayExIps in `view`. Any error drops the
/// connection (gauge 0), waits with backoff, re-reads the credentials and re-lists.
async fn watch_broker(
    local: Client,
    settings: BrokerSettings,
    view: Arc<Mutex<BrokerView>>,
    signals: Arc<Signals>,
    metrics: SyncerMetrics,
    watch_metrics: WatchMetrics,
    shutdown: CancellationToken,
) {
    let backoff = ErrorBackoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut secret_note = None;
    metrics.broker_connected.set(0);
    loop {
        let attempt = async {
            let (client, ns) =
                multivpc_runtime::broker::connect(&local, &settings.access, &mut secret_note)
                    .await?;
            // Another cluster's object that does not decode is skipped, never a stuck watch.
            let mut stream = broker_watch(&client, &ns, &view, |v| &v.objects, &watch_metrics);
            // Submariner's Cluster objects: the Globalnet CIDR each member really has.
            let mut clusters = broker_watch(&client, &ns, &view, |v| &v.clusters, &watch_metrics);
            let mut exips_buffer: Option<BTreeMap<String, GatewayExIp>> = None;
            let mut clusters_buffer: Option<BTreeMap<String, Cluster>> = None;
            // Not connected (no sync pass) before both have listed: a pass without the
            // Clusters would refuse, and so delete, every copy.
            let (mut exips_listed, mut clusters_listed) = (false, false);
            loop {
                tokio::select! {
                    _ = signals.reconnect.notified() => {
                        bail!("the broker refused a write as Unauthorized; re-reading the credentials");
                    }
                    event = stream.next() => {
                        let Some(event) = event else { break };
                        let event = event
                            .with_context(|| format!("watch GatewayExIps in broker namespace {ns}"))?;
                        let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
                        exips_listed |= apply_event(&mut v.objects, &mut exips_buffer, event);
                    }
                    event = clusters.next() => {
                        let Some(event) = event else { break };
                        let event = event
                            .with_context(|| format!("watch Submariner Clusters in broker namespace {ns}"))?;
                        let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
                        clusters_listed |= apply_event(&mut v.clusters, &mut clusters_buffer, event);
                    }
                }
                let connected = view
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .connection
                    .is_some();
                if !connected && exips_listed && clusters_listed {
                    let n = {
                        let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
                        v.connection = Some((client.clone(), ns.clone()));
                        v.objects.len()
                    };
                    if metrics.broker_connected.get() == 0 {
                        tracing::info!(
                            namespace = ns,
                            objects = n,
                            "connected to the broker; full resync"
                        );
                    }
                    metrics.broker_connected.set(1);
                    backoff.reset("broker");
                }
                signals.sync.notify_one();
            }
            anyhow::Ok(())
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = attempt => r,
        };
        view.lock().unwrap_or_else(|p| p.into_inner()).connection = None;
        let delay = backoff.next_delay("broker", None);
        if metrics.broker_connected.get() == 1 {
            tracing::warn!(err = result.err().map(|e| format!("{e:#}")), retry_in = ?delay, "lost the broker; local publishing and failover go on");
        } else {
            tracing::warn!(err = result.err().map(|e| format!("{e:#}")), retry_in = ?delay, "cannot reach the broker");
        }
        metrics.broker_connected.set(0);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    metrics.broker_connected.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_globalnet_drops_ids_whose_records_disagree() {
        use multivpc_api::foreign::submariner::ClusterSpec;
        let cluster = |name: &str, id: &str, label: Option<&str>, cidr: &str| {
            let mut c = Cluster::new(
                name,
                ClusterSpec {
                    cluster_id: id.into(),
                    global_cidr: vec![cidr.into()],
                    ..Default::default()
                },
            );
            if let Some(l) = label {
                c.labels_mut()
                    .insert(SUBMARINER_CLUSTER_ID.into(), l.into());
            }
            (name.to_string(), c)
        };
        let clusters: BTreeMap<String, Cluster> = [
            cluster("c2", "c2", Some("c2"), "242.1.0.0/16"),
            // A second record claiming c3 with another CIDR: c3 is unknown.
            cluster("c3", "c3", Some("c3"), "242.2.0.0/16"),
            cluster("c3-forged", "c3", Some("c3"), "0.0.0.0/0"),
            // A label that disagrees with the spec, and an unparsable CIDR.
            cluster("c4", "c4", Some("c9"), "242.4.0.0/16"),
            cluster("c5", "c5", None, "not-a-cidr"),
        ]
        .into();
        let recorded = recorded_globalnet(&clusters);
        assert_eq!(recorded.keys().collect::<Vec<_>>(), ["c2"], "{recorded:?}");
        assert_eq!(recorded["c2"], vec!["242.1.0.0/16".parse().unwrap()]);
    }
}
