//! `kubectl multivpc show`: the fleet as one cluster sees it, built purely from lists of objects
//! so that the same view is printed as a table, JSON or YAML, and unit-tested without a cluster.
//!
//! The JSON/YAML field names are a stable interface (docs/kubectl-multivpc.md lists them);
//! rename nothing without saying so there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use multivpc_api::{
    GatewayExIp, VpcNatTunnel, conditions,
    foreign::kubeovn::VpcNatGateway,
    gateway::{self, KubeOvn},
    keys::{LABEL_ACTIVE_GATEWAY, LABEL_CLUSTER, SUBMARINER_CLUSTER_ID, gateway_exip_name},
};
use serde::Serialize;

/// Where the cluster ID the view is built for came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterIdSource {
    /// `--cluster-id`.
    Flag,
    /// `submariner-operator/service-discovery` `spec.clusterID`.
    ServiceDiscovery,
    /// Neither: own and imported objects, and active gateways, cannot be told apart.
    Unknown,
}

/// This cluster's Submariner cluster ID and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterId {
    pub id: Option<String>,
    pub source: ClusterIdSource,
}

impl ClusterId {
    /// The flag's value, else ServiceDiscovery's (blank counts as absent), else unknown.
    pub fn resolve(flag: Option<&str>, service_discovery: Option<&str>) -> Self {
        let given = |v: Option<&str>| {
            v.map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if let Some(id) = given(flag) {
            return Self {
                id: Some(id),
                source: ClusterIdSource::Flag,
            };
        }
        if let Some(id) = given(service_discovery) {
            return Self {
                id: Some(id),
                source: ClusterIdSource::ServiceDiscovery,
            };
        }
        Self {
            id: None,
            source: ClusterIdSource::Unknown,
        }
    }
}

/// What [`build`] reads: everything listed from the cluster, unfiltered.
pub struct Inputs<'a> {
    pub cluster_id: ClusterId,
    pub kube_ovn: &'a KubeOvn,
    /// Every VpcNatGateway (cluster-scoped).
    pub gateways: &'a [VpcNatGateway],
    /// The NAT gateway pods of the Kube-OVN namespace.
    pub pods: &'a [Pod],
    /// The VpcNatTunnels shown (one namespace or all).
    pub tunnels: &'a [VpcNatTunnel],
    /// The GatewayExIps of the gateway namespace.
    pub exips: &'a [GatewayExIp],
    pub now: jiff::Timestamp,
}

/// The whole view; serialized as is for `-o json|yaml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    /// This cluster's Submariner cluster ID; null when unknown.
    pub cluster_id: Option<String>,
    /// `flag`, `service-discovery` or `unknown`.
    pub cluster_id_source: ClusterIdSource,
    pub gateways: Vec<GatewayRow>,
    pub tunnels: Vec<TunnelRow>,
    pub broker_sync: Vec<ExIpRow>,
}

/// One VpcNatGateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRow {
    pub name: String,
    pub vpc: String,
    /// Its pod (a Ready one when there are several); null when it has none.
    pub pod: Option<String>,
    /// The pod is Running, Ready and not being deleted.
    pub ready: bool,
    /// net1's address as Kube-OVN IPAM recorded it on the pod.
    pub external_ip: Option<String>,
    /// `spec.lanIp`, where the VPC's static routes point.
    pub lan_ip: Option<String>,
    /// Its own GatewayExIp names it as the active instance.
    pub active: bool,
    /// Gateways whose own GatewayExIp names this one as their active instance (failovers).
    pub standby_for: Vec<String>,
    /// One word or phrase: `active`, `standby for X`, `failed over to Y`, `unpublished`, or
    /// `unknown (cluster ID unknown)`.
    pub role: String,
}

