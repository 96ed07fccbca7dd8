//! What the controller knows about each VPC NAT gateway, built from the cached
//! `VpcNatGateway` objects and their pods. Pure: no API calls.

use std::{borrow::Borrow, collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use multivpc_api::{
    TunnelAddress, VpcNatTunnel, conditions,
    exip::MAX_TUNNEL_ADDRESSES,
    foreign::kubeovn::VpcNatGateway,
    gateway::{KubeOvn, external_ip, pod_ready},
    net::Ipv4Cidr,
};

/// One VPC NAT gateway and the state of its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub name: String,
    pub vpc: String,
    pub subnet: String,
    /// `spec.lanIp`, when it is an IPv4 address.
    pub lan_ip: Option<Ipv4Addr>,
    /// The pod's external-network address, when its pod is ready.
    pub external_ip: Option<Ipv4Addr>,
    /// A pod of the gateway exists, is not terminating and is Ready.
    pub ready: bool,
    /// No pod of the gateway exists, or every one is terminating: it is not coming back as it
    /// was (a StatefulSet's new pod starts from its init again), unlike a pod merely not Ready.
    pub pod_gone: bool,
    /// Every tunnel it carries whose health is known is Healthy=False, or it was failed over
    /// for that within the hold-down ([`unhealthy`]): no use as a carrier or a standby.
    pub tunnels_failing: bool,
}

impl Gateway {
    /// Ready and fully addressed: it can carry traffic and be published.
    pub fn available(&self) -> bool {
        self.ready && self.lan_ip.is_some() && self.external_ip.is_some()
    }

    /// Available and its tunnels not all failing: fit to carry a VPC's traffic.
    pub fn serviceable(&self) -> bool {
        self.available() && !self.tunnels_failing
    }
}

/// Joins gateways and their pods, as [`KubeOvn::gateway_of`] pairs them.
pub fn gateways(
    gws: &[impl Borrow<VpcNatGateway>],
    pods: &[impl Borrow<Pod>],
    kube_ovn: &KubeOvn,
) -> BTreeMap<String, Gateway> {
    let mut by_gateway: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        let pod = pod.borrow();
        if let Some(gw) = kube_ovn.gateway_of(pod) {
            by_gateway.entry(gw).or_default().push(pod);
        }
    }
    gws.iter()
        .map(|gw| {
            let gw = gw.borrow();
            let name = gw.name_any();
            let ready_pod = by_gateway
                .get(&name)
                .and_then(|pods| pods.iter().find(|p| pod_ready(p)));
            let gateway = Gateway {
                vpc: gw.spec.vpc.clone(),
                subnet: gw.spec.subnet.clone(),
                lan_ip: gw.spec.lan_ip.trim().parse().ok(),
                external_ip: ready_pod.and_then(|p| external_ip(p).ok()),
                ready: ready_pod.is_some(),
                pod_gone: by_gateway.get(&name).is_none_or(|pods| {
                    pods.iter().all(|p| p.metadata.deletion_timestamp.is_some())
                }),
                tunnels_failing: false,
                name: name.clone(),
            };
            (name, gateway)
        })
        .collect()
}

/// The gateway instances whose tunnels all fail: each has at least one programmed (Ready=True),
/// live tunnel whose Healthy condition is known, and every such tunnel is Healthy=False.
/// Tunnels still being probed (Unknown) count for neither side; a tunnel is on the instance its
/// status names (`status.localGateway`, which follows a failover), else its `natGwDp`. A tunnel
/// failing for mismatched IPsec keys counts as working: the far end's packets reach this
/// gateway, and another gateway would hold the same keys.
pub fn unhealthy(tunnels: &[impl Borrow<VpcNatTunnel>]) -> std::collections::BTreeSet<String> {
    let mut by_instance: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in tunnels.iter().map(Borrow::borrow) {
        let Some(status) = t.status.as_ref() else {
            continue;
        };
        if t.metadata.deletion_timestamp.is_some()
            || !conditions::is_true(&status.conditions, conditions::READY)
        {
            continue;
        }
        let Some(healthy) = conditions::find(&status.conditions, conditions::HEALTHY) else {
            continue;
        };
        let instance = status
            .local_gateway
            .clone()
            .unwrap_or_else(|| t.spec.nat_gw_dp.clone());
        let entry = by_instance.entry(instance).or_default();
        match healthy.status.as_str() {
            "True" => entry.0 += 1,
            "False" if healthy.reason == conditions::IPSEC_AUTHENTICATION_FAILED => entry.0 += 1,
            "False" => entry.1 += 1,
            _ => {}
        }
    }
    by_instance
        .into_iter()
        .filter(|(_, (up, down))| *up == 0 && *down > 0)
        .map(|(instance, _)| instance)
        .collect()
}

