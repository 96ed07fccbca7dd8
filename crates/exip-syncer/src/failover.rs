//! Failover decisions, pure: which gateway carries a VPC's static routes, when it counts as
//! failed, which standby takes over, the JSON patch that repoints the routes, fail-back, and
//! which gateway instance each published GatewayExIp stands for.
//!
//! Terms: a gateway *carries* a VPC when one of the VPC's static routes has its `lanIp` as
//! `nextHopIP`. A *standby* of a carrier is another gateway with the same `spec.vpc` that is
//! available (pod Ready, not terminating, lanIp and external IP known).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use multivpc_api::foreign::kubeovn::StaticRoute;
use serde_json::{Value, json};

use crate::model::Gateway;

/// What happens when a failed primary becomes available again.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailbackPolicy {
    /// Stay on the standby; an operator moves the routes back when convenient.
    Never,
    /// Move the routes back once the primary has been available for the fail-back delay.
    Auto,
}

/// Timing and policy of failover.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long a carrier must be unavailable before its routes move.
    pub grace: Duration,
    pub failback: FailbackPolicy,
    /// How long a failed-over primary must be available again before an automatic fail-back.
    pub failback_delay: Duration,
    /// Fail a carrier over when its tunnels all stop answering (`--failover-on-unhealthy-tunnels`).
    pub on_unhealthy_tunnels: bool,
    /// How long a gateway failed over for its tunnels stays unfit to carry or stand by: a
    /// remote outage fails every gateway's tunnels, and routes must not swing between two
    /// gateways while it lasts (`--unhealthy-failover-holddown`).
    pub unhealthy_holddown: Duration,
}

/// Availability of a gateway as observed by the controller, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub available: bool,
    pub since: Instant,
    /// Unavailable after having been available (as this process saw it).
    pub after_available: bool,
    /// Unavailable after having been available, and its pod is now deleted or terminating: the
    /// loss is certain, so failover does not wait for the grace period, which is there for
    /// the ambiguous case (a pod that exists but is not Ready may be back in a moment).
    pub pod_lost: bool,
}

/// Updates `health` from the gateways' current availability (transitions restart `since`;
/// gateways that are gone are forgotten).
pub fn observe(
    health: &mut HashMap<String, Health>,
    gateways: &BTreeMap<String, Gateway>,
    now: Instant,
) {
    health.retain(|name, _| gateways.contains_key(name));
    for (name, gw) in gateways {
        let available = gw.serviceable();
        let h = health.entry(name.clone()).or_insert(Health {
            available,
            since: now,
            after_available: false,
            pod_lost: false,
        });
        if h.available != available {
            *h = Health {
                available,
                since: now,
                after_available: h.available,
                pod_lost: false,
            };
        }
        // A pod that went NotReady first and is deleted later: certain from then on.
        h.pod_lost = !available && h.after_available && gw.pod_gone;
    }
}

/// A VPC and its static routes.
#[derive(Debug, Clone, PartialEq)]
pub struct VpcRoutes {
    pub name: String,
    pub routes: Vec<StaticRoute>,
}

/// Why routes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveKind {
    Failover,
    Failback,
}

/// Repoint every route of `vpc` whose nextHopIP is `from_ip` to `to_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMove {
    pub vpc: String,
    pub kind: MoveKind,
    pub from_gw: String,
    pub from_ip: Ipv4Addr,
    pub to_gw: String,
    pub to_ip: Ipv4Addr,
    /// When the condition that triggered the move began (unavailable / available again).
    pub since: Instant,
}

/// The decisions of one pass.
#[derive(Debug, Default, PartialEq)]
pub struct Decisions {
    pub moves: Vec<RouteMove>,
    /// (vpc, gateway): carriers failed past the grace period with no standby to take over.
    pub stranded: Vec<(String, String)>,
    /// The earliest time a pending condition (grace or fail-back delay) ripens.
    pub next_check: Option<Instant>,
}

fn next_hop(route: &StaticRoute) -> Option<Ipv4Addr> {
    route.next_hop_ip.trim().parse().ok()
}

