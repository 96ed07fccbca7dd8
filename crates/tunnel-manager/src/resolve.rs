//! What one VpcNatTunnel should program, decided from a snapshot of the watched objects (DESIGN
//! §4 inputs). Pure: a missing or bad input becomes a `Ready=False` reason; everything that goes
//! into a script leaves here as a typed, validated value.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{Arc, OnceLock},
};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use multivpc_api::{
    Encryption, GatewayExIp, TunnelType, VpcNatTunnel,
    foreign::{
        kubeovn::{Subnet, Vpc, VpcNatGateway},
        submariner::{Cluster, ClusterGlobalEgressIP},
    },
    gateway::{ANNOTATION_OVN_GATEWAY, KubeOvn, external_ip, ovn_gateway, pod_ready, vpc_cidr},
    keys::gateway_exip_name,
    net::{INTERFACE_PREFIXES, InterfaceName, Ipv4Cidr, parse_ipv4},
    tenancy::Tenancy,
    tunnel::AppliedTunnel,
};

use crate::{
    ipsec::{self, Carrier, Psk},
    script::{EgressRange, Encap, EspConfig, EspPair, Mtu, Port, RuleTag, TunnelConfig, Vni},
};

/// Reasons of `Ready` (besides the controller's own exec outcomes).
pub mod reason {
    pub const PROGRAMMED: &str = "Programmed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const CLUSTER_ID_UNKNOWN: &str = "ClusterIdUnknown";
    pub const REMOTE_GATEWAY_NOT_FOUND: &str = "RemoteGatewayNotFound";
    pub const REMOTE_GATEWAY_INVALID: &str = "RemoteGatewayInvalid";
    pub const GATEWAY_NOT_FOUND: &str = "GatewayNotFound";
    pub const GATEWAY_POD_NOT_FOUND: &str = "GatewayPodNotFound";
    pub const GATEWAY_POD_NOT_READY: &str = "GatewayPodNotReady";
    pub const GLOBALNET_NOT_CONFIGURED: &str = "GlobalnetNotConfigured";
    pub const EGRESS_IPS_NOT_ALLOCATED: &str = "EgressIPsNotAllocated";
    pub const INTERFACE_NAME_CONFLICT: &str = "InterfaceNameConflict";
    pub const REMOTE_CIDR_CONFLICT: &str = "RemoteCidrConflict";
    pub const CONVERGE_FAILED: &str = "ConvergeFailed";
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// `encryption: ipsec` without a usable pre-shared key: the tunnel is not programmed.
    pub const IPSEC_KEY_UNAVAILABLE: &str = "IPsecKeyUnavailable";
    pub const NAMESPACE_NOT_ADMITTED: &str = multivpc_api::tenancy::NAMESPACE_NOT_ADMITTED;
}

/// Submariner's namespace.
pub const SUBMARINER_NAMESPACE: &str = multivpc_api::foreign::submariner::SUBMARINER_NAMESPACE;

/// The watched objects, as the controller's caches hold them.
#[derive(Default, Clone)]
pub struct Snapshot {
    /// Local cluster ID (flag or ServiceDiscovery).
    pub cluster_id: Option<String>,
    /// Where Kube-OVN runs the NAT gateway pods.
    pub kube_ovn: KubeOvn,
    pub tunnels: Vec<Arc<VpcNatTunnel>>,
    /// GatewayExIps of the gateway namespace, by name.
    pub exips: BTreeMap<String, Arc<GatewayExIp>>,
    /// VPC NAT gateway pods (Kube-OVN's namespace, label `ovn.kubernetes.io/vpc-nat-gw=true`).
    pub pods: Vec<Arc<Pod>>,
    /// Submariner Clusters (submariner-operator), by name.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub egress: Option<Arc<ClusterGlobalEgressIP>>,
    /// VpcNatGateways, by name.
    pub gateways: BTreeMap<String, Arc<VpcNatGateway>>,
    pub subnets: Vec<Arc<Subnet>>,
    /// Vpcs, by name: which namespaces each admits.
    pub vpcs: BTreeMap<String, Arc<Vpc>>,
    pub tenancy: Tenancy,
    /// What each gateway instance's tunnels claim ([`Snapshot::claims`]), worked out once per
    /// snapshot on first use; leave it empty.
    pub claims: OnceLock<HashMap<String, Claims>>,
}

/// An admitted tunnel's hold on its gateway instance: its interface name, and its remote CIDR
/// when that resolves.
pub type Claim = (Arc<VpcNatTunnel>, Option<Ipv4Cidr>);

/// The claims held on one gateway instance, in precedence order, indexed by interface name and
/// by remote CIDR so that a tunnel's clash is found in logarithmic time: with 1250 tunnels on
/// a gateway, comparing each with every one before it took 25 ms per snapshot.
#[derive(Default, Clone)]
pub struct Claims {
    held: Vec<Claim>,
    by_name: HashMap<String, usize>,
    /// Held remote CIDRs by first address: (last address, index in `held`). Held CIDRs never
    /// overlap one another, so these ranges are disjoint.
    by_cidr: BTreeMap<u32, (u32, usize)>,
}

impl Claims {
    /// Admits `candidates` in precedence order, each unless it clashes with one admitted before.
    fn admit(mut candidates: Vec<Claim>) -> Self {
        candidates.sort_by(|(a, _), (b, _)| precedence(a).cmp(&precedence(b)));
        let mut claims = Self::default();
        for (t, cidr) in candidates {
            let name = t.name_any();
            if claims.clash(&name, cidr, usize::MAX).is_none() {
                let index = claims.held.len();
                if let Some(cidr) = cidr {
                    let (first, last) = cidr.span();
                    claims.by_cidr.insert(first, (last, index));
                }
                claims.by_name.insert(name, index);
                claims.held.push((t, cidr));
            }
        }
        claims
    }

    /// The earliest held claim before index `before` that interface `name` or remote CIDR
    /// `cidr` clashes with.
    fn clash(&self, name: &str, cidr: Option<Ipv4Cidr>, before: usize) -> Option<&Claim> {
        let by_name = self.by_name.get(name).copied().filter(|i| *i < before);
        let by_cidr = cidr.and_then(|cidr| {
            let (first, last) = cidr.span();
            // Disjoint ranges starting at or below `last`, highest first: they overlap `cidr`
            // until one ends below `first`.
            self.by_cidr
                .range(..=last)
                .rev()
                .take_while(|(_, (end, _))| *end >= first)
                .map(|(_, (_, i))| *i)
                .filter(|i| *i < before)
                .min()
        });
        let index = match (by_name, by_cidr) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        self.held.get(index)
    }

    /// How many held claims precede `tunnel` (never counting itself).
    fn before(&self, tunnel: &VpcNatTunnel) -> usize {
        let key = precedence(tunnel);
        self.held
            .partition_point(|(other, _)| precedence(other) < key)
    }
}

impl Snapshot {
    /// The tunnels holding an interface name or a remote CIDR on gateway instance `instance`:
    /// each live, admitted tunnel there that clashes with none before it. A tunnel's own
    /// conflict is then decided by the claims that precede it ([`conflict`]), so the whole
    /// gateway is worked out once per snapshot instead of once per tunnel.
    pub fn claims(&self, instance: &str) -> Option<&Claims> {
        self.claims
            .get_or_init(|| {
                let mut by_instance: HashMap<String, Vec<Claim>> = HashMap::new();
                for t in &self.tunnels {
                    if is_live(t) && admitted(t, self).is_ok() {
                        let cidr = remote_endpoint(t, self).ok().map(|(_, cidr)| cidr);
                        by_instance
                            .entry(local_instance(t, self))
                            .or_default()
                            .push((t.clone(), cidr));
                    }
                }
                by_instance
                    .into_iter()
                    .map(|(instance, candidates)| (instance, Claims::admit(candidates)))
                    .collect()
            })
            .get(instance)
    }
}