/// The tunnel addresses each gateway (by `natGwDp`) publishes: those of its live tunnels that
/// tunnel-manager programmed (Ready=True: it checked tenancy and conflicts first), one per far
/// end (the earliest created when several name the same one), in order, at most
/// [`MAX_TUNNEL_ADDRESSES`].
pub fn tunnel_addresses(
    tunnels: &[impl Borrow<VpcNatTunnel>],
) -> BTreeMap<String, Vec<TunnelAddress>> {
    let mut live: Vec<&VpcNatTunnel> = tunnels
        .iter()
        .map(Borrow::borrow)
        .filter(|t| t.metadata.deletion_timestamp.is_none())
        .filter(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, conditions::READY))
        })
        .filter(|t| {
            t.spec
                .interface_addr
                .parse::<Ipv4Cidr>()
                .is_ok_and(|c| c.require_host().is_ok())
        })
        .collect();
    live.sort_by_key(|t| {
        (
            t.metadata.creation_timestamp.clone().map(|c| c.0),
            t.namespace(),
            t.name_any(),
        )
    });
    let mut by_gateway: BTreeMap<String, BTreeMap<(String, String), String>> = BTreeMap::new();
    for t in live {
        by_gateway
            .entry(t.spec.nat_gw_dp.clone())
            .or_default()
            .entry((t.spec.cluster_id.clone(), t.spec.gateway_name.clone()))
            .or_insert_with(|| t.spec.interface_addr.clone());
    }
    by_gateway
        .into_iter()
        .map(|(gw, ends)| {
            let list = ends
                .into_iter()
                .take(MAX_TUNNEL_ADDRESSES)
                .map(
                    |((cluster_id, gateway_name), interface_addr)| TunnelAddress {
                        cluster_id,
                        gateway_name,
                        interface_addr,
                    },
                )
                .collect();
            (gw, list)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn gw(name: &str, vpc: &str, lan: &str, ext: Option<&str>) -> Gateway {
        Gateway {
            name: name.into(),
            vpc: vpc.into(),
            subnet: format!("{vpc}-subnet"),
            lan_ip: lan.parse().ok(),
            external_ip: ext.and_then(|e| e.parse().ok()),
            ready: ext.is_some(),
            pod_gone: false,
            tunnels_failing: false,
        }
    }

    fn nat_gw(name: &str, ext: Option<&str>) -> VpcNatGateway {
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "VpcNatGateway",
            "metadata": {"name": name},
            "spec": {"vpc": "v1", "subnet": "s1", "lanIp": "10.1.0.254",
                     "externalSubnets": ext.map(|e| vec![e]).unwrap_or_default()},
        }))
        .unwrap()
    }

    fn pod(gw: &str, ready: bool, terminating: bool, annotations: serde_json::Value) -> Pod {
        let mut meta = json!({
            "name": format!("vpc-nat-gw-{gw}-0"), "namespace": "kube-system",
            "labels": {"app": format!("vpc-nat-gw-{gw}"), "ovn.kubernetes.io/vpc-nat-gw": "true"},
            "annotations": annotations,
        });
        if terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    #[test]
    fn joins_pods_by_label_or_annotation_and_reads_the_nad_address() {
        let gws = vec![
            nat_gw("a", None),
            nat_gw("b", Some("ext2")),
            nat_gw("c", None),
        ];
        let pods = vec![
            pod(
                "a",
                true,
                false,
                json!({"ovn-vpc-external-network.kube-system.kubernetes.io/ip_address": "172.50.0.2"}),
            ),
            // Label says x, annotation says b: the annotation wins.
            {
                let mut p = pod(
                    "x",
                    true,
                    false,
                    json!({"ext2.kube-system.kubernetes.io/ip_address": "172.50.0.3",
                           "k8s.v1.cni.cncf.io/networks": "kube-system/ext2",
                           "ovn.kubernetes.io/vpc_nat_gw": "b"}),
                );
                p.metadata.name = Some("other".into());
                p
            },
            pod(
                "c",
                true,
                true,
                json!({"ovn-vpc-external-network.kube-system.kubernetes.io/ip_address": "172.50.0.4"}),
            ),
        ];
        let m = gateways(&gws, &pods, &KubeOvn::default());
        assert_eq!(m["a"].external_ip, Some("172.50.0.2".parse().unwrap()));
        assert!(m["a"].available());
        assert_eq!(m["b"].external_ip, Some("172.50.0.3".parse().unwrap()));
        assert!(!m["c"].ready, "a terminating pod is not ready");
        assert!(!m["c"].available());
        assert!(m["c"].pod_gone, "its only pod is terminating");
        assert!(!m["a"].pod_gone && !m["b"].pod_gone);
        assert_eq!(m["a"].lan_ip, Some("10.1.0.254".parse().unwrap()));
    }

    #[test]
    fn unready_pod_or_missing_annotation_is_unavailable() {
        let gws = vec![nat_gw("a", None), nat_gw("b", None)];
        let pods = vec![
            pod("a", false, false, json!({})),
            pod("b", true, false, json!({})),
        ];
        let m = gateways(&gws, &pods, &KubeOvn::default());
        assert!(!m["a"].ready && !m["a"].pod_gone, "not Ready, but there");
        assert!(m["b"].ready && !m["b"].available(), "no external IP yet");
        let none: Vec<Pod> = vec![];
        assert!(gateways(&gws, &none, &KubeOvn::default())["a"].pod_gone);
    }

    #[test]
    fn an_instance_is_unhealthy_when_every_tunnel_whose_health_is_known_fails() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        use multivpc_api::{VpcNatTunnelSpec, VpcNatTunnelStatus};
        let cond = |type_: &str, status: &str| Condition {
            type_: type_.into(),
            status: status.split_once(':').map_or(status, |(s, _)| s).into(),
            reason: status.split_once(':').map_or("R", |(_, r)| r).into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        };
        let tunnel =
            |name: &str, gw: &str, local: Option<&str>, ready: &str, healthy: Option<&str>| {
                let mut t = VpcNatTunnel::new(
                    name,
                    VpcNatTunnelSpec {
                        encryption: Default::default(),
                        cluster_id: "c2".into(),
                        gateway_name: "r".into(),
                        interface_addr: "10.100.0.1/24".into(),
                        nat_gw_dp: gw.into(),
                        tunnel_type: Default::default(),
                        vni: None,
                        dst_port: None,
                        mtu: None,
                    },
                );
                let mut conditions = vec![cond("Ready", ready)];
                conditions.extend(healthy.map(|h| cond("Healthy", h)));
                t.status = Some(VpcNatTunnelStatus {
                    conditions,
                    local_gateway: local.map(Into::into),
                    ..Default::default()
                });
                t
            };
        let tunnels = vec![
            // a: one down, one still probing: unhealthy.
            tunnel("a1", "a", None, "True", Some("False")),
            tunnel("a2", "a", None, "True", Some("Unknown")),
            // b: one down, one up.
            tunnel("b1", "b", None, "True", Some("False")),
            tunnel("b2", "b", None, "True", Some("True")),
            // c: only unknown or unprogrammed ones.
            tunnel("c1", "c", None, "True", Some("Unknown")),
            tunnel("c2", "c", None, "False", Some("False")),
            // d's tunnel moved to e by a failover: it counts for e.
            tunnel("d1", "d", Some("e"), "True", Some("False")),
            // f's far end sends ESP f cannot authenticate: a key problem, not f's.
            tunnel(
                "f1",
                "f",
                None,
                "True",
                Some("False:IPsecAuthenticationFailed"),
            ),
        ];
        let bad = unhealthy(&tunnels);
        assert_eq!(bad.into_iter().collect::<Vec<_>>(), ["a", "e"]);
    }

    #[test]
    fn published_addresses_are_the_programmed_tunnels_one_per_far_end() {
        use multivpc_api::{VpcNatTunnelSpec, VpcNatTunnelStatus};
        let tunnel = |name: &str, gw: &str, to: (&str, &str), addr: &str, ready: bool, age: i64| {
            let mut t = VpcNatTunnel::new(
                name,
                VpcNatTunnelSpec {
                    encryption: Default::default(),
                    cluster_id: to.0.into(),
                    gateway_name: to.1.into(),
                    interface_addr: addr.into(),
                    nat_gw_dp: gw.into(),
                    tunnel_type: Default::default(),
                    vni: None,
                    dst_port: None,
                    mtu: None,
                },
            );
            t.metadata.namespace = Some("ns".into());
            t.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(1_700_000_000 + age).unwrap(),
                ));
            t.status = Some(VpcNatTunnelStatus {
                conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    reason: "Programmed".into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        jiff::Timestamp::UNIX_EPOCH,
                    ),
                }],
                ..Default::default()
            });
            t
        };
        let mut deleting = tunnel("gone", "gw1", ("c4", "gw1"), "10.104.0.1/24", true, 0);
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        let tunnels = vec![
            tunnel("b", "gw1", ("c2", "gw1"), "10.100.0.1/24", true, 2),
            tunnel("a", "gw1", ("c2", "gw1"), "10.101.0.1/24", true, 1),
            tunnel("c", "gw1", ("c3", "gw9"), "10.102.0.1/24", false, 0),
            tunnel("d", "gw2", ("c2", "gw1"), "10.103.0.1/24", true, 0),
            tunnel("e", "gw2", ("c5", "gw1"), "10.105.0.0/24", true, 0),
            deleting,
        ];
        let by_gw = tunnel_addresses(&tunnels);
        let addr = |gw: &str| -> Vec<(String, String)> {
            by_gw[gw]
                .iter()
                .map(|a| (a.cluster_id.clone(), a.interface_addr.clone()))
                .collect()
        };
        // The earliest of two toward the same far end; unready, deleting and network
        // addresses left out.
        assert_eq!(addr("gw1"), vec![("c2".into(), "10.101.0.1/24".into())]);
        assert_eq!(addr("gw2"), vec![("c2".into(), "10.103.0.1/24".into())]);
    }
}