/// Gateways of `vpc` whose lanIp some route points at, in route order, without repeats.
pub fn carriers<'a>(vpc: &VpcRoutes, gateways: &'a BTreeMap<String, Gateway>) -> Vec<&'a Gateway> {
    let mut out: Vec<&Gateway> = Vec::new();
    for hop in vpc.routes.iter().filter_map(next_hop) {
        if let Some(gw) = gateways
            .values()
            .find(|g| g.vpc == vpc.name && g.lan_ip == Some(hop))
            && !out.iter().any(|o| o.name == gw.name)
        {
            out.push(gw);
        }
    }
    out
}

/// The standby that takes over from `failed`: another available gateway of the same VPC,
/// preferring one on the failed gateway's subnet, then one that carries nothing yet (an idle
/// standby rather than a gateway already serving other routes), then by name.
pub fn choose_standby<'a>(
    failed: &Gateway,
    gateways: &'a BTreeMap<String, Gateway>,
    carrying: &BTreeSet<String>,
) -> Option<&'a Gateway> {
    gateways
        .values()
        .filter(|g| g.name != failed.name && g.vpc == failed.vpc && g.serviceable())
        .min_by_key(|g| {
            (
                g.subnet != failed.subnet,
                carrying.contains(&g.name),
                g.name.clone(),
            )
        })
}

/// Decides the route moves of one pass. `actives` maps each gateway to the instance its
/// published GatewayExIp currently names (the active-gateway label).
pub fn decide(
    vpcs: &[VpcRoutes],
    gateways: &BTreeMap<String, Gateway>,
    health: &HashMap<String, Health>,
    actives: &BTreeMap<String, String>,
    policy: &Policy,
    now: Instant,
) -> Decisions {
    let mut d = Decisions::default();
    let wake = |at: Instant, d: &mut Decisions| {
        d.next_check = Some(d.next_check.map_or(at, |n| n.min(at)));
    };
    for vpc in vpcs {
        let carrying: Vec<&Gateway> = carriers(vpc, gateways);
        let carrying_names: BTreeSet<String> = carrying.iter().map(|g| g.name.clone()).collect();
        let mut moved_from = BTreeSet::new();
        for carrier in &carrying {
            let Some(h) = health.get(&carrier.name) else {
                continue;
            };
            if h.available {
                continue;
            }
            let due = if h.pod_lost {
                h.since
            } else {
                h.since + policy.grace
            };
            if now < due {
                wake(due, &mut d);
                continue;
            }
            match choose_standby(carrier, gateways, &carrying_names) {
                Some(standby) => {
                    moved_from.insert(carrier.name.clone());
                    d.moves.push(RouteMove {
                        vpc: vpc.name.clone(),
                        kind: MoveKind::Failover,
                        from_gw: carrier.name.clone(),
                        from_ip: carrier.lan_ip.expect("carriers have a lanIp"),
                        to_gw: standby.name.clone(),
                        to_ip: standby.lan_ip.expect("available gateways have a lanIp"),
                        since: h.since,
                    })
                }
                None => d.stranded.push((vpc.name.clone(), carrier.name.clone())),
            }
        }
        if policy.failback != FailbackPolicy::Auto {
            continue;
        }
        // Fail-back: a primary whose GatewayExIp names a carrier of this VPC, when it is the
        // only gateway that failed over to that carrier (otherwise whose routes are whose is
        // ambiguous and an operator decides).
        for primary in gateways.values().filter(|g| g.vpc == vpc.name) {
            let Some(active) = actives.get(&primary.name) else {
                continue;
            };
            if active == &primary.name
                || carrying_names.contains(&primary.name)
                || !carrying_names.contains(active)
                || moved_from.contains(active)
                || !primary.serviceable()
            {
                continue;
            }
            let sharing = actives
                .iter()
                .filter(|(g, a)| *a == active && *g != active)
                .count();
            let Some(carrier) = gateways.get(active) else {
                continue;
            };
            if sharing != 1 || !carrier.available() {
                continue;
            }
            let Some(h) = health.get(&primary.name).filter(|h| h.available) else {
                continue;
            };
            let due = h.since + policy.failback_delay;
            if now < due {
                wake(due, &mut d);
                continue;
            }
            moved_from.insert(active.clone());
            d.moves.push(RouteMove {
                vpc: vpc.name.clone(),
                kind: MoveKind::Failback,
                from_gw: active.clone(),
                from_ip: carrier.lan_ip.expect("carriers have a lanIp"),
                to_gw: primary.name.clone(),
                to_ip: primary.lan_ip.expect("available gateways have a lanIp"),
                since: h.since,
            });
        }
    }
    d
}

