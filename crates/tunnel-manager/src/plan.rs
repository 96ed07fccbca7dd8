//! What one reconcile of a tunnel does, decided before any I/O: the pure middle of
//! tunnel-manager's pipeline (resolve → **plan** → execute → status). From the tunnel, what
//! [`resolve`](crate::resolve) made of it, the caches and when this process last programmed or
//! verified it, [`plan`] decides which pod to leave, which script to run, and the status to
//! report. `controller::apply` executes the plan; nothing here talks to the API server or a pod.

use std::time::Duration;

use kube::ResourceExt;
use multivpc_api::{
    VpcNatTunnel, VpcNatTunnelStatus,
    conditions::DesiredCondition,
    net::Ipv4Cidr,
    tunnel::{AppliedTunnel, PodRef},
};

use crate::{
    health,
    resolve::{self, NotReady, PodTarget, Resolved, Snapshot, reason},
    script::{CleanupConfig, Stale},
};

/// What the prober knows of a tunnel's health, as the plan needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthInput<'a> {
    /// Whether probes run at all (`--probe-interval` is not 0).
    pub probing: bool,
    /// What the tracker last reported for the tunnel.
    pub observed: Option<&'a health::Observed>,
}

/// Taking a tunnel's state out of a pod that still holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Removal {
    pub pod: PodTarget,
    pub cleanup: CleanupConfig,
}

/// What to do for one tunnel.
#[derive(Debug)]
pub enum Plan {
    /// Not programmable now (a missing input, a conflict, a refusal): report why, after taking
    /// it out of the pod it was programmed in when the refusal means it must not stay there.
    Refuse(Box<Refusal>),
    /// Admitted and resolved: leave a previous pod, run the step, report it programmed.
    Program(Box<Programming>),
}

#[derive(Debug)]
pub struct Refusal {
    /// The tunnel leaves the pod it was programmed in (its status then names no pod).
    pub leaves_pod: bool,
    /// What to remove from that pod, when it still holds the tunnel's state.
    pub removal: Option<Removal>,
    pub status: VpcNatTunnelStatus,
    pub condition: DesiredCondition,
    /// `Healthy`: Unknown, as nothing is probed, unless what was programmed stays in the pod.
    pub healthy: DesiredCondition,
}

#[derive(Debug)]
pub struct Programming {
    pub resolved: Resolved,
    /// The pod it was programmed in before (a failover moved it): emptied first.
    pub move_out: Option<Removal>,
    /// What the last programming routed that the config no longer does.
    pub stale: Stale,
    pub step: Step,
    pub status: VpcNatTunnelStatus,
    pub condition: DesiredCondition,
    pub healthy: DesiredCondition,
}

/// The script a programmed tunnel's pod gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Bring the pod to the config. `repair` names why changes would be a repair (the tunnel
    /// was programmed with this very config before): `pod_replaced` or `drift`.
    Converge { repair: Option<&'static str> },
    /// Programmed by this process and due for its read-only verification (converge on drift).
    Verify,
    /// Programmed by this process and verified recently: nothing to run.
    Nothing,
}

/// Refusals that must not leave the tunnel in its pod: another tunnel holds its interface name
/// or remote CIDR there, or its VPC no longer admits its namespace.
const WITHDRAWN_FOR: [&str; 3] = [
    reason::INTERFACE_NAME_CONFLICT,
    reason::REMOTE_CIDR_CONFLICT,
    reason::NAMESPACE_NOT_ADMITTED,
];

