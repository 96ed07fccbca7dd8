//! Builders for what Kube-OVN and Submariner would create, and harness-level
//! helpers that apply them. Pure builders return typed objects or
//! [`DynamicObject`]s; `Harness::install_*`/`create_*` apply them.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::Kubeconfig;
use serde_json::json;

use crate::apply::{apply, apply_dynamic, apply_file, patch_status_dynamic};
use crate::exec::{ExecOutput, pod_exec};
use crate::wait::wait_for_object;
use crate::{Harness, env_get, parse_env};

/// The bound on one command in the kernel VM (software emulation is slow, not stuck).
const VM_EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// Namespace of Kube-OVN's NAT gateways and vpc-dns.
pub const KUBE_SYSTEM: &str = "kube-system";
/// Default external network NAD of Kube-OVN NAT gateways.
pub const DEFAULT_EXTERNAL_NAD: &str = "ovn-vpc-external-network";
/// Name of the NAT gateway container.
pub const NAT_GW_CONTAINER: &str = "vpc-nat-gw";
/// Submariner's namespace.
pub const SUBMARINER_NS: &str = "submariner-operator";
/// Default broker namespace.
pub const BROKER_NS: &str = "submariner-k8s-broker";
/// Submariner's CRDs, verbatim in `e2e/fixtures/upstream/submariner/`.
pub const SUBMARINER_CRDS: [&str; 4] = [
    "submariner.io_brokers.yaml",
    "submariner.io_clusterglobalegressips.yaml",
    "submariner.io_clusters.yaml",
    "submariner.io_servicediscoveries.yaml",
];
/// A Kube-OVN generation the harness can impersonate: its real CRDs (verbatim in
/// `e2e/fixtures/upstream/kube-ovn/crds-*.yaml`) and the shapes of what its controller creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KubeOvnVersion {
    V1_12,
    V1_13,
    V1_14,
    V1_15,
    /// v1.16 and later: the CRDs of Kube-OVN's master branch.
    V1_16,
}

impl KubeOvnVersion {
    /// The version every harness test runs against unless it says otherwise (override with
    /// `MULTIVPC_E2E_KUBE_OVN=1.12|1.13|1.14|1.15|1.16`).
    pub fn harness_default() -> Self {
        std::env::var("MULTIVPC_E2E_KUBE_OVN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Self::V1_15)
    }

    /// File of its CRDs under `e2e/fixtures/upstream/kube-ovn/`.
    pub fn crd_file(self) -> &'static str {
        match self {
            Self::V1_12 => "crds-release-1.12.yaml",
            Self::V1_13 => "crds-release-1.13.yaml",
            Self::V1_14 => "crds-release-1.14.yaml",
            Self::V1_15 => "crds-release-1.15.yaml",
            Self::V1_16 => "crds-master.yaml",
        }
    }
}

impl std::str::FromStr for KubeOvnVersion {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.trim().trim_start_matches('v') {
            "1.12" => Self::V1_12,
            "1.13" => Self::V1_13,
            "1.14" => Self::V1_14,
            "1.15" => Self::V1_15,
            "1.16" | "master" => Self::V1_16,
            other => return Err(format!("unknown Kube-OVN version {other:?}")),
        })
    }
}

impl std::fmt::Display for KubeOvnVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self {
            Self::V1_12 => "v1.12",
            Self::V1_13 => "v1.13",
            Self::V1_14 => "v1.14",
            Self::V1_15 => "v1.15",
            Self::V1_16 => "v1.16",
        };
        f.write_str(v)
    }
}

/// Submariner's broker-client Role, verbatim in `e2e/fixtures/upstream/submariner/`.
pub const BROKER_CLIENT_ROLE: &str = "submariner-k8s-broker-cluster";
/// The release name of the broker chart in the harness.
pub const BROKER_RELEASE: &str = "multivpc-broker";

fn dynamic(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).expect("fixture builders produce valid objects")
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("fixture builders produce valid objects")
}

// ---------------------------------------------------------------- gateways

/// A kwok node whose kwok-controller runs inside its own netns: pods bound to
/// it exec inside that netns. Created by [`Harness::gateway_node`].
#[derive(Clone, Debug)]
pub struct GatewayNode {
    pub cluster: String,
    pub gateway: String,
    pub slot: u32,
    /// The gateway's netns (`ip netns exec <netns> ...`).
    pub netns: String,
    /// Node name (`gwnode-<gateway>`), tainted `multivpc.e2e/gateway=<gateway>:NoSchedule`.
    pub node: String,
    /// Host address forwarding to the node's kubelet API (the node's InternalIP).
    pub node_ip: String,
    /// eth0 address (VPC side) and its subnet.
    pub lan_ip: String,
    pub lan_cidr: String,
    /// The VPC router address on eth0's subnet (`ovn.kubernetes.io/gateway`).
    pub ovn_gateway: String,
    /// net1 address (external network) and its subnet/gateway.
    pub external_ip: String,
    pub external_cidr: String,
    pub external_gateway: String,
    pub vpc_netns: String,
    pub ext_netns: String,
    /// Whether its netns (and its VPC and external netns) live in the kernel VM
    /// ([`NatGatewaySpec::in_kernel_vm`]) rather than on the host.
    pub in_vm: bool,
}

impl GatewayNode {
    /// Runs `cmd` inside the gateway's netns, wherever it lives (a non-zero exit is no error).
    pub async fn netns_exec(&self, cmd: &[&str]) -> Result<ExecOutput> {
        self.exec_in(&self.netns, cmd).await
    }

    /// Runs `cmd` inside `netns` on the side (host or kernel VM) this gateway lives on: its own
    /// netns, [`GatewayNode::vpc_netns`] or [`GatewayNode::ext_netns`].
    pub async fn exec_in(&self, netns: &str, cmd: &[&str]) -> Result<ExecOutput> {
        if !self.in_vm {
            return crate::exec::netns_exec(netns, cmd).await;
        }
        let vm = crate::vm::Vm::from_run_dir(&crate::run_dir())
            .context("the gateway lives in the kernel VM, which is not up")?;
        vm.netns_exec(netns, cmd, VM_EXEC_TIMEOUT).await
    }

