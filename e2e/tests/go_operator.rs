//! Objects of the original Go operator (its CRDs, verbatim in `e2e/fixtures/upstream/go-operator/`)
//! left behind locally and on the broker: after the switch to this project's CRDs they no longer
//! decode. They are skipped and counted; every controller still becomes ready, restarts, and
//! syncs everything else. And docs/migration.md, run as written on such a fleet, keeps its
//! tunnel carrying a ping.
//!
//! Swapping a CRD changes what every watcher of that kind sees, so this test holds the
//! `exip-syncer` and `tunnel-manager` locks (every test that runs those controllers takes them).

use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams},
    discovery::ApiResource,
};
use multivpc_api::{GatewayExIp, keys::SUBMARINER_CLUSTER_ID};
use multivpc_e2e::{
    controllers,
    fixtures::{BROKER_NS, KUBE_SYSTEM},
    prelude::*,
};

const C1: &str = "cluster1";
const C2: &str = "cluster2";
const BROKER: &str = "broker";
const WAIT: Duration = Duration::from_secs(60);

fn go_crd(file: &str) -> std::path::PathBuf {
    multivpc_e2e::e2e_dir()
        .join("fixtures/upstream/go-operator")
        .join(file)
}

fn dynamic_api(
    h: &Harness,
    cluster: &str,
    ns: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "kubeovn.ustc.io".into(),
        version: "v1".into(),
        api_version: "kubeovn.ustc.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(h.client(cluster), ns, &ar)
}

async fn undecodable(p: &controllers::ControllerProcess, kind: &str) -> f64 {
    p.metric(&format!(
        "multivpc_watch_undecodable_objects_total{{kind=\"{kind}\"}}"
    ))
    .await
    .unwrap()
    .unwrap_or(0.0)
}