/// A gateway pod identified by name and UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    pub name: String,
    pub uid: String,
}

/// The tunnel fully resolved: where and what to program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub local_gateway: String,
    pub pod: PodTarget,
    pub config: TunnelConfig,
    /// Something worth telling the user although the tunnel can be programmed (e.g. egress
    /// IPs left out of a non-contiguous allocation).
    pub note: Option<String>,
}

/// Why the tunnel cannot be programmed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub reason: &'static str,
    pub message: String,
    /// The local gateway instance, when known.
    pub local_gateway: Option<String>,
    /// The tunnel resolved to the pod it is programmed in, and only its keys are missing: what
    /// is programmed there stays (and is still probed).
    pub kept_in_pod: bool,
}

fn not_ready(reason: &'static str, message: impl Into<String>) -> NotReady {
    NotReady {
        reason,
        message: message.into(),
        local_gateway: None,
        kept_in_pod: false,
    }
}

/// The interface name a tunnel programs (its metadata.name).
pub fn device_of(tunnel: &VpcNatTunnel) -> Result<InterfaceName, NotReady> {
    tunnel.name_any().parse::<InterfaceName>().map_err(|e| {
        not_ready(
            reason::INVALID_SPEC,
            format!("metadata.name is the tunnel interface name: {e}"),
        )
    })
}

/// The iptables tag of a tunnel.
pub fn tag_of(tunnel: &VpcNatTunnel) -> Result<RuleTag, NotReady> {
    let device = device_of(tunnel)?;
    RuleTag::new(&tunnel.namespace().unwrap_or_default(), &device)
        .map_err(|e| not_ready(reason::INVALID_SPEC, e.to_string()))
}

/// The gateway instance that carries `tunnel`: `natGwDp`, or the standby named by the
/// active-gateway label of the local GatewayExIp `<natGwDp>-<clusterId>` after a failover —
/// only when that object is this cluster's own one for that gateway (never a broker copy that
/// happens to bear the name).
pub fn local_instance(tunnel: &VpcNatTunnel, snapshot: &Snapshot) -> String {
    let gw = &tunnel.spec.nat_gw_dp;
    snapshot
        .cluster_id
        .as_deref()
        .and_then(|id| {
            snapshot
                .exips
                .get(&gateway_exip_name(gw, id))
                .filter(|e| e.is_own(id) && e.describes(gw, id))
        })
        .and_then(|e| e.active_gateway())
        .map(str::to_owned)
        .unwrap_or_else(|| gw.clone())
}

/// The pods of gateway instance `gw`, as [`KubeOvn::gateway_of`] pairs them.
pub fn gateway_pods<'a>(snapshot: &'a Snapshot, gw: &str) -> Vec<&'a Arc<Pod>> {
    snapshot
        .pods
        .iter()
        .filter(|p| snapshot.kube_ovn.gateway_of(p).as_deref() == Some(gw))
        .collect()
}

/// Whether a pod may still hold network state (its containers may be running).
pub fn pod_may_hold_state(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Running" || p == "Unknown")
}

/// The SNAT range from the cluster's Globalnet egress IPs.
///
/// Submariner allocates `allocatedIPs` as a list in no guaranteed order, and after
/// reallocation it need not be contiguous, while iptables SNAT takes one range. The addresses
/// that are valid IPv4 and inside the local Globalnet CIDR are sorted and de-duplicated; the
/// longest run of consecutive addresses is used (the lowest on a tie), so the tunnel never
/// SNATs to an address Submariner did not allocate. Addresses left out are reported.
pub fn egress_range(
    allocated: &[String],
    within: Ipv4Cidr,
) -> Result<(EgressRange, Option<String>), String> {
    let mut ips: Vec<u32> = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    for raw in allocated {
        match parse_ipv4(raw.trim()) {
            Ok(ip) if within.contains(ip) => ips.push(u32::from(ip)),
            _ => ignored.push(raw.clone()),
        }
    }
    ips.sort_unstable();
    ips.dedup();
    if ips.is_empty() {
        return Err(if allocated.is_empty() {
            "ClusterGlobalEgressIP cluster-egress.submariner.io has no allocatedIPs yet".into()
        } else {
            format!(
                "none of the allocated egress IPs {allocated:?} is an IPv4 address inside the Globalnet CIDR {within}"
            )
        });
    }
    let (mut best, mut start) = ((ips[0], ips[0]), ips[0]);
    for w in ips.windows(2) {
        if w[1] != w[0] + 1 {
            start = w[1];
        }
        if w[1] - start > best.1 - best.0 {
            best = (start, w[1]);
        }
    }
    let range = EgressRange::new(Ipv4Addr::from(best.0), Ipv4Addr::from(best.1))
        .expect("sorted: first <= last");
    let unused = ips.len() as u64 - range.len();
    let mut notes = Vec::new();
    if unused > 0 {
        notes.push(format!(
            "egress IPs are not contiguous: SNAT uses {range}, the longest run; {unused} other allocated IP(s) unused"
        ));
    }
    if !ignored.is_empty() {
        notes.push(format!(
            "ignored egress IPs outside {within} or invalid: {ignored:?}"
        ));
    }
    Ok((range, (!notes.is_empty()).then(|| notes.join("; "))))
}

/// The tunnel's connected network must not take traffic meant elsewhere: it may not overlap
/// either Globalnet CIDR, nor hold one of the gateway's own addresses.
fn interface_network_is_free(
    interface_addr: Ipv4Cidr,
    networks: &[(String, Ipv4Cidr)],
    addresses: &[(&str, Ipv4Addr)],
) -> Result<(), String> {
    let net = interface_addr.network();
    for (what, cidr) in networks {
        if net.overlaps(cidr) {
            return Err(format!(
                "interfaceAddr {interface_addr} overlaps {what} {cidr}"
            ));
        }
    }
    for (what, ip) in addresses {
        if net.contains(*ip) {
            return Err(format!("interfaceAddr {interface_addr} holds {what} {ip}"));
        }
    }
    Ok(())
}

/// The networks of the VPC gateway `instance` serves, which a tunnel address would shadow: the
/// subnet of its pod (`ovn.kubernetes.io/cidr`), and every Subnet of its VpcNatGateway's VPC.
fn vpc_networks(snapshot: &Snapshot, instance: &str, pod: &Pod) -> Vec<(String, Ipv4Cidr)> {
    let mut networks: Vec<(String, Ipv4Cidr)> = vpc_cidr(pod)
        .map(|c| ("the gateway pod's VPC subnet".to_owned(), c))
        .into_iter()
        .collect();
    if let Some(vpc) = snapshot.gateways.get(instance).map(|g| &g.spec.vpc) {
        for subnet in snapshot
            .subnets
            .iter()
            .filter(|s| s.spec.vpc.as_deref() == Some(vpc.as_str()))
        {
            for cidr in subnet.spec.cidr_block.split(',') {
                if let Ok(cidr) = cidr.trim().parse::<Ipv4Cidr>() {
                    networks.push((format!("subnet {} of VPC {vpc}", subnet.name_any()), cidr));
                }
            }
        }
    }
    networks
}

