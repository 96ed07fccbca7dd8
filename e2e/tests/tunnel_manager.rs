//! tunnel-manager against real API servers: the binary runs as a user would run it, one per
//! cluster, and programs VPC NAT gateway pods whose exec lands in Linux network namespaces, so
//! the tunnels carry real packets (VXLAN; GRE is covered by the crate's script and netns tests).
//!
//! Every test holds the `tunnel-manager` lock (a tunnel-manager reconciles every VpcNatTunnel of
//! its cluster, so two of them must not run against one cluster at once) and the `exip-syncer`
//! lock (a running exip-syncer would rewrite the GatewayExIps these tests write by hand).

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Pod, events::v1::Event};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use multivpc_api::{GatewayExIp, VpcNatTunnel, conditions};
use multivpc_e2e::{
    ExclusiveGuard, Harness,
    controllers::{self, ControllerProcess},
    fixtures::{self, KUBE_SYSTEM, KubeOvnVersion},
    prelude::*,
};
use serde_json::json;

const FLAVOUR: &str = "ipt=iptables; if iptables-legacy -t nat -S INPUT 1 >/dev/null 2>&1; then ipt=iptables-legacy; fi";

async fn start(h: &Harness, cluster: &str, extra: &[&str]) -> ControllerProcess {
    let mut args = vec![format!("--cluster-id={cluster}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    controllers::spawn(
        h.run_dir(),
        "tunnel-manager",
        &h.kubeconfig(cluster),
        &args,
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

/// The `exip-syncer` lock first (exip-syncer tests take it before `tunnel-manager`): a running
/// exip-syncer rewrites the GatewayExIps these tests write by hand.
async fn locks(h: &Harness) -> (ExclusiveGuard, ExclusiveGuard) {
    let syncer = h.exclusive("exip-syncer").await.unwrap();
    let manager = h.exclusive("tunnel-manager").await.unwrap();
    (syncer, manager)
}

async fn prepare(h: &Harness, cluster: &str) {
    h.install_foreign_crds(cluster).await.unwrap();
    h.install_project_crds(cluster).await.unwrap();
}

/// Gateway `gateway` of cluster `cluster_id` as exip-syncer imports it from the broker (its
/// labels are what tunnel-manager trusts; see multivpc_api's GatewayExIp::is_copy_of).
/// A remote gateway's GatewayExIp as exip-syncer imports it (its field manager, its labels).
async fn apply_exip(c: &Client, gateway: &str, cluster_id: &str, ip: &str, cidr: &str) {
    apply_exip_with_tunnel(c, gateway, cluster_id, ip, cidr, None).await;
}

/// [`apply_exip`] whose `spec.tunnels` holds the far end's tunnel address `(cluster, gateway,
/// interfaceAddr)` toward that cluster's gateway, as exip-syncer publishes it (the probe's
/// target).
async fn apply_exip_with_tunnel(
    c: &Client,
    gateway: &str,
    cluster_id: &str,
    ip: &str,
    cidr: &str,
    tunnel: Option<(&str, &str, &str)>,
) {
    let mut spec = json!({"externalip": ip, "globalnetcidr": cidr});
    if let Some((cluster, gw, addr)) = tunnel {
        spec["tunnels"] = json!([{"clusterId": cluster, "gatewayName": gw, "interfaceAddr": addr}]);
    }
    multivpc_e2e::apply_json_as(
        c,
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
            "metadata": {
                "name": format!("{gateway}-{cluster_id}"), "namespace": KUBE_SYSTEM,
                "labels": {
                    multivpc_api::keys::LABEL_CLUSTER: cluster_id,
                    multivpc_api::keys::LABEL_GATEWAY: gateway,
                    multivpc_api::keys::SUBMARINER_CLUSTER_ID: cluster_id,
                },
            },
            "spec": spec,
        }),
        multivpc_api::keys::EXIP_SYNCER_MANAGER,
    )
    .await
    .unwrap();
}

#[allow(clippy::too_many_arguments)]
/// A VXLAN tunnel, or with `vni == 0` a GRE tunnel (spec without `type`, as in the seed), in
/// `ns`, which the VPC of `local_gw` is first made to admit (as its user would).
async fn apply_tunnel(
    c: &Client,
    ns: &str,
    name: &str,
    remote_cluster: &str,
    remote_gw: &str,
    local_gw: &str,
    addr: &str,
    vni: u32,
    finalizers: &[&str],
) {
    let mut spec = json!({
        "clusterId": remote_cluster, "gatewayName": remote_gw, "interfaceAddr": addr,
        "natGwDp": local_gw, "type": "vxlan", "vni": vni,
    });
    if vni == 0 {
        // GRE: the original operator's default type, no VXLAN fields.
        spec = json!({
            "clusterId": remote_cluster, "gatewayName": remote_gw, "interfaceAddr": addr,
            "natGwDp": local_gw,
        });
    }
    fixtures::admit_namespace_to_gateway(c, local_gw, ns)
        .await
        .unwrap();
    apply_json(
        c,
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": name, "namespace": ns, "finalizers": finalizers},
            "spec": spec,
        }),
    )
    .await
    .unwrap();
}

fn ready_reason(t: &VpcNatTunnel) -> Option<(String, String)> {
    condition_of(t, conditions::READY)
}

fn healthy_reason(t: &VpcNatTunnel) -> Option<(String, String)> {
    condition_of(t, conditions::HEALTHY)
}

