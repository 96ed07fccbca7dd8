//! The prober: every `--probe-interval`, one exec per gateway pod pings the far end of each
//! tunnel this process programmed there ([`script::probes`]), through the tunnel. The results
//! go to the [`health::Tracker`]; a tunnel whose report changed is handed to the controller,
//! whose reconcile writes it (the status keeps one writer). Transitions are events; the live
//! figures are metrics named as Submariner names its own (`submariner_connections`,
//! `submariner_connection_latency_seconds`: same suffixes, labels and status values).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{channel::mpsc::UnboundedSender, future};
use kube::{
    Resource,
    runtime::{events::EventType, reflector::ObjectRef},
};
use multivpc_api::{VpcNatTunnel, conditions::Status};
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::{
    controller::{Context, key},
    health::{self, Policy},
    ipsec,
    resolve::PodTarget,
    script::{self, EspInbound, Probe, ProbeResult},
};

/// `--probe-interval` and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    pub interval: Duration,
    /// How long one ping waits for its answer (whole seconds, at least 1: busybox's `ping -W`).
    pub timeout_secs: u64,
    pub policy: Policy,
}

/// Labels of a connection's series, as Submariner labels its connections (a tunnel here is a
/// connection between two VPC NAT gateways), plus the tunnel's `namespace/name`.
const CONNECTION_LABELS: [&str; 8] = [
    "cable_driver",
    "local_cluster",
    "local_hostname",
    "local_endpoint_ip",
    "remote_cluster",
    "remote_hostname",
    "remote_endpoint_ip",
    "tunnel",
];

/// Health metrics.
#[derive(Clone)]
pub struct HealthMetrics {
    connections: GaugeVec,
    latency: GaugeVec,
    loss: GaugeVec,
    esp_rejected: GaugeVec,
    probes: IntCounterVec,
}

impl HealthMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let with_status: Vec<&str> = CONNECTION_LABELS
            .iter()
            .copied()
            .chain(["status"])
            .collect();
        let connections = GaugeVec::new(
            Opts::new(
                "multivpc_connections",
                "Probed tunnels between VPC NAT gateways, by status (connected: Healthy, error: not answering, connecting: not known yet); 1 per tunnel",
            ),
            &with_status,
        )?;
        let latency = GaugeVec::new(
            Opts::new(
                "multivpc_connection_latency_seconds",
                "Round trip of the last answered probe through the tunnel",
            ),
            &CONNECTION_LABELS,
        )?;
        let loss = GaugeVec::new(
            Opts::new(
                "multivpc_connection_loss_ratio",
                "Share of the last 10 probes through the tunnel left unanswered",
            ),
            &CONNECTION_LABELS,
        )?;
        let esp_rejected = GaugeVec::new(
            Opts::new(
                "multivpc_connection_ipsec_rejected_packets",
                "ESP packets from the far end of an encrypted tunnel that failed authentication since it last answered (the pre-shared keys differ)",
            ),
            &CONNECTION_LABELS,
        )?;
        let probes = IntCounterVec::new(
            Opts::new(
                "multivpc_tunnel_probes_total",
                "Probes through tunnels, by result (answered, lost; failed: the exec failed; unavailable: the gateway has no ping)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(loss.clone()))?;
        registry.register(Box::new(esp_rejected.clone()))?;
        registry.register(Box::new(probes.clone()))?;
        for r in ["answered", "lost", "failed", "unavailable"] {
            probes.with_label_values(&[r]);
        }
        Ok(Self {
            connections,
            latency,
            loss,
            esp_rejected,
            probes,
        })
    }
}

/// One tunnel to probe this round.
struct Item {
    key: String,
    tunnel: Arc<VpcNatTunnel>,
    probe: Probe,
    labels: Vec<String>,
}

