//! Tunnel health, pure: which address answers at a tunnel's far end, what the probes through
//! the tunnel saw, and the `Healthy` condition and `status.health` that makes. The prober
//! ([`crate::prober`]) runs the probes and feeds [`Tracker`]; the reconcile writes what
//! [`condition`] decides, so the status keeps one writer.
//!
//! A probe is one ping from inside the gateway pod, out of the tunnel's device, to the far
//! end's own tunnel address, which the far end's exip-syncer publishes in its GatewayExIp
//! (`spec.tunnels`). So it crosses the whole path a VPC packet takes: both gateways' devices,
//! the encapsulation and the underlay between them.

use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use multivpc_api::{
    TunnelHealth, VpcNatTunnel,
    conditions::{DesiredCondition, HEALTHY, Status},
    keys::gateway_exip_name,
    tunnel::RoundTrip,
};

use crate::{resolve::Snapshot, script::ProbeResult, script::TunnelConfig};

/// Reasons of the `Healthy` condition.
pub mod reason {
    /// True: the far end answers.
    pub const ANSWERING: &str = "Answering";
    /// False: the last [`super::Policy::failure_threshold`] probes went unanswered.
    pub const NOT_ANSWERING: &str = "NotAnswering";
    /// False: unanswered, and ESP packets from the far end fail authentication here since its
    /// last answer: the two ends hold different pre-shared keys.
    pub const IPSEC_AUTHENTICATION_FAILED: &str =
        multivpc_api::conditions::IPSEC_AUTHENTICATION_FAILED;
    /// Unknown: probes sent, too few results to tell yet.
    pub const PROBING: &str = "Probing";
    /// Unknown: the far end publishes no usable address for its side of this tunnel.
    pub const PEER_ADDRESS_UNKNOWN: &str = "PeerAddressUnknown";
    /// Unknown: the tunnel is not programmed (see Ready).
    pub const NOT_PROGRAMMED: &str = "NotProgrammed";
    /// Unknown: `--probe-interval 0`.
    pub const PROBES_DISABLED: &str = "ProbesDisabled";
    /// Unknown: the gateway has no `ping`.
    pub const PROBE_UNAVAILABLE: &str = "ProbeUnavailable";
}

/// Probes in the window `status.health` summarises.
pub const WINDOW: usize = 10;
/// After a report, figures that moved notably are reported again after this long at the
/// earliest ...
pub const REPORT_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// ... and unchanged ones after this long at the latest (so `lastProbeTime` stays recent).
pub const REPORT_AT_LEAST_EVERY: Duration = Duration::from_secs(600);

/// When a tunnel turns unhealthy and healthy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Unanswered probes in a row that make a tunnel unhealthy.
    pub failure_threshold: u32,
    /// Answered probes in a row that make an unhealthy tunnel healthy again (hysteresis: one
    /// lucky answer does not end an outage).
    pub recovery_threshold: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            recovery_threshold: 2,
        }
    }
}

/// The far end's tunnel address: what its cluster's GatewayExIp (`<gatewayName>-<clusterId>`,
/// exip-syncer's copy, already checked by [`crate::resolve`]) publishes for its tunnel toward
/// this cluster's gateway `natGwDp`. It must be a host of this tunnel's own network (so the
/// probe leaves through the device and the answer comes back through it) and not this side's
/// address.
pub fn target(
    tunnel: &VpcNatTunnel,
    cfg: &TunnelConfig,
    snapshot: &Snapshot,
) -> Result<Ipv4Addr, String> {
    let spec = &tunnel.spec;
    let name = gateway_exip_name(&spec.gateway_name, &spec.cluster_id);
    let local_cluster = snapshot.cluster_id.as_deref().unwrap_or_default();
    let published = snapshot
        .exips
        .get(&name)
        .and_then(|e| e.tunnel_address_toward(local_cluster, &spec.nat_gw_dp))
        .ok_or_else(|| {
            format!(
                "GatewayExIp {name} publishes no address for the tunnel of gateway {} (cluster {}) toward gateway {} of cluster {local_cluster}: the far end has no Ready tunnel back, or its exip-syncer or GatewayExIp CRD predates tunnel addresses",
                spec.gateway_name, spec.cluster_id, spec.nat_gw_dp
            )
        })?;
    let entry = multivpc_api::TunnelAddress {
        cluster_id: local_cluster.to_owned(),
        gateway_name: spec.nat_gw_dp.clone(),
        interface_addr: published.to_owned(),
    };
    let far = entry
        .checked()
        .map_err(|e| format!("GatewayExIp {name}: {e}"))?;
    let ours = cfg.interface_addr;
    if far.addr() == ours.addr() || !ours.contains(far.addr()) {
        return Err(format!(
            "GatewayExIp {name} publishes {far} for the far end, which is not another host of this tunnel's network {}",
            ours.network()
        ));
    }
    Ok(far.addr())
}

