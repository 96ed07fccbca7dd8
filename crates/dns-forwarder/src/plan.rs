//! What the cluster should look like for one VpcDnsForward, decided from a snapshot of the
//! watched objects. Pure: the controller turns the plan into API calls.
//!
//! Routes and the Corefile section are shared: several forwards of one VPC share the route on
//! that VPC's vpc-dns Deployments, and all forwards share the one Corefile section. A forward
//! therefore removes something only when no other live forward still wants it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service},
};
use kube::ResourceExt;
use multivpc_api::{
    VpcDnsForward,
    conditions::DesiredCondition,
    foreign::kubeovn::{Subnet, Vpc, VpcDns},
    keys::VPC_DNS_COREFILE,
    tenancy::{NAMESPACE_NOT_ADMITTED, Tenancy},
};
use serde_json::Value;

use crate::{
    corefile,
    routes::{self, PatchKind, Route},
};

/// Key of the Corefile in the vpc-dns ConfigMap.
pub const COREFILE_KEY: &str = "Corefile";
/// Prefix of the Deployment Kube-OVN creates for a VpcDns.
pub const DEPLOYMENT_PREFIX: &str = "vpc-dns-";

/// The watched objects, as the controller's caches hold them.
#[derive(Default, Clone)]
pub struct Snapshot {
    /// Kube-OVN's namespace (for messages: the Deployments and the Corefile live there).
    pub namespace: String,
    pub forwards: Vec<Arc<VpcDnsForward>>,
    pub vpc_dns: Vec<Arc<VpcDns>>,
    /// vpc-dns Deployments in Kube-OVN's namespace, by name.
    pub deployments: BTreeMap<String, Arc<Deployment>>,
    /// Corefile ConfigMaps by name, as far as they were looked at: the default one from its
    /// watch, the others a VpcDns names (Kube-OVN v1.16+ `spec.corefile`) read for this plan.
    pub corefiles: BTreeMap<String, CorefileSource>,
    pub kube_dns: Option<Arc<Service>>,
    pub ovn_default: Option<Arc<Subnet>>,
    /// Vpcs, by name: which namespaces each admits.
    pub vpcs: BTreeMap<String, Arc<Vpc>>,
    pub tenancy: Tenancy,
}

/// What is known about one Corefile ConfigMap.
#[derive(Debug, Clone)]
pub enum CorefileSource {
    Found(Arc<ConfigMap>),
    Missing,
    /// It could not be read (e.g. not granted to dns-forwarder): why.
    Unreadable(String),
}

/// A new Corefile for one ConfigMap, computed from its text at `resource_version`.
#[derive(Debug, Clone, PartialEq)]
pub struct CorefileEdit {
    pub configmap: String,
    pub text: String,
    pub resource_version: Option<String>,
}

/// One edit of a vpc-dns Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentEdit {
    pub deployment: String,
    pub kind: PatchKind,
    pub patch: Value,
    /// True when the edit adds the route, false when it removes one.
    pub adds: bool,
    pub route: Route,
}

/// Everything to do for one forward.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// New Corefiles, each with the ConfigMap resourceVersion it was computed from.
    pub corefiles: Vec<CorefileEdit>,
    pub edits: Vec<DeploymentEdit>,
    pub condition: DesiredCondition,
    /// Status fields (apply only).
    pub vpc_dns: Vec<String>,
    pub deployments: Vec<String>,
    /// Corefile ConfigMaps carrying the section for this forward (status).
    pub corefile_configmaps: Vec<String>,
    pub route: Option<Route>,
}

fn is_live(forward: &VpcDnsForward) -> bool {
    forward.metadata.deletion_timestamp.is_none()
}

/// Whether `forward`'s namespace may change its VPC's DNS (see [`multivpc_api::tenancy`]).
pub fn admitted(forward: &VpcDnsForward, snapshot: &Snapshot) -> Result<(), DesiredCondition> {
    snapshot
        .tenancy
        .admits(
            &snapshot.vpcs,
            &forward.spec.vpc,
            &forward.namespace().unwrap_or_default(),
        )
        .map_err(|message| DesiredCondition::not_ready(NAMESPACE_NOT_ADMITTED, message))
}

