//! What a GatewayExIp from the broker must satisfy before it is copied into this cluster, pure.
//!
//! Any member cluster can write to the broker namespace, so an imported object is hostile until
//! checked: its `globalnetcidr` becomes a route and an SNAT rule inside a NAT gateway, its
//! `externalip` a tunnel endpoint. An object is imported only when
//! - its Globalnet CIDR is one Submariner itself records for its origin on the broker (the
//!   origin's `clusters.submariner.io` object, `spec.global_cidr`), is no default route, and
//!   overlaps none of this cluster's own ranges (Globalnet, Service, Pod CIDRs, VPC subnets);
//! - its external IP is a unicast address outside those ranges;
//! - its origin and the whole broker stay under the import caps (objects beyond a cap, in name
//!   order, are refused: a flood from one cluster cannot crowd out the others).

use std::{collections::BTreeMap, net::Ipv4Addr};

use multivpc_api::{
    GatewayExIp,
    exip::MAX_TUNNEL_ADDRESSES,
    net::{Ipv4Cidr, parse_ipv4},
};

/// Default of `--max-imported-per-cluster`.
pub const DEFAULT_MAX_PER_CLUSTER: usize = 256;
/// Default of `--max-imported`.
pub const DEFAULT_MAX_TOTAL: usize = 2048;
/// Most bytes of labels and annotations a broker object may carry. exip-syncer's own exports
/// carry a few hundred; anything near the API server's 256 KiB annotation limit is an attack on
/// every member's memory and logs.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// What imports are checked against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportPolicy {
    /// Globalnet CIDRs Submariner records on the broker, by cluster ID.
    pub broker_globalnet: BTreeMap<String, Vec<Ipv4Cidr>>,
    /// This cluster's own ranges, each with what it is (for the refusal message).
    pub local_ranges: Vec<(String, Ipv4Cidr)>,
    pub max_per_cluster: usize,
    pub max_total: usize,
}