/// What the reconcile writes for a tunnel's health, as last reported by the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub target: Ipv4Addr,
    pub status: Status,
    pub health: TunnelHealth,
    /// The gateway has no `ping`: nothing can be probed there.
    pub unavailable: bool,
    /// ESP packets from the far end this side failed to authenticate since its last answer.
    pub esp_rejected: u64,
}

/// The `Healthy` condition and `status.health` of a programmed tunnel whose far end is
/// `target`, from what the tracker `observed` (when it was for that target).
pub fn condition(
    device: &str,
    target: Result<Ipv4Addr, String>,
    observed: Option<&Observed>,
    probing: bool,
) -> (DesiredCondition, Option<TunnelHealth>) {
    let unknown = |reason, message: String| {
        (
            DesiredCondition {
                type_: HEALTHY,
                status: Status::Unknown,
                reason,
                message,
            },
            None,
        )
    };
    if !probing {
        return unknown(
            reason::PROBES_DISABLED,
            "probes are disabled (--probe-interval 0)".into(),
        );
    }
    let target = match target {
        Ok(t) => t,
        Err(why) => return unknown(reason::PEER_ADDRESS_UNKNOWN, why),
    };
    let Some(seen) = observed.filter(|o| o.target == target) else {
        return unknown(
            reason::PROBING,
            format!("probing {target} through {device}"),
        );
    };
    if seen.unavailable {
        return unknown(
            reason::PROBE_UNAVAILABLE,
            "the gateway pod has no ping: the tunnel cannot be probed".into(),
        );
    }
    let h = &seen.health;
    let figures = match &h.rtt {
        Some(rtt) => format!(
            "{} average round trip, {}% loss over the last {} probes",
            rtt.average, h.loss_percent, h.window
        ),
        None => format!("{}% loss over the last {} probes", h.loss_percent, h.window),
    };
    let (reason, message) = match seen.status {
        Status::True => (
            reason::ANSWERING,
            format!("{target} answers through {device}: {figures}"),
        ),
        Status::False if seen.esp_rejected > 0 => (
            reason::IPSEC_AUTHENTICATION_FAILED,
            format!(
                "{target} does not answer through {device}, and {} ESP packets from the far gateway failed authentication here since its last answer: the two clusters' IPsec pre-shared keys differ ({figures})",
                seen.esp_rejected
            ),
        ),
        Status::False => (
            reason::NOT_ANSWERING,
            format!("{target} does not answer through {device}: {figures}"),
        ),
        Status::Unknown => (
            reason::PROBING,
            format!("probing {target} through {device}: {figures}"),
        ),
    };
    (
        DesiredCondition {
            type_: HEALTHY,
            status: seen.status,
            reason,
            message,
        },
        Some(h.clone()),
    )
}

/// The `Healthy` condition and health a tunnel's status already shows, when it is a verdict
/// of probes (Answering, NotAnswering): kept while this process has not probed the tunnel yet
/// (after a restart or a change of leader), so that the condition does not pass through
/// Unknown every time.
pub fn carried_over(
    old: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    old_health: Option<&TunnelHealth>,
) -> Option<(DesiredCondition, Option<TunnelHealth>)> {
    let c = multivpc_api::conditions::find(old, HEALTHY)?;
    let (status, reason) = match (c.status.as_str(), c.reason.as_str()) {
        ("True", reason::ANSWERING) => (Status::True, reason::ANSWERING),
        ("False", reason::NOT_ANSWERING) => (Status::False, reason::NOT_ANSWERING),
        ("False", reason::IPSEC_AUTHENTICATION_FAILED) => {
            (Status::False, reason::IPSEC_AUTHENTICATION_FAILED)
        }
        _ => return None,
    };
    Some((
        DesiredCondition {
            type_: HEALTHY,
            status,
            reason,
            message: c.message.clone(),
        },
        old_health.cloned(),
    ))
}