/// Names of the VpcDns objects that serve `vpc`: the active ones with a Deployment.
///
/// Kube-OVN sets `status.active` also on a VpcDns it refused (a second one in the VPC, a
/// missing NAD or subnet: an error shadowed in `handleAddOrUpdateVPCDNS`, every release up to
/// v1.16), and such a VpcDns never gets a Deployment. So an active VpcDns without one is
/// ignored while another of the VPC has one; when none has, all active ones are returned, and
/// the forward waits for their Deployments (DeploymentNotFound).
pub fn serving_vpc_dns(snapshot: &Snapshot, vpc: &str) -> Vec<String> {
    let mut active: Vec<String> = snapshot
        .vpc_dns
        .iter()
        .filter(|d| d.spec.vpc == vpc && d.status.as_ref().is_some_and(|s| s.active))
        .map(|d| d.name_any())
        .collect();
    active.sort();
    let deployed: Vec<String> = active
        .iter()
        .filter(|n| {
            snapshot
                .deployments
                .contains_key(&format!("{DEPLOYMENT_PREFIX}{n}"))
        })
        .cloned()
        .collect();
    if deployed.is_empty() {
        active
    } else {
        deployed
    }
}

/// The Corefile ConfigMaps the VpcDns serving `vpc` mount.
pub fn corefiles_of(snapshot: &Snapshot, vpc: &str) -> BTreeSet<String> {
    let serving = serving_vpc_dns(snapshot, vpc);
    snapshot
        .vpc_dns
        .iter()
        .filter(|d| serving.contains(&d.name_any()))
        .map(|d| d.corefile_configmap().to_owned())
        .collect()
}

fn deployments_of(snapshot: &Snapshot, vpc: &str) -> BTreeSet<String> {
    serving_vpc_dns(snapshot, vpc)
        .into_iter()
        .map(|n| format!("{DEPLOYMENT_PREFIX}{n}"))
        .collect()
}

/// The route vpc-dns needs: the kube-dns ClusterIP via the ovn-default gateway.
pub fn route(snapshot: &Snapshot) -> Result<Route, DesiredCondition> {
    let dst = snapshot
        .kube_dns
        .as_ref()
        .and_then(|s| {
            s.spec
                .as_ref()?
                .cluster_ip
                .as_deref()?
                .parse::<Ipv4Addr>()
                .ok()
        })
        .ok_or_else(|| {
            DesiredCondition::not_ready(
                "KubeDnsNotFound",
                "Service kube-system/kube-dns with an IPv4 ClusterIP not found",
            )
        })?;
    let gw = snapshot
        .ovn_default
        .as_ref()
        .and_then(|s| s.spec.ipv4_gateway())
        .ok_or_else(|| {
            DesiredCondition::not_ready(
                "SubnetNotFound",
                "Subnet ovn-default with an IPv4 gateway not found",
            )
        })?;
    Ok(Route { dst, gw })
}

