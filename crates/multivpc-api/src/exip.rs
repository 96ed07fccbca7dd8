//! `GatewayExIp`: the published endpoint of a VPC NAT gateway, exchanged between clusters through
//! the Submariner broker. Created and owned by exip-syncer only.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::net::{IPV4_CIDR_PATTERN, IPV4_PATTERN};

/// Where a VPC NAT gateway can be reached and which Globalnet CIDR lies behind it.
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, schemars::JsonSchema,
)]
#[kube(
    group = "kubeovn.ustc.io",
    version = "v1",
    kind = "GatewayExIp",
    namespaced,
    shortname = "gwexip",
    category = "multivpc",
    derive = "PartialEq",
    doc = "Endpoint of a Kube-OVN VPC NAT gateway published for other clusters; named <gateway>-<clusterId>. Written by exip-syncer, not by hand.",
    printcolumn(
        name = "External IP",
        type_ = "string",
        json_path = ".spec.externalip",
        description = "Gateway address on the external network"
    ),
    printcolumn(
        name = "Globalnet CIDR",
        type_ = "string",
        json_path = ".spec.globalnetcidr",
        description = "Submariner Globalnet CIDR of the gateway's cluster"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct GatewayExIpSpec {
    /// IPv4 address of the gateway on the external (underlay) network, its net1 address.
    #[schemars(regex(pattern = IPV4_PATTERN))]
    pub externalip: String,

    /// Submariner Globalnet CIDR of the gateway's cluster, e.g. 242.1.0.0/16.
    #[schemars(regex(pattern = IPV4_CIDR_PATTERN))]
    pub globalnetcidr: String,
}
