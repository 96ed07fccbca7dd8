//! The kubectl plugin `kubectl-multivpc` against real API servers: a VXLAN tunnel pair between
//! cluster1 and cluster2 programmed by both tunnel-managers (as in tunnel_manager.rs), then the
//! built binary run as a user runs it: `show -o json` lists the tunnel Ready and Healthy with a
//! round trip, `diagnose tunnel` passes every check (the far gateway's GatewayExIp read on the
//! broker through cluster1's Submariner credentials included), and once the remote route is
//! deleted by hand (tunnel-manager verifies only every 5 minutes by default, so it is not
//! repaired yet) `diagnose` fails naming that check; a broker object this cluster's copy no
//! longer matches fails the broker check.
//!
//! Holds the `exip-syncer` lock (a running exip-syncer would rewrite the GatewayExIps written
//! here by hand) and then the `tunnel-manager` lock (one tunnel-manager per cluster at a time).

use kube::{Api, Client, api::DeleteParams};
use multivpc_api::{
    GatewayExIp, VpcNatTunnel, conditions,
    keys::{
        EXIP_SYNCER_MANAGER, LABEL_ACTIVE_GATEWAY, LABEL_CLUSTER, LABEL_GATEWAY,
        SUBMARINER_CLUSTER_ID,
    },
};
use multivpc_e2e::{
    Harness,
    controllers::{self, ControllerProcess},
    fixtures::{BROKER_NS, KUBE_SYSTEM},
    plugin::{self, check_line},
    prelude::*,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

async fn start_tunnel_manager(h: &Harness, cluster: &str) -> ControllerProcess {
    // Default --verify-interval (5m): drift made by hand stays until the test is over.
    let cluster_id = format!("--cluster-id={cluster}");
    controllers::spawn(
        h.run_dir(),
        "tunnel-manager",
        &h.kubeconfig(cluster),
        &[cluster_id.as_str()],
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

/// A GatewayExIp as exip-syncer writes it (its field manager, its labels): `imported_from`
/// names the cluster a broker copy came from, `None` makes it this cluster's own object with
/// the gateway active; `tunnel` is the far end's tunnel address toward `(cluster, gateway)`.
async fn apply_exip(
    c: &Client,
    (gateway, cluster_id): (&str, &str),
    imported_from: Option<&str>,
    (ip, cidr): (&str, &str),
    tunnel: Option<(&str, &str, &str)>,
) {
    let mut labels = json!({LABEL_CLUSTER: cluster_id, LABEL_GATEWAY: gateway});
    match imported_from {
        Some(from) => labels[SUBMARINER_CLUSTER_ID] = json!(from),
        None => labels[LABEL_ACTIVE_GATEWAY] = json!(gateway),
    }
    let mut spec = json!({"externalip": ip, "globalnetcidr": cidr});
    if let Some((cluster, gw, addr)) = tunnel {
        spec["tunnels"] = json!([{"clusterId": cluster, "gatewayName": gw, "interfaceAddr": addr}]);
    }
    multivpc_e2e::apply_json_as(
        c,
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
            "metadata": {"name": format!("{gateway}-{cluster_id}"), "namespace": KUBE_SYSTEM, "labels": labels},
            "spec": spec,
        }),
        EXIP_SYNCER_MANAGER,
    )
    .await
    .unwrap();
}

/// A VXLAN tunnel in `ns`, which the VPC of `local_gw` is first made to admit.
async fn apply_tunnel(
    c: &Client,
    ns: &str,
    name: &str,
    (remote_cluster, remote_gw): (&str, &str),
    local_gw: &str,
    addr: &str,
) {
    fixtures::admit_namespace_to_gateway(c, local_gw, ns)
        .await
        .unwrap();
    apply_json(
        c,
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterId": remote_cluster, "gatewayName": remote_gw, "interfaceAddr": addr,
                     "natGwDp": local_gw, "type": "vxlan", "vni": 4322},
        }),
    )
    .await
    .unwrap();
}

