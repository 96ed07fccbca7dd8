//! `VpcNatTunnel`: a GRE or VXLAN tunnel from a local Kube-OVN VPC NAT gateway to a gateway of
//! another cluster, found through that cluster's GatewayExIp.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::net::{DNS_LABEL_PATTERN, INTERFACE_ADDR_PATTERN, OBJECT_NAME_PATTERN};

/// Default VXLAN network identifier when `vni` is omitted.
pub const DEFAULT_VNI: u32 = 100;
/// Default VXLAN UDP destination port (IANA) when `dstPort` is omitted.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Label in which the original Go operator kept a VXLAN tunnel's VNI (it had no spec field).
pub const GO_LABEL_VNI: &str = "vid";
/// Label in which the original Go operator kept a VXLAN tunnel's UDP port.
pub const GO_LABEL_VXLAN_PORT: &str = "vx-port";
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 16_777_215;
/// Smallest tunnel MTU `spec.mtu` may ask for: what every IPv4 host must accept (RFC 791).
pub const MIN_MTU: u32 = 576;
/// Largest tunnel MTU `spec.mtu` may ask for: a jumbo-frame underlay's.
pub const MAX_MTU: u32 = 9000;

/// Desired state of a tunnel between a local VPC NAT gateway and a remote cluster's gateway.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "kubeovn.ustc.io",
    version = "v1",
    kind = "VpcNatTunnel",
    namespaced,
    status = "VpcNatTunnelStatus",
    shortname = "vnt",
    category = "multivpc",
    derive = "PartialEq",
    doc = "A GRE or VXLAN tunnel between a local Kube-OVN VPC NAT gateway and a NAT gateway of another cluster. Its name is the tunnel interface name inside the gateway pod.",
    validation = Rule::new("size(self.metadata.name) <= 15 && !(self.metadata.name in ['lo', 'eth0', 'net1', 'all', 'default', 'bonding_masters', 'gre0', 'gretap0', 'erspan0', 'tunl0', 'sit0', 'ip_vti0', 'ip6_vti0', 'ip6tnl0', 'ip6gre0']) && !self.metadata.name.matches('^net[0-9]+$')").message("metadata.name is the tunnel's Linux interface name in the gateway pod: at most 15 characters, and not reserved (lo, eth0, net<N>, all, default, or a kernel fallback tunnel device such as gre0, tunl0, sit0)"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type", description = "Tunnel encapsulation"),
    printcolumn(name = "Local GW", type_ = "string", json_path = ".spec.natGwDp", description = "Local VPC NAT gateway"),
    printcolumn(name = "Remote Cluster", type_ = "string", json_path = ".spec.clusterId", description = "Submariner cluster ID of the remote end"),
    printcolumn(name = "Remote GW", type_ = "string", json_path = ".spec.gatewayName", description = "NAT gateway of the remote end"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the tunnel is programmed"),
    printcolumn(name = "Healthy", type_ = "string", json_path = ".status.conditions[?(@.type==\"Healthy\")].status", description = "Whether the far end answers through the tunnel"),
    printcolumn(name = "RTT", type_ = "string", json_path = ".status.health.rtt.average", description = "Average round trip through the tunnel", priority = 1),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.type == 'vxlan' || !has(self.vni)").message("vni is only valid when type is vxlan").field_path(".vni"))]
#[x_kube(validation = Rule::new("self.type == 'vxlan' || !has(self.dstPort)").message("dstPort is only valid when type is vxlan").field_path(".dstPort"))]
#[serde(rename_all = "camelCase")]
pub struct VpcNatTunnelSpec {
    /// Submariner cluster ID of the remote cluster (the cluster that owns `gatewayName`).
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub cluster_id: String,

    /// Name of the remote cluster's VPC NAT gateway. Its endpoint is read from the GatewayExIp
    /// `<gatewayName>-<clusterId>` synchronised from that cluster.
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 52))]
    pub gateway_name: String,

    /// IPv4 address with prefix length given to the tunnel interface, e.g. 10.100.0.1/24; the
    /// prefix is /16 to /31. The remote end uses another address of the same network, which
    /// may not overlap the Globalnet CIDRs or hold the gateway's own addresses.
    #[schemars(regex(pattern = INTERFACE_ADDR_PATTERN))]
    pub interface_addr: String,

    /// Name of the local Kube-OVN VpcNatGateway whose pod carries the tunnel.
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 52))]
    pub nat_gw_dp: String,

    /// Encapsulation: gre (default, as in the original operator) or vxlan.
    #[serde(default, rename = "type")]
    pub tunnel_type: TunnelType,

    /// VXLAN network identifier, 1 to 16777215; only with type vxlan (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vni: Option<u32>,

    /// VXLAN UDP destination port, 1 to 65535; only with type vxlan (default 4789).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub dst_port: Option<u16>,

    /// MTU of the tunnel interface, 576 to 9000. Default: the MTU of the gateway's external
    /// interface (net1) less the encapsulation's overhead (24 bytes for GRE, 50 for VXLAN).
    /// TCP MSS is clamped to it less 40 in both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<u32>,

    /// none (default) or ipsec: ESP between the two gateways' external addresses, with keys
    /// each end derives from the fleet's pre-shared key (tunnel-manager's --ipsec-psk-secret).
    /// Both ends of a tunnel must say the same.
    #[serde(default, skip_serializing_if = "Encryption::is_none")]
    pub encryption: Encryption,
}

