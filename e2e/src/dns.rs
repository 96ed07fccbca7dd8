//! The DNS leg of a cluster: real CoreDNS processes in network namespaces the harness made,
//! so that a `clusterset.local` lookup from inside a VPC crosses what it crosses in a cluster
//! (`e2e/scripts/netns.sh dns-up` draws the topology):
//!
//! NAT gateway pod (the client) → vpc-dns's address (the `coredns-vip`) → vpc-dns's CoreDNS,
//! run from the Corefile ConfigMap dns-forwarder wrote and with the routes of the vpc-dns
//! Deployment → over net1 to the cluster DNS at the kube-dns ClusterIP (Submariner's
//! lighthouse section) → Lighthouse, serving the records the test gives.
//!
//! What stands in for what: Lighthouse is a CoreDNS `file` zone (it serves ServiceImports in
//! a cluster); the cluster DNS has only the lighthouse section and NXDOMAIN for the rest; the
//! node's resolver says NXDOMAIN to everything, as public DNS does for `clusterset.local`;
//! vpc-dns's Corefile runs without its `kubernetes` block, which needs an in-cluster API
//! client. OVN's load balancer for the VIP is a route in the VPC netns.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;

use crate::{Harness, e2e_dir, exec::host_exec};

/// Kube-OVN's `coredns-vip` in the harness's `vpc-dns-config` (in kwokctl's service CIDR, as
/// Kube-OVN's guide puts it in the cluster's).
pub const VPC_DNS_VIP: &str = "10.0.0.3";

impl Harness {
    /// Starts (again) the DNS leg of `cluster`: the cluster DNS at `kube_dns` and Lighthouse
    /// serving `records` (names under `clusterset.local`), vpc-dns's netns with `VPC_DNS_VIP`.
    pub async fn dns_leg_up(
        &self,
        cluster: &str,
        kube_dns: &str,
        records: &[(&str, Ipv4Addr)],
    ) -> Result<()> {
        let dir = self.run_dir().join(cluster).join("dns");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("clusterset.local.zone"), zone(records)?)?;
        netns_sh(&["dns-up", cluster, kube_dns, VPC_DNS_VIP]).await
    }

    /// (Re)starts vpc-dns of `cluster` from `corefile` (the text of its Corefile ConfigMap)
    /// with `routes` (destination, gateway), as a new vpc-dns pod starts.
    pub async fn run_vpc_dns(
        &self,
        cluster: &str,
        corefile: &str,
        routes: &[(String, String)],
    ) -> Result<()> {
        let path = self
            .run_dir()
            .join(cluster)
            .join("dns")
            .join("vpc-dns.Corefile");
        std::fs::write(&path, without_kubernetes_block(corefile))?;
        let path = path.to_string_lossy().into_owned();
        let mut args = vec!["vpc-dns-run", cluster, path.as_str()];
        for (dst, gw) in routes {
            args.extend([dst.as_str(), gw.as_str()]);
        }
        netns_sh(&args).await
    }
}

async fn netns_sh(args: &[&str]) -> Result<()> {
    let script = e2e_dir().join("scripts/netns.sh");
    let mut cmd = vec!["bash", script.to_str().context("script path")?];
    cmd.extend_from_slice(args);
    host_exec(&cmd).await?.check().map(|_| ())
}

/// The routes of a vpc-dns Deployment of Kube-OVN v1.13+: its pod template's
/// `<provider>.kubernetes.io/routes` (`[{"dst": ..., "gw": ...}]`), which Kube-OVN's CNI
/// programs when a pod starts.
pub fn vpc_dns_routes(d: &Deployment, provider: &str) -> Result<Vec<(String, String)>> {
    let Some(value) = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(&format!("{provider}.kubernetes.io/routes")))
    else {
        return Ok(vec![]);
    };
    #[derive(serde::Deserialize)]
    struct Route {
        dst: String,
        gw: String,
    }
    let routes: Vec<Route> = serde_json::from_str(value).context("routes annotation")?;
    Ok(routes.into_iter().map(|r| (r.dst, r.gw)).collect())
}

/// A `clusterset.local` zone file with an A record per name.
fn zone(records: &[(&str, Ipv4Addr)]) -> Result<String> {
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut z = format!(
        "$ORIGIN clusterset.local.\n\
         @ 5 IN SOA ns.clusterset.local. hostmaster.clusterset.local. {serial} 7200 3600 1209600 5\n\
         @ 5 IN NS ns.clusterset.local.\n\
         ns 5 IN A 10.244.255.53\n"
    );
    for (name, ip) in records {
        let Some(relative) = name.strip_suffix(".clusterset.local") else {
            bail!("{name} is not under clusterset.local");
        };
        z.push_str(&format!("{relative} 5 IN A {ip}\n"));
    }
    Ok(z)
}

/// `corefile` without its `kubernetes` plugin blocks (the lines from `kubernetes ...{` to the
/// brace that closes it).
fn without_kubernetes_block(corefile: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for line in corefile.lines() {
        let t = line.trim();
        if depth == 0 && (t == "kubernetes" || t.starts_with("kubernetes ")) {
            depth = usize::from(t.ends_with('{'));
            continue;
        }
        if depth > 0 {
            depth += t.matches('{').count();
            depth -= t.matches('}').count().min(depth);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_block_goes_and_the_rest_stays() {
        let c = crate::fixtures::VPC_DNS_COREFILE;
        let out = without_kubernetes_block(c);
        assert!(
            !out.contains("kubernetes") && !out.contains("pods insecure"),
            "{out}"
        );
        assert!(out.contains("forward . /etc/resolv.conf {\n      prefer_udp\n    }"));
        assert_eq!(out.matches('{').count(), out.matches('}').count(), "{out}");
        assert_eq!(
            without_kubernetes_block("kubernetes cluster.local\n.:53 {\n}\n"),
            ".:53 {\n}\n"
        );
    }

    #[test]
    fn records_become_a_zone() {
        let z = zone(&[(
            "web.demo.svc.clusterset.local",
            Ipv4Addr::new(242, 0, 0, 10),
        )])
        .unwrap();
        assert!(z.contains("\nweb.demo.svc 5 IN A 242.0.0.10\n"), "{z}");
        assert!(zone(&[("web.example", Ipv4Addr::LOCALHOST)]).is_err());
    }
}