impl ImportPolicy {
    /// Why `obj` (from cluster `origin`) may not be imported, if it may not.
    pub fn refusal(&self, obj: &GatewayExIp, origin: &str) -> Option<String> {
        let size: usize = [&obj.metadata.labels, &obj.metadata.annotations]
            .into_iter()
            .flatten()
            .flat_map(|m| m.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if size > MAX_METADATA_BYTES {
            return Some(format!(
                "its labels and annotations hold {size} bytes (at most {MAX_METADATA_BYTES})"
            ));
        }
        let cidr = match obj.spec.globalnetcidr.parse::<Ipv4Cidr>() {
            Ok(c) => c,
            Err(err) => return Some(format!("globalnetcidr {:?}: {err}", obj.spec.globalnetcidr)),
        };
        if cidr.prefix() == 0 {
            return Some(
                "globalnetcidr 0.0.0.0/0 would replace the gateway's default route".into(),
            );
        }
        let Some(recorded) = self.broker_globalnet.get(origin) else {
            return Some(format!(
                "the broker has no Submariner Cluster {origin:?} recording its Globalnet CIDR"
            ));
        };
        if !recorded
            .iter()
            .any(|r| r.network() == cidr.network() && r.prefix() == cidr.prefix())
        {
            return Some(format!(
                "globalnetcidr {cidr} is not the Globalnet CIDR Submariner records for cluster {origin:?} ({})",
                list(recorded)
            ));
        }
        if let Some((what, range)) = self.local_ranges.iter().find(|(_, r)| r.overlaps(&cidr)) {
            return Some(format!(
                "globalnetcidr {cidr} overlaps this cluster's {what} {range}"
            ));
        }
        let ip = match parse_ipv4(&obj.spec.externalip) {
            Ok(ip) => ip,
            Err(err) => return Some(format!("externalip {:?}: {err}", obj.spec.externalip)),
        };
        if let Some(kind) = not_unicast(ip) {
            return Some(format!("externalip {ip} is {kind}, not a unicast address"));
        }
        if let Some((what, range)) = self.local_ranges.iter().find(|(_, r)| r.contains(ip)) {
            return Some(format!(
                "externalip {ip} lies in this cluster's {what} {range}"
            ));
        }
        // Only ever probed through a tunnel whose own address is in the same network (checked
        // by tunnel-manager), but refused here when malformed all the same.
        if obj.spec.tunnels.len() > MAX_TUNNEL_ADDRESSES {
            return Some(format!(
                "it lists {} tunnel addresses (at most {MAX_TUNNEL_ADDRESSES})",
                obj.spec.tunnels.len()
            ));
        }
        if let Some(err) = obj.spec.tunnels.iter().find_map(|t| t.checked().err()) {
            return Some(format!("tunnels: {err}"));
        }
        None
    }
}

fn list(cidrs: &[Ipv4Cidr]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What kind of non-unicast address `ip` is, if it is one.
fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.octets()[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

/// Counts imports against the caps, in the order they are offered.
pub struct Caps<'a> {
    policy: &'a ImportPolicy,
    per_cluster: BTreeMap<String, usize>,
    total: usize,
}

impl<'a> Caps<'a> {
    pub fn new(policy: &'a ImportPolicy) -> Self {
        Self {
            policy,
            per_cluster: BTreeMap::new(),
            total: 0,
        }
    }

    /// Takes one import from `origin`; why not, when a cap is full.
    pub fn take(&mut self, origin: &str) -> Result<(), String> {
        let n = self.per_cluster.entry(origin.to_owned()).or_default();
        if *n >= self.policy.max_per_cluster {
            return Err(format!(
                "cluster {origin:?} already has {} imported GatewayExIps (--max-imported-per-cluster)",
                self.policy.max_per_cluster
            ));
        }
        if self.total >= self.policy.max_total {
            return Err(format!(
                "{} GatewayExIps are imported already (--max-imported)",
                self.policy.max_total
            ));
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use multivpc_api::GatewayExIpSpec;

    fn policy() -> ImportPolicy {
        ImportPolicy {
            broker_globalnet: [("c2".to_string(), vec!["242.1.0.0/16".parse().unwrap()])].into(),
            local_ranges: vec![
                ("Globalnet CIDR".into(), "242.0.0.0/16".parse().unwrap()),
                ("Service CIDR".into(), "10.96.0.0/12".parse().unwrap()),
                ("VPC subnet".into(), "10.1.0.0/24".parse().unwrap()),
            ],
            max_per_cluster: 2,
            max_total: 3,
        }
    }

    fn exip(ip: &str, cidr: &str) -> GatewayExIp {
        GatewayExIp {
            metadata: ObjectMeta::default(),
            spec: GatewayExIpSpec {
                externalip: ip.into(),
                globalnetcidr: cidr.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn tunnel_addresses_must_be_well_formed_and_few() {
        use multivpc_api::TunnelAddress;
        let p = policy();
        let entry = |c: &str, g: &str, a: &str| TunnelAddress {
            cluster_id: c.into(),
            gateway_name: g.into(),
            interface_addr: a.into(),
        };
        let mut ok = exip("172.50.2.11", "242.1.0.0/16");
        ok.spec.tunnels = vec![entry("c1", "gw1", "10.100.0.2/24")];
        assert_eq!(p.refusal(&ok, "c2"), None);
        for (bad, why) in [
            (entry("C1", "gw1", "10.100.0.2/24"), "clusterId"),
            (entry("c1", "gw 1", "10.100.0.2/24"), "gatewayName"),
            (entry("c1", "gw1", "10.100.0.0/24"), "interfaceAddr"),
            (entry("c1", "gw1", "10.100.0.2/8"), "/16 to /31"),
            (entry("c1", "gw1", "10.100.0.2; reboot"), "interfaceAddr"),
        ] {
            let mut o = ok.clone();
            o.spec.tunnels.push(bad);
            let reason = p.refusal(&o, "c2").unwrap_or_default();
            assert!(reason.contains(why), "{reason:?}");
        }
        let mut many = ok.clone();
        many.spec.tunnels = vec![entry("c1", "gw1", "10.100.0.2/24"); MAX_TUNNEL_ADDRESSES + 1];
        assert!(p.refusal(&many, "c2").unwrap().contains("tunnel addresses"));
    }

    #[test]
    fn the_recorded_globalnet_cidr_and_a_unicast_endpoint_pass() {
        assert_eq!(
            policy().refusal(&exip("172.50.2.11", "242.1.0.0/16"), "c2"),
            None
        );
    }

    #[test]
    fn hostile_values_are_refused_with_a_reason() {
        let p = policy();
        for (ip, cidr, origin, why) in [
            ("172.50.2.11", "0.0.0.0/0", "c2", "default route"),
            (
                "172.50.2.11",
                "242.1.0.0/8",
                "c2",
                "not the Globalnet CIDR Submariner records",
            ),
            (
                "172.50.2.11",
                "242.2.0.0/16",
                "c2",
                "not the Globalnet CIDR Submariner records",
            ),
            (
                "172.50.2.11",
                "242.1.0.0/16",
                "c9",
                "no Submariner Cluster \"c9\"",
            ),
            ("127.0.0.1", "242.1.0.0/16", "c2", "loopback"),
            ("0.0.0.0", "242.1.0.0/16", "c2", "unspecified"),
            ("224.0.0.1", "242.1.0.0/16", "c2", "multicast"),
            ("255.255.255.255", "242.1.0.0/16", "c2", "broadcast"),
            ("169.254.169.254", "242.1.0.0/16", "c2", "link-local"),
            ("10.96.0.10", "242.1.0.0/16", "c2", "Service CIDR"),
            ("10.1.0.254", "242.1.0.0/16", "c2", "VPC subnet"),
            ("1.2.3.4 ", "242.1.0.0/16", "c2", "externalip"),
        ] {
            let reason = p.refusal(&exip(ip, cidr), origin).unwrap_or_default();
            assert!(reason.contains(why), "{ip} {cidr} {origin}: {reason:?}");
        }
        // Oversized metadata (a 200 KB annotation).
        let mut big = exip("172.50.2.11", "242.1.0.0/16");
        big.metadata.annotations = Some([("x".to_string(), "y".repeat(200_000))].into());
        assert!(p.refusal(&big, "c2").unwrap().contains("200001 bytes"));
        // A CIDR Submariner records that overlaps a local range (a misconfigured fleet).
        let mut p = policy();
        p.broker_globalnet
            .insert("c3".into(), vec!["242.0.0.0/16".parse().unwrap()]);
        let reason = p
            .refusal(&exip("172.50.3.11", "242.0.0.0/16"), "c3")
            .unwrap();
        assert!(
            reason.contains("overlaps this cluster's Globalnet CIDR"),
            "{reason}"
        );
    }

    #[test]
    fn caps_hold_per_cluster_and_in_total() {
        let p = policy();
        let mut caps = Caps::new(&p);
        assert!(caps.take("c2").is_ok());
        assert!(caps.take("c2").is_ok());
        assert!(
            caps.take("c2")
                .unwrap_err()
                .contains("--max-imported-per-cluster")
        );
        assert!(caps.take("c3").is_ok());
        assert!(caps.take("c4").unwrap_err().contains("--max-imported"));
    }
}