    pub(crate) fn from_env(text: &str) -> Result<Self> {
        let e = parse_env(text);
        Ok(GatewayNode {
            cluster: env_get(&e, "CLUSTER")?,
            gateway: env_get(&e, "GATEWAY")?,
            slot: env_get(&e, "GATEWAY_SLOT")?.parse()?,
            netns: env_get(&e, "GATEWAY_NETNS")?,
            node: env_get(&e, "GATEWAY_NODE")?,
            node_ip: env_get(&e, "NODE_IP")?,
            lan_ip: env_get(&e, "LAN_IP")?,
            lan_cidr: env_get(&e, "LAN_CIDR")?,
            ovn_gateway: env_get(&e, "OVN_GATEWAY")?,
            external_ip: env_get(&e, "EXTERNAL_IP")?,
            external_cidr: env_get(&e, "EXTERNAL_CIDR")?,
            external_gateway: env_get(&e, "EXTERNAL_GATEWAY")?,
            vpc_netns: env_get(&e, "VPC_NETNS")?,
            ext_netns: env_get(&e, "EXT_NETNS")?,
            in_vm: e.get("GATEWAY_PLACEMENT").is_some_and(|p| p == "vm"),
        })
    }

    /// Prefix length of the external network, e.g. 16.
    pub fn external_prefix_len(&self) -> &str {
        self.external_cidr.split('/').nth(1).unwrap_or("16")
    }
}

/// What to create for one Kube-OVN VPC NAT gateway.
#[derive(Clone, Debug)]
pub struct NatGatewaySpec {
    /// VpcNatGateway name; StatefulSet `vpc-nat-gw-<name>`, pod `vpc-nat-gw-<name>-0`.
    pub name: String,
    /// spec.vpc
    pub vpc: String,
    /// spec.subnet (the VPC subnet the gateway's eth0 is on)
    pub subnet: String,
    /// spec.externalSubnets[0] and the NAD name (default `ovn-vpc-external-network`).
    pub external_subnet: String,
    /// net1's attachment when the external Subnet's `spec.provider` names another NAD (Kube-OVN
    /// v1.14+); `None`: `<kube-system>/<external_subnet>`, as in every version by default.
    pub attachment: Option<Attachment>,
    /// Extra annotations for the pod template.
    pub extra_annotations: BTreeMap<String, String>,
    /// The Kube-OVN generation whose StatefulSet (and gateway start-up) to reproduce.
    pub version: KubeOvnVersion,
    /// Its netns inside the kernel VM (Debian's kernel: GRE, ESP) instead of on the host.
    pub in_vm: bool,
}

impl NatGatewaySpec {
    /// Gateway `name` of `vpc`, subnet `<vpc>-subnet`, default external network.
    pub fn new(name: &str, vpc: &str) -> Self {
        NatGatewaySpec {
            name: name.into(),
            vpc: vpc.into(),
            subnet: format!("{vpc}-subnet"),
            external_subnet: DEFAULT_EXTERNAL_NAD.into(),
            attachment: None,
            extra_annotations: BTreeMap::new(),
            version: KubeOvnVersion::harness_default(),
            in_vm: false,
        }
    }

    /// Backed by a netns inside the harness's kernel VM (`make e2e-vm-up`; e2e/README.md).
    pub fn in_kernel_vm(mut self) -> Self {
        self.in_vm = true;
        self
    }

    /// Shaped as Kube-OVN `version` creates it (`e2e/fixtures/upstream/kube-ovn/nat-gw-*`):
    /// v1.12 runs `nat-gateway.sh init` in an init container, which turns ARP off on net1 (the
    /// harness does that in the gateway's netns); v1.13+ sleeps and carries route annotations.
    pub fn version(mut self, version: KubeOvnVersion) -> Self {
        self.version = version;
        self
    }

    /// net1 on NAD `<namespace>/<nad>`, the provider `<nad>.<namespace>` (or
    /// `<nad>.<namespace>.ovn` for a NAD of type kube-ovn), as Kube-OVN v1.14+ builds it from an
    /// external Subnet whose `spec.provider` names that NAD.
    pub fn attachment(mut self, namespace: &str, nad: &str, kube_ovn_type: bool) -> Self {
        self.attachment = Some(Attachment {
            namespace: namespace.into(),
            nad: nad.into(),
            kube_ovn_type,
        });
        self
    }

    /// The attachment net1 is on.
    pub fn effective_attachment(&self) -> Attachment {
        self.attachment.clone().unwrap_or_else(|| Attachment {
            namespace: KUBE_SYSTEM.into(),
            nad: self.external_subnet.clone(),
            kube_ovn_type: false,
        })
    }

    pub fn subnet(mut self, subnet: &str) -> Self {
        self.subnet = subnet.into();
        self
    }

    pub fn external_subnet(mut self, nad: &str) -> Self {
        self.external_subnet = nad.into();
        self
    }

    pub fn statefulset_name(&self) -> String {
        format!("vpc-nat-gw-{}", self.name)
    }

    pub fn pod_name(&self) -> String {
        format!("vpc-nat-gw-{}-0", self.name)
    }
}

/// A Multus NetworkAttachmentDefinition a NAT gateway's net1 is attached to.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub namespace: String,
    pub nad: String,
    /// A NAD of type kube-ovn: Kube-OVN's provider then ends in `.ovn`.
    pub kube_ovn_type: bool,
}

impl Attachment {
    /// Kube-OVN's provider name of the attachment: the prefix of its pod annotation keys.
    pub fn provider(&self) -> String {
        let suffix = if self.kube_ovn_type { ".ovn" } else { "" };
        format!("{}.{}{suffix}", self.nad, self.namespace)
    }
}

/// `kubeovn.io/v1 VpcNatGateway`.
pub fn vpc_nat_gateway(spec: &NatGatewaySpec, lan_ip: &str) -> DynamicObject {
    dynamic(json!({
        "apiVersion": "kubeovn.io/v1", "kind": "VpcNatGateway",
        "metadata": {"name": spec.name},
        "spec": {
            "vpc": spec.vpc, "subnet": spec.subnet, "lanIp": lan_ip,
            "externalSubnets": [spec.external_subnet],
        }
    }))
}

