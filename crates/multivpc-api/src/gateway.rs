//! Kube-OVN's VPC NAT gateways as every controller sees them: which pod is gateway X's, whether
//! it is ready, and its addresses. One place, so exip-syncer (which publishes a gateway) and
//! tunnel-manager (which programs it) never disagree about the same pod.
//!
//! Facts from Kube-OVN v1.12–v1.16 (`pkg/controller/vpc_nat_gateway.go`, `pkg/util`):
//! - The StatefulSet is `<natGwNamePrefix>-<gateway>` in Kube-OVN's own namespace; its pods
//!   carry the labels `app=<prefix>-<gateway>` and `ovn.kubernetes.io/vpc-nat-gw=true` and the
//!   annotation `ovn.kubernetes.io/vpc_nat_gw=<gateway>`. The prefix is `vpc-nat-gw` unless
//!   `ovn-vpc-nat-config` sets `natGwNamePrefix` (v1.13+).
//! - net1 is the Multus attachment `<nad namespace>/<nad>` the pod's
//!   `k8s.v1.cni.cncf.io/networks` names. Up to v1.13 the NAD is `externalSubnets[0]` in
//!   Kube-OVN's namespace; since v1.14 it comes from the external Subnet's `spec.provider`, so it
//!   may live anywhere. IPAM writes the address under the provider's key:
//!   `<nad>.<ns>.kubernetes.io/ip_address`, or `<nad>.<ns>.ovn.kubernetes.io/…` when the NAD is
//!   of type kube-ovn. Dual-stack values are `v4,v6`.
//!
//! Reading the attachment and the address from the pod itself (rather than rebuilding the key
//! from the VpcNatGateway and its Subnet) follows what Kube-OVN actually did to that pod, in
//! every version, and needs no read of Subnets.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::net::parse_ipv4;

/// Pod label Kube-OVN puts on every VPC NAT gateway pod.
pub const LABEL_VPC_NAT_GW: &str = "ovn.kubernetes.io/vpc-nat-gw";
/// Pod annotation naming the VpcNatGateway a NAT gateway pod belongs to.
pub const ANNOTATION_VPC_NAT_GW: &str = "ovn.kubernetes.io/vpc_nat_gw";
/// Pod annotation set by Kube-OVN IPAM: the gateway of the pod's VPC subnet.
pub const ANNOTATION_OVN_GATEWAY: &str = "ovn.kubernetes.io/gateway";
/// Multus' annotation listing a pod's extra attachments (the first is a gateway's net1).
pub const ANNOTATION_NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// Container of a VPC NAT gateway pod that carries the network tools.
pub const NAT_GW_CONTAINER: &str = "vpc-nat-gw";
/// Kube-OVN's default `natGwNamePrefix`.
pub const DEFAULT_NAT_GW_NAME_PREFIX: &str = "vpc-nat-gw";
/// Kube-OVN's default namespace (its controller's `POD_NAMESPACE`).
pub const DEFAULT_KUBE_OVN_NAMESPACE: &str = "kube-system";
/// Default NetworkAttachmentDefinition of the NAT gateways' external network.
pub const DEFAULT_EXTERNAL_NAD: &str = "ovn-vpc-external-network";

/// Where this cluster's Kube-OVN keeps its NAT gateways and how it names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeOvn {
    /// Kube-OVN's namespace: NAT gateway pods, vpc-dns Deployments and their Corefiles.
    pub namespace: String,
    /// `natGwNamePrefix`: StatefulSets are `<prefix>-<gateway>`.
    pub nat_gw_name_prefix: String,
}

impl Default for KubeOvn {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_KUBE_OVN_NAMESPACE.into(),
            nat_gw_name_prefix: DEFAULT_NAT_GW_NAME_PREFIX.into(),
        }
    }
}

impl KubeOvn {
    /// Label selector of every NAT gateway pod (for watches).
    pub fn pod_selector() -> String {
        format!("{LABEL_VPC_NAT_GW}=true")
    }

    /// The StatefulSet (and `app` label) of gateway `gateway`.
    pub fn statefulset_name(&self, gateway: &str) -> String {
        format!("{}-{gateway}", self.nat_gw_name_prefix)
    }

    /// The VpcNatGateway `pod` belongs to, when it is a NAT gateway pod of this Kube-OVN (in
    /// its namespace, labelled as one): the `ovn.kubernetes.io/vpc_nat_gw` annotation, else the
    /// `app=<prefix>-<gateway>` label.
    pub fn gateway_of(&self, pod: &Pod) -> Option<String> {
        if pod.namespace().as_deref() != Some(self.namespace.as_str())
            || pod.labels().get(LABEL_VPC_NAT_GW).map(String::as_str) != Some("true")
        {
            return None;
        }
        if let Some(name) = pod.annotations().get(ANNOTATION_VPC_NAT_GW) {
            return Some(name.clone()).filter(|n| !n.is_empty());
        }
        pod.labels()
            .get("app")
            .and_then(|app| app.strip_prefix(self.nat_gw_name_prefix.as_str()))
            .and_then(|rest| rest.strip_prefix('-'))
            .filter(|gw| !gw.is_empty())
            .map(str::to_owned)
    }
}

