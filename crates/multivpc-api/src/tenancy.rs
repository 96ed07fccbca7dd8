//! Which namespaces may act on which VPC. A VpcNatTunnel programs devices, routes and SNAT into
//! a VPC's NAT gateway, and a VpcDnsForward changes a VPC's DNS: both are namespaced, the VPCs
//! are not. Kube-OVN's own binding is `Vpc.spec.namespaces` (the namespaces whose pods live in
//! that VPC), so a namespace may act on exactly the VPCs that list it.

use std::{collections::BTreeMap, fmt, str::FromStr, sync::Arc};

use crate::foreign::kubeovn::Vpc;

/// Ready reason of an object whose namespace its VPC does not admit.
pub const NAMESPACE_NOT_ADMITTED: &str = "NamespaceNotAdmitted";

/// How objects are tied to VPCs (`--tenancy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tenancy {
    /// An object in namespace N acts only on a VPC whose `spec.namespaces` lists N.
    #[default]
    VpcNamespaces,
    /// Any namespace may act on any VPC: for clusters where only administrators can create
    /// these objects.
    Any,
}

impl FromStr for Tenancy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vpc-namespaces" => Ok(Self::VpcNamespaces),
            "any" => Ok(Self::Any),
            _ => Err(format!(
                "{s:?} is not a tenancy mode (vpc-namespaces or any)"
            )),
        }
    }
}

impl fmt::Display for Tenancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::VpcNamespaces => "vpc-namespaces",
            Self::Any => "any",
        })
    }
}

impl Tenancy {
    /// Whether an object in `namespace` may act on VPC `vpc`; `Err` says why not, for the
    /// object's Ready condition.
    pub fn admits(
        self,
        vpcs: &BTreeMap<String, Arc<Vpc>>,
        vpc: &str,
        namespace: &str,
    ) -> Result<(), String> {
        if self == Self::Any {
            return Ok(());
        }
        let Some(found) = vpcs.get(vpc) else {
            return Err(format!(
                "VPC {vpc} not found, so it cannot admit namespace {namespace}"
            ));
        };
        if found.spec.namespaces.iter().any(|n| n == namespace) {
            Ok(())
        } else {
            Err(format!(
                "VPC {vpc} does not admit namespace {namespace}: list it in the Vpc's spec.namespaces (or install with tenancy \"any\")"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foreign::kubeovn::VpcSpec;

    fn vpcs(namespaces: &[&str]) -> BTreeMap<String, Arc<Vpc>> {
        let spec = VpcSpec {
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        [("vpc1".to_string(), Arc::new(Vpc::new("vpc1", spec)))].into()
    }

    #[test]
    fn a_namespace_acts_only_on_the_vpcs_that_list_it() {
        let t = Tenancy::VpcNamespaces;
        assert_eq!(t.admits(&vpcs(&["ns1", "ns2"]), "vpc1", "ns2"), Ok(()));
        let refused = t.admits(&vpcs(&["ns1"]), "vpc1", "ns3").unwrap_err();
        assert!(
            refused.contains("does not admit namespace ns3"),
            "{refused}"
        );
        assert!(
            t.admits(&vpcs(&[]), "vpc1", "ns1").is_err(),
            "empty list admits none"
        );
        let missing = t.admits(&vpcs(&["ns1"]), "vpc2", "ns1").unwrap_err();
        assert!(missing.contains("VPC vpc2 not found"), "{missing}");
        assert_eq!(Tenancy::Any.admits(&BTreeMap::new(), "vpc2", "ns1"), Ok(()));
    }

    #[test]
    fn modes_parse_and_print_alike() {
        for t in [Tenancy::VpcNamespaces, Tenancy::Any] {
            assert_eq!(t.to_string().parse::<Tenancy>(), Ok(t));
        }
        assert!("VpcNamespaces".parse::<Tenancy>().is_err());
    }
}
