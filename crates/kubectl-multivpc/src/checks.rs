//! `kubectl multivpc diagnose`: the pure part. From the objects read and the output of the
//! commands run in the gateway pod to one result per check; the commands themselves are built
//! here too, from typed values only. The API and exec calls are in `diagnose.rs`.
//!
//! Everything read from the API is untrusted: a value is parsed into a `multivpc_api::net`
//! type before it reaches a command, and only the tunnel's device name and the probe target
//! are put into one (single-quoted); routes and rules are read whole and matched here.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use multivpc_api::{
    GatewayExIp, VpcNatTunnel, conditions,
    gateway::pod_ready,
    keys::gateway_exip_name,
    net::{InterfaceName, Ipv4Cidr, is_object_name, parse_ipv4},
    tunnel::{AppliedTunnel, PodRef},
};

/// Check names, in the order they run (docs/kubectl-multivpc.md describes each).
pub const TUNNEL_READY: &str = "tunnel-ready";
pub const GATEWAY_POD: &str = "gateway-pod";
pub const REMOTE_GATEWAY: &str = "remote-gatewayexip";
pub const BROKER_GATEWAY: &str = "broker-gatewayexip";
pub const DEVICE: &str = "device";
pub const ADDRESS: &str = "address";
pub const MTU: &str = "mtu";
pub const REMOTE_ROUTE: &str = "remote-route";
pub const LOCAL_ROUTE: &str = "local-route";
pub const SNAT_RULE: &str = "snat-rule";
pub const HEALTHY: &str = "healthy";
pub const PING: &str = "ping";
pub const DNS_FORWARD: &str = "dns-forward";

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Not run: something it needs failed or is unknown (the reason says what).
    Skip,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        })
    }
}

/// One check's line: its outcome, name, why, and for a failure what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Outcome,
    pub reason: String,
    pub fix: Option<String>,
}

impl CheckResult {
    pub fn pass(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Pass,
            reason: reason.into(),
            fix: None,
        }
    }

    pub fn fail(name: &'static str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Fail,
            reason: reason.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skip(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Skip,
            reason: reason.into(),
            fix: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Pass
    }
}

/// The checks of one tunnel, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn push(&mut self, check: CheckResult) {
        self.checks.push(check);
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.outcome == Outcome::Fail)
    }

    /// The result of check `name`, if it ran or was skipped.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Whether check `name` passed.
    pub fn passed(&self, name: &str) -> bool {
        self.get(name).is_some_and(CheckResult::passed)
    }

    /// One line per check (`PASS  name  reason`), a `fix:` line under each failure.
    pub fn render(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{}  {:width$}  {}\n",
                c.outcome,
                c.name,
                one_line(&c.reason)
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      {:width$}  fix: {}\n", "", one_line(fix)));
            }
        }
        out
    }
}

/// Text from the API or a pod on one line (a condition message may hold newlines).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A command's result in the gateway pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// The VPC's `clusterset.local` forwarding: its VpcDnsForwards (`spec.vpc`), each `Ready=True`
/// when dns-forwarder has put the Corefile block into vpc-dns and routed vpc-dns to the
/// cluster DNS. None is a skip: a VPC need not resolve other clusters' services.
pub fn dns_forwards(vpc: &str, forwards: &[multivpc_api::VpcDnsForward]) -> Vec<CheckResult> {
    let mine: Vec<&multivpc_api::VpcDnsForward> =
        forwards.iter().filter(|f| f.spec.vpc == vpc).collect();
    if mine.is_empty() {
        return vec![CheckResult::skip(
            DNS_FORWARD,
            format!(
                "no VpcDnsForward for VPC {vpc}: its vpc-dns does not forward clusterset.local (apply one, as examples/dns.yaml does, to resolve other clusters' services)"
            ),
        )];
    }
    mine.into_iter()
        .map(|f| {
            let name = format!(
                "{}/{}",
                f.metadata.namespace.as_deref().unwrap_or_default(),
                f.metadata.name.as_deref().unwrap_or_default()
            );
            let ready = f
                .status
                .as_ref()
                .and_then(|s| conditions::find(&s.conditions, conditions::READY));
            match ready {
                Some(c) if c.status == "True" => CheckResult::pass(
                    DNS_FORWARD,
                    format!("VpcDnsForward {name} Ready: {}", c.message),
                ),
                Some(c) => CheckResult::fail(
                    DNS_FORWARD,
                    format!(
                        "VpcDnsForward {name} Ready={} {}: {}",
                        c.status, c.reason, c.message
                    ),
                    format!(
                        "kubectl describe vpcdnsforward -n {} {}; the reasons and their fixes are in dns-forwarder's docs (docs/dns-forwarder.md)",
                        f.metadata.namespace.as_deref().unwrap_or_default(),
                        f.metadata.name.as_deref().unwrap_or_default()
                    ),
                ),
                None => CheckResult::fail(
                    DNS_FORWARD,
                    format!("VpcDnsForward {name} has no Ready condition: dns-forwarder has not reconciled it"),
                    "check that dns-forwarder runs in this cluster and read its log",
                ),
            }
        })
        .collect()
}

/// Advice common to every drift inside the pod.
const REPAIR: &str = "tunnel-manager repairs drift at its next verification (every --verify-interval, default 5m); to repair it now restart tunnel-manager (it converges every tunnel once at start), and if it comes back look for another writer of the gateway's network state";

// ------------------------------------------------------------------------- a. the tunnel

/// a. The tunnel exists, tunnel-manager has seen its latest spec, and it is `Ready=True`.
pub fn tunnel_ready(namespace: &str, name: &str, tunnel: Option<&VpcNatTunnel>) -> CheckResult {
    let Some(t) = tunnel else {
        return CheckResult::fail(
            TUNNEL_READY,
            format!("VpcNatTunnel {namespace}/{name} does not exist"),
            "check the name and the namespace (-n): kubectl get vpcnattunnels -A",
        );
    };
    let status = t.status.as_ref();
    let ready = status.and_then(|s| conditions::find(&s.conditions, conditions::READY));
    let Some(ready) = ready else {
        return CheckResult::fail(
            TUNNEL_READY,
            format!(
                "{namespace}/{name} has no Ready condition: tunnel-manager has not reconciled it"
            ),
            "check that tunnel-manager runs in this cluster and read its log",
        );
    };
    let observed = status.and_then(|s| s.observed_generation);
    if ready.status != "True" {
        return CheckResult::fail(
            TUNNEL_READY,
            format!("Ready={} {}: {}", ready.status, ready.reason, ready.message),
            fix_for_reason(&ready.reason, t),
        );
    }
    if let (Some(generation), Some(observed)) = (t.metadata.generation, observed)
        && observed < generation
    {
        return CheckResult::fail(
            TUNNEL_READY,
            format!(
                "Ready=True describes generation {observed}, but the spec is at generation {generation}: tunnel-manager has not applied the latest change"
            ),
            "wait a few seconds and run again; if it stays, check that tunnel-manager runs and read its log",
        );
    }
    CheckResult::pass(
        TUNNEL_READY,
        format!("Ready=True {}: {}", ready.reason, ready.message),
    )
}