/// The remote Globalnet CIDR of a tunnel, from its remote GatewayExIp.
fn remote_endpoint(
    tunnel: &VpcNatTunnel,
    snapshot: &Snapshot,
) -> Result<(Ipv4Addr, Ipv4Cidr), NotReady> {
    let name = gateway_exip_name(&tunnel.spec.gateway_name, &tunnel.spec.cluster_id);
    let exip = snapshot.exips.get(&name).ok_or_else(|| {
        not_ready(
            reason::REMOTE_GATEWAY_NOT_FOUND,
            format!(
                "GatewayExIp {name} of gateway {} in cluster {} not found (exip-syncer publishes it through the broker)",
                tunnel.spec.gateway_name, tunnel.spec.cluster_id
            ),
        )
    })?;
    if !exip.is_copy_of(&tunnel.spec.gateway_name, &tunnel.spec.cluster_id) {
        return Err(not_ready(
            reason::REMOTE_GATEWAY_INVALID,
            format!(
                "GatewayExIp {name} is not exip-syncer's copy of gateway {} of cluster {} (its labels say otherwise)",
                tunnel.spec.gateway_name, tunnel.spec.cluster_id
            ),
        ));
    }
    if let Err(why) = exip.written_by_exip_syncer() {
        return Err(not_ready(
            reason::REMOTE_GATEWAY_INVALID,
            format!("GatewayExIp {name} is not used: {why}"),
        ));
    }
    let ip = parse_ipv4(&exip.spec.externalip).map_err(|e| {
        not_ready(
            reason::REMOTE_GATEWAY_INVALID,
            format!("GatewayExIp {name}: {e}"),
        )
    })?;
    let cidr = exip
        .spec
        .globalnetcidr
        .parse::<Ipv4Cidr>()
        .map_err(|e| {
            not_ready(
                reason::REMOTE_GATEWAY_INVALID,
                format!("GatewayExIp {name}: {e}"),
            )
        })?
        .network();
    // exip-syncer refuses such imports; a hand-written object does not get through either.
    if cidr.prefix() == 0 {
        return Err(not_ready(
            reason::REMOTE_GATEWAY_INVALID,
            format!(
                "GatewayExIp {name}: globalnetcidr {cidr} would replace the gateway's default route"
            ),
        ));
    }
    Ok((ip, cidr))
}

fn is_live(t: &VpcNatTunnel) -> bool {
    t.metadata.deletion_timestamp.is_none()
}

fn same_object(a: &VpcNatTunnel, b: &VpcNatTunnel) -> bool {
    a.namespace() == b.namespace() && a.name_any() == b.name_any()
}

