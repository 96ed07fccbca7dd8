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
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use multivpc_api::{
    GatewayExIp,
    foreign::submariner::{
        Cluster, DEFAULT_BROKER_NAMESPACE, SERVICE_DISCOVERY_NAME, SUBMARINER_NAMESPACE,
        ServiceDiscovery, ServiceDiscoverySpec,
    },
    keys::SUBMARINER_CLUSTER_ID,
    net::Ipv4Cidr,
};
use multivpc_runtime::{
    backoff::ErrorBackoff,
    events::Events,
    watch::{self, Decoded, WatchMetrics},
};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    controller::{MANAGER, Stores},
    metrics::SyncerMetrics,
    pruning,
    sync::{self, Direction, Op},
    trust::ImportPolicy,
};

/// Where the broker credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Submariner's `submariner-operator/service-discovery` (the default).
    ServiceDiscovery,
    /// A Secret `<namespace>/<name>` whose key `kubeconfig` holds a kubeconfig for the broker.
    Secret { namespace: String, name: String },
    /// Broker sync switched off.
    Disabled,
}

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub source: Source,
    /// Broker namespace; otherwise ServiceDiscovery's brokerK8sRemoteNamespace, the
    /// kubeconfig context's namespace, or `submariner-k8s-broker`.
    pub namespace: Option<String>,
    /// Import caps: objects per origin cluster, and in all.
    pub max_imported_per_cluster: usize,
    pub max_imported: usize,
    /// `--allow-insecure-broker`: accept `http://` and unverified TLS (`brokerK8sInsecure`,
    /// `insecure-skip-tls-verify`). Off by default: the broker token would travel exposed.
    pub allow_insecure: bool,
}

/// The `https://host:port` URL of a ServiceDiscovery's `brokerK8sApiServer`. `http://` only
/// when `allow_insecure`.
pub fn broker_url(api_server: &str, allow_insecure: bool) -> anyhow::Result<String> {
    let s = api_server.trim().trim_end_matches('/');
    if s.is_empty() {
        bail!("brokerK8sApiServer is empty");
    }
    if s.starts_with("http://") {
        if !allow_insecure {
            bail!(
                "the broker URL {s} is plain http (the token would travel in clear); refused without --allow-insecure-broker"
            );
        }
        tracing::warn!(
            url = s,
            "--allow-insecure-broker: talking to the broker over plain http"
        );
        return Ok(s.to_owned());
    }
    if s.starts_with("https://") {
        return Ok(s.to_owned());
    }
    Ok(format!("https://{s}"))
}

/// Refuses what a broker kubeconfig from a Secret may not do inside this controller: run a
/// program (`exec`, `auth-provider`), read this pod's files (`tokenFile`, certificate and key
/// paths), go through a proxy, or skip TLS verification (unless `allow_insecure`). Whoever can
/// write that Secret must not get code execution or file reads in exip-syncer's pod.
pub fn check_secret_kubeconfig(kc: &Kubeconfig, allow_insecure: bool) -> anyhow::Result<()> {
    for named in &kc.auth_infos {
        let Some(user) = &named.auth_info else {
            continue;
        };
        let user_name = &named.name;
        if user.exec.is_some() {
            bail!("user {user_name:?} runs a program (exec): refused");
        }
        if user.auth_provider.is_some() {
            bail!("user {user_name:?} uses an auth-provider plugin: refused");
        }
        for (field, value) in [
            ("tokenFile", &user.token_file),
            ("client-certificate", &user.client_certificate),
            ("client-key", &user.client_key),
        ] {
            if value.is_some() {
                bail!("user {user_name:?} reads a file ({field}): use the *-data fields");
            }
        }
    }
    for named in &kc.clusters {
        let Some(cluster) = &named.cluster else {
            continue;
        };
        let cluster_name = &named.name;
        if cluster.certificate_authority.is_some() {
            bail!(
                "cluster {cluster_name:?} reads a file (certificate-authority): use certificate-authority-data"
            );
        }
        if cluster.proxy_url.is_some() {
            bail!("cluster {cluster_name:?} sets proxy-url: refused");
        }
        if let Some(server) = &cluster.server {
            broker_url(server, allow_insecure)?;
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            if !allow_insecure {
                bail!(
                    "cluster {cluster_name:?} skips TLS verification; refused without --allow-insecure-broker"
                );
            }
            tracing::warn!(
                cluster = cluster_name,
                "--allow-insecure-broker: broker TLS not verified"
            );
        }
    }
    Ok(())
}

/// The token and CA to reach the broker with, as read from ServiceDiscovery.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerCredentials {
    pub token: String,
    /// Base64 of the broker's CA certificate (PEM); empty when none is given.
    pub ca_b64: String,
}