#[tokio::test]
async fn go_operator_objects_never_block_a_watch_and_everything_else_converges() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let _syncer = h.exclusive("exip-syncer").await.unwrap();
    let _manager = h.exclusive("tunnel-manager").await.unwrap();
    h.install_fleet(&[C1, C2], BROKER).await.unwrap();
    let go_ns = h.unique_namespace(C1, "goop").await.unwrap();
    // The Go operator's CRDs (seed era GatewayExIp, latest VpcNatTunnel) and one object of
    // each, as a cluster that ran it has them; on the broker, another Go cluster's export.
    for (c, ns) in [(C1, KUBE_SYSTEM), (BROKER, BROKER_NS)] {
        apply_file(
            &h.client(c),
            go_crd("194ccad-kubeovn.ustc.io_gatewayexips.yaml"),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        apply_json(
            &h.client(c),
            serde_json::json!({
                "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
                "metadata": {"name": "gw9.cluster9", "namespace": ns,
                             "labels": {SUBMARINER_CLUSTER_ID: "cluster9"}},
                "spec": {"externalIp": "172.50.9.9", "globalNetCIDR": "242.9.0.0/16"},
            }),
        )
        .await
        .unwrap();
    }
    apply_file(
        &h.client(C1),
        go_crd("master-kubeovn.ustc.io_vpcnattunnels.yaml"),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    apply_json(
        &h.client(C1),
        serde_json::json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": "gotun0", "namespace": go_ns},
            "spec": {"remoteCluster": "cluster9", "remoteVpc": "vpc9", "localVpc": "vpc1",
                     "interfaceAddr": "10.99.0.1/24", "type": "vxlan"},
        }),
    )
    .await
    .unwrap();
    // The switch: this project's CRDs replace the Go ones. The old objects stay, pruned to
    // shapes that no longer decode (GatewayExIp spec {}, VpcNatTunnel without clusterId, ...).
    for c in [C1, BROKER] {
        h.install_project_crds(c).await.unwrap();
    }
    let left = dynamic_api(&h, C1, KUBE_SYSTEM, "GatewayExIp", "gatewayexips")
        .get("gw9.cluster9")
        .await
        .unwrap();
    assert!(
        left.data["spec"].get("externalip").is_none(),
        "{:?}",
        left.data
    );

    let start = |c: &'static str, binary: &'static str| {
        let h = &h;
        async move {
            let id = format!("--cluster-id={c}");
            controllers::spawn(h.run_dir(), binary, &h.kubeconfig(c), &[&id], WAIT)
                .await
                .unwrap_or_else(|e| panic!("{binary} on {c} never became ready: {e:#}"))
        }
    };
    // Ready despite the undecodable objects (spawn waits for /readyz), twice: a restart must
    // not get stuck on them either.
    let mut first = start(C1, "exip-syncer").await;
    assert!(first.stop().unwrap());
    let syncer1 = start(C1, "exip-syncer").await;
    let syncer2 = start(C2, "exip-syncer").await;
    let manager1 = start(C1, "tunnel-manager").await;
    for (p, kind) in [
        (&syncer1, "GatewayExIp"),
        (&manager1, "GatewayExIp"),
        (&manager1, "VpcNatTunnel"),
    ] {
        wait_for("undecodable object counted", WAIT, || async {
            let v = undecodable(p, kind).await;
            Ok(if v >= 1.0 {
                Check::Done(())
            } else {
                Check::Pending(format!("{} counts {v} undecodable {kind}", p.binary))
            })
        })
        .await
        .unwrap();
    }
    // One log line names the object and the decoding error; the object's content is not logged.
    let log = std::fs::read_to_string(&syncer1.log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("gw9.cluster9")).collect();
    assert!(!lines.is_empty(), "{log}");
    assert!(
        lines.iter().all(|l| !l.contains("globalNetCIDR")),
        "{lines:?}"
    );

    // Everything else converges: a gateway of cluster2 reaches cluster1 through the broker.
    let gw = h
        .create_nat_gateway(
            C2,
            NatGatewaySpec::new(&Harness::unique_name("gop"), &Harness::unique_name("govpc")),
        )
        .await
        .unwrap();
    gw.wait_available(&h, Duration::from_secs(90))
        .await
        .unwrap();
    let name = format!("{}-{C2}", gw.spec.name);
    let exips: Api<GatewayExIp> = Api::namespaced(h.client(C1), KUBE_SYSTEM);
    wait_for_object(&exips, &name, WAIT, |o: &GatewayExIp| {
        o.spec.externalip == gw.node.external_ip
    })
    .await
    .unwrap();

    // Clean up (deleting works whatever the shape).
    h.delete_nat_gateway(&gw).await.unwrap();
    for (c, ns) in [(C1, KUBE_SYSTEM), (BROKER, BROKER_NS)] {
        let api = dynamic_api(&h, c, ns, "GatewayExIp", "gatewayexips");
        let _ = api.delete("gw9.cluster9", &DeleteParams::default()).await;
    }
    let tunnels = dynamic_api(&h, C1, &go_ns, "VpcNatTunnel", "vpcnattunnels");
    let _ = tunnels.delete("gotun0", &DeleteParams::default()).await;
    h.delete_namespace(C1, &go_ns).await.unwrap();
    let still: Vec<String> = exips
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|o| o.name_any())
        .filter(|n| n == "gw9.cluster9")
        .collect();
    assert!(still.is_empty());
    drop((syncer1, syncer2, manager1));
}

/// The `sh` blocks of docs/migration.md, in order (the test runs them as written).
fn migration_doc_commands() -> Vec<String> {
    let doc = std::fs::read_to_string(multivpc_e2e::repo_dir().join("docs/migration.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in doc.lines() {
        let trimmed = line.trim_start();
        match (&mut current, trimmed) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(lines), "```") => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), _) => lines.push(trimmed),
            (None, _) => {}
        }
    }
    blocks
}