/// Decides what a reconcile of `tunnel` does. `resolution` is
/// [`resolve::resolve`]`(tunnel, snapshot)`; `since_checked` is how long ago this process
/// programmed or verified the tunnel with exactly the resolved config in the resolved pod
/// (`None`: never, or something else); `verify_interval` is `--verify-interval`; `health` is
/// what the probes saw.
pub fn plan(
    tunnel: &VpcNatTunnel,
    resolution: Result<Resolved, NotReady>,
    snapshot: &Snapshot,
    since_checked: Option<Duration>,
    verify_interval: Option<Duration>,
    health: HealthInput,
) -> Plan {
    let old = tunnel.status.clone().unwrap_or_default();
    let resolved = match resolution {
        Ok(resolved) => resolved,
        Err(refused) => {
            let mut status = old.clone();
            if refused.local_gateway.is_some() {
                status.local_gateway = refused.local_gateway.clone();
            }
            let leaves = WITHDRAWN_FOR.contains(&refused.reason) && old.gateway_pod.is_some();
            let removal = old
                .gateway_pod
                .as_ref()
                .filter(|_| leaves)
                .and_then(|prev| removal(tunnel, &old, prev, snapshot));
            if leaves {
                status.gateway_pod = None;
                status.applied = None;
            }
            // What stays programmed is still probed: its health is what the probes see.
            let (healthy, probed) = match resolve::device_of(tunnel) {
                Ok(device) if refused.kept_in_pod && !leaves => health::kept_in_pod(
                    device.as_str(),
                    refused.reason,
                    health.observed,
                    &old,
                    health.probing,
                ),
                _ => (health::not_programmed(refused.reason), None),
            };
            status.health = probed;
            return Plan::Refuse(Box::new(Refusal {
                leaves_pod: leaves,
                removal,
                status,
                healthy,
                condition: DesiredCondition::not_ready(refused.reason, refused.message),
            }));
        }
    };
    let move_out = old
        .gateway_pod
        .as_ref()
        .filter(|prev| prev.name != resolved.pod.name)
        .and_then(|prev| removal(tunnel, &old, prev, snapshot));
    let stale = stale_of(tunnel, &old, &resolved, snapshot);
    let cfg = &resolved.config;
    let applied = resolve::applied_of(cfg);
    let step = match since_checked {
        None => {
            // Programmed before with this very configuration (Ready may have dropped
            // meanwhile, e.g. while the gateway pod was replaced): changes now are repairs.
            let was_programmed =
                old.applied.as_ref() == Some(&applied) && old.gateway_pod.is_some();
            let replaced =
                old.gateway_pod.as_ref().map(|p| p.uid.as_str()) != Some(resolved.pod.uid.as_str());
            Step::Converge {
                repair: was_programmed.then_some(if replaced { "pod_replaced" } else { "drift" }),
            }
        }
        Some(since) if verify_interval.is_some_and(|i| since >= i) => Step::Verify,
        Some(_) => Step::Nothing,
    };
    // What the probes saw through another pod (before a failover or a pod replacement) says
    // nothing about this one: its probes start over.
    let same_pod =
        old.gateway_pod.as_ref().map(|p| p.uid.as_str()) == Some(resolved.pod.uid.as_str());
    let target = health::target(tunnel, cfg, snapshot);
    let observed = health.observed.filter(|_| same_pod);
    let carried = (same_pod && observed.is_none() && health.probing && target.is_ok())
        .then(|| health::carried_over(&old.conditions, old.health.as_ref()))
        .flatten();
    let (healthy, probed) = carried.unwrap_or_else(|| {
        health::condition(cfg.device.as_str(), target, observed, health.probing)
    });
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
        // A derived MTU is known once the pod's script has read net1 (the executor fills it
        // in from the script's report); until then, what was last reported.
        mtu: cfg.mtu.map(|m| m.get()).or(old.mtu),
        applied: Some(applied),
        health: probed,
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
    Plan::Program(Box::new(Programming {
        resolved,
        move_out,
        stale,
        step,
        status,
        condition: DesiredCondition::ready(reason::PROGRAMMED, message),
        healthy,
    }))
}

/// When to reconcile a programmed tunnel next: at its next verification (measured from the
/// last one), spread by a stable per-tunnel jitter of up to a tenth of the interval so that
/// tunnels converged together are not all verified together. `None`: on change only.
pub fn next_verification(
    key: &str,
    verify_interval: Option<Duration>,
    since_checked: Option<Duration>,
) -> Option<Duration> {
    let (interval, since) = (verify_interval?, since_checked?);
    Some(
        (interval + jitter(key, interval / 10))
            .saturating_sub(since)
            .max(Duration::from_secs(1)),
    )
}