/// A condition's status and reason, as the tunnel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// One VpcNatTunnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelRow {
    pub namespace: String,
    pub name: String,
    /// `gre` or `vxlan`.
    #[serde(rename = "type")]
    pub tunnel_type: String,
    /// `none` or `ipsec` (`spec.encryption`).
    pub encryption: String,
    /// `status.localGateway` (after a failover, the standby), else `spec.natGwDp`.
    pub local_gateway: String,
    pub remote_cluster: String,
    pub remote_gateway: String,
    /// The Ready condition; null before tunnel-manager reported one.
    pub ready: Option<ConditionView>,
    /// The Healthy condition; null before tunnel-manager reported one.
    pub healthy: Option<ConditionView>,
    /// `status.health.rtt.average`, e.g. `0.412ms`.
    pub rtt_average: Option<String>,
    /// `status.health.lossPercent`.
    pub loss_percent: Option<u32>,
}

/// Whether a GatewayExIp is this cluster's own or a copy imported from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Published by this cluster (exported to the broker).
    Own,
    /// A copy of another cluster's object (`submariner-io/clusterID` names that cluster).
    Imported,
    /// Neither can be told: no labels saying so, or this cluster's ID is unknown.
    Unknown,
}

/// One GatewayExIp of the gateway namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExIpRow {
    pub name: String,
    pub origin: Origin,
    /// The cluster the gateway belongs to (`submariner-io/clusterID`, else
    /// `multivpc.kubeovn.ustc.io/cluster`).
    pub cluster: Option<String>,
    pub external_ip: String,
    pub globalnet_cidr: String,
    /// Entries of `spec.tunnels`: tunnel addresses the far ends probe.
    pub tunnel_addresses: usize,
    /// `metadata.creationTimestamp` (RFC 3339).
    pub created: Option<String>,
    /// Its age as kubectl prints ages (`45s`, `12m`, `3h`, `5d`).
    pub age: Option<String>,
}

/// The view of `inputs`: gateways, tunnels and GatewayExIps sorted by name.
pub fn build(inputs: &Inputs<'_>) -> FleetView {
    let cluster = inputs.cluster_id.id.as_deref();
    let mut gateways: Vec<GatewayRow> = inputs
        .gateways
        .iter()
        .map(|gw| gateway_row(inputs, gw))
        .collect();
    gateways.sort_by(|a, b| a.name.cmp(&b.name));

    let mut tunnels: Vec<TunnelRow> = inputs.tunnels.iter().map(tunnel_row).collect();
    tunnels.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut broker_sync: Vec<ExIpRow> = inputs
        .exips
        .iter()
        .map(|e| exip_row(e, cluster, inputs.now))
        .collect();
    broker_sync.sort_by(|a, b| a.name.cmp(&b.name));

    FleetView {
        cluster_id: inputs.cluster_id.id.clone(),
        cluster_id_source: inputs.cluster_id.source,
        gateways,
        tunnels,
        broker_sync,
    }
}

fn gateway_row(inputs: &Inputs<'_>, gw: &VpcNatGateway) -> GatewayRow {
    let name = gw.name_any();
    // A gateway's pods: a Ready one first, so a pod being replaced does not hide the live one.
    let mut pods: Vec<&Pod> = inputs
        .pods
        .iter()
        .filter(|p| inputs.kube_ovn.gateway_of(p).as_deref() == Some(name.as_str()))
        .collect();
    pods.sort_by_key(|p| (!gateway::pod_ready(p), p.name_any()));
    let pod = pods.first().copied();
    let (active, standby_for, role) = match inputs.cluster_id.id.as_deref() {
        None => (false, Vec::new(), "unknown (cluster ID unknown)".to_owned()),
        Some(cluster) => role_of(&name, cluster, inputs.exips),
    };
    GatewayRow {
        vpc: gw.spec.vpc.clone(),
        pod: pod.map(|p| p.name_any()),
        ready: pod.is_some_and(gateway::pod_ready),
        external_ip: pod.and_then(|p| gateway::external_ip(p).ok().map(|ip| ip.to_string())),
        lan_ip: Some(gw.spec.lan_ip.clone()).filter(|ip| !ip.is_empty()),
        active,
        standby_for,
        role,
        name,
    }
}