/// The routes after `moves` (those of `vpc.name`) are applied.
pub fn repointed(vpc: &VpcRoutes, moves: &[RouteMove]) -> Vec<StaticRoute> {
    let mut routes = vpc.routes.clone();
    for r in routes.iter_mut() {
        let hop = next_hop(r);
        if let Some(m) = moves
            .iter()
            .find(|m| m.vpc == vpc.name && Some(m.from_ip) == hop)
        {
            r.next_hop_ip = m.to_ip.to_string();
        }
    }
    routes
}

/// The JSON patch (RFC 6902) repointing the routes of `vpc` for `moves`: for each route whose
/// nextHopIP is a moved gateway's lanIp, `test` its cidr and nextHopIP (so a concurrent edit of
/// the list makes the API server refuse the patch instead of being overwritten), then
/// `replace` the nextHopIP. `None` when no route changes.
pub fn route_patch(vpc: &VpcRoutes, moves: &[RouteMove]) -> Option<Value> {
    let mut ops = Vec::new();
    for (i, route) in vpc.routes.iter().enumerate() {
        let Some(hop) = next_hop(route) else { continue };
        let Some(m) = moves.iter().find(|m| m.vpc == vpc.name && m.from_ip == hop) else {
            continue;
        };
        let base = format!("/spec/staticRoutes/{i}");
        ops.push(json!({"op": "test", "path": format!("{base}/cidr"), "value": route.cidr}));
        ops.push(
            json!({"op": "test", "path": format!("{base}/nextHopIP"), "value": route.next_hop_ip}),
        );
        ops.push(json!({"op": "replace", "path": format!("{base}/nextHopIP"), "value": m.to_ip.to_string()}));
    }
    (!ops.is_empty()).then_some(Value::Array(ops))
}

/// The gateway instance the GatewayExIp of `gateway` stands for, given the VPC's carriers after
/// this pass's moves (`carriers_after`, in route order), the instance its object names now
/// (`label`) and this pass's moves (old carrier → new carrier):
/// 1. a gateway that carries routes stands for itself;
/// 2. one that failed over keeps naming its carrier while that carrier carries;
/// 3. one whose named carrier lost its routes follows them (this pass's move), else the
///    VPC's first carrier, else itself;
/// 4. an unfit gateway (unavailable, or its tunnels failing) that names itself but carries
///    nothing follows the VPC's carrier (covers this pass's failover and a restart between the
///    route patch and the label update);
/// 5. otherwise itself.
pub fn active_for(
    gateway: &Gateway,
    label: Option<&str>,
    carriers_after: &[String],
    moved: &BTreeMap<String, String>,
) -> String {
    let me = gateway.name.as_str();
    if carriers_after.iter().any(|c| c == me) {
        return me.to_owned();
    }
    let follow = |from: &str| -> Option<String> {
        moved
            .get(from)
            .filter(|to| carriers_after.contains(to))
            .cloned()
            .or_else(|| carriers_after.first().cloned())
    };
    match label {
        Some(l) if l != me && carriers_after.iter().any(|c| c == l) => l.to_owned(),
        Some(l) if l != me => follow(l).unwrap_or_else(|| me.to_owned()),
        _ if !gateway.serviceable() => follow(me).unwrap_or_else(|| me.to_owned()),
        _ => me.to_owned(),
    }
}