fn condition_of(t: &VpcNatTunnel, type_: &str) -> Option<(String, String)> {
    let s = t.status.as_ref()?;
    if s.observed_generation != t.metadata.generation {
        return None;
    }
    conditions::find(&s.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

async fn wait_healthy(api: &Api<VpcNatTunnel>, name: &str, status: &str, reason: &str) {
    let found = wait_for_object(api, name, Duration::from_secs(120), |t| {
        healthy_reason(t).is_some_and(|(s, r)| s == status && r == reason)
    })
    .await;
    if let Err(e) = found {
        let now = api.get(name).await.ok().and_then(|t| t.status);
        panic!("{name} not Healthy={status} {reason}: {e}; status {now:?}");
    }
}

async fn wait_reason(api: &Api<VpcNatTunnel>, name: &str, reason: &str) -> VpcNatTunnel {
    wait_for_object(api, name, Duration::from_secs(60), |t| {
        ready_reason(t).is_some_and(|(_, r)| r == reason)
    })
    .await
    .unwrap()
}

async fn wait_programmed(
    api: &Api<VpcNatTunnel>,
    name: &str,
    check: impl Fn(&VpcNatTunnel) -> bool,
) -> VpcNatTunnel {
    wait_for_object(api, name, Duration::from_secs(60), |t| {
        ready_reason(t).is_some_and(|(s, r)| s == "True" && r == "Programmed") && check(t)
    })
    .await
    .unwrap()
}

/// `ip -d link`, `ip route` and the nat table of a gateway netns, read from the host.
async fn state(node: &GatewayNode) -> String {
    node.netns_exec(&[
        "sh",
        "-c",
        &format!("ip -d link show; ip route; {FLAVOUR}; $ipt -t nat -S; $ipt -t mangle -S FORWARD"),
    ])
    .await
    .unwrap()
    .check()
    .unwrap()
    .stdout
}

/// Our SNAT rules in a [`state`]: one per tunnel programmed there.
fn snat_rules(state: &str) -> usize {
    state
        .lines()
        .filter(|l| l.contains("multivpc-tunnel:") && l.contains(" -j SNAT "))
        .count()
}

/// Reconciles that ended without error (success or requeue).
async fn reconciles(ctl: &ControllerProcess) -> f64 {
    metric(ctl, "controller_runtime_reconcile_total{controller=\"vpcnattunnel\",result=\"success\"}").await
        + metric(ctl, "controller_runtime_reconcile_total{controller=\"vpcnattunnel\",result=\"requeue_after\"}").await
}

async fn metric(ctl: &ControllerProcess, series: &str) -> f64 {
    ctl.metric(series).await.unwrap().unwrap_or(0.0)
}

async fn wait_metric_at_least(ctl: &ControllerProcess, series: &str, min: f64) {
    wait_for(series, Duration::from_secs(60), || async {
        let v = metric(ctl, series).await;
        Ok(if v >= min {
            Check::Done(())
        } else {
            Check::Pending(format!("{series} = {v}"))
        })
    })
    .await
    .unwrap();
}

async fn wait_state(node: &GatewayNode, what: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_for(what, Duration::from_secs(60), || async {
        let s = state(node).await;
        Ok(if ok(&s) {
            Check::Done(s)
        } else {
            Check::Pending(s)
        })
    })
    .await
    .unwrap()
}

/// Removes what a cluster1/cluster2 gateway pair test created: both gateways, the tunnels'
/// namespaces and the hand-written GatewayExIps `<gw>-<other cluster>`.
async fn teardown_pair(
    h: &Harness,
    (g1, g2): (&NatGateway, &NatGateway),
    (ns1, ns2): (&str, &str),
    gw: &str,
) {
    let (a, b) = tokio::join!(h.delete_nat_gateway(g1), h.delete_nat_gateway(g2));
    a.unwrap();
    b.unwrap();
    let _ = h.delete_namespace("cluster1", ns1).await;
    let _ = h.delete_namespace("cluster2", ns2).await;
    for (c, id) in [("cluster1", "cluster2"), ("cluster2", "cluster1")] {
        let exips: Api<GatewayExIp> = Api::namespaced(h.client(c), KUBE_SYSTEM);
        let _ = exips
            .delete(&format!("{gw}-{id}"), &DeleteParams::default())
            .await;
    }
}

/// One cluster1 NAT gateway (VPC `<prefix>-vpc`) with Submariner installed, and a fresh
/// namespace for its tunnels: the setup of the single-gateway tests.
struct OneGateway {
    c: Client,
    gw: String,
    g: NatGateway,
    ns: String,
    t: Api<VpcNatTunnel>,
}

impl OneGateway {
    async fn up(h: &Harness, prefix: &str) -> Self {
        let c = h.client("cluster1");
        prepare(h, "cluster1").await;
        {
            let _g = h.exclusive("submariner").await.unwrap();
            h.install_default_submariner("cluster1", None)
                .await
                .unwrap();
        }
        let gw = Harness::unique_name(prefix);
        let g = h
            .create_nat_gateway(
                "cluster1",
                NatGatewaySpec::new(&gw, &format!("{prefix}-vpc")),
            )
            .await
            .unwrap();
        g.wait_available(h, Duration::from_secs(90)).await.unwrap();
        let ns = h.unique_namespace("cluster1", prefix).await.unwrap();
        let t = Api::namespaced(c.clone(), &ns);
        Self { c, gw, g, ns, t }
    }

    /// Deletes the gateway, the namespace and the hand-written GatewayExIps `<remote>-cluster9`.
    async fn down(self, h: &Harness, remotes: impl IntoIterator<Item = String>) {
        h.delete_nat_gateway(&self.g).await.unwrap();
        let _ = h.delete_namespace("cluster1", &self.ns).await;
        let exips: Api<GatewayExIp> = Api::namespaced(self.c.clone(), KUBE_SYSTEM);
        for remote in remotes {
            let _ = exips
                .delete(&format!("{remote}-cluster9"), &DeleteParams::default())
                .await;
        }
    }
}

#[tokio::test]
async fn vxlan_pair_carries_traffic_snats_it_and_heals() {
    let h = harness_or_skip!(["cluster1", "cluster2"]);
    let _locks = locks(&h).await;
    let (c1, c2) = (h.client("cluster1"), h.client("cluster2"));
    tokio::join!(prepare(&h, "cluster1"), prepare(&h, "cluster2"));
    let ((gn1, egress1), (gn2, _)) = {
        // Submariner's singletons are shared with other tests.
        let _g = h.exclusive("submariner").await.unwrap();
        tokio::try_join!(
            h.install_default_submariner("cluster1", None),
            h.install_default_submariner("cluster2", None),
        )
        .unwrap()
    };
    let gw = Harness::unique_name("tm");
    let (g1, g2) = tokio::try_join!(
        h.create_nat_gateway("cluster1", NatGatewaySpec::new(&gw, "tm-vpc")),
        h.create_nat_gateway("cluster2", NatGatewaySpec::new(&gw, "tm-vpc")),
    )
    .unwrap();
    tokio::try_join!(
        g1.wait_available(&h, Duration::from_secs(90)),
        g2.wait_available(&h, Duration::from_secs(90)),
    )
    .unwrap();
    // What exip-syncer would publish through the broker: each side's remote endpoint.
    apply_exip(&c1, &gw, "cluster2", &g2.node.external_ip, &gn2).await;
    apply_exip(&c2, &gw, "cluster1", &g1.node.external_ip, &gn1).await;

    let ns1 = h.unique_namespace("cluster1", "tm").await.unwrap();
    let ns2 = h.unique_namespace("cluster2", "tm").await.unwrap();
    let (t1, t2): (Api<VpcNatTunnel>, Api<VpcNatTunnel>) = (
        Api::namespaced(c1.clone(), &ns1),
        Api::namespaced(c2.clone(), &ns2),
    );
    let dev = format!("tmv{}", std::process::id() % 100_000);
    let started = std::time::Instant::now();
    let (mut ctl1, ctl2) = tokio::join!(
        start(&h, "cluster1", &["--verify-interval=2s"]),
        start(&h, "cluster2", &[]),
    );
    apply_tunnel(
        &c1,
        &ns1,
        &dev,
        "cluster2",
        &gw,
        &gw,
        "10.250.0.1/24",
        4321,
        &[],
    )
    .await;
    apply_tunnel(
        &c2,
        &ns2,
        &dev,
        "cluster1",
        &gw,
        &gw,
        "10.250.0.2/24",
        4321,
        &[],
    )
    .await;
    let s1 = wait_programmed(&t1, &dev, |_| true).await.status.unwrap();
    wait_programmed(&t2, &dev, |_| true).await;
    eprintln!(
        "both tunnels programmed {:?} after the controllers started",
        started.elapsed()
    );
    assert_eq!(s1.local_ip.as_deref(), Some(g1.node.external_ip.as_str()));
    assert_eq!(s1.remote_ip.as_deref(), Some(g2.node.external_ip.as_str()));
    assert_eq!(
        s1.ovn_gateway_ip.as_deref(),
        Some(g1.node.ovn_gateway.as_str())
    );
    assert_eq!(
        s1.egress_range,
        Some(format!("{}-{}", egress1[0], egress1[egress1.len() - 1]))
    );
    // The device's MTU is net1's less VXLAN's 50 bytes, as status reports it (and as the API
    // server stores it: the pod's net1 MTU is read through the exec path).
    let mtus = g1
        .sh(
            &h,
            &format!("cat /sys/class/net/net1/mtu /sys/class/net/{dev}/mtu"),
        )
        .await
        .unwrap()
        .stdout;
    let mtus: Vec<u32> = mtus
        .split_whitespace()
        .map(|m| m.parse().unwrap())
        .collect();
    assert_eq!(mtus[1], mtus[0] - 50, "device MTU");
    assert_eq!(s1.mtu, Some(mtus[1]), "status.mtu");

    // Steady state: a reconcile of a programmed tunnel (here woken by a label change) makes no
    // exec and writes nothing (default verification interval on cluster2).
    let converges = "multivpc_tunnel_exec_duration_seconds_count{script=\"converge\"}";
    let (rec0, conv0) = (reconciles(&ctl2).await, metric(&ctl2, converges).await);
    let poked = t2
        .patch(
            &dev,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"e2e-poke": "1"}}})),
        )
        .await
        .unwrap();
    wait_for(
        "a reconcile after the label change",
        Duration::from_secs(30),
        || async {
            let n = reconciles(&ctl2).await;
            Ok(if n > rec0 {
                Check::Done(())
            } else {
                Check::Pending(format!("{n} reconciles"))
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(
        metric(&ctl2, converges).await,
        conv0,
        "steady state made an exec"
    );
    assert_eq!(
        t2.get(&dev).await.unwrap().metadata.resource_version,
        poked.metadata.resource_version,
        "steady state wrote the tunnel"
    );

    // The tunnel carries a ping between the interface addresses.
    g1.sh(&h, "ping -c 2 -W 2 10.250.0.2").await.unwrap();

    // Globalnet traffic leaves through the tunnel SNATed to the egress range: the remote
    // gateway counts packets from that range arriving on the tunnel.
    {
        let _routes = h.exclusive("vpc-netns-routes").await.unwrap();
        let (v1, v2) = (
            h.vpc_network("cluster1").unwrap(),
            h.vpc_network("cluster2").unwrap(),
        );
        let src_range = format!("{}-{}", egress1[0], egress1[egress1.len() - 1]);
        netns_exec(
            &g2.node.netns,
            &[
                "iptables",
                "-I",
                "FORWARD",
                "-i",
                &dev,
                "-m",
                "iprange",
                "--src-range",
                &src_range,
                "-j",
                "ACCEPT",
            ],
        )
        .await
        .unwrap()
        .check()
        .unwrap();
        for (vpc, remote, g) in [(&v1, &v2, &g1), (&v2, &v1, &g2)] {
            netns_exec(
                &vpc.netns,
                &[
                    "ip",
                    "route",
                    "replace",
                    &remote.globalnet_cidr,
                    "via",
                    &g.node.lan_ip,
                ],
            )
            .await
            .unwrap()
            .check()
            .unwrap();
        }
        let ping = netns_exec(
            &v1.netns,
            &[
                "ping",
                "-c",
                "3",
                "-W",
                "2",
                "-I",
                &v1.workload_ip,
                &v2.workload_ip,
            ],
        )
        .await
        .unwrap();
        for (vpc, remote) in [(&v1, &v2), (&v2, &v1)] {
            let _ = netns_exec(&vpc.netns, &["ip", "route", "del", &remote.globalnet_cidr]).await;
        }
        ping.check().unwrap();
        let counted = netns_exec(
            &g2.node.netns,
            &["iptables", "-L", "FORWARD", "-v", "-n", "-x"],
        )
        .await
        .unwrap()
        .stdout;
        let pkts: u64 = counted
            .lines()
            .find(|l| l.contains(&src_range))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            pkts >= 3,
            "packets from {src_range} on {dev} in cluster2:\n{counted}"
        );
        let snat = netns_exec(
            &g1.node.netns,
            &[
                "sh",
                "-c",
                &format!("{FLAVOUR}; $ipt -t nat -L POSTROUTING -v -n -x"),
            ],
        )
        .await
        .unwrap()
        .stdout;
        let rule = snat
            .lines()
            .find(|l| l.contains(&format!("multivpc-tunnel:{ns1}/{dev}")))
            .unwrap_or_else(|| panic!("no tagged SNAT rule:\n{snat}"));
        assert!(rule.contains(&format!("to:{src_range}")), "{rule}");
        assert_ne!(
            rule.split_whitespace().next(),
            Some("0"),
            "SNAT rule never hit: {rule}"
        );
    }

    // Converging again (a restarted controller converges every tunnel once) changes nothing.
    let before = state(&g1.node).await;
    ctl1.stop().unwrap();
    let ctl1 = start(&h, "cluster1", &["--verify-interval=2s"]).await;
    wait_metric_at_least(
        &ctl1,
        "multivpc_tunnel_exec_duration_seconds_count{script=\"converge\"}",
        1.0,
    )
    .await;
    assert_eq!(
        state(&g1.node).await,
        before,
        "second converge changed the gateway"
    );
    assert_eq!(
        metric(&ctl1, "multivpc_tunnel_repairs_total{cause=\"drift\"}").await,
        0.0
    );

    // A route deleted by hand is found by the periodic verification and repaired.
    netns_exec(&g1.node.netns, &["ip", "route", "del", &gn2])
        .await
        .unwrap()
        .check()
        .unwrap();
    wait_metric_at_least(&ctl1, "multivpc_tunnel_repairs_total{cause=\"drift\"}", 1.0).await;
    assert_eq!(state(&g1.node).await, before);
    // So are the SNAT rule and a TCP MSS clamp deleted by hand, each by its match as
    // `iptables -S` prints it.
    let tag = format!("multivpc-tunnel:{ns1}/{dev}");
    netns_exec(
        &g1.node.netns,
        &[
            "sh",
            "-c",
            &format!(
                "{FLAVOUR}; for t in nat:POSTROUTING mangle:FORWARD; do \
                 r=$($ipt -t ${{t%%:*}} -S ${{t#*:}} | grep -F -- '{tag}' | head -n 1); \
                 [ -n \"$r\" ] || exit 1; eval \"$ipt -t ${{t%%:*}} -D ${{r#-A }}\"; done"
            ),
        ],
    )
    .await
    .unwrap()
    .check()
    .unwrap();
    assert_ne!(state(&g1.node).await, before);
    wait_state(&g1.node, "the SNAT rule and the clamp repaired", |s| {
        s == before
    })
    .await;
    wait_metric_at_least(&ctl1, "multivpc_tunnel_repairs_total{cause=\"drift\"}", 2.0).await;

    // interfaceAddr and vni change (both sides), and the remote endpoint moves: no leftovers.
    apply_tunnel(
        &c1,
        &ns1,
        &dev,
        "cluster2",
        &gw,
        &gw,
        "10.251.0.1/30",
        4322,
        &[],
    )
    .await;
    apply_tunnel(
        &c2,
        &ns2,
        &dev,
        "cluster1",
        &gw,
        &gw,
        "10.251.0.2/30",
        4322,
        &[],
    )
    .await;
    wait_programmed(&t1, &dev, |t| {
        t.status
            .as_ref()
            .and_then(|s| s.applied.as_ref())
            .is_some_and(|a| a.vni == Some(4322))
    })
    .await;
    wait_programmed(&t2, &dev, |t| {
        t.status
            .as_ref()
            .and_then(|s| s.applied.as_ref())
            .is_some_and(|a| a.vni == Some(4322))
    })
    .await;
    let after = state(&g1.node).await;
    assert!(after.contains("vxlan id 4322 "), "{after}");
    assert!(
        !after.contains("vxlan id 4321 ") && !after.contains("10.250.0."),
        "{after}"
    );
    g1.sh(&h, "ping -c 2 -W 2 10.251.0.2").await.unwrap();

    apply_exip(&c1, &gw, "cluster2", "172.50.9.9", "242.9.0.0/16").await;
    let moved = wait_state(&g1.node, "remote endpoint change", |s| {
        s.contains("remote 172.50.9.9 ") && s.contains("242.9.0.0/16 dev")
    })
    .await;
    assert!(!moved.contains(&g2.node.external_ip), "{moved}");
    assert!(!moved.contains(&gn2), "old remote CIDR left over:\n{moved}");
    assert_eq!(snat_rules(&moved), 1, "{moved}");
    apply_exip(&c1, &gw, "cluster2", &g2.node.external_ip, &gn2).await;
    wait_programmed(&t1, &dev, |t| {
        t.status.as_ref().and_then(|s| s.remote_ip.as_deref()) == Some(g2.node.external_ip.as_str())
    })
    .await;
    let restored = wait_state(&g1.node, "remote endpoint restored", |s| {
        s.contains(&format!("{gn2} dev"))
    })
    .await;
    assert!(
        !restored.contains("242.9.0.0/16") && !restored.contains("172.50.9.9"),
        "{restored}"
    );

    // A new gateway pod (new UID, empty netns) gets its tunnel back.
    let pods: Api<Pod> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    let old_uid = pods
        .get(&g1.pod_name())
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let new_pod = g1.restart(&h, Duration::from_secs(90)).await.unwrap();
    let new_uid = new_pod.metadata.uid.unwrap();
    assert_ne!(old_uid, new_uid);
    wait_programmed(&t1, &dev, |t| {
        t.status
            .as_ref()
            .and_then(|s| s.gateway_pod.as_ref())
            .is_some_and(|p| p.uid == new_uid)
    })
    .await;
    wait_metric_at_least(
        &ctl1,
        "multivpc_tunnel_repairs_total{cause=\"pod_replaced\"}",
        1.0,
    )
    .await;
    g1.sh(&h, "ping -c 2 -W 2 10.251.0.2").await.unwrap();

    // A failing converge: its exit status and stderr reach the condition and an event, and the
    // tunnel comes back once the input is fixed.
    let bad_gw = json!({"metadata": {"annotations": {"ovn.kubernetes.io/gateway": "10.99.99.1"}}});
    pods.patch(
        &g1.pod_name(),
        &PatchParams::default(),
        &Patch::Merge(&bad_gw),
    )
    .await
    .unwrap();
    let failed = wait_reason(&t1, &dev, "ConvergeFailed").await;
    let msg = conditions::find(&failed.status.unwrap().conditions, conditions::READY)
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains("exited 1") && msg.contains("10.99.99.1"),
        "{msg}"
    );
    let events: Api<Event> = Api::namespaced(c1.clone(), &ns1);
    wait_for("ConvergeFailed event", Duration::from_secs(30), || async {
        let list = events.list(&Default::default()).await?;
        Ok(
            match list
                .items
                .iter()
                .find(|e| e.reason.as_deref() == Some("ConvergeFailed"))
            {
                Some(e) => Check::Done(e.note.clone().unwrap_or_default()),
                None => Check::Pending(format!("{} events", list.items.len())),
            },
        )
    })
    .await
    .unwrap();
    let good_gw =
        json!({"metadata": {"annotations": {"ovn.kubernetes.io/gateway": g1.node.ovn_gateway}}});
    pods.patch(
        &g1.pod_name(),
        &PatchParams::default(),
        &Patch::Merge(&good_gw),
    )
    .await
    .unwrap();
    wait_programmed(&t1, &dev, |_| true).await;
    g1.sh(&h, "ping -c 1 -W 2 10.251.0.2").await.unwrap();

    // Delete: device, routes and rule go.
    t1.delete(&dev, &DeleteParams::default()).await.unwrap();
    wait_for_deletion(&t1, &dev, Duration::from_secs(60))
        .await
        .unwrap();
    let gone = state(&g1.node).await;
    assert!(!gone.contains(&dev), "{gone}");
    assert!(
        !gone.contains(&gn2) && !gone.contains(&gn1),
        "routes left:\n{gone}"
    );
    assert!(!gone.contains("multivpc-tunnel:"), "{gone}");

    // A gateway pod that no longer exists does not block deletion.
    g2.scale(&h, 0).await.unwrap();
    wait_for_deletion(&pods_of(&c2), &g2.pod_name(), Duration::from_secs(60))
        .await
        .unwrap();
    t2.delete(&dev, &DeleteParams::default()).await.unwrap();
    wait_for_deletion(&t2, &dev, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        metric(
            &ctl2,
            "controller_runtime_reconcile_errors_total{controller=\"vpcnattunnel\"}"
        )
        .await,
        0.0,
        "{}",
        ctl2.log_tail(20)
    );

    drop((ctl1, ctl2));
    teardown_pair(&h, (&g1, &g2), (&ns1, &ns2), &gw).await;
}

fn pods_of(c: &Client) -> Api<Pod> {
    Api::namespaced(c.clone(), KUBE_SYSTEM)
}

#[tokio::test]
async fn missing_inputs_conflicts_and_adoption() {
    let h = harness_or_skip!(["cluster1"]);
    let _locks = locks(&h).await;
    let c = h.client("cluster1");
    prepare(&h, "cluster1").await;
    {
        let _g = h.exclusive("submariner").await.unwrap();
        h.install_default_submariner("cluster1", None)
            .await
            .unwrap();
    }
    let ns = h.unique_namespace("cluster1", "tmr").await.unwrap();
    let ns_b = h.unique_namespace("cluster1", "tmr").await.unwrap();
    let (ta, tb): (Api<VpcNatTunnel>, Api<VpcNatTunnel>) = (
        Api::namespaced(c.clone(), &ns),
        Api::namespaced(c.clone(), &ns_b),
    );
    let ctl = start(&h, "cluster1", &[]).await;
    // A VpcNatGateway whose pod never comes (no StatefulSet).
    let local_gw = Harness::unique_name("tmr-absent");
    let remote_gw = Harness::unique_name("tmr-remote");
    apply_dynamic(
        &c,
        &fixtures::vpc_nat_gateway(&NatGatewaySpec::new(&local_gw, "tmr-vpc"), "10.9.0.254"),
    )
    .await
    .unwrap();

    // Hostile values never reach the controller: the API server refuses them at admission.
    for (name, addr) in [
        ("tm-x", "$(reboot)/24"),
        ("tm-x", "10.0.0.1/24;id"),
        ("a-very-long-name-x", "10.0.0.1/24"),
        // Reserved names: a Multus attachment, a kernel fallback device, the sysctl `all`.
        ("net2", "10.0.0.1/24"),
        ("gre0", "10.0.0.1/24"),
        ("all", "10.0.0.1/24"),
        // A prefix outside /16–/31: its connected route would swallow other traffic.
        ("tm-x", "128.0.0.1/1"),
        ("tm-x", "10.0.0.1/8"),
    ] {
        let obj: VpcNatTunnel = serde_json::from_value(json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterId": "cluster9", "gatewayName": "g", "interfaceAddr": addr, "natGwDp": "g"},
        }))
        .unwrap();
        let err = ta.create(&Default::default(), &obj).await.unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{name} {addr}: {err}"
        );
    }

    // An object of the original operator (its finalizer already set) is adopted.
    apply_tunnel(
        &c,
        &ns,
        "tm-a",
        "cluster9",
        &remote_gw,
        &local_gw,
        "10.252.0.1/24",
        7,
        &["tunnel.finalizer.ustc.io"],
    )
    .await;
    wait_reason(&ta, "tm-a", "RemoteGatewayNotFound").await;
    // One written by hand, exip-syncer's labels and all, is not used.
    apply_json(
        &c,
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
            "metadata": {
                "name": format!("{remote_gw}-cluster9"), "namespace": KUBE_SYSTEM,
                "labels": {
                    multivpc_api::keys::LABEL_CLUSTER: "cluster9",
                    multivpc_api::keys::LABEL_GATEWAY: &remote_gw,
                    multivpc_api::keys::SUBMARINER_CLUSTER_ID: "cluster9",
                },
            },
            "spec": {"externalip": "172.50.9.1", "globalnetcidr": "242.99.0.0/16"},
        }),
    )
    .await
    .unwrap();
    let t = wait_reason(&ta, "tm-a", "RemoteGatewayInvalid").await;
    let msg = conditions::find(&t.status.unwrap().conditions, conditions::READY)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("exip-syncer did not write it"), "{msg}");
    Api::<GatewayExIp>::namespaced(c.clone(), KUBE_SYSTEM)
        .delete(&format!("{remote_gw}-cluster9"), &DeleteParams::default())
        .await
        .unwrap();
    wait_reason(&ta, "tm-a", "RemoteGatewayNotFound").await;
    // The controller wakes when exip-syncer's copy appears (no polling).
    apply_exip(&c, &remote_gw, "cluster9", "172.50.9.1", "242.99.0.0/16").await;
    let t = wait_reason(&ta, "tm-a", "GatewayPodNotFound").await;
    assert_eq!(
        t.metadata.finalizers.unwrap_or_default(),
        ["tunnel.finalizer.ustc.io"],
        "one finalizer, the original name"
    );

    // Conflicts on one gateway: same interface name, or the same remote CIDR, later loses.
    apply_tunnel(
        &c,
        &ns_b,
        "tm-a",
        "cluster9",
        &remote_gw,
        &local_gw,
        "10.252.1.1/24",
        8,
        &[],
    )
    .await;
    wait_reason(&tb, "tm-a", "InterfaceNameConflict").await;
    apply_tunnel(
        &c,
        &ns,
        "tm-b",
        "cluster9",
        &remote_gw,
        &local_gw,
        "10.252.2.1/24",
        9,
        &[],
    )
    .await;
    let b = wait_reason(&ta, "tm-b", "RemoteCidrConflict").await;
    let msg = conditions::find(&b.status.unwrap().conditions, conditions::READY)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains(&format!("{ns}/tm-a")), "{msg}");
    assert!(
        metric(
            &ctl,
            "multivpc_tunnel_tunnels{state=\"InterfaceNameConflict\"}"
        )
        .await
            >= 1.0
    );

    // Deleting the earlier tunnel lets the later one through (to its next missing input);
    // no gateway pod ever held it, so nothing blocks the deletion.
    ta.delete("tm-a", &DeleteParams::default()).await.unwrap();
    wait_for_deletion(&ta, "tm-a", Duration::from_secs(30))
        .await
        .unwrap();
    // ns_b/tm-a and tm-b still route one remote CIDR: exactly one of them is refused (the later
    // by creation time; within one second, by namespace/name), the other waits for its pod.
    let reasons = wait_for(
        "one of two remote CIDR rivals refused",
        Duration::from_secs(60),
        || async {
            let (a, b) = (tb.get("tm-a").await?, ta.get("tm-b").await?);
            let mut seen = [ready_reason(&a), ready_reason(&b)]
                .map(|r| r.map(|(_, reason)| reason).unwrap_or_default());
            seen.sort();
            Ok(if seen == ["GatewayPodNotFound", "RemoteCidrConflict"] {
                Check::Done(seen)
            } else {
                Check::Pending(format!("{seen:?}"))
            })
        },
    )
    .await
    .unwrap();
    eprintln!("after the first tunnel left: {reasons:?}");
    for (api, name) in [(&tb, "tm-a"), (&ta, "tm-b")] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for_deletion(api, name, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let exips: Api<GatewayExIp> = Api::namespaced(c.clone(), KUBE_SYSTEM);
    let _ = exips
        .delete(&format!("{remote_gw}-cluster9"), &DeleteParams::default())
        .await;
    let _ = h.delete_namespace("cluster1", &ns).await;
    let _ = h.delete_namespace("cluster1", &ns_b).await;
    let gw = fixtures::vpc_nat_gateway(&NatGatewaySpec::new(&local_gw, "tmr-vpc"), "");
    let (gateways, _) = multivpc_e2e::apply::dynamic_api(&c, &gw, "default")
        .await
        .unwrap();
    let _ = gateways.delete(&local_gw, &DeleteParams::default()).await;
}