impl std::fmt::Debug for BrokerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerCredentials")
            .field("token", &"<redacted>")
            .field("ca_b64", &self.ca_b64)
            .finish()
    }
}

/// The kubeconfigs to try for the broker, in order, from a ServiceDiscovery spec and the
/// credentials read for it: token auth, TLS verified unless `brokerK8sInsecure` is set. The two
/// trust sources of Submariner's admiral (`GetAuthorizedRestConfigFromData`): the given CA,
/// then the system roots, so that a broker certificate from a public CA works whatever CA
/// ServiceDiscovery carries (stale or none). Admiral tries the roots first; the CA first
/// trusts less when it suffices, and spares the usual private-CA broker a failed handshake on
/// every connect (which the TLS verifier logs at ERROR).
pub fn service_discovery_kubeconfigs(
    sd: &ServiceDiscoverySpec,
    credentials: &BrokerCredentials,
    namespace: &str,
    allow_insecure: bool,
) -> anyhow::Result<Vec<Kubeconfig>> {
    let server = broker_url(&sd.broker_k8s_api_server, allow_insecure)?;
    if credentials.token.is_empty() {
        bail!("the broker token is empty");
    }
    let kubeconfig = |cluster: serde_json::Value| {
        let value = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{ "name": "broker", "cluster": cluster }],
            "users": [{ "name": "broker", "user": { "token": credentials.token } }],
            "contexts": [{ "name": "broker", "context": { "cluster": "broker", "user": "broker", "namespace": namespace } }],
            "current-context": "broker",
        });
        serde_json::from_value::<Kubeconfig>(value).context("build broker kubeconfig")
    };
    if sd.broker_k8s_insecure {
        if !allow_insecure {
            bail!(
                "ServiceDiscovery sets brokerK8sInsecure (broker TLS unverified); refused without --allow-insecure-broker"
            );
        }
        tracing::warn!("--allow-insecure-broker: brokerK8sInsecure, broker TLS not verified");
        return Ok(vec![kubeconfig(
            json!({ "server": server, "insecure-skip-tls-verify": true }),
        )?]);
    }
    let mut candidates = Vec::new();
    let ca = credentials.ca_b64.trim();
    if !ca.is_empty() {
        candidates.push(kubeconfig(
            json!({ "server": server, "certificate-authority-data": ca }),
        )?);
    }
    candidates.push(kubeconfig(json!({ "server": server }))?);
    Ok(candidates)
}

/// The broker credentials ServiceDiscovery leads to: those of the Secret it names
/// (`brokerK8sSecret`, keys `token` and `ca.crt`, what Submariner's pods mount and what token
/// rotation updates) when this controller may read it, else its inline token and CA. The
/// second value says why the Secret was not used, when it was named.
async fn service_discovery_credentials(
    local: &Client,
    sd: &ServiceDiscoverySpec,
) -> (BrokerCredentials, Option<String>) {
    let inline = BrokerCredentials {
        token: sd.broker_k8s_api_server_token.clone(),
        ca_b64: sd.broker_k8s_ca.trim().to_owned(),
    };
    let name = sd.broker_k8s_secret.trim();
    if name.is_empty() {
        return (inline, None);
    }
    if !multivpc_api::net::is_object_name(name) {
        return (
            inline,
            Some(format!("brokerK8sSecret {name:?} is not an object name")),
        );
    }
    let api: Api<Secret> = Api::namespaced(local.clone(), SUBMARINER_NAMESPACE);
    let secret = match api.get(name).await {
        Ok(s) => s,
        Err(e) => {
            return (
                inline,
                Some(format!(
                    "cannot read Secret {SUBMARINER_NAMESPACE}/{name} named by brokerK8sSecret: {e}"
                )),
            );
        }
    };
    let data = secret.data.unwrap_or_default();
    let token = data
        .get("token")
        .and_then(|t| std::str::from_utf8(&t.0).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return (
            inline,
            Some(format!(
                "Secret {SUBMARINER_NAMESPACE}/{name} named by brokerK8sSecret has no token"
            )),
        );
    };
    use base64::Engine as _;
    let ca_b64 = data
        .get("ca.crt")
        .filter(|c| !c.0.is_empty())
        .map(|c| base64::engine::general_purpose::STANDARD.encode(&c.0))
        .unwrap_or(inline.ca_b64);
    (BrokerCredentials { token, ca_b64 }, None)
}