/// What to do about a `Ready=False` reason (docs/tunnel-manager.md, Conditions).
fn fix_for_reason(reason: &str, t: &VpcNatTunnel) -> String {
    let spec = &t.spec;
    let remote = gateway_exip_name(&spec.gateway_name, &spec.cluster_id);
    match reason {
        "GatewayNotFound" => format!(
            "create VpcNatGateway {} or correct spec.natGwDp",
            spec.nat_gw_dp
        ),
        "NamespaceNotAdmitted" => format!(
            "add namespace {} to spec.namespaces of the gateway's Vpc (or run tunnel-manager with --tenancy=any)",
            t.namespace().unwrap_or_default()
        ),
        "InvalidSpec" => "correct the spec as the message says".into(),
        "ClusterIdUnknown" => {
            "give tunnel-manager --cluster-id, or join the cluster to Submariner (ServiceDiscovery clusterID)".into()
        }
        "RemoteGatewayNotFound" => format!(
            "GatewayExIp {remote} must be imported by exip-syncer: check that gateway {} publishes in cluster {}, and exip-syncer's broker connection on both sides",
            spec.gateway_name, spec.cluster_id
        ),
        "RemoteGatewayInvalid" => format!(
            "only exip-syncer's copy counts: delete a hand-written or hand-edited GatewayExIp {remote} and let exip-syncer import it again"
        ),
        "InterfaceNameConflict" | "RemoteCidrConflict" => {
            "an earlier tunnel on the same gateway holds the name or remote CIDR (the message names it): rename or delete one of them".into()
        }
        "GatewayPodNotFound" | "GatewayPodNotReady" => {
            "check the gateway's StatefulSet and pod (kubectl -n <kube-ovn namespace> get pods -l ovn.kubernetes.io/vpc-nat-gw=true)".into()
        }
        "GlobalnetNotConfigured" => format!(
            "Submariner Globalnet must be enabled: Cluster submariner-operator/<this cluster's ID> needs spec.global_cidr (remote: {})",
            spec.cluster_id
        ),
        "EgressIPsNotAllocated" => {
            "Submariner must allocate egress IPs: check ClusterGlobalEgressIP cluster-egress.submariner.io status.allocatedIPs".into()
        }
        "ConvergeFailed" | "VerificationFailed" => {
            "the message names the failing command in the gateway pod; tunnel-manager retries with backoff, and its log and events say more".into()
        }
        _ => "read the condition's message, the tunnel's events and tunnel-manager's log".into(),
    }
}

// ------------------------------------------------------------------------ b. the gateway pod

/// b, before the API: the pod the tunnel was programmed into, when its status names one that
/// is a valid pod name (else the check's result: skipped or failed).
pub fn gateway_pod_ref(tunnel: &VpcNatTunnel) -> Result<&PodRef, CheckResult> {
    let Some(pod) = tunnel.status.as_ref().and_then(|s| s.gateway_pod.as_ref()) else {
        return Err(CheckResult::skip(
            GATEWAY_POD,
            "status.gatewayPod is empty: the tunnel has not been programmed into a pod",
        ));
    };
    if !is_object_name(&pod.name) {
        return Err(CheckResult::fail(
            GATEWAY_POD,
            format!("status.gatewayPod.name {:?} is not a pod name", pod.name),
            "the status was not written by tunnel-manager: let tunnel-manager rewrite it (restart it)",
        ));
    }
    Ok(pod)
}

/// b. The gateway pod exists, is the one programmed (same UID), and is Running and Ready.
pub fn gateway_pod(namespace: &str, want: &PodRef, pod: Option<&Pod>) -> CheckResult {
    let name = format!("{namespace}/{}", want.name);
    let Some(pod) = pod else {
        return CheckResult::fail(
            GATEWAY_POD,
            format!("gateway pod {name} does not exist"),
            "check the gateway's StatefulSet; once its pod is back tunnel-manager programs it (a wrong --kube-ovn-namespace also gives this)",
        );
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if !want.uid.is_empty() && uid != want.uid {
        return CheckResult::fail(
            GATEWAY_POD,
            format!(
                "gateway pod {name} was replaced (uid {uid}, the tunnel was programmed into {}) and tunnel-manager has not programmed the new one yet",
                want.uid
            ),
            "tunnel-manager programs a replaced pod when it sees it: wait a few seconds; if it stays, check that tunnel-manager runs and read its log",
        );
    }
    if !pod_ready(pod) {
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "unknown".into());
        let deleting = if pod.metadata.deletion_timestamp.is_some() {
            ", being deleted"
        } else {
            ""
        };
        return CheckResult::fail(
            GATEWAY_POD,
            format!("gateway pod {name} is not Ready (phase {phase}{deleting})"),
            format!("kubectl -n {namespace} describe pod {}", want.name),
        );
    }
    CheckResult::pass(
        GATEWAY_POD,
        format!("gateway pod {name} is Running and Ready"),
    )
}

// -------------------------------------------------------------- c. the remote GatewayExIp

/// c. The remote gateway's GatewayExIp exists, is exip-syncer's copy, and holds the external IP
/// the tunnel was programmed with.
pub fn remote_gateway(
    tunnel: &VpcNatTunnel,
    gateway_namespace: &str,
    exip: Option<&GatewayExIp>,
    now: jiff::Timestamp,
) -> CheckResult {
    let spec = &tunnel.spec;
    let name = gateway_exip_name(&spec.gateway_name, &spec.cluster_id);
    let Some(exip) = exip else {
        return CheckResult::fail(
            REMOTE_GATEWAY,
            format!("GatewayExIp {gateway_namespace}/{name} does not exist"),
            format!(
                "exip-syncer imports it from the broker: check that gateway {} of cluster {} is ready there, and exip-syncer's broker connection on both sides (a wrong --gateway-namespace also gives this)",
                spec.gateway_name, spec.cluster_id
            ),
        );
    };
    let age = exip
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| crate::view::age(t.0, now))
        .unwrap_or_else(|| "unknown".into());
    if !exip.is_copy_of(&spec.gateway_name, &spec.cluster_id) {
        return CheckResult::fail(
            REMOTE_GATEWAY,
            format!(
                "GatewayExIp {name} (age {age}) is not a copy of cluster {}'s object for gateway {}: its labels say otherwise",
                spec.cluster_id, spec.gateway_name
            ),
            format!(
                "delete it and let exip-syncer import cluster {}'s object",
                spec.cluster_id
            ),
        );
    }
    if let Err(why) = exip.written_by_exip_syncer() {
        return CheckResult::fail(
            REMOTE_GATEWAY,
            format!("GatewayExIp {name} (age {age}): {why}"),
            "tunnel-manager only trusts exip-syncer's copy: delete the object and let exip-syncer import it again",
        );
    }
    let published = exip.spec.externalip.as_str();
    let programmed = tunnel.status.as_ref().and_then(|s| s.remote_ip.as_deref());
    match programmed {
        Some(ip) if ip != published => CheckResult::fail(
            REMOTE_GATEWAY,
            format!(
                "GatewayExIp {name} (age {age}) has externalip {published}, but the tunnel was programmed with remoteIp {ip}"
            ),
            "tunnel-manager re-applies a changed remote endpoint at once: check that it runs and read its log",
        ),
        Some(_) => CheckResult::pass(
            REMOTE_GATEWAY,
            format!("GatewayExIp {name} (age {age}) has externalip {published} = status.remoteIp"),
        ),
        None => CheckResult::pass(
            REMOTE_GATEWAY,
            format!(
                "GatewayExIp {name} (age {age}) has externalip {published}; the tunnel records no remoteIp yet"
            ),
        ),
    }
}

/// What reading the broker gave: its namespace and the remote gateway's object there (`None`:
/// absent), or why it was not read.
pub type BrokerRead<'a> = Result<(&'a str, Option<&'a GatewayExIp>), String>;