/// The tunnels to probe, by gateway pod: those this process programmed, still live, whose far
/// end publishes an address.
fn round(ctx: &Context) -> Vec<(PodTarget, Vec<Item>)> {
    let snapshot = ctx.stores.snapshot(&ctx.settings);
    let tunnels: HashMap<String, &Arc<VpcNatTunnel>> =
        snapshot.tunnels.iter().map(|t| (key(t), t)).collect();
    let programmed = ctx.programmed.lock().unwrap_or_else(|p| p.into_inner());
    let mut by_pod: BTreeMap<String, (PodTarget, Vec<Item>)> = BTreeMap::new();
    for (k, p) in programmed.iter() {
        let Some(tunnel) = tunnels
            .get(k)
            .filter(|t| t.metadata.deletion_timestamp.is_none())
        else {
            continue;
        };
        let Ok(target) = health::target(tunnel, &p.config, &snapshot) else {
            continue;
        };
        let cfg = &p.config;
        let labels = vec![
            cfg.encap.tunnel_type().to_string(),
            snapshot.cluster_id.clone().unwrap_or_default(),
            p.pod.name.clone(),
            cfg.local_ip.to_string(),
            tunnel.spec.cluster_id.clone(),
            tunnel.spec.gateway_name.clone(),
            cfg.remote_ip.to_string(),
            k.clone(),
        ];
        by_pod
            .entry(p.pod.uid.clone())
            .or_insert_with(|| (p.pod.clone(), Vec::new()))
            .1
            .push(Item {
                key: k.clone(),
                tunnel: (*tunnel).clone(),
                probe: Probe {
                    device: cfg.device.clone(),
                    target,
                    esp: cfg.esp.as_ref().map(|e| EspInbound {
                        from: cfg.remote_ip,
                        to: cfg.local_ip,
                        tag: ipsec::carrier_tag(e.carrier),
                    }),
                },
                labels,
            });
    }
    by_pod
        .into_values()
        .flat_map(|(pod, mut items)| {
            items.sort_by(|a, b| a.key.cmp(&b.key));
            let mut chunks = Vec::new();
            while !items.is_empty() {
                let rest = items.split_off(items.len().min(script::MAX_PROBES));
                chunks.push((pod.clone(), std::mem::replace(&mut items, rest)));
            }
            chunks
        })
        .collect()
}

/// The series each tunnel last set, to remove them when its labels or status change.
#[derive(Default)]
struct Series {
    by_key: HashMap<String, (Vec<String>, &'static str)>,
}

fn status_label(s: Status) -> &'static str {
    match s {
        Status::True => "connected",
        Status::False => "error",
        Status::Unknown => "connecting",
    }
}

impl Series {
    /// The series of tunnel `item` from what its probes show now (`current`) and this
    /// probe's round trip.
    fn set(
        &mut self,
        m: &HealthMetrics,
        item: &Item,
        current: &health::Observed,
        rtt_ms: Option<f64>,
    ) {
        let (key, labels) = (item.key.as_str(), item.labels.as_slice());
        let status = status_label(current.status);
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        if let Some((old, old_status)) = self.by_key.get(key)
            && (old != labels || *old_status != status)
        {
            let o: Vec<&str> = old.iter().map(String::as_str).collect();
            let _ = m
                .connections
                .remove_label_values(&[o.as_slice(), &[old_status]].concat());
            if old != labels {
                let _ = m.latency.remove_label_values(&o);
                let _ = m.loss.remove_label_values(&o);
                let _ = m.esp_rejected.remove_label_values(&o);
            }
        }
        m.connections
            .with_label_values(&[l.as_slice(), &[status]].concat())
            .set(1.0);
        if let Some(rtt) = rtt_ms {
            m.latency.with_label_values(&l).set(rtt / 1000.0);
        }
        m.loss
            .with_label_values(&l)
            .set(f64::from(current.health.loss_percent) / 100.0);
        if item.probe.esp.is_some() {
            m.esp_rejected
                .with_label_values(&l)
                .set(current.esp_rejected as f64);
        }
        self.by_key
            .insert(key.to_owned(), (labels.to_vec(), status));
    }

    /// Removes the series of tunnels not probed any more.
    fn retain(&mut self, m: &HealthMetrics, probed: &std::collections::HashSet<String>) {
        self.by_key.retain(|k, (labels, status)| {
            if probed.contains(k) {
                return true;
            }
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            let _ = m
                .connections
                .remove_label_values(&[l.as_slice(), &[*status]].concat());
            let _ = m.latency.remove_label_values(&l);
            let _ = m.loss.remove_label_values(&l);
            let _ = m.esp_rejected.remove_label_values(&l);
            false
        });
    }
}