/// The carriers of `vpc` after `moves`, by name, in route order.
pub fn carriers_after(
    vpc: &VpcRoutes,
    gateways: &BTreeMap<String, Gateway>,
    moves: &[RouteMove],
) -> Vec<String> {
    let after = VpcRoutes {
        name: vpc.name.clone(),
        routes: repointed(vpc, moves),
    };
    carriers(&after, gateways)
        .into_iter()
        .map(|g| g.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::gw;

    fn route(cidr: &str, hop: &str) -> StaticRoute {
        StaticRoute {
            policy: Some("policyDst".into()),
            cidr: cidr.into(),
            next_hop_ip: hop.into(),
            ..Default::default()
        }
    }

    fn gws(list: Vec<Gateway>) -> BTreeMap<String, Gateway> {
        list.into_iter().map(|g| (g.name.clone(), g)).collect()
    }

    const POLICY: Policy = Policy {
        grace: Duration::from_secs(5),
        failback: FailbackPolicy::Never,
        failback_delay: Duration::from_secs(60),
        on_unhealthy_tunnels: true,
        unhealthy_holddown: Duration::from_secs(300),
    };

    fn health_of(g: &BTreeMap<String, Gateway>, since: Instant) -> HashMap<String, Health> {
        let mut h = HashMap::new();
        observe(&mut h, g, since);
        h
    }

    fn vpc1() -> VpcRoutes {
        VpcRoutes {
            name: "v1".into(),
            routes: vec![
                route("242.1.0.0/16", "10.1.0.254"),
                route("0.0.0.0/0", "10.1.0.1"),
                route("242.2.0.0/16", "10.1.0.254"),
            ],
        }
    }

    #[test]
    fn a_carrier_whose_tunnels_all_fail_moves_to_a_standby_whose_do_not() {
        let mut g = gws(vec![
            gw("p", "v1", "10.1.0.254", Some("172.50.0.2")),
            gw("s", "v1", "10.1.0.253", Some("172.50.0.3")),
            gw("t", "v1", "10.1.0.252", Some("172.50.0.4")),
        ]);
        // p's pod is fine but its tunnels all fail; t is failing too (say, held down).
        for name in ["p", "t"] {
            g.get_mut(name).unwrap().tunnels_failing = true;
        }
        let t0 = Instant::now();
        let mut h = HashMap::new();
        observe(&mut h, &g, t0);
        assert!(!h["p"].available);
        let d = decide(
            &[vpc1()],
            &g,
            &h,
            &BTreeMap::new(),
            &POLICY,
            t0 + POLICY.grace,
        );
        assert_eq!(
            d.moves
                .iter()
                .map(|m| (m.from_gw.as_str(), m.to_gw.as_str()))
                .collect::<Vec<_>>(),
            [("p", "s")]
        );
        // With s failing as well there is nobody to move to.
        g.get_mut("s").unwrap().tunnels_failing = true;
        observe(&mut h, &g, t0);
        let d = decide(
            &[vpc1()],
            &g,
            &h,
            &BTreeMap::new(),
            &POLICY,
            t0 + POLICY.grace,
        );
        assert!(d.moves.is_empty());
        assert_eq!(d.stranded, [("v1".to_string(), "p".to_string())]);
    }

    #[test]
    fn failed_carrier_moves_to_standby_after_the_grace_period() {
        let g = gws(vec![
            gw("p", "v1", "10.1.0.254", None),
            gw("s", "v1", "10.1.0.253", Some("172.50.0.3")),
            gw("other-vpc", "v2", "10.2.0.2", Some("172.50.0.9")),
        ]);
        let t0 = Instant::now();
        let h = health_of(&g, t0);
        let early = decide(
            &[vpc1()],
            &g,
            &h,
            &BTreeMap::new(),
            &POLICY,
            t0 + Duration::from_secs(1),
        );
        assert!(early.moves.is_empty());
        assert_eq!(early.next_check, Some(t0 + Duration::from_secs(5)));
        let d = decide(
            &[vpc1()],
            &g,
            &h,
            &BTreeMap::new(),
            &POLICY,
            t0 + Duration::from_secs(5),
        );
        assert_eq!(
            d.moves,
            vec![RouteMove {
                vpc: "v1".into(),
                kind: MoveKind::Failover,
                from_gw: "p".into(),
                from_ip: "10.1.0.254".parse().unwrap(),
                to_gw: "s".into(),
                to_ip: "10.1.0.253".parse().unwrap(),
                since: t0,
            }]
        );
        assert_eq!(carriers_after(&vpc1(), &g, &d.moves), vec!["s".to_string()]);
    }

    #[test]
    fn no_standby_means_stranded_not_moved() {
        let g = gws(vec![
            gw("p", "v1", "10.1.0.254", None),
            gw("s", "v1", "10.1.0.253", None),
            gw("x", "v2", "10.1.0.252", Some("172.50.0.9")),
        ]);
        let t0 = Instant::now();
        let d = decide(
            &[vpc1()],
            &g,
            &health_of(&g, t0),
            &BTreeMap::new(),
            &POLICY,
            t0 + POLICY.grace,
        );
        assert!(d.moves.is_empty(), "a gateway of another VPC is no standby");
        assert_eq!(d.stranded, vec![("v1".into(), "p".into())]);
    }

    #[test]
    fn standby_prefers_same_subnet_then_idle_then_name() {
        let failed = gw("p", "v1", "10.1.0.254", None);
        let mut far = gw("a-far", "v1", "10.9.0.2", Some("172.50.0.2"));
        far.subnet = "elsewhere".into();
        let busy = gw("b-busy", "v1", "10.1.0.3", Some("172.50.0.3"));
        let idle = gw("c-idle", "v1", "10.1.0.4", Some("172.50.0.4"));
        let g = gws(vec![failed.clone(), far, busy, idle]);
        let carrying: BTreeSet<String> = ["p".to_string(), "b-busy".to_string()].into();
        assert_eq!(
            choose_standby(&failed, &g, &carrying).unwrap().name,
            "c-idle"
        );
        let carrying: BTreeSet<String> = ["p".to_string()].into();
        assert_eq!(
            choose_standby(&failed, &g, &carrying).unwrap().name,
            "b-busy"
        );
    }

    #[test]
    fn route_patch_tests_then_replaces_only_the_failed_hops() {
        let g = gws(vec![
            gw("p", "v1", "10.1.0.254", None),
            gw("s", "v1", "10.1.0.253", Some("172.50.0.3")),
        ]);
        let t0 = Instant::now();
        let d = decide(
            &[vpc1()],
            &g,
            &health_of(&g, t0),
            &BTreeMap::new(),
            &POLICY,
            t0 + POLICY.grace,
        );
        let patch = route_patch(&vpc1(), &d.moves).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/staticRoutes/0/cidr", "value": "242.1.0.0/16"},
                {"op": "test", "path": "/spec/staticRoutes/0/nextHopIP", "value": "10.1.0.254"},
                {"op": "replace", "path": "/spec/staticRoutes/0/nextHopIP", "value": "10.1.0.253"},
                {"op": "test", "path": "/spec/staticRoutes/2/cidr", "value": "242.2.0.0/16"},
                {"op": "test", "path": "/spec/staticRoutes/2/nextHopIP", "value": "10.1.0.254"},
                {"op": "replace", "path": "/spec/staticRoutes/2/nextHopIP", "value": "10.1.0.253"},
            ])
        );
        // The patch is valid JSON patch, and a concurrent edit makes it fail instead of
        // overwriting.
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        let mut doc = json!({"spec": {"staticRoutes": vpc1().routes}});
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["spec"]["staticRoutes"][1]["nextHopIP"], "10.1.0.1");
        assert_eq!(doc["spec"]["staticRoutes"][2]["nextHopIP"], "10.1.0.253");
        let mut edited = json!({"spec": {"staticRoutes": vpc1().routes}});
        edited["spec"]["staticRoutes"][0]["nextHopIP"] = json!("10.1.0.77");
        assert!(json_patch::patch(&mut edited, &patch).is_err());
        assert!(route_patch(&vpc1(), &[]).is_none());
    }

    #[test]
    fn unmodelled_route_fields_survive_the_patch() {
        let mut vpc = vpc1();
        vpc.routes[0].other.insert("bfdId".into(), json!("bfd-1"));
        let g = gws(vec![
            gw("p", "v1", "10.1.0.254", None),
            gw("s", "v1", "10.1.0.253", Some("172.50.0.3")),
        ]);
        let t0 = Instant::now();
        let d = decide(
            std::slice::from_ref(&vpc),
            &g,
            &health_of(&g, t0),
            &BTreeMap::new(),
            &POLICY,
            t0 + POLICY.grace,
        );
        let patch: json_patch::Patch =
            serde_json::from_value(route_patch(&vpc, &d.moves).unwrap()).unwrap();
        let mut doc = json!({"spec": {"staticRoutes": vpc.routes}});
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["spec"]["staticRoutes"][0]["bfdId"], "bfd-1");
    }

    #[test]
    fn active_instance_rules() {
        let p_down = gw("p", "v1", "10.1.0.254", None);
        let p_up = gw("p", "v1", "10.1.0.254", Some("172.50.0.2"));
        let s = gw("s", "v1", "10.1.0.253", Some("172.50.0.3"));
        let none = BTreeMap::new();
        let moved: BTreeMap<String, String> = [("p".into(), "s".into())].into();
        let c_s = vec!["s".to_string()];
        // 1. carriers stand for themselves.
        assert_eq!(active_for(&p_up, Some("s"), &["p".into()], &none), "p");
        // The failed primary follows its routes (this pass's move) ...
        assert_eq!(active_for(&p_down, Some("p"), &c_s, &moved), "s");
        // ... keeps naming the standby while it carries, even when back (no fail-back) ...
        assert_eq!(active_for(&p_up, Some("s"), &c_s, &none), "s");
        // ... and the standby's own object names itself.
        assert_eq!(active_for(&s, Some("s"), &c_s, &moved), "s");
        assert_eq!(active_for(&s, None, &["p".into()], &none), "s");
        // 4. restart between the route patch and the label update.
        assert_eq!(active_for(&p_down, Some("p"), &c_s, &none), "s");
        // ... and a primary failed over for its tunnels (its pod is fine) follows too.
        let p_failing = Gateway {
            tunnels_failing: true,
            ..p_up.clone()
        };
        assert_eq!(active_for(&p_failing, Some("p"), &c_s, &moved), "s");
        assert_eq!(active_for(&p_failing, Some("p"), &c_s, &none), "s");
        // 3. chained failover p→s→t: p follows s's routes.
        let t_moved: BTreeMap<String, String> = [("s".into(), "t".into())].into();
        assert_eq!(active_for(&p_up, Some("s"), &["t".into()], &t_moved), "t");
        // No routes at all: itself.
        assert_eq!(active_for(&p_down, Some("s"), &[], &none), "p");
        assert_eq!(active_for(&p_up, None, &[], &none), "p");
    }

    #[test]
    fn failback_only_when_auto_after_the_delay_and_unambiguous() {
        let g = gws(vec![
            gw("p", "v1", "10.1.0.254", Some("172.50.0.2")),
            gw("s", "v1", "10.1.0.253", Some("172.50.0.3")),
        ]);
        let vpc = VpcRoutes {
            name: "v1".into(),
            routes: vec![route("242.1.0.0/16", "10.1.0.253")],
        };
        let actives: BTreeMap<String, String> =
            [("p".into(), "s".into()), ("s".into(), "s".into())].into();
        let t0 = Instant::now();
        let h = health_of(&g, t0);
        let later = t0 + Duration::from_secs(61);
        assert!(
            decide(std::slice::from_ref(&vpc), &g, &h, &actives, &POLICY, later)
                .moves
                .is_empty()
        );
        let auto = Policy {
            failback: FailbackPolicy::Auto,
            ..POLICY
        };
        let early = decide(
            std::slice::from_ref(&vpc),
            &g,
            &h,
            &actives,
            &auto,
            t0 + Duration::from_secs(10),
        );
        assert!(early.moves.is_empty());
        assert_eq!(early.next_check, Some(t0 + Duration::from_secs(60)));
        let d = decide(std::slice::from_ref(&vpc), &g, &h, &actives, &auto, later);
        assert_eq!(d.moves.len(), 1);
        assert_eq!(
            (d.moves[0].kind, d.moves[0].to_gw.as_str()),
            (MoveKind::Failback, "p")
        );
        // Two primaries failed over to one standby: ambiguous, no automatic fail-back.
        let mut g2 = g.clone();
        g2.insert("q".into(), gw("q", "v1", "10.1.0.252", Some("172.50.0.4")));
        let mut a2 = actives.clone();
        a2.insert("q".into(), "s".into());
        let h2 = health_of(&g2, t0);
        assert!(decide(&[vpc], &g2, &h2, &a2, &auto, later).moves.is_empty());
    }

    #[test]
    fn observe_tracks_transitions() {
        let mut g = gws(vec![gw("p", "v1", "10.1.0.254", Some("172.50.0.2"))]);
        let t0 = Instant::now();
        let mut h = HashMap::new();
        observe(&mut h, &g, t0);
        observe(&mut h, &g, t0 + Duration::from_secs(1));
        assert_eq!(
            h["p"],
            Health {
                available: true,
                since: t0,
                after_available: false,
                pod_lost: false,
            }
        );
        g.get_mut("p").unwrap().ready = false;
        observe(&mut h, &g, t0 + Duration::from_secs(2));
        let not_ready = Health {
            available: false,
            since: t0 + Duration::from_secs(2),
            after_available: true,
            pod_lost: false,
        };
        assert_eq!(h["p"], not_ready);
        // Its pod deleted later: the loss becomes certain, the outage keeps its start.
        g.get_mut("p").unwrap().pod_gone = true;
        observe(&mut h, &g, t0 + Duration::from_secs(3));
        assert_eq!(
            h["p"],
            Health {
                pod_lost: true,
                ..not_ready
            }
        );
        observe(&mut h, &BTreeMap::new(), t0);
        assert!(h.is_empty());
        // Never seen available: a gateway without a pod yet is not "lost".
        let mut fresh = gws(vec![gw("q", "v1", "10.1.0.252", None)]);
        fresh.get_mut("q").unwrap().pod_gone = true;
        observe(&mut h, &fresh, t0);
        assert!(!h["q"].pod_lost);
    }

    #[test]
    fn a_carrier_whose_pod_is_deleted_fails_over_at_once_a_not_ready_one_after_the_grace() {
        let mut g = gws(vec![
            gw("p", "v1", "10.1.0.254", Some("172.50.0.2")),
            gw("s", "v1", "10.1.0.253", Some("172.50.0.3")),
        ]);
        let t0 = Instant::now();
        let mut h = health_of(&g, t0);
        let p = g.get_mut("p").unwrap();
        (p.ready, p.external_ip) = (false, None);
        let t1 = t0 + Duration::from_secs(1);
        observe(&mut h, &g, t1);
        let moved = |h: &HashMap<String, Health>, g: &BTreeMap<String, Gateway>, at| {
            decide(&[vpc1()], g, h, &BTreeMap::new(), &POLICY, at)
                .moves
                .iter()
                .map(|m| (m.from_gw.clone(), m.to_gw.clone()))
                .collect::<Vec<_>>()
        };
        // Not Ready: the grace period first.
        assert!(moved(&h, &g, t1).is_empty());
        assert_eq!(
            decide(&[vpc1()], &g, &h, &BTreeMap::new(), &POLICY, t1).next_check,
            Some(t1 + POLICY.grace)
        );
        // Deleted: at once.
        g.get_mut("p").unwrap().pod_gone = true;
        observe(&mut h, &g, t1);
        assert_eq!(moved(&h, &g, t1), [("p".into(), "s".into())]);
    }

    proptest::proptest! {
        /// Applied to any route list, the patch repoints exactly the routes whose next hop was
        /// the failed lanIp and leaves every other route (and its order) as it was.
        #[test]
        fn route_patch_changes_exactly_the_failed_hops(
            hops in proptest::collection::vec(0u8..4, 0..8),
        ) {
            let failed: Ipv4Addr = "10.1.0.1".parse().unwrap();
            let vpc = VpcRoutes {
                name: "v1".into(),
                routes: hops
                    .iter()
                    .enumerate()
                    .map(|(i, h)| route(&format!("10.{i}.0.0/16"), &format!("10.1.0.{h}")))
                    .collect(),
            };
            let m = RouteMove {
                vpc: "v1".into(),
                kind: MoveKind::Failover,
                from_gw: "p".into(),
                from_ip: failed,
                to_gw: "s".into(),
                to_ip: "10.1.0.9".parse().unwrap(),
                since: Instant::now(),
            };
            let mut doc = json!({"spec": {"staticRoutes": vpc.routes}});
            if let Some(patch) = route_patch(&vpc, std::slice::from_ref(&m)) {
                let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
                json_patch::patch(&mut doc, &patch).unwrap();
            } else {
                proptest::prop_assert!(!hops.contains(&1));
            }
            let after: Vec<StaticRoute> =
                serde_json::from_value(doc["spec"]["staticRoutes"].clone()).unwrap();
            proptest::prop_assert_eq!(&after, &repointed(&vpc, &[m]));
            for (a, b) in after.iter().zip(&vpc.routes) {
                proptest::prop_assert_eq!(&a.cidr, &b.cidr);
                if b.next_hop_ip == "10.1.0.1" {
                    proptest::prop_assert_eq!(a.next_hop_ip.as_str(), "10.1.0.9");
                } else {
                    proptest::prop_assert_eq!(&a.next_hop_ip, &b.next_hop_ip);
                }
            }
        }
    }
}