/// When an object was last written: the latest time among its field managers' entries (its
/// creation when it has none).
fn last_written(o: &GatewayExIp) -> Option<jiff::Timestamp> {
    let managed = o
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max();
    managed.or_else(|| o.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// c'. The remote gateway's GatewayExIp on the broker, where the far cluster's exip-syncer
/// exports it: present, when it was last written, and whether this cluster's copy agrees.
pub fn broker_gateway(
    tunnel: &VpcNatTunnel,
    local_copy: Option<&GatewayExIp>,
    broker: BrokerRead<'_>,
    now: jiff::Timestamp,
) -> CheckResult {
    let spec = &tunnel.spec;
    let name = gateway_exip_name(&spec.gateway_name, &spec.cluster_id);
    let (namespace, on_broker) = match broker {
        Ok(read) => read,
        Err(why) => {
            return CheckResult::skip(BROKER_GATEWAY, format!("the broker was not read: {why}"));
        }
    };
    let Some(on_broker) = on_broker else {
        return CheckResult::fail(
            BROKER_GATEWAY,
            format!("GatewayExIp {name} is not on the broker (namespace {namespace})"),
            format!(
                "cluster {}'s exip-syncer exports it: check that gateway {} is ready there and that its exip-syncer is connected (multivpc_broker_connected 1)",
                spec.cluster_id, spec.gateway_name
            ),
        );
    };
    let written = last_written(on_broker)
        .map(|t| format!("{} ago", crate::view::age(t, now)))
        .unwrap_or_else(|| "at an unknown time".into());
    let published = on_broker.spec.externalip.as_str();
    let here = local_copy.map(|c| c.spec.externalip.as_str());
    match here {
        Some(ip) if ip == published => CheckResult::pass(
            BROKER_GATEWAY,
            format!(
                "GatewayExIp {namespace}/{name} on the broker has externalip {published}, last written {written}; this cluster's copy agrees"
            ),
        ),
        Some(ip) => CheckResult::fail(
            BROKER_GATEWAY,
            format!(
                "GatewayExIp {namespace}/{name} on the broker has externalip {published} (last written {written}), this cluster's copy {ip}"
            ),
            "this cluster's exip-syncer has not imported the change: check that it is connected (multivpc_broker_connected 1) and read its events and log",
        ),
        None => CheckResult::fail(
            BROKER_GATEWAY,
            format!(
                "GatewayExIp {namespace}/{name} is on the broker (externalip {published}, last written {written}) but this cluster has no copy"
            ),
            "this cluster's exip-syncer imports it: check that it is connected (multivpc_broker_connected 1) and read its events, which name a refused import",
        ),
    }
}

// ------------------------------------------------------------- d. inside the gateway pod

/// What the in-pod checks compare against, each value parsed from the status (`Err`: why it
/// cannot be checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPodPlan {
    /// The tunnel's device: its name, the only value the script carries.
    pub device: InterfaceName,
    pub tunnel_type: String,
    pub remote_ip: Result<Ipv4Addr, String>,
    pub interface_addr: Result<Ipv4Cidr, String>,
    pub mtu: Option<u32>,
    pub remote_route: Result<Ipv4Cidr, String>,
    pub local_route: Result<Ipv4Cidr, String>,
    pub ovn_gateway: Option<Ipv4Addr>,
    /// `multivpc-tunnel:<namespace>/<name>`, the SNAT rule's comment.
    pub rule_tag: Result<String, String>,
    pub snat_range: Result<(Ipv4Addr, Ipv4Addr), String>,
}

/// d, before the exec: what to look for in the pod, or the check results when nothing can be
/// looked for (nothing applied, or the name is no device name).
pub fn in_pod_plan(tunnel: &VpcNatTunnel) -> Result<InPodPlan, Vec<CheckResult>> {
    let skip_all = |why: &str| {
        IN_POD_CHECKS
            .iter()
            .map(|name| CheckResult::skip(name, why))
            .collect::<Vec<_>>()
    };
    let name = tunnel.name_any();
    let device: InterfaceName = match name.parse() {
        Ok(d) => d,
        Err(e) => {
            let mut out = vec![CheckResult::fail(
                DEVICE,
                format!("the tunnel's name cannot be a device: {e}"),
                "the API server refuses such names: recreate the tunnel under a valid name",
            )];
            out.extend(skip_all("needs device").into_iter().skip(1));
            return Err(out);
        }
    };
    let status = tunnel.status.as_ref();
    let Some(applied) = status.and_then(|s| s.applied.as_ref()) else {
        return Err(skip_all(
            "status.applied is empty: tunnel-manager records nothing programmed into the pod",
        ));
    };
    let cidr = |field: &str, value: &str| {
        value
            .parse::<Ipv4Cidr>()
            .map_err(|e| format!("status.applied.{field}: {e}"))
    };
    let namespace = tunnel.namespace().unwrap_or_default();
    let label = namespace.len() <= 63 && is_object_name(&namespace) && !namespace.contains('.');
    Ok(InPodPlan {
        tunnel_type: applied.tunnel_type.to_string(),
        remote_ip: parse_ipv4(&applied.remote_ip)
            .map_err(|e| format!("status.applied.remoteIp: {e}")),
        interface_addr: cidr("interfaceAddr", &applied.interface_addr),
        mtu: status.and_then(|s| s.mtu),
        remote_route: cidr("remoteRoute", &applied.remote_route),
        local_route: cidr("localRoute", &applied.local_route),
        ovn_gateway: status
            .and_then(|s| s.ovn_gateway_ip.as_deref())
            .and_then(|g| parse_ipv4(g).ok()),
        rule_tag: if label {
            Ok(format!("multivpc-tunnel:{namespace}/{device}"))
        } else {
            Err(format!("namespace {namespace:?} is not a namespace name"))
        },
        snat_range: snat_range(applied),
        device,
    })
}

/// The in-pod checks, in order.
pub const IN_POD_CHECKS: [&str; 6] = [DEVICE, ADDRESS, MTU, REMOTE_ROUTE, LOCAL_ROUTE, SNAT_RULE];

fn snat_range(applied: &AppliedTunnel) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let bad = || {
        format!(
            "status.applied.snatRange {:?} is not a range of IPv4 addresses (first-last)",
            applied.snat_range
        )
    };
    let (first, last) = applied.snat_range.split_once('-').ok_or_else(bad)?;
    Ok((
        parse_ipv4(first).map_err(|_| bad())?,
        parse_ipv4(last).map_err(|_| bad())?,
    ))
}

/// Single-quotes `s` for POSIX sh (`'` becomes `'\''`).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

const SECTION: &str = "multivpc-diagnose-section=";
const STATUS: &str = "multivpc-diagnose-status=";

impl InPodPlan {
    /// One read-only script for every in-pod check: the device (`ip -d link`), its IPv4
    /// addresses, the main routing table and nat `POSTROUTING` in the iptables flavour
    /// tunnel-manager uses (`iptables-legacy` when `iptables-legacy -t nat -S INPUT 1`
    /// succeeds), each in a marked section with its exit status.
    pub fn script(&self) -> String {
        let dev = quote(self.device.as_str());
        format!(
            "section() {{ echo \"{SECTION}$1\"; }}\n\
             done_() {{ echo \"{STATUS}$1\"; }}\n\
             section link; ip -d link show dev {dev} 2>&1; done_ $?\n\
             section addr; ip -o -4 addr show dev {dev} 2>&1; done_ $?\n\
             section routes; ip -4 route show 2>&1; done_ $?\n\
             ipt=iptables\n\
             if command -v iptables-legacy >/dev/null 2>&1 && iptables-legacy -t nat -S INPUT 1 >/dev/null 2>&1; then ipt=iptables-legacy; fi\n\
             section \"snat $ipt\"; $ipt -t nat -S POSTROUTING 2>&1; done_ $?\n"
        )
    }
}

/// A section of the in-pod script's output: its lines and exit status (None: cut off).
#[derive(Debug, Default)]
struct Section<'a> {
    arg: &'a str,
    lines: Vec<&'a str>,
    status: Option<i32>,
}

fn sections(stdout: &str) -> BTreeMap<&str, Section<'_>> {
    let mut out: BTreeMap<&str, Section<'_>> = BTreeMap::new();
    let mut current: Option<&str> = None;
    for line in stdout.lines() {
        if let Some(head) = line.strip_prefix(SECTION) {
            let (name, arg) = head.split_once(' ').unwrap_or((head, ""));
            out.insert(
                name,
                Section {
                    arg,
                    ..Default::default()
                },
            );
            current = Some(name);
        } else if let Some(code) = line.strip_prefix(STATUS) {
            if let Some(s) = current.and_then(|c| out.get_mut(c)) {
                s.status = code.trim().parse().ok();
            }
            current = None;
        } else if let Some(s) = current.and_then(|c| out.get_mut(c)) {
            s.lines.push(line);
        }
    }
    out
}

