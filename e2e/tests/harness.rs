//! Tests of the e2e harness itself (issue 3): versions, admission of the
//! project's CRDs, netns-backed gateway exec, VXLAN between clusters.
//!
//! Every test uses its own names (unique gateways / namespaces), so they may
//! run in parallel against one harness.
use multivpc_e2e::prelude::*;

fn pinned_k8s_version() -> String {
    multivpc_e2e::pinned_version("K8S_VERSION").expect("K8S_VERSION in e2e/versions.env")
}

#[tokio::test]
async fn each_cluster_reports_the_pinned_server_version() {
    let h = harness_or_skip!();
    let want = pinned_k8s_version();
    for name in h.cluster_names() {
        let v = h.client(&name).apiserver_version().await.unwrap();
        assert_eq!(v.git_version, want, "cluster {name} runs {v:?}");
        eprintln!(
            "cluster {name}: {} ({})",
            v.git_version,
            h.cluster(&name).server
        );
    }
}

/// The message of an API refusal, or a panic when `res` is not one.
fn refusal(what: &str, res: anyhow::Result<kube::api::DynamicObject>) -> (u16, String) {
    match res {
        Ok(o) => panic!("{what} was admitted: {o:?}"),
        Err(e) => match e.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) => (s.code, s.message.clone()),
            _ => panic!("{what}: expected an API refusal, got {e:#}"),
        },
    }
}

#[tokio::test]
async fn project_crds_admit_the_seed_yaml_and_refuse_bad_tunnels() {
    let h = harness_or_skip!(["cluster1"]);
    let crds = h.install_project_crds("cluster1").await.unwrap();
    if crds.is_empty() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n######## SKIPPED admission test: crds/ is missing or empty in {} ########\n",
            multivpc_e2e::repo_dir().display()
        );
        return;
    }
    eprintln!("installed project CRDs: {crds:?}");
    let c = h.client("cluster1");
    // The seed's YAML applies unchanged (it uses namespace ns1).
    apply_yaml(
        &c,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns1\n",
    )
    .await
    .unwrap();
    let examples = multivpc_e2e::repo_dir().join("examples");
    let mut seeded = Vec::new();
    for f in ["dns.yaml", "tunnel.yaml"] {
        let applied = apply_file(&c, examples.join(f))
            .await
            .unwrap_or_else(|e| panic!("seed example {f} refused: {e:#}"));
        seeded.extend(applied);
    }

    let ns = h.unique_namespace("cluster1", "admission").await.unwrap();
    let tunnel = |name: &str, extra: serde_json::Value| {
        let mut spec = serde_json::json!({
            "clusterId": "cluster2", "gatewayName": "gw1",
            "interfaceAddr": "10.100.0.1/24", "natGwDp": "gw1",
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        })
    };
    // A valid one in the same namespace, so refusals are about the field only.
    apply_json(&c, tunnel("ok-tunnel", serde_json::json!({})))
        .await
        .unwrap();
    let cases = [
        (
            "name of 16 characters",
            tunnel("abcdefghijklmnop", serde_json::json!({})),
            "metadata.name",
        ),
        (
            "interfaceAddr with a shell suffix",
            tunnel(
                "bad-addr",
                serde_json::json!({"interfaceAddr": "10.0.0.1/24;reboot"}),
            ),
            "spec.interfaceAddr",
        ),
        (
            "type ipip",
            tunnel("bad-type", serde_json::json!({"type": "ipip"})),
            "spec.type",
        ),
        (
            "vni on a gre tunnel",
            tunnel("gre-vni", serde_json::json!({"type": "gre", "vni": 100})),
            "spec.vni",
        ),
        (
            "mtu below IPv4's minimum",
            tunnel("low-mtu", serde_json::json!({"mtu": 575})),
            "spec.mtu",
        ),
        (
            "mtu above a jumbo frame",
            tunnel("high-mtu", serde_json::json!({"mtu": 9001})),
            "spec.mtu",
        ),
    ];
    for (what, obj, field) in cases {
        let (code, msg) = refusal(what, apply_json(&c, obj).await);
        eprintln!("{what}: {code} {msg}");
        assert_eq!(code, 422, "{what}: {msg}");
        assert!(
            msg.contains(field),
            "{what}: message does not name {field}: {msg}"
        );
    }

    // Clean up: the seed objects live in the shared namespace ns1.
    for o in seeded {
        let (api, _) = multivpc_e2e::apply::dynamic_api(&c, &o, "ns1")
            .await
            .unwrap();
        let _ = api
            .delete(o.metadata.name.as_deref().unwrap(), &Default::default())
            .await;
    }
    h.delete_namespace("cluster1", &ns).await.unwrap();
}