/// Whether `gateway` is active, whom it stands in for, and the role in words, from this
/// cluster's own GatewayExIps (their `active-gateway` label, which exip-syncer sets).
fn role_of(gateway: &str, cluster: &str, exips: &[GatewayExIp]) -> (bool, Vec<String>, String) {
    let own_of = |gw: &str| {
        let name = gateway_exip_name(gw, cluster);
        exips.iter().find(|e| {
            e.name_any() == name
                && e.labels().get(LABEL_CLUSTER).map(String::as_str) == Some(cluster)
        })
    };
    let active_label = |e: &GatewayExIp| e.labels().get(LABEL_ACTIVE_GATEWAY).cloned();
    let own = own_of(gateway);
    let active = own.and_then(active_label).as_deref() == Some(gateway);
    let mut standby_for: Vec<String> = exips
        .iter()
        .filter(|e| e.labels().get(LABEL_CLUSTER).map(String::as_str) == Some(cluster))
        .filter(|e| {
            e.labels()
                .get(SUBMARINER_CLUSTER_ID)
                .is_none_or(|c| c == cluster)
        })
        .filter(|e| active_label(e).as_deref() == Some(gateway))
        .filter_map(|e| e.labels().get(multivpc_api::keys::LABEL_GATEWAY).cloned())
        .filter(|gw| gw != gateway && own_of(gw).is_some())
        .collect();
    standby_for.sort();
    standby_for.dedup();
    let mut words = Vec::new();
    if active {
        words.push("active".to_owned());
    } else if let Some(other) = own.and_then(active_label) {
        words.push(format!("failed over to {other}"));
    }
    if !standby_for.is_empty() {
        words.push(format!("standby for {}", standby_for.join(", ")));
    }
    if words.is_empty() {
        words.push(if own.is_some() {
            "unpublished (no active-gateway label)".to_owned()
        } else {
            "unpublished".to_owned()
        });
    }
    (active, standby_for, words.join("; "))
}

fn condition(t: &VpcNatTunnel, type_: &str) -> Option<ConditionView> {
    let c = conditions::find(&t.status.as_ref()?.conditions, type_)?;
    Some(ConditionView {
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    })
}

fn tunnel_row(t: &VpcNatTunnel) -> TunnelRow {
    let status = t.status.as_ref();
    let health = status.and_then(|s| s.health.as_ref());
    TunnelRow {
        namespace: t.namespace().unwrap_or_default(),
        name: t.name_any(),
        tunnel_type: t.spec.tunnel_type.to_string(),
        encryption: t.spec.encryption.to_string(),
        local_gateway: status
            .and_then(|s| s.local_gateway.clone())
            .unwrap_or_else(|| t.spec.nat_gw_dp.clone()),
        remote_cluster: t.spec.cluster_id.clone(),
        remote_gateway: t.spec.gateway_name.clone(),
        ready: condition(t, conditions::READY),
        healthy: condition(t, conditions::HEALTHY),
        rtt_average: health
            .and_then(|h| h.rtt.as_ref())
            .map(|r| r.average.clone()),
        loss_percent: health.map(|h| h.loss_percent),
    }
}

fn exip_row(e: &GatewayExIp, cluster: Option<&str>, now: jiff::Timestamp) -> ExIpRow {
    let labels = e.labels();
    let submariner = labels.get(SUBMARINER_CLUSTER_ID).filter(|c| !c.is_empty());
    let origin = match (cluster, submariner) {
        (Some(me), Some(from)) if from != me => Origin::Imported,
        (None, Some(_)) => Origin::Imported,
        (Some(me), _) if e.is_own(me) => Origin::Own,
        _ => Origin::Unknown,
    };
    let created = e.metadata.creation_timestamp.as_ref().map(|t| t.0);
    ExIpRow {
        name: e.name_any(),
        origin,
        cluster: submariner.or_else(|| labels.get(LABEL_CLUSTER)).cloned(),
        external_ip: e.spec.externalip.clone(),
        globalnet_cidr: e.spec.globalnetcidr.clone(),
        tunnel_addresses: e.spec.tunnels.len(),
        created: created.map(|t| t.to_string()),
        age: created.map(|t| age(t, now)),
    }
}