/// The StatefulSet Kube-OVN creates for a VpcNatGateway (labels and template
/// annotations of DESIGN §4), plus the annotations Kube-OVN IPAM would set on
/// the pod, pinned to the gateway's netns-backed node.
pub fn nat_gw_statefulset(spec: &NatGatewaySpec, node: &GatewayNode) -> StatefulSet {
    let sts = spec.statefulset_name();
    let app = sts.clone();
    let attachment = spec.effective_attachment();
    let ext_provider = attachment.provider();
    let mut annotations: BTreeMap<String, String> = [
        (
            "k8s.v1.cni.cncf.io/networks",
            format!("{}/{}", attachment.namespace, attachment.nad),
        ),
        ("ovn.kubernetes.io/vpc_nat_gw", spec.name.clone()),
        ("ovn.kubernetes.io/logical_switch", spec.subnet.clone()),
        ("ovn.kubernetes.io/ip_address", node.lan_ip.clone()),
        // What Kube-OVN IPAM would add to the pod (kwok runs no IPAM).
        ("ovn.kubernetes.io/gateway", node.ovn_gateway.clone()),
        ("ovn.kubernetes.io/cidr", node.lan_cidr.clone()),
        ("ovn.kubernetes.io/allocated", "true".into()),
        (
            &format!("{ext_provider}.kubernetes.io/ip_address"),
            node.external_ip.clone(),
        ),
        (
            &format!("{ext_provider}.kubernetes.io/cidr"),
            node.external_cidr.clone(),
        ),
        (
            &format!("{ext_provider}.kubernetes.io/gateway"),
            node.external_gateway.clone(),
        ),
        (
            &format!("{ext_provider}.kubernetes.io/allocated"),
            "true".into(),
        ),
        ("multivpc.e2e/netns", node.netns.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let privileged = json!({"privileged": true, "allowPrivilegeEscalation": true});
    let (container, init_containers) = if spec.version == KubeOvnVersion::V1_12 {
        let image = "docker.io/kubeovn/vpc-nat-gateway:v1.12.22";
        (
            json!({"name": NAT_GW_CONTAINER, "image": image, "command": ["bash"],
                   "args": ["-c", "while true; do sleep 10000; done"], "securityContext": privileged}),
            json!([{"name": "vpc-nat-gw-init", "image": image, "command": ["bash"],
                    "args": ["-c", format!("bash /kube-ovn/nat-gateway.sh init 10.96.0.0/12,{}", node.ovn_gateway)],
                    "securityContext": privileged}]),
        )
    } else {
        annotations.insert(
            "ovn.kubernetes.io/routes".into(),
            format!(r#"[{{"dst":"10.96.0.0/12","gw":"{}"}}]"#, node.ovn_gateway),
        );
        annotations.insert(
            format!("{ext_provider}.kubernetes.io/routes"),
            format!(
                r#"[{{"dst":"0.0.0.0/0","gw":"{}"}}]"#,
                node.external_gateway
            ),
        );
        (
            json!({"name": NAT_GW_CONTAINER, "image": format!("docker.io/kubeovn/vpc-nat-gateway:{}.0", spec.version),
                   "command": ["sleep", "infinity"], "securityContext": privileged}),
            json!([]),
        )
    };
    annotations.extend(spec.extra_annotations.clone());
    typed(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {
            "name": sts, "namespace": KUBE_SYSTEM,
            "labels": {"app": app, "ovn.kubernetes.io/vpc-nat-gw": "true"},
        },
        "spec": {
            "replicas": 1,
            "serviceName": sts,
            "selector": {"matchLabels": {"app": app, "ovn.kubernetes.io/vpc-nat-gw": "true"}},
            "template": {
                "metadata": {
                    "labels": {"app": app, "ovn.kubernetes.io/vpc-nat-gw": "true"},
                    "annotations": annotations,
                },
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node.node},
                    "tolerations": [{"key": "multivpc.e2e/gateway", "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 0,
                    "initContainers": init_containers,
                    "containers": [container],
                },
            },
        },
    }))
}

/// What Kube-OVN v1.12's `nat-gateway.sh init` leaves on net1 that matters here: ARP off (only
/// `add_eip`, an IptablesEIP, turns it on again), nothing in the neighbour table.
async fn v1_12_init(node: &GatewayNode) -> Result<()> {
    node.netns_exec(&[
        "sh",
        "-c",
        "ip link set dev net1 arp off && ip neigh flush dev net1",
    ])
    .await?
    .check()?;
    Ok(())
}

/// A VPC NAT gateway created in the harness: VpcNatGateway + StatefulSet + netns.
#[derive(Clone, Debug)]
pub struct NatGateway {
    pub cluster: String,
    pub spec: NatGatewaySpec,
    pub node: GatewayNode,
}

impl NatGateway {
    pub fn namespace(&self) -> &'static str {
        KUBE_SYSTEM
    }

    pub fn statefulset_name(&self) -> String {
        self.spec.statefulset_name()
    }

    pub fn pod_name(&self) -> String {
        self.spec.pod_name()
    }

    /// Wait until the StatefulSet reports availableReplicas=1 and its pod is Running.
    pub async fn wait_available(&self, h: &Harness, timeout: Duration) -> Result<Pod> {
        let client = h.client(&self.cluster);
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), KUBE_SYSTEM);
        wait_for_object(&sts, &self.statefulset_name(), timeout, |s| {
            s.status.as_ref().and_then(|st| st.available_replicas) == Some(1)
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client, KUBE_SYSTEM);
        wait_for_object(&pods, &self.pod_name(), timeout, |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await
    }

    /// Exec in the gateway pod's `vpc-nat-gw` container through the API server.
    pub async fn exec(&self, h: &Harness, cmd: &[&str]) -> Result<ExecOutput> {
        pod_exec(
            &h.client(&self.cluster),
            KUBE_SYSTEM,
            &self.pod_name(),
            Some(NAT_GW_CONTAINER),
            cmd,
        )
        .await
    }

    /// Restart the gateway pod as a crash would: the netns starts over (only
    /// lo/eth0/net1 with their addresses and the default route; iptables
    /// empty), the pod is deleted and the StatefulSet recreates it with a new
    /// UID on the same node. Returns the new pod once Running.
    pub async fn restart(&self, h: &Harness, timeout: Duration) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(h.client(&self.cluster), KUBE_SYSTEM);
        let old_uid = pods.get(&self.pod_name()).await?.metadata.uid;
        h.reset_gateway_netns(&self.cluster, &self.spec.name)
            .await?;
        if self.spec.version == KubeOvnVersion::V1_12 {
            v1_12_init(&self.node).await?;
        }
        pods.delete(
            &self.pod_name(),
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await?;
        wait_for_object(&pods, &self.pod_name(), timeout, |p| {
            p.metadata.uid != old_uid
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await
    }

    /// Simulate the failure of the gateway's node: its kubelet (kwok-controller)
    /// stops, so the node lease stops renewing; kube-controller-manager marks
    /// the node NotReady after its node-monitor grace period (~50 s) and the
    /// pod not Ready. The netns and its state stay. See [`NatGateway::start_node`].
    pub async fn stop_node(&self, _h: &Harness) -> Result<()> {
        let script = crate::e2e_dir().join("scripts/netns.sh");
        crate::host_exec(&[
            "bash",
            &script.to_string_lossy(),
            "gateway-stop",
            &self.cluster,
            &self.spec.name,
        ])
        .await?
        .check()?;
        Ok(())
    }

    /// Bring the gateway's node back after [`NatGateway::stop_node`]: its
    /// kubelet (kwok-controller) restarts, the node turns Ready, and — as a
    /// returning kubelet reports its still-running containers — the pods on
    /// it are marked Ready again. The netns state is untouched (a kubelet
    /// outage, not a reboot; use [`NatGateway::restart`] for that).
    pub async fn start_node(&self, h: &Harness) -> Result<()> {
        h.gateway_node(&self.cluster, &self.spec.name).await?;
        let pods: Api<Pod> = Api::namespaced(h.client(&self.cluster), KUBE_SYSTEM);
        let on_node = pods
            .list(
                &kube::api::ListParams::default()
                    .fields(&format!("spec.nodeName={}", self.node.node)),
            )
            .await?;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        for p in on_node {
            let name = p.metadata.name.clone().unwrap_or_default();
            let patch = json!({"status": {"conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ]}});
            pods.patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Strategic(patch),
            )
            .await
            .with_context(|| format!("mark pod {name} Ready"))?;
        }
        Ok(())
    }

    /// Scale the gateway's StatefulSet (0 takes the gateway away, 1 brings it back).
    pub async fn scale(&self, h: &Harness, replicas: i32) -> Result<()> {
        let sts: Api<StatefulSet> = Api::namespaced(h.client(&self.cluster), KUBE_SYSTEM);
        sts.patch(
            &self.statefulset_name(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
        Ok(())
    }

    /// Exec `sh -c script` in the gateway pod and require exit 0.
    pub async fn sh(&self, h: &Harness, script: &str) -> Result<ExecOutput> {
        self.exec(h, &["sh", "-c", script]).await?.check()
    }
}

// ---------------------------------------------------------------- Kube-OVN objects

/// `kubeovn.io/v1 Vpc` with optional static routes `(cidr, nextHopIP)` (policyDst).
pub fn vpc(name: &str, static_routes: &[(&str, &str)]) -> DynamicObject {
    let routes: Vec<_> = static_routes
        .iter()
        .map(|(cidr, nh)| json!({"policy": "policyDst", "cidr": cidr, "nextHopIP": nh}))
        .collect();
    let mut spec = json!({});
    if !routes.is_empty() {
        spec["staticRoutes"] = json!(routes);
    }
    dynamic(
        json!({"apiVersion": "kubeovn.io/v1", "kind": "Vpc", "metadata": {"name": name}, "spec": spec}),
    )
}

/// Lists `namespace` in Vpc `vpc_name`'s `spec.namespaces` (creating the Vpc when absent), as
/// a user does so that VpcNatTunnels and VpcDnsForwards of that namespace may act on the VPC
/// (tenancy).
pub async fn admit_namespace(client: &kube::Client, vpc_name: &str, namespace: &str) -> Result<()> {
    edit_vpc_namespaces(client, vpc_name, namespace, true).await
}

/// Takes `namespace` out of Vpc `vpc_name`'s `spec.namespaces`.
pub async fn revoke_namespace(
    client: &kube::Client,
    vpc_name: &str,
    namespace: &str,
) -> Result<()> {
    edit_vpc_namespaces(client, vpc_name, namespace, false).await
}

/// The list is atomic and tests share VPCs: a merge patch preconditioned on the
/// resourceVersion, retried on conflict.
async fn edit_vpc_namespaces(
    client: &kube::Client,
    vpc_name: &str,
    namespace: &str,
    admit: bool,
) -> Result<()> {
    use multivpc_api::foreign::kubeovn::Vpc;
    let api: Api<Vpc> = Api::all(client.clone());
    for _ in 0..20 {
        let Some(current) = api.get_opt(vpc_name).await? else {
            if !admit {
                return Ok(());
            }
            let mut obj = vpc(vpc_name, &[]);
            obj.data["spec"]["namespaces"] = json!([namespace]);
            let (dyn_api, _) = crate::apply::dynamic_api(client, &obj, "default").await?;
            match dyn_api.create(&PostParams::default(), &obj).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e).context(format!("create Vpc {vpc_name}")),
            }
        };
        let mut namespaces = current.spec.namespaces.clone();
        let listed = namespaces.iter().any(|n| n == namespace);
        match (admit, listed) {
            (true, true) | (false, false) => return Ok(()),
            (true, false) => namespaces.push(namespace.to_owned()),
            (false, true) => namespaces.retain(|n| n != namespace),
        }
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"namespaces": namespaces},
        });
        let params = kube::api::PatchParams::default();
        match api
            .patch(vpc_name, &params, &kube::api::Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).context(format!("Vpc {vpc_name} namespaces")),
        }
    }
    Err(anyhow!(
        "Vpc {vpc_name}: kept conflicting while editing its namespaces"
    ))
}

