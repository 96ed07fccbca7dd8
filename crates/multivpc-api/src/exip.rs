//! `GatewayExIp`: the published endpoint of a VPC NAT gateway, exchanged between clusters through
//! the Submariner broker. Created and owned by exip-syncer only.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::{
    keys::{
        EXIP_SYNCER_MANAGER, LABEL_ACTIVE_GATEWAY, LABEL_CLUSTER, LABEL_GATEWAY,
        SUBMARINER_CLUSTER_ID,
    },
    net::{
        DNS_LABEL_PATTERN, INTERFACE_ADDR_PATTERN, IPV4_CIDR_PATTERN, IPV4_PATTERN,
        OBJECT_NAME_PATTERN,
    },
};

/// Tunnel addresses one GatewayExIp publishes at most (exip-syncer publishes the first ones in
/// order; an import carrying more is refused).
pub const MAX_TUNNEL_ADDRESSES: usize = 1024;

/// Where a VPC NAT gateway can be reached and which Globalnet CIDR lies behind it.
#[derive(
    CustomResource,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    schemars::JsonSchema,
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

    /// The addresses of the gateway's programmed tunnels, one per far end: what the far end
    /// probes through the tunnel to tell whether packets cross it. Absent on objects of the
    /// original operator and of a cluster without tunnels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub tunnels: Vec<TunnelAddress>,
}

/// The address of a gateway's tunnel toward one far end (named as a VpcNatTunnel names it).
#[derive(
    Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct TunnelAddress {
    /// Submariner cluster ID of the far end.
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub cluster_id: String,
    /// The far end's VPC NAT gateway (its VpcNatTunnels' natGwDp).
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 52))]
    pub gateway_name: String,
    /// The tunnel device's address on this side, with its prefix (the VpcNatTunnel's
    /// interfaceAddr).
    #[schemars(regex(pattern = INTERFACE_ADDR_PATTERN))]
    pub interface_addr: String,
}

impl TunnelAddress {
    /// The address, when every field is what the schema allows (the entry may come from another
    /// cluster through a broker whose CRD checks nothing): a cluster ID, a gateway name, and a
    /// host address with a /16 to /31 prefix.
    pub fn checked(&self) -> Result<crate::net::Ipv4Cidr, String> {
        let label = |s: &str| s.len() <= 63 && crate::net::is_object_name(s) && !s.contains('.');
        if !label(&self.cluster_id) {
            return Err(format!(
                "clusterId {:?} is not a cluster ID",
                self.cluster_id
            ));
        }
        if !crate::net::is_object_name(&self.gateway_name) || self.gateway_name.len() > 52 {
            return Err(format!(
                "gatewayName {:?} is not a gateway name",
                self.gateway_name
            ));
        }
        let addr: crate::net::Ipv4Cidr = self
            .interface_addr
            .parse()
            .map_err(|e| format!("interfaceAddr: {e}"))?;
        if !(16..=31).contains(&addr.prefix()) {
            return Err(format!(
                "interfaceAddr {addr} has a prefix outside /16 to /31"
            ));
        }
        addr.require_host()
            .map_err(|e| format!("interfaceAddr: {e}"))
    }
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

    /// Ok when exip-syncer alone wrote its spec (managedFields); otherwise the reason, naming
    /// the other writers. Manager names are chosen by the client, so this tells hand-written or
    /// hand-edited objects and leftovers from what exip-syncer wrote; who may write GatewayExIps
    /// at all is RBAC's business.
    pub fn written_by_exip_syncer(&self) -> Result<(), String> {
        match owners(self, &["f:spec"]) {
            (true, others) if others.is_empty() => Ok(()),
            (true, others) => Err(format!(
                "its spec is written by {} too, not by exip-syncer alone",
                others.join(", ")
            )),
            (false, others) if others.is_empty() => {
                Err("exip-syncer did not write it (no managedFields entry)".into())
            }
            (false, others) => Err(format!(
                "exip-syncer did not write it (its spec is managed by {})",
                others.join(", ")
            )),
        }
    }