/// An age as kubectl prints it, coarsely: seconds under 2 minutes, then minutes, hours, days.
pub fn age(since: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = (now.as_second() - since.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The view as three aligned tables, each under a heading.
pub fn render_table(view: &FleetView) -> String {
    let dash = |v: Option<&str>| v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
    let cond = |c: &Option<ConditionView>| match c {
        Some(c) if c.reason.is_empty() => c.status.clone(),
        Some(c) => format!("{} ({})", c.status, c.reason),
        None => "-".to_owned(),
    };
    let mut out = String::new();
    match (&view.cluster_id, view.cluster_id_source) {
        (Some(id), ClusterIdSource::Flag) => out.push_str(&format!("Cluster: {id} (--cluster-id)\n")),
        (Some(id), _) => out.push_str(&format!("Cluster: {id} (ServiceDiscovery)\n")),
        (None, _) => out.push_str(
            "Cluster: unknown (no --cluster-id and no ServiceDiscovery clusterID): own and imported GatewayExIps and active gateways cannot be told apart\n",
        ),
    }

    out.push_str("\nGATEWAYS\n");
    let mut rows = vec![strings(&[
        "NAME",
        "VPC",
        "POD",
        "READY",
        "EXTERNAL IP",
        "LAN IP",
        "ROLE",
    ])];
    rows.extend(view.gateways.iter().map(|g| {
        vec![
            g.name.clone(),
            dash(Some(&g.vpc)),
            dash(g.pod.as_deref()),
            if g.ready { "True" } else { "False" }.to_owned(),
            dash(g.external_ip.as_deref()),
            dash(g.lan_ip.as_deref()),
            g.role.clone(),
        ]
    }));
    out.push_str(&align(&rows));

    out.push_str("\nTUNNELS\n");
    let mut rows = vec![strings(&[
        "NAMESPACE",
        "NAME",
        "TYPE",
        "LOCAL GW",
        "REMOTE",
        "READY",
        "HEALTHY",
        "RTT",
        "LOSS",
    ])];
    rows.extend(view.tunnels.iter().map(|t| {
        vec![
            t.namespace.clone(),
            t.name.clone(),
            match t.encryption.as_str() {
                "none" => t.tunnel_type.clone(),
                encryption => format!("{}+{encryption}", t.tunnel_type),
            },
            t.local_gateway.clone(),
            format!("{}/{}", t.remote_cluster, t.remote_gateway),
            cond(&t.ready),
            cond(&t.healthy),
            dash(t.rtt_average.as_deref()),
            t.loss_percent.map_or("-".to_owned(), |l| format!("{l}%")),
        ]
    }));
    out.push_str(&align(&rows));

    out.push_str("\nBROKER SYNC (GatewayExIps)\n");
    let mut rows = vec![strings(&[
        "NAME",
        "ORIGIN",
        "CLUSTER",
        "EXTERNAL IP",
        "GLOBALNET CIDR",
        "TUNNELS",
        "AGE",
    ])];
    rows.extend(view.broker_sync.iter().map(|e| {
        vec![
            e.name.clone(),
            match e.origin {
                Origin::Own => "own (exported)",
                Origin::Imported => "imported",
                Origin::Unknown => "unknown",
            }
            .to_owned(),
            dash(e.cluster.as_deref()),
            dash(Some(&e.external_ip)),
            dash(Some(&e.globalnet_cidr)),
            e.tunnel_addresses.to_string(),
            dash(e.age.as_deref()),
        ]
    }));
    out.push_str(&align(&rows));
    out
}

fn strings(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Rows as columns padded to their widest cell (three spaces apart, as kubectl's tables), or
/// a note when there is nothing under the header.
fn align(rows: &[Vec<String>]) -> String {
    if rows.len() <= 1 {
        return "(none)\n".to_owned();
    }
    let mut widths: BTreeMap<usize, usize> = BTreeMap::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = widths.entry(i).or_default();
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i < last {
                let pad = widths[&i] - cell.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-12-07T12:00:00Z".parse().unwrap()
    }

    fn gateway(name: &str, vpc: &str, lan_ip: &str) -> VpcNatGateway {
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "VpcNatGateway",
            "metadata": {"name": name},
            "spec": {"vpc": vpc, "subnet": "s", "lanIp": lan_ip},
        }))
        .unwrap()
    }

    fn pod(gateway: &str, ready: bool, external_ip: &str) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("vpc-nat-gw-{gateway}-0"), "namespace": "kube-system",
                "labels": {"ovn.kubernetes.io/vpc-nat-gw": "true", "app": format!("vpc-nat-gw-{gateway}")},
                "annotations": {
                    "ovn.kubernetes.io/vpc_nat_gw": gateway,
                    "k8s.v1.cni.cncf.io/networks": "kube-system/ovn-vpc-external-network",
                    "ovn-vpc-external-network.kube-system.kubernetes.io/ip_address": external_ip,
                },
            },
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn exip(name: &str, labels: serde_json::Value, tunnels: usize) -> GatewayExIp {
        let tunnels: Vec<_> = (0..tunnels)
            .map(|i| json!({"clusterId": "c9", "gatewayName": format!("g{i}"), "interfaceAddr": "10.9.0.1/24"}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
            "metadata": {"name": name, "namespace": "kube-system", "labels": labels,
                         "creationTimestamp": "2026-12-07T11:55:00Z"},
            "spec": {"externalip": "172.50.0.1", "globalnetcidr": "242.1.0.0/16", "tunnels": tunnels},
        }))
        .unwrap()
    }

    fn tunnel(ns: &str, name: &str, status: serde_json::Value) -> VpcNatTunnel {
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterId": "c2", "gatewayName": "rgw", "interfaceAddr": "10.250.0.1/24",
                     "natGwDp": "gw1", "type": "vxlan"},
            "status": status,
        }))
        .unwrap()
    }

    fn view(cluster: Option<&str>, exips: &[GatewayExIp], tunnels: &[VpcNatTunnel]) -> FleetView {
        let kube_ovn = KubeOvn::default();
        let gateways = [
            gateway("gw1", "vpc1", "10.1.0.254"),
            gateway("gw2", "vpc1", "10.1.0.253"),
            gateway("gw3", "vpc3", ""),
        ];
        let pods = [
            pod("gw1", false, "172.50.1.11"),
            pod("gw2", true, "172.50.1.12"),
        ];
        build(&Inputs {
            cluster_id: ClusterId::resolve(cluster, None),
            kube_ovn: &kube_ovn,
            gateways: &gateways,
            pods: &pods,
            tunnels,
            exips,
            now: now(),
        })
    }

    fn own(gw: &str, active: &str) -> GatewayExIp {
        exip(
            &format!("{gw}-c1"),
            json!({LABEL_CLUSTER: "c1", multivpc_api::keys::LABEL_GATEWAY: gw, LABEL_ACTIVE_GATEWAY: active}),
            0,
        )
    }

    #[test]
    fn the_cluster_id_comes_from_the_flag_then_service_discovery() {
        assert_eq!(
            ClusterId::resolve(Some("a"), Some("b")),
            ClusterId {
                id: Some("a".into()),
                source: ClusterIdSource::Flag
            }
        );
        assert_eq!(
            ClusterId::resolve(Some(" "), Some("b")),
            ClusterId {
                id: Some("b".into()),
                source: ClusterIdSource::ServiceDiscovery
            }
        );
        assert_eq!(
            ClusterId::resolve(None, Some("")),
            ClusterId {
                id: None,
                source: ClusterIdSource::Unknown
            }
        );
    }

    #[test]
    fn gateways_show_their_pod_addresses_and_role() {
        // gw1 failed over to gw2; gw2 is active for itself too; gw3 publishes nothing.
        let exips = [own("gw1", "gw2"), own("gw2", "gw2")];
        let v = view(Some("c1"), &exips, &[]);
        let names: Vec<_> = v.gateways.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["gw1", "gw2", "gw3"]);
        let (gw1, gw2, gw3) = (&v.gateways[0], &v.gateways[1], &v.gateways[2]);
        assert_eq!(gw1.pod.as_deref(), Some("vpc-nat-gw-gw1-0"));
        assert!(!gw1.ready);
        assert_eq!(gw1.external_ip.as_deref(), Some("172.50.1.11"));
        assert_eq!(gw1.lan_ip.as_deref(), Some("10.1.0.254"));
        assert!(!gw1.active);
        assert_eq!(gw1.role, "failed over to gw2");
        assert!(gw2.ready && gw2.active);
        assert_eq!(gw2.standby_for, ["gw1"]);
        assert_eq!(gw2.role, "active; standby for gw1");
        assert_eq!((gw3.pod.as_deref(), gw3.lan_ip.as_deref()), (None, None));
        assert_eq!(gw3.role, "unpublished");

        // An imported copy naming gw2 active is another cluster's business.
        let imported = exip(
            "gw1-c2",
            json!({LABEL_CLUSTER: "c2", multivpc_api::keys::LABEL_GATEWAY: "gw1",
                   LABEL_ACTIVE_GATEWAY: "gw2", SUBMARINER_CLUSTER_ID: "c2"}),
            0,
        );
        let v = view(Some("c1"), &[imported], &[]);
        assert_eq!(v.gateways[1].role, "unpublished");
        assert!(v.gateways[1].standby_for.is_empty());

        let v = view(None, &[own("gw1", "gw1")], &[]);
        assert_eq!(v.gateways[0].role, "unknown (cluster ID unknown)");
    }

    #[test]
    fn tunnels_show_conditions_and_health() {
        let healthy = tunnel(
            "ns1",
            "t1",
            json!({
                "localGateway": "gw2",
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Programmed", "message": "m",
                     "lastTransitionTime": "2026-12-07T11:00:00Z"},
                    {"type": "Healthy", "status": "True", "reason": "Answering", "message": "ok",
                     "lastTransitionTime": "2026-12-07T11:00:00Z"},
                ],
                "health": {"target": "10.250.0.2", "window": 10, "lossPercent": 0,
                           "rtt": {"last": "0.1ms", "min": "0.1ms", "average": "0.2ms", "max": "0.3ms"},
                           "lastProbeTime": "2026-12-07T11:59:58Z"},
            }),
        );
        let fresh = tunnel("ns0", "t0", json!({}));
        let v = view(Some("c1"), &[], &[healthy, fresh]);
        assert_eq!(v.tunnels[0].name, "t0", "sorted by namespace/name");
        let t0 = &v.tunnels[0];
        assert_eq!((t0.ready.as_ref(), t0.healthy.as_ref()), (None, None));
        assert_eq!(
            t0.local_gateway, "gw1",
            "spec.natGwDp before status says otherwise"
        );
        let t1 = &v.tunnels[1];
        assert_eq!(t1.local_gateway, "gw2");
        assert_eq!(t1.tunnel_type, "vxlan");
        assert_eq!(
            (t1.remote_cluster.as_str(), t1.remote_gateway.as_str()),
            ("c2", "rgw")
        );
        assert_eq!(t1.ready.as_ref().unwrap().reason, "Programmed");
        assert_eq!(t1.healthy.as_ref().unwrap().status, "True");
        assert_eq!(t1.rtt_average.as_deref(), Some("0.2ms"));
        assert_eq!(t1.loss_percent, Some(0));

        assert_eq!(t1.encryption, "none");

        let table = render_table(&v);
        assert!(table.contains("True (Answering)"), "{table}");
        assert!(table.contains("c2/rgw"), "{table}");
        assert!(!table.contains("+"), "{table}");
        // An encrypted tunnel says so in the type column.
        let mut encrypted = tunnel("ns2", "t2", json!({}));
        encrypted.spec.encryption = multivpc_api::Encryption::Ipsec;
        let v = view(Some("c1"), &[], &[encrypted]);
        assert_eq!(v.tunnels[0].encryption, "ipsec");
        assert!(render_table(&v).contains("vxlan+ipsec"));
    }

    #[test]
    fn broker_sync_tells_own_objects_from_imported_copies() {
        let exips = [
            own("gw1", "gw1"),
            exip(
                "rgw-c2",
                json!({LABEL_CLUSTER: "c2", multivpc_api::keys::LABEL_GATEWAY: "rgw", SUBMARINER_CLUSTER_ID: "c2"}),
                2,
            ),
            exip("hand-made", json!({}), 0),
        ];
        let v = view(Some("c1"), &exips, &[]);
        let rows: Vec<_> = v
            .broker_sync
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.origin,
                    r.cluster.as_deref(),
                    r.tunnel_addresses,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("gw1-c1", Origin::Own, Some("c1"), 0),
                ("hand-made", Origin::Unknown, None, 0),
                ("rgw-c2", Origin::Imported, Some("c2"), 2),
            ]
        );
        assert_eq!(v.broker_sync[0].age.as_deref(), Some("5m"));
        assert_eq!(
            v.broker_sync[0].created.as_deref(),
            Some("2026-12-07T11:55:00Z")
        );

        // Without a cluster ID only the broker's label can say where a copy came from.
        let v = view(None, &exips, &[]);
        assert_eq!(v.broker_sync[0].origin, Origin::Unknown);
        assert_eq!(v.broker_sync[2].origin, Origin::Imported);
        assert!(render_table(&v).contains("Cluster: unknown"));
    }

    #[test]
    fn json_field_names_are_the_documented_ones() {
        let v = view(
            Some("c1"),
            &[own("gw1", "gw1")],
            &[tunnel("ns", "t", json!({}))],
        );
        let j = serde_json::to_value(&v).unwrap();
        let keys = |o: &serde_json::Value| {
            let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&j),
            [
                "brokerSync",
                "clusterId",
                "clusterIdSource",
                "gateways",
                "tunnels"
            ]
        );
        assert_eq!(j["clusterIdSource"], "flag");
        assert_eq!(
            keys(&j["gateways"][0]),
            [
                "active",
                "externalIp",
                "lanIp",
                "name",
                "pod",
                "ready",
                "role",
                "standbyFor",
                "vpc"
            ]
        );
        assert_eq!(
            keys(&j["tunnels"][0]),
            [
                "encryption",
                "healthy",
                "localGateway",
                "lossPercent",
                "name",
                "namespace",
                "ready",
                "remoteCluster",
                "remoteGateway",
                "rttAverage",
                "type"
            ]
        );
        assert_eq!(
            keys(&j["brokerSync"][0]),
            [
                "age",
                "cluster",
                "created",
                "externalIp",
                "globalnetCidr",
                "name",
                "origin",
                "tunnelAddresses"
            ]
        );
        assert_eq!(j["brokerSync"][0]["origin"], "own");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let t = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        assert_eq!(age(t(0), t(59)), "59s");
        assert_eq!(age(t(0), t(600)), "10m");
        assert_eq!(age(t(0), t(3 * 3600)), "3h");
        assert_eq!(age(t(0), t(3 * 86400)), "3d");
        assert_eq!(age(t(10), t(0)), "0s", "clock skew is no negative age");
    }
}
