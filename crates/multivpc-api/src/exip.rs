//! `GatewayExIp`: the published endpoint of a VPC NAT gateway, exchanged between clusters through
//! the Submariner broker. Created and owned by exip-syncer only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
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

/// The managedFields paths provenance reads ([`owners`]): the spec, and the active-gateway label.
const PROVENANCE_PATHS: [&[&str]; 2] = [
    &["f:spec"],
    &["f:metadata", "f:labels", ACTIVE_GATEWAY_FIELD],
];

/// [`LABEL_ACTIVE_GATEWAY`] as a managedFields key (a test checks they agree).
const ACTIVE_GATEWAY_FIELD: &str = "f:multivpc.kubeovn.ustc.io/active-gateway";

impl GatewayExIp {
    /// Keeps of its managedFields only what provenance reads: each entry's manager and, of the
    /// fields it owns, those on [`PROVENANCE_PATHS`]; entries owning none of them go. What
    /// [`Self::written_by_exip_syncer`] and [`Self::active_gateway`] answer is unchanged. A
    /// cache of remote GatewayExIps keeps them this way: whole, their field sets were most of
    /// what the cache weighed.
    pub fn keep_only_provenance(&mut self) {
        let Some(entries) = self.metadata.managed_fields.take() else {
            return;
        };
        let kept: Vec<ManagedFieldsEntry> = entries
            .into_iter()
            .filter_map(|entry| {
                let fields = entry.fields_v1.as_ref()?;
                let mut tree = serde_json::Value::Object(Default::default());
                for path in PROVENANCE_PATHS {
                    if path.iter().try_fold(&fields.0, |n, k| n.get(k)).is_some() {
                        let mut node = &mut tree;
                        for key in path {
                            node = node
                                .as_object_mut()?
                                .entry(*key)
                                .or_insert_with(|| serde_json::Value::Object(Default::default()));
                        }
                    }
                }
                let owns_any = tree.as_object().is_some_and(|m| !m.is_empty());
                owns_any.then(|| ManagedFieldsEntry {
                    manager: entry.manager,
                    fields_v1: Some(FieldsV1(tree)),
                    ..Default::default()
                })
            })
            .collect();
        self.metadata.managed_fields = (!kept.is_empty()).then_some(kept);
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

    #[test]
    fn provenance_reads_the_same_from_the_trimmed_field_owners() {
        assert_eq!(ACTIVE_GATEWAY_FIELD, format!("f:{LABEL_ACTIVE_GATEWAY}"));
        let spec = serde_json::json!({"f:spec": {"f:externalip": {}, "f:globalnetcidr": {}}});
        let label = serde_json::json!({"f:metadata": {"f:labels": {
            ACTIVE_GATEWAY_FIELD: {}, "f:other": {}}, "f:annotations": {"f:a": {}}}});
        let both = serde_json::json!({"f:spec": {"f:externalip": {}},
            "f:metadata": {"f:labels": {ACTIVE_GATEWAY_FIELD: {}}}});
        let unrelated = serde_json::json!({"f:metadata": {"f:labels": {"f:other": {}}}});
        let status = serde_json::json!({"f:status": {"f:x": {}}});
        let cases: Vec<Vec<(&str, serde_json::Value)>> = vec![
            vec![],
            vec![
                ("exip-syncer", spec.clone()),
                ("exip-syncer", label.clone()),
            ],
            vec![("exip-syncer", both.clone())],
            vec![("exip-syncer", both), ("kubectl-edit", unrelated.clone())],
            vec![
                ("exip-syncer", spec.clone()),
                ("kubectl-label", label.clone()),
            ],
            vec![("kubectl-client-side-apply", spec), ("x", status)],
            vec![("exip-syncer", label), ("kubectl", unrelated)],
        ];
        for case in cases {
            let mut o = with_labels(&[(LABEL_ACTIVE_GATEWAY, "gw-b")]);
            managed(&mut o, &case);
            let mut trimmed = o.clone();
            trimmed.keep_only_provenance();
            assert_eq!(
                (trimmed.written_by_exip_syncer(), trimmed.active_gateway()),
                (o.written_by_exip_syncer(), o.active_gateway()),
                "{case:?}"
            );
            for entry in trimmed.metadata.managed_fields.iter().flatten() {
                let fields = serde_json::to_string(&entry.fields_v1).unwrap();
                assert!(
                    !fields.contains("f:other") && !fields.contains("f:annotations"),
                    "{fields}"
                );
                assert!(entry.operation.is_none() && entry.time.is_none());
            }
        }
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