/// Whether a pod is Running and Ready and not being deleted.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .as_ref()
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
}

/// The first IPv4 address of a Kube-OVN address annotation (`v4`, `v6,v4`, `v4,v6`).
pub fn first_ipv4(value: &str) -> Option<Ipv4Addr> {
    value.split(',').find_map(|v| parse_ipv4(v.trim()).ok())
}

/// The IPv4 gateway of the pod's VPC subnet (`ovn.kubernetes.io/gateway`).
pub fn ovn_gateway(pod: &Pod) -> Option<Ipv4Addr> {
    pod.annotations()
        .get(ANNOTATION_OVN_GATEWAY)
        .and_then(|v| first_ipv4(v))
}

/// Pod annotation set by Kube-OVN IPAM: the CIDR of the pod's VPC subnet.
pub const ANNOTATION_OVN_CIDR: &str = "ovn.kubernetes.io/cidr";

/// The IPv4 CIDR of the pod's VPC subnet (`ovn.kubernetes.io/cidr`, first IPv4 of a dual-stack
/// value).
pub fn vpc_cidr(pod: &Pod) -> Option<crate::net::Ipv4Cidr> {
    pod.annotations()
        .get(ANNOTATION_OVN_CIDR)?
        .split(',')
        .find_map(|c| c.trim().parse().ok())
}

/// net1's attachment: the NetworkAttachmentDefinition a gateway pod's Multus annotation names
/// first (`ns/name`, `name`, `name@if`, or the JSON list form). A bare name is in the pod's
/// namespace. Kube-OVN's default when the annotation is absent or unreadable.
pub fn external_attachment(pod: &Pod) -> Attachment {
    let pod_ns = pod
        .namespace()
        .unwrap_or_else(|| DEFAULT_KUBE_OVN_NAMESPACE.into());
    let default = Attachment {
        nad: DEFAULT_EXTERNAL_NAD.into(),
        namespace: pod_ns.clone(),
    };
    let Some(value) = pod.annotations().get(ANNOTATION_NETWORKS) else {
        return default;
    };
    let value = value.trim();
    if value.starts_with('[') {
        #[derive(serde::Deserialize)]
        struct Selection {
            name: String,
            namespace: Option<String>,
        }
        return serde_json::from_str::<Vec<Selection>>(value)
            .ok()
            .and_then(|v| v.into_iter().next())
            .filter(|s| !s.name.is_empty())
            .map(|s| Attachment {
                nad: s.name,
                namespace: s.namespace.unwrap_or(pod_ns),
            })
            .unwrap_or(default);
    }
    let first = value.split(',').next().unwrap_or_default().trim();
    let first = first.split('@').next().unwrap_or(first);
    match first.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Attachment {
            nad: name.into(),
            namespace: ns.into(),
        },
        None if !first.is_empty() => Attachment {
            nad: first.into(),
            namespace: pod_ns,
        },
        _ => default,
    }
}

/// A NetworkAttachmentDefinition, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub nad: String,
    pub namespace: String,
}

impl Attachment {
    /// The annotation keys IPAM may have written net1's address under, in the order they are
    /// tried: provider `<nad>.<ns>` (macvlan and other NADs), then `<nad>.<ns>.ovn` (a NAD of
    /// type kube-ovn).
    pub fn ip_address_keys(&self) -> [String; 2] {
        let provider = format!("{}.{}", self.nad, self.namespace);
        [
            format!("{provider}.kubernetes.io/ip_address"),
            format!("{provider}.ovn.kubernetes.io/ip_address"),
        ]
    }
}