    /// The address this gateway's tunnel toward gateway `gateway` of cluster `cluster_id` has,
    /// as published (unchecked: see [`crate::net::Ipv4Cidr`] to parse it).
    pub fn tunnel_address_toward(&self, cluster_id: &str, gateway: &str) -> Option<&str> {
        self.spec
            .tunnels
            .iter()
            .find(|t| t.cluster_id == cluster_id && t.gateway_name == gateway)
            .map(|t| t.interface_addr.as_str())
    }

    /// The active gateway instance of a local object (`multivpc.kubeovn.ustc.io/active-gateway`),
    /// when exip-syncer alone set that label and it is an object name.
    pub fn active_gateway(&self) -> Option<&str> {
        let key = format!("f:{LABEL_ACTIVE_GATEWAY}");
        let (ours, others) = owners(self, &["f:metadata", "f:labels", &key]);
        if !ours || !others.is_empty() {
            return None;
        }
        self.label(LABEL_ACTIVE_GATEWAY)
            .filter(|a| crate::net::is_object_name(a))
    }
}

/// Whether exip-syncer owns the field at `path` of `obj` (managedFields), and which other
/// managers do.
fn owners<'a>(obj: &'a GatewayExIp, path: &[&str]) -> (bool, Vec<&'a str>) {
    let mut others = Vec::new();
    let mut ours = false;
    for entry in obj.metadata.managed_fields.iter().flatten() {
        let owns = entry.fields_v1.as_ref().is_some_and(|f| {
            path.iter()
                .try_fold(&f.0, |node, key| node.get(key))
                .is_some()
        });
        if !owns {
            continue;
        }
        match entry.manager.as_deref() {
            Some(EXIP_SYNCER_MANAGER) => ours = true,
            other => others.push(other.unwrap_or("<unnamed>")),
        }
    }
    (ours, others)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(o: &mut GatewayExIp, entries: &[(&str, serde_json::Value)]) {
        o.metadata.managed_fields = Some(
            entries
                .iter()
                .map(|(m, f)| {
                    serde_json::from_value(serde_json::json!({
                        "manager": m, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": f,
                    }))
                    .unwrap()
                })
                .collect(),
        );
    }

    #[test]
    fn only_what_exip_syncer_wrote_counts() {
        let spec = serde_json::json!({"f:spec": {"f:externalip": {}, "f:globalnetcidr": {}}});
        let label = serde_json::json!({"f:metadata": {"f:labels": {
            format!("f:{LABEL_ACTIVE_GATEWAY}"): {}}}});
        let mut o = with_labels(&[(LABEL_ACTIVE_GATEWAY, "gw-b")]);
        assert!(
            o.written_by_exip_syncer()
                .unwrap_err()
                .contains("no managedFields")
        );
        assert_eq!(o.active_gateway(), None);

        managed(
            &mut o,
            &[
                ("exip-syncer", spec.clone()),
                ("exip-syncer", label.clone()),
            ],
        );
        assert_eq!(o.written_by_exip_syncer(), Ok(()));
        assert_eq!(o.active_gateway(), Some("gw-b"));

        // Someone else's write: a hand edit of the spec, a label set by hand.
        managed(
            &mut o,
            &[
                ("exip-syncer", spec.clone()),
                (
                    "kubectl-edit",
                    serde_json::json!({"f:spec": {"f:externalip": {}}}),
                ),
                ("kubectl-label", label.clone()),
            ],
        );
        let err = o.written_by_exip_syncer().unwrap_err();
        assert!(err.contains("written by kubectl-edit too"), "{err}");
        assert_eq!(o.active_gateway(), None);
        managed(&mut o, &[("kubectl-client-side-apply", spec)]);
        let err = o.written_by_exip_syncer().unwrap_err();
        assert!(
            err.contains("managed by kubectl-client-side-apply"),
            "{err}"
        );

        // Not an object name: never used as one.
        let mut o = with_labels(&[(LABEL_ACTIVE_GATEWAY, "Bad;Name")]);
        managed(&mut o, &[("exip-syncer", label)]);
        assert_eq!(o.active_gateway(), None);
    }

    fn with_labels(labels: &[(&str, &str)]) -> GatewayExIp {
        let mut o = GatewayExIp::new(
            "a-b-c",
            GatewayExIpSpec {
                externalip: "172.50.0.1".into(),
                globalnetcidr: "242.1.0.0/16".into(),
                ..Default::default()
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
