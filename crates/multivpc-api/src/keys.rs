//! Well-known names: finalizers, labels and annotations, shared by all controllers so that
//! every binary agrees on them (and on those of the original Go operator).

/// Finalizer of VpcDnsForward, the same name the original operator used so its objects are adopted.
pub const DNS_FINALIZER: &str = "dns.finalizer.ustc.io";
/// Finalizer of VpcNatTunnel, the same name the original operator used so its objects are adopted.
pub const TUNNEL_FINALIZER: &str = "tunnel.finalizer.ustc.io";

/// Label prefix of labels this project puts on objects it owns.
pub const LABEL_PREFIX: &str = "multivpc.kubeovn.ustc.io";
/// GatewayExIp label: the Submariner cluster ID of the cluster that owns the gateway.
pub const LABEL_CLUSTER: &str = "multivpc.kubeovn.ustc.io/cluster";
/// GatewayExIp label: the VpcNatGateway the object describes (as named in its tunnels' `natGwDp`).
pub const LABEL_GATEWAY: &str = "multivpc.kubeovn.ustc.io/gateway";
/// GatewayExIp label: the Kube-OVN VPC the gateway serves.
pub const LABEL_VPC: &str = "multivpc.kubeovn.ustc.io/vpc";
/// GatewayExIp label: the gateway instance currently carrying the traffic (differs from
/// [`LABEL_GATEWAY`] after a failover to a standby).
pub const LABEL_ACTIVE_GATEWAY: &str = "multivpc.kubeovn.ustc.io/active-gateway";

/// Submariner broker convention: the cluster an exported object comes from.
pub const SUBMARINER_CLUSTER_ID: &str = "submariner-io/clusterID";
/// Submariner broker convention: the namespace an exported object comes from.
pub const SUBMARINER_ORIGIN_NAMESPACE: &str = "submariner-io/originatingNamespace";

/// Kube-OVN's default namespace (vpc-dns, NAT gateways, GatewayExIps by default); see
/// [`crate::gateway::KubeOvn`] for the configured one.
pub const KUBE_SYSTEM: &str = crate::gateway::DEFAULT_KUBE_OVN_NAMESPACE;

/// Deployment label of Kube-OVN vpc-dns Deployments.
pub const LABEL_VPC_DNS: &str = "ovn.kubernetes.io/vpc-dns";
/// ConfigMap holding the Corefile of every vpc-dns Deployment.
pub const VPC_DNS_COREFILE: &str = "vpc-dns-corefile";

/// Name of the GatewayExIp describing gateway `gateway` of cluster `cluster_id` (seed: `gw1-cluster1`).
pub fn gateway_exip_name(gateway: &str, cluster_id: &str) -> String {
    format!("{gateway}-{cluster_id}")
}

/// The field manager exip-syncer writes GatewayExIps with (create and apply).
pub const EXIP_SYNCER_MANAGER: &str = "exip-syncer";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_seed() {
        assert_eq!(gateway_exip_name("gw1", "cluster1"), "gw1-cluster1");
    }
}