/// net1's IPv4 address as Kube-OVN IPAM recorded it on the pod, or why there is none (a
/// sentence naming the keys looked at).
pub fn external_ip(pod: &Pod) -> Result<Ipv4Addr, String> {
    let keys = external_attachment(pod).ip_address_keys();
    let annotations = pod.annotations();
    for key in &keys {
        if let Some(value) = annotations.get(key) {
            return first_ipv4(value)
                .ok_or_else(|| format!("annotation {key} holds no IPv4 address"));
        }
    }
    Err(format!("no {} annotation (external IP) yet", keys[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": ns, "labels": labels, "annotations": annotations},
        }))
        .unwrap()
    }

    #[test]
    fn a_gateway_pod_is_known_by_its_annotation_else_its_app_label() {
        let kube_ovn = KubeOvn::default();
        let gw = json!({"ovn.kubernetes.io/vpc-nat-gw": "true", "app": "vpc-nat-gw-a"});
        assert_eq!(
            kube_ovn.gateway_of(&pod("kube-system", gw.clone(), json!({}))),
            Some("a".into())
        );
        assert_eq!(
            kube_ovn.gateway_of(&pod(
                "kube-system",
                gw.clone(),
                json!({"ovn.kubernetes.io/vpc_nat_gw": "b"})
            )),
            Some("b".into()),
            "the annotation names the VpcNatGateway whatever the prefix"
        );
        assert_eq!(
            kube_ovn.gateway_of(&pod("default", gw.clone(), json!({}))),
            None
        );
        assert_eq!(
            kube_ovn.gateway_of(&pod(
                "kube-system",
                json!({"app": "vpc-nat-gw-a"}),
                json!({})
            )),
            None,
            "not labelled as a NAT gateway"
        );
        let custom = KubeOvn {
            namespace: "kube-ovn".into(),
            nat_gw_name_prefix: "natgw".into(),
        };
        let labels = json!({"ovn.kubernetes.io/vpc-nat-gw": "true", "app": "natgw-a"});
        assert_eq!(
            custom.gateway_of(&pod("kube-ovn", labels.clone(), json!({}))),
            Some("a".into())
        );
        assert_eq!(
            kube_ovn.gateway_of(&pod("kube-ovn", labels, json!({}))),
            None
        );
        assert_eq!(custom.statefulset_name("a"), "natgw-a");
        assert_eq!(
            custom.gateway_of(&pod(
                "kube-ovn",
                json!({"ovn.kubernetes.io/vpc-nat-gw": "true", "app": "natgwx-a"}),
                json!({})
            )),
            None,
            "the prefix ends at its dash"
        );
    }

    #[test]
    fn networks_annotation_forms() {
        let at = |v: &str| {
            let a = external_attachment(&pod(
                "kube-system",
                json!({}),
                json!({ANNOTATION_NETWORKS: v}),
            ));
            (a.nad, a.namespace)
        };
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(at("infra/ext"), pair("ext", "infra"));
        assert_eq!(at("ext"), pair("ext", "kube-system"));
        assert_eq!(at("infra/ext@net1, other/x"), pair("ext", "infra"));
        assert_eq!(
            at(r#"[{"name":"ext","namespace":"infra","interface":"net1"}]"#),
            pair("ext", "infra")
        );
        assert_eq!(at(r#"[{"name":"ext"}]"#), pair("ext", "kube-system"));
        for bad in ["", "/", "[bad json", "[]", "infra/"] {
            assert_eq!(
                at(bad),
                pair(DEFAULT_EXTERNAL_NAD, "kube-system"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_external_ip_follows_the_provider_kube_ovn_wrote() {
        let ip = |networks: &str, key: &str, value: &str| {
            external_ip(&pod(
                "kube-system",
                json!({}),
                json!({ANNOTATION_NETWORKS: networks, key: value}),
            ))
        };
        let v4 = |s: &str| Ok(s.parse::<Ipv4Addr>().unwrap());
        // v1.12–v1.13 and the documented default.
        assert_eq!(
            ip(
                "kube-system/ovn-vpc-external-network",
                "ovn-vpc-external-network.kube-system.kubernetes.io/ip_address",
                "172.18.0.11"
            ),
            v4("172.18.0.11")
        );
        // v1.14+: a provider from the external Subnet in another namespace.
        assert_eq!(
            ip(
                "infra/macvlan-ext",
                "macvlan-ext.infra.kubernetes.io/ip_address",
                "10.9.0.5"
            ),
            v4("10.9.0.5")
        );
        // A NAD of type kube-ovn: provider <nad>.<ns>.ovn.
        assert_eq!(
            ip(
                "infra/ext",
                "ext.infra.ovn.kubernetes.io/ip_address",
                "10.9.0.6"
            ),
            v4("10.9.0.6")
        );
        // Dual stack, either order.
        assert_eq!(
            ip(
                "infra/ext",
                "ext.infra.kubernetes.io/ip_address",
                "fd00::5,10.9.0.7"
            ),
            v4("10.9.0.7")
        );
        assert!(
            ip("infra/ext", "ext.infra.kubernetes.io/ip_address", "fd00::5")
                .unwrap_err()
                .contains("no IPv4")
        );
        // The key of another attachment is not net1's.
        let err = ip(
            "infra/ext",
            "ovn-vpc-external-network.kube-system.kubernetes.io/ip_address",
            "10.9.0.8",
        )
        .unwrap_err();
        assert!(err.contains("ext.infra.kubernetes.io/ip_address"), "{err}");
    }

    #[test]
    fn readiness_needs_running_ready_and_not_deleting() {
        let mut p: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        assert!(pod_ready(&p));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(!pod_ready(&p));
        p.metadata.deletion_timestamp = None;
        p.status.as_mut().unwrap().phase = Some("Pending".into());
        assert!(!pod_ready(&p));
        assert_eq!(
            first_ipv4(" 10.0.0.1 , fd00::1"),
            Some("10.0.0.1".parse().unwrap())
        );
    }
}
