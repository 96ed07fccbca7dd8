//! Submariner resources: the cluster's Globalnet CIDR, its egress IPs and the broker connection.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// Namespace of Submariner's operator-managed objects.
pub const SUBMARINER_NAMESPACE: &str = "submariner-operator";
/// Name of the cluster-wide Globalnet egress IP object.
pub const CLUSTER_EGRESS_IP_NAME: &str = "cluster-egress.submariner.io";
/// Name of the ServiceDiscovery object created by `subctl join`.
pub const SERVICE_DISCOVERY_NAME: &str = "service-discovery";
/// Default namespace of synced objects on the broker.
pub const DEFAULT_BROKER_NAMESPACE: &str = "submariner-k8s-broker";

/// A Submariner cluster (`submariner-operator/<cluster id>`). Submariner spells its fields in
/// snake case.
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "submariner.io",
    version = "v1",
    kind = "Cluster",
    plural = "clusters",
    namespaced,
    derive = "Default",
    derive = "PartialEq"
)]
pub struct ClusterSpec {
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub global_cidr: Vec<String>,
    #[serde(default)]
    pub service_cidr: Vec<String>,
    #[serde(default)]
    pub cluster_cidr: Vec<String>,
}

/// The cluster's Globalnet egress IPs (cluster-scoped, `cluster-egress.submariner.io`).
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "submariner.io",
    version = "v1",
    kind = "ClusterGlobalEgressIP",
    plural = "clusterglobalegressips",
    status = "ClusterGlobalEgressIpStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGlobalEgressIpSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_global_ips: Option<i64>,
}

/// Allocation result of the cluster egress IPs.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGlobalEgressIpStatus {
    #[serde(default, rename = "allocatedIPs")]
    pub allocated_ips: Vec<String>,
}

/// How this cluster reaches the Submariner broker (`submariner-operator/service-discovery`).
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "submariner.io",
    version = "v1alpha1",
    kind = "ServiceDiscovery",
    plural = "servicediscoveries",
    namespaced,
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDiscoverySpec {
    /// Broker API server as host:port, without a scheme.
    #[serde(default)]
    pub broker_k8s_api_server: String,
    #[serde(default)]
    pub broker_k8s_api_server_token: String,
    /// Base64 of the broker's CA certificate (PEM).
    #[serde(default, rename = "brokerK8sCA")]
    pub broker_k8s_ca: String,
    #[serde(default)]
    pub broker_k8s_remote_namespace: String,
    #[serde(default)]
    pub broker_k8s_insecure: bool,
    /// Name of the Secret in `submariner-operator` holding the broker credentials (keys `token`
    /// and `ca.crt`) that Submariner's own pods mount; it follows token rotation, the inline
    /// token may not.
    #[serde(default)]
    pub broker_k8s_secret: String,
    #[serde(default, rename = "clusterID")]
    pub cluster_id: String,
    #[serde(default)]
    pub globalnet_enabled: bool,
}