/// Builds a client for the broker and names its namespace. Never logs the token. With several
/// kubeconfigs to try (a CA, then the system roots), each but the last must list the broker's
/// GatewayExIps before it is taken. `secret_note` keeps the last reason the brokerK8sSecret
/// was not used, so that it is logged once, not on every reconnect.
async fn connect(
    local: &Client,
    settings: &BrokerSettings,
    secret_note: &mut Option<String>,
) -> anyhow::Result<(Client, String)> {
    let (candidates, namespace) = match &settings.source {
        Source::Disabled => bail!("broker sync is disabled"),
        Source::ServiceDiscovery => {
            let api: Api<ServiceDiscovery> = Api::namespaced(local.clone(), SUBMARINER_NAMESPACE);
            let sd = api
                .get_opt(SERVICE_DISCOVERY_NAME)
                .await
                .with_context(|| format!("read {SUBMARINER_NAMESPACE}/{SERVICE_DISCOVERY_NAME}"))?
                .with_context(|| {
                    format!("no ServiceDiscovery {SUBMARINER_NAMESPACE}/{SERVICE_DISCOVERY_NAME}")
                })?;
            let ns = settings
                .namespace
                .clone()
                .or_else(|| {
                    Some(sd.spec.broker_k8s_remote_namespace.clone()).filter(|n| !n.is_empty())
                })
                .unwrap_or_else(|| DEFAULT_BROKER_NAMESPACE.into());
            let (credentials, note) = service_discovery_credentials(local, &sd.spec).await;
            if note != *secret_note {
                if let Some(why) = &note {
                    tracing::warn!(
                        reason = why.as_str(),
                        "using ServiceDiscovery's inline broker token, which does not follow token rotation (docs/broker.md: credentials)"
                    );
                } else if secret_note.is_some() {
                    tracing::info!("using the broker Secret named by ServiceDiscovery");
                }
                *secret_note = note;
            }
            (
                service_discovery_kubeconfigs(
                    &sd.spec,
                    &credentials,
                    &ns,
                    settings.allow_insecure,
                )?,
                ns,
            )
        }
        Source::Secret { namespace, name } => {
            let api: Api<Secret> = Api::namespaced(local.clone(), namespace);
            let secret = api
                .get(name)
                .await
                .with_context(|| format!("read Secret {namespace}/{name}"))?;
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get("kubeconfig"))
                .with_context(|| format!("Secret {namespace}/{name} has no key kubeconfig"))?;
            let text = std::str::from_utf8(&data.0).context("kubeconfig is not UTF-8")?;
            let kc = Kubeconfig::from_yaml(text).context("parse the broker kubeconfig")?;
            check_secret_kubeconfig(&kc, settings.allow_insecure)
                .with_context(|| format!("the broker kubeconfig in Secret {namespace}/{name}"))?;
            let context_ns = kc
                .contexts
                .iter()
                .find(|c| Some(&c.name) == kc.current_context.as_ref())
                .and_then(|c| c.context.as_ref()?.namespace.clone());
            let ns = settings
                .namespace
                .clone()
                .or(context_ns)
                .unwrap_or_else(|| DEFAULT_BROKER_NAMESPACE.into());
            (vec![kc], ns)
        }
    };
    let last = candidates.len().saturating_sub(1);
    for (i, kubeconfig) in candidates.into_iter().enumerate() {
        if i == last {
            return Ok((broker_client(kubeconfig).await?, namespace));
        }
        let probed = async {
            let client = broker_client(kubeconfig).await?;
            let probe: Api<GatewayExIp> = Api::namespaced(client.clone(), &namespace);
            // Metadata only: a broker object that does not decode must not fail the probe
            // (nor make kube log the whole list).
            probe.list_metadata(&ListParams::default().limit(1)).await?;
            anyhow::Ok(client)
        };
        match probed.await {
            Ok(client) => return Ok((client, namespace)),
            Err(e) => tracing::info!(
                err = format!("{e:#}"),
                "broker not reached with the given CA; trying the system roots"
            ),
        }
    }
    bail!("no broker kubeconfig to try")
}