/// [`admit_namespace`] to the VPC that VpcNatGateway `gateway` serves.
pub async fn admit_namespace_to_gateway(
    client: &kube::Client,
    gateway: &str,
    namespace: &str,
) -> Result<()> {
    use multivpc_api::foreign::kubeovn::VpcNatGateway;
    let gw = Api::<VpcNatGateway>::all(client.clone())
        .get(gateway)
        .await
        .with_context(|| format!("VpcNatGateway {gateway}"))?;
    admit_namespace(client, &gw.spec.vpc, namespace).await
}

/// `kubeovn.io/v1 Subnet`.
pub fn subnet(name: &str, cidr: &str, gateway: &str, vpc: &str, provider: &str) -> DynamicObject {
    dynamic(json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
        "metadata": {"name": name},
        "spec": {"cidrBlock": cidr, "gateway": gateway, "vpc": vpc, "provider": provider, "protocol": "IPv4"}
    }))
}

/// The cluster's default subnet `ovn-default` (vpc `ovn-cluster`, provider `ovn`).
pub fn ovn_default_subnet(cidr: &str, gateway: &str) -> DynamicObject {
    let mut s = subnet("ovn-default", cidr, gateway, "ovn-cluster", "ovn");
    s.data["spec"]["default"] = json!(true);
    s
}

/// `kube-system/kube-dns` Service (ClusterIP allocated by the API server unless given).
pub fn kube_dns_service(cluster_ip: Option<&str>) -> Service {
    let mut spec = json!({
        "selector": {"k8s-app": "kube-dns"},
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ],
    });
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
    }
    typed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": KUBE_SYSTEM, "labels": {"k8s-app": "kube-dns"}},
        "spec": spec,
    }))
}