#[tokio::test]
async fn nat_gateway_statefulset_becomes_available_and_exec_runs_in_its_netns() {
    let h = harness_or_skip!(["cluster1"]);
    let spec = NatGatewaySpec::new(&Harness::unique_name("hx"), "hx-vpc");
    let gw = h.create_nat_gateway("cluster1", spec).await.unwrap();
    let pod = gw
        .wait_available(&h, Duration::from_secs(90))
        .await
        .unwrap();
    let ann = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("ovn.kubernetes.io/gateway"),
        Some(&gw.node.ovn_gateway)
    );
    assert_eq!(
        ann.get("ovn.kubernetes.io/ip_address"),
        Some(&gw.node.lan_ip)
    );
    assert_eq!(
        ann.get("ovn-vpc-external-network.kube-system.kubernetes.io/ip_address"),
        Some(&gw.node.external_ip)
    );
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(gw.node.node.as_str())
    );

    // Through the API server: kube-apiserver -> kwok kubelet API -> netns.
    let out = gw
        .exec(&h, &["ip", "-o", "addr"])
        .await
        .unwrap()
        .check()
        .unwrap();
    eprintln!("ip -o addr in {}:\n{}", gw.pod_name(), out.stdout);
    let ifaces: std::collections::BTreeSet<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        ifaces,
        ["eth0", "lo", "net1"].into_iter().collect(),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("{}/24", gw.node.lan_ip)),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&gw.node.external_ip), "{}", out.stdout);
    // Same view as the host has of that netns, and not the host's own.
    let host_view = netns_exec(&gw.node.netns, &["ip", "-o", "addr"])
        .await
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(host_view.stdout, out.stdout);
    let host_own = host_exec(&["ip", "-o", "addr"]).await.unwrap();
    assert!(!host_own.stdout.contains(&gw.node.lan_ip));

    // The VPC side answers on eth0 (the OVN gateway is a real next hop).
    gw.sh(&h, &format!("ping -c 1 -W 2 {}", gw.node.ovn_gateway))
        .await
        .unwrap();
    // Exit codes come back through the API.
    let failed = gw
        .exec(&h, &["sh", "-c", "echo oops >&2; exit 3"])
        .await
        .unwrap();
    assert_eq!(failed.exit_code, 3, "{failed}");
    assert_eq!(failed.stderr.trim(), "oops");

    h.delete_nat_gateway(&gw).await.unwrap();
}

