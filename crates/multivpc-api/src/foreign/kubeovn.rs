//! Kube-OVN `kubeovn.io/v1` resources (all cluster-scoped).

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// A Kube-OVN VPC: its static routes (failover repoints them) and the namespaces it admits
/// (see [`crate::tenancy`]).
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "Vpc",
    plural = "vpcs",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VpcSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_routes: Vec<StaticRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// One static route of a VPC's logical router. Fields not modelled (ecmpMode, bfdId, …) are
/// kept in `other` so a patch that rewrites the list does not lose them.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default)]
    pub cidr: String,
    #[serde(default, rename = "nextHopIP")]
    pub next_hop_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A Kube-OVN subnet; `ovn-default` gives the gateway vpc-dns routes through.
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "Subnet",
    plural = "subnets",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    /// Gateway address(es); comma-separated when dual stack.
    #[serde(default)]
    pub gateway: String,
    /// CIDR block(s); comma-separated when dual stack.
    #[serde(default)]
    pub cidr_block: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

impl SubnetSpec {
    /// The IPv4 gateway, whether the subnet is single or dual stack.
    pub fn ipv4_gateway(&self) -> Option<std::net::Ipv4Addr> {
        self.gateway
            .split(',')
            .find_map(|g| g.trim().parse::<std::net::Ipv4Addr>().ok())
    }
}

/// A Kube-OVN VpcDns: one vpc-dns Deployment serving a VPC.
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "VpcDns",
    plural = "vpc-dnses",
    status = "VpcDnsStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VpcDnsSpec {
    #[serde(default)]
    pub vpc: String,
    #[serde(default)]
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The ConfigMap (in Kube-OVN's namespace, key `Corefile`) the vpc-dns Deployment mounts;
    /// Kube-OVN v1.16+, whose CRD defaults it to `vpc-dns-corefile`. Older versions always
    /// mount `vpc-dns-corefile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corefile: Option<String>,
}

impl VpcDns {
    /// Name of the Corefile ConfigMap this VpcDns's Deployment mounts.
    pub fn corefile_configmap(&self) -> &str {
        self.spec
            .corefile
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or(crate::keys::VPC_DNS_COREFILE)
    }
}

/// Status of a VpcDns. Kube-OVN deploys one VpcDns per VPC, but its `active` is also true for
/// one it refused (which then has no Deployment): dns-forwarder trusts it only together with the
/// Deployment.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
pub struct VpcDnsStatus {
    #[serde(default)]
    pub active: bool,
}

/// A Kube-OVN VPC NAT gateway (StatefulSet `vpc-nat-gw-<name>` in kube-system).
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "VpcNatGateway",
    plural = "vpc-nat-gateways",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VpcNatGatewaySpec {
    #[serde(default)]
    pub vpc: String,
    #[serde(default)]
    pub subnet: String,
    /// The gateway's address in the VPC subnet; static routes point at it.
    #[serde(default)]
    pub lan_ip: String,
    /// External subnets; the first names the NetworkAttachmentDefinition of net1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_subnets: Vec<String>,
}