/// The `Healthy` condition of a tunnel that is not programmed.
pub fn not_programmed(ready_reason: &str) -> DesiredCondition {
    DesiredCondition {
        type_: HEALTHY,
        status: Status::Unknown,
        reason: reason::NOT_PROGRAMMED,
        message: format!("not probed: the tunnel is not programmed ({ready_reason})"),
    }
}

/// The `Healthy` condition and health of a refused tunnel whose programmed state stays in its
/// pod (a missing key): the probes' verdict, or the one its status shows until they have one.
pub fn kept_in_pod(
    device: &str,
    ready_reason: &str,
    observed: Option<&Observed>,
    old: &multivpc_api::VpcNatTunnelStatus,
    probing: bool,
) -> (DesiredCondition, Option<TunnelHealth>) {
    match observed {
        Some(seen) => condition(device, Ok(seen.target), Some(seen), probing),
        None => carried_over(&old.conditions, old.health.as_ref())
            .unwrap_or_else(|| (not_programmed(ready_reason), None)),
    }
}

/// A change of a tunnel's health the prober acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    /// The status before and after, when it changed.
    pub transition: Option<(Status, Status)>,
    /// What the reconcile writes changed: the tunnel's status is due a write.
    pub report: bool,
    /// An unhealthy tunnel's far end began to send ESP this side cannot authenticate.
    pub rejection_began: bool,
}

/// One tunnel's probes.
#[derive(Debug, Clone)]
struct Entry {
    target: Ipv4Addr,
    /// Round trips in ms of the window's probes, oldest first; `None`: unanswered.
    window: VecDeque<Option<f64>>,
    lost_in_row: u32,
    answered_in_row: u32,
    status: Status,
    last_probe: jiff::Timestamp,
    unavailable: bool,
    /// What its inbound SAs failed to authenticate at the last probe (encrypted tunnels).
    esp_failed: Option<u64>,
    /// Of that, what was added since the far end last answered.
    esp_rejected: u64,
    reported: Option<(Observed, Instant)>,
}

impl Entry {
    fn new(target: Ipv4Addr, now: jiff::Timestamp) -> Self {
        Self {
            target,
            window: VecDeque::with_capacity(WINDOW),
            lost_in_row: 0,
            answered_in_row: 0,
            status: Status::Unknown,
            last_probe: now,
            unavailable: false,
            esp_failed: None,
            esp_rejected: 0,
            reported: None,
        }
    }

    fn observed(&self) -> Observed {
        let answered: Vec<f64> = self.window.iter().flatten().copied().collect();
        let lost = self.window.len() - answered.len();
        let loss_percent = (lost * 100)
            .checked_div(self.window.len())
            .unwrap_or_default() as u32;
        let rtt = self.window.back().copied().flatten().map(|last| {
            let min = answered.iter().copied().fold(f64::INFINITY, f64::min);
            let max = answered.iter().copied().fold(0.0, f64::max);
            let average = answered.iter().sum::<f64>() / answered.len() as f64;
            RoundTrip {
                last: ms(last),
                min: ms(min),
                average: ms(average),
                max: ms(max),
            }
        });
        Observed {
            target: self.target,
            status: self.status,
            unavailable: self.unavailable,
            esp_rejected: self.esp_rejected,
            health: TunnelHealth {
                target: self.target.to_string(),
                window: self.window.len() as u32,
                loss_percent,
                rtt,
                last_probe_time: self.last_probe.to_string(),
            },
        }
    }
}

/// A duration in milliseconds as `status.health` shows it.
fn ms(v: f64) -> String {
    format!("{v:.3}ms")
}

fn average_ms(h: &TunnelHealth) -> Option<f64> {
    h.rtt
        .as_ref()
        .and_then(|r| r.average.trim_end_matches("ms").parse().ok())
}

/// Whether `now` differs from `before` enough to be worth a status write.
fn moved_notably(before: &TunnelHealth, now: &TunnelHealth) -> bool {
    if before.loss_percent != now.loss_percent {
        return true;
    }
    match (average_ms(before), average_ms(now)) {
        (Some(a), Some(b)) => (a - b).abs() > (a / 2.0).max(1.0),
        (a, b) => a.is_some() != b.is_some(),
    }
}

/// Every probed tunnel's recent results, by tunnel key.
#[derive(Debug, Default)]
pub struct Tracker {
    policy: Policy,
    entries: HashMap<String, Entry>,
}