/// d. The in-pod checks from the script's output (or the exec's failure).
pub fn in_pod_checks(
    plan: &InPodPlan,
    pod: &str,
    output: &Result<CommandOutput, String>,
) -> Vec<CheckResult> {
    let out = match output {
        Ok(out) => out,
        Err(e) => {
            let mut checks = vec![CheckResult::fail(
                DEVICE,
                format!("cannot run commands in pod {pod}: {e}"),
                "check pods/exec permission in the Kube-OVN namespace (kubectl auth can-i create pods/exec) and that the pod's container vpc-nat-gw runs",
            )];
            checks.extend(
                IN_POD_CHECKS[1..]
                    .iter()
                    .map(|n| CheckResult::skip(n, "needs device")),
            );
            return checks;
        }
    };
    let sections = sections(&out.stdout);
    let section = |name: &str| sections.get(name).filter(|s| s.status.is_some());
    let cut_off = |check: &'static str, what: &str| {
        CheckResult::fail(
            check,
            format!(
                "the script's {what} output is missing (exit {}): {}",
                out.exit_code,
                one_line(out.stderr.lines().last().unwrap_or("no error output"))
            ),
            "run again; if it stays, the gateway image lacks sh, ip or iptables",
        )
    };
    let dev = plan.device.as_str();

    let mut checks = Vec::new();
    let device = match section("link") {
        None => cut_off(DEVICE, "ip -d link"),
        Some(s) => device_check(plan, pod, s),
    };
    let device_ok = device.passed();
    checks.push(device);
    let need_device = |name: &'static str| CheckResult::skip(name, "needs device");

    checks.push(if !device_ok {
        need_device(ADDRESS)
    } else {
        match (&plan.interface_addr, section("addr")) {
            (Err(e), _) => CheckResult::skip(ADDRESS, e.clone()),
            (_, None) => cut_off(ADDRESS, "ip addr"),
            (Ok(want), Some(s)) => address_check(*want, dev, s),
        }
    });

    checks.push(if !device_ok {
        need_device(MTU)
    } else {
        match (
            plan.mtu,
            link_mtu(&section("link").map(|s| s.lines.clone()).unwrap_or_default()),
        ) {
            (None, _) => {
                CheckResult::skip(MTU, "status.mtu is empty: tunnel-manager recorded no MTU")
            }
            (Some(want), Some(have)) if want == have => {
                CheckResult::pass(MTU, format!("{dev} has MTU {have} = status.mtu"))
            }
            (Some(want), Some(have)) => CheckResult::fail(
                MTU,
                format!("{dev} has MTU {have}, status.mtu is {want}"),
                REPAIR,
            ),
            (Some(_), None) => CheckResult::fail(
                MTU,
                format!("no MTU in the output of ip -d link show dev {dev}"),
                "the gateway's ip prints no MTU: check its iproute2",
            ),
        }
    });

    let routes = section("routes");
    checks.push(if !device_ok {
        need_device(REMOTE_ROUTE)
    } else {
        match (&plan.remote_route, routes) {
            (Err(e), _) => CheckResult::skip(REMOTE_ROUTE, e.clone()),
            (_, None) => cut_off(REMOTE_ROUTE, "ip route"),
            (Ok(cidr), Some(s)) => route_check(REMOTE_ROUTE, &s.lines, *cidr, dev, None),
        }
    });
    checks.push(match (&plan.local_route, routes) {
        (Err(e), _) => CheckResult::skip(LOCAL_ROUTE, e.clone()),
        (_, None) => cut_off(LOCAL_ROUTE, "ip route"),
        (Ok(cidr), Some(s)) => route_check(LOCAL_ROUTE, &s.lines, *cidr, "eth0", plan.ovn_gateway),
    });

    let snat = sections
        .iter()
        .find(|(name, s)| name.starts_with("snat") && s.status.is_some())
        .map(|(_, s)| s);
    checks.push(match (&plan.rule_tag, snat) {
        (Err(e), _) => CheckResult::skip(SNAT_RULE, e.clone()),
        (_, None) => cut_off(SNAT_RULE, "iptables"),
        (Ok(tag), Some(s)) => snat_check(plan, tag, s),
    });
    checks
}

fn device_check(plan: &InPodPlan, pod: &str, s: &Section<'_>) -> CheckResult {
    let dev = plan.device.as_str();
    if s.status != Some(0) {
        return CheckResult::fail(
            DEVICE,
            format!(
                "device {dev} does not exist in pod {pod} ({})",
                one_line(s.lines.last().copied().unwrap_or("ip -d link failed"))
            ),
            REPAIR,
        );
    }
    let first = s.lines.first().copied().unwrap_or_default();
    // `5: name: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 ...`: UP is the administrative state.
    let flags = first
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.split(',').collect::<Vec<_>>())
        .unwrap_or_default();
    if !flags.contains(&"UP") {
        return CheckResult::fail(
            DEVICE,
            format!(
                "device {dev} is down in pod {pod} (flags <{}>)",
                flags.join(",")
            ),
            REPAIR,
        );
    }
    let words: Vec<&str> = s.lines.iter().flat_map(|l| l.split_whitespace()).collect();
    // `ip -d link` prints the kind's details on the third line: `vxlan id 100 remote …`,
    // `gre remote …`.
    let kind = s.lines.get(2).and_then(|l| l.split_whitespace().next());
    if kind != Some(plan.tunnel_type.as_str()) {
        return CheckResult::fail(
            DEVICE,
            format!(
                "device {dev} is not a {} device (ip -d link shows {})",
                plan.tunnel_type,
                kind.unwrap_or("no kind")
            ),
            REPAIR,
        );
    }
    let remote = words.windows(2).find(|w| w[0] == "remote").map(|w| w[1]);
    if let (Ok(want), Some(have)) = (&plan.remote_ip, remote)
        && have != want.to_string()
    {
        return CheckResult::fail(
            DEVICE,
            format!("device {dev} sends to remote {have}, status.applied.remoteIp is {want}"),
            REPAIR,
        );
    }
    CheckResult::pass(
        DEVICE,
        format!(
            "{} device {dev} exists and is up{}",
            plan.tunnel_type,
            remote.map(|r| format!(", remote {r}")).unwrap_or_default()
        ),
    )
}

fn link_mtu(lines: &[&str]) -> Option<u32> {
    let words: Vec<&str> = lines.first()?.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "mtu")
        .and_then(|w| w[1].parse().ok())
}

fn address_check(want: Ipv4Cidr, dev: &str, s: &Section<'_>) -> CheckResult {
    // `5: name    inet 10.250.0.1/24 scope global name ...`
    let have: Vec<&str> = s
        .lines
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.windows(2).find(|p| p[0] == "inet").map(|p| p[1])
        })
        .collect();
    let want_s = want.to_string();
    if !have.contains(&want_s.as_str()) {
        return CheckResult::fail(
            ADDRESS,
            format!(
                "{dev} does not have {want_s} (status.applied.interfaceAddr); it has {}",
                if have.is_empty() {
                    "no IPv4 address".to_owned()
                } else {
                    have.join(", ")
                }
            ),
            REPAIR,
        );
    }
    let others: Vec<&str> = have.iter().copied().filter(|a| *a != want_s).collect();
    if !others.is_empty() {
        return CheckResult::fail(
            ADDRESS,
            format!(
                "{dev} has {want_s} and also {} (tunnel-manager keeps only its own)",
                others.join(", ")
            ),
            REPAIR,
        );
    }
    CheckResult::pass(ADDRESS, format!("{dev} has {want_s}"))
}

/// The destination of an `ip route` line: `242.2.0.0/16`, or a host route's bare address.
fn route_destination(line: &str) -> Option<Ipv4Cidr> {
    let first = line.split_whitespace().next()?;
    if first.contains('/') {
        first.parse().ok()
    } else {
        format!("{first}/32").parse().ok()
    }
}

fn route_check(
    name: &'static str,
    routes: &[&str],
    cidr: Ipv4Cidr,
    dev: &str,
    via: Option<Ipv4Addr>,
) -> CheckResult {
    let network = cidr.network();
    let matching: Vec<&str> = routes
        .iter()
        .copied()
        .filter(|l| route_destination(l).is_some_and(|d| d.network() == network))
        .collect();
    let word_after = |line: &str, key: &str| {
        let w: Vec<&str> = line.split_whitespace().collect();
        w.windows(2).find(|p| p[0] == key).map(|p| p[1].to_owned())
    };
    let expected = match via {
        Some(gw) => format!("via {gw} dev {dev}"),
        None => format!("dev {dev}"),
    };
    let good = matching.iter().find(|l| {
        word_after(l, "dev").as_deref() == Some(dev)
            && via.is_none_or(|gw| word_after(l, "via") == Some(gw.to_string()))
    });
    match (good, matching.first()) {
        (Some(line), _) => CheckResult::pass(name, format!("route {}", one_line(line))),
        (None, None) => CheckResult::fail(
            name,
            format!("no route to {network} (expected {network} {expected})"),
            REPAIR,
        ),
        (None, Some(other)) => CheckResult::fail(
            name,
            format!(
                "the route to {network} is `{}`, expected {expected}",
                one_line(other)
            ),
            REPAIR,
        ),
    }
}