/// A stable per-key delay in `[0, max)`.
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

/// What the last programming routed (`applied`) that a converge must remove: the remote route
/// always (it is replaced when it changed), the local one unless another tunnel in the pod
/// shares it.
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
        esp: resolve::esp_pair_of(applied)
            .filter(|p| !resolve::esp_pair_shared(tunnel, &resolved.pod.uid, p, snapshot)),
    }
}

/// What taking `tunnel` out of pod `prev` (where it was programmed) removes, if that pod still
/// holds its state.
fn removal(
    tunnel: &VpcNatTunnel,
    old: &VpcNatTunnelStatus,
    prev: &PodRef,
    snapshot: &Snapshot,
) -> Option<Removal> {
    let holds = snapshot.pods.iter().any(|p| {
        p.name_any() == prev.name
            && p.uid().as_deref() == Some(&prev.uid)
            && resolve::pod_may_hold_state(p)
    });
    let cleanup =
        cleanup_config(tunnel, old.applied.as_ref(), &prev.uid, snapshot).filter(|_| holds)?;
    Some(Removal {
        pod: PodTarget {
            name: prev.name.clone(),
            uid: prev.uid.clone(),
        },
        cleanup,
    })
}

/// What deleting `tunnel` removes, and from which pod: only the pod it was programmed into
/// holds its state, and a pod that is gone (or no longer running) took that state with it.
pub fn deletion(tunnel: &VpcNatTunnel, snapshot: &Snapshot) -> Option<Removal> {
    let old = tunnel.status.as_ref()?;
    let prev = old.gateway_pod.as_ref()?;
    let pod = snapshot
        .pods
        .iter()
        .find(|p| p.name_any() == prev.name && resolve::pod_may_hold_state(p))?;
    let uid = pod.uid().unwrap_or_default();
    let cleanup = cleanup_config(tunnel, old.applied.as_ref(), &uid, snapshot)?;
    Some(Removal {
        pod: PodTarget {
            name: prev.name.clone(),
            uid,
        },
        cleanup,
    })
}