/// Order of precedence among conflicting tunnels: older first, then namespace/name.
fn precedence(t: &VpcNatTunnel) -> (Option<jiff::Timestamp>, &str, &str) {
    (
        t.metadata.creation_timestamp.as_ref().map(|t| t.0),
        t.metadata.namespace.as_deref().unwrap_or_default(),
        t.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The conflict, if any, that refuses `tunnel` on gateway instance `instance`: an earlier
/// *admitted* live tunnel on the same instance with the same interface name, or with an
/// overlapping remote CIDR. Earlier tunnels are admitted in precedence order, each unless it
/// clashes with one admitted before it, so a tunnel that is itself refused (and programs
/// nothing) never blocks a later one, and the tunnel a refusal names is the one that holds the
/// interface or the CIDR.
pub fn conflict(
    tunnel: &VpcNatTunnel,
    instance: &str,
    remote_cidr: Ipv4Cidr,
    snapshot: &Snapshot,
) -> Option<NotReady> {
    let claims = snapshot.claims(instance)?;
    let name = tunnel.name_any();
    // Claims strictly before `tunnel` (never itself) decide.
    let (holder, holder_cidr) = claims.clash(&name, Some(remote_cidr), claims.before(tunnel))?;
    let holder = holder.as_ref();
    let holder_key = format!(
        "{}/{}",
        holder.namespace().unwrap_or_default(),
        holder.name_any()
    );
    Some(match holder_cidr {
        Some(holder_cidr) if holder.name_any() != name => not_ready(
            reason::REMOTE_CIDR_CONFLICT,
            format!(
                "VpcNatTunnel {holder_key} already routes {holder_cidr} (overlapping {remote_cidr}) on gateway {instance}"
            ),
        ),
        _ => not_ready(
            reason::INTERFACE_NAME_CONFLICT,
            format!(
                "VpcNatTunnel {holder_key} already uses interface {name} on gateway {instance}"
            ),
        ),
    })
}

/// Whether `tunnel`'s namespace may act on the VPC it programs (see [`multivpc_api::tenancy`]):
/// the VPC of `natGwDp` and, after a failover, of the standby carrying it. A tunnel refused
/// here claims nothing on its gateway (see [`conflict`]).
pub fn admitted(tunnel: &VpcNatTunnel, snapshot: &Snapshot) -> Result<(), NotReady> {
    if snapshot.tenancy == Tenancy::Any {
        return Ok(());
    }
    let namespace = tunnel.namespace().unwrap_or_default();
    let instance = local_instance(tunnel, snapshot);
    let mut gateways = vec![tunnel.spec.nat_gw_dp.as_str(), instance.as_str()];
    gateways.dedup();
    for gw in gateways {
        // Without the VpcNatGateway there is no telling which VPC the pods serve.
        let gateway = snapshot.gateways.get(gw).ok_or_else(|| {
            not_ready(
                reason::GATEWAY_NOT_FOUND,
                format!("VpcNatGateway {gw} not found"),
            )
        })?;
        snapshot
            .tenancy
            .admits(&snapshot.vpcs, &gateway.spec.vpc, &namespace)
            .map_err(|m| not_ready(reason::NAMESPACE_NOT_ADMITTED, format!("gateway {gw}: {m}")))?;
    }
    Ok(())
}

/// Resolves every input of `tunnel` (DESIGN §4) into a typed [`TunnelConfig`].
pub fn resolve(tunnel: &VpcNatTunnel, snapshot: &Snapshot) -> Result<Resolved, NotReady> {
    let spec = &tunnel.spec;
    let device = device_of(tunnel)?;
    let tag = tag_of(tunnel)?;
    let interface_addr = spec
        .interface_addr
        .parse::<Ipv4Cidr>()
        .and_then(Ipv4Cidr::require_host)
        .map_err(|e| not_ready(reason::INVALID_SPEC, format!("interfaceAddr: {e}")))?;
    if !INTERFACE_PREFIXES.contains(&interface_addr.prefix()) {
        return Err(not_ready(
            reason::INVALID_SPEC,
            format!(
                "interfaceAddr {interface_addr}: the prefix must be /{} to /{}",
                INTERFACE_PREFIXES.start(),
                INTERFACE_PREFIXES.end()
            ),
        ));
    }
    let encap = match spec.tunnel_type {
        TunnelType::Gre => Encap::Gre,
        TunnelType::Vxlan => {
            let invalid = |e: String| not_ready(reason::INVALID_SPEC, e);
            Encap::Vxlan {
                vni: Vni::new(tunnel.effective_vni().map_err(invalid)?)
                    .map_err(|e| invalid(e.to_string()))?,
                port: Port::new(tunnel.effective_dst_port().map_err(invalid)?)
                    .map_err(|e| invalid(e.to_string()))?,
            }
        }
    };
    // The CRD's schema holds spec.mtu to this range; an object stored before it did is
    // refused here.
    let mtu = spec
        .mtu
        .map(Mtu::new)
        .transpose()
        .map_err(|e| not_ready(reason::INVALID_SPEC, e.to_string()))?;
    let cluster_id = snapshot.cluster_id.as_deref().ok_or_else(|| {
        not_ready(
            reason::CLUSTER_ID_UNKNOWN,
            "the local cluster ID is unknown: pass --cluster-id or install Submariner (ServiceDiscovery submariner-operator/service-discovery)",
        )
    })?;
    let instance = local_instance(tunnel, snapshot);
    let with_gw = |mut n: NotReady| {
        n.local_gateway = Some(instance.clone());
        n
    };
    admitted(tunnel, snapshot).map_err(with_gw)?;

    let (remote_ip, remote_cidr) = remote_endpoint(tunnel, snapshot).map_err(with_gw)?;
    // A conflict is a configuration error: reported before inputs that may still arrive.
    if let Some(c) = conflict(tunnel, &instance, remote_cidr, snapshot) {
        return Err(with_gw(c));
    }

    let pods = gateway_pods(snapshot, &instance);
    let pod = pods.iter().find(|p| pod_ready(p)).ok_or_else(|| {
        with_gw(if pods.is_empty() {
            not_ready(
                reason::GATEWAY_POD_NOT_FOUND,
                format!(
                    "no pod of VPC NAT gateway {instance} (StatefulSet {}/{})",
                    snapshot.kube_ovn.namespace,
                    snapshot.kube_ovn.statefulset_name(&instance)
                ),
            )
        } else {
            not_ready(
                reason::GATEWAY_POD_NOT_READY,
                format!(
                    "pod {} of VPC NAT gateway {instance} is not running and ready",
                    pods[0].name_any()
                ),
            )
        })
    })?;
    let pod_name = pod.name_any();
    let ovn_gateway = ovn_gateway(pod).ok_or_else(|| {
        with_gw(not_ready(
            reason::GATEWAY_POD_NOT_READY,
            format!("pod {pod_name} has no IPv4 {ANNOTATION_OVN_GATEWAY} annotation yet"),
        ))
    })?;
    let local_ip = external_ip(pod).map_err(|why| {
        with_gw(not_ready(
            reason::GATEWAY_POD_NOT_READY,
            format!("pod {pod_name}: {why}"),
        ))
    })?;

    let cluster = snapshot.clusters.get(cluster_id).ok_or_else(|| {
        with_gw(not_ready(
            reason::GLOBALNET_NOT_CONFIGURED,
            format!("Submariner Cluster {SUBMARINER_NAMESPACE}/{cluster_id} not found"),
        ))
    })?;
    let local_cidr = cluster
        .spec
        .global_cidr
        .iter()
        .find_map(|c| c.trim().parse::<Ipv4Cidr>().ok())
        .map(|c| c.network())
        .ok_or_else(|| {
            with_gw(not_ready(
                reason::GLOBALNET_NOT_CONFIGURED,
                format!(
                    "Submariner Cluster {SUBMARINER_NAMESPACE}/{cluster_id} has no IPv4 global_cidr (is Globalnet enabled?)"
                ),
            ))
        })?;
    let allocated = snapshot
        .egress
        .as_ref()
        .and_then(|e| e.status.as_ref())
        .map(|s| s.allocated_ips.clone())
        .unwrap_or_default();
    if snapshot.egress.is_none() {
        return Err(with_gw(not_ready(
            reason::EGRESS_IPS_NOT_ALLOCATED,
            "ClusterGlobalEgressIP cluster-egress.submariner.io not found",
        )));
    }
    let (snat, note) = egress_range(&allocated, local_cidr)
        .map_err(|m| with_gw(not_ready(reason::EGRESS_IPS_NOT_ALLOCATED, m)))?;
    interface_network_is_free(
        interface_addr,
        &[
            ("the local Globalnet CIDR".to_owned(), local_cidr),
            ("the remote Globalnet CIDR".to_owned(), remote_cidr),
        ]
        .into_iter()
        .chain(vpc_networks(snapshot, &instance, pod))
        .collect::<Vec<_>>(),
        &[
            ("the OVN gateway", ovn_gateway),
            ("the gateway's external IP", local_ip),
            ("the remote gateway's external IP", remote_ip),
        ],
    )
    .map_err(|m| with_gw(not_ready(reason::INVALID_SPEC, m)))?;

    Ok(Resolved {
        local_gateway: instance.clone(),
        pod: PodTarget {
            name: pod_name,
            uid: pod.uid().unwrap_or_default(),
        },
        config: TunnelConfig {
            device,
            tag,
            encap,
            local_ip,
            remote_ip,
            interface_addr,
            local_cidr,
            ovn_gateway,
            remote_cidr,
            snat,
            mtu,
            // Set by `with_esp`, which needs the key and the clock.
            esp: None,
        },
        note,
    })
}

/// An ipsec tunnel's resolution with this epoch's ESP keying (`with_esp` of a tunnel without
/// encryption changes nothing). No usable key refuses the tunnel: it is not programmed in
/// clear; one programmed before stays as it is (its policies keep it in ESP, and a Secret
/// read that failed must not cut the traffic its SAs still carry).
pub fn with_esp(
    tunnel: &VpcNatTunnel,
    resolution: Result<Resolved, NotReady>,
    psk: Option<&Result<Psk, String>>,
    epoch: u64,
) -> Result<Resolved, NotReady> {
    let mut resolved = resolution?;
    if tunnel.spec.encryption != Encryption::Ipsec {
        return Ok(resolved);
    }
    let refuse = |message: String| {
        let mut r = not_ready(reason::IPSEC_KEY_UNAVAILABLE, message);
        r.local_gateway = Some(resolved.local_gateway.clone());
        r.kept_in_pod = tunnel
            .status
            .as_ref()
            .and_then(|s| s.gateway_pod.as_ref())
            .is_some_and(|p| p.uid == resolved.pod.uid);
        r
    };
    let psk = match psk {
        None => {
            return Err(refuse(
                "encryption ipsec, but tunnel-manager has no pre-shared key configured (--ipsec-psk-secret)".into(),
            ));
        }
        Some(Err(why)) => return Err(refuse(why.clone())),
        Some(Ok(psk)) => psk,
    };
    let cfg = &resolved.config;
    let carrier = carrier_of(cfg.encap);
    resolved.config.esp = Some(EspConfig {
        carrier,
        keying: ipsec::keying(psk, cfg.local_ip, cfg.remote_ip, carrier, epoch),
    });
    Ok(resolved)
}

fn carrier_of(encap: Encap) -> Carrier {
    match encap {
        Encap::Gre => Carrier::Gre,
        Encap::Vxlan { port, .. } => Carrier::Vxlan { port: port.get() },
    }
}

/// The encrypted pair an applied record programmed, if any.
pub fn esp_pair_of(applied: &AppliedTunnel) -> Option<EspPair> {
    if applied.encryption != Encryption::Ipsec {
        return None;
    }
    let carrier = match applied.tunnel_type {
        TunnelType::Gre => Carrier::Gre,
        TunnelType::Vxlan => Carrier::Vxlan {
            port: applied
                .dst_port
                .unwrap_or(multivpc_api::tunnel::DEFAULT_VXLAN_PORT),
        },
    };
    Some(EspPair {
        local_ip: applied.local_ip.parse().ok()?,
        remote_ip: applied.remote_ip.parse().ok()?,
        carrier,
    })
}

/// Whether another live tunnel programmed into pod `pod_uid` encrypts the same pair and carrier
/// (their SAs and policies are one and the same, and must survive this tunnel's change).
pub fn esp_pair_shared(
    tunnel: &VpcNatTunnel,
    pod_uid: &str,
    pair: &EspPair,
    snapshot: &Snapshot,
) -> bool {
    applied_elsewhere_in_pod(tunnel, pod_uid, snapshot, |a| {
        esp_pair_of(a).as_ref() == Some(pair)
    })
}

/// Whether another live tunnel programmed into pod `pod_uid` has an applied record for which
/// `uses` holds (what the two share must outlive this tunnel's change or cleanup).
fn applied_elsewhere_in_pod(
    tunnel: &VpcNatTunnel,
    pod_uid: &str,
    snapshot: &Snapshot,
    uses: impl Fn(&AppliedTunnel) -> bool,
) -> bool {
    snapshot.tunnels.iter().any(|other| {
        !same_object(other, tunnel)
            && is_live(other)
            && other.status.as_ref().is_some_and(|s| {
                s.gateway_pod.as_ref().is_some_and(|p| p.uid == pod_uid)
                    && s.applied.as_ref().is_some_and(&uses)
            })
    })
}

/// The status record of what a config programs.
pub fn applied_of(cfg: &TunnelConfig) -> AppliedTunnel {
    let (vni, dst_port) = match cfg.encap {
        Encap::Gre => (None, None),
        Encap::Vxlan { vni, port } => (Some(vni.get()), Some(port.get())),
    };
    AppliedTunnel {
        tunnel_type: cfg.encap.tunnel_type(),
        interface_addr: cfg.interface_addr.to_string(),
        local_ip: cfg.local_ip.to_string(),
        remote_ip: cfg.remote_ip.to_string(),
        vni,
        dst_port,
        local_route: cfg.local_cidr.to_string(),
        remote_route: cfg.remote_cidr.to_string(),
        snat_range: cfg.snat.to_string(),
        encryption: if cfg.esp.is_some() {
            Encryption::Ipsec
        } else {
            Encryption::None
        },
    }
}

/// Whether another live tunnel programmed into pod `pod_uid` still uses the local route `cidr`
/// (it must then survive this tunnel's cleanup or change).
pub fn local_route_shared(
    tunnel: &VpcNatTunnel,
    pod_uid: &str,
    cidr: Ipv4Cidr,
    snapshot: &Snapshot,
) -> bool {
    applied_elsewhere_in_pod(tunnel, pod_uid, snapshot, |a| {
        a.local_route.parse::<Ipv4Cidr>().ok() == Some(cidr)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use multivpc_api::{
        GatewayExIpSpec, VpcNatTunnelSpec,
        foreign::submariner::{
            ClusterGlobalEgressIpSpec, ClusterGlobalEgressIpStatus, ClusterSpec,
        },
        tunnel::{PodRef, VpcNatTunnelStatus},
    };
    use serde_json::json;

    fn ips(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }
    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn egress_range_sorted_contiguous() {
        let (r, note) = egress_range(
            &ips(&["242.0.0.3", "242.0.0.1", "242.0.0.2", "242.0.0.4"]),
            cidr("242.0.0.0/16"),
        )
        .unwrap();
        assert_eq!(r.to_string(), "242.0.0.1-242.0.0.4");
        assert_eq!(note, None);
        let (r, _) = egress_range(&ips(&["242.0.0.9"]), cidr("242.0.0.0/16")).unwrap();
        assert_eq!(r.to_string(), "242.0.0.9-242.0.0.9");
    }

    #[test]
    fn egress_range_non_contiguous_takes_the_longest_run() {
        let (r, note) = egress_range(
            &ips(&[
                "242.0.0.9",
                "242.0.0.1",
                "242.0.0.10",
                "242.0.0.11",
                "242.0.0.2",
                "242.0.0.11",
            ]),
            cidr("242.0.0.0/16"),
        )
        .unwrap();
        assert_eq!(r.to_string(), "242.0.0.9-242.0.0.11");
        assert!(note.unwrap().contains("2 other allocated IP(s) unused"));
        // Tie: the lowest run.
        let (r, _) = egress_range(
            &ips(&["242.0.0.8", "242.0.0.7", "242.0.0.2", "242.0.0.1"]),
            cidr("242.0.0.0/16"),
        )
        .unwrap();
        assert_eq!(r.to_string(), "242.0.0.1-242.0.0.2");
        // Across an octet boundary.
        let (r, _) =
            egress_range(&ips(&["242.0.1.0", "242.0.0.255"]), cidr("242.0.0.0/16")).unwrap();
        assert_eq!(r.to_string(), "242.0.0.255-242.0.1.0");
    }

    #[test]
    fn egress_range_refuses_garbage_and_foreign_addresses() {
        let (r, note) = egress_range(
            &ips(&["$(reboot)", "10.0.0.1", "242.0.0.5", "::1"]),
            cidr("242.0.0.0/16"),
        )
        .unwrap();
        assert_eq!(r.to_string(), "242.0.0.5-242.0.0.5");
        assert!(note.unwrap().contains("$(reboot)"));
        assert!(
            egress_range(&[], cidr("242.0.0.0/16"))
                .unwrap_err()
                .contains("no allocatedIPs")
        );
        assert!(egress_range(&ips(&["10.0.0.1"]), cidr("242.0.0.0/16")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn egress_range_only_holds_allocated_addresses(raw in proptest::collection::vec(0u32..64, 1..20)) {
            let allocated: Vec<String> = raw.iter().map(|o| Ipv4Addr::from(0xF200_0000u32 + o).to_string()).collect();
            let (r, _) = egress_range(&allocated, cidr("242.0.0.0/16")).unwrap();
            for ip in u32::from(r.first())..=u32::from(r.last()) {
                proptest::prop_assert!(allocated.contains(&Ipv4Addr::from(ip).to_string()));
            }
        }
    }

    pub(crate) fn tunnel(
        ns: &str,
        name: &str,
        gw: &str,
        remote_gw: &str,
        created: i64,
    ) -> Arc<VpcNatTunnel> {
        let mut t = VpcNatTunnel::new(
            name,
            VpcNatTunnelSpec {
                encryption: Default::default(),
                cluster_id: "cluster2".into(),
                gateway_name: remote_gw.into(),
                interface_addr: "10.100.0.1/24".into(),
                nat_gw_dp: gw.into(),
                tunnel_type: TunnelType::Vxlan,
                vni: None,
                dst_port: None,
                mtu: None,
            },
        );
        t.metadata.namespace = Some(ns.into());
        t.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        Arc::new(t)
    }

    use multivpc_api::keys::{
        LABEL_ACTIVE_GATEWAY, LABEL_CLUSTER, LABEL_GATEWAY, SUBMARINER_CLUSTER_ID,
    };

    /// `<gw>-<cluster>` with exip-syncer's labels: this cluster's own (cluster1) or a copy.
    pub(crate) fn exip(name: &str, ip: &str, cidr: &str) -> Arc<GatewayExIp> {
        let (gw, cluster) = name.rsplit_once('-').unwrap();
        let mut o = GatewayExIp::new(
            name,
            GatewayExIpSpec {
                externalip: ip.into(),
                globalnetcidr: cidr.into(),
                ..Default::default()
            },
        );
        let labels = o.metadata.labels.get_or_insert_default();
        labels.insert(LABEL_GATEWAY.into(), gw.into());
        labels.insert(LABEL_CLUSTER.into(), cluster.into());
        if cluster != "cluster1" {
            labels.insert(SUBMARINER_CLUSTER_ID.into(), cluster.into());
        }
        o.metadata.managed_fields = Some(vec![written_by(
            "exip-syncer",
            json!({"f:spec": {"f:externalip": {}, "f:globalnetcidr": {}},
                   "f:metadata": {"f:labels": {format!("f:{LABEL_ACTIVE_GATEWAY}"): {}}}}),
        )]);
        Arc::new(o)
    }

    fn written_by(
        manager: &str,
        fields: serde_json::Value,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
        serde_json::from_value(json!({"manager": manager, "operation": "Apply",
                                      "fieldsType": "FieldsV1", "fieldsV1": fields}))
        .unwrap()
    }

    pub(crate) fn pod(gw: &str, uid: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("vpc-nat-gw-{gw}-0"), "namespace": "kube-system", "uid": uid,
                    "labels": {"app": format!("vpc-nat-gw-{gw}"), "ovn.kubernetes.io/vpc-nat-gw": "true"},
                    "annotations": {
                        "ovn.kubernetes.io/gateway": "10.1.0.1",
                        "ovn.kubernetes.io/cidr": "10.1.0.0/24",
                        "k8s.v1.cni.cncf.io/networks": "kube-system/ext-net",
                        "ext-net.kube-system.kubernetes.io/ip_address": "172.50.1.11",
                    },
                },
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .unwrap(),
        )
    }

    fn gateway(name: &str, vpc: &str) -> Arc<VpcNatGateway> {
        Arc::new(VpcNatGateway::new(
            name,
            multivpc_api::foreign::kubeovn::VpcNatGatewaySpec {
                vpc: vpc.into(),
                subnet: format!("{vpc}-net1"),
                lan_ip: "10.1.0.254".into(),
                ..Default::default()
            },
        ))
    }

    fn vpc_admitting(name: &str, namespaces: &[&str]) -> Arc<Vpc> {
        Arc::new(Vpc::new(
            name,
            multivpc_api::foreign::kubeovn::VpcSpec {
                namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            },
        ))
    }

    pub(crate) fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            cluster_id: Some("cluster1".into()),
            pods: vec![pod("gw1", "uid-1")],
            ..Default::default()
        };
        s.exips.insert(
            "rgw-cluster2".into(),
            exip("rgw-cluster2", "172.50.2.11", "242.1.0.0/16"),
        );
        s.clusters.insert(
            "cluster1".into(),
            Arc::new(Cluster::new(
                "cluster1",
                ClusterSpec {
                    cluster_id: "cluster1".into(),
                    global_cidr: vec!["242.0.0.0/16".into()],
                    ..Default::default()
                },
            )),
        );
        let mut e = ClusterGlobalEgressIP::new(
            "cluster-egress.submariner.io",
            ClusterGlobalEgressIpSpec::default(),
        );
        e.status = Some(ClusterGlobalEgressIpStatus {
            allocated_ips: ips(&["242.0.0.2", "242.0.0.1"]),
        });
        s.egress = Some(Arc::new(e));
        // gw1 (and its standby gw1b) serve vpc1, which has a second subnet besides the
        // gateway's own; gw9 serves vpc2. vpc1 admits the namespaces ns1 to ns5, vpc2 ns3.
        for (gw, vpc) in [("gw1", "vpc1"), ("gw1b", "vpc1"), ("gw9", "vpc2")] {
            s.gateways.insert(gw.into(), gateway(gw, vpc));
        }
        for (vpc, namespaces) in [
            ("vpc1", &["ns1", "ns2", "ns3", "ns4", "ns5"][..]),
            ("vpc2", &["ns3"]),
        ] {
            s.vpcs.insert(vpc.into(), vpc_admitting(vpc, namespaces));
        }
        for (name, vpc, cidr) in [
            ("vpc1-net1", "vpc1", "10.1.0.0/24"),
            ("vpc1-net2", "vpc1", "10.2.0.0/24,fd00::/64"),
            ("other", "vpc2", "10.3.0.0/24"),
        ] {
            s.subnets.push(Arc::new(Subnet::new(
                name,
                multivpc_api::foreign::kubeovn::SubnetSpec {
                    vpc: Some(vpc.into()),
                    cidr_block: cidr.into(),
                    ..Default::default()
                },
            )));
        }
        s
    }

    #[test]
    fn resolves_everything_from_the_snapshot() {
        let s = snapshot();
        let t = tunnel("ns1", "vx1", "gw1", "rgw", 1);
        let r = resolve(&t, &s).unwrap();
        assert_eq!(r.local_gateway, "gw1");
        assert_eq!(
            r.pod,
            PodTarget {
                name: "vpc-nat-gw-gw1-0".into(),
                uid: "uid-1".into()
            }
        );
        let c = &r.config;
        assert_eq!(c.local_ip.to_string(), "172.50.1.11");
        assert_eq!(c.remote_ip.to_string(), "172.50.2.11");
        assert_eq!(c.ovn_gateway.to_string(), "10.1.0.1");
        assert_eq!(c.local_cidr.to_string(), "242.0.0.0/16");
        assert_eq!(c.remote_cidr.to_string(), "242.1.0.0/16");
        assert_eq!(c.snat.to_string(), "242.0.0.1-242.0.0.2");
        assert_eq!(c.tag.as_str(), "multivpc-tunnel:ns1/vx1");
        assert_eq!(
            c.encap,
            Encap::Vxlan {
                vni: Vni::new(100).unwrap(),
                port: Port::new(4789).unwrap()
            }
        );
        let a = applied_of(c);
        assert_eq!(a.vni, Some(100));
        assert_eq!(a.snat_range, "242.0.0.1-242.0.0.2");
    }

    #[test]
    fn each_missing_input_has_its_reason() {
        let t = tunnel("ns1", "vx1", "gw1", "rgw", 1);
        type Edit = Box<dyn Fn(&mut Snapshot)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                reason::CLUSTER_ID_UNKNOWN,
                Box::new(|s| s.cluster_id = None),
            ),
            (
                reason::REMOTE_GATEWAY_NOT_FOUND,
                Box::new(|s| s.exips.clear()),
            ),
            (
                reason::REMOTE_GATEWAY_INVALID,
                Box::new(|s| {
                    s.exips.insert(
                        "rgw-cluster2".into(),
                        exip("rgw-cluster2", "1.2.3.4;id", "242.1.0.0/16"),
                    );
                }),
            ),
            (reason::GATEWAY_NOT_FOUND, Box::new(|s| s.gateways.clear())),
            (reason::NAMESPACE_NOT_ADMITTED, Box::new(|s| s.vpcs.clear())),
            (reason::GATEWAY_POD_NOT_FOUND, Box::new(|s| s.pods.clear())),
            (
                reason::GATEWAY_POD_NOT_READY,
                Box::new(|s| {
                    let mut p = (*s.pods[0]).clone();
                    p.status.as_mut().unwrap().phase = Some("Pending".into());
                    s.pods = vec![Arc::new(p)];
                }),
            ),
            (
                reason::GATEWAY_POD_NOT_READY,
                Box::new(|s| {
                    let mut p = (*s.pods[0]).clone();
                    p.metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .remove("ovn.kubernetes.io/gateway");
                    s.pods = vec![Arc::new(p)];
                }),
            ),
            (
                reason::GLOBALNET_NOT_CONFIGURED,
                Box::new(|s| s.clusters.clear()),
            ),
            (
                reason::EGRESS_IPS_NOT_ALLOCATED,
                Box::new(|s| s.egress = None),
            ),
            (
                reason::EGRESS_IPS_NOT_ALLOCATED,
                Box::new(|s| {
                    let mut e = (**s.egress.as_ref().unwrap()).clone();
                    e.status = None;
                    s.egress = Some(Arc::new(e));
                }),
            ),
        ];
        for (want, edit) in cases {
            let mut s = snapshot();
            edit(&mut s);
            let err = resolve(&t, &s).unwrap_err();
            assert_eq!(err.reason, want, "{}", err.message);
        }
        let mut bad = (*t).clone();
        bad.spec.interface_addr = "10.100.0.0/24".into();
        assert_eq!(
            resolve(&bad, &snapshot()).unwrap_err().reason,
            reason::INVALID_SPEC
        );
    }

    #[test]
    fn an_interface_address_that_would_take_other_traffic_is_refused() {
        let t = tunnel("ns1", "vx1", "gw1", "rgw", 1);
        // The snapshot: local Globalnet 242.0.0.0/16, remote 242.1.0.0/16, OVN gateway
        // 10.1.0.1, external IPs 172.50.1.11 (local) and 172.50.2.11 (remote).
        for (addr, says) in [
            ("128.0.0.1/1", "prefix must be /16 to /31"),
            ("10.0.0.1/8", "prefix must be /16 to /31"),
            ("242.0.5.1/24", "overlaps the local Globalnet CIDR"),
            ("242.1.0.1/16", "overlaps the remote Globalnet CIDR"),
            (
                "10.1.0.9/24",
                "overlaps the gateway pod's VPC subnet 10.1.0.0/24",
            ),
            (
                "10.2.0.200/25",
                "overlaps subnet vpc1-net2 of VPC vpc1 10.2.0.0/24",
            ),
            ("10.1.0.1/31", "overlaps the gateway pod's VPC subnet"),
            ("172.50.1.1/24", "holds the gateway's external IP"),
            ("172.50.2.1/24", "holds the remote gateway's external IP"),
        ] {
            let mut bad = (*t).clone();
            bad.spec.interface_addr = addr.into();
            let err = resolve(&bad, &snapshot()).unwrap_err();
            assert_eq!(err.reason, reason::INVALID_SPEC, "{addr}: {}", err.message);
            assert!(err.message.contains(says), "{addr}: {}", err.message);
        }
        for addr in [
            "10.100.0.1/16",
            "10.100.0.1/24",
            "10.100.0.1/30",
            "10.100.0.0/31",
            "10.3.0.1/24", // another VPC's subnet: not routed through this gateway
        ] {
            let mut ok = (*t).clone();
            ok.spec.interface_addr = addr.into();
            assert!(resolve(&ok, &snapshot()).is_ok(), "{addr}");
        }
    }

    #[test]
    fn hostile_values_in_other_objects_never_reach_a_script() {
        let t = tunnel("ns1", "vx1", "gw1", "rgw", 1);
        for hostile in [
            "10.1.0.1; reboot",
            "$(id)",
            "10.1.0.1'",
            "`x`",
            "10.1.0.1\nip link del net1",
        ] {
            for key in [
                "ovn.kubernetes.io/gateway",
                "ext-net.kube-system.kubernetes.io/ip_address",
            ] {
                let mut s = snapshot();
                let mut p = (*s.pods[0]).clone();
                p.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert(key.into(), hostile.into());
                s.pods = vec![Arc::new(p)];
                let err = resolve(&t, &s).unwrap_err();
                assert_eq!(
                    err.reason,
                    reason::GATEWAY_POD_NOT_READY,
                    "{key}={hostile:?}"
                );
            }
            let mut s = snapshot();
            s.exips.insert(
                "rgw-cluster2".into(),
                exip("rgw-cluster2", "172.50.2.11", hostile),
            );
            assert_eq!(
                resolve(&t, &s).unwrap_err().reason,
                reason::REMOTE_GATEWAY_INVALID
            );
            let mut s = snapshot();
            s.clusters.insert(
                "cluster1".into(),
                Arc::new(Cluster::new(
                    "cluster1",
                    ClusterSpec {
                        cluster_id: "cluster1".into(),
                        global_cidr: vec![hostile.into()],
                        ..Default::default()
                    },
                )),
            );
            assert_eq!(
                resolve(&t, &s).unwrap_err().reason,
                reason::GLOBALNET_NOT_CONFIGURED
            );
            let mut s = snapshot();
            let mut e = (**s.egress.as_ref().unwrap()).clone();
            e.status
                .as_mut()
                .unwrap()
                .allocated_ips
                .push(hostile.into());
            s.egress = Some(Arc::new(e));
            let r = resolve(&t, &s).unwrap();
            let script = crate::script::converge(
                &r.config,
                &Default::default(),
                crate::script::Mode::Converge,
            );
            for marker in ["reboot", "$(id)", "`x`", "del net1", "10.1.0.1''"] {
                assert!(!script.contains(marker), "{hostile:?} reached the script");
            }
        }
    }

    #[test]
    fn the_active_gateway_label_moves_the_tunnel() {
        let mut s = snapshot();
        s.pods.push(pod("gw1b", "uid-2"));
        let mut local = (*exip("gw1-cluster1", "172.50.1.11", "242.0.0.0/16")).clone();
        local
            .metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_ACTIVE_GATEWAY.into(), "gw1b".into());
        s.exips.insert("gw1-cluster1".into(), Arc::new(local));
        let r = resolve(&tunnel("ns1", "vx1", "gw1", "rgw", 1), &s).unwrap();
        assert_eq!(r.local_gateway, "gw1b");
        assert_eq!(r.pod.uid, "uid-2");

        // A label someone else set is not exip-syncer's failover: the tunnel stays on gw1.
        let mut hand = (*s.exips["gw1-cluster1"]).clone();
        hand.metadata
            .managed_fields
            .get_or_insert_default()
            .push(written_by(
                "kubectl-label",
                json!({"f:metadata": {"f:labels": {format!("f:{LABEL_ACTIVE_GATEWAY}"): {}}}}),
            ));
        s.exips.insert("gw1-cluster1".into(), Arc::new(hand));
        let r = resolve(&tunnel("ns1", "vx1", "gw1", "rgw", 1), &s).unwrap();
        assert_eq!(r.local_gateway, "gw1");
    }

    #[test]
    fn a_remote_gatewayexip_exip_syncer_did_not_write_is_refused() {
        let mut s = snapshot();
        let name = "rgw-cluster2";
        for (manager, fields) in [
            (
                "kubectl-client-side-apply",
                json!({"f:spec": {"f:externalip": {}}}),
            ),
            ("kubectl-edit", json!({"f:spec": {"f:externalip": {}}})),
        ] {
            let mut o = (*s.exips[name]).clone();
            let entries = o.metadata.managed_fields.get_or_insert_default();
            if manager == "kubectl-client-side-apply" {
                entries.clear();
            }
            entries.push(written_by(manager, fields));
            s.exips.insert(name.into(), Arc::new(o));
            let err = resolve(&tunnel("ns1", "vx1", "gw1", "rgw", 1), &s).unwrap_err();
            assert_eq!(err.reason, reason::REMOTE_GATEWAY_INVALID, "{manager}");
            assert!(err.message.contains(manager), "{}", err.message);
            s = snapshot();
        }
    }

    #[test]
    fn conflicts_refuse_the_later_tunnel() {
        let mut s = snapshot();
        s.exips.insert(
            "rgw2-cluster2".into(),
            exip("rgw2-cluster2", "172.50.2.12", "242.1.0.0/24"),
        );
        s.exips.insert(
            "rgw3-cluster2".into(),
            exip("rgw3-cluster2", "172.50.3.12", "242.2.0.0/16"),
        );
        let first = tunnel("ns1", "vx1", "gw1", "rgw", 1);
        let same_name = tunnel("ns2", "vx1", "gw1", "rgw3", 2);
        let same_cidr = tunnel("ns1", "vx2", "gw1", "rgw2", 3);
        let other_gw = tunnel("ns3", "vx1", "gw9", "rgw", 4);
        s.tunnels = vec![
            first.clone(),
            same_name.clone(),
            same_cidr.clone(),
            other_gw.clone(),
        ];
        s.pods.push(pod("gw9", "uid-9"));
        assert!(resolve(&first, &s).is_ok());
        assert_eq!(
            resolve(&same_name, &s).unwrap_err().reason,
            reason::INTERFACE_NAME_CONFLICT
        );
        assert_eq!(
            resolve(&same_cidr, &s).unwrap_err().reason,
            reason::REMOTE_CIDR_CONFLICT
        );
        assert!(resolve(&other_gw, &s).is_ok(), "other gateway, no conflict");
        // A refused tunnel programs nothing and blocks nobody: ns2/vx1 (refused for its name)
        // routes rgw3's CIDR, yet a later tunnel to rgw3 is admitted.
        let third = tunnel("ns4", "vx3", "gw1", "rgw3", 5);
        s.tunnels.push(third.clone());
        s.claims.take(); // A changed snapshot works its claims out again.
        assert!(
            resolve(&third, &s).is_ok(),
            "{:?}",
            resolve(&third, &s).err()
        );
        // And a later rival of the admitted one is refused naming it, not the refused one.
        let fourth = tunnel("ns5", "vx4", "gw1", "rgw3", 6);
        s.tunnels.push(fourth.clone());
        s.claims.take();
        let refused = resolve(&fourth, &s).unwrap_err();
        assert_eq!(refused.reason, reason::REMOTE_CIDR_CONFLICT);
        assert!(refused.message.contains("ns4/vx3"), "{}", refused.message);
        // A deleted earlier tunnel no longer blocks.
        let mut gone = (*first).clone();
        gone.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(9).unwrap()));
        s.tunnels[0] = Arc::new(gone);
        s.claims.take();
        assert!(resolve(&same_name, &s).is_ok());
    }

    proptest::proptest! {
        /// The indexed claims decide as comparing each tunnel with every one admitted before it
        /// would: the same tunnels held, and the same holder named for every clash.
        #[test]
        fn indexed_claims_decide_as_pairwise_comparison(
            specs in proptest::collection::vec((0u8..6, 0u32..8, 22u8..27, proptest::bool::ANY), 1..40)
        ) {
            let candidates: Vec<Claim> = specs
                .iter()
                .enumerate()
                .map(|(i, (name, net, prefix, has_cidr))| {
                    let t = tunnel("ns1", &format!("vx{name}"), "gw1", "rgw", (i as i64) % 7);
                    let mut t = (*t).clone();
                    t.metadata.name = Some(format!("vx{name}"));
                    t.metadata.namespace = Some(format!("ns{i}"));
                    let cidr = has_cidr.then(|| {
                        Ipv4Cidr::new(Ipv4Addr::from(0x6400_0000u32 + net * 512), *prefix)
                            .unwrap()
                            .network()
                    });
                    (Arc::new(t), cidr)
                })
                .collect();
            let claims = Claims::admit(candidates.clone());
            let mut sorted = candidates;
            sorted.sort_by(|(a, _), (b, _)| precedence(a).cmp(&precedence(b)));
            let pairwise = |t: &VpcNatTunnel, cidr: Option<Ipv4Cidr>, held: &[Claim]| {
                held.iter()
                    .position(|(h, hc)| {
                        h.name_any() == t.name_any()
                            || matches!((cidr, hc), (Some(a), Some(b)) if a.overlaps(b))
                    })
            };
            let mut held: Vec<Claim> = Vec::new();
            for (t, cidr) in &sorted {
                let expected = pairwise(t, *cidr, &held).map(|i| held[i].0.clone());
                let found = claims
                    .clash(&t.name_any(), *cidr, claims.before(t))
                    .map(|(h, _)| h.clone());
                proptest::prop_assert_eq!(
                    expected.as_ref().map(|h| key_of(h)),
                    found.as_ref().map(|h| key_of(h))
                );
                if expected.is_none() {
                    held.push((t.clone(), *cidr));
                }
            }
            proptest::prop_assert_eq!(
                held.iter().map(|(t, _)| key_of(t)).collect::<Vec<_>>(),
                claims.held.iter().map(|(t, _)| key_of(t)).collect::<Vec<_>>()
            );
        }
    }

    fn key_of(t: &VpcNatTunnel) -> String {
        format!("{}/{}", t.namespace().unwrap_or_default(), t.name_any())
    }

    #[test]
    fn a_tunnel_programs_only_a_vpc_that_admits_its_namespace() {
        let mut s = snapshot();
        let refused = |t: &Arc<VpcNatTunnel>, s: &Snapshot| {
            let nr = resolve(t, s).unwrap_err();
            assert_eq!(nr.reason, reason::NAMESPACE_NOT_ADMITTED, "{}", nr.message);
            nr.message
        };
        let outsider = tunnel("tenant-b", "vx1", "gw1", "rgw", 1);
        let message = refused(&outsider, &s);
        assert!(
            message.contains("gateway gw1: VPC vpc1 does not admit namespace tenant-b"),
            "{message}"
        );
        // The refused tunnel claims nothing: an admitted later one with its name goes ahead.
        let insider = tunnel("ns1", "vx1", "gw1", "rgw", 2);
        s.tunnels = vec![outsider.clone(), insider.clone()];
        assert!(resolve(&insider, &s).is_ok());
        // A gateway Kube-OVN does not know serves no VPC; a VPC that is gone admits nobody.
        assert_eq!(
            resolve(&tunnel("ns1", "vx1", "gw-unknown", "rgw", 3), &s)
                .unwrap_err()
                .reason,
            reason::GATEWAY_NOT_FOUND
        );
        s.vpcs.remove("vpc2");
        refused(&tunnel("ns3", "vx1", "gw9", "rgw", 3), &s);
        // After a failover the standby's VPC must admit the namespace too.
        s.pods.push(pod("gw1b", "uid-2"));
        s.gateways.insert("gw1b".into(), gateway("gw1b", "vpc2"));
        let mut local = (*exip("gw1-cluster1", "172.50.1.11", "242.0.0.0/16")).clone();
        local
            .metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_ACTIVE_GATEWAY.into(), "gw1b".into());
        s.exips.insert("gw1-cluster1".into(), Arc::new(local));
        assert!(refused(&insider, &s).contains("gateway gw1b: VPC vpc2 not found"));
        // Tenancy "any": administrators alone create tunnels.
        s.tenancy = Tenancy::Any;
        assert!(resolve(&outsider, &s).is_ok());
    }

    #[test]
    fn local_route_sharing() {
        let mut s = snapshot();
        let a = tunnel("ns1", "vx1", "gw1", "rgw", 1);
        let mut b = (*tunnel("ns1", "vx2", "gw1", "rgw2", 2)).clone();
        b.status = Some(VpcNatTunnelStatus {
            gateway_pod: Some(PodRef {
                name: "p".into(),
                uid: "uid-1".into(),
            }),
            applied: Some(AppliedTunnel {
                local_route: "242.0.0.0/16".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        s.tunnels = vec![a.clone(), Arc::new(b)];
        assert!(local_route_shared(&a, "uid-1", cidr("242.0.0.0/16"), &s));
        assert!(!local_route_shared(&a, "uid-2", cidr("242.0.0.0/16"), &s));
        assert!(!local_route_shared(&a, "uid-1", cidr("242.5.0.0/16"), &s));
    }
}