/// GRE, the seed's default type (spec without `type`), end to end: on the kernel VM's gateways
/// (Debian's kernel has ip_gre) when the VM is up, else on the host's kernel, which may lack
/// GRE; then the exec's failure must be the tunnel's condition.
#[tokio::test]
async fn gre_pair_carries_a_ping_on_the_kernel_vm() {
    let h = harness_or_skip!(["cluster1", "cluster2"]);
    let in_vm = h.kernel_vm().unwrap().is_some();
    let _locks = locks(&h).await;
    let (c1, c2) = (h.client("cluster1"), h.client("cluster2"));
    tokio::join!(prepare(&h, "cluster1"), prepare(&h, "cluster2"));
    let ((gn1, egress1), (gn2, _)) = {
        let _g = h.exclusive("submariner").await.unwrap();
        tokio::try_join!(
            h.install_default_submariner("cluster1", None),
            h.install_default_submariner("cluster2", None),
        )
        .unwrap()
    };
    let gw = Harness::unique_name("tg");
    let spec = |vpc: &str| {
        let spec = NatGatewaySpec::new(&gw, vpc);
        if in_vm { spec.in_kernel_vm() } else { spec }
    };
    let (g1, g2) = tokio::try_join!(
        h.create_nat_gateway("cluster1", spec("tg-vpc")),
        h.create_nat_gateway("cluster2", spec("tg-vpc")),
    )
    .unwrap();
    tokio::try_join!(
        g1.wait_available(&h, Duration::from_secs(180)),
        g2.wait_available(&h, Duration::from_secs(180)),
    )
    .unwrap();
    apply_exip(&c1, &gw, "cluster2", &g2.node.external_ip, &gn2).await;
    apply_exip(&c2, &gw, "cluster1", &g1.node.external_ip, &gn1).await;
    let ns1 = h.unique_namespace("cluster1", "tg").await.unwrap();
    let ns2 = h.unique_namespace("cluster2", "tg").await.unwrap();
    let (t1, t2): (Api<VpcNatTunnel>, Api<VpcNatTunnel>) = (
        Api::namespaced(c1.clone(), &ns1),
        Api::namespaced(c2.clone(), &ns2),
    );
    let (ctl1, ctl2) = tokio::join!(
        start(&h, "cluster1", &["--verify-interval=2s"]),
        start(&h, "cluster2", &[])
    );
    let dev = "ovn-gre0";
    apply_tunnel(
        &c1,
        &ns1,
        dev,
        "cluster2",
        &gw,
        &gw,
        "10.253.0.1/30",
        0,
        &[],
    )
    .await;
    apply_tunnel(
        &c2,
        &ns2,
        dev,
        "cluster1",
        &gw,
        &gw,
        "10.253.0.2/30",
        0,
        &[],
    )
    .await;

    let probe = g1
        .node
        .netns_exec(&["sh", "-c", "ip tunnel add greprobe mode gre remote 192.0.2.1 local 192.0.2.2 ttl 255 && ip link del greprobe"])
        .await
        .unwrap();
    assert!(
        probe.success() || !in_vm,
        "the kernel VM has no GRE: {probe}"
    );
    if probe.success() {
        for t in [&t1, &t2] {
            wait_programmed(t, dev, |_| true).await;
        }
        // What the seed's README shows inside the gateway: the device up with its address,
        // the local Globalnet CIDR via eth0 and the remote one on the tunnel, and the SNAT of
        // Globalnet traffic to the egress range.
        let egress = format!("{}-{}", egress1[0], egress1[egress1.len() - 1]);
        let programmed = |inside: &str| {
            inside.contains("gre remote")
                && inside.contains("ttl 255")
                && inside
                    .lines()
                    .any(|l| l.starts_with(&gn2) && l.contains(&format!("dev {dev}")))
                && inside.lines().any(|l| {
                    l.contains("-A POSTROUTING") && l.contains("-j SNAT") && l.contains(&egress)
                })
        };
        let inside = state(&g1.node).await;
        assert!(programmed(&inside), "{inside}");
        let addr = g1
            .node
            .netns_exec(&["ip", "-o", "addr", "show", "dev", dev])
            .await
            .unwrap()
            .check()
            .unwrap()
            .stdout;
        assert!(addr.contains("inet 10.253.0.1/30"), "{addr}");
        let routes = g1
            .node
            .netns_exec(&["ip", "route"])
            .await
            .unwrap()
            .check()
            .unwrap()
            .stdout;
        assert!(
            routes
                .lines()
                .any(|l| l.starts_with(&format!("{gn1} via ")) && l.contains("dev eth0")),
            "{routes}"
        );
        assert!(
            routes
                .lines()
                .any(|l| l.starts_with(&gn2) && l.contains(&format!("dev {dev}"))),
            "{routes}"
        );
        let ping = g1.sh(&h, "ping -c 3 -i 0.3 -W 2 10.253.0.2").await.unwrap();
        eprintln!(
            "GRE ping on the {} kernel:\n{}",
            if in_vm { "kernel VM's" } else { "host's" },
            ping.stdout
        );

        // Drift: the remote route deleted by hand comes back through the periodic verification.
        let before = state(&g1.node).await;
        g1.node
            .netns_exec(&["ip", "route", "del", &gn2])
            .await
            .unwrap()
            .check()
            .unwrap();
        wait_metric_at_least(&ctl1, "multivpc_tunnel_repairs_total{cause=\"drift\"}", 1.0).await;
        wait_state(&g1.node, "the deleted route repaired", |s| s == before).await;

        // Pod replacement: a new pod (new UID, fresh netns) gets the same tunnel again.
        g1.restart(&h, Duration::from_secs(120)).await.unwrap();
        // (Compared by content: the new devices have new interface indexes.)
        wait_state(&g1.node, "the tunnel rebuilt in the new pod", programmed).await;
        g1.sh(&h, "ping -c 2 -W 2 10.253.0.2").await.unwrap();
    } else {
        // No GRE on this kernel: the exec's failure reaches the condition, and the data path
        // part of this test cannot run here.
        let t = wait_reason(&t1, dev, "ConvergeFailed").await;
        let msg = conditions::find(&t.status.unwrap().conditions, conditions::READY)
            .unwrap()
            .message
            .clone();
        assert!(msg.contains("create device ovn-gre0"), "{msg}");
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n### SKIPPED GRE data path: this kernel has no GRE ({}) and no kernel VM is up (make e2e-vm-up); the controller reports it as {msg:?}\n",
            probe.stderr.trim()
        );
    }
    // A deletion waits for one cleanup exec; the bound leaves room for an exec that times out
    // (30 s) and its retry on a loaded machine.
    for (t, ctl) in [(&t1, &ctl1), (&t2, &ctl2)] {
        t.delete(dev, &DeleteParams::default()).await.unwrap();
        if let Err(e) = wait_for_deletion(t, dev, Duration::from_secs(120)).await {
            panic!("{e:#}\ncontroller log:\n{}", ctl.log_tail_info(30));
        }
    }
    let gone = state(&g1.node).await;
    assert!(
        !gone.contains(dev) && !gone.contains("multivpc-tunnel:"),
        "{gone}"
    );
    drop((ctl1, ctl2));
    teardown_pair(&h, (&g1, &g2), (&ns1, &ns2), &gw).await;
}