/// A command block of docs/migration.md run on `cluster` as its admin, from the repository root,
/// with the harness's kubectl.
async fn run_doc_block(h: &Harness, cluster: &str, block: &str) -> String {
    let kubectl_dir = multivpc_e2e::tool_path("kubectl")
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let kc = format!("KUBECONFIG={}", h.kubeconfig(cluster).display());
    let path = format!(
        "PATH={kubectl_dir}:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -e\ncd {}\n{block}", multivpc_e2e::repo_dir().display());
    let out = host_exec(&["env", &kc, &path, "sh", "-c", &script])
        .await
        .unwrap();
    assert!(
        out.success(),
        "docs/migration.md on {cluster}:\n{block}\n{}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// docs/migration.md run as written on a fleet that ran the Go operator: its CRDs and objects
/// on both members and the broker, and a VXLAN tunnel it built (device, routes and an untagged
/// SNAT rule by its own commands, with its plain `iptables` being nf_tables here while the
/// gateway uses legacy) carrying a ping. After the switch, the tunnel keeps the VNI and port of
/// the `vid`/`vx-port` labels and carries the ping again, the Go SNAT rules are gone from both
/// flavours, and the old GatewayExIps are deleted by the doc's command.
#[tokio::test]
async fn docs_migration_switches_a_go_fleet_and_its_tunnel_still_carries_a_ping() {
    use multivpc_api::{VpcNatTunnel, conditions};
    use multivpc_e2e::chart::{
        assert_never_forbidden, helm_or_skip, install_without_pods, run_as_chart, uninstall,
    };

    let h = harness_or_skip!([C1, C2, BROKER]);
    let Some(_) = helm_or_skip() else { return };
    let blocks = migration_doc_commands();
    assert_eq!(
        blocks.len(),
        3,
        "docs/migration.md: expected the CRD, the tenancy and the clean-up blocks: {blocks:?}"
    );
    let _syncer = h.exclusive("exip-syncer").await.unwrap();
    let _manager = h.exclusive("tunnel-manager").await.unwrap();
    h.install_fleet(&[C1, C2], BROKER).await.unwrap();
    let mut globalnet = Vec::new();
    {
        let _g = h.exclusive("submariner").await.unwrap();
        for c in [C1, C2] {
            globalnet.push(h.install_default_submariner(c, Some(BROKER)).await.unwrap());
        }
    }
    let gw = Harness::unique_name("mig");
    let (g1, g2) = tokio::try_join!(
        h.create_nat_gateway(C1, NatGatewaySpec::new(&gw, &Harness::unique_name("migv"))),
        h.create_nat_gateway(C2, NatGatewaySpec::new(&gw, &Harness::unique_name("migv"))),
    )
    .unwrap();
    tokio::try_join!(
        g1.wait_available(&h, Duration::from_secs(90)),
        g2.wait_available(&h, Duration::from_secs(90)),
    )
    .unwrap();

    // ── The Go era: its CRDs, its GatewayExIps everywhere, its tunnels (seed shape, VNI and port
    // in labels, its finalizer and status).
    for c in [C1, C2, BROKER] {
        apply_file(
            &h.client(c),
            go_crd("194ccad-kubeovn.ustc.io_gatewayexips.yaml"),
        )
        .await
        .unwrap();
    }
    for c in [C1, C2] {
        apply_file(
            &h.client(c),
            go_crd("194ccad-kubeovn.ustc.io_vpcnattunnels.yaml"),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let members = [(C1, &g1, &globalnet[0]), (C2, &g2, &globalnet[1])];
    for (owner, g, (cidr, _)) in members {
        for (c, ns) in [(C1, KUBE_SYSTEM), (C2, KUBE_SYSTEM), (BROKER, BROKER_NS)] {
            apply_json(
                &h.client(c),
                serde_json::json!({
                    "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
                    "metadata": {"name": format!("{gw}.{owner}"), "namespace": ns,
                                 "labels": {SUBMARINER_CLUSTER_ID: owner}},
                    "spec": {"externalIp": g.node.external_ip, "globalNetCIDR": cidr},
                }),
            )
            .await
            .unwrap();
        }
    }
    let dev = format!("mg{}", std::process::id() % 100_000);
    let (vid, port) = (4000 + std::process::id() % 10_000, 4799);
    let t1 = h.unique_namespace(C1, "migt").await.unwrap();
    let t2 = h.unique_namespace(C2, "migt").await.unwrap();
    let sides = [
        (
            C1,
            &t1,
            &g1,
            &g2,
            C2,
            "10.252.0.1/24",
            &globalnet[0],
            &globalnet[1],
        ),
        (
            C2,
            &t2,
            &g2,
            &g1,
            C1,
            "10.252.0.2/24",
            &globalnet[1],
            &globalnet[0],
        ),
    ];
    for (c, ns, local, remote, remote_id, addr, (cidr, egress), (remote_cidr, _)) in &sides {
        let tunnel = apply_json(
            &h.client(c),
            serde_json::json!({
                "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
                "metadata": {"name": dev, "namespace": ns,
                             "labels": {"vid": vid.to_string(), "vx-port": port.to_string()},
                             "finalizers": ["tunnel.finalizer.ustc.io"]},
                "spec": {"clusterId": remote_id, "gatewayName": gw, "natGwDp": gw,
                         "interfaceAddr": addr, "type": "vxlan"},
            }),
        )
        .await
        .unwrap();
        multivpc_e2e::patch_status_dynamic(
            &h.client(c),
            &tunnel,
            serde_json::json!({
                "initialized": true, "type": "vxlan", "natGwDp": gw, "interfaceAddr": addr,
                "internalIp": local.node.external_ip, "remoteIp": remote.node.external_ip,
                "ovnGwIP": local.node.ovn_gateway, "globalnetCIDR": cidr,
                "remoteGlobalnetCIDR": remote_cidr, "globalEgressIP": egress,
            }),
        )
        .await
        .unwrap();
        // The Go operator's commands in the gateway (vxlan/operation.go, genGlobalnetRoute).
        local
            .sh(
                &h,
                &format!(
                    "ip link add {dev} type vxlan id {vid} dev net1 dstport {port} remote {r} local {l}; \
                     ip link set {dev} up; ip addr add {addr} dev {dev}; \
                     ip route add {cidr} via {ovn} dev eth0; ip route add {remote_cidr} dev {dev}; \
                     iptables-nft -t nat -A POSTROUTING -d {remote_cidr} -j SNAT --to-source {first}-{last}",
                    r = remote.node.external_ip,
                    l = local.node.external_ip,
                    ovn = local.node.ovn_gateway,
                    first = egress[0],
                    last = egress[egress.len() - 1],
                ),
            )
            .await
            .unwrap();
    }
    g1.sh(&h, "ping -c 2 -W 2 10.252.0.2").await.unwrap();

    // ── The switch, as docs/migration.md says. 1: there is no Go operator Deployment here.
    // 2: the CRDs, on every cluster.
    for c in [C1, C2, BROKER] {
        run_doc_block(&h, c, &blocks[0]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 3: each tunnel's namespace admitted to its gateway's VPC, the namespaces there kept.
    for c in [C1, C2] {
        let vpc = sides.iter().find(|s| s.0 == c).unwrap().2.spec.vpc.clone();
        fixtures::admit_namespace(&h.client(c), &vpc, "bystander")
            .await
            .unwrap();
        run_doc_block(&h, c, &blocks[1]).await;
        run_doc_block(&h, c, &blocks[1]).await; // idempotent
        let listed = Api::<multivpc_api::foreign::kubeovn::Vpc>::all(h.client(c))
            .get(&vpc)
            .await
            .unwrap()
            .spec
            .namespaces;
        let ns = sides.iter().find(|s| s.0 == c).unwrap().1;
        assert_eq!(listed, ["bystander".to_string(), ns.to_string()], "{c}");
    }
    // 4: the umbrella chart on each member (the broker chart is the harness's broker).
    let ((ns1, rel1), (ns2, rel2)) = tokio::join!(
        install_without_pods(&h, C1, "migc", &[]),
        install_without_pods(&h, C2, "migc", &[]),
    );
    let mut procs = Vec::new();
    for (c, ns, rel) in [(C1, &ns1, &rel1), (C2, &ns2, &rel2)] {
        for binary in ["exip-syncer", "tunnel-manager"] {
            procs.push(run_as_chart(&h, c, ns, rel, binary, &[]).await);
        }
    }
    // 5: no Go `master` tunnels in this fleet. 6: once the new objects are there, the old go.
    for (c, name) in [(C1, format!("{gw}-{C2}")), (C2, format!("{gw}-{C1}"))] {
        let api: Api<GatewayExIp> = Api::namespaced(h.client(c), KUBE_SYSTEM);
        if let Err(e) = wait_for_object(&api, &name, WAIT, |_: &GatewayExIp| true).await {
            let logs: Vec<String> = procs.iter().map(|p| p.log_tail(20)).collect();
            panic!("{c}: {name}: {e:#}\n{}", logs.join("\n----\n"));
        }
    }
    for c in [C1, C2, BROKER] {
        run_doc_block(&h, c, &blocks[2]).await;
        let ns = if c == BROKER { BROKER_NS } else { KUBE_SYSTEM };
        let left: Vec<String> = dynamic_api(&h, c, ns, "GatewayExIp", "gatewayexips")
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .map(|o| o.name_any())
            .filter(|n| n.starts_with(&format!("{gw}.")))
            .collect();
        assert!(left.is_empty(), "{c}: {left:?}");
    }

    // ── After: both tunnels Programmed with the labels' VNI and port, the ping passes again,
    // and each gateway has exactly our SNAT rule (the Go one is gone from nf_tables).
    for (c, ns, local, _, _, _, _, (remote_cidr, _)) in &sides {
        let api: Api<VpcNatTunnel> = Api::namespaced(h.client(c), ns);
        let programmed = |t: &VpcNatTunnel| {
            t.status.as_ref().is_some_and(|s| {
                conditions::find(&s.conditions, conditions::READY)
                    .is_some_and(|c| c.status == "True" && c.reason == "Programmed")
            })
        };
        if let Err(e) = wait_for_object(&api, &dev, WAIT, programmed).await {
            let logs: Vec<String> = procs.iter().map(|p| p.log_tail(20)).collect();
            panic!("{c}: tunnel {dev}: {e:#}\n{}", logs.join("\n----\n"));
        }
        let t = api.get(&dev).await.unwrap();
        assert_eq!(
            t.metadata.finalizers.unwrap_or_default(),
            ["tunnel.finalizer.ustc.io"]
        );
        let link = local
            .sh(&h, &format!("ip -d link show dev {dev}"))
            .await
            .unwrap()
            .stdout;
        assert!(link.contains(&format!("vxlan id {vid} ")), "{link}");
        assert!(link.contains(&format!("dstport {port} ")), "{link}");
        let nft = local
            .sh(&h, "iptables-nft -t nat -S POSTROUTING")
            .await
            .unwrap()
            .stdout;
        assert!(!nft.contains(remote_cidr.as_str()), "{c} nf_tables: {nft}");
        let legacy = local
            .sh(&h, "iptables-legacy -t nat -S POSTROUTING")
            .await
            .unwrap()
            .stdout;
        let ours: Vec<&str> = legacy
            .lines()
            .filter(|l| l.contains(remote_cidr.as_str()))
            .collect();
        assert_eq!(ours.len(), 1, "{c} legacy: {legacy}");
        assert!(ours[0].contains("multivpc-tunnel:"), "{ours:?}");
    }
    wait_for("ping across the adopted tunnel", WAIT, || async {
        let out = g1
            .exec(&h, &["ping", "-c", "1", "-W", "1", "10.252.0.2"])
            .await?;
        Ok(if out.success() {
            Check::Done(())
        } else {
            Check::Pending(out.stdout)
        })
    })
    .await
    .unwrap();

    // Deleting the tunnels leaves nothing behind in either flavour.
    for (c, ns, ..) in &sides {
        let api: Api<VpcNatTunnel> = Api::namespaced(h.client(c), ns);
        api.delete(&dev, &DeleteParams::default()).await.unwrap();
        wait_for_deletion(&api, &dev, WAIT).await.unwrap();
    }
    for (c, _, local, _, _, _, _, (remote_cidr, _)) in &sides {
        let state = local
            .sh(
                &h,
                "ip -o link show; iptables-nft -t nat -S POSTROUTING; iptables-legacy -t nat -S POSTROUTING",
            )
            .await
            .unwrap()
            .stdout;
        assert!(!state.contains(&dev), "{c}: {state}");
        assert!(!state.contains(remote_cidr.as_str()), "{c}: {state}");
    }
    let (x, y) = tokio::join!(h.delete_nat_gateway(&g1), h.delete_nat_gateway(&g2));
    x.unwrap();
    y.unwrap();
    for p in &mut procs {
        assert!(p.stop().unwrap(), "{} did not exit cleanly", p.binary);
        assert_never_forbidden(p);
    }
    for (c, ns, rel) in [(C1, &ns1, &rel1), (C2, &ns2, &rel2)] {
        uninstall(&h, c, ns, rel).await;
    }
    h.delete_namespace(C1, &t1).await.unwrap();
    h.delete_namespace(C2, &t2).await.unwrap();
}