impl VpcNatTunnel {
    /// `spec`'s value, else the Go operator's label `key` parsed, else `default`; a label that
    /// does not parse is an error naming `what`, never a silent default.
    fn spec_or_go_label<T: std::str::FromStr>(
        &self,
        spec: Option<T>,
        key: &str,
        default: T,
        what: &str,
    ) -> Result<T, String> {
        match (spec, kube::ResourceExt::labels(self).get(key)) {
            (Some(value), _) => Ok(value),
            (None, Some(label)) => label
                .trim()
                .parse()
                .map_err(|_| format!("label {key}={label:?} is not a {what}")),
            (None, None) => Ok(default),
        }
    }

    /// The VXLAN identifier to program: `spec.vni`, else the Go operator's `vid` label (a
    /// migrated tunnel keeps the VNI its peer uses), else [`DEFAULT_VNI`].
    pub fn effective_vni(&self) -> Result<u32, String> {
        self.spec_or_go_label(self.spec.vni, GO_LABEL_VNI, DEFAULT_VNI, "VNI")
    }

    /// The VXLAN destination port to program: `spec.dstPort`, else the Go operator's `vx-port`
    /// label, else [`DEFAULT_VXLAN_PORT`].
    pub fn effective_dst_port(&self) -> Result<u16, String> {
        self.spec_or_go_label(
            self.spec.dst_port,
            GO_LABEL_VXLAN_PORT,
            DEFAULT_VXLAN_PORT,
            "port",
        )
    }
}

/// Tunnel encapsulation.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TunnelType {
    // GRE (`ip tunnel add … mode gre`), the original operator's only kind.
    #[default]
    Gre,
    // VXLAN over the gateway's external interface.
    Vxlan,
}

impl std::fmt::Display for TunnelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gre => "gre",
            Self::Vxlan => "vxlan",
        })
    }
}

/// Encryption of a tunnel's underlay packets.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    // In clear, as the original operator's tunnels.
    #[default]
    None,
    // IPsec ESP (transport mode, AES-GCM) between the gateways' external addresses.
    Ipsec,
}

impl Encryption {
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Ipsec => "ipsec",
        })
    }
}

