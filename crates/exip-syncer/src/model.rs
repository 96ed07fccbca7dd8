//! What the controller knows about each VPC NAT gateway, built from the cached
//! `VpcNatGateway` objects and their pods. Pure: no API calls.

use std::{borrow::Borrow, collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use multivpc_api::{
    foreign::kubeovn::VpcNatGateway,
    gateway::{KubeOvn, external_ip, pod_ready},
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
}

impl Gateway {
    /// Ready and fully addressed: it can carry traffic and be published.
    pub fn available(&self) -> bool {
        self.ready && self.lan_ip.is_some() && self.external_ip.is_some()
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
                name: name.clone(),
            };
            (name, gateway)
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
        assert!(!m["a"].ready);
        assert!(m["b"].ready && !m["b"].available(), "no external IP yet");
    }
}