#[tokio::test]
async fn a_tunnel_refused_after_it_was_programmed_withdraws() {
    // Refused for a conflict with an earlier tunnel, or because its VPC stops admitting its
    // namespace (tenancy).
    let h = harness_or_skip!(["cluster1"]);
    let _locks = locks(&h).await;
    let env = OneGateway::up(&h, "tw").await;
    let (c, gw, ns, t) = (env.c.clone(), env.gw.clone(), env.ns.clone(), env.t.clone());
    let g = &env.g;
    let ctl = start(&h, "cluster1", &[]).await;
    let (early, late) = (
        Harness::unique_name("tw-early"),
        Harness::unique_name("tw-late"),
    );

    // `tw-a` is created first but waits for its remote endpoint; `tw-b`, later, is programmed.
    apply_tunnel(
        &c,
        &ns,
        "tw-a",
        "cluster9",
        &early,
        &gw,
        "10.254.0.1/30",
        11,
        &[],
    )
    .await;
    wait_reason(&t, "tw-a", "RemoteGatewayNotFound").await;
    apply_exip(&c, &late, "cluster9", "172.50.9.2", "242.98.0.0/16").await;
    apply_tunnel(
        &c,
        &ns,
        "tw-b",
        "cluster9",
        &late,
        &gw,
        "10.254.1.1/30",
        12,
        &[],
    )
    .await;
    wait_programmed(&t, "tw-b", |_| true).await;
    assert!(state(&g.node).await.contains("tw-b"));

    // The earlier tunnel's endpoint appears with an overlapping CIDR: it wins, and the later one
    // leaves the gateway instead of keeping a second route and SNAT rule for that CIDR.
    apply_exip(&c, &early, "cluster9", "172.50.9.1", "242.98.0.0/16").await;
    wait_programmed(&t, "tw-a", |_| true).await;
    let b = wait_reason(&t, "tw-b", "RemoteCidrConflict").await;
    assert_eq!(b.status.unwrap().gateway_pod, None);
    let after = wait_state(&g.node, "tw-b withdrawn", |s| !s.contains("tw-b")).await;
    assert_eq!(snat_rules(&after), 1, "{after}");
    assert!(
        after.contains(&format!("multivpc-tunnel:{ns}/tw-a")),
        "{after}"
    );

    // Tenancy: a namespace the VPC never admitted programs nothing, whatever it names.
    let outsider_ns = h.unique_namespace("cluster1", "tw-out").await.unwrap();
    let outsider: Api<VpcNatTunnel> = Api::namespaced(c.clone(), &outsider_ns);
    let third = Harness::unique_name("tw-third");
    apply_exip(&c, &third, "cluster9", "172.50.9.3", "242.97.0.0/16").await;
    apply_json(
        &c,
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": "tw-c", "namespace": outsider_ns},
            "spec": {"clusterId": "cluster9", "gatewayName": third,
                     "interfaceAddr": "10.254.2.1/30", "natGwDp": gw},
        }),
    )
    .await
    .unwrap();
    let refused = wait_reason(&outsider, "tw-c", "NamespaceNotAdmitted").await;
    let msg = conditions::find(&refused.status.unwrap().conditions, conditions::READY)
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains(&format!(
            "VPC tw-vpc does not admit namespace {outsider_ns}"
        )),
        "{msg}"
    );
    let events: Api<Event> = Api::namespaced(c.clone(), &outsider_ns);
    wait_for(
        "a NamespaceNotAdmitted event",
        Duration::from_secs(30),
        || async {
            let list = events.list(&Default::default()).await?;
            Ok(
                if list
                    .items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("NamespaceNotAdmitted"))
                {
                    Check::Done(())
                } else {
                    Check::Pending(format!("{} events", list.items.len()))
                },
            )
        },
    )
    .await
    .unwrap();
    assert!(!state(&g.node).await.contains("tw-c"));

    // The VPC stops admitting the programmed tunnel's namespace: it withdraws; admitted again,
    // it is programmed again.
    fixtures::revoke_namespace(&c, "tw-vpc", &ns).await.unwrap();
    let a = wait_reason(&t, "tw-a", "NamespaceNotAdmitted").await;
    assert_eq!(a.status.unwrap().gateway_pod, None);
    let after = wait_state(&g.node, "tw-a withdrawn", |s| !s.contains("tw-a")).await;
    assert!(!after.contains("multivpc-tunnel:"), "{after}");
    fixtures::admit_namespace(&c, "tw-vpc", &ns).await.unwrap();
    wait_programmed(&t, "tw-a", |_| true).await;
    assert!(state(&g.node).await.contains("tw-a"));

    outsider
        .delete("tw-c", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_deletion(&outsider, "tw-c", Duration::from_secs(60))
        .await
        .unwrap();
    for name in ["tw-b", "tw-a"] {
        t.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for_deletion(&t, name, Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert!(!state(&g.node).await.contains("multivpc-tunnel:"));
    drop(ctl);
    let _ = h.delete_namespace("cluster1", &outsider_ns).await;
    env.down(&h, [early, late, third]).await;
}

/// A VXLAN ping in each Kube-OVN generation, on its real CRDs and gateway shapes:
/// - v1.12: `nat-gateway.sh init` turns ARP off on net1 until an IptablesEIP exists, so the
///   gateways cannot reach each other over the underlay. tunnel-manager turns it on (as add_eip
///   does), so the tunnel is never Programmed over a dead path;
/// - v1.14: net1 on a NAD named by the external Subnet's provider, not `<subnet>.kube-system`;
/// - v1.16: the master CRDs.
#[tokio::test]
async fn each_kube_ovn_generation_carries_a_vxlan_ping() {
    let h = harness_or_skip!(["cluster1", "cluster2"]);
    let _locks = locks(&h).await;
    let _crds = h.exclusive("kube-ovn-crds").await.unwrap();
    let (c1, c2) = (h.client("cluster1"), h.client("cluster2"));
    tokio::join!(prepare(&h, "cluster1"), prepare(&h, "cluster2"));
    let ((gn1, _), (gn2, _)) = {
        let _g = h.exclusive("submariner").await.unwrap();
        tokio::try_join!(
            h.install_default_submariner("cluster1", None),
            h.install_default_submariner("cluster2", None),
        )
        .unwrap()
    };
    let (ctl1, ctl2) = tokio::join!(start(&h, "cluster1", &[]), start(&h, "cluster2", &[]));
    for (i, version) in [
        KubeOvnVersion::V1_12,
        KubeOvnVersion::V1_14,
        KubeOvnVersion::V1_16,
    ]
    .into_iter()
    .enumerate()
    {
        for c in ["cluster1", "cluster2"] {
            h.install_kube_ovn_crds(c, version).await.unwrap();
        }
        let gw = Harness::unique_name("gen");
        let spec = |vpc: &str| {
            let spec = NatGatewaySpec::new(&gw, vpc).version(version);
            if version == KubeOvnVersion::V1_14 {
                spec.external_subnet("ext-custom")
                    .attachment("infra-net", "macvlan-ext", false)
            } else {
                spec
            }
        };
        let (g1, g2) = tokio::try_join!(
            h.create_nat_gateway("cluster1", spec("gen-vpc")),
            h.create_nat_gateway("cluster2", spec("gen-vpc")),
        )
        .unwrap();
        tokio::try_join!(
            g1.wait_available(&h, Duration::from_secs(90)),
            g2.wait_available(&h, Duration::from_secs(90)),
        )
        .unwrap();
        if version == KubeOvnVersion::V1_12 {
            let underlay = format!("ping -c 1 -W 1 {}", g2.node.external_ip);
            assert!(
                g1.sh(&h, &underlay).await.is_err(),
                "{version}: with ARP off on net1 the underlay is dead"
            );
        }
        apply_exip(&c1, &gw, "cluster2", &g2.node.external_ip, &gn2).await;
        apply_exip(&c2, &gw, "cluster1", &g1.node.external_ip, &gn1).await;
        let ns1 = h.unique_namespace("cluster1", "gen").await.unwrap();
        let ns2 = h.unique_namespace("cluster2", "gen").await.unwrap();
        let (t1, t2): (Api<VpcNatTunnel>, Api<VpcNatTunnel>) = (
            Api::namespaced(c1.clone(), &ns1),
            Api::namespaced(c2.clone(), &ns2),
        );
        let dev = format!("gen{}x{i}", std::process::id() % 100_000);
        let (a1, a2) = (format!("10.249.{i}.1/24"), format!("10.249.{i}.2/24"));
        apply_tunnel(&c1, &ns1, &dev, "cluster2", &gw, &gw, &a1, 4399, &[]).await;
        apply_tunnel(&c2, &ns2, &dev, "cluster1", &gw, &gw, &a2, 4399, &[]).await;
        let s1 = wait_programmed(&t1, &dev, |_| true).await.status.unwrap();
        wait_programmed(&t2, &dev, |_| true).await;
        assert_eq!(s1.local_ip.as_deref(), Some(g1.node.external_ip.as_str()));
        g1.sh(&h, &format!("ping -c 2 -W 2 10.249.{i}.2"))
            .await
            .unwrap_or_else(|e| panic!("{version}: {e:#}"));
        for g in [&g1, &g2] {
            let link = g
                .sh(&h, "ip -o link show dev net1")
                .await
                .unwrap()
                .to_string();
            assert!(!link.contains("NOARP"), "{version}: {link}");
        }
        eprintln!("Kube-OVN {version}: tunnel Programmed, ping across it passed");

        for api in [&t1, &t2] {
            api.delete(&dev, &DeleteParams::default()).await.unwrap();
            wait_for_deletion(api, &dev, Duration::from_secs(30))
                .await
                .unwrap();
        }
        teardown_pair(&h, (&g1, &g2), (&ns1, &ns2), &gw).await;
    }
    drop((ctl1, ctl2));
    for c in ["cluster1", "cluster2"] {
        h.install_kube_ovn_crds(c, KubeOvnVersion::harness_default())
            .await
            .unwrap();
    }
}

/// /healthz of a controller process.
async fn healthz(ctl: &ControllerProcess) -> (u16, String) {
    controllers::http_get(ctl.probes, "/healthz")
        .await
        .unwrap_or((0, String::new()))
}

async fn wait_healthz(ctl: &ControllerProcess, code: u16, within: Duration) -> String {
    wait_for(&format!("/healthz {code}"), within, || async {
        let (got, body) = healthz(ctl).await;
        Ok(if got == code {
            Check::Done(body)
        } else {
            Check::Pending(format!("{got} {body}"))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", ctl.log_tail(30)))
}

/// The member API server stops for 20 s and starts again: every watch of tunnel-manager ends,
/// and the new server answers the old resource versions with 410 Gone. Afterwards a tunnel
/// created is programmed and a tunnel deleted is withdrawn, without a restart. With a short
/// `--stall-timeout`, /healthz fails while the watches keep failing and recovers with them.
/// Holds both controller locks, so no other test of this file runs meanwhile; test files run
/// one after another, so no other file's test sees cluster1 go away.
#[tokio::test]
async fn a_tunnel_manager_acts_again_after_its_api_server_restarts() {
    let h = harness_or_skip!(["cluster1"]);
    let _locks = locks(&h).await;
    let env = OneGateway::up(&h, "tr").await;
    let (c, gw, ns, t) = (env.c.clone(), env.gw.clone(), env.ns.clone(), env.t.clone());
    let g = &env.g;
    let (before, after) = (Harness::unique_name("tr-a"), Harness::unique_name("tr-b"));
    apply_exip(&c, &before, "cluster9", "172.50.8.1", "242.96.0.0/16").await;
    apply_exip(&c, &after, "cluster9", "172.50.8.2", "242.95.0.0/16").await;
    let ctl = start(
        &h,
        "cluster1",
        &["--stall-timeout=10s", "--exec-timeout=2500ms"],
    )
    .await;
    apply_tunnel(
        &c,
        &ns,
        "tr-a",
        "cluster9",
        &before,
        &gw,
        "10.254.4.1/30",
        21,
        &[],
    )
    .await;
    wait_programmed(&t, "tr-a", |_| true).await;
    assert_eq!(healthz(&ctl).await.0, 200);

    let down = h.stop_cluster("cluster1").unwrap();
    // Every watch keeps failing while the server is away: past the stall timeout, /healthz
    // says so (the kubelet would restart the container).
    let why = wait_healthz(&ctl, 503, Duration::from_secs(60)).await;
    assert!(why.contains("watch has failed for"), "{why}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    down.start().await.unwrap();
    let back = std::time::Instant::now();

    // A tunnel created and one deleted after the restart are both acted on.
    apply_tunnel(
        &c,
        &ns,
        "tr-b",
        "cluster9",
        &after,
        &gw,
        "10.254.5.1/30",
        22,
        &[],
    )
    .await;
    t.delete("tr-a", &DeleteParams::default()).await.unwrap();
    wait_for_object(&t, "tr-b", Duration::from_secs(120), |t| {
        ready_reason(t).is_some_and(|(s, r)| s == "True" && r == "Programmed")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", ctl.log_tail(40)));
    eprintln!(
        "API server back to a new tunnel Programmed: {:.1}s",
        back.elapsed().as_secs_f64()
    );
    wait_for_deletion(&t, "tr-a", Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ctl.log_tail(40)));
    let inside = wait_state(&g.node, "tr-a withdrawn", |s| !s.contains("tr-a")).await;
    assert_eq!(snat_rules(&inside), 1, "{inside}");
    assert!(
        inside.contains(&format!("multivpc-tunnel:{ns}/tr-b")),
        "{inside}"
    );
    // The watches work again, so /healthz recovers (at most STREAK_GAP after the last error
    // for a watch that resumed without an event).
    wait_healthz(&ctl, 200, Duration::from_secs(150)).await;
    // What etcd compaction does to a watch: its resource version answered 410 Gone ("too old
    // resource version", the new server's watch cache starts after it), then a relist.
    let log = ctl.log_tail(100_000);
    assert!(
        log.contains("too old resource version") || log.contains("410"),
        "no watch was answered 410 Gone:\n{}",
        ctl.log_tail(40)
    );

    t.delete("tr-b", &DeleteParams::default()).await.unwrap();
    wait_for_deletion(&t, "tr-b", Duration::from_secs(60))
        .await
        .unwrap();
    drop(ctl);
    env.down(&h, [before, after]).await;
}

/// tunnel-manager's connection to its API server freezes: open, but delivering nothing (no
/// reset, no error). A reconcile then waits on a request that does not return; past the stall
/// timeout /healthz fails and names it (the kubelet would restart the container). Thawed, the
/// held request completes, a tunnel created meanwhile is programmed, and /healthz recovers.
#[tokio::test]
async fn a_frozen_api_server_connection_fails_healthz_until_it_thaws() {
    let h = harness_or_skip!(["cluster1"]);
    let _locks = locks(&h).await;
    let env = OneGateway::up(&h, "tf").await;
    let (c, gw, ns, t) = (env.c.clone(), env.gw.clone(), env.ns.clone(), env.t.clone());
    let g = &env.g;
    let (first, second) = (Harness::unique_name("tf-a"), Harness::unique_name("tf-b"));
    apply_exip(&c, &first, "cluster9", "172.50.9.1", "242.94.0.0/16").await;
    apply_exip(&c, &second, "cluster9", "172.50.9.2", "242.93.0.0/16").await;
    let through_proxy = h
        .run_dir()
        .join("logs")
        .join(format!("{ns}-proxied-kubeconfig.yaml"));
    let proxy =
        multivpc_e2e::proxy::CuttableProxy::in_front_of(&h.kubeconfig("cluster1"), &through_proxy)
            .await
            .unwrap();
    let ctl = controllers::spawn(
        h.run_dir(),
        "tunnel-manager",
        &through_proxy,
        &[
            "--cluster-id=cluster1",
            "--stall-timeout=10s",
            "--exec-timeout=2500ms",
            "--verify-interval=3s",
        ],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    apply_tunnel(
        &c,
        &ns,
        "tf-a",
        "cluster9",
        &first,
        &gw,
        "10.254.6.1/30",
        23,
        &[],
    )
    .await;
    wait_programmed(&t, "tf-a", |_| true).await;
    assert_eq!(healthz(&ctl).await.0, 200);

    proxy.freeze();
    // The next verification's exec times out and its status write waits on the frozen path.
    let why = wait_healthz(&ctl, 503, Duration::from_secs(90)).await;
    assert!(
        why.contains("reconcile of") && why.contains("has run for"),
        "{why}"
    );
    eprintln!("/healthz with the connection frozen: {why}");
    apply_tunnel(
        &c,
        &ns,
        "tf-b",
        "cluster9",
        &second,
        &gw,
        "10.254.7.1/30",
        24,
        &[],
    )
    .await;

    proxy.restore();
    wait_programmed(&t, "tf-b", |_| true).await;
    wait_healthz(&ctl, 200, Duration::from_secs(60)).await;
    let inside = wait_state(&g.node, "both tunnels", |s| snat_rules(s) == 2).await;
    assert!(
        inside.contains(&format!("multivpc-tunnel:{ns}/tf-b")),
        "{inside}"
    );

    for name in ["tf-a", "tf-b"] {
        t.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for_deletion(&t, name, Duration::from_secs(60))
            .await
            .unwrap();
    }
    drop((ctl, proxy));
    let _ = std::fs::remove_file(&through_proxy);
    env.down(&h, [first, second]).await;
}

const LEADER: &str = "leader_election_master_status{name=\"tunnel-manager\"}";

/// Two replicas with leader election. The leader is cut off from the API server (its own
/// connections through a proxy the test cuts, the network partition of one replica): it stops
/// acting before its Lease expires, so the two never lead at once, and the standby takes over
/// and programs. Reconnected, the old leader stays a standby; the new leader SIGKILLed, it
/// takes over again.
#[tokio::test]
async fn a_cut_off_leader_stops_before_the_standby_takes_over() {
    let h = harness_or_skip!(["cluster1"]);
    let _locks = locks(&h).await;
    let env = OneGateway::up(&h, "tl").await;
    let (c, gw, ns, t) = (env.c.clone(), env.gw.clone(), env.ns.clone(), env.t.clone());
    let g = &env.g;
    let remotes: Vec<String> = (0..3)
        .map(|i| Harness::unique_name(&format!("tl{i}")))
        .collect();
    for (i, remote) in remotes.iter().enumerate() {
        let ip = format!("172.50.7.{}", i + 1);
        let cidr = format!("242.9{i}.0.0/16");
        apply_exip(&c, remote, "cluster9", &ip, &cidr).await;
    }
    let tunnel = |i: usize| {
        let (c, ns, gw, remote) = (c.clone(), ns.clone(), gw.clone(), remotes[i].clone());
        async move {
            let addr = format!("10.254.{}.1/30", 10 + i);
            let name = format!("tl-{i}");
            apply_tunnel(
                &c,
                &ns,
                &name,
                "cluster9",
                &remote,
                &gw,
                &addr,
                30 + i as u32,
                &[],
            )
            .await;
        }
    };

    let elect = format!("--leader-election-namespace={ns}");
    let args = ["--cluster-id=cluster1", "--leader-elect", elect.as_str()];
    // Not `*.kubeconfig` in the run dir: every such file there is taken for a harness cluster.
    let through_proxy = h
        .run_dir()
        .join("logs")
        .join(format!("{ns}-proxied-kubeconfig.yaml"));
    let proxy =
        multivpc_e2e::proxy::CuttableProxy::in_front_of(&h.kubeconfig("cluster1"), &through_proxy)
            .await
            .unwrap();
    let spawn = |kubeconfig: std::path::PathBuf| {
        let run_dir = h.run_dir().to_path_buf();
        async move {
            controllers::spawn(
                &run_dir,
                "tunnel-manager",
                &kubeconfig,
                &args,
                Duration::from_secs(60),
            )
            .await
            .unwrap()
        }
    };
    let a = spawn(through_proxy.clone()).await;
    a.wait_metric(LEADER, Duration::from_secs(60), |v| v == 1.0)
        .await
        .unwrap();
    let b = spawn(h.kubeconfig("cluster1")).await;
    tunnel(0).await;
    wait_programmed(&t, "tl-0", |_| true).await;
    assert_eq!(metric(&b, LEADER).await, 0.0, "the second replica waits");

    proxy.cut();
    wait_for("the standby to lead", Duration::from_secs(90), || async {
        let (la, lb) = (metric(&a, LEADER).await, metric(&b, LEADER).await);
        assert!(la == 0.0 || lb == 0.0, "both replicas lead at once");
        Ok(if lb == 1.0 {
            Check::Done(())
        } else {
            Check::Pending(format!("leader gauges: cut off {la}, standby {lb}"))
        })
    })
    .await
    .unwrap();
    assert!(
        a.log_tail(200)
            .contains("cannot see the leader Lease renewed before it expires"),
        "the cut-off leader stopped by its own deadline:\n{}",
        a.log_tail(20)
    );
    tunnel(1).await;
    wait_programmed(&t, "tl-1", |_| true).await;

    // Reconnected, the old leader sees the Lease held by the other and stays a standby.
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        (metric(&a, LEADER).await, metric(&b, LEADER).await),
        (0.0, 1.0)
    );

    // The leader killed without a chance to release its Lease: the standby takes over once it
    // expires, and programs.
    // SAFETY: signalling our own child by pid.
    unsafe {
        libc::kill(b.pid() as i32, libc::SIGKILL);
    }
    a.wait_metric(LEADER, Duration::from_secs(60), |v| v == 1.0)
        .await
        .unwrap();
    tunnel(2).await;
    wait_programmed(&t, "tl-2", |_| true).await;
    let inside = state(&g.node).await;
    assert_eq!(snat_rules(&inside), 3, "{inside}");

    for i in 0..3 {
        let name = format!("tl-{i}");
        t.delete(&name, &DeleteParams::default()).await.unwrap();
        wait_for_deletion(&t, &name, Duration::from_secs(60))
            .await
            .unwrap();
    }
    drop((a, b, proxy));
    let _ = std::fs::remove_file(&through_proxy);
    env.down(&h, remotes).await;
}

/// Forty tunnels of one gateway applied at once converge without one refused write: the
/// finalizer is added by server-side apply, which a reconcile reading a cache that has not yet
/// seen its own earlier add cannot get refused (kube's test-then-add JSON patch was, HTTP 422,
/// about once per tunnel).
#[tokio::test]
async fn tunnels_applied_at_once_converge_without_a_refused_write() {
    let h = harness_or_skip!(["cluster1"]);
    let _locks = locks(&h).await;
    let env = OneGateway::up(&h, "tn").await;
    let (c, gw, ns, t) = (env.c.clone(), env.gw.clone(), env.ns.clone(), env.t.clone());
    let remote = Harness::unique_name("tn-r");
    let ctl = start(&h, "cluster1", &[]).await;
    let names: Vec<String> = (0..40).map(|i| format!("tn-{i}")).collect();
    let before = h.apiserver_requests("cluster1").await.unwrap();
    // Each its own remote CIDR, so none conflicts with another; all written at once.
    fixtures::admit_namespace_to_gateway(&c, &gw, &ns)
        .await
        .unwrap();
    futures::future::join_all((0..names.len()).map(|i| {
        let c = c.clone();
        let remote = format!("{remote}{i}");
        async move {
            apply_exip(
                &c,
                &remote,
                "cluster9",
                &format!("172.50.6.{}", i + 1),
                &format!("242.{}.0.0/16", 100 + i),
            )
            .await
        }
    }))
    .await;
    futures::future::join_all(names.iter().enumerate().map(|(i, name)| {
        let (c, ns, gw, remote) = (c.clone(), ns.clone(), gw.clone(), format!("{remote}{i}"));
        async move {
            let addr = format!("10.254.{}.1/30", 100 + i);
            apply_tunnel(
                &c,
                &ns,
                name,
                "cluster9",
                &remote,
                &gw,
                &addr,
                40 + i as u32,
                &[],
            )
            .await
        }
    }))
    .await;
    for name in &names {
        wait_programmed(&t, name, |_| true).await;
    }
    let after = h.apiserver_requests("cluster1").await.unwrap();
    let refused: Vec<String> = after
        .iter()
        .filter(|((verb, res), v)| {
            res.starts_with("vpcnattunnels")
                && res.contains("(HTTP")
                && verb != "GET"
                && **v
                    > before
                        .get(&(verb.clone(), res.clone()))
                        .copied()
                        .unwrap_or(0.0)
        })
        .map(|((verb, res), v)| format!("{verb} {res}: {v}"))
        .collect();
    let tunnel_requests: Vec<String> = after
        .iter()
        .filter(|((_, res), _)| res.starts_with("vpcnattunnels"))
        .map(|((verb, res), v)| {
            let was = before
                .get(&(verb.clone(), res.clone()))
                .copied()
                .unwrap_or(0.0);
            format!("{verb} {res}: +{}", v - was)
        })
        .collect();
    eprintln!("requests on vpcnattunnels: {tunnel_requests:?}");
    assert!(refused.is_empty(), "refused writes: {refused:?}");
    // Tunnels of one gateway changed together share execs (group commit per pod): fewer
    // converge execs than tunnel sections they carried.
    let execs = metric(
        &ctl,
        "multivpc_tunnel_exec_duration_seconds_count{script=\"converge\"}",
    )
    .await;
    let sections = metric(
        &ctl,
        "multivpc_tunnel_exec_sections_total{script=\"converge\"}",
    )
    .await;
    eprintln!("{sections} converge sections in {execs} execs");
    assert!(
        sections >= names.len() as f64 && execs < sections,
        "{sections} converge sections in {execs} execs"
    );

    for name in &names {
        t.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in &names {
        wait_for_deletion(&t, name, Duration::from_secs(120))
            .await
            .unwrap();
    }
    drop(ctl);
    env.down(&h, (0..names.len()).map(|i| format!("{remote}{i}")))
        .await;
}

/// Tunnels `tk-<i>` (each with its own remote gateway, CIDR, address and VNI) on `env`'s gateway,
/// with their remote GatewayExIps `<remote><i>-cluster9`.
async fn apply_many(env: &OneGateway, remote: &str, n: usize) {
    fixtures::admit_namespace_to_gateway(&env.c, &env.gw, &env.ns)
        .await
        .unwrap();
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let (c, ns, gw, remote) = (
                env.c.clone(),
                env.ns.clone(),
                env.gw.clone(),
                format!("{remote}{i}"),
            );
            async move {
                apply_exip(
                    &c,
                    &remote,
                    "cluster9",
                    &format!("172.50.{}.{}", 6 + i / 250, 1 + i % 250),
                    &format!("242.{}.{}.0/24", 100 + i / 250, i % 250),
                )
                .await;
                let addr = format!("10.254.{}.{}/30", 100 + i / 64, (i % 64) * 4 + 1);
                apply_tunnel(
                    &c,
                    &ns,
                    &format!("tk-{i}"),
                    "cluster9",
                    &remote,
                    &gw,
                    &addr,
                    1000 + i as u32,
                    &[],
                )
                .await
            }
        })
        .await;
}

/// How many of `n` tunnels `tk-<i>` are Programmed into the pod with UID `pod_uid`.
async fn programmed_into(t: &Api<VpcNatTunnel>, pod_uid: &str) -> usize {
    t.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|t| {
            ready_reason(t).is_some_and(|(s, r)| s == "True" && r == "Programmed")
                && t.status
                    .as_ref()
                    .and_then(|s| s.gateway_pod.as_ref())
                    .is_some_and(|p| p.uid == pod_uid)
        })
        .count()
}

/// Fault test: tunnel-manager SIGKILLed while converging 500 tunnels of one gateway, started
/// again, and the gateway pod restarted (an empty netns, a new UID) while it converges again.
/// Afterwards every tunnel is Programmed into the new pod, which holds each device once and
/// exactly one SNAT rule per tunnel; deleting them all leaves nothing of ours in the pod.
#[tokio::test]
async fn a_sigkill_and_a_gateway_restart_mid_converge_lose_nothing_and_duplicate_nothing() {
    const N: usize = 500;
    let h = harness_or_skip!(["cluster1"]);
    let _locks = locks(&h).await;
    let env = OneGateway::up(&h, "tk").await;
    let remote = Harness::unique_name("tk-r");
    apply_many(&env, &remote, N).await;
    let sections = "multivpc_tunnel_exec_sections_total{script=\"converge\"}";

    // With leader election, as the chart runs it: the second process waits for the Lease the
    // killed one held to expire. Killed once its first converge exec has ended, so part of the
    // work is done.
    let elected = ["--leader-elect"];
    let old_uid = env
        .g
        .wait_available(&h, Duration::from_secs(30))
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let mut ctl = start(&h, "cluster1", &elected).await;
    wait_for(
        "a first tunnel Programmed",
        Duration::from_secs(120),
        || async {
            let n = programmed_into(&env.t, &old_uid).await;
            Ok(if n > 0 {
                Check::Done(())
            } else {
                Check::Pending(format!("{n} Programmed"))
            })
        },
    )
    .await
    .unwrap();
    ctl.kill().unwrap();
    let before_restart = programmed_into(&env.t, &old_uid).await;
    eprintln!("{before_restart} of {N} Programmed when tunnel-manager was killed");

    // Started again; the gateway pod restarts under it after its first converge exec.
    let ctl = start(&h, "cluster1", &elected).await;
    wait_for("the Lease taken over", Duration::from_secs(60), || async {
        let leader = metric(&ctl, LEADER).await;
        Ok(if leader >= 1.0 {
            Check::Done(())
        } else {
            Check::Pending(format!("leader={leader}"))
        })
    })
    .await
    .unwrap();
    wait_metric_at_least(&ctl, sections, 1.0).await;
    let pod = env.g.restart(&h, Duration::from_secs(90)).await.unwrap();
    let new_uid = pod.metadata.uid.unwrap();
    wait_for(
        "every tunnel Programmed into the restarted pod",
        Duration::from_secs(600),
        || async {
            let n = programmed_into(&env.t, &new_uid).await;
            Ok(if n == N {
                Check::Done(())
            } else {
                Check::Pending(format!("{n} of {N}; log: {}", ctl.log_tail(3)))
            })
        },
    )
    .await
    .unwrap();

    // Inside the pod: each device once, one route of ours through each, one tagged SNAT rule
    // per tunnel.
    let out = netns_exec(
        &env.g.node.netns,
        &[
            "sh",
            "-c",
            &format!(
                "ip -o link show | grep -c ' tk-[0-9]*[:@]'; ip route | grep ' dev tk-' | grep -c ' proto 178 '; \
                 {FLAVOUR}; $ipt -t nat -S POSTROUTING | grep -o 'multivpc-tunnel:[^ \"]*' | sort | uniq -d | wc -l; \
                 $ipt -t nat -S POSTROUTING | grep -c 'multivpc-tunnel:'"
            ),
        ],
    )
    .await
    .unwrap()
    .stdout;
    let counts: Vec<usize> = out.split_whitespace().map(|w| w.parse().unwrap()).collect();
    assert_eq!(
        counts,
        [N, N, 0, N],
        "devices, routes, duplicated tags, tagged rules:\n{out}"
    );

    for i in 0..N {
        env.t
            .delete(&format!("tk-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_for("every tunnel deleted", Duration::from_secs(600), || async {
        let left = env.t.list(&Default::default()).await.unwrap().items.len();
        Ok(if left == 0 {
            Check::Done(())
        } else {
            Check::Pending(format!("{left} left"))
        })
    })
    .await
    .unwrap();
    let left = state(&env.g.node).await;
    assert!(
        !left.contains(" tk-") && !left.contains("multivpc-tunnel:"),
        "left in the pod:\n{left}"
    );
    drop(ctl);
    env.down(&h, (0..N).map(|i| format!("{remote}{i}"))).await;
}

/// A cluster whose VpcNatTunnel CRD predates some status fields (Helm installs CRDs but never
/// upgrades them): the API server refuses an apply that sets them, so the controller leaves
/// them out, says so once, and the rest of the status (Ready) is still written.
#[tokio::test]
async fn a_crd_older_than_a_status_field_still_gets_the_rest_of_the_status() {
    let h = harness_or_skip!(["cluster1"]);
    let _locks = locks(&h).await;
    let env = OneGateway::up(&h, "ocrd").await;
    let (c, gw, ns, t) = (env.c.clone(), env.gw.clone(), env.ns.clone(), env.t.clone());
    // The CRD as it was before status.mtu and status.health.
    let text = std::fs::read_to_string(
        multivpc_e2e::repo_dir().join("crds/kubeovn.ustc.io_vpcnattunnels.yaml"),
    )
    .unwrap();
    let mut old: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let status = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        ["properties"]
        .as_object_mut()
        .unwrap();
    assert!(status.remove("mtu").is_some() && status.remove("health").is_some());
    apply_json(&c, old).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let remote = Harness::unique_name("ocrd-r");
    apply_exip(&c, &remote, "cluster9", "172.50.6.91", "242.91.0.0/16").await;
    let ctl = start(&h, "cluster1", &[]).await;
    apply_tunnel(
        &c,
        &ns,
        "ocrd0",
        "cluster9",
        &remote,
        &gw,
        "10.254.91.1/30",
        91,
        &[],
    )
    .await;
    let programmed = wait_programmed(&t, "ocrd0", |_| true).await;
    let status = programmed.status.unwrap();
    assert_eq!(status.mtu, None, "the old CRD has no status.mtu");
    assert!(status.applied.is_some());
    let log = ctl.log_tail(200);
    assert!(log.contains("predates status.mtu"), "{log}");

    t.delete("ocrd0", &DeleteParams::default()).await.unwrap();
    wait_for_deletion(&t, "ocrd0", Duration::from_secs(60))
        .await
        .unwrap();
    drop(ctl);
    env.down(&h, [remote]).await;
    h.install_project_crds("cluster1").await.unwrap();
}

/// A pre-shared key Secret with `psk` in `kube-system` of `c` (the same bytes on both clusters,
/// as an operator distributes Submariner's).
async fn apply_psk(c: &Client, name: &str, psk: &[u8]) {
    use base64::Engine as _;
    apply_json(
        c,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": KUBE_SYSTEM},
            "data": {"psk": base64::engine::general_purpose::STANDARD.encode(psk)},
        }),
    )
    .await
    .unwrap();
}

/// ESP packets and clear tunnel ones (IPv4 GRE, or UDP to VXLAN's 4789) that cross net1 of a
/// gateway while `during` (a shell command) runs in its netns, from a raw capture (AF_PACKET).
async fn capture_net1(node: &GatewayNode, during: &str) -> (u64, u64) {
    // The capture says when it listens (python starts slowly in the emulated VM).
    let script = format!(
        "r=$(mktemp -u); python3 -c '{CAPTURE}' 6 \"$r\" & \
         for i in $(seq 100); do [ -e \"$r\" ] && break; sleep 0.1; done; \
         {during} >/dev/null; wait; rm -f \"$r\""
    );
    let seen = node
        .netns_exec(&["sh", "-c", &script])
        .await
        .unwrap()
        .check()
        .unwrap()
        .stdout;
    let counts: Vec<u64> = seen
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (counts[0], counts[1])
}

const CAPTURE: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind(("net1", 0)); s.settimeout(0.2)
open(sys.argv[2], "w").close()
end = time.time() + float(sys.argv[1]); esp = clear = 0
while time.time() < end:
    try: f = s.recv(65535)
    except socket.timeout: continue
    if f[12:14] != b"\x08\x00": continue
    ihl = (f[14] & 15) * 4
    if f[23] == 50: esp += 1
    elif f[23] == 47: clear += 1
    elif f[23] == 17 and int.from_bytes(f[14 + ihl + 2:14 + ihl + 4], "big") == 4789: clear += 1
print(esp, clear)
"#;

/// The IPsec rekey interval of the encryption test.
const REKEY: Duration = Duration::from_secs(20);

/// Returns 2–4 s into an epoch (`⌊unix time / REKEY⌋`, as tunnel-manager counts them, on this
/// machine's clock as the controllers have it), after the rekey at its start.
async fn early_in_an_epoch() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = Duration::from_millis((now.as_millis() % REKEY.as_millis()) as u64);
    let target = Duration::from_secs(3);
    let wait = if into <= target {
        target - into
    } else {
        REKEY - into + target
    };
    tokio::time::sleep(wait).await;
}

/// The kernel's IPsec drop counters of a gateway's netns (`/proc/net/xfrm_stat`): a packet
/// without a matching SA or policy, or in clear where ESP is required, counts in one of them.
async fn xfrm_drops(node: &GatewayNode) -> std::collections::BTreeMap<String, u64> {
    node.netns_exec(&["cat", "/proc/net/xfrm_stat"])
        .await
        .unwrap()
        .check()
        .unwrap()
        .stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// `spi` values of the ESP SAs in a gateway's netns (keys are read past, never kept).
async fn spis(node: &GatewayNode) -> Vec<String> {
    let out = node
        .netns_exec(&["ip", "xfrm", "state", "list"])
        .await
        .unwrap()
        .check()
        .unwrap()
        .stdout;
    let mut spis: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("proto esp spi "))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect();
    spis.sort();
    spis
}

/// Two kernel-VM gateways `<gw>` (one per cluster) whose GatewayExIps name each other (with
/// the tunnel addresses, so the tunnels are probed), the pre-shared key Secret on both, a
/// tunnel-manager per cluster keyed from it (epochs of [`REKEY`]), and an encrypted tunnel
/// `esp0` each way: `10.252.9.1/30` in cluster1, `10.252.9.2/30` in cluster2. `carrier` holds
/// the spec's type fields (none: GRE).
struct EncryptedPair {
    c1: Client,
    c2: Client,
    g1: NatGateway,
    g2: NatGateway,
    ns1: String,
    t1: Api<VpcNatTunnel>,
    t2: Api<VpcNatTunnel>,
    ctl1: ControllerProcess,
    ctl2: ControllerProcess,
    secret: String,
    psk: Vec<u8>,
}

async fn encrypted_pair(h: &Harness, carrier: serde_json::Value) -> EncryptedPair {
    let (c1, c2) = (h.client("cluster1"), h.client("cluster2"));
    tokio::join!(prepare(h, "cluster1"), prepare(h, "cluster2"));
    let ((gn1, _), (gn2, _)) = {
        let _g = h.exclusive("submariner").await.unwrap();
        tokio::try_join!(
            h.install_default_submariner("cluster1", None),
            h.install_default_submariner("cluster2", None),
        )
        .unwrap()
    };
    let gw = Harness::unique_name("te");
    let (g1, g2) = tokio::try_join!(
        h.create_nat_gateway(
            "cluster1",
            NatGatewaySpec::new(&gw, "te-vpc").in_kernel_vm()
        ),
        h.create_nat_gateway(
            "cluster2",
            NatGatewaySpec::new(&gw, "te-vpc").in_kernel_vm()
        ),
    )
    .unwrap();
    tokio::try_join!(
        g1.wait_available(h, Duration::from_secs(180)),
        g2.wait_available(h, Duration::from_secs(180)),
    )
    .unwrap();
    // Each far end publishes its tunnel address toward this side, as its exip-syncer would:
    // the tunnels are probed.
    apply_exip_with_tunnel(
        &c1,
        &gw,
        "cluster2",
        &g2.node.external_ip,
        &gn2,
        Some(("cluster1", &gw, "10.252.9.2/30")),
    )
    .await;
    apply_exip_with_tunnel(
        &c2,
        &gw,
        "cluster1",
        &g1.node.external_ip,
        &gn1,
        Some(("cluster2", &gw, "10.252.9.1/30")),
    )
    .await;
    let secret = Harness::unique_name("psk");
    let psk: Vec<u8> = (0..48u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    apply_psk(&c1, &secret, &psk).await;
    apply_psk(&c2, &secret, &psk).await;
    let flags = [
        format!("--ipsec-psk-secret={KUBE_SYSTEM}/{secret}"),
        format!("--ipsec-rekey-interval={}s", REKEY.as_secs()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (ctl1, ctl2) = tokio::join!(start(h, "cluster1", &flags), start(h, "cluster2", &flags));
    let ns1 = h.unique_namespace("cluster1", "te").await.unwrap();
    let ns2 = h.unique_namespace("cluster2", "te").await.unwrap();
    let (t1, t2): (Api<VpcNatTunnel>, Api<VpcNatTunnel>) = (
        Api::namespaced(c1.clone(), &ns1),
        Api::namespaced(c2.clone(), &ns2),
    );
    let dev = "esp0";
    for (c, ns, remote, addr) in [
        (&c1, &ns1, "cluster2", "10.252.9.1/30"),
        (&c2, &ns2, "cluster1", "10.252.9.2/30"),
    ] {
        let mut spec = json!({"clusterId": remote, "gatewayName": gw, "interfaceAddr": addr,
                              "natGwDp": gw, "encryption": "ipsec"});
        spec.as_object_mut()
            .unwrap()
            .extend(carrier.as_object().unwrap().clone());
        fixtures::admit_namespace_to_gateway(c, &gw, ns)
            .await
            .unwrap();
        apply_json(
            c,
            json!({
                "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
                "metadata": {"name": dev, "namespace": ns},
                "spec": spec,
            }),
        )
        .await
        .unwrap();
    }
    EncryptedPair {
        c1,
        c2,
        g1,
        g2,
        ns1,
        t1,
        t2,
        ctl1,
        ctl2,
        secret,
        psk,
    }
}

/// `encryption: ipsec` end to end on the kernel VM's gateways (the host's kernel has no ESP):
/// a VXLAN pair keyed from a pre-shared key Secret carries a ping, a capture on net1 sees ESP
/// and no clear VXLAN, the SAs move to new SPIs at each epoch (20 s here) under a running ping
/// without one IPsec drop in either kernel, a missing Secret is `Ready=False` with the
/// ESP policies still in place (never clear traffic) until it is back, deleting the tunnels
/// removes every SA, and no byte of the key reaches the logs or events.
#[tokio::test]
async fn an_encrypted_vxlan_pair_carries_esp_only_and_rekeys_under_a_ping() {
    let h = harness_or_skip!(["cluster1", "cluster2"]);
    if h.kernel_vm().unwrap().is_none() {
        eprintln!("SKIP: ESP needs the kernel VM (make e2e-vm-up)");
        return;
    }
    let _locks = locks(&h).await;
    let EncryptedPair {
        c1,
        c2,
        g1,
        g2,
        ns1,
        t1,
        t2,
        ctl1,
        ctl2,
        secret,
        psk,
    } = encrypted_pair(&h, json!({"type": "vxlan", "vni": 4391})).await;
    let dev = "esp0";
    for t in [&t1, &t2] {
        let programmed = wait_programmed(t, dev, |_| true).await;
        let applied = programmed.status.unwrap().applied.unwrap();
        assert_eq!(applied.encryption, multivpc_api::Encryption::Ipsec);
    }
    g1.sh(&h, "ping -c 3 -i 0.3 -W 2 10.252.9.2").await.unwrap();
    for t in [&t1, &t2] {
        wait_healthy(t, dev, "True", "Answering").await;
    }

    // ESP on the wire, nothing in clear: a capture on net1 while 10 pings cross, and the SAs'
    // counters, all within one epoch.
    early_in_an_epoch().await;
    let (esp, clear) = capture_net1(&g1.node, "ping -c 10 -i 0.2 -W 1 10.252.9.2").await;
    assert!(
        esp >= 10,
        "ESP packets on net1 (10 pings and their answers): {esp}"
    );
    assert_eq!(clear, 0, "clear VXLAN packets on net1");
    let xfrm = g1
        .node
        .netns_exec(&["ip", "-s", "xfrm", "state"])
        .await
        .unwrap()
        .stdout;
    assert!(xfrm.contains("rfc4106(gcm(aes))") && xfrm.contains("mode transport"));
    let packets: u64 = xfrm
        .lines()
        .filter_map(|l| l.trim().split_once("(bytes), "))
        .filter_map(|(_, p)| p.strip_suffix("(packets)")?.trim().parse::<u64>().ok())
        .sum();
    assert!(packets >= 10, "ESP SA counters: {packets}");

    // Rekeying under a ping: 45 s cross two epoch boundaries (or three). Neither side's kernel
    // drops a packet for want of an SA or a policy meanwhile (the drop counters stay put; the
    // ping's own count also moves with the emulated VM's stalls, so it is only shown).
    early_in_an_epoch().await;
    let before = spis(&g1.node).await;
    let drops_before = tokio::join!(xfrm_drops(&g1.node), xfrm_drops(&g2.node));
    let ping = g1
        .sh(&h, "ping -c 225 -i 0.2 -W 1 10.252.9.2 | grep received")
        .await
        .unwrap()
        .stdout;
    let drops_after = tokio::join!(xfrm_drops(&g1.node), xfrm_drops(&g2.node));
    let after = spis(&g1.node).await;
    assert_ne!(before, after, "the SAs were replaced");
    assert_eq!(
        drops_before, drops_after,
        "IPsec drop counters of the two gateways across the rekeys"
    );
    eprintln!("ESP rekeyed under a ping, no IPsec drop: {}", ping.trim());

    // A missing key: Ready=False naming it. What is programmed stays (a failed read of the
    // Secret must not cut the traffic), and the policies keep every packet in ESP; the key
    // back, the tunnel is Programmed again.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    secrets
        .delete(&secret, &DeleteParams::default())
        .await
        .unwrap();
    let refused = wait_for_object(&t1, dev, Duration::from_secs(60), |t| {
        ready_reason(t).is_some_and(|(_, r)| r == "IPsecKeyUnavailable")
    })
    .await
    .unwrap();
    let msg = conditions::find(
        &refused.status.as_ref().unwrap().conditions,
        conditions::READY,
    )
    .unwrap()
    .message
    .clone();
    assert!(msg.contains("does not exist"), "{msg}");
    // Its SAs still carry the traffic, and its health says so.
    assert_eq!(
        healthy_reason(&refused),
        Some(("True".into(), "Answering".into()))
    );
    let policies = g1
        .node
        .netns_exec(&["ip", "xfrm", "policy", "list"])
        .await
        .unwrap()
        .stdout;
    assert!(
        policies.contains("dir out") && policies.contains("dir in"),
        "{policies}"
    );
    apply_psk(&c1, &secret, &psk).await;
    wait_programmed(&t1, dev, |_| true).await;
    g1.sh(&h, "ping -c 2 -W 2 10.252.9.2").await.unwrap();

    // Mismatched keys: cluster2 gets another one. Its SAs keep their SPIs with new keys, each
    // kernel counts what it cannot authenticate on the SA that refused it, and both tunnels
    // say why they are unhealthy; the same key again, both are healthy.
    let other: Vec<u8> = psk.iter().map(|b| b ^ 0x5a).collect();
    apply_psk(&c2, &secret, &other).await;
    for t in [&t1, &t2] {
        wait_healthy(t, dev, "False", "IPsecAuthenticationFailed").await;
    }
    let failed = g1
        .node
        .netns_exec(&["ip", "-s", "xfrm", "state"])
        .await
        .unwrap()
        .stdout;
    assert!(
        failed
            .lines()
            .filter(|l| l.trim().starts_with("replay-window") && l.contains(" failed "))
            .any(|l| l.split_whitespace().last() != Some("0")),
        "no SA of cluster1 counts a failed authentication"
    );
    let events: Api<Event> = Api::namespaced(c1.clone(), &ns1);
    let warned = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| {
            e.note
                .as_deref()
                .is_some_and(|n| n.contains("pre-shared keys differ"))
        });
    assert!(warned, "no event names the mismatched keys");
    apply_psk(&c2, &secret, &psk).await;
    for t in [&t1, &t2] {
        wait_healthy(t, dev, "True", "Answering").await;
    }

    // No key byte in the logs or the events.
    use base64::Engine as _;
    let hex: String = psk.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&psk);
    let events: Api<Event> = Api::namespaced(c1.clone(), &ns1);
    let event_text = format!(
        "{:?}",
        events.list(&Default::default()).await.unwrap().items
    );
    for (what, text) in [
        ("cluster1 log", std::fs::read_to_string(&ctl1.log).unwrap()),
        ("cluster2 log", std::fs::read_to_string(&ctl2.log).unwrap()),
        ("events", event_text),
    ] {
        for secret in [&hex[..16], &b64[..16], "aead", "rfc4106"] {
            assert!(!text.contains(secret), "{what} holds {secret}");
        }
    }
    for t in [&t1, &t2] {
        t.delete(dev, &DeleteParams::default()).await.unwrap();
        wait_for_deletion(t, dev, Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert!(
        spis(&g2.node).await.is_empty(),
        "cluster2's SAs removed with its tunnel"
    );
    drop((ctl1, ctl2));
    let _ = tokio::try_join!(h.delete_nat_gateway(&g1), h.delete_nat_gateway(&g2));
}

/// GRE under ESP on the kernel VM: the pair carries a ping, a capture on net1 sees ESP and no
/// clear GRE, the policies select GRE, and deleting the tunnels removes every SA and policy
/// on both sides.
#[tokio::test]
async fn an_encrypted_gre_pair_carries_esp_only() {
    let h = harness_or_skip!(["cluster1", "cluster2"]);
    if h.kernel_vm().unwrap().is_none() {
        eprintln!("SKIP: ESP needs the kernel VM (make e2e-vm-up)");
        return;
    }
    let _locks = locks(&h).await;
    let pair = encrypted_pair(&h, json!({})).await;
    let dev = "esp0";
    for t in [&pair.t1, &pair.t2] {
        let applied = wait_programmed(t, dev, |_| true)
            .await
            .status
            .unwrap()
            .applied
            .unwrap();
        assert_eq!(applied.tunnel_type, multivpc_api::TunnelType::Gre);
        assert_eq!(applied.encryption, multivpc_api::Encryption::Ipsec);
    }
    pair.g1
        .sh(&h, "ping -c 3 -i 0.3 -W 2 10.252.9.2")
        .await
        .unwrap();
    let (esp, clear) = capture_net1(&pair.g1.node, "ping -c 10 -i 0.2 -W 1 10.252.9.2").await;
    assert!(esp >= 10, "ESP packets on net1: {esp}");
    assert_eq!(clear, 0, "clear GRE packets on net1");
    for g in [&pair.g1, &pair.g2] {
        let policies = g
            .node
            .netns_exec(&["ip", "xfrm", "policy", "list"])
            .await
            .unwrap()
            .stdout;
        assert!(policies.contains("proto gre"), "{policies}");
    }
    for t in [&pair.t1, &pair.t2] {
        t.delete(dev, &DeleteParams::default()).await.unwrap();
        wait_for_deletion(t, dev, Duration::from_secs(60))
            .await
            .unwrap();
    }
    for g in [&pair.g1, &pair.g2] {
        assert!(
            spis(&g.node).await.is_empty(),
            "SAs left in {}",
            g.spec.name
        );
        let policies = g
            .node
            .netns_exec(&["ip", "xfrm", "policy", "list"])
            .await
            .unwrap()
            .stdout;
        assert!(policies.trim().is_empty(), "policies left: {policies}");
    }
    let EncryptedPair {
        g1, g2, ctl1, ctl2, ..
    } = pair;
    drop((ctl1, ctl2));
    let _ = tokio::try_join!(h.delete_nat_gateway(&g1), h.delete_nat_gateway(&g2));
}