/// What cleanup removes from pod `pod_uid`. When another live tunnel of the same name has taken
/// the interface over (while this one is deleted or refused), only this tunnel's tagged rules go.
pub fn cleanup_config(
    tunnel: &VpcNatTunnel,
    applied: Option<&AppliedTunnel>,
    pod_uid: &str,
    snapshot: &Snapshot,
) -> Option<CleanupConfig> {
    let device = resolve::device_of(tunnel).ok()?;
    let tag = resolve::tag_of(tunnel).ok()?;
    let same_object =
        |o: &VpcNatTunnel| o.namespace() == tunnel.namespace() && o.name_any() == tunnel.name_any();
    let taken = snapshot.tunnels.iter().any(|o| {
        o.metadata.deletion_timestamp.is_none()
            && o.name_any() == tunnel.name_any()
            && !same_object(o)
            && o.status
                .as_ref()
                .and_then(|s| s.gateway_pod.as_ref())
                .is_some_and(|p| p.uid == pod_uid)
    });
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
        esp: applied
            .and_then(resolve::esp_pair_of)
            .filter(|p| !resolve::esp_pair_shared(tunnel, pod_uid, p, snapshot)),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use multivpc_api::{TunnelType, VpcNatTunnelSpec, conditions::Status, tunnel::AppliedTunnel};

    fn tunnel(ns: &str, name: &str, pod_uid: Option<&str>, local_route: &str) -> VpcNatTunnel {
        let mut t = VpcNatTunnel::new(
            name,
            VpcNatTunnelSpec {
                encryption: Default::default(),
                cluster_id: "cluster2".into(),
                gateway_name: "rgw".into(),
                interface_addr: "10.100.0.1/24".into(),
                nat_gw_dp: "gw1".into(),
                tunnel_type: TunnelType::Vxlan,
                vni: None,
                dst_port: None,
                mtu: None,
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
            me.status.as_ref().unwrap().applied.as_ref(),
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
            me.status.as_ref().unwrap().applied.as_ref(),
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
            me.status.as_ref().unwrap().applied.as_ref(),
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
                me.status.as_ref().unwrap().applied.as_ref(),
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

    // ---- plan

    use crate::resolve::{resolve, tests as fixtures};

    const INTERVAL: Option<Duration> = Some(Duration::from_secs(300));

    fn program(p: Plan) -> Programming {
        match p {
            Plan::Program(p) => *p,
            Plan::Refuse(r) => panic!("refused: {:?}", r.condition),
        }
    }

    fn refusal(p: Plan) -> Refusal {
        match p {
            Plan::Refuse(r) => *r,
            Plan::Program(p) => panic!("programs {:?}", p.step),
        }
    }

    /// What the tracker reports for tunnel `key` after one answer from 10.100.0.2.
    fn answered_once(key: &str) -> Option<health::Observed> {
        let mut tracker = health::Tracker::new(health::Policy::default());
        tracker.record(
            key,
            "10.100.0.2".parse().unwrap(),
            crate::script::ProbeResult::Answered { rtt_ms: 1.0 },
            None,
            jiff::Timestamp::UNIX_EPOCH,
            std::time::Instant::now(),
        );
        tracker.observed(key)
    }

    fn plan_of(t: &VpcNatTunnel, s: &Snapshot, since: Option<Duration>) -> Plan {
        plan(t, resolve(t, s), s, since, INTERVAL, HealthInput::default())
    }

    #[test]
    fn a_new_tunnel_converges_and_reports_its_pod() {
        let mut s = fixtures::snapshot();
        let t = fixtures::tunnel("ns1", "vx1", "gw1", "rgw", 1);
        s.tunnels = vec![t.clone()];
        let p = program(plan_of(&t, &s, None));
        assert_eq!(p.step, Step::Converge { repair: None });
        assert_eq!(p.move_out, None);
        assert_eq!(p.status.gateway_pod.as_ref().unwrap().uid, "uid-1");
        assert_eq!(
            p.status.applied,
            Some(resolve::applied_of(&p.resolved.config))
        );
        assert_eq!(p.condition.reason, reason::PROGRAMMED);
    }

    #[test]
    fn a_tunnel_this_process_programmed_is_verified_when_due_and_left_alone_otherwise() {
        let mut s = fixtures::snapshot();
        let t = fixtures::tunnel("ns1", "vx1", "gw1", "rgw", 1);
        s.tunnels = vec![t.clone()];
        let recent = Some(Duration::from_secs(10));
        assert_eq!(program(plan_of(&t, &s, recent)).step, Step::Nothing);
        let due = Some(Duration::from_secs(300));
        assert_eq!(program(plan_of(&t, &s, due)).step, Step::Verify);
        let never = plan(&t, resolve(&t, &s), &s, due, None, HealthInput::default());
        assert_eq!(program(never).step, Step::Nothing, "verification disabled");
        assert!(
            next_verification("ns1/vx1", INTERVAL, recent).unwrap() <= Duration::from_secs(320)
        );
        assert_eq!(next_verification("ns1/vx1", None, recent), None);
        assert_eq!(next_verification("ns1/vx1", INTERVAL, None), None);
    }

    #[test]
    fn reprogramming_the_same_config_is_a_repair_named_by_its_cause() {
        let mut s = fixtures::snapshot();
        let fresh = fixtures::tunnel("ns1", "vx1", "gw1", "rgw", 1);
        s.tunnels = vec![fresh.clone()];
        let applied = resolve::applied_of(&program(plan_of(&fresh, &s, None)).resolved.config);
        let with_status = |uid: &str| {
            let mut t = (*fresh).clone();
            t.status = Some(VpcNatTunnelStatus {
                gateway_pod: Some(PodRef {
                    name: "vpc-nat-gw-gw1-0".into(),
                    uid: uid.into(),
                }),
                applied: Some(applied.clone()),
                ..Default::default()
            });
            t
        };
        // This process has not programmed it (a restart): the same pod means drift...
        let same_pod = with_status("uid-1");
        let p = program(plan_of(&same_pod, &s, None));
        assert_eq!(
            p.step,
            Step::Converge {
                repair: Some("drift")
            }
        );
        // ... a new pod of the same name, a replaced pod; the old one is gone, nothing to empty.
        let replaced = with_status("uid-0");
        let p = program(plan_of(&replaced, &s, None));
        assert_eq!(
            p.step,
            Step::Converge {
                repair: Some("pod_replaced")
            }
        );
        assert_eq!(p.move_out, None);
    }

    #[test]
    fn health_comes_from_probes_through_the_pod_the_status_names() {
        use multivpc_api::conditions::Status;
        let mut s = fixtures::snapshot();
        // The far end publishes its address for this tunnel.
        let mut far = (*s.exips["rgw-cluster2"]).clone();
        far.spec.tunnels = vec![multivpc_api::TunnelAddress {
            cluster_id: "cluster1".into(),
            gateway_name: "gw1".into(),
            interface_addr: "10.100.0.2/24".into(),
        }];
        s.exips.insert("rgw-cluster2".into(), Arc::new(far));
        let fresh = fixtures::tunnel("ns1", "vx1", "gw1", "rgw", 1);
        s.tunnels = vec![fresh.clone()];
        let probing = |t: &VpcNatTunnel, observed: Option<&health::Observed>| {
            program(plan(
                t,
                resolve(t, &s),
                &s,
                Some(Duration::from_secs(1)),
                INTERVAL,
                HealthInput {
                    probing: true,
                    observed,
                },
            ))
        };
        // Not probed yet: Probing, toward the published address.
        let p = probing(&fresh, None);
        assert_eq!(
            (p.healthy.status, p.healthy.reason),
            (Status::Unknown, health::reason::PROBING)
        );
        assert!(
            p.healthy.message.contains("10.100.0.2"),
            "{}",
            p.healthy.message
        );
        // Probed through its pod and answering.
        let seen = answered_once("ns1/vx1");
        let with_pod = |uid: &str,
                        conditions: Vec<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
        >| {
            let mut t = (*fresh).clone();
            t.status = Some(VpcNatTunnelStatus {
                gateway_pod: Some(PodRef {
                    name: "vpc-nat-gw-gw1-0".into(),
                    uid: uid.into(),
                }),
                conditions,
                ..Default::default()
            });
            t
        };
        let programmed_there = with_pod("uid-1", vec![]);
        let p = probing(&programmed_there, seen.as_ref());
        assert_eq!(p.healthy.status, Status::True);
        assert_eq!(p.status.health.unwrap().target, "10.100.0.2");
        // What was seen through another pod (before a failover) does not count.
        let elsewhere = with_pod("uid-0", vec![]);
        assert_eq!(
            probing(&elsewhere, seen.as_ref()).healthy.reason,
            health::reason::PROBING
        );
        // After a restart (nothing observed yet), the verdict the status shows is kept.
        let shown = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Healthy".into(),
            status: "False".into(),
            reason: health::reason::NOT_ANSWERING.into(),
            message: "10.100.0.2 does not answer".into(),
            observed_generation: None,
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        };
        let restarted = with_pod("uid-1", vec![shown]);
        let p = probing(&restarted, None);
        assert_eq!(
            (p.healthy.status, p.healthy.reason),
            (Status::False, health::reason::NOT_ANSWERING)
        );
    }

    #[test]
    fn a_programmed_tunnel_refused_for_a_conflict_leaves_its_pod() {
        let mut s = fixtures::snapshot();
        let holder = fixtures::tunnel("ns1", "vx1", "gw1", "rgw", 1);
        let mut late = (*fixtures::tunnel("ns2", "vx1", "gw1", "rgw", 2)).clone();
        late.status = Some(VpcNatTunnelStatus {
            gateway_pod: Some(PodRef {
                name: "vpc-nat-gw-gw1-0".into(),
                uid: "uid-1".into(),
            }),
            applied: Some(AppliedTunnel {
                local_route: "242.0.0.0/16".into(),
                remote_route: "242.1.0.0/16".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        s.tunnels = vec![holder, Arc::new(late.clone())];
        let r = refusal(plan_of(&late, &s, None));
        assert_eq!(r.condition.reason, reason::INTERFACE_NAME_CONFLICT);
        assert!(r.leaves_pod);
        let removal = r.removal.expect("the pod holds its state");
        assert_eq!(removal.pod.uid, "uid-1");
        assert_eq!(r.status.gateway_pod, None);
        assert_eq!(r.status.applied, None);
    }

    #[test]
    fn a_tunnel_waiting_for_an_input_keeps_its_pod() {
        let mut s = fixtures::snapshot();
        let mut t = (*fixtures::tunnel("ns1", "vx1", "gw1", "nosuch", 1)).clone();
        let pod = PodRef {
            name: "vpc-nat-gw-gw1-0".into(),
            uid: "uid-1".into(),
        };
        t.status = Some(VpcNatTunnelStatus {
            gateway_pod: Some(pod.clone()),
            ..Default::default()
        });
        s.tunnels = vec![Arc::new(t.clone())];
        let r = refusal(plan_of(&t, &s, None));
        assert!(!r.leaves_pod);
        assert_eq!(r.removal, None);
        assert_eq!(r.status.gateway_pod, Some(pod));
        assert!(!r.condition.status.is_true());
    }

    #[test]
    fn an_encrypted_tunnel_without_its_key_stays_in_its_pod_and_shows_its_probes() {
        let mut s = fixtures::snapshot();
        let mut t = (*fixtures::tunnel("ns1", "vx1", "gw1", "rgw", 1)).clone();
        t.spec.encryption = multivpc_api::Encryption::Ipsec;
        t.status = Some(VpcNatTunnelStatus {
            gateway_pod: Some(PodRef {
                name: "vpc-nat-gw-gw1-0".into(),
                uid: "uid-1".into(),
            }),
            ..Default::default()
        });
        s.tunnels = vec![Arc::new(t.clone())];
        let keyless = |t: &VpcNatTunnel, observed: Option<&health::Observed>| {
            let resolution = resolve::with_esp(t, resolve(t, &s), None, 1);
            refusal(plan(
                t,
                resolution,
                &s,
                None,
                INTERVAL,
                HealthInput {
                    probing: true,
                    observed,
                },
            ))
        };
        // Nothing probed yet: Unknown.
        let r = keyless(&t, None);
        assert_eq!(r.condition.reason, reason::IPSEC_KEY_UNAVAILABLE);
        assert!(!r.leaves_pod && r.removal.is_none());
        assert_eq!(r.healthy.status, Status::Unknown);
        // Its SAs still carry the traffic: the probes say so.
        let seen = answered_once("ns1/vx1");
        let r = keyless(&t, seen.as_ref());
        assert_eq!(
            (r.healthy.status, r.healthy.reason),
            (Status::True, health::reason::ANSWERING)
        );
        assert!(r.status.health.is_some());
        // In another pod (a failover) it is not programmed at all.
        t.status.as_mut().unwrap().gateway_pod.as_mut().unwrap().uid = "uid-old".into();
        let r = keyless(&t, seen.as_ref());
        assert_eq!(r.healthy.reason, health::reason::NOT_PROGRAMMED);
        assert_eq!(r.status.health, None);
    }

    #[test]
    fn deleting_removes_from_the_running_pod_it_was_programmed_in() {
        let mut s = fixtures::snapshot();
        let mut t = (*fixtures::tunnel("ns1", "vx1", "gw1", "rgw", 1)).clone();
        assert_eq!(deletion(&t, &s), None, "never programmed");
        t.status = Some(VpcNatTunnelStatus {
            gateway_pod: Some(PodRef {
                name: "vpc-nat-gw-gw1-0".into(),
                uid: "uid-0".into(),
            }),
            ..Default::default()
        });
        s.tunnels = vec![Arc::new(t.clone())];
        // The pod of that name now runs as uid-1: its cleanup targets it.
        assert_eq!(deletion(&t, &s).unwrap().pod.uid, "uid-1");
        s.pods.clear();
        assert_eq!(
            deletion(&t, &s),
            None,
            "the pod is gone, and its state with it"
        );
    }
}