/// Observed state of a VpcNatTunnel.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcNatTunnelStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions; `Ready` tells whether the tunnel is programmed, and if not, why (reason).
    /// A list-map keyed by `type`: server-side apply merges conditions per type, so a condition
    /// another writer sets is kept beside ours, and one type appears at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The local gateway instance carrying the tunnel: `natGwDp`, or its standby after a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_gateway: Option<String>,

    /// The gateway pod the tunnel was last programmed into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_pod: Option<PodRef>,

    /// Underlay (external network) IPv4 address of the local gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<String>,

    /// Underlay (external network) IPv4 address of the remote gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,

    /// Submariner Globalnet CIDR of the local cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_globalnet_cidr: Option<String>,

    /// Submariner Globalnet CIDR of the remote cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_globalnet_cidr: Option<String>,

    /// Gateway of the local VPC subnet (next hop towards the local Globalnet CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovn_gateway_ip: Option<String>,

    /// SNAT source range taken from the cluster's Globalnet egress IPs, e.g. 242.0.0.1-242.0.0.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_range: Option<String>,

    /// MTU of the tunnel interface as last programmed (`spec.mtu`, or net1's less the
    /// encapsulation's overhead); TCP MSS is clamped to it less 40.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,

    /// Exactly what was last programmed into the gateway, so that a later change removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<AppliedTunnel>,

    /// What the probes through the tunnel saw, as of `lastProbeTime` (rewritten when the
    /// Healthy condition changes and otherwise at most every minute; the live figures are
    /// metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<TunnelHealth>,
}

/// Probes of a tunnel's far end through the tunnel, over the last `window` probes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelHealth {
    /// The far end's tunnel address, as its cluster publishes it.
    pub target: String,
    /// Probes in the window.
    pub window: u32,
    /// Probes of the window left unanswered, in percent.
    pub loss_percent: u32,
    /// Round-trip times of the answered probes in the window, e.g. `1.234ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt: Option<RoundTrip>,
    /// When the last probe of the window was sent (RFC 3339).
    pub last_probe_time: String,
}

/// Round-trip times, as durations (`0.412ms`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct RoundTrip {
    /// The last answered probe's.
    pub last: String,
    /// The shortest in the window.
    pub min: String,
    /// The mean of the window's answered probes.
    pub average: String,
    /// The longest in the window.
    pub max: String,
}

/// A pod identified by name and UID (a new UID means a new pod with empty network state).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct PodRef {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
}

/// The tunnel configuration last programmed into a gateway pod.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedTunnel {
    /// Encapsulation programmed.
    #[serde(rename = "type")]
    pub tunnel_type: TunnelType,
    /// Interface address programmed.
    pub interface_addr: String,
    /// Local underlay address programmed.
    pub local_ip: String,
    /// Remote underlay address programmed.
    pub remote_ip: String,
    /// VXLAN identifier programmed (vxlan only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// VXLAN destination port programmed (vxlan only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Route to the local Globalnet CIDR programmed (via the OVN gateway on eth0).
    pub local_route: String,
    /// Route to the remote Globalnet CIDR programmed (through the tunnel).
    pub remote_route: String,
    /// SNAT source range programmed.
    pub snat_range: String,
    /// Encryption programmed (its security associations and policies go when it does).
    #[serde(default, skip_serializing_if = "Encryption::is_none")]
    pub encryption: Encryption,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{InterfaceName, RESERVED_INTERFACE_NAMES};

    /// The API server refuses what the parser refuses: the CEL rule on the name lists every
    /// reserved name and the Multus pattern.
    #[test]
    fn the_name_rule_reserves_what_the_parser_reserves() {
        use kube::CustomResourceExt as _;
        let crd = serde_json::to_string(&VpcNatTunnel::crd()).unwrap();
        let crd: serde_json::Value = serde_json::from_str(&crd).unwrap();
        let rules =
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
                .as_array()
                .unwrap();
        let rule = rules
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .find(|r| r.contains("self.metadata.name in"))
            .unwrap();
        for name in RESERVED_INTERFACE_NAMES {
            assert!(
                rule.contains(&format!("'{name}'")),
                "{name} missing in {rule}"
            );
            assert!(name.parse::<InterfaceName>().is_err(), "{name}");
        }
        assert!(rule.contains("matches('^net[0-9]+$')"), "{rule}");
    }
}