fn snat_check(plan: &InPodPlan, tag: &str, s: &Section<'_>) -> CheckResult {
    let flavour = if s.arg.is_empty() { "iptables" } else { s.arg };
    if s.status != Some(0) {
        return CheckResult::fail(
            SNAT_RULE,
            format!(
                "{flavour} -t nat -S POSTROUTING failed: {}",
                one_line(s.lines.last().copied().unwrap_or("no output"))
            ),
            "the gateway needs iptables with the nat table (Kube-OVN's image has it)",
        );
    }
    // `-A POSTROUTING -d 242.2.0.0/16 -m comment --comment multivpc-tunnel:ns/name -j SNAT --to-source a-b`
    let tagged: Vec<&str> = s
        .lines
        .iter()
        .copied()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.windows(2)
                .any(|p| p[0] == "--comment" && p[1].trim_matches('"') == tag)
        })
        .collect();
    let snat: Vec<&str> = tagged
        .iter()
        .copied()
        .filter(|l| l.contains(" -j SNAT"))
        .collect();
    match snat.len() {
        0 => CheckResult::fail(
            SNAT_RULE,
            format!("no SNAT rule tagged {tag} in nat POSTROUTING ({flavour})"),
            REPAIR,
        ),
        1 => {
            let rule = snat[0];
            if let Ok((first, last)) = plan.snat_range
                && !rule.contains(&format!("--to-source {first}-{last}"))
            {
                return CheckResult::fail(
                    SNAT_RULE,
                    format!(
                        "the SNAT rule tagged {tag} does not translate to {first}-{last} (status.applied.snatRange): {}",
                        one_line(rule)
                    ),
                    REPAIR,
                );
            }
            CheckResult::pass(SNAT_RULE, format!("one SNAT rule tagged {tag} ({flavour})"))
        }
        n => CheckResult::fail(
            SNAT_RULE,
            format!(
                "{n} SNAT rules tagged {tag} in nat POSTROUTING ({flavour}), exactly one expected"
            ),
            format!(
                "tunnel-manager deletes the extra ones at its next verification (every --verify-interval, default 5m) or at once when restarted; a copy added by hand can be removed with {flavour} -t nat -D POSTROUTING <its arguments>"
            ),
        ),
    }
}

// ---------------------------------------------------------------------- e. health

/// e. The Healthy condition, as tunnel-manager's probes report it.
pub fn healthy(tunnel: &VpcNatTunnel) -> CheckResult {
    let Some(c) = tunnel
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::HEALTHY))
    else {
        return CheckResult::skip(
            HEALTHY,
            "no Healthy condition: tunnel-manager predates the health probes or has not probed yet",
        );
    };
    let spec = &tunnel.spec;
    match c.status.as_str() {
        "True" => CheckResult::pass(HEALTHY, format!("Healthy=True {}: {}", c.reason, c.message)),
        "False" if c.reason == "IPsecAuthenticationFailed" => CheckResult::fail(
            HEALTHY,
            format!("Healthy=False {}: {}", c.reason, c.message),
            format!(
                "give the Secret tunnel-manager's --ipsec-psk-secret names the same key here and in cluster {} (each side applies it within 10 s of its next reconcile, an epoch boundary at the latest)",
                spec.cluster_id
            ),
        ),
        "False" => CheckResult::fail(
            HEALTHY,
            format!("Healthy=False {}: {}", c.reason, c.message),
            format!(
                "packets do not cross the tunnel: run kubectl multivpc diagnose on the far end's tunnel in cluster {} (gateway {}), and check the underlay between the two external IPs ({})",
                spec.cluster_id,
                spec.gateway_name,
                match (spec.encryption, spec.tunnel_type) {
                    (multivpc_api::Encryption::Ipsec, _) => "IP protocol 50, ESP",
                    (_, multivpc_api::TunnelType::Vxlan) => "UDP to the VXLAN port",
                    (_, multivpc_api::TunnelType::Gre) => "IP protocol 47",
                }
            ),
        ),
        other => CheckResult::skip(
            HEALTHY,
            format!("Healthy={other} {}: {}", c.reason, c.message),
        ),
    }
}

/// e, before the exec: the far end's tunnel address to ping, or why there is none.
pub fn ping_target(tunnel: &VpcNatTunnel) -> Result<Ipv4Addr, CheckResult> {
    let spec = &tunnel.spec;
    let Some(health) = tunnel.status.as_ref().and_then(|s| s.health.as_ref()) else {
        return Err(CheckResult::skip(
            PING,
            format!(
                "PeerAddressUnknown: status.health has no target: GatewayExIp {} publishes no tunnel address toward this gateway (its tunnel back is not Ready, or the far end's exip-syncer or GatewayExIp CRD predates spec.tunnels)",
                gateway_exip_name(&spec.gateway_name, &spec.cluster_id)
            ),
        ));
    };
    parse_ipv4(&health.target).map_err(|e| {
        CheckResult::fail(
            PING,
            format!("status.health.target: {e}"),
            "the status was not written by tunnel-manager: let tunnel-manager rewrite it (restart it)",
        )
    })
}

/// The probe: 3 pings, 1 s each at most, out of the tunnel's device.
pub fn ping_script(device: &InterfaceName, target: Ipv4Addr) -> String {
    format!(
        "ping -c 3 -W 1 -I {} {} 2>&1",
        quote(device.as_str()),
        quote(&target.to_string())
    )
}

/// What ping printed: packets sent and answered, and the average round trip with its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
    pub rtt_average: Option<String>,
}

/// Reads the summary lines of iputils' and busybox's ping.
pub fn parse_ping(output: &str) -> Option<PingSummary> {
    let stats = output.lines().find(|l| l.contains("packets transmitted"))?;
    let numbers: Vec<&str> = stats.split(',').map(str::trim).collect();
    let leading = |s: &str| s.split_whitespace().next()?.parse::<u32>().ok();
    let transmitted = leading(numbers.first()?)?;
    let received = numbers
        .iter()
        .find(|s| s.contains("received"))
        .and_then(|s| leading(s))?;
    // `rtt min/avg/max/mdev = 0.048/0.056/0.062/0.006 ms` or `round-trip min/avg/max = … ms`
    let rtt_average = output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split_once('='))
        .and_then(|(_, v)| {
            let v = v.trim();
            let (values, unit) = v.split_once(' ').unwrap_or((v, "ms"));
            values
                .split('/')
                .nth(1)
                .map(|avg| format!("{avg}{}", unit.trim()))
        });
    Some(PingSummary {
        transmitted,
        received,
        rtt_average,
    })
}