/// `kubeovn.io/v1 VpcDns` (status.active is set separately, see [`Harness::install_vpc_dns`]).
pub fn vpc_dns(name: &str, vpc: &str, subnet: &str) -> DynamicObject {
    dynamic(json!({
        "apiVersion": "kubeovn.io/v1", "kind": "VpcDns",
        "metadata": {"name": name},
        "spec": {"vpc": vpc, "subnet": subnet, "replicas": 1}
    }))
}

/// The documented vpc-dns Corefile.
pub const VPC_DNS_COREFILE: &str = ".:53 {\n    errors\n    health {\n      lameduck 5s\n    }\n    ready\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa ip6.arpa\n    }\n    prometheus :9153\n    forward . /etc/resolv.conf {\n      prefer_udp\n    }\n    cache 30\n    loop\n    reload\n    loadbalance\n}\n";

/// `kube-system/vpc-dns-corefile` ConfigMap (created by the user in real life).
pub fn vpc_dns_corefile_configmap(corefile: &str) -> ConfigMap {
    corefile_configmap("vpc-dns-corefile", corefile)
}

/// A Corefile ConfigMap `kube-system/<name>` (Kube-OVN v1.16+ VpcDns may name its own).
pub fn corefile_configmap(name: &str, corefile: &str) -> ConfigMap {
    typed(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": KUBE_SYSTEM},
        "data": {"Corefile": corefile},
    }))
}

/// `kube-system/vpc-dns-config` ConfigMap (coredns-vip, nad-name, nad-provider), as Kube-OVN's
/// vpc-dns guide has it.
pub fn vpc_dns_config_configmap(nad_name: &str, nad_provider: &str) -> ConfigMap {
    typed(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "vpc-dns-config", "namespace": KUBE_SYSTEM},
        "data": {"coredns-vip": crate::dns::VPC_DNS_VIP, "enable-vpc-dns": "true",
                 "nad-name": nad_name, "nad-provider": nad_provider},
    }))
}

/// Which Kube-OVN generation's vpc-dns Deployment to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VpcDnsForm {
    /// v1.12: init container `init-route` whose `sh -c` adds the routes.
    V112InitContainer,
    /// v1.13+: routes as JSON in `<nad-provider>.kubernetes.io/routes`.
    V113RoutesAnnotation,
}

/// Default NAD of vpc-dns and its provider.
pub const VPC_DNS_NAD: &str = "ovn-nad";
pub const VPC_DNS_NAD_PROVIDER: &str = "ovn-nad.default.ovn";

/// The `kube-system/vpc-dns-<name>` Deployment as Kube-OVN builds it. `routes`
/// are `(dst_ip, gw)` pairs Kube-OVN itself adds (e.g. the kube-apiserver
/// ClusterIP via the ovn-default gateway).
pub fn vpc_dns_deployment(
    name: &str,
    subnet: &str,
    form: VpcDnsForm,
    corefile: &str,
    routes: &[(&str, &str)],
) -> Deployment {
    let dep = format!("vpc-dns-{name}");
    let mut annotations = json!({
        "k8s.v1.cni.cncf.io/networks": format!("default/{VPC_DNS_NAD}"),
        "ovn.kubernetes.io/logical_switch": subnet,
        format!("{VPC_DNS_NAD_PROVIDER}.kubernetes.io/logical_switch"): "ovn-default",
    });
    let mut pod_spec = json!({
        "containers": [{
            "name": "coredns",
            "image": "docker.io/coredns/coredns:1.11.1",
            "args": ["-conf", "/etc/coredns/Corefile"],
            "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": true}],
        }],
        "volumes": [{"name": "config-volume", "configMap": {"name": corefile, "items": [{"key": "Corefile", "path": "Corefile"}]}}],
        "terminationGracePeriodSeconds": 0,
    });
    match form {
        VpcDnsForm::V112InitContainer => {
            let script: String = routes
                .iter()
                .map(|(dst, gw)| format!("ip -4 route add {dst} via {gw} dev net1;"))
                .collect();
            pod_spec["initContainers"] = json!([{
                "name": "init-route",
                "image": "docker.io/kubeovn/vpc-nat-gateway:v1.12.22",
                "command": ["sh", "-c", script],
                "securityContext": {"privileged": true, "allowPrivilegeEscalation": true},
            }]);
        }
        VpcDnsForm::V113RoutesAnnotation => {
            let r: Vec<_> = routes
                .iter()
                .map(|(dst, gw)| {
                    let dst = if dst.contains('/') {
                        dst.to_string()
                    } else {
                        format!("{dst}/32")
                    };
                    json!({"dst": dst, "gw": gw})
                })
                .collect();
            annotations[format!("{VPC_DNS_NAD_PROVIDER}.kubernetes.io/routes")] =
                json!(serde_json::to_string(&r).expect("json"));
        }
    }
    typed(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": dep, "namespace": KUBE_SYSTEM, "labels": {"ovn.kubernetes.io/vpc-dns": "true"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"k8s-app": dep}},
            "template": {
                "metadata": {"labels": {"k8s-app": dep}, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }))
}

// ---------------------------------------------------------------- Submariner

/// `submariner.io/v1 Cluster` `submariner-operator/<cluster_id>`.
pub fn submariner_cluster(cluster_id: &str, global_cidr: &[&str]) -> DynamicObject {
    dynamic(json!({
        "apiVersion": "submariner.io/v1", "kind": "Cluster",
        "metadata": {"name": cluster_id, "namespace": SUBMARINER_NS},
        "spec": {
            "cluster_id": cluster_id,
            "global_cidr": global_cidr,
            "service_cidr": ["10.96.0.0/16"],
            "cluster_cidr": ["10.244.0.0/16"],
            "color_codes": ["blue"],
        }
    }))
}

/// `submariner.io/v1 ClusterGlobalEgressIP` `cluster-egress.submariner.io`
/// (status.allocatedIPs is set separately, as Submariner's controller would).
pub fn cluster_global_egress_ip(num: usize) -> DynamicObject {
    dynamic(json!({
        "apiVersion": "submariner.io/v1", "kind": "ClusterGlobalEgressIP",
        "metadata": {"name": "cluster-egress.submariner.io"},
        "spec": {"numGlobalIPs": num}
    }))
}

/// How a member cluster reaches the broker's API server.
#[derive(Clone, Debug)]
pub struct BrokerAccess {
    /// `host:port`, no scheme.
    pub api_server: String,
    pub token: String,
    /// base64 of the broker's CA certificate (PEM).
    pub ca_b64: String,
    pub namespace: String,
}