fn condition(t: &VpcNatTunnel, type_: &str) -> Option<(String, String)> {
    let s = t.status.as_ref()?;
    if s.observed_generation != t.metadata.generation {
        return None;
    }
    conditions::find(&s.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn show_and_diagnose_a_vxlan_pair_then_name_a_deleted_route() {
    let h = harness_or_skip!(["cluster1", "cluster2", "broker"]);
    let _syncer = h.exclusive("exip-syncer").await.unwrap();
    let _manager = h.exclusive("tunnel-manager").await.unwrap();
    let (c1, c2) = (h.client("cluster1"), h.client("cluster2"));
    for cluster in ["cluster1", "cluster2", "broker"] {
        h.install_foreign_crds(cluster).await.unwrap();
        h.install_project_crds(cluster).await.unwrap();
    }
    let ((gn1, _), (gn2, _)) = {
        // Submariner's singletons are shared with other tests.
        let _g = h.exclusive("submariner").await.unwrap();
        tokio::try_join!(
            h.install_default_submariner("cluster1", Some("broker")),
            h.install_default_submariner("cluster2", None),
        )
        .unwrap()
    };
    let gw = Harness::unique_name("kmv");
    let vpc = format!("{gw}-vpc");
    let (g1, g2) = tokio::try_join!(
        h.create_nat_gateway("cluster1", NatGatewaySpec::new(&gw, &vpc)),
        h.create_nat_gateway("cluster2", NatGatewaySpec::new(&gw, &vpc)),
    )
    .unwrap();
    tokio::try_join!(g1.wait_available(&h, WAIT), g2.wait_available(&h, WAIT)).unwrap();

    let (addr1, addr2) = ("10.253.0.1/24", "10.253.0.2/24");
    // What exip-syncer would publish: cluster1's own object, and each side's copy of the far
    // end with the far end's tunnel address toward it (the health probe's target).
    apply_exip(
        &c1,
        (&gw, "cluster1"),
        None,
        (&g1.node.external_ip, &gn1),
        None,
    )
    .await;
    apply_exip(
        &c1,
        (&gw, "cluster2"),
        Some("cluster2"),
        (&g2.node.external_ip, &gn2),
        Some(("cluster1", &gw, addr2)),
    )
    .await;
    apply_exip(
        &c2,
        (&gw, "cluster1"),
        Some("cluster1"),
        (&g1.node.external_ip, &gn1),
        Some(("cluster2", &gw, addr1)),
    )
    .await;

    // And what cluster2's exip-syncer would export to the broker.
    let on_broker: Api<GatewayExIp> = Api::namespaced(h.client("broker"), BROKER_NS);
    multivpc_e2e::apply_json_as(
        &h.client("broker"),
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
            "metadata": {"name": format!("{gw}-cluster2"), "namespace": BROKER_NS,
                         "labels": {LABEL_CLUSTER: "cluster2", LABEL_GATEWAY: &gw,
                                    SUBMARINER_CLUSTER_ID: "cluster2"}},
            "spec": {"externalip": &g2.node.external_ip, "globalnetcidr": &gn2},
        }),
        EXIP_SYNCER_MANAGER,
    )
    .await
    .unwrap();

    let ns1 = h.unique_namespace("cluster1", "kmv").await.unwrap();
    let ns2 = h.unique_namespace("cluster2", "kmv").await.unwrap();
    let (t1, t2): (Api<VpcNatTunnel>, Api<VpcNatTunnel>) = (
        Api::namespaced(c1.clone(), &ns1),
        Api::namespaced(c2.clone(), &ns2),
    );
    let dev = format!("kmv{}", std::process::id() % 100_000);
    let (ctl1, ctl2) = tokio::join!(
        start_tunnel_manager(&h, "cluster1"),
        start_tunnel_manager(&h, "cluster2"),
    );
    apply_tunnel(&c1, &ns1, &dev, ("cluster2", &gw), &gw, addr1).await;
    apply_tunnel(&c2, &ns2, &dev, ("cluster1", &gw), &gw, addr2).await;
    let healthy = |t: &VpcNatTunnel| {
        condition(t, conditions::READY).is_some_and(|(s, _)| s == "True")
            && condition(t, conditions::HEALTHY).is_some_and(|(s, _)| s == "True")
            && t.status
                .as_ref()
                .and_then(|s| s.health.as_ref())
                .is_some_and(|h| h.rtt.is_some())
    };
    wait_for_object(&t1, &dev, WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ctl1.log_tail(30)));
    wait_for_object(&t2, &dev, WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ctl2.log_tail(30)));

    // show -o json: the gateway, the tunnel Ready and Healthy with a round trip, both
    // GatewayExIps with their origin.
    let shown = plugin::run(
        &h,
        "cluster1",
        &["show", "-o", "json", "--cluster-id", "cluster1"],
    )
    .await;
    assert_eq!(shown.code, Some(0), "{}{}", shown.stdout, shown.stderr);
    let view: serde_json::Value =
        serde_json::from_str(&shown.stdout).unwrap_or_else(|e| panic!("{e}: {}", shown.stdout));
    assert_eq!(view["clusterId"], "cluster1");
    let gateway = view["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == gw.as_str())
        .unwrap_or_else(|| panic!("no gateway {gw}: {view:#}"));
    assert_eq!(gateway["vpc"], vpc.as_str());
    assert_eq!(gateway["ready"], true);
    assert_eq!(gateway["externalIp"], g1.node.external_ip.as_str());
    assert_eq!(gateway["role"], "active", "{gateway:#}");
    let tunnel = view["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["namespace"] == ns1.as_str() && t["name"] == dev.as_str())
        .unwrap_or_else(|| panic!("no tunnel {ns1}/{dev}: {view:#}"));
    assert_eq!(tunnel["type"], "vxlan");
    assert_eq!(tunnel["localGateway"], gw.as_str());
    assert_eq!(tunnel["remoteCluster"], "cluster2");
    assert_eq!(tunnel["ready"]["status"], "True", "{tunnel:#}");
    assert_eq!(tunnel["healthy"]["status"], "True", "{tunnel:#}");
    assert!(
        tunnel["rttAverage"]
            .as_str()
            .is_some_and(|r| r.ends_with("ms")),
        "{tunnel:#}"
    );
    assert!(tunnel["lossPercent"].is_u64(), "{tunnel:#}");
    let origin = |name: String| {
        view["brokerSync"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name.as_str())
            .map(|e| (e["origin"].clone(), e["tunnelAddresses"].clone()))
    };
    assert_eq!(
        origin(format!("{gw}-cluster1")),
        Some((json!("own"), json!(0)))
    );
    assert_eq!(
        origin(format!("{gw}-cluster2")),
        Some((json!("imported"), json!(1)))
    );
    // The table prints the same.
    let table = plugin::run(&h, "cluster1", &["show", "-n", &ns1]).await;
    eprintln!("{}", table.stdout);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(table.stdout.contains(&dev), "{}", table.stdout);

    // diagnose tunnel: every check passes.
    let diagnosis = plugin::run(&h, "cluster1", &["diagnose", "tunnel", &dev, "-n", &ns1]).await;
    eprintln!("{}", diagnosis.stdout);
    assert_eq!(
        diagnosis.code,
        Some(0),
        "{}{}",
        diagnosis.stdout,
        diagnosis.stderr
    );
    let lines: Vec<&str> = diagnosis.stdout.lines().collect();
    assert_eq!(lines.len(), 12, "{}", diagnosis.stdout);
    assert!(
        lines.iter().all(|l| l.starts_with("PASS ")),
        "{}",
        diagnosis.stdout
    );
    assert!(
        check_line(&diagnosis.stdout, "ping").contains("answered 3/3"),
        "{}",
        diagnosis.stdout
    );
    assert!(
        check_line(&diagnosis.stdout, "broker-gatewayexip")
            .contains(&format!("{BROKER_NS}/{gw}-cluster2 on the broker")),
        "{}",
        diagnosis.stdout
    );
    // diagnose vpc checks the VPC's DNS forwarding (none here: a skip, not a failure) and
    // finds the tunnel through its gateway.
    let by_vpc = plugin::run(&h, "cluster1", &["diagnose", "vpc", &vpc]).await;
    assert_eq!(by_vpc.code, Some(0), "{}{}", by_vpc.stdout, by_vpc.stderr);
    assert!(
        by_vpc.stdout.starts_with(&format!("== DNS of VPC {vpc}\n")),
        "{}",
        by_vpc.stdout
    );
    assert!(
        by_vpc.stdout.contains("dns-forward") && by_vpc.stdout.contains("no VpcDnsForward"),
        "{}",
        by_vpc.stdout
    );
    assert!(
        by_vpc
            .stdout
            .contains(&format!("\n== tunnel {ns1}/{dev}\n")),
        "{}",
        by_vpc.stdout
    );

    // Break one link by hand: the route to the remote Globalnet CIDR.
    g1.node
        .netns_exec(&["ip", "route", "del", &gn2])
        .await
        .unwrap()
        .check()
        .unwrap();
    let broken = plugin::run(&h, "cluster1", &["diagnose", "tunnel", &dev, "-n", &ns1]).await;
    eprintln!("{}", broken.stdout);
    assert_eq!(broken.code, Some(2), "{}{}", broken.stdout, broken.stderr);
    let route = check_line(&broken.stdout, "remote-route");
    assert!(
        route.starts_with("FAIL") && route.contains(&format!("no route to {gn2}")),
        "{}",
        broken.stdout
    );
    let failed: Vec<&str> = broken
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "only the route is broken:\n{}",
        broken.stdout
    );
    assert!(
        broken.stdout.contains("fix: tunnel-manager repairs drift"),
        "{}",
        broken.stdout
    );

    // The far cluster's gateway moved (its object on the broker says so) and this cluster's
    // copy did not follow: the broker check names both addresses.
    multivpc_e2e::apply_json_as(
        &h.client("broker"),
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
            "metadata": {"name": format!("{gw}-cluster2"), "namespace": BROKER_NS},
            "spec": {"externalip": "172.50.9.9", "globalnetcidr": &gn2},
        }),
        EXIP_SYNCER_MANAGER,
    )
    .await
    .unwrap();
    let moved = plugin::run(&h, "cluster1", &["diagnose", "tunnel", &dev, "-n", &ns1]).await;
    let line = check_line(&moved.stdout, "broker-gatewayexip");
    assert!(
        line.starts_with("FAIL")
            && line.contains("172.50.9.9")
            && line.contains(&g2.node.external_ip),
        "{}",
        moved.stdout
    );
    let _ = on_broker
        .delete(&format!("{gw}-cluster2"), &DeleteParams::default())
        .await;

    // An error is one line and exit status 1.
    let missing = plugin::run(&h, "cluster1", &["--context", "no-such-context", "show"]).await;
    assert_eq!(missing.code, Some(1));
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);
    assert!(
        missing.stderr.starts_with("kubectl-multivpc: error: "),
        "{}",
        missing.stderr
    );

    // Teardown: the tunnels while their controllers still remove the finalizers.
    for api in [&t1, &t2] {
        api.delete(&dev, &DeleteParams::default()).await.unwrap();
        wait_for_deletion(api, &dev, Duration::from_secs(60))
            .await
            .unwrap();
    }
    drop((ctl1, ctl2));
    let (a, b) = tokio::join!(h.delete_nat_gateway(&g1), h.delete_nat_gateway(&g2));
    a.unwrap();
    b.unwrap();
    let _ = h.delete_namespace("cluster1", &ns1).await;
    let _ = h.delete_namespace("cluster2", &ns2).await;
    for (c, name) in [
        (&c1, format!("{gw}-cluster1")),
        (&c1, format!("{gw}-cluster2")),
        (&c2, format!("{gw}-cluster1")),
    ] {
        let exips: Api<GatewayExIp> = Api::namespaced(c.clone(), KUBE_SYSTEM);
        let _ = exips.delete(&name, &DeleteParams::default()).await;
    }
}