impl Tracker {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
        }
    }

    /// `key`'s entry toward `target`: a new one when there is none or it was for another
    /// target (a new target starts over).
    fn entry(&mut self, key: &str, target: Ipv4Addr, wall: jiff::Timestamp) -> &mut Entry {
        let entry = self
            .entries
            .entry(key.to_owned())
            .or_insert_with(|| Entry::new(target, wall));
        if entry.target != target {
            *entry = Entry::new(target, wall);
        }
        entry
    }

    /// Adds a probe result of tunnel `key` toward `target`, with what its inbound SAs failed to
    /// authenticate so far when it is encrypted. A new target starts over.
    pub fn record(
        &mut self,
        key: &str,
        target: Ipv4Addr,
        result: ProbeResult,
        esp_failed: Option<u64>,
        wall: jiff::Timestamp,
        now: Instant,
    ) -> Update {
        let policy = self.policy;
        let entry = self.entry(key, target, wall);
        let before = entry.status;
        let rejected_before = entry.esp_rejected;
        // Only a rise counts: the sum falls when old SAs go at a rekey.
        if let (Some(prev), Some(n)) = (entry.esp_failed, esp_failed) {
            entry.esp_rejected += n.saturating_sub(prev);
        }
        entry.esp_failed = esp_failed;
        entry.last_probe = wall;
        entry.unavailable = false;
        if entry.window.len() == WINDOW {
            entry.window.pop_front();
        }
        match result {
            ProbeResult::Answered { rtt_ms } => {
                entry.window.push_back(Some(rtt_ms));
                entry.answered_in_row += 1;
                entry.lost_in_row = 0;
                entry.esp_rejected = 0;
                // A new tunnel is healthy at its first answer; an unhealthy one only after
                // `recovery_threshold` in a row.
                if before == Status::Unknown
                    || (before == Status::False
                        && entry.answered_in_row >= policy.recovery_threshold)
                {
                    entry.status = Status::True;
                }
            }
            ProbeResult::Lost => {
                entry.window.push_back(None);
                entry.lost_in_row += 1;
                entry.answered_in_row = 0;
                if entry.lost_in_row >= policy.failure_threshold {
                    entry.status = Status::False;
                }
            }
        }
        let transition = (entry.status != before).then_some((before, entry.status));
        let rejection_began =
            entry.status == Status::False && rejected_before == 0 && entry.esp_rejected > 0;
        let current = entry.observed();
        let report = match &entry.reported {
            None => true,
            Some((seen, at)) => {
                let age = now.saturating_duration_since(*at);
                seen.status != current.status
                    || (seen.esp_rejected > 0) != (current.esp_rejected > 0)
                    || (age >= REPORT_AT_MOST_EVERY && moved_notably(&seen.health, &current.health))
                    || age >= REPORT_AT_LEAST_EVERY
            }
        };
        if report {
            entry.reported = Some((current, now));
        }
        Update {
            transition,
            report,
            rejection_began,
        }
    }

    /// Notes that `key`'s gateway has no `ping`. True when that is news to report.
    pub fn unavailable(&mut self, key: &str, target: Ipv4Addr, now: Instant) -> bool {
        let entry = self.entry(key, target, jiff::Timestamp::now());
        entry.unavailable = true;
        entry.status = Status::Unknown;
        let current = entry.observed();
        let news = entry
            .reported
            .as_ref()
            .is_none_or(|(seen, _)| !seen.unavailable);
        if news {
            entry.reported = Some((current, now));
        }
        news
    }

    /// What was last reported for `key`: what its status should show.
    pub fn observed(&self, key: &str) -> Option<Observed> {
        self.entries
            .get(key)
            .and_then(|e| e.reported.as_ref())
            .map(|(o, _)| o.clone())
    }

    /// What the probes of `key` show now (the live figures).
    pub fn current(&self, key: &str) -> Option<Observed> {
        self.entries.get(key).map(Entry::observed)
    }

    /// The current status of `key`, with its target.
    #[cfg(test)]
    pub fn status(&self, key: &str) -> Option<(Ipv4Addr, Status)> {
        self.entries.get(key).map(|e| (e.target, e.status))
    }

    /// Forgets the tunnels `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);

    fn wall(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    struct Run {
        tracker: Tracker,
        start: Instant,
        step: u64,
    }

    impl Run {
        fn new() -> Self {
            Self {
                tracker: Tracker::new(Policy::default()),
                start: Instant::now(),
                step: 0,
            }
        }

        /// One probe, 2 s after the previous one.
        fn probe(&mut self, result: ProbeResult) -> Update {
            self.encrypted_probe(result, None)
        }

        /// One probe of an encrypted tunnel whose inbound SAs failed `esp_failed` packets.
        fn encrypted_probe(&mut self, result: ProbeResult, esp_failed: Option<u64>) -> Update {
            self.step += 2;
            self.tracker.record(
                "ns/gre1",
                T,
                result,
                esp_failed,
                wall(self.step as i64),
                self.start + Duration::from_secs(self.step),
            )
        }
    }

    const OK: ProbeResult = ProbeResult::Answered { rtt_ms: 0.5 };
    const LOST: ProbeResult = ProbeResult::Lost;

    #[test]
    fn healthy_at_the_first_answer_unhealthy_after_three_lost_back_after_two_answers() {
        let mut run = Run::new();
        let u = run.probe(OK);
        assert_eq!(u.transition, Some((Status::Unknown, Status::True)));
        assert!(u.report);
        // Two lost: still healthy, and nothing to report yet (within a minute).
        for _ in 0..2 {
            let u = run.probe(LOST);
            assert_eq!(u.transition, None);
        }
        let u = run.probe(LOST);
        assert_eq!(u.transition, Some((Status::True, Status::False)));
        assert!(u.report);
        let seen = run.tracker.observed("ns/gre1").unwrap();
        assert_eq!(seen.status, Status::False);
        assert_eq!(seen.health.loss_percent, 75);
        assert_eq!(seen.health.rtt, None, "the last probe was lost");
        // One answer is not enough (hysteresis) ...
        let u = run.probe(OK);
        assert_eq!(u.transition, None);
        assert_eq!(run.tracker.status("ns/gre1"), Some((T, Status::False)));
        // ... two in a row are.
        let u = run.probe(OK);
        assert_eq!(u.transition, Some((Status::False, Status::True)));
        assert!(u.report);
    }

    #[test]
    fn esp_the_far_end_cannot_authenticate_names_a_key_mismatch() {
        let mut run = Run::new();
        run.encrypted_probe(OK, Some(5));
        // Failures while the far end answers (a stray packet) change nothing reported.
        let u = run.encrypted_probe(OK, Some(6));
        assert!(!u.report && !u.rejection_began);
        for _ in 0..2 {
            run.encrypted_probe(LOST, Some(6));
        }
        // Unhealthy with nothing rejected: the far end is simply silent.
        let u = run.encrypted_probe(LOST, Some(6));
        assert_eq!(u.transition, Some((Status::True, Status::False)));
        assert!(!u.rejection_began);
        let seen = run.tracker.observed("ns/gre1").unwrap();
        let (c, _) = condition("gre1", Ok(T), Some(&seen), true);
        assert_eq!(c.reason, reason::NOT_ANSWERING);
        // Then its ESP fails authentication: reported once, with the reason that says why.
        let u = run.encrypted_probe(LOST, Some(9));
        assert!(u.report && u.rejection_began);
        let u = run.encrypted_probe(LOST, Some(12));
        assert!(!u.report && !u.rejection_began);
        let seen = run.tracker.observed("ns/gre1").unwrap();
        let (c, _) = condition("gre1", Ok(T), Some(&seen), true);
        assert_eq!(
            (c.status, c.reason),
            (Status::False, reason::IPSEC_AUTHENTICATION_FAILED)
        );
        assert!(c.message.contains("3 ESP packets"), "{}", c.message);
        assert!(
            c.message.contains("pre-shared keys differ"),
            "{}",
            c.message
        );
        // A rekey drops the old SAs' counts: no rise, nothing new.
        run.encrypted_probe(LOST, Some(1));
        assert_eq!(run.tracker.current("ns/gre1").unwrap().esp_rejected, 6);
        // Answers again: the count starts over.
        run.encrypted_probe(OK, Some(1));
        let u = run.encrypted_probe(OK, Some(1));
        assert_eq!(u.transition, Some((Status::False, Status::True)));
        assert_eq!(run.tracker.current("ns/gre1").unwrap().esp_rejected, 0);
        // The verdict is carried over a restart.
        let old = [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: HEALTHY.into(),
            status: "False".into(),
            reason: reason::IPSEC_AUTHENTICATION_FAILED.into(),
            message: "m".into(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
        }];
        assert_eq!(
            carried_over(&old, None).map(|(c, _)| c.reason),
            Some(reason::IPSEC_AUTHENTICATION_FAILED)
        );
    }

    #[test]
    fn a_tunnel_never_answered_is_unhealthy_only_after_the_threshold() {
        let mut run = Run::new();
        assert_eq!(run.probe(LOST).transition, None);
        assert_eq!(run.tracker.status("ns/gre1"), Some((T, Status::Unknown)));
        assert_eq!(run.probe(LOST).transition, None);
        assert_eq!(
            run.probe(LOST).transition,
            Some((Status::Unknown, Status::False))
        );
    }

    #[test]
    fn reports_are_rare_in_steady_state() {
        let mut run = Run::new();
        let mut reports = 0;
        // 30 minutes of answers at 2 s: one report at the start, then one per 10 minutes.
        for _ in 0..900 {
            reports += u32::from(run.probe(OK).report);
        }
        assert_eq!(reports, 1 + 2, "{reports}");
        // Every other probe lost (never three in a row: still healthy): the loss figure moved,
        // and is reported once a minute has passed since the last report.
        let mut run = Run::new();
        assert!(run.probe(OK).report);
        let first = (0..40)
            .find(|i| run.probe(if i % 2 == 0 { LOST } else { OK }).report)
            .expect("reported");
        assert_eq!(first, 29, "60 s after the first report, at 2 s per probe");
        let seen = run.tracker.observed("ns/gre1").unwrap();
        assert_eq!((seen.status, seen.health.loss_percent), (Status::True, 50));
    }

    #[test]
    fn the_window_holds_the_last_ten_and_summarises_them() {
        let mut run = Run::new();
        for i in 0..12 {
            run.probe(ProbeResult::Answered {
                rtt_ms: f64::from(i),
            });
        }
        let seen = run.tracker.entries["ns/gre1"].observed();
        assert_eq!(seen.health.window, 10);
        assert_eq!(seen.health.loss_percent, 0);
        let rtt = seen.health.rtt.unwrap();
        assert_eq!(
            (
                rtt.last.as_str(),
                rtt.min.as_str(),
                rtt.average.as_str(),
                rtt.max.as_str()
            ),
            ("11.000ms", "2.000ms", "6.500ms", "11.000ms")
        );
    }

    #[test]
    fn a_new_target_starts_over() {
        let mut run = Run::new();
        run.probe(OK);
        let u = run.tracker.record(
            "ns/gre1",
            Ipv4Addr::new(10, 100, 0, 3),
            LOST,
            None,
            wall(100),
            run.start + Duration::from_secs(100),
        );
        assert_eq!(u.transition, None, "a new entry starts Unknown");
        assert_eq!(
            run.tracker.status("ns/gre1"),
            Some((Ipv4Addr::new(10, 100, 0, 3), Status::Unknown))
        );
    }

    #[test]
    fn conditions_say_why() {
        let (c, h) = condition("gre1", Ok(T), None, false);
        assert_eq!(
            (c.status, c.reason),
            (Status::Unknown, reason::PROBES_DISABLED)
        );
        assert!(h.is_none());
        let (c, _) = condition("gre1", Err("no address".into()), None, true);
        assert_eq!(
            (c.status, c.reason, c.message.as_str()),
            (Status::Unknown, reason::PEER_ADDRESS_UNKNOWN, "no address")
        );
        let (c, _) = condition("gre1", Ok(T), None, true);
        assert_eq!(c.reason, reason::PROBING);
        let mut run = Run::new();
        run.probe(OK);
        let seen = run.tracker.observed("ns/gre1");
        let (c, h) = condition("gre1", Ok(T), seen.as_ref(), true);
        assert_eq!((c.status, c.reason), (Status::True, reason::ANSWERING));
        assert_eq!(
            c.message,
            "10.100.0.2 answers through gre1: 0.500ms average round trip, 0% loss over the last 1 probes"
        );
        assert_eq!(h.unwrap().target, "10.100.0.2");
        // No ping in the gateway.
        run.tracker.unavailable("ns/gre1", T, run.start);
        let seen = run.tracker.observed("ns/gre1");
        let (c, h) = condition("gre1", Ok(T), seen.as_ref(), true);
        assert_eq!(
            (c.status, c.reason),
            (Status::Unknown, reason::PROBE_UNAVAILABLE)
        );
        assert!(h.is_none());
        // What was seen for another target does not count.
        let (c, _) = condition(
            "gre1",
            Ok(Ipv4Addr::new(10, 100, 0, 9)),
            seen.as_ref(),
            true,
        );
        assert_eq!(c.reason, reason::PROBING);
    }
}