#[tokio::test]
async fn gateways_of_two_clusters_reach_each_other_over_net1_and_vxlan() {
    let h = harness_or_skip!(["cluster1", "cluster2"]);
    let name = Harness::unique_name("vx");
    let (g1, g2) = tokio::try_join!(
        h.create_nat_gateway(
            "cluster1",
            NatGatewaySpec::new(&name, &format!("{name}-vpc"))
        ),
        h.create_nat_gateway(
            "cluster2",
            NatGatewaySpec::new(&name, &format!("{name}-vpc"))
        ),
    )
    .unwrap();
    tokio::try_join!(
        g1.wait_available(&h, Duration::from_secs(90)),
        g2.wait_available(&h, Duration::from_secs(90)),
    )
    .unwrap();
    // Underlay: net1 to net1 across clusters.
    g1.sh(&h, &format!("ping -c 2 -W 2 {}", g2.node.external_ip))
        .await
        .unwrap();
    g2.sh(&h, &format!("ping -c 2 -W 2 {}", g1.node.external_ip))
        .await
        .unwrap();
    // Overlay: a VXLAN device created in each gateway by exec.
    let vxlan = |local: &str, remote: &str, addr: &str| {
        format!(
            "set -e; ip link add vxe2e type vxlan id 4242 local {local} remote {remote} dstport 4789 dev net1; \
             ip addr add {addr}/30 dev vxe2e; ip link set vxe2e up"
        )
    };
    g1.sh(
        &h,
        &vxlan(&g1.node.external_ip, &g2.node.external_ip, "192.168.250.1"),
    )
    .await
    .unwrap();
    g2.sh(
        &h,
        &vxlan(&g2.node.external_ip, &g1.node.external_ip, "192.168.250.2"),
    )
    .await
    .unwrap();
    let ping = g1.sh(&h, "ping -c 3 -W 2 192.168.250.2").await.unwrap();
    eprintln!("{}", ping.stdout);
    // The reply really came through the VXLAN device of cluster2's gateway.
    let rx = netns_exec(
        &g2.node.netns,
        &["cat", "/sys/class/net/vxe2e/statistics/rx_packets"],
    )
    .await
    .unwrap()
    .check()
    .unwrap();
    assert!(
        rx.stdout.trim().parse::<u64>().unwrap() >= 3,
        "rx_packets {}",
        rx.stdout
    );

    // VPC to VPC through both gateways (VPC netns routes are shared state).
    let _g = h.exclusive("vpc-netns-routes").await.unwrap();
    // The Globalnet "workload" address of cluster1's VPC netns reaches
    // cluster2's, via eth0 -> VXLAN -> eth0.
    let (v1, v2) = (
        h.vpc_network("cluster1").unwrap(),
        h.vpc_network("cluster2").unwrap(),
    );
    // VXLAN is L2: the remote CIDR goes via the peer's tunnel address (a bare
    // `dev vxe2e` route would ARP for every remote host and get no answer).
    let route = |gw: &NatGateway,
                 local: &multivpc_e2e::VpcNetwork,
                 remote: &multivpc_e2e::VpcNetwork,
                 peer: &str| {
        format!(
            "set -e; ip route replace {} via {} dev eth0; ip route replace {} via {peer} dev vxe2e",
            local.globalnet_cidr, gw.node.ovn_gateway, remote.globalnet_cidr
        )
    };
    g1.sh(&h, &route(&g1, &v1, &v2, "192.168.250.2"))
        .await
        .unwrap();
    g2.sh(&h, &route(&g2, &v2, &v1, "192.168.250.1"))
        .await
        .unwrap();
    // The VPC side follows the Vpc object's static routes, as OVN would
    // (this is what exip-syncer writes in real life).
    for (cluster, remote, gw) in [("cluster1", &v2, &g1), ("cluster2", &v1, &g2)] {
        let vpc = fixtures::vpc(&gw.spec.vpc, &[(&remote.globalnet_cidr, &gw.node.lan_ip)]);
        apply_dynamic(&h.client(cluster), &vpc).await.unwrap();
        let applied = h
            .apply_vpc_static_routes(cluster, &gw.spec.vpc)
            .await
            .unwrap();
        assert_eq!(
            applied,
            vec![(remote.globalnet_cidr.clone(), gw.node.lan_ip.clone())]
        );
    }
    let vpc_ping = netns_exec(
        &v1.netns,
        &[
            "ping",
            "-c",
            "2",
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
    vpc_ping.check().unwrap();

    let (a, b) = tokio::join!(h.delete_nat_gateway(&g1), h.delete_nat_gateway(&g2));
    a.unwrap();
    b.unwrap();
}

#[tokio::test]
async fn primary_and_standby_gateways_of_one_vpc_share_its_subnet() {
    let h = harness_or_skip!(["cluster1"]);
    let vpc = Harness::unique_name("fo-vpc");
    let (p, s) = tokio::try_join!(
        h.create_nat_gateway(
            "cluster1",
            NatGatewaySpec::new(&Harness::unique_name("fop"), &vpc)
        ),
        h.create_nat_gateway(
            "cluster1",
            NatGatewaySpec::new(&Harness::unique_name("fos"), &vpc)
        ),
    )
    .unwrap();
    tokio::try_join!(
        p.wait_available(&h, Duration::from_secs(90)),
        s.wait_available(&h, Duration::from_secs(90)),
    )
    .unwrap();
    assert_ne!(p.node.lan_ip, s.node.lan_ip);
    assert_eq!(p.node.lan_cidr, s.node.lan_cidr);
    assert_ne!(p.node.external_ip, s.node.external_ip);
    let vpc_net = h.vpc_network("cluster1").unwrap();
    for gw in [&p, &s] {
        netns_exec(
            &vpc_net.netns,
            &["ping", "-c", "1", "-W", "2", &gw.node.lan_ip],
        )
        .await
        .unwrap()
        .check()
        .unwrap();
        // Each pod sees only its own addresses.
        let out = gw
            .exec(&h, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .await
            .unwrap();
        assert!(out.stdout.contains(&gw.node.lan_ip), "{out}");
    }
    let (a, b) = tokio::join!(h.delete_nat_gateway(&p), h.delete_nat_gateway(&s));
    a.unwrap();
    b.unwrap();
}

#[tokio::test]
async fn a_restarted_gateway_pod_gets_a_new_uid_and_a_fresh_netns() {
    let h = harness_or_skip!(["cluster1"]);
    let gw = h
        .create_nat_gateway(
            "cluster1",
            NatGatewaySpec::new(&Harness::unique_name("rs"), "rs-vpc"),
        )
        .await
        .unwrap();
    let before = gw
        .wait_available(&h, Duration::from_secs(90))
        .await
        .unwrap();
    gw.sh(
        &h,
        "ip link add dummyish type vxlan id 9 dstport 4789 dev net1 && \
         iptables -t nat -A POSTROUTING -d 10.255.0.0/16 -j MASQUERADE && \
         ip route add 10.254.0.0/16 via 10.1.0.1 dev eth0 2>/dev/null || ip route add 10.254.0.0/16 dev eth0",
    )
    .await
    .unwrap();
    let after = gw.restart(&h, Duration::from_secs(60)).await.unwrap();
    assert_ne!(before.metadata.uid, after.metadata.uid);
    let links = gw
        .exec(&h, &["ip", "-o", "link"])
        .await
        .unwrap()
        .check()
        .unwrap();
    assert!(!links.stdout.contains("dummyish"), "{links}");
    let nat = gw.sh(&h, "iptables -t nat -S POSTROUTING").await.unwrap();
    assert!(!nat.stdout.contains("MASQUERADE"), "{nat}");
    let routes = gw.sh(&h, "ip route").await.unwrap();
    assert!(!routes.stdout.contains("10.254.0.0/16"), "{routes}");
    assert!(routes.stdout.contains("default via"), "{routes}");
    h.delete_nat_gateway(&gw).await.unwrap();
}

#[tokio::test]
async fn pinned_tools_and_service_account_identities_work() {
    let h = harness_or_skip!(["cluster1"]);
    let helm = multivpc_e2e::pinned_version("HELM_VERSION").unwrap();
    let out = h
        .helm("cluster1", &["version", "--short"])
        .await
        .unwrap()
        .check()
        .unwrap();
    assert!(out.stdout.starts_with(&helm), "{out}");
    h.helm("cluster1", &["list", "-A"])
        .await
        .unwrap()
        .check()
        .unwrap();
    let out = h
        .kubectl("cluster1", &["version"])
        .await
        .unwrap()
        .check()
        .unwrap();
    assert!(
        out.stdout
            .contains(&format!("Server Version: {}", pinned_k8s_version())),
        "{out}"
    );

    // A ServiceAccount with a namespaced Role: RBAC decides, as for a chart's controller.
    let ns = h.unique_namespace("cluster1", "rbac").await.unwrap();
    let c = h.client("cluster1");
    apply_yaml(
        &c,
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: reader, namespace: {ns}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: reader, namespace: {ns}}}\n\
             rules: [{{apiGroups: [\"\"], resources: [configmaps], verbs: [get, list]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: reader, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}}\n\
             subjects: [{{kind: ServiceAccount, name: reader, namespace: {ns}}}]\n"
        ),
    )
    .await
    .unwrap();
    let sa = h
        .service_account_client("cluster1", &ns, "reader")
        .await
        .unwrap();
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, ListParams};
    let mine: Api<ConfigMap> = Api::namespaced(sa.clone(), &ns);
    mine.list(&ListParams::default()).await.unwrap();
    let theirs: Api<ConfigMap> = Api::namespaced(sa, "kube-system");
    let err = theirs.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
    h.delete_namespace("cluster1", &ns).await.unwrap();
}

fn pod_ready(p: &k8s_openapi::api::core::v1::Pod) -> Option<bool> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True")
}

#[tokio::test]
async fn a_stopped_gateway_node_makes_its_pod_unready_and_recovers() {
    let h = harness_or_skip!(["cluster1"]);
    let gw = h
        .create_nat_gateway(
            "cluster1",
            NatGatewaySpec::new(&Harness::unique_name("nf"), "nf-vpc"),
        )
        .await
        .unwrap();
    gw.wait_available(&h, Duration::from_secs(90))
        .await
        .unwrap();
    let pods: kube::api::Api<k8s_openapi::api::core::v1::Pod> =
        kube::api::Api::namespaced(h.client("cluster1"), gw.namespace());
    let started = std::time::Instant::now();
    gw.stop_node(&h).await.unwrap();
    wait_for_object(&pods, &gw.pod_name(), Duration::from_secs(150), |p| {
        pod_ready(p) == Some(false)
    })
    .await
    .unwrap();
    eprintln!(
        "pod not Ready {:.0}s after its node stopped",
        started.elapsed().as_secs_f64()
    );
    gw.start_node(&h).await.unwrap();
    wait_for_object(&pods, &gw.pod_name(), Duration::from_secs(90), |p| {
        pod_ready(p) == Some(true)
    })
    .await
    .unwrap();
    h.delete_nat_gateway(&gw).await.unwrap();
}