async fn broker_client(kubeconfig: Kubeconfig) -> anyhow::Result<Client> {
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("broker client configuration")?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(300));
    config.write_timeout = Some(Duration::from_secs(10));
    Client::try_from(config).context("broker client")
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
    if settings.source == Source::Disabled {
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
            let (client, ns) = connect(&local, &settings, &mut secret_note).await?;
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

    fn sd(server: &str, insecure: bool) -> ServiceDiscoverySpec {
        ServiceDiscoverySpec {
            broker_k8s_api_server: server.into(),
            broker_k8s_api_server_token: "s3cr3t".into(),
            broker_k8s_ca: "Q0E=".into(),
            broker_k8s_remote_namespace: "brk".into(),
            broker_k8s_insecure: insecure,
            broker_k8s_secret: String::new(),
            cluster_id: "c1".into(),
            globalnet_enabled: true,
        }
    }

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

    #[test]
    fn broker_url_adds_https_to_host_port() {
        assert_eq!(
            broker_url("10.0.0.1:6443", false).unwrap(),
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            broker_url("https://b:443/", false).unwrap(),
            "https://b:443"
        );
        assert!(broker_url(" ", false).is_err());
        // Plain http only when explicitly allowed.
        assert!(broker_url("http://b:80", false).is_err());
        assert_eq!(broker_url("http://b:80", true).unwrap(), "http://b:80");
    }

    fn inline(sd: &ServiceDiscoverySpec) -> BrokerCredentials {
        BrokerCredentials {
            token: sd.broker_k8s_api_server_token.clone(),
            ca_b64: sd.broker_k8s_ca.clone(),
        }
    }

    #[test]
    fn service_discovery_becomes_verified_token_kubeconfigs_ca_then_system_roots() {
        let spec = sd("127.0.0.1:6443", false);
        let kcs = service_discovery_kubeconfigs(&spec, &inline(&spec), "brk", false).unwrap();
        let clusters: Vec<_> = kcs
            .iter()
            .map(|kc| kc.clusters[0].cluster.clone().unwrap())
            .collect();
        // Admiral's two trust sources: ServiceDiscovery's CA, then the system roots (no CA data).
        assert_eq!(clusters.len(), 2);
        assert_eq!(
            clusters[0].certificate_authority_data.as_deref(),
            Some("Q0E=")
        );
        assert_eq!(clusters[1].certificate_authority_data, None);
        for (kc, cluster) in kcs.iter().zip(&clusters) {
            assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
            assert_ne!(cluster.insecure_skip_tls_verify, Some(true));
            assert_eq!(
                kc.contexts[0]
                    .context
                    .as_ref()
                    .unwrap()
                    .namespace
                    .as_deref(),
                Some("brk")
            );
            // The token is kept out of Debug output.
            assert!(!format!("{kc:?}").contains("s3cr3t"));
        }
        assert!(!format!("{:?}", inline(&spec)).contains("s3cr3t"));
        // Without a CA, the system roots only.
        let no_ca = BrokerCredentials {
            ca_b64: " ".into(),
            ..inline(&spec)
        };
        let kcs = service_discovery_kubeconfigs(&spec, &no_ca, "brk", false).unwrap();
        assert_eq!(kcs.len(), 1);
    }

    #[test]
    fn insecure_only_when_asked() {
        let spec = sd("b:6443", true);
        let refused = service_discovery_kubeconfigs(&spec, &inline(&spec), "brk", false)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("--allow-insecure-broker"), "{refused}");
        let kcs = service_discovery_kubeconfigs(&spec, &inline(&spec), "brk", true).unwrap();
        assert_eq!(kcs.len(), 1);
        let cluster = kcs[0].clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.insecure_skip_tls_verify, Some(true));
        assert_eq!(cluster.certificate_authority_data, None);
        let spec = sd("b:6443", false);
        let no_token = BrokerCredentials {
            token: String::new(),
            ..inline(&spec)
        };
        assert!(service_discovery_kubeconfigs(&spec, &no_token, "brk", false).is_err());
    }

    #[test]
    fn secret_kubeconfigs_may_not_run_programs_or_read_files() {
        let base = |user: &str, cluster: &str| {
            Kubeconfig::from_yaml(&format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: b, cluster: {{server: 'https://b:6443'{cluster}}}}}]\nusers: [{{name: u, user: {{{user}}}}}]\ncontexts: [{{name: b, context: {{cluster: b, user: u}}}}]\ncurrent-context: b\n"
            ))
            .unwrap()
        };
        assert!(check_secret_kubeconfig(&base("token: t", ""), false).is_ok());
        for (user, cluster, why) in [
            (
                "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}",
                "",
                "exec",
            ),
            ("auth-provider: {name: gcp}", "", "auth-provider"),
            (
                "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                "",
                "tokenFile",
            ),
            ("client-certificate: /etc/x.crt", "", "client-certificate"),
            ("client-key: /etc/x.key", "", "client-key"),
            (
                "token: t",
                ", certificate-authority: /etc/ca.crt",
                "certificate-authority",
            ),
            ("token: t", ", proxy-url: 'http://p:3128'", "proxy-url"),
            (
                "token: t",
                ", insecure-skip-tls-verify: true",
                "TLS verification",
            ),
        ] {
            let err = check_secret_kubeconfig(&base(user, cluster), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        let plain = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\nclusters: [{name: b, cluster: {server: 'http://b:80'}}]\nusers: []\ncontexts: []\n",
        )
        .unwrap();
        assert!(check_secret_kubeconfig(&plain, false).is_err());
        assert!(check_secret_kubeconfig(&plain, true).is_ok());
    }
}