/// e. The ping's result: PASS when the far end answered at least once (loss and round trip in
/// the reason), FAIL when it never did.
pub fn ping(
    device: &InterfaceName,
    target: Ipv4Addr,
    output: &Result<CommandOutput, String>,
) -> CheckResult {
    let out = match output {
        Ok(out) => out,
        Err(e) => {
            return CheckResult::fail(
                PING,
                format!("cannot run ping in the gateway pod: {e}"),
                "check pods/exec permission and the pod",
            );
        }
    };
    let text = format!("{}{}", out.stdout, out.stderr);
    if out.exit_code == 127 {
        return CheckResult::skip(PING, "the gateway pod has no ping");
    }
    match parse_ping(&text) {
        Some(p) if p.received > 0 => {
            let loss = 100 * (p.transmitted - p.received.min(p.transmitted)) / p.transmitted.max(1);
            CheckResult::pass(
                PING,
                format!(
                    "{target} answered {}/{} pings out of {device} ({loss}% loss{})",
                    p.received,
                    p.transmitted,
                    p.rtt_average
                        .map(|r| format!(", rtt average {r}"))
                        .unwrap_or_default()
                ),
            )
        }
        Some(p) => CheckResult::fail(
            PING,
            format!(
                "{target} answered none of {} pings out of {device} (100% loss)",
                p.transmitted
            ),
            "the far end does not answer through the tunnel: run kubectl multivpc diagnose on its tunnel in the other cluster, and check the underlay between the gateways",
        ),
        None => CheckResult::fail(
            PING,
            format!(
                "ping {target} out of {device} failed (exit {}): {}",
                out.exit_code,
                one_line(text.lines().last().unwrap_or("no output"))
            ),
            "read the error: the device must exist and the target be in its network",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dns_forwards_of_the_vpc_pass_fail_or_skip() {
        let forward = |name: &str, vpc: &str, ready: Option<(&str, &str)>| {
            let mut f: multivpc_api::VpcDnsForward = serde_json::from_value(json!({
                "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcDnsForward",
                "metadata": {"name": name, "namespace": "ns1"},
                "spec": {"vpc": vpc},
            }))
            .unwrap();
            if let Some((status, reason)) = ready {
                f.status = serde_json::from_value(json!({"conditions": [{
                    "type": "Ready", "status": status, "reason": reason, "message": "m",
                    "lastTransitionTime": "2026-12-07T12:00:00Z",
                }]}))
                .unwrap();
            }
            f
        };
        let none = dns_forwards(
            "v1",
            &[forward("other", "v2", Some(("True", "Forwarding")))],
        );
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].outcome, Outcome::Skip);
        let checks = dns_forwards(
            "v1",
            &[
                forward("ok", "v1", Some(("True", "Forwarding"))),
                forward("bad", "v1", Some(("False", "VpcDnsNotFound"))),
                forward("new", "v1", None),
            ],
        );
        let outcomes: Vec<Outcome> = checks.iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes, [Outcome::Pass, Outcome::Fail, Outcome::Fail]);
        assert!(
            checks[1].reason.contains("VpcDnsNotFound"),
            "{:?}",
            checks[1]
        );
        assert!(
            checks[1]
                .fix
                .as_deref()
                .unwrap()
                .contains("describe vpcdnsforward -n ns1 bad")
        );
    }

    fn now() -> jiff::Timestamp {
        "2026-12-07T12:00:00Z".parse().unwrap()
    }

    fn tunnel(status: serde_json::Value) -> VpcNatTunnel {
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": "tmv1", "namespace": "ns1", "generation": 2},
            "spec": {"clusterId": "cluster2", "gatewayName": "rgw", "interfaceAddr": "10.250.0.1/24",
                     "natGwDp": "gw1", "type": "vxlan", "vni": 4321},
            "status": status,
        }))
        .unwrap()
    }

    fn programmed() -> serde_json::Value {
        json!({
            "observedGeneration": 2,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Programmed", "message": "programmed",
                 "lastTransitionTime": "2026-12-07T11:00:00Z"},
                {"type": "Healthy", "status": "True", "reason": "Answering", "message": "rtt 0.1ms",
                 "lastTransitionTime": "2026-12-07T11:00:00Z"},
            ],
            "gatewayPod": {"name": "vpc-nat-gw-gw1-0", "uid": "u1"},
            "localIp": "172.50.1.11", "remoteIp": "172.50.2.11", "ovnGatewayIp": "10.1.0.1",
            "mtu": 1450,
            "applied": {"type": "vxlan", "interfaceAddr": "10.250.0.1/24", "localIp": "172.50.1.11",
                        "remoteIp": "172.50.2.11", "vni": 4321, "dstPort": 4789,
                        "localRoute": "242.0.0.0/16", "remoteRoute": "242.1.0.0/16",
                        "snatRange": "242.0.0.1-242.0.0.4"},
            "health": {"target": "10.250.0.2", "window": 10, "lossPercent": 0,
                       "lastProbeTime": "2026-12-07T11:59:59Z"},
        })
    }

    const LINK: &str = "7: tmv1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000
    link/ether 8a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff promiscuity 0 allmulti 0 minmtu 68 maxmtu 65535
    vxlan id 4321 remote 172.50.2.11 local 172.50.1.11 dev net1 srcport 0 0 dstport 4789 ttl auto ageing 300";
    const ADDR: &str = "7: tmv1    inet 10.250.0.1/24 scope global tmv1\\       valid_lft forever preferred_lft forever";
    const ROUTES: &str = "default via 172.50.0.1 dev net1