/// `submariner.io/v1alpha1 ServiceDiscovery` `submariner-operator/service-discovery`.
pub fn service_discovery(cluster_id: &str, broker: &BrokerAccess) -> DynamicObject {
    dynamic(json!({
        "apiVersion": "submariner.io/v1alpha1", "kind": "ServiceDiscovery",
        "metadata": {"name": "service-discovery", "namespace": SUBMARINER_NS},
        "spec": {
            "brokerK8sApiServer": broker.api_server,
            "brokerK8sApiServerToken": broker.token,
            "brokerK8sCA": broker.ca_b64,
            "brokerK8sRemoteNamespace": broker.namespace,
            "brokerK8sInsecure": false,
            "clusterID": cluster_id,
            "debug": false,
            "globalnetEnabled": true,
            "namespace": SUBMARINER_NS,
        }
    }))
}

fn namespace(name: &str) -> Namespace {
    typed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
}

// ---------------------------------------------------------------- harness helpers

impl Harness {
    /// Apply the real Kube-OVN CRDs of [`KubeOvnVersion::harness_default`] and Submariner's
    /// real CRDs (`e2e/fixtures/upstream/`, verbatim) to `cluster` and wait until they are
    /// Established. Idempotent.
    pub async fn install_foreign_crds(&self, cluster: &str) -> Result<()> {
        // Once per cluster and test process: they stay while the harness is up.
        static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let key = format!("{}#{}", self.cluster(cluster).server, cluster);
        if DONE.lock().unwrap().contains(&key) {
            return Ok(());
        }
        let client = self.client(cluster);
        let fixtures = crate::e2e_dir().join("fixtures");
        let mut files = vec![
            fixtures
                .join("upstream/kube-ovn")
                .join(KubeOvnVersion::harness_default().crd_file()),
        ];
        files.extend(
            SUBMARINER_CRDS
                .iter()
                .map(|f| fixtures.join("upstream/submariner").join(f)),
        );
        let mut names = Vec::new();
        for f in files {
            for o in apply_file(&client, f).await? {
                names.push(o.metadata.name.unwrap_or_default());
            }
        }
        self.wait_crds_established(cluster, &names).await?;
        DONE.lock().unwrap().push(key);
        Ok(())
    }

    /// Replace the Kube-OVN CRDs of `cluster` by those of `version` (server-side apply of the
    /// verbatim copies) and wait until Established. Objects stay; what the new schemas do not
    /// know is pruned when they are next written. Hold `exclusive("kube-ovn-crds")` and restore
    /// [`KubeOvnVersion::harness_default`] afterwards.
    pub async fn install_kube_ovn_crds(
        &self,
        cluster: &str,
        version: KubeOvnVersion,
    ) -> Result<()> {
        self.install_foreign_crds(cluster).await?;
        let file = crate::e2e_dir()
            .join("fixtures/upstream/kube-ovn")
            .join(version.crd_file());
        let names: Vec<String> = apply_file(&self.client(cluster), file)
            .await?
            .into_iter()
            .map(|o| o.metadata.name.unwrap_or_default())
            .collect();
        self.wait_crds_established(cluster, &names).await
    }

