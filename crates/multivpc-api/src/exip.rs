//! `GatewayExIp`: the published endpoint of a VPC NAT gateway, exchanged between clusters through
//! the Submariner broker. Created and owned by exip-syncer only.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::{
    keys::{LABEL_CLUSTER, LABEL_GATEWAY, SUBMARINER_CLUSTER_ID},
    net::{IPV4_CIDR_PATTERN, IPV4_PATTERN},
};

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

impl GatewayExIp {
    fn label(&self, key: &str) -> Option<&str> {
        kube::ResourceExt::labels(self).get(key).map(String::as_str)
    }

    /// Whether cluster `cluster_id` publishes this object itself (its cluster label is that
    /// cluster, and it is no copy of another cluster's object from the broker).
    pub fn is_own(&self, cluster_id: &str) -> bool {
        self.label(LABEL_CLUSTER) == Some(cluster_id)
            && self
                .label(SUBMARINER_CLUSTER_ID)
                .is_none_or(|c| c == cluster_id)
    }

    /// Whether its labels say it describes gateway `gateway` of cluster `cluster_id` (its name
    /// alone can be read more than one way: `a-b-c` is `a-b` of `c` or `a` of `b-c`).
    pub fn describes(&self, gateway: &str, cluster_id: &str) -> bool {
        self.label(LABEL_GATEWAY) == Some(gateway) && self.label(LABEL_CLUSTER) == Some(cluster_id)
    }

    /// Whether it is the copy exip-syncer imported of cluster `cluster_id`'s object for
    /// `gateway` (Submariner's clusterID label and exip-syncer's labels agree).
    pub fn is_copy_of(&self, gateway: &str, cluster_id: &str) -> bool {
        self.describes(gateway, cluster_id) && self.label(SUBMARINER_CLUSTER_ID) == Some(cluster_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_labels(labels: &[(&str, &str)]) -> GatewayExIp {
        let mut o = GatewayExIp::new(
            "a-b-c",
            GatewayExIpSpec {
                externalip: "172.50.0.1".into(),
                globalnetcidr: "242.1.0.0/16".into(),
            },
        );
        o.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        o
    }

    #[test]
    fn ownership_is_read_from_labels_not_names() {
        let own = with_labels(&[(LABEL_CLUSTER, "c"), (LABEL_GATEWAY, "a-b")]);
        assert!(own.is_own("c") && own.describes("a-b", "c"));
        assert!(!own.describes("a", "b-c") && !own.is_own("b-c"));
        let copy = with_labels(&[
            (LABEL_CLUSTER, "c"),
            (LABEL_GATEWAY, "a-b"),
            (SUBMARINER_CLUSTER_ID, "c"),
        ]);
        assert!(copy.is_copy_of("a-b", "c") && !copy.is_own("x"));
        // Claims to be x's own object but came through the broker from c.
        let forged = with_labels(&[(LABEL_CLUSTER, "x"), (SUBMARINER_CLUSTER_ID, "c")]);
        assert!(!forged.is_own("x"));
        assert!(!with_labels(&[]).is_copy_of("a-b", "c"));
    }
}
