//! `VpcDnsForward`: lets pods of a Kube-OVN custom VPC resolve Submariner's `clusterset.local`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::net::OBJECT_NAME_PATTERN;

/// Desired state: forward `clusterset.local` queries of the VPC's vpc-dns to the cluster DNS.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, schemars::JsonSchema)]
#[kube(
    group = "kubeovn.ustc.io",
    version = "v1",
    kind = "VpcDnsForward",
    namespaced,
    status = "VpcDnsForwardStatus",
    shortname = "vdf",
    category = "multivpc",
    derive = "PartialEq",
    doc = "Forwards clusterset.local (Submariner Lighthouse) queries from a Kube-OVN VPC's vpc-dns to the cluster DNS, adding the route vpc-dns needs to reach it.",
    printcolumn(
        name = "VPC",
        type_ = "string",
        json_path = ".spec.vpc",
        description = "Kube-OVN VPC whose vpc-dns forwards"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether forwarding is programmed"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VpcDnsForwardSpec {
    /// Name of the Kube-OVN Vpc whose active VpcDns deployments get the forward and route.
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub vpc: String,
}

/// Observed state of a VpcDnsForward.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcDnsForwardStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions; `Ready` tells whether forwarding is programmed, and if not, why (reason).
    /// A list-map keyed by `type`: server-side apply merges conditions per type, so a condition
    /// another writer sets is kept beside ours, and one type appears at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// VpcDns objects serving the VPC that were programmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpc_dns: Vec<String>,

    /// Corefile ConfigMaps (in Kube-OVN's namespace) that carry the clusterset.local section
    /// for this forward: `vpc-dns-corefile`, or what a VpcDns names in `spec.corefile`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corefiles: Vec<String>,

    /// vpc-dns Deployments (in Kube-OVN's namespace) that carry the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<String>,

    /// The route programmed, e.g. `10.96.0.10 via 10.244.0.1 dev net1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}