    /// Apply every `*.yaml` in the repository's `crds/` directory (the
    /// project's own CRDs) and wait until Established. Returns the CRD names;
    /// an empty list when `crds/` is missing or empty.
    pub async fn install_project_crds(&self, cluster: &str) -> Result<Vec<String>> {
        let dir = crate::repo_dir().join("crds");
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect(),
            Err(_) => return Ok(Vec::new()),
        };
        files.sort();
        let client = self.client(cluster);
        let mut names = Vec::new();
        for f in files {
            for o in apply_file(&client, &f).await? {
                names.push(o.metadata.name.unwrap_or_default());
            }
        }
        self.wait_crds_established(cluster, &names).await?;
        Ok(names)
    }

    async fn wait_crds_established(&self, cluster: &str, names: &[String]) -> Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client(cluster));
        for n in names {
            wait_for_object(&crds, n, Duration::from_secs(30), |c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            })
            .await?;
        }
        // Discovery of new groups can lag behind Established by a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// Create a VPC NAT gateway in `cluster` the way Kube-OVN would: a
    /// netns-backed gateway node, the Vpc and Subnet (when absent), the
    /// VpcNatGateway and its StatefulSet. Does not wait; see
    /// [`NatGateway::wait_available`]. Gateway names must be unique per cluster.
    pub async fn create_nat_gateway(
        &self,
        cluster: &str,
        spec: NatGatewaySpec,
    ) -> Result<NatGateway> {
        self.install_foreign_crds(cluster).await?;
        let node = self
            .gateway_node_at(cluster, &spec.name, spec.in_vm)
            .await?;
        let client = self.client(cluster);
        self.create_if_absent(cluster, &vpc(&spec.vpc, &[])).await?;
        self.create_if_absent(
            cluster,
            &subnet(
                &spec.subnet,
                &node.lan_cidr,
                &node.ovn_gateway,
                &spec.vpc,
                "ovn",
            ),
        )
        .await?;
        apply_dynamic(&client, &vpc_nat_gateway(&spec, &node.lan_ip)).await?;
        if spec.version == KubeOvnVersion::V1_12 {
            v1_12_init(&node).await?;
        }
        apply(&client, &nat_gw_statefulset(&spec, &node)).await?;
        Ok(NatGateway {
            cluster: cluster.to_string(),
            spec,
            node,
        })
    }

    /// Give a gateway netns the state of a fresh pod (see [`NatGateway::restart`]).
    pub async fn reset_gateway_netns(&self, cluster: &str, gateway: &str) -> Result<()> {
        let script = crate::e2e_dir().join("scripts/netns.sh");
        crate::host_exec(&[
            "bash",
            &script.to_string_lossy(),
            "gateway-reset",
            cluster,
            gateway,
        ])
        .await?
        .check()?;
        Ok(())
    }

    /// Play OVN for `vpc`: program each `policyDst` static route of the Vpc
    /// object (`cidr` via `nextHopIP`) into the cluster's VPC netns with
    /// `ip route replace`, so traffic from the VPC side follows what the
    /// controllers wrote (e.g. a failover repointing to the standby's lanIp).
    /// Returns the (cidr, nextHopIP) pairs applied. Hold
    /// `h.exclusive("vpc-netns-routes")` when other tests may touch those CIDRs.
    pub async fn apply_vpc_static_routes(
        &self,
        cluster: &str,
        vpc_name: &str,
    ) -> Result<Vec<(String, String)>> {
        let obj = vpc(vpc_name, &[]);
        let (api, _) = crate::apply::dynamic_api(&self.client(cluster), &obj, "default").await?;
        let current = api.get(vpc_name).await?;
        let net = self.vpc_network(cluster)?;
        let mut applied = Vec::new();
        let routes = current.data["spec"]["staticRoutes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for r in routes {
            if r["policy"].as_str().unwrap_or("policyDst") != "policyDst" {
                continue;
            }
            let (Some(cidr), Some(nh)) = (r["cidr"].as_str(), r["nextHopIP"].as_str()) else {
                continue;
            };
            crate::netns_exec(&net.netns, &["ip", "route", "replace", cidr, "via", nh])
                .await?
                .check()?;
            applied.push((cidr.to_string(), nh.to_string()));
        }
        Ok(applied)
    }

    /// Delete a NAT gateway's StatefulSet and VpcNatGateway, then its node and netns.
    pub async fn delete_nat_gateway(&self, gw: &NatGateway) -> Result<()> {
        let client = self.client(&gw.cluster);
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), KUBE_SYSTEM);
        let _ = sts
            .delete(&gw.statefulset_name(), &Default::default())
            .await;
        let obj = vpc_nat_gateway(&gw.spec, &gw.node.lan_ip);
        let (api, _) = crate::apply::dynamic_api(&client, &obj, "default").await?;
        let _ = api.delete(&gw.spec.name, &Default::default()).await;
        self.remove_gateway_node(&gw.cluster, &gw.spec.name).await
    }

    /// Create a dynamic object unless one with its name already exists.
    pub async fn create_if_absent(&self, cluster: &str, obj: &DynamicObject) -> Result<()> {
        let client = self.client(cluster);
        let (api, _) = crate::apply::dynamic_api(&client, obj, "default").await?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        if api.get_opt(&name).await?.is_none() {
            match api.create(&PostParams::default(), obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).context(format!("create {name}")),
            }
        }
        Ok(())
    }

    /// The `ovn-default` Subnet (10.244.0.0/16, gw 10.244.0.1) and the kube-dns
    /// Service; returns the kube-dns ClusterIP.
    pub async fn install_cluster_network(&self, cluster: &str) -> Result<String> {
        self.install_foreign_crds(cluster).await?;
        let client = self.client(cluster);
        apply_dynamic(&client, &ovn_default_subnet("10.244.0.0/16", "10.244.0.1")).await?;
        let svc = apply(&client, &kube_dns_service(None)).await?;
        svc.spec
            .and_then(|s| s.cluster_ip)
            .ok_or_else(|| anyhow!("kube-dns has no ClusterIP"))
    }

    /// Create what Kube-OVN has for an active VpcDns `name`: the VpcDns (status
    /// active), the corefile/config ConfigMaps and the `vpc-dns-<name>`
    /// Deployment in the chosen form, routing the `kubernetes` Service ClusterIP
    /// via the ovn-default gateway. Returns the Deployment.
    pub async fn install_vpc_dns(
        &self,
        cluster: &str,
        name: &str,
        vpc: &str,
        subnet: &str,
        form: VpcDnsForm,
    ) -> Result<Deployment> {
        self.install_vpc_dns_mounting(cluster, name, vpc, subnet, form, None)
            .await
    }

    /// [`Harness::install_vpc_dns`] for a VpcDns that names its own Corefile ConfigMap
    /// (`spec.corefile`, Kube-OVN v1.16+; the v1.16 CRDs must be installed or the field is
    /// pruned), created with the documented Corefile when absent.
    pub async fn install_vpc_dns_mounting(
        &self,
        cluster: &str,
        name: &str,
        vpc: &str,
        subnet: &str,
        form: VpcDnsForm,
        corefile: Option<&str>,
    ) -> Result<Deployment> {
        self.install_foreign_crds(cluster).await?;
        let client = self.client(cluster);
        let mut object = vpc_dns(name, vpc, subnet);
        if let Some(c) = corefile {
            object.data["spec"]["corefile"] = json!(c);
        }
        let vdns = apply_dynamic(&client, &object).await?;
        patch_status_dynamic(&client, &vdns, json!({"active": true})).await?;
        let corefile = corefile.unwrap_or("vpc-dns-corefile");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), KUBE_SYSTEM);
        if cms.get_opt(corefile).await?.is_none() {
            apply(&client, &corefile_configmap(corefile, VPC_DNS_COREFILE)).await?;
        }
        apply(
            &client,
            &vpc_dns_config_configmap(VPC_DNS_NAD, VPC_DNS_NAD_PROVIDER),
        )
        .await?;
        let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
        let apiserver_ip = svcs
            .get("kubernetes")
            .await?
            .spec
            .and_then(|s| s.cluster_ip)
            .context("kubernetes Service has no ClusterIP")?;
        apply(
            &client,
            &vpc_dns_deployment(
                name,
                subnet,
                form,
                corefile,
                &[(&apiserver_ip, "10.244.0.1")],
            ),
        )
        .await
    }

    /// The broker cluster as `subctl deploy-broker` leaves it, plus this project's broker chart:
    /// the broker namespace, Submariner's CRDs, its broker-client Role (verbatim), and
    /// `helm upgrade --install` of `charts/kubeovn-multivpc-broker` into that namespace.
    /// Idempotent; once per broker and test process.
    pub async fn install_broker(&self, broker: &str) -> Result<()> {
        static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let key = format!("{}#{}", self.cluster(broker).server, broker);
        if DONE.lock().unwrap().contains(&key) {
            return Ok(());
        }
        let client = self.client(broker);
        self.install_foreign_crds(broker).await?;
        apply(&client, &namespace(BROKER_NS)).await?;
        let role_file =
            crate::e2e_dir().join("fixtures/upstream/submariner/broker-client-role.yaml");
        let text = std::fs::read_to_string(&role_file)
            .with_context(|| format!("read {}", role_file.display()))?;
        for mut role in crate::apply::parse_yaml(&text)? {
            role.metadata.namespace = Some(BROKER_NS.into());
            apply_dynamic(&client, &role).await?;
        }
        // One helm operation on a release at a time, across test processes too.
        let _lock = self.exclusive(&format!("{broker}-broker-chart")).await?;
        let chart = crate::repo_dir().join("charts/kubeovn-multivpc-broker");
        self.helm(
            broker,
            &[
                "upgrade",
                "--install",
                BROKER_RELEASE,
                chart.to_str().context("chart path is not UTF-8")?,
                "--namespace",
                BROKER_NS,
            ],
        )
        .await?
        .check()
        .context("helm install of the broker chart")?;
        DONE.lock().unwrap().push(key);
        Ok(())
    }

    /// Credentials of member `cluster_id` on the broker cluster, set up the way `subctl
    /// deploy-broker` and `subctl join` set them up: Submariner's broker-client Role
    /// (verbatim) in the broker namespace, a ServiceAccount `cluster-<id>` bound to it, and
    /// nothing more than what the broker chart (`charts/kubeovn-multivpc-broker`, installed
    /// with helm) grants; a token of that ServiceAccount, the CA and `host:port`.
    pub async fn broker_access(&self, broker: &str, cluster_id: &str) -> Result<BrokerAccess> {
        let client = self.client(broker);
        self.install_broker(broker).await?;
        let sa_name = format!("cluster-{cluster_id}");
        let sa: ServiceAccount = typed(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa_name, "namespace": BROKER_NS}
        }));
        apply(&client, &sa).await?;
        let rb: RoleBinding = typed(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("{sa_name}-{BROKER_CLIENT_ROLE}"), "namespace": BROKER_NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": BROKER_CLIENT_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": BROKER_NS}]
        }));
        apply(&client, &rb).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), BROKER_NS);
        let tr: TokenRequest = typed(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": 86400}
        }));
        let tr = sas
            .create_token_request(&sa_name, &PostParams::default(), &tr)
            .await
            .context("token request")?;
        let token = tr
            .status
            .map(|s| s.token)
            .context("token request has no status")?;
        let kc = Kubeconfig::read_from(self.kubeconfig(broker))?;
        let cluster = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .context("broker kubeconfig has no cluster")?;
        let ca_b64 = match (
            cluster.certificate_authority_data,
            cluster.certificate_authority,
        ) {
            (Some(data), _) => data,
            (None, Some(path)) => base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(&path).with_context(|| format!("read CA {path}"))?),
            (None, None) => return Err(anyhow!("broker kubeconfig has no CA")),
        };
        let server = cluster.server.context("broker kubeconfig has no server")?;
        let api_server = server
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        Ok(BrokerAccess {
            api_server,
            token,
            ca_b64,
            namespace: BROKER_NS.into(),
        })
    }

    /// A token of member `cluster_id`'s broker ServiceAccount (set up by
    /// [`Harness::broker_access`]) bound to a Secret `bound_to` in the broker namespace, which
    /// this creates: deleting that Secret revokes the token (a rotation, as a test drives it).
    pub async fn revocable_broker_token(
        &self,
        broker: &str,
        cluster_id: &str,
        bound_to: &str,
    ) -> Result<String> {
        let client = self.client(broker);
        let marker: Secret = typed(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": bound_to, "namespace": BROKER_NS},
        }));
        let marker = apply(&client, &marker).await?;
        let tr: TokenRequest = typed(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": 3600,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": bound_to,
                                        "uid": marker.metadata.uid}}
        }));
        let sas: Api<ServiceAccount> = Api::namespaced(client, BROKER_NS);
        let tr = sas
            .create_token_request(
                &format!("cluster-{cluster_id}"),
                &PostParams::default(),
                &tr,
            )
            .await
            .context("bound token request")?;
        tr.status
            .map(|s| s.token)
            .context("token request has no status")
    }

    /// Create what Submariner (with Globalnet) has in member `cluster`: the
    /// `submariner-operator` namespace, Cluster `<cluster_id>` with
    /// `global_cidr`, ClusterGlobalEgressIP with `egress_ips` allocated, and —
    /// when `broker` is given — ServiceDiscovery pointing at that broker cluster.
    pub async fn install_submariner(
        &self,
        cluster: &str,
        cluster_id: &str,
        global_cidr: &str,
        egress_ips: &[&str],
        broker: Option<&str>,
    ) -> Result<()> {
        self.install_foreign_crds(cluster).await?;
        let client = self.client(cluster);
        apply(&client, &namespace(SUBMARINER_NS)).await?;
        apply_dynamic(&client, &submariner_cluster(cluster_id, &[global_cidr])).await?;
        let egress = apply_dynamic(&client, &cluster_global_egress_ip(egress_ips.len())).await?;
        patch_status_dynamic(&client, &egress, json!({"allocatedIPs": egress_ips})).await?;
        if let Some(b) = broker {
            let access = self.broker_access(b, cluster_id).await?;
            apply_dynamic(&client, &service_discovery(cluster_id, &access)).await?;
            // Submariner's gateway syncs its Cluster to the broker namespace (admiral's
            // clusterID label): the Globalnet CIDR the importers check others' objects against.
            let mut on_broker = submariner_cluster(cluster_id, &[global_cidr]);
            on_broker.metadata.namespace = Some(BROKER_NS.into());
            on_broker.metadata.labels = Some(
                [(
                    multivpc_api::keys::SUBMARINER_CLUSTER_ID.to_string(),
                    cluster_id.to_string(),
                )]
                .into(),
            );
            apply_dynamic(&self.client(b), &on_broker).await?;
        }
        Ok(())
    }
}