/// Decides what to do for `forward`. `deleting` plans its cleanup. A forward whose namespace
/// its VPC does not admit plans the same removals, and keeps nothing alive for the others.
pub fn plan(forward: &VpcDnsForward, snapshot: &Snapshot, deleting: bool) -> Plan {
    let me = (forward.namespace(), forward.name_any());
    let others: Vec<&Arc<VpcDnsForward>> = snapshot
        .forwards
        .iter()
        .filter(|f| {
            is_live(f) && (f.namespace(), f.name_any()) != me && admitted(f, snapshot).is_ok()
        })
        .collect();
    let refusal = if deleting {
        None
    } else {
        admitted(forward, snapshot).err()
    };
    let withdrawing = deleting || refusal.is_some();
    let wanted_by_others: BTreeSet<String> = others
        .iter()
        .flat_map(|f| deployments_of(snapshot, &f.spec.vpc))
        .collect();
    let status = forward.status.clone().unwrap_or_default();
    let previous_route = status.route.as_deref().and_then(Route::parse_status);
    let mine = if withdrawing {
        BTreeSet::new()
    } else {
        deployments_of(snapshot, &forward.spec.vpc)
    };
    // Where a route of ours may be: recorded in status, or (adoption of objects that never had
    // a status) the deployments of the forward's VPC.
    let mut touched: BTreeSet<String> = status.deployments.iter().cloned().collect();
    touched.extend(deployments_of(snapshot, &forward.spec.vpc));

    let current_route = route(snapshot);
    let mut plan = Plan {
        corefiles: Vec::new(),
        edits: Vec::new(),
        condition: DesiredCondition::ready("Programmed", ""),
        vpc_dns: Vec::new(),
        deployments: Vec::new(),
        corefile_configmaps: Vec::new(),
        route: current_route.as_ref().ok().copied(),
    };
    let mut problems: Vec<DesiredCondition> = Vec::new();

    let edit = |plan: &mut Plan,
                problems: &mut Vec<DesiredCondition>,
                name: &str,
                route: Route,
                present: bool| {
        let Some(deployment) = snapshot.deployments.get(name) else {
            return;
        };
        match routes::route_patch(deployment, &route, present) {
            Ok(Some((kind, patch))) => plan.edits.push(DeploymentEdit {
                deployment: name.to_owned(),
                kind,
                patch,
                adds: present,
                route,
            }),
            Ok(None) => {}
            Err(err) => problems.push(DesiredCondition::not_ready(
                "RouteFormUnsupported",
                format!("Deployment {}/{name}: {err}", snapshot.namespace),
            )),
        }
    };

    // Remove routes nobody wants any more: from deployments this forward left, and the old
    // route everywhere this forward had it when the kube-dns IP or the gateway changed.
    for name in touched.difference(&mine) {
        if wanted_by_others.contains(name) {
            continue;
        }
        for route in [current_route.as_ref().ok().copied(), previous_route]
            .into_iter()
            .flatten()
        {
            edit(&mut plan, &mut problems, name, route, false);
        }
    }
    if let (Some(old), Ok(new)) = (previous_route, &current_route)
        && old != *new
    {
        for name in &mine {
            edit(&mut plan, &mut problems, name, old, false);
        }
    }
    // Remove-then-add on one deployment would race on its resourceVersion: keep one edit per
    // deployment per reconcile (the next reconcile, triggered by the change, does the rest).
    dedupe(&mut plan.edits);

    // Corefiles: the section stays in a ConfigMap while any live forward's VpcDns mounts it.
    let wanted_corefiles: BTreeSet<String> = others
        .iter()
        .flat_map(|f| corefiles_of(snapshot, &f.spec.vpc))
        .collect();
    let my_corefiles = if withdrawing {
        BTreeSet::new()
    } else {
        corefiles_of(snapshot, &forward.spec.vpc)
    };
    let mut corefiles_touched: BTreeSet<String> = status.corefiles.iter().cloned().collect();
    corefiles_touched.extend(corefiles_of(snapshot, &forward.spec.vpc));
    if status.corefiles.is_empty() && withdrawing {
        // Forwards from before status.corefiles (and the original operator's): the default.
        corefiles_touched.insert(VPC_DNS_COREFILE.to_owned());
    }
    for name in corefiles_touched.union(&my_corefiles) {
        let keep = my_corefiles.contains(name) || wanted_corefiles.contains(name);
        let cm = match snapshot.corefiles.get(name) {
            Some(CorefileSource::Found(cm)) => cm,
            Some(CorefileSource::Unreadable(why)) => {
                if keep || !withdrawing {
                    problems.push(DesiredCondition::not_ready(
                        "CorefileUnreadable",
                        format!("ConfigMap {}/{name}: {why}", snapshot.namespace),
                    ));
                }
                continue;
            }
            Some(CorefileSource::Missing) | None => {
                if my_corefiles.contains(name) {
                    problems.push(DesiredCondition::not_ready(
                        "CorefileMissing",
                        format!(
                            "ConfigMap {}/{name} not found; create it as Kube-OVN's vpc-dns documentation shows",
                            snapshot.namespace
                        ),
                    ));
                }
                continue;
            }
        };
        if my_corefiles.contains(name) {
            plan.corefile_configmaps.push(name.clone());
        }
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(COREFILE_KEY))
            .cloned()
            .unwrap_or_default();
        let edited = match (keep, &current_route) {
            (true, Ok(route)) => corefile::ensure(&text, route.dst).map(Some),
            (true, Err(_)) => Ok(None),
            (false, _) => corefile::remove(&text).map(Some),
        };
        match edited {
            Ok(Some(new)) if new != text => plan.corefiles.push(CorefileEdit {
                configmap: name.clone(),
                text: new,
                resource_version: cm.metadata.resource_version.clone(),
            }),
            Ok(_) => {}
            Err(err) => problems.push(DesiredCondition::not_ready(
                "CorefileConflict",
                format!("ConfigMap {}/{name}: {err}", snapshot.namespace),
            )),
        }
    }

    if deleting {
        plan.route = None;
        return plan;
    }
    if let Some(refusal) = refusal {
        // Status keeps naming what still carries our route until it is removed.
        plan.deployments = plan.edits.iter().map(|e| e.deployment.clone()).collect();
        plan.corefile_configmaps = plan.corefiles.iter().map(|c| c.configmap.clone()).collect();
        if plan.edits.is_empty() {
            plan.route = None;
        }
        plan.condition = refusal;
        return plan;
    }

    let route = match current_route {
        Ok(route) => route,
        Err(condition) => {
            plan.condition = condition;
            return plan;
        }
    };
    let vpc_dns = serving_vpc_dns(snapshot, &forward.spec.vpc);
    if vpc_dns.is_empty() {
        problems.push(DesiredCondition::not_ready(
            "VpcDnsNotFound",
            format!("no active VpcDns for VPC {}", forward.spec.vpc),
        ));
    }
    let mut missing = Vec::new();
    for name in &mine {
        if snapshot.deployments.contains_key(name) {
            plan.deployments.push(name.clone());
            if !plan.edits.iter().any(|e| &e.deployment == name) {
                edit(&mut plan, &mut problems, name, route, true);
            }
        } else {
            missing.push(name.clone());
        }
    }
    if !missing.is_empty() {
        problems.push(DesiredCondition::not_ready(
            "DeploymentNotFound",
            format!(
                "vpc-dns Deployment(s) not found in {}: {}",
                snapshot.namespace,
                missing.join(", ")
            ),
        ));
    }
    plan.vpc_dns = vpc_dns;
    plan.condition = match problems.into_iter().next() {
        Some(problem) => problem,
        None => DesiredCondition::ready(
            "Programmed",
            format!(
                "clusterset.local forwarded to {}; route {route} on {}",
                route.dst,
                plan.deployments.join(", ")
            ),
        ),
    };
    plan
}