/// Probes every `settings.interval` until `shutdown` (nothing when probes are disabled).
pub async fn run(
    ctx: Arc<Context>,
    metrics: HealthMetrics,
    report: UnboundedSender<ObjectRef<VpcNatTunnel>>,
    shutdown: CancellationToken,
) {
    let Some(settings) = ctx.settings.probes else {
        return;
    };
    ctx.caches.synced().await;
    let mut series = Series::default();
    // Pods already said to have no ping (said once per pod).
    let mut no_ping: std::collections::HashSet<String> = Default::default();
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let rounds = round(&ctx);
        let results = future::join_all(rounds.iter().map(|(pod, items)| {
            let probes: Vec<Probe> = items.iter().map(|i| i.probe.clone()).collect();
            ctx.executor
                .run_alone(pod, "probe", script::probes(&probes, settings.timeout_secs))
        }))
        .await;
        let wall = jiff::Timestamp::now();
        let now = Instant::now();
        let mut probed = std::collections::HashSet::new();
        for ((pod, items), result) in rounds.iter().zip(results) {
            let (answers, esp_failures) = match result {
                Ok(out) => (
                    script::probe_results(&out.stdout),
                    script::esp_failures(&out.stdout),
                ),
                Err(err) => {
                    tracing::debug!(pod = pod.name, %err, "probe exec failed");
                    metrics
                        .probes
                        .with_label_values(&["failed"])
                        .inc_by(items.len() as u64);
                    probed.extend(items.iter().map(|i| i.key.clone()));
                    continue;
                }
            };
            let Some(answers) = answers else {
                if no_ping.insert(pod.uid.clone()) {
                    tracing::warn!(
                        pod = pod.name,
                        "the gateway has no ping: its tunnels are not probed"
                    );
                }
                metrics
                    .probes
                    .with_label_values(&["unavailable"])
                    .inc_by(items.len() as u64);
                for item in items {
                    probed.insert(item.key.clone());
                    let news = ctx
                        .health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .unavailable(&item.key, item.probe.target, now);
                    if news {
                        let _ = report.unbounded_send(ObjectRef::from_obj(item.tunnel.as_ref()));
                    }
                }
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                probed.insert(item.key.clone());
                let Some(answer) = answers.get(&i).copied() else {
                    continue;
                };
                metrics
                    .probes
                    .with_label_values(&[match answer {
                        ProbeResult::Answered { .. } => "answered",
                        ProbeResult::Lost => "lost",
                    }])
                    .inc();
                let (update, current) = {
                    let mut tracker = ctx.health.lock().unwrap_or_else(|p| p.into_inner());
                    let update = tracker.record(
                        &item.key,
                        item.probe.target,
                        answer,
                        esp_failures.get(&i).copied(),
                        wall,
                        now,
                    );
                    (update, tracker.current(&item.key))
                };
                if let Some(current) = &current {
                    let rtt = match answer {
                        ProbeResult::Answered { rtt_ms } => Some(rtt_ms),
                        ProbeResult::Lost => None,
                    };
                    series.set(&metrics, item, current, rtt);
                }
                if let Some((from, to)) = update.transition {
                    let rejecting = current.as_ref().is_some_and(|c| c.esp_rejected > 0);
                    transition(&ctx, item, pod, (from, to), rejecting).await;
                } else if update.rejection_began {
                    rejection(&ctx, item, pod).await;
                }
                if update.report {
                    // The controller is gone only at shutdown.
                    let _ = report.unbounded_send(ObjectRef::from_obj(item.tunnel.as_ref()));
                }
            }
        }
        series.retain(&metrics, &probed);
        no_ping.retain(|uid| rounds.iter().any(|(p, _)| &p.uid == uid));
    }
}

/// Logs a health transition and, unless it is a new tunnel's first answer, makes it an event.
/// `rejecting`: the tunnel's inbound SAs refuse the far end's ESP (mismatched keys).
async fn transition(
    ctx: &Context,
    item: &Item,
    pod: &PodTarget,
    (from, to): (Status, Status),
    rejecting: bool,
) {
    let target: Ipv4Addr = item.probe.target;
    let device = &item.probe.device;
    let (type_, reason, note) = match to {
        Status::False => (
            EventType::Warning,
            "TunnelUnhealthy",
            format!(
                "{target} stopped answering through {device} in pod {} ({} probes in a row lost){}",
                pod.name,
                ctx.settings
                    .probes
                    .map(|p| p.policy.failure_threshold)
                    .unwrap_or_default(),
                if rejecting {
                    "; ESP from the far gateway fails authentication here: the pre-shared keys differ"
                } else {
                    ""
                }
            ),
        ),
        Status::True if from == Status::False => (
            EventType::Normal,
            "TunnelHealthy",
            format!(
                "{target} answers through {device} again in pod {}",
                pod.name
            ),
        ),
        _ => {
            tracing::info!(tunnel = item.key, %target, "tunnel healthy");
            return;
        }
    };
    tracing::info!(tunnel = item.key, %target, from = from.as_str(), to = to.as_str(), "{note}");
    ctx.events
        .publish(&item.tunnel.object_ref(&()), type_, reason, "Probe", note)
        .await;
}

/// An unhealthy encrypted tunnel's far end sends ESP this side cannot authenticate: a warning
/// that names the cause (the transition's event did not).
async fn rejection(ctx: &Context, item: &Item, pod: &PodTarget) {
    let note = format!(
        "ESP packets from the far gateway fail authentication in pod {} while {} does not answer through {}: the two clusters' IPsec pre-shared keys differ",
        pod.name, item.probe.target, item.probe.device
    );
    tracing::warn!(tunnel = item.key, "{note}");
    ctx.events
        .publish(
            &item.tunnel.object_ref(&()),
            EventType::Warning,
            crate::health::reason::IPSEC_AUTHENTICATION_FAILED,
            "Probe",
            note,
        )
        .await;
}