impl Harness {
    /// A fleet of `members` joined to `broker`: every CRD on every cluster, and each member's
    /// Submariner objects (its ServiceDiscovery pointing at the broker with its own token) under
    /// the shared `submariner` lock.
    pub async fn install_fleet(&self, members: &[&str], broker: &str) -> Result<()> {
        for c in members.iter().chain([&broker]) {
            self.install_foreign_crds(c).await?;
            self.install_project_crds(c).await?;
        }
        // Submariner's singletons are shared with other tests.
        let _g = self.exclusive("submariner").await?;
        for c in members {
            self.install_default_submariner(c, Some(broker)).await?;
        }
        Ok(())
    }
}

impl Harness {
    /// [`Harness::install_submariner`] with the harness's own addressing:
    /// cluster id = cluster name, Globalnet CIDR and egress IPs from the
    /// cluster's [`crate::VpcNetwork`] (egress IPs `.0.1`–`.0.4` of the CIDR).
    /// Returns (globalnet CIDR, egress IPs).
    pub async fn install_default_submariner(
        &self,
        cluster: &str,
        broker: Option<&str>,
    ) -> Result<(String, Vec<String>)> {
        let net = self.vpc_network(cluster)?;
        let base = net
            .globalnet_cidr
            .split('/')
            .next()
            .and_then(|a| a.rsplit_once('.'))
            .and_then(|(prefix, _)| prefix.rsplit_once('.').map(|(p, _)| p.to_string()))
            .context("bad globalnet CIDR")?;
        let egress: Vec<String> = (1..=4).map(|i| format!("{base}.0.{i}")).collect();
        let refs: Vec<&str> = egress.iter().map(String::as_str).collect();
        self.install_submariner(cluster, cluster, &net.globalnet_cidr, &refs, broker)
            .await?;
        Ok((net.globalnet_cidr, egress))
    }
}