fn dedupe(edits: &mut Vec<DeploymentEdit>) {
    let mut seen = BTreeSet::new();
    edits.retain(|e| seen.insert(e.deployment.clone()));
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;
    use multivpc_api::{
        VpcDnsForwardSpec, VpcDnsForwardStatus,
        foreign::kubeovn::{SubnetSpec, VpcDnsSpec, VpcDnsStatus, VpcSpec},
    };
    use serde_json::json;

    use super::*;

    const COREFILE: &str = ".:53 {\n    forward . /etc/resolv.conf\n}\n";

    fn forward(ns: &str, name: &str, vpc: &str) -> Arc<VpcDnsForward> {
        let mut f = VpcDnsForward::new(name, VpcDnsForwardSpec { vpc: vpc.into() });
        f.metadata.namespace = Some(ns.into());
        Arc::new(f)
    }

    fn vpc_dns(name: &str, vpc: &str, active: bool) -> Arc<VpcDns> {
        let mut d = VpcDns::new(
            name,
            VpcDnsSpec {
                vpc: vpc.into(),
                subnet: "s".into(),
                replicas: None,
                corefile: None,
            },
        );
        d.status = Some(VpcDnsStatus { active });
        Arc::new(d)
    }

    fn deployment(name: &str, script: &str) -> Arc<Deployment> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": "kube-system", "resourceVersion": "1" },
                "spec": { "selector": {}, "template": { "spec": {
                    "initContainers": [{ "name": "init-route", "command": ["sh", "-c", script] }],
                    "containers": [{ "name": "coredns" }]
                }}}
            }))
            .unwrap(),
        )
    }

    fn snapshot() -> Snapshot {
        let svc = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                resource_version: Some("3".into()),
                ..Default::default()
            },
            data: Some([(COREFILE_KEY.to_owned(), COREFILE.to_owned())].into()),
            ..Default::default()
        };
        Snapshot {
            namespace: "kube-system".into(),
            forwards: vec![],
            vpc_dns: vec![
                vpc_dns("dns1", "vpc1", true),
                vpc_dns("dns1b", "vpc1", false),
                vpc_dns("dns2", "vpc2", true),
            ],
            deployments: [
                (
                    "vpc-dns-dns1".to_owned(),
                    deployment(
                        "vpc-dns-dns1",
                        "ip -4 route add 10.96.0.1 via 10.244.0.1 dev net1;",
                    ),
                ),
                ("vpc-dns-dns2".to_owned(), deployment("vpc-dns-dns2", "")),
            ]
            .into(),
            corefiles: [(
                VPC_DNS_COREFILE.to_owned(),
                CorefileSource::Found(Arc::new(cm)),
            )]
            .into(),
            kube_dns: Some(Arc::new(svc)),
            ovn_default: Some(Arc::new(Subnet::new(
                "ovn-default",
                SubnetSpec {
                    gateway: "10.244.0.1".into(),
                    ..Default::default()
                },
            ))),
            vpcs: [
                ("vpc1", &["ns1", "ns2"][..]),
                ("vpc2", &["ns1", "ns2"]),
                ("vpc3", &["ns1"]),
            ]
            .into_iter()
            .map(|(name, namespaces)| {
                let spec = VpcSpec {
                    namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
                    ..Default::default()
                };
                (name.to_owned(), Arc::new(Vpc::new(name, spec)))
            })
            .collect(),
            tenancy: Tenancy::VpcNamespaces,
        }
    }

    fn default_cm(s: &Snapshot) -> ConfigMap {
        match &s.corefiles[VPC_DNS_COREFILE] {
            CorefileSource::Found(cm) => (**cm).clone(),
            other => panic!("{other:?}"),
        }
    }

    fn set_default_cm(s: &mut Snapshot, cm: ConfigMap) {
        s.corefiles
            .insert(VPC_DNS_COREFILE.into(), CorefileSource::Found(Arc::new(cm)));
    }

    fn only_edit(p: &Plan) -> &CorefileEdit {
        assert_eq!(p.corefiles.len(), 1, "{:?}", p.corefiles);
        &p.corefiles[0]
    }

    const ROUTE: Route = Route {
        dst: Ipv4Addr::new(10, 96, 0, 10),
        gw: Ipv4Addr::new(10, 244, 0, 1),
    };

    #[test]
    fn first_forward_programs_route_and_corefile() {
        let mut s = snapshot();
        let f = forward("ns1", "dns-1", "vpc1");
        s.forwards.push(f.clone());
        let p = plan(&f, &s, false);
        assert!(p.condition.status.is_true(), "{:?}", p.condition);
        assert_eq!(p.vpc_dns, ["dns1"], "inactive VpcDns ignored");
        assert_eq!(p.deployments, ["vpc-dns-dns1"]);
        assert_eq!(p.edits.len(), 1);
        assert!(p.edits[0].adds && p.edits[0].deployment == "vpc-dns-dns1");
        let edit = only_edit(&p);
        let (text, rv) = (edit.text.clone(), edit.resource_version.clone());
        assert!(text.starts_with(COREFILE) && text.contains("forward . 10.96.0.10"));
        assert_eq!(rv.as_deref(), Some("3"));
    }

    /// Kube-OVN marks a VpcDns it refused active too (every release up to v1.16): the second
    /// VpcDns of vpc1 has no Deployment and must not keep the forward from being Programmed.
    #[test]
    fn an_active_vpc_dns_kube_ovn_refused_is_ignored() {
        let mut s = snapshot();
        s.vpc_dns.push(vpc_dns("dns1c", "vpc1", true));
        let f = forward("ns1", "dns-1", "vpc1");
        s.forwards.push(f.clone());
        let p = plan(&f, &s, false);
        assert!(p.condition.status.is_true(), "{:?}", p.condition);
        assert_eq!(p.vpc_dns, ["dns1"]);
        assert_eq!(p.deployments, ["vpc-dns-dns1"]);
        // While none of the VPC's active VpcDns has a Deployment, the forward waits for them.
        s.deployments.remove("vpc-dns-dns1");
        let p = plan(&f, &s, false);
        assert_eq!(p.condition.reason, "DeploymentNotFound");
        assert!(
            p.condition.message.contains("vpc-dns-dns1, vpc-dns-dns1c"),
            "{}",
            p.condition.message
        );
    }

    /// Kube-OVN v1.16: a VpcDns names its own Corefile ConfigMap; the section goes there (and
    /// only there), and leaves with the last forward whose VpcDns mounts it.
    #[test]
    fn a_vpc_dns_with_its_own_corefile_gets_the_section_there() {
        let mut s = snapshot();
        let mut d = (*s.vpc_dns[2]).clone();
        d.spec.corefile = Some("vpc2-corefile".into());
        s.vpc_dns[2] = Arc::new(d);
        let f1 = forward("ns1", "a", "vpc1");
        let f2 = forward("ns2", "b", "vpc2");
        s.forwards = vec![f1.clone(), f2.clone()];

        let p = plan(&f2, &s, false);
        assert_eq!(p.condition.reason, "CorefileMissing");
        assert!(
            p.condition.message.contains("kube-system/vpc2-corefile"),
            "{}",
            p.condition.message
        );
        assert!(p.corefiles.is_empty());
        s.corefiles.insert(
            "vpc2-corefile".into(),
            CorefileSource::Unreadable("not granted".into()),
        );
        assert_eq!(plan(&f2, &s, false).condition.reason, "CorefileUnreadable");

        let mut own = default_cm(&s);
        own.metadata.resource_version = Some("8".into());
        s.corefiles.insert(
            "vpc2-corefile".into(),
            CorefileSource::Found(Arc::new(own.clone())),
        );
        let p = plan(&f2, &s, false);
        assert!(p.condition.status.is_true(), "{:?}", p.condition);
        let edit = only_edit(&p);
        assert_eq!(edit.configmap, "vpc2-corefile");
        assert_eq!(edit.resource_version.as_deref(), Some("8"));
        assert_eq!(p.corefile_configmaps, ["vpc2-corefile"]);

        // Both Corefiles carry the section; deleting f2 removes it from its own only.
        let with_section = |mut cm: ConfigMap| {
            cm.data = Some(
                [(
                    COREFILE_KEY.to_owned(),
                    corefile::ensure(COREFILE, ROUTE.dst).unwrap(),
                )]
                .into(),
            );
            Arc::new(cm)
        };
        let default = (*with_section(default_cm(&s))).clone();
        set_default_cm(&mut s, default);
        s.corefiles.insert(
            "vpc2-corefile".into(),
            CorefileSource::Found(with_section(own)),
        );
        let p = plan(&f2, &s, true);
        let edit = only_edit(&p);
        assert_eq!(edit.configmap, "vpc2-corefile");
        assert_eq!(edit.text, COREFILE, "removal is byte-exact");
        // Deleting f1: vpc2's VpcDns does not mount the default, so the default loses it.
        let p = plan(&f1, &s, true);
        assert_eq!(only_edit(&p).configmap, VPC_DNS_COREFILE);
    }

    #[test]
    fn missing_inputs_name_the_reason() {
        let f = forward("ns1", "dns-1", "vpc3");
        let mut s = snapshot();
        assert_eq!(plan(&f, &s, false).condition.reason, "VpcDnsNotFound");
        s.kube_dns = None;
        assert_eq!(plan(&f, &s, false).condition.reason, "KubeDnsNotFound");
        let mut s = snapshot();
        s.corefiles
            .insert(VPC_DNS_COREFILE.into(), CorefileSource::Missing);
        assert_eq!(
            plan(&forward("ns1", "a", "vpc1"), &s, false)
                .condition
                .reason,
            "CorefileMissing"
        );
        let mut s = snapshot();
        s.deployments.clear();
        let p = plan(&forward("ns1", "a", "vpc1"), &s, false);
        assert_eq!(p.condition.reason, "DeploymentNotFound");
        assert!(p.edits.is_empty());
    }

    #[test]
    fn shared_route_is_removed_only_with_the_last_forward() {
        let mut s = snapshot();
        s.deployments.insert(
            "vpc-dns-dns1".into(),
            deployment(
                "vpc-dns-dns1",
                "ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1;",
            ),
        );
        let mut with_section = default_cm(&s);
        with_section.data = Some(
            [(
                COREFILE_KEY.to_owned(),
                corefile::ensure(COREFILE, ROUTE.dst).unwrap(),
            )]
            .into(),
        );
        set_default_cm(&mut s, with_section);
        let a = forward("ns1", "a", "vpc1");
        let b = forward("ns2", "b", "vpc1");
        s.forwards = vec![a.clone(), b.clone()];
        let p = plan(&a, &s, true);
        assert!(p.edits.is_empty(), "b still wants the route: {:?}", p.edits);
        assert!(p.corefiles.is_empty(), "b still wants the section");

        s.forwards = vec![a.clone()];
        let p = plan(&a, &s, true);
        assert_eq!(p.edits.len(), 1);
        assert!(!p.edits[0].adds);
        assert_eq!(
            only_edit(&p).text,
            COREFILE,
            "last forward removes the section exactly"
        );
    }

    #[test]
    fn a_forward_changes_only_the_dns_of_a_vpc_that_admits_its_namespace() {
        let mut s = snapshot();
        s.deployments.insert(
            "vpc-dns-dns1".into(),
            deployment(
                "vpc-dns-dns1",
                "ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1;",
            ),
        );
        let mut with_section = default_cm(&s);
        with_section.data = Some(
            [(
                COREFILE_KEY.to_owned(),
                corefile::ensure(COREFILE, ROUTE.dst).unwrap(),
            )]
            .into(),
        );
        set_default_cm(&mut s, with_section);
        // ns3/x was programmed, then vpc1 stopped admitting ns3 (it never admitted ns3 here).
        let mut outsider = (*forward("ns3", "x", "vpc1")).clone();
        outsider.status = Some(VpcDnsForwardStatus {
            deployments: vec!["vpc-dns-dns1".into()],
            corefiles: vec![VPC_DNS_COREFILE.into()],
            route: Some(ROUTE.to_string()),
            ..Default::default()
        });
        let outsider = Arc::new(outsider);
        s.forwards = vec![outsider.clone()];
        let p = plan(&outsider, &s, false);
        assert_eq!(p.condition.reason, NAMESPACE_NOT_ADMITTED);
        assert!(
            p.condition
                .message
                .contains("VPC vpc1 does not admit namespace ns3"),
            "{}",
            p.condition.message
        );
        assert_eq!(p.edits.len(), 1);
        assert!(!p.edits[0].adds, "the route is withdrawn");
        assert_eq!(only_edit(&p).text, COREFILE, "and the section");
        assert_eq!(
            p.deployments,
            ["vpc-dns-dns1"],
            "status names it until removed"
        );

        // It keeps nothing alive for others: the last admitted forward's deletion removes all.
        let insider = forward("ns1", "a", "vpc1");
        s.forwards = vec![outsider.clone(), insider.clone()];
        let p = plan(&insider, &s, true);
        assert_eq!(p.edits.len(), 1, "{:?}", p.edits);
        assert_eq!(only_edit(&p).text, COREFILE);
        // And it never removes what an admitted forward wants.
        let p = plan(&outsider, &s, false);
        assert!(p.edits.is_empty() && p.corefiles.is_empty(), "{p:?}");
        assert_eq!(p.condition.reason, NAMESPACE_NOT_ADMITTED);

        // Tenancy "any": administrators alone create forwards.
        s.tenancy = Tenancy::Any;
        assert!(plan(&outsider, &s, false).condition.status.is_true());
    }

    #[test]
    fn moving_to_another_vpc_moves_the_route() {
        let mut s = snapshot();
        s.deployments.insert(
            "vpc-dns-dns1".into(),
            deployment(
                "vpc-dns-dns1",
                "ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1;",
            ),
        );
        let mut moved = (*forward("ns1", "a", "vpc2")).clone();
        moved.status = Some(VpcDnsForwardStatus {
            deployments: vec!["vpc-dns-dns1".into()],
            route: Some(ROUTE.to_string()),
            ..Default::default()
        });
        let moved = Arc::new(moved);
        s.forwards = vec![moved.clone()];
        let p = plan(&moved, &s, false);
        let summary: Vec<(&str, bool)> = p
            .edits
            .iter()
            .map(|e| (e.deployment.as_str(), e.adds))
            .collect();
        assert_eq!(summary, [("vpc-dns-dns1", false), ("vpc-dns-dns2", true)]);
        assert_eq!(p.deployments, ["vpc-dns-dns2"]);
    }

    #[test]
    fn new_kube_dns_ip_replaces_the_old_route_first() {
        let mut s = snapshot();
        s.deployments.insert(
            "vpc-dns-dns1".into(),
            deployment(
                "vpc-dns-dns1",
                "ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1;",
            ),
        );
        let mut svc = (*s.kube_dns.clone().unwrap()).clone();
        svc.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.99".into());
        s.kube_dns = Some(Arc::new(svc));
        let mut f = (*forward("ns1", "a", "vpc1")).clone();
        f.status = Some(VpcDnsForwardStatus {
            deployments: vec!["vpc-dns-dns1".into()],
            route: Some(ROUTE.to_string()),
            ..Default::default()
        });
        let p = plan(&f, &s, false);
        assert_eq!(p.edits.len(), 1, "one edit per deployment per reconcile");
        assert!(!p.edits[0].adds && p.edits[0].route == ROUTE);
        assert!(only_edit(&p).text.contains("forward . 10.96.0.99"));
    }

    #[test]
    fn every_active_vpc_dns_of_the_vpc_gets_the_route() {
        let mut s = snapshot();
        s.vpc_dns.push(vpc_dns("dns1c", "vpc1", true));
        s.deployments
            .insert("vpc-dns-dns1c".into(), deployment("vpc-dns-dns1c", ""));
        let f = forward("ns1", "a", "vpc1");
        s.forwards = vec![f.clone()];
        let p = plan(&f, &s, false);
        assert_eq!(p.vpc_dns, ["dns1", "dns1c"]);
        assert_eq!(p.deployments, ["vpc-dns-dns1", "vpc-dns-dns1c"]);
        let edited: Vec<&str> = p.edits.iter().map(|e| e.deployment.as_str()).collect();
        assert_eq!(edited, ["vpc-dns-dns1", "vpc-dns-dns1c"]);
    }

    #[test]
    fn steady_state_plans_nothing() {
        let mut s = snapshot();
        s.deployments.insert(
            "vpc-dns-dns1".into(),
            deployment(
                "vpc-dns-dns1",
                "ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1;",
            ),
        );
        let mut cm = default_cm(&s);
        cm.data = Some(
            [(
                COREFILE_KEY.to_owned(),
                corefile::ensure(COREFILE, ROUTE.dst).unwrap(),
            )]
            .into(),
        );
        set_default_cm(&mut s, cm);
        let f = forward("ns1", "a", "vpc1");
        s.forwards = vec![f.clone()];
        let p = plan(&f, &s, false);
        assert!(p.edits.is_empty() && p.corefiles.is_empty());
        assert!(p.condition.status.is_true());
    }
}