10.1.0.0/24 dev eth0 proto kernel scope link src 10.1.0.254
10.250.0.0/24 dev tmv1 proto kernel scope link src 10.250.0.1
242.0.0.0/16 via 10.1.0.1 dev eth0 proto 178
242.1.0.0/16 dev tmv1 proto 178 scope link";
    const RULE: &str = "-A POSTROUTING -d 242.1.0.0/16 -m comment --comment multivpc-tunnel:ns1/tmv1 -j SNAT --to-source 242.0.0.1-242.0.0.4";

    fn pod_output(link: &str, routes: &str, rules: &[&str]) -> Result<CommandOutput, String> {
        let link_status = if link.starts_with("Device") { 1 } else { 0 };
        let stdout = format!(
            "{SECTION}link\n{link}\n{STATUS}{link_status}\n{SECTION}addr\n{ADDR}\n{STATUS}0\n{SECTION}routes\n{routes}\n{STATUS}0\n{SECTION}snat iptables\n-P POSTROUTING ACCEPT\n{}\n{STATUS}0\n",
            rules.join("\n")
        );
        Ok(CommandOutput {
            stdout,
            ..Default::default()
        })
    }

    fn run_in_pod(t: &VpcNatTunnel, output: Result<CommandOutput, String>) -> Vec<CheckResult> {
        let plan = in_pod_plan(t).unwrap();
        in_pod_checks(&plan, "kube-system/vpc-nat-gw-gw1-0", &output)
    }

    fn outcomes(checks: &[CheckResult]) -> Vec<(&str, Outcome)> {
        checks.iter().map(|c| (c.name, c.outcome)).collect()
    }

    #[test]
    fn a_programmed_tunnel_passes_every_in_pod_check() {
        let t = tunnel(programmed());
        let checks = run_in_pod(&t, pod_output(LINK, ROUTES, &[RULE]));
        assert!(checks.iter().all(CheckResult::passed), "{checks:#?}");
        assert_eq!(
            checks.iter().map(|c| c.name).collect::<Vec<_>>(),
            IN_POD_CHECKS
        );
        assert!(
            checks[0].reason.contains("remote 172.50.2.11"),
            "{}",
            checks[0].reason
        );
    }

    #[test]
    fn a_missing_remote_route_fails_naming_that_route() {
        let t = tunnel(programmed());
        let routes: String = ROUTES
            .lines()
            .filter(|l| !l.starts_with("242.1.0.0/16"))
            .collect::<Vec<_>>()
            .join("\n");
        let checks = run_in_pod(&t, pod_output(LINK, &routes, &[RULE]));
        let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
        assert_eq!(failed.len(), 1, "{checks:#?}");
        assert_eq!(failed[0].name, REMOTE_ROUTE);
        assert!(
            failed[0].reason.contains("no route to 242.1.0.0/16"),
            "{}",
            failed[0].reason
        );
        assert!(
            failed[0]
                .fix
                .as_deref()
                .unwrap()
                .contains("--verify-interval")
        );

        // A route through the wrong device is named as it is.
        let wrong = ROUTES.replace("242.1.0.0/16 dev tmv1", "242.1.0.0/16 dev eth0");
        let checks = run_in_pod(&t, pod_output(LINK, &wrong, &[RULE]));
        let c = checks.iter().find(|c| c.name == REMOTE_ROUTE).unwrap();
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(
            c.reason
                .contains("`242.1.0.0/16 dev eth0 proto 178 scope link`"),
            "{}",
            c.reason
        );

        // The local route must go via the OVN gateway on eth0.
        let wrong = ROUTES.replace("242.0.0.0/16 via 10.1.0.1", "242.0.0.0/16 via 10.1.0.9");
        let checks = run_in_pod(&t, pod_output(LINK, &wrong, &[RULE]));
        let c = checks.iter().find(|c| c.name == LOCAL_ROUTE).unwrap();
        assert_eq!(c.outcome, Outcome::Fail, "{c:?}");
        assert!(
            c.reason.contains("expected via 10.1.0.1 dev eth0"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn a_second_snat_rule_or_none_fails_the_rule_check() {
        let t = tunnel(programmed());
        let checks = run_in_pod(&t, pod_output(LINK, ROUTES, &[RULE, RULE]));
        let c = checks.iter().find(|c| c.name == SNAT_RULE).unwrap();
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(
            c.reason
                .starts_with("2 SNAT rules tagged multivpc-tunnel:ns1/tmv1"),
            "{}",
            c.reason
        );

        let checks = run_in_pod(&t, pod_output(LINK, ROUTES, &[]));
        let c = checks.iter().find(|c| c.name == SNAT_RULE).unwrap();
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.reason.contains("no SNAT rule"), "{}", c.reason);

        // Another tunnel's rule whose tag starts with ours is not ours.
        let other = RULE.replace("ns1/tmv1", "ns1/tmv10");
        let checks = run_in_pod(&t, pod_output(LINK, ROUTES, &[RULE, &other]));
        assert!(
            checks
                .iter()
                .find(|c| c.name == SNAT_RULE)
                .unwrap()
                .passed()
        );

        // The wrong range.
        let ranged = RULE.replace("242.0.0.4", "242.0.0.9");
        let checks = run_in_pod(&t, pod_output(LINK, ROUTES, &[&ranged]));
        let c = checks.iter().find(|c| c.name == SNAT_RULE).unwrap();
        assert!(
            c.reason
                .contains("does not translate to 242.0.0.1-242.0.0.4"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn a_missing_or_down_device_fails_and_skips_what_needs_it() {
        let t = tunnel(programmed());
        let checks = run_in_pod(
            &t,
            pod_output("Device \"tmv1\" does not exist.", ROUTES, &[RULE]),
        );
        assert_eq!(
            outcomes(&checks),
            [
                (DEVICE, Outcome::Fail),
                (ADDRESS, Outcome::Skip),
                (MTU, Outcome::Skip),
                (REMOTE_ROUTE, Outcome::Skip),
                (LOCAL_ROUTE, Outcome::Pass),
                (SNAT_RULE, Outcome::Pass),
            ]
        );
        assert!(
            checks[0].reason.contains("does not exist"),
            "{}",
            checks[0].reason
        );
        assert_eq!(checks[1].reason, "needs device");

        let down = LINK.replace("UP,LOWER_UP", "NOARP");
        let checks = run_in_pod(&t, pod_output(&down, ROUTES, &[RULE]));
        assert!(checks[0].reason.contains("is down"), "{}", checks[0].reason);

        let other_remote = LINK.replace("remote 172.50.2.11", "remote 172.50.2.99");
        let checks = run_in_pod(&t, pod_output(&other_remote, ROUTES, &[RULE]));
        assert!(
            checks[0].reason.contains("remote 172.50.2.99"),
            "{}",
            checks[0].reason
        );

        let mtu = LINK.replace("mtu 1450", "mtu 1400");
        let checks = run_in_pod(&t, pod_output(&mtu, ROUTES, &[RULE]));
        assert_eq!(outcomes(&checks)[2], (MTU, Outcome::Fail));

        // The exec itself failed: the device check says so, nothing else is guessed.
        let checks = run_in_pod(&t, Err("403 Forbidden".into()));
        assert_eq!(checks[0].outcome, Outcome::Fail);
        assert!(checks[0].reason.contains("403 Forbidden"));
        assert!(checks[1..].iter().all(|c| c.outcome == Outcome::Skip));

        // Output cut off after the link section.
        let mut cut = pod_output(LINK, ROUTES, &[RULE]).unwrap();
        cut.stdout
            .truncate(cut.stdout.find(&format!("{SECTION}addr")).unwrap());
        cut.exit_code = -1;
        let checks = run_in_pod(&t, Ok(cut));
        assert!(checks[0].passed());
        assert!(
            checks[1].reason.contains("output is missing"),
            "{}",
            checks[1].reason
        );
    }

    #[test]
    fn a_gre_device_is_read_like_a_vxlan_one() {
        let mut status = programmed();
        status["applied"]["type"] = json!("gre");
        let t = tunnel(status);
        let gre = "7: tmv1@NONE: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000
    link/gre 172.50.1.11 peer 172.50.2.11 promiscuity 0 allmulti 0 minmtu 0 maxmtu 0
    gre remote 172.50.2.11 local 172.50.1.11 ttl 255 pmtudisc addrgenmode eui64";
        let checks = run_in_pod(&t, pod_output(gre, ROUTES, &[RULE]));
        assert!(checks.iter().all(CheckResult::passed), "{checks:#?}");
        assert!(
            checks[0].reason.starts_with("gre device tmv1"),
            "{}",
            checks[0].reason
        );

        // The VXLAN device where a GRE one was programmed.
        let checks = run_in_pod(&t, pod_output(LINK, ROUTES, &[RULE]));
        assert_eq!(checks[0].outcome, Outcome::Fail);
        assert!(
            checks[0]
                .reason
                .contains("not a gre device (ip -d link shows vxlan)"),
            "{}",
            checks[0].reason
        );
    }

    #[test]
    fn nothing_applied_skips_the_in_pod_checks() {
        let mut status = programmed();
        status.as_object_mut().unwrap().remove("applied");
        let checks = in_pod_plan(&tunnel(status)).unwrap_err();
        assert_eq!(checks.len(), IN_POD_CHECKS.len());
        assert!(checks.iter().all(|c| c.outcome == Outcome::Skip));
        assert!(checks[0].reason.contains("status.applied is empty"));
    }

    #[test]
    fn hostile_status_values_never_reach_the_script() {
        let mut status = programmed();
        status["applied"]["remoteRoute"] = json!("242.1.0.0/16; reboot");
        status["applied"]["snatRange"] = json!("$(reboot)");
        let plan = in_pod_plan(&tunnel(status)).unwrap();
        assert!(plan.remote_route.is_err() && plan.snat_range.is_err());
        let script = plan.script();
        assert!(!script.contains("reboot"), "{script}");
        assert!(script.contains("ip -d link show dev 'tmv1'"), "{script}");
        let checks = in_pod_checks(&plan, "p", &pod_output(LINK, ROUTES, &[RULE]));
        let c = checks.iter().find(|c| c.name == REMOTE_ROUTE).unwrap();
        assert_eq!(c.outcome, Outcome::Skip);
        assert!(
            c.reason.contains("status.applied.remoteRoute"),
            "{}",
            c.reason
        );

        assert_eq!(quote("a'b"), "'a'\\''b'");
        let target: Ipv4Addr = "10.250.0.2".parse().unwrap();
        assert_eq!(
            ping_script(&"tmv1".parse().unwrap(), target),
            "ping -c 3 -W 1 -I 'tmv1' '10.250.0.2' 2>&1"
        );
        let mut status = programmed();
        status["health"]["target"] = json!("10.250.0.2 -f");
        assert_eq!(
            ping_target(&tunnel(status)).unwrap_err().outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn the_script_parses_in_sh() {
        let plan = in_pod_plan(&tunnel(programmed())).unwrap();
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", &plan.script()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn the_tunnel_check_reports_the_condition_and_its_fix() {
        let c = tunnel_ready("ns1", "tmv1", None);
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.reason.contains("does not exist"));

        assert!(tunnel_ready("ns1", "tmv1", Some(&tunnel(programmed()))).passed());

        let mut status = programmed();
        status["conditions"][0] = json!({"type": "Ready", "status": "False", "reason": "NamespaceNotAdmitted",
            "message": "Vpc v does not list ns1", "lastTransitionTime": "2026-12-07T11:00:00Z"});
        let c = tunnel_ready("ns1", "tmv1", Some(&tunnel(status)));
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(
            c.reason
                .contains("Ready=False NamespaceNotAdmitted: Vpc v does not list ns1")
        );
        assert!(c.fix.unwrap().contains("spec.namespaces"));

        let mut status = programmed();
        status["observedGeneration"] = json!(1);
        let c = tunnel_ready("ns1", "tmv1", Some(&tunnel(status)));
        assert!(c.reason.contains("generation 1"), "{}", c.reason);

        let c = tunnel_ready("ns1", "tmv1", Some(&tunnel(json!({}))));
        assert!(c.reason.contains("no Ready condition"));
    }

    fn pod(uid: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "vpc-nat-gw-gw1-0", "namespace": "kube-system", "uid": uid},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    #[test]
    fn the_gateway_pod_must_exist_be_the_programmed_one_and_be_ready() {
        let t = tunnel(programmed());
        let want = gateway_pod_ref(&t).unwrap();
        assert!(gateway_pod("kube-system", want, Some(&pod("u1", true))).passed());
        let c = gateway_pod("kube-system", want, Some(&pod("u1", false)));
        assert!(
            c.reason.contains("not Ready (phase Running)"),
            "{}",
            c.reason
        );
        let c = gateway_pod("kube-system", want, Some(&pod("u2", true)));
        assert!(c.reason.contains("was replaced"), "{}", c.reason);
        let c = gateway_pod("kube-system", want, None);
        assert!(c.reason.contains("does not exist"), "{}", c.reason);

        assert_eq!(
            gateway_pod_ref(&tunnel(json!({}))).unwrap_err().outcome,
            Outcome::Skip
        );
        let mut status = programmed();
        status["gatewayPod"]["name"] = json!("../x");
        assert_eq!(
            gateway_pod_ref(&tunnel(status)).unwrap_err().outcome,
            Outcome::Fail
        );
    }

    fn exip(manager: &str, labels: serde_json::Value, ip: &str) -> GatewayExIp {
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
            "metadata": {"name": "rgw-cluster2", "namespace": "kube-system", "labels": labels,
                "creationTimestamp": "2026-12-07T11:00:00Z",
                "managedFields": [{"manager": manager, "operation": "Apply", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {"f:externalip": {}}}}]},
            "spec": {"externalip": ip, "globalnetcidr": "242.1.0.0/16"},
        }))
        .unwrap()
    }

    #[test]
    fn the_broker_object_is_present_recent_and_agrees_with_the_local_copy() {
        let t = tunnel(programmed());
        let mut on_broker = exip("exip-syncer", json!({}), "172.50.2.11");
        on_broker.metadata.managed_fields.as_mut().unwrap()[0].time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-07T11:58:00Z".parse().unwrap(),
            ));
        let local = exip("exip-syncer", json!({}), "172.50.2.11");
        let c = broker_gateway(&t, Some(&local), Ok(("brk", Some(&on_broker))), now());
        assert!(c.passed(), "{c:?}");
        assert!(
            c.reason.contains("brk/rgw-cluster2") && c.reason.contains("2m ago"),
            "{}",
            c.reason
        );
        // The far cluster moved its gateway; this cluster's copy did not follow.
        let stale = exip("exip-syncer", json!({}), "172.50.2.99");
        let c = broker_gateway(&t, Some(&stale), Ok(("brk", Some(&on_broker))), now());
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.reason.contains("172.50.2.99"), "{}", c.reason);
        let c = broker_gateway(&t, None, Ok(("brk", Some(&on_broker))), now());
        assert!(c.fix.unwrap().contains("refused import"));
        // Not exported by the far cluster.
        let c = broker_gateway(&t, Some(&local), Ok(("brk", None)), now());
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.fix.unwrap().contains("cluster cluster2"));
        // The broker not read (no credentials, no route): a skip saying why, never a pass.
        let c = broker_gateway(&t, Some(&local), Err("no ServiceDiscovery".into()), now());
        assert_eq!(c.outcome, Outcome::Skip);
        assert!(c.reason.contains("no ServiceDiscovery"));
    }

    #[test]
    fn the_remote_gatewayexip_must_be_exip_syncers_copy_with_the_programmed_ip() {
        let t = tunnel(programmed());
        let labels = json!({
            "multivpc.kubeovn.ustc.io/cluster": "cluster2",
            "multivpc.kubeovn.ustc.io/gateway": "rgw",
            "submariner-io/clusterID": "cluster2",
        });
        let c = remote_gateway(
            &t,
            "kube-system",
            Some(&exip("exip-syncer", labels.clone(), "172.50.2.11")),
            now(),
        );
        assert!(c.passed(), "{c:?}");
        assert!(c.reason.contains("age 60m"), "{}", c.reason);

        let c = remote_gateway(
            &t,
            "kube-system",
            Some(&exip("exip-syncer", labels.clone(), "172.50.2.12")),
            now(),
        );
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.reason.contains("remoteIp 172.50.2.11"), "{}", c.reason);

        let c = remote_gateway(
            &t,
            "kube-system",
            Some(&exip("kubectl", labels, "172.50.2.11")),
            now(),
        );
        assert!(c.reason.contains("managed by kubectl"), "{}", c.reason);

        let c = remote_gateway(
            &t,
            "kube-system",
            Some(&exip("exip-syncer", json!({}), "172.50.2.11")),
            now(),
        );
        assert!(c.reason.contains("not a copy"), "{}", c.reason);

        let c = remote_gateway(&t, "kube-system", None, now());
        assert!(
            c.reason.contains("kube-system/rgw-cluster2 does not exist"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn health_and_ping() {
        let t = tunnel(programmed());
        assert!(healthy(&t).passed());
        let mut status = programmed();
        status["conditions"][1]["status"] = json!("False");
        status["conditions"][1]["reason"] = json!("NotAnswering");
        let c = healthy(&tunnel(status.clone()));
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.fix.unwrap().contains("UDP"));
        let mut encrypted = tunnel(status.clone());
        encrypted.spec.encryption = multivpc_api::Encryption::Ipsec;
        assert!(healthy(&encrypted).fix.unwrap().contains("ESP"));
        status["conditions"][1]["reason"] = json!("IPsecAuthenticationFailed");
        let c = healthy(&tunnel(status));
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.fix.unwrap().contains("--ipsec-psk-secret"));
        let mut status = programmed();
        status["conditions"][1]["status"] = json!("Unknown");
        status["conditions"][1]["reason"] = json!("PeerAddressUnknown");
        assert_eq!(healthy(&tunnel(status)).outcome, Outcome::Skip);

        let mut status = programmed();
        status.as_object_mut().unwrap().remove("health");
        let c = ping_target(&tunnel(status)).unwrap_err();
        assert_eq!(c.outcome, Outcome::Skip);
        assert!(c.reason.starts_with("PeerAddressUnknown"), "{}", c.reason);
        let target = ping_target(&t).unwrap();

        let dev: InterfaceName = "tmv1".parse().unwrap();
        let iputils = "PING 10.250.0.2 (10.250.0.2) from 10.250.0.1 tmv1: 56(84) bytes of data.
64 bytes from 10.250.0.2: icmp_seq=1 ttl=64 time=0.062 ms

--- 10.250.0.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 2030ms
rtt min/avg/max/mdev = 0.048/0.056/0.062/0.006 ms
";
        let ok = |stdout: &str, code| {
            Ok(CommandOutput {
                stdout: stdout.into(),
                exit_code: code,
                ..Default::default()
            })
        };
        let c = ping(&dev, target, &ok(iputils, 0));
        assert!(c.passed());
        assert!(
            c.reason.contains("3/3 pings") && c.reason.contains("rtt average 0.056ms"),
            "{}",
            c.reason
        );

        let busybox = "3 packets transmitted, 2 packets received, 33% packet loss
round-trip min/avg/max = 0.071/0.080/0.094 ms";
        let c = ping(&dev, target, &ok(busybox, 0));
        assert!(
            c.reason
                .contains("2/3 pings out of tmv1 (33% loss, rtt average 0.080ms)"),
            "{}",
            c.reason
        );

        let lost = "3 packets transmitted, 0 received, 100% packet loss, time 2046ms";
        let c = ping(&dev, target, &ok(lost, 1));
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.reason.contains("100% loss"));

        let c = ping(
            &dev,
            target,
            &ok("ping: SO_BINDTODEVICE tmv1: No such device", 2),
        );
        assert!(c.reason.contains("No such device"), "{}", c.reason);
        assert_eq!(
            ping(&dev, target, &ok("sh: ping: not found", 127)).outcome,
            Outcome::Skip
        );
    }

    #[test]
    fn the_report_prints_one_line_per_check_and_a_fix_under_failures() {
        let mut r = Report::default();
        r.push(CheckResult::pass(TUNNEL_READY, "Ready=True Programmed: ok"));
        r.push(CheckResult::fail(
            REMOTE_ROUTE,
            "no route\nto x",
            "restart it",
        ));
        r.push(CheckResult::skip(PING, "needs device"));
        assert!(r.failed());
        assert_eq!(
            r.render(),
            "PASS  tunnel-ready  Ready=True Programmed: ok\n\
             FAIL  remote-route  no route to x\n\
            \x20                   fix: restart it\n\
             SKIP  ping          needs device\n"
        );
    }
}
