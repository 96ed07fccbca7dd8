//! exip-syncer against real API servers (cluster1, cluster2 and the broker): the binary runs in
//! each member cluster as a user would run it, with Submariner's ServiceDiscovery pointing at the
//! broker cluster.
//!
//! exip-syncer owns every GatewayExIp of a cluster, so the tests here hold the `exip-syncer`
//! lock; the broker outage test also holds the `broker` lock while the broker is stopped.

use std::collections::BTreeSet;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use multivpc_api::{
    GatewayExIp, VpcNatTunnel, conditions,
    foreign::kubeovn::Vpc,
    keys::{
        LABEL_ACTIVE_GATEWAY, LABEL_CLUSTER, LABEL_GATEWAY, LABEL_VPC, SUBMARINER_CLUSTER_ID,
        SUBMARINER_ORIGIN_NAMESPACE,
    },
};
use multivpc_e2e::{
    ExclusiveGuard, Harness,
    controllers::{self, ControllerProcess},
    fixtures::{self, BROKER_NS, KUBE_SYSTEM},
    prelude::*,
};

const C1: &str = "cluster1";
const C2: &str = "cluster2";
const BROKER: &str = "broker";
/// Sync and publishing are event-driven; this only bounds a hung test.
const CONVERGE: Duration = Duration::from_secs(60);

struct Env {
    h: Harness,
    syncers: Vec<ControllerProcess>,
    _lock: ExclusiveGuard,
}

async fn setup(h: Harness, args: &[&str]) -> Env {
    setup_with(h, args, args).await
}

/// Syncers on cluster1 and cluster2 with their own flags.
async fn setup_with(h: Harness, args1: &[&str], args2: &[&str]) -> Env {
    let lock = h.exclusive("exip-syncer").await.unwrap();
    h.install_fleet(&[C1, C2], BROKER).await.unwrap();
    let mut syncers = Vec::new();
    for (c, args) in [(C1, args1), (C2, args2)] {
        syncers.push(
            controllers::spawn(h.run_dir(), "exip-syncer", &h.kubeconfig(c), args, CONVERGE)
                .await
                .unwrap(),
        );
    }
    Env {
        h,
        syncers,
        _lock: lock,
    }
}

fn exips(c: &Client) -> Api<GatewayExIp> {
    Api::namespaced(c.clone(), KUBE_SYSTEM)
}

fn broker_exips(h: &Harness) -> Api<GatewayExIp> {
    Api::namespaced(h.client(BROKER), BROKER_NS)
}

async fn wait_exip(
    api: &Api<GatewayExIp>,
    name: &str,
    cond: impl Fn(&GatewayExIp) -> bool,
) -> GatewayExIp {
    wait_for_object(api, name, CONVERGE, |o: &GatewayExIp| cond(o))
        .await
        .unwrap_or_else(|e| panic!("GatewayExIp {name}: {e:#}"))
}

fn ext_ip(ip: &str) -> impl Fn(&GatewayExIp) -> bool + '_ {
    move |o| o.spec.externalip == ip
}

async fn new_gateway(h: &Harness, cluster: &str, prefix: &str, vpc: &str) -> NatGateway {
    let gw = h
        .create_nat_gateway(
            cluster,
            NatGatewaySpec::new(&Harness::unique_name(prefix), vpc),
        )
        .await
        .unwrap();
    gw.wait_available(h, Duration::from_secs(90)).await.unwrap();
    gw
}

impl Env {
    async fn metric(&self, i: usize, series: &str) -> f64 {
        self.syncers[i].metric(series).await.unwrap().unwrap_or(0.0)
    }

    async fn wait_metric(&self, i: usize, series: &str, cond: impl Fn(f64) -> bool) {
        self.syncers[i]
            .wait_metric(series, CONVERGE, cond)
            .await
            .unwrap();
    }

    fn logs(&self) -> String {
        self.syncers
            .iter()
            .map(|s| format!("--- {}\n{}", s.log.display(), s.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A Secret `<ns>/broker-kubeconfig` in `cluster` holding a kubeconfig for the broker (the
/// alternative to ServiceDiscovery credentials).
async fn broker_kubeconfig_secret(h: &Harness, cluster: &str) -> String {
    let access = h.broker_access(BROKER, cluster).await.unwrap();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "broker", "cluster": {
            "server": format!("https://{}", access.api_server),
            "certificate-authority-data": access.ca_b64,
        }}],
        "users": [{"name": "broker", "user": {"token": access.token}}],
        "contexts": [{"name": "broker", "context": {"cluster": "broker", "user": "broker", "namespace": access.namespace}}],
        "current-context": "broker",
    });
    let ns = h.unique_namespace(cluster, "exbrk").await.unwrap();
    apply_json(
        &h.client(cluster),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "broker-kubeconfig", "namespace": ns},
            "stringData": {"kubeconfig": serde_yaml::to_string(&kubeconfig).unwrap()},
        }),
    )
    .await
    .unwrap();
    format!("--broker-credentials=secret:{ns}/broker-kubeconfig")
}

fn versions(objs: &[&GatewayExIp]) -> Vec<String> {
    objs.iter()
        .map(|o| o.resource_version().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn gateways_are_published_and_synced_both_ways_and_deletions_propagate() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    // cluster1: cluster ID and broker credentials from Submariner's ServiceDiscovery;
    // cluster2: --cluster-id and a broker kubeconfig Secret.
    let secret = {
        let _g = h.exclusive("exip-syncer").await.unwrap();
        h.install_foreign_crds(C2).await.unwrap();
        broker_kubeconfig_secret(&h, C2).await
    };
    let env = setup_with(h, &[], &[&format!("--cluster-id={C2}"), &secret]).await;
    let h = &env.h;
    let (c1, c2) = (h.client(C1), h.client(C2));
    let (vpc1, vpc2) = (Harness::unique_name("xvpc"), Harness::unique_name("xvpc"));
    let (a, b) = tokio::join!(
        new_gateway(h, C1, "xa", &vpc1),
        new_gateway(h, C2, "xb", &vpc2),
    );
    let a_name = format!("{}-{C1}", a.spec.name);
    let b_name = format!("{}-{C2}", b.spec.name);
    let globalnet1 = h.vpc_network(C1).unwrap().globalnet_cidr;

    // Published locally with the external-network address and the Globalnet CIDR ...
    let local = wait_exip(&exips(&c1), &a_name, ext_ip(&a.node.external_ip)).await;
    assert_eq!(local.spec.globalnetcidr, globalnet1);
    let labels = local.labels();
    assert_eq!(labels[LABEL_CLUSTER], C1);
    assert_eq!(labels[LABEL_GATEWAY], a.spec.name);
    assert_eq!(labels[LABEL_VPC], a.spec.vpc);
    assert_eq!(labels[LABEL_ACTIVE_GATEWAY], a.spec.name);
    assert!(!labels.contains_key(SUBMARINER_CLUSTER_ID), "{labels:?}");

    // ... exported to the broker with Submariner's labels ...
    let exported = wait_exip(&broker_exips(h), &a_name, ext_ip(&a.node.external_ip)).await;
    assert_eq!(exported.labels()[SUBMARINER_CLUSTER_ID], C1);
    assert_eq!(exported.labels()[SUBMARINER_ORIGIN_NAMESPACE], KUBE_SYSTEM);

    // ... and copied into the other cluster; the same the other way round.
    let copy = wait_exip(&exips(&c2), &a_name, ext_ip(&a.node.external_ip)).await;
    assert_eq!(copy.labels()[SUBMARINER_CLUSTER_ID], C1);
    assert_eq!(copy.labels()[LABEL_CLUSTER], C1);
    assert_eq!(copy.spec, local.spec);
    wait_exip(&exips(&c1), &b_name, ext_ip(&b.node.external_ip)).await;
    wait_exip(&exips(&c2), &b_name, |o| {
        o.labels().get(SUBMARINER_CLUSTER_ID).is_none()
    })
    .await;
    for i in [0, 1] {
        assert_eq!(env.metric(i, "multivpc_broker_connected").await, 1.0);
    }

    // Nothing echoes: the broker holds one object per gateway, from its origin only.
    let on_broker = broker_exips(h).list(&ListParams::default()).await.unwrap();
    for (name, origin) in [(&a_name, C1), (&b_name, C2)] {
        let same: Vec<_> = on_broker.iter().filter(|o| &o.name_any() == name).collect();
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].labels()[SUBMARINER_CLUSTER_ID], origin);
    }

    // A broker object whose clusterID disagrees with its name is refused, not copied. Its
    // arrival also makes both sync loops run a pass over the converged state ...
    let bogus_name = format!("{}-cluster8", Harness::unique_name("bogus"));
    let mut bogus = copy.clone();
    bogus.metadata = kube::api::ObjectMeta {
        name: Some(bogus_name.clone()),
        namespace: Some(BROKER_NS.into()),
        labels: Some([(SUBMARINER_CLUSTER_ID.to_string(), "cluster9".to_string())].into()),
        ..Default::default()
    };
    let before = [
        exips(&c1).get(&a_name).await.unwrap(),
        broker_exips(h).get(&a_name).await.unwrap(),
        exips(&c2).get(&a_name).await.unwrap(),
        exips(&c1).get(&b_name).await.unwrap(),
    ];
    let refused = "multivpc_broker_sync_total{direction=\"from_broker\",result=\"refused\"}";
    let refused_before = [env.metric(0, refused).await, env.metric(1, refused).await];
    apply(&h.client(BROKER), &bogus).await.unwrap();
    for i in [0, 1] {
        env.wait_metric(i, refused, |v| v > refused_before[i]).await;
    }
    assert!(exips(&c1).get_opt(&bogus_name).await.unwrap().is_none());
    assert!(exips(&c2).get_opt(&bogus_name).await.unwrap().is_none());
    // ... and a pod event makes cluster1's controller run a local pass: steady state writes
    // nothing anywhere.
    let passes =
        "controller_runtime_reconcile_total{controller=\"gatewayexip\",result=\"success\"}";
    let passes_before = env.metric(0, passes).await;
    let pods: Api<Pod> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    pods.patch(
        &a.pod_name(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"multivpc.e2e/poke": "1"}}})),
    )
    .await
    .unwrap();
    env.wait_metric(0, passes, |v| v > passes_before).await;
    let after = [
        exips(&c1).get(&a_name).await.unwrap(),
        broker_exips(h).get(&a_name).await.unwrap(),
        exips(&c2).get(&a_name).await.unwrap(),
        exips(&c1).get(&b_name).await.unwrap(),
    ];
    assert_eq!(
        versions(&before.iter().collect::<Vec<_>>()),
        versions(&after.iter().collect::<Vec<_>>()),
        "steady state rewrote a GatewayExIp"
    );
    broker_exips(h)
        .delete(&bogus_name, &DeleteParams::default())
        .await
        .unwrap();

    // Deleting the gateway at its origin removes its GatewayExIp everywhere.
    h.delete_nat_gateway(&a).await.unwrap();
    for api in [exips(&c1), broker_exips(h), exips(&c2)] {
        wait_for_deletion(&api, &a_name, CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    }
    h.delete_nat_gateway(&b).await.unwrap();
    wait_for_deletion(&exips(&c1), &b_name, CONVERGE)
        .await
        .unwrap();
}

// ------------------------------------------------------------------ broker outage

#[tokio::test]
async fn broker_outage_loses_nothing_and_converges_when_it_returns() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup(h, &[]).await;
    let h = &env.h;
    let (c1, c2) = (h.client(C1), h.client(C2));
    let vpc = Harness::unique_name("ovpc");
    let (a, b, c) = tokio::join!(
        new_gateway(h, C1, "oa", &vpc),
        new_gateway(h, C2, "ob", &vpc),
        new_gateway(h, C1, "oc", &vpc),
    );
    let [a_name, b_name, c_name] =
        [(&a, C1), (&b, C2), (&c, C1)].map(|(g, c)| format!("{}-{c}", g.spec.name));
    wait_exip(&exips(&c2), &a_name, ext_ip(&a.node.external_ip)).await;
    wait_exip(&exips(&c1), &b_name, ext_ip(&b.node.external_ip)).await;
    // c is published, then deleted again while the broker is down.
    wait_exip(&exips(&c2), &c_name, ext_ip(&c.node.external_ip)).await;

    let broker_lock = h.exclusive("broker").await.unwrap();
    let down = h.stop_cluster(BROKER).unwrap();
    for i in [0, 1] {
        env.wait_metric(i, "multivpc_broker_connected", |v| v == 0.0)
            .await;
    }
    // Changes on both clusters while the broker is away; local work goes on.
    let d = new_gateway(h, C1, "od", &vpc).await;
    let d_name = format!("{}-{C1}", d.spec.name);
    wait_exip(&exips(&c1), &d_name, ext_ip(&d.node.external_ip)).await;
    h.delete_nat_gateway(&b).await.unwrap();
    wait_for_deletion(&exips(&c2), &b_name, CONVERGE)
        .await
        .unwrap();
    h.delete_nat_gateway(&c).await.unwrap();
    wait_for_deletion(&exips(&c1), &c_name, CONVERGE)
        .await
        .unwrap();
    assert!(
        exips(&c2).get_opt(&c_name).await.unwrap().is_some(),
        "without the broker, cluster2 cannot know yet"
    );

    down.start().await.unwrap();
    for i in [0, 1] {
        env.wait_metric(i, "multivpc_broker_connected", |v| v == 1.0)
            .await;
    }
    drop(broker_lock);
    // Everything converges: new objects arrive, deleted ones leave, on every side.
    wait_exip(&exips(&c2), &d_name, ext_ip(&d.node.external_ip)).await;
    for (api, name) in [
        (exips(&c1), &b_name),
        (exips(&c2), &c_name),
        (broker_exips(h), &b_name),
        (broker_exips(h), &c_name),
    ] {
        wait_for_deletion(&api, name, CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    }
    // Nothing lost or duplicated: exactly the test's surviving gateways, once each.
    let ours = |list: Vec<GatewayExIp>| -> BTreeSet<String> {
        list.into_iter()
            .filter(|o| o.labels().get(LABEL_VPC) == Some(&vpc))
            .map(|o| o.name_any())
            .collect()
    };
    let want: BTreeSet<String> = [a_name.clone(), d_name.clone()].into();
    for api in [exips(&c1), exips(&c2), broker_exips(h)] {
        let list = api.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(ours(list), want);
    }
    assert!(
        env.metric(
            0,
            "multivpc_broker_sync_total{direction=\"to_broker\",result=\"success\"}"
        )
        .await
            >= 2.0
    );
    let (x, y) = tokio::join!(h.delete_nat_gateway(&a), h.delete_nat_gateway(&d));
    x.unwrap();
    y.unwrap();
    wait_for_deletion(&exips(&c2), &a_name, CONVERGE)
        .await
        .unwrap();
    wait_for_deletion(&exips(&c2), &d_name, CONVERGE)
        .await
        .unwrap();
}

// ------------------------------------------------------------------ member API server restart

/// cluster1's control plane stops for 20 s and starts again: every watch of its exip-syncer
/// ends, and the new server answers their resource versions with 410 Gone. exip-syncer acts
/// again without a restart: a gateway created afterwards is published and reaches cluster2,
/// and one deleted afterwards leaves the broker and cluster2.
#[tokio::test]
async fn exip_syncer_acts_again_after_its_member_api_server_restarts() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup(h, &[]).await;
    let h = &env.h;
    let c2 = h.client(C2);
    let vpc = Harness::unique_name("rvpc");
    let a = new_gateway(h, C1, "ra", &vpc).await;
    let a_name = format!("{}-{C1}", a.spec.name);
    wait_exip(&exips(&c2), &a_name, ext_ip(&a.node.external_ip)).await;

    let down = h.stop_cluster(C1).unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    down.start().await.unwrap();
    let back = std::time::Instant::now();
    let b = new_gateway(h, C1, "rb", &vpc).await;
    let b_name = format!("{}-{C1}", b.spec.name);
    h.delete_nat_gateway(&a).await.unwrap();
    wait_exip(&exips(&c2), &b_name, ext_ip(&b.node.external_ip)).await;
    eprintln!(
        "API server back to a new gateway on cluster2: {:.1}s",
        back.elapsed().as_secs_f64()
    );
    for api in [broker_exips(h), exips(&c2)] {
        wait_for_deletion(&api, &a_name, CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    }
    let log = env.syncers[0].log_tail(100_000);
    assert!(
        log.contains("too old resource version") || log.contains("410"),
        "no watch was answered 410 Gone:\n{}",
        env.logs()
    );

    h.delete_nat_gateway(&b).await.unwrap();
    wait_for_deletion(&exips(&c2), &b_name, CONVERGE)
        .await
        .unwrap();
}

// ------------------------------------------------------------------ failover

#[tokio::test]
async fn failover_repoints_only_the_failed_routes_and_moves_the_gatewayexip() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup(h, &["--failover-grace-period=1s"]).await;
    let h = &env.h;
    let (c1, c2) = (h.client(C1), h.client(C2));
    let vpc = Harness::unique_name("fvpc");
    let (p, s) = tokio::join!(
        new_gateway(h, C1, "fp", &vpc),
        new_gateway(h, C1, "fs", &vpc)
    );
    let remote_cidr = h.vpc_network(C2).unwrap().globalnet_cidr;
    let other_hop = h.vpc_network(C1).unwrap().gateway;
    // The VPC routes the other cluster's Globalnet CIDR through the primary; a second route
    // through another next hop must be left alone.
    apply_dynamic(
        &c1,
        &fixtures::vpc(
            &vpc,
            &[(&remote_cidr, &p.node.lan_ip), ("10.99.0.0/16", &other_hop)],
        ),
    )
    .await
    .unwrap();
    let p_name = format!("{}-{C1}", p.spec.name);
    wait_exip(&exips(&c1), &p_name, ext_ip(&p.node.external_ip)).await;
    wait_exip(&exips(&c2), &p_name, ext_ip(&p.node.external_ip)).await;

    // The primary is lost: pod deleted and its StatefulSet scaled to 0.
    let sts: Api<StatefulSet> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    sts.patch(
        &p.statefulset_name(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    let _ = pods.delete(&p.pod_name(), &DeleteParams::default()).await;

    let vpcs: Api<Vpc> = Api::all(c1.clone());
    let repointed = wait_for_object(&vpcs, &vpc, CONVERGE, |v: &Vpc| {
        v.spec.static_routes.first().map(|r| r.next_hop_ip.as_str()) == Some(s.node.lan_ip.as_str())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    assert_eq!(repointed.spec.static_routes[1].next_hop_ip, other_hop);
    assert_eq!(repointed.spec.static_routes[0].cidr, remote_cidr);

    // The primary's GatewayExIp (what remote tunnels reference) now names the standby, here and
    // on the other cluster.
    let moved = wait_exip(&exips(&c1), &p_name, ext_ip(&s.node.external_ip)).await;
    assert_eq!(moved.labels()[LABEL_ACTIVE_GATEWAY], s.spec.name);
    assert_eq!(moved.labels()[LABEL_GATEWAY], p.spec.name);
    let remote = wait_exip(&exips(&c2), &p_name, ext_ip(&s.node.external_ip)).await;
    assert_eq!(remote.labels()[LABEL_ACTIVE_GATEWAY], s.spec.name);
    // The standby's own object is unchanged.
    let s_obj = exips(&c1)
        .get(&format!("{}-{C1}", s.spec.name))
        .await
        .unwrap();
    assert_eq!(s_obj.spec.externalip, s.node.external_ip);

    // Recorded: metrics and an event on the Vpc.
    assert!(
        env.metric(
            0,
            "multivpc_gateway_failover_total{kind=\"failover\",result=\"success\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        env.metric(0, "multivpc_gateway_failover_duration_seconds_count")
            .await
            >= 1.0
    );
    let events: Api<Event> = Api::all(c1.clone());
    wait_for("GatewayFailover event", CONVERGE, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(
            match list.items.iter().find(|e| {
                e.reason.as_deref() == Some("GatewayFailover")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(vpc.as_str())
            }) {
                Some(e) => Check::Done(e.note.clone()),
                None => Check::Pending(format!("{} events, none for the Vpc", list.items.len())),
            },
        )
    })
    .await
    .unwrap();

    // Default fail-back policy: the primary coming back does not move the routes again.
    let passes =
        "controller_runtime_reconcile_total{controller=\"gatewayexip\",result=\"success\"}";
    let before = env.metric(0, passes).await;
    sts.patch(
        &p.statefulset_name(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    wait_for_object(&pods, &p.pod_name(), CONVERGE, |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
    .unwrap();
    // A pass has seen the primary back (the pod's watch event triggers one) ...
    env.wait_metric(0, passes, |v| v > before).await;
    // ... and left the routes and the GatewayExIp on the standby.
    let after = vpcs.get(&vpc).await.unwrap();
    assert_eq!(after.spec.static_routes[0].next_hop_ip, s.node.lan_ip);
    let still = exips(&c1).get(&p_name).await.unwrap();
    assert_eq!(still.labels()[LABEL_ACTIVE_GATEWAY], s.spec.name);
    assert_eq!(still.spec.externalip, s.node.external_ip);

    let (x, y) = tokio::join!(h.delete_nat_gateway(&p), h.delete_nat_gateway(&s));
    x.unwrap();
    y.unwrap();
    let _ = vpcs.delete(&vpc, &DeleteParams::default()).await;
    wait_for_deletion(&exips(&c2), &p_name, CONVERGE)
        .await
        .unwrap();
}

// ------------------------------------------------------------------ failover with tunnels

fn programmed(t: &VpcNatTunnel) -> bool {
    let Some(s) = &t.status else { return false };
    s.observed_generation == t.metadata.generation
        && conditions::find(&s.conditions, conditions::READY)
            .is_some_and(|c| c.status == "True" && c.reason == "Programmed")
}

async fn apply_vxlan_tunnel(
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
        serde_json::json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterId": remote_cluster, "gatewayName": remote_gw, "interfaceAddr": addr,
                "natGwDp": local_gw, "type": "vxlan", "vni": 4377,
            },
        }),
    )
    .await
    .unwrap();
}

/// A VXLAN tunnel `dev` between gateway `local` of cluster1 and `remote` of cluster2, each end
/// reconciled by its own tunnel-manager.
struct TunnelPair {
    managers: Vec<ControllerProcess>,
    namespaces: [String; 2],
    apis: [Api<VpcNatTunnel>; 2],
    dev: String,
}

impl TunnelPair {
    /// Starts a tunnel-manager per cluster and applies both ends (`10.<net>.0.1/24` in
    /// cluster1, `.2` in cluster2), each in a fresh namespace named after `prefix`; returns
    /// once both are Programmed, with their objects.
    async fn up(
        h: &Harness,
        prefix: &str,
        (local, remote): (&str, &str),
        net: u8,
    ) -> (Self, [VpcNatTunnel; 2]) {
        let mut managers = Vec::new();
        for c in [C1, C2] {
            managers.push(
                controllers::spawn(
                    h.run_dir(),
                    "tunnel-manager",
                    &h.kubeconfig(c),
                    &[&format!("--cluster-id={c}")],
                    CONVERGE,
                )
                .await
                .unwrap(),
            );
        }
        let namespaces = [
            h.unique_namespace(C1, prefix).await.unwrap(),
            h.unique_namespace(C2, prefix).await.unwrap(),
        ];
        let dev = format!("{}{}", &prefix[..2], std::process::id() % 100_000);
        let ends = [
            (C1, (C2, remote), local, format!("10.{net}.0.1/24")),
            (C2, (C1, local), remote, format!("10.{net}.0.2/24")),
        ];
        for ((c, peer, gw, addr), ns) in ends.iter().zip(&namespaces) {
            apply_vxlan_tunnel(&h.client(c), ns, &dev, *peer, gw, addr).await;
        }
        let apis = [
            Api::namespaced(h.client(C1), &namespaces[0]),
            Api::namespaced(h.client(C2), &namespaces[1]),
        ];
        let mut programmed_ends = Vec::new();
        for (api, manager) in apis.iter().zip(&managers) {
            programmed_ends.push(
                wait_for_object(api, &dev, CONVERGE, programmed)
                    .await
                    .unwrap_or_else(|e| panic!("{e:#}\n{}", manager.log_tail(30))),
            );
        }
        let ends: [VpcNatTunnel; 2] = programmed_ends.try_into().unwrap();
        (
            Self {
                managers,
                namespaces,
                apis,
                dev,
            },
            ends,
        )
    }

    /// Deletes both ends (their managers clean the gateways), then stops the managers and
    /// deletes the namespaces.
    async fn down(self, h: &Harness) {
        for api in &self.apis {
            api.delete(&self.dev, &DeleteParams::default())
                .await
                .unwrap();
            wait_for_deletion(api, &self.dev, CONVERGE).await.unwrap();
        }
        drop(self.managers);
        for (c, ns) in [C1, C2].iter().zip(&self.namespaces) {
            let _ = h.delete_namespace(c, ns).await;
        }
    }
}

#[tokio::test]
async fn failover_end_to_end_moves_both_tunnel_ends_and_the_ping_resumes() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup(h, &["--failover-grace-period=1s"]).await;
    // tunnel-manager reconciles every VpcNatTunnel of a cluster: one test at a time.
    let _tm = env.h.exclusive("tunnel-manager").await.unwrap();
    let h = &env.h;
    let (c1, c2) = (h.client(C1), h.client(C2));
    let (vpc, remote_vpc) = (Harness::unique_name("tvpc"), Harness::unique_name("tvpc"));
    let (p, s, r) = tokio::join!(
        new_gateway(h, C1, "tp", &vpc),
        new_gateway(h, C1, "ts", &vpc),
        new_gateway(h, C2, "tr", &remote_vpc),
    );
    let remote_cidr = h.vpc_network(C2).unwrap().globalnet_cidr;
    apply_dynamic(&c1, &fixtures::vpc(&vpc, &[(&remote_cidr, &p.node.lan_ip)]))
        .await
        .unwrap();
    let p_name = format!("{}-{C1}", p.spec.name);
    wait_exip(&exips(&c2), &p_name, ext_ip(&p.node.external_ip)).await;
    wait_exip(
        &exips(&c1),
        &format!("{}-{C2}", r.spec.name),
        ext_ip(&r.node.external_ip),
    )
    .await;

    let (pair, _) = TunnelPair::up(h, "xfo", (&p.spec.name, &r.spec.name), 251).await;
    let [t1, t2] = &pair.apis;
    let dev = pair.dev.clone();
    r.sh(h, "ping -c 2 -W 2 10.251.0.1").await.unwrap();

    // The primary is lost: pod deleted and its StatefulSet scaled to 0.
    let lost = std::time::Instant::now();
    let sts: Api<StatefulSet> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    sts.patch(
        &p.statefulset_name(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    let _ = pods.delete(&p.pod_name(), &DeleteParams::default()).await;

    let vpcs: Api<Vpc> = Api::all(c1.clone());
    wait_for_object(&vpcs, &vpc, CONVERGE, |v: &Vpc| {
        v.spec.static_routes[0].next_hop_ip == s.node.lan_ip
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    wait_exip(&exips(&c1), &p_name, ext_ip(&s.node.external_ip)).await;
    wait_exip(&exips(&c2), &p_name, ext_ip(&s.node.external_ip)).await;
    // Both tunnel ends rebuilt: cluster1's in the standby's pod, cluster2's towards it.
    let s_ip = s.node.external_ip.clone();
    wait_for_object(t1, &dev, CONVERGE, |t: &VpcNatTunnel| {
        programmed(t)
            && t.status.as_ref().and_then(|s| s.local_ip.as_deref()) == Some(s_ip.as_str())
    })
    .await
    .unwrap();
    wait_for_object(t2, &dev, CONVERGE, |t: &VpcNatTunnel| {
        programmed(t)
            && t.status.as_ref().and_then(|s| s.remote_ip.as_deref()) == Some(s_ip.as_str())
    })
    .await
    .unwrap();
    // The ping across the tunnel resumes.
    wait_for(
        "ping across the tunnel after failover",
        CONVERGE,
        || async {
            let out = r
                .exec(h, &["ping", "-c", "1", "-W", "1", "10.251.0.1"])
                .await?;
            Ok(if out.success() {
                Check::Done(())
            } else {
                Check::Pending(out.to_string())
            })
        },
    )
    .await
    .unwrap();
    eprintln!(
        "ping resumed {:?} after the primary was lost",
        lost.elapsed()
    );

    pair.down(h).await;
    let (x, y, z) = tokio::join!(
        h.delete_nat_gateway(&p),
        h.delete_nat_gateway(&s),
        h.delete_nat_gateway(&r)
    );
    x.unwrap();
    y.unwrap();
    z.unwrap();
    let _ = vpcs.delete(&vpc, &DeleteParams::default()).await;
}

/// The `Healthy` condition of a tunnel, when observed for its generation.
fn healthy(t: &VpcNatTunnel) -> Option<(String, String)> {
    let s = t.status.as_ref()?;
    conditions::find(&s.conditions, conditions::HEALTHY)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Events of `reason` about tunnel `name` in `ns`.
async fn tunnel_events(c: &Client, ns: &str, name: &str, reason: &str) -> usize {
    let events: Api<Event> = Api::namespaced(c.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .count()
}

/// The whole path of the health probes: each exip-syncer publishes its Ready tunnel's address
/// in its gateway's GatewayExIp, the broker carries it to the other cluster, and each
/// tunnel-manager pings the far end's address through its tunnel. Healthy turns False when the
/// far end's device goes down (with an event) and True again when it comes back.
#[tokio::test]
async fn tunnel_health_follows_the_far_end_through_the_published_addresses() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup(h, &[]).await;
    let _tm = env.h.exclusive("tunnel-manager").await.unwrap();
    let h = &env.h;
    let (c1, c2) = (h.client(C1), h.client(C2));
    let (vpc1, vpc2) = (Harness::unique_name("hvpc"), Harness::unique_name("hvpc"));
    let (p, r) = tokio::join!(
        new_gateway(h, C1, "hp", &vpc1),
        new_gateway(h, C2, "hr", &vpc2),
    );
    let (p_name, r_name) = (
        format!("{}-{C1}", p.spec.name),
        format!("{}-{C2}", r.spec.name),
    );
    wait_exip(&exips(&c2), &p_name, ext_ip(&p.node.external_ip)).await;
    wait_exip(&exips(&c1), &r_name, ext_ip(&r.node.external_ip)).await;

    let (pair, _) = TunnelPair::up(h, "hlt", (&p.spec.name, &r.spec.name), 252).await;
    let [t1, t2] = &pair.apis;
    let dev = pair.dev.clone();
    // Each side's address reaches the other cluster, as exip-syncer imported it.
    let published = |gw: &str, cluster: &str, addr: &str| {
        let (gw, cluster, addr) = (gw.to_owned(), cluster.to_owned(), addr.to_owned());
        move |e: &GatewayExIp| {
            e.spec.tunnels.iter().any(|t| {
                t.gateway_name == gw && t.cluster_id == cluster && t.interface_addr == addr
            })
        }
    };
    wait_exip(
        &exips(&c2),
        &p_name,
        published(&r.spec.name, C2, "10.252.0.1/24"),
    )
    .await;
    wait_exip(
        &exips(&c1),
        &r_name,
        published(&p.spec.name, C1, "10.252.0.2/24"),
    )
    .await;

    let is = |status: &'static str, reason: &'static str| {
        move |t: &VpcNatTunnel| healthy(t).is_some_and(|(s, r)| s == status && r == reason)
    };
    let up = wait_for_object(t1, &dev, CONVERGE, is("True", "Answering"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pair.managers[0].log_tail(30)));
    wait_for_object(t2, &dev, CONVERGE, is("True", "Answering"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pair.managers[1].log_tail(30)));
    let health = up.status.unwrap().health.expect("status.health");
    assert_eq!(health.target, "10.252.0.2");
    assert!(health.rtt.is_some(), "{health:?}");
    let metrics = pair.managers[0].metrics_text().await.unwrap();
    let connected = metrics
        .lines()
        .find(|l| {
            l.starts_with("multivpc_connections{")
                && l.contains(&format!("tunnel=\"{}/{dev}\"", pair.namespaces[0]))
        })
        .unwrap_or_else(|| panic!("no connection series:\n{metrics}"));
    assert!(
        connected.contains("status=\"connected\"")
            && connected.contains("cable_driver=\"vxlan\"")
            && connected.contains(&format!("remote_cluster=\"{C2}\""))
            && connected.ends_with(" 1"),
        "{connected}"
    );
    assert!(
        metrics.contains("multivpc_connection_latency_seconds{"),
        "{metrics}"
    );
    // Every metric the chart's Grafana dashboard queries is served by the running binaries
    // (tunnel-manager with a probed tunnel, exip-syncer with the broker connected).
    let served = format!(
        "{metrics}\n{}",
        env.syncers[0].metrics_text().await.unwrap()
    );
    let missing: Vec<String> =
        multivpc_e2e::dashboard::metric_names(multivpc_e2e::dashboard::DASHBOARD)
            .unwrap()
            .into_iter()
            .filter(|name| !multivpc_e2e::dashboard::served(&served, name))
            .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody serves: {missing:?}"
    );

    // The far end's device goes down: cluster1's probes go unanswered.
    let down = std::time::Instant::now();
    r.sh(h, &format!("ip link set {dev} down")).await.unwrap();
    let unhealthy = wait_for_object(t1, &dev, CONVERGE, is("False", "NotAnswering"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pair.managers[0].log_tail(30)));
    eprintln!(
        "Healthy=False {:?} after the far end's device went down (bound: 3 probes at 2 s + 1 s + an exec)",
        down.elapsed()
    );
    // Ready stays about programming: the tunnel is still programmed, it only carries nothing.
    assert!(programmed(&unhealthy), "{:?}", unhealthy.status);
    let loss = unhealthy.status.unwrap().health.unwrap().loss_percent;
    assert!(loss > 0, "{loss}");
    wait_for("a TunnelUnhealthy event", CONVERGE, || async {
        let n = tunnel_events(&c1, &pair.namespaces[0], &dev, "TunnelUnhealthy").await;
        Ok(if n >= 1 {
            Check::Done(())
        } else {
            Check::Pending(format!("{n} events"))
        })
    })
    .await
    .unwrap();

    // Back up: healthy again, with an event.
    let back = std::time::Instant::now();
    r.sh(h, &format!("ip link set {dev} up")).await.unwrap();
    wait_for_object(t1, &dev, CONVERGE, is("True", "Answering"))
        .await
        .unwrap();
    eprintln!("Healthy=True {:?} after it came back", back.elapsed());
    wait_for("a TunnelHealthy event", CONVERGE, || async {
        let n = tunnel_events(&c1, &pair.namespaces[0], &dev, "TunnelHealthy").await;
        Ok(if n >= 1 {
            Check::Done(())
        } else {
            Check::Pending(format!("{n} events"))
        })
    })
    .await
    .unwrap();

    pair.down(h).await;
    let (x, y) = tokio::join!(h.delete_nat_gateway(&p), h.delete_nat_gateway(&r));
    x.unwrap();
    y.unwrap();
}

/// The broker's GatewayExIp CRD predates `spec.tunnels` (Helm installs CRDs but never upgrades
/// them), so the broker drops the field from every export. exip-syncer says so once and exports
/// without it, instead of rewriting the object on every pass; the far ends' tunnels cannot be
/// probed and say why (Healthy=Unknown PeerAddressUnknown).
#[tokio::test]
async fn a_broker_crd_without_tunnel_addresses_is_noticed_not_rewritten_forever() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup(h, &[]).await;
    let _tm = env.h.exclusive("tunnel-manager").await.unwrap();
    let h = &env.h;
    let (c1, c2) = (h.client(C1), h.client(C2));
    // The broker's CRD as it was before the field: today's without `spec.tunnels`.
    let text = std::fs::read_to_string(
        multivpc_e2e::repo_dir().join("crds/kubeovn.ustc.io_gatewayexips.yaml"),
    )
    .unwrap();
    let mut old: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let spec = &mut old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert!(spec.as_object_mut().unwrap().remove("tunnels").is_some());
    apply_json(&h.client(BROKER), old).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (vpc1, vpc2) = (Harness::unique_name("ovpc"), Harness::unique_name("ovpc"));
    let (p, r) = tokio::join!(
        new_gateway(h, C1, "op", &vpc1),
        new_gateway(h, C2, "or", &vpc2),
    );
    let p_name = format!("{}-{C1}", p.spec.name);
    wait_exip(&exips(&c2), &p_name, ext_ip(&p.node.external_ip)).await;
    let (pair, _) = TunnelPair::up(h, "old", (&p.spec.name, &r.spec.name), 254).await;
    let [_, t2] = &pair.apis;
    let dev = pair.dev.clone();
    // Published in cluster1 (its CRD keeps the field) ...
    wait_exip(&exips(&c1), &p_name, |e| !e.spec.tunnels.is_empty()).await;
    // ... dropped by the broker: cluster2's copy has none, its tunnel end says why.
    wait_for_object(t2, &dev, CONVERGE, |t: &VpcNatTunnel| {
        healthy(t).is_some_and(|(s, r)| s == "Unknown" && r == "PeerAddressUnknown")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pair.managers[1].log_tail(30)));
    assert!(
        exips(&c2)
            .get(&p_name)
            .await
            .unwrap()
            .spec
            .tunnels
            .is_empty()
    );
    wait_for(
        "exip-syncer to say the broker drops the field",
        CONVERGE,
        || async {
            let said = env.syncers[0]
                .log_tail(200)
                .contains("dropped or refused spec.tunnels");
            Ok(if said {
                Check::Done(())
            } else {
                Check::Pending(env.syncers[0].log_tail(5))
            })
        },
    )
    .await
    .unwrap();
    // No rewriting: the exports stand still while nothing changes.
    let exports = "multivpc_broker_sync_total{direction=\"to_broker\",result=\"success\"}";
    let before = env.syncers[0].metric(exports).await.unwrap().unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = env.syncers[0].metric(exports).await.unwrap().unwrap_or(0.0);
    assert_eq!(before, after, "exports went on: {}", env.logs());

    pair.down(h).await;
    let (x, y) = tokio::join!(h.delete_nat_gateway(&p), h.delete_nat_gateway(&r));
    x.unwrap();
    y.unwrap();
    h.install_project_crds(BROKER).await.unwrap();
}

/// A primary whose pod stays Ready but whose tunnels all stop answering is failed over: its
/// tunnel's device is taken down by hand inside it, tunnel-manager's probes turn Healthy=False,
/// exip-syncer moves the VPC's routes and the GatewayExIp to the standby, the tunnel is rebuilt
/// there and answers again; the primary is then held down (no move back).
#[tokio::test]
async fn a_gateway_whose_tunnels_all_stop_answering_fails_over_to_the_standby() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup(h, &["--failover-grace-period=1s"]).await;
    let _tm = env.h.exclusive("tunnel-manager").await.unwrap();
    let h = &env.h;
    let (c1, c2) = (h.client(C1), h.client(C2));
    let (vpc, remote_vpc) = (Harness::unique_name("uvpc"), Harness::unique_name("uvpc"));
    let (p, s, r) = tokio::join!(
        new_gateway(h, C1, "up", &vpc),
        new_gateway(h, C1, "us", &vpc),
        new_gateway(h, C2, "ur", &remote_vpc),
    );
    let remote_cidr = h.vpc_network(C2).unwrap().globalnet_cidr;
    apply_dynamic(&c1, &fixtures::vpc(&vpc, &[(&remote_cidr, &p.node.lan_ip)]))
        .await
        .unwrap();
    let p_name = format!("{}-{C1}", p.spec.name);
    wait_exip(&exips(&c2), &p_name, ext_ip(&p.node.external_ip)).await;
    wait_exip(
        &exips(&c1),
        &format!("{}-{C2}", r.spec.name),
        ext_ip(&r.node.external_ip),
    )
    .await;

    let (pair, _) = TunnelPair::up(h, "ufo", (&p.spec.name, &r.spec.name), 253).await;
    let [t1, _] = &pair.apis;
    let dev = pair.dev.clone();
    let answering =
        |t: &VpcNatTunnel| healthy(t).is_some_and(|(s, r)| s == "True" && r == "Answering");
    wait_for_object(t1, &dev, CONVERGE, answering)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pair.managers[0].log_tail(30)));

    // The primary's pod stays Ready; its tunnel stops carrying anything.
    let broken = std::time::Instant::now();
    p.sh(h, &format!("ip link set {dev} down")).await.unwrap();
    let vpcs: Api<Vpc> = Api::all(c1.clone());
    wait_for_object(&vpcs, &vpc, CONVERGE, |v: &Vpc| {
        v.spec.static_routes[0].next_hop_ip == s.node.lan_ip
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    eprintln!(
        "routes on the standby {:?} after the tunnel broke",
        broken.elapsed()
    );
    wait_exip(&exips(&c2), &p_name, ext_ip(&s.node.external_ip)).await;
    // Rebuilt in the standby's pod, the tunnel answers again.
    let s_ip = s.node.external_ip.clone();
    wait_for_object(t1, &dev, CONVERGE, |t: &VpcNatTunnel| {
        programmed(t)
            && answering(t)
            && t.status.as_ref().and_then(|s| s.local_ip.as_deref()) == Some(s_ip.as_str())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pair.managers[0].log_tail(30)));
    eprintln!(
        "tunnel answering through the standby {:?} after it broke",
        broken.elapsed()
    );
    let events: Api<Event> = Api::all(c1.clone());
    let why = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("GatewayFailover"))
        .filter_map(|e| e.note)
        .find(|n| n.contains(&p.spec.name))
        .expect("a GatewayFailover event");
    assert!(why.contains("none of its tunnels answering"), "{why}");
    // The standby's tunnel fails too (as when the far end is what failed): the primary, whose
    // tunnel moved away so that nothing of it fails now, is held down, so the routes stay
    // (no standby: a NoStandbyGateway event) instead of swinging back.
    s.sh(h, &format!("ip link set {dev} down")).await.unwrap();
    wait_for_object(t1, &dev, CONVERGE, |t: &VpcNatTunnel| {
        healthy(t).is_some_and(|(s, _)| s == "False")
    })
    .await
    .unwrap();
    wait_for(
        "a NoStandbyGateway event for the standby",
        CONVERGE,
        || async {
            let stranded = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("NoStandbyGateway"))
                .filter_map(|e| e.note)
                .any(|n| n.contains(&s.spec.name));
            Ok(if stranded {
                Check::Done(())
            } else {
                Check::Pending("no event yet".into())
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    let v = vpcs.get(&vpc).await.unwrap();
    assert_eq!(
        v.spec.static_routes[0].next_hop_ip, s.node.lan_ip,
        "held down"
    );

    pair.down(h).await;
    let (x, y, z) = tokio::join!(
        h.delete_nat_gateway(&p),
        h.delete_nat_gateway(&s),
        h.delete_nat_gateway(&r)
    );
    x.unwrap();
    y.unwrap();
    z.unwrap();
    let _ = vpcs.delete(&vpc, &DeleteParams::default()).await;
}

// ------------------------------------------------------------------ one gateway model

/// Since Kube-OVN v1.14 net1's NAD comes from the external Subnet's `spec.provider`, so the
/// address annotation key need not be `<externalSubnets[0]>.kube-system`. exip-syncer (which
/// publishes the address) and tunnel-manager (which programs it) read it the same way: the
/// published address is the one the tunnel is built from, and traffic passes.
#[tokio::test]
async fn a_gateway_whose_provider_is_not_its_subnet_name_is_published_and_tunnelled_alike() {
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup(h, &[]).await;
    let _tm = env.h.exclusive("tunnel-manager").await.unwrap();
    let h = &env.h;
    let (c1, c2) = (h.client(C1), h.client(C2));
    let (vpc, remote_vpc) = (Harness::unique_name("pvpc"), Harness::unique_name("pvpc"));
    // A macvlan NAD in another namespace, and a NAD of type kube-ovn (provider `….ovn`).
    let custom = |prefix: &str, kube_ovn_type: bool| {
        NatGatewaySpec::new(&Harness::unique_name(prefix), &vpc)
            .external_subnet("ext-custom")
            .attachment("infra-net", "macvlan-ext", kube_ovn_type)
    };
    let (g, k, r) = tokio::join!(
        h.create_nat_gateway(C1, custom("pm", false)),
        h.create_nat_gateway(C1, custom("po", true)),
        h.create_nat_gateway(
            C2,
            NatGatewaySpec::new(&Harness::unique_name("pr"), &remote_vpc)
        ),
    );
    let (g, k, r) = (g.unwrap(), k.unwrap(), r.unwrap());
    for gw in [&g, &k, &r] {
        gw.wait_available(h, Duration::from_secs(90)).await.unwrap();
    }
    for gw in [&g, &k] {
        let name = format!("{}-{C1}", gw.spec.name);
        wait_exip(&exips(&c1), &name, ext_ip(&gw.node.external_ip)).await;
        wait_exip(&exips(&c2), &name, ext_ip(&gw.node.external_ip)).await;
    }
    wait_exip(
        &exips(&c1),
        &format!("{}-{C2}", r.spec.name),
        ext_ip(&r.node.external_ip),
    )
    .await;

    let (pair, [local, remote]) =
        TunnelPair::up(h, "xprov", (&g.spec.name, &r.spec.name), 252).await;
    assert_eq!(
        local.status.as_ref().and_then(|s| s.local_ip.as_deref()),
        Some(g.node.external_ip.as_str()),
        "tunnel-manager read net1's address under provider {}",
        g.spec.effective_attachment().provider()
    );
    assert_eq!(
        remote.status.as_ref().and_then(|s| s.remote_ip.as_deref()),
        Some(g.node.external_ip.as_str()),
        "the address exip-syncer published is the one cluster1's end uses"
    );
    r.sh(h, "ping -c 2 -W 2 10.252.0.1").await.unwrap();

    pair.down(h).await;
    for gw in [&g, &k, &r] {
        h.delete_nat_gateway(gw).await.unwrap();
    }
}

// ------------------------------------------------------------------ hostile broker objects

/// A broker object as another member would write it (the admin writes it here, past the broker
/// chart's ownership policy, as a compromised member of a broker without that policy could).
fn forged(name: &str, origin: &str, gateway: &str, ip: &str, cidr: &str) -> GatewayExIp {
    let mut o = GatewayExIp::new(
        name,
        multivpc_api::GatewayExIpSpec {
            externalip: ip.into(),
            globalnetcidr: cidr.into(),
            ..Default::default()
        },
    );
    o.metadata.namespace = Some(BROKER_NS.into());
    o.metadata.labels = Some(
        [
            (SUBMARINER_CLUSTER_ID, origin),
            (LABEL_CLUSTER, origin),
            (LABEL_GATEWAY, gateway),
            (SUBMARINER_ORIGIN_NAMESPACE, KUBE_SYSTEM),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
    );
    o
}

/// Submariner's record of a (fake) member on the broker, as its gateway would sync it.
async fn broker_cluster(h: &Harness, id: &str, cidr: &str) {
    let mut c = fixtures::submariner_cluster(id, &[cidr]);
    c.metadata.namespace = Some(BROKER_NS.into());
    c.metadata.labels = Some([(SUBMARINER_CLUSTER_ID.to_string(), id.to_string())].into());
    apply_dynamic(&h.client(BROKER), &c).await.unwrap();
}

#[tokio::test]
async fn hostile_broker_objects_are_refused_counted_and_legitimate_ones_keep_syncing() {
    use futures::StreamExt;
    const FLOOD: usize = 20_000;
    const CAP: usize = 50;
    let h = harness_or_skip!([C1, C2, BROKER]);
    let env = setup_with(h, &[&format!("--max-imported-per-cluster={CAP}")], &[]).await;
    let h = &env.h;
    let c1 = h.client(C1);
    let globalnet1 = h.vpc_network(C1).unwrap().globalnet_cidr;
    // Fake members, each recorded on the broker as Submariner would: cluster5 (242.55/16),
    // cluster6 (the flood, 242.66/16), cluster7 (claims cluster1's own Globalnet CIDR) and
    // gw-cluster1 (whose names can read as cluster1's).
    for (id, cidr) in [
        ("cluster5", "242.55.0.0/16"),
        ("cluster6", "242.66.0.0/16"),
        ("cluster7", globalnet1.as_str()),
        ("gw-cluster1", "242.77.0.0/16"),
    ] {
        broker_cluster(h, id, cidr).await;
    }
    let refused = "multivpc_broker_sync_total{direction=\"from_broker\",result=\"refused\"}";
    let refused_before = env.metric(0, refused).await;

    // A copy imported legitimately whose source turns hostile: the copy goes, and its owner is
    // told why with a Warning event on it.
    let turned = forged(
        "turn-cluster5",
        "cluster5",
        "turn",
        "172.50.55.9",
        "242.55.0.0/16",
    );
    apply(&h.client(BROKER), &turned).await.unwrap();
    wait_exip(&exips(&c1), "turn-cluster5", ext_ip("172.50.55.9")).await;
    let mut hostile_turn = turned.clone();
    hostile_turn.spec.globalnetcidr = "242.99.0.0/16".into();
    apply(&h.client(BROKER), &hostile_turn).await.unwrap();
    let events: Api<Event> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    let note = wait_for("SyncRefused event", Duration::from_secs(120), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(
            match list.items.iter().find(|e| {
                e.reason.as_deref() == Some("SyncRefused")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("turn-cluster5")
            }) {
                Some(e) => Check::Done(e.note.clone().unwrap_or_default()),
                None => Check::Pending("no event yet".into()),
            },
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    assert!(
        note.contains("from the broker") && note.contains("242.99.0.0/16"),
        "{note}"
    );
    wait_for("refused copy gone", Duration::from_secs(120), || async {
        Ok(match exips(&c1).get_opt("turn-cluster5").await? {
            None => Check::Done(()),
            Some(o) => Check::Pending(format!("still {}", o.spec.globalnetcidr)),
        })
    })
    .await
    .unwrap();
    let _ = broker_exips(h)
        .delete("turn-cluster5", &DeleteParams::default())
        .await;

    let mut big = forged(
        "big-cluster5",
        "cluster5",
        "big",
        "172.50.55.1",
        "242.55.0.0/16",
    );
    big.metadata.annotations = Some([("x".to_string(), "y".repeat(200_000))].into());
    let hostile = [
        forged(
            "wide-cluster5",
            "cluster5",
            "wide",
            "172.50.55.2",
            "0.0.0.0/0",
        ),
        forged(
            "other-cluster5",
            "cluster5",
            "other",
            "172.50.55.3",
            "242.99.0.0/16",
        ),
        forged(
            "ovl-cluster7",
            "cluster7",
            "ovl",
            "172.50.77.1",
            &globalnet1,
        ),
        forged(
            "vpcx-gw-cluster1",
            "gw-cluster1",
            "vpcx",
            "172.50.77.2",
            "242.77.0.0/16",
        ),
        big,
    ];
    let broker = broker_exips(h);
    for o in &hostile {
        apply(&h.client(BROKER), o).await.unwrap();
    }
    let started = std::time::Instant::now();
    let created = futures::stream::iter(0..FLOOD)
        .map(|i| {
            let o = forged(
                &format!("f{i}-cluster6"),
                "cluster6",
                &format!("f{i}"),
                &format!("172.50.{}.{}", 100 + i / 250, 1 + i % 250),
                "242.66.0.0/16",
            );
            let broker = broker.clone();
            async move { broker.create(&Default::default(), &o).await.map(|_| ()) }
        })
        .buffer_unordered(48)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    assert_eq!(created, FLOOD);
    eprintln!(
        "{FLOOD} flood objects on the broker in {:?}",
        started.elapsed()
    );

    // Every hostile object and everything of the flood beyond the cap is refused and counted.
    let want = (hostile.len() + FLOOD - CAP) as f64;
    wait_for("refusals counted", Duration::from_secs(300), || async {
        let v = env.metric(0, refused).await - refused_before;
        Ok(if v >= want {
            Check::Done(())
        } else {
            Check::Pending(format!("{v} of {want} refusals"))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.logs()));
    let local = exips(&c1).list(&ListParams::default()).await.unwrap();
    for o in &hostile {
        assert!(
            !local.iter().any(|l| l.name_any() == o.name_any()),
            "{} was imported",
            o.name_any()
        );
    }
    let flood_copies = local
        .iter()
        .filter(|l| l.labels().get(SUBMARINER_CLUSTER_ID).map(String::as_str) == Some("cluster6"))
        .count();
    assert_eq!(flood_copies, CAP, "the per-cluster cap holds");
    assert!(
        local.iter().all(|l| l.metadata.annotations.is_none()),
        "copies carry no annotations"
    );

    // A legitimate gateway published now still reaches cluster1.
    let b = new_gateway(h, C2, "xh", &Harness::unique_name("xvpc")).await;
    let b_name = format!("{}-{C2}", b.spec.name);
    wait_exip(&exips(&c1), &b_name, ext_ip(&b.node.external_ip)).await;

    // Clean up: the forged objects and records go, and with them every copy.
    // One delete per object (a single DeleteCollection of 20,000 outlives a client timeout).
    let deleted = futures::stream::iter(0..FLOOD)
        .map(|i| {
            let broker = broker.clone();
            async move {
                broker
                    .delete(&format!("f{i}-cluster6"), &DeleteParams::default())
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(48)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    assert_eq!(deleted, FLOOD);
    for o in &hostile {
        let _ = broker.delete(&o.name_any(), &DeleteParams::default()).await;
    }
    let clusters = kube::api::ApiResource::erase::<multivpc_api::foreign::submariner::Cluster>(&());
    let clusters: Api<kube::api::DynamicObject> =
        Api::namespaced_with(h.client(BROKER), BROKER_NS, &clusters);
    for id in ["cluster5", "cluster6", "cluster7", "gw-cluster1"] {
        let _ = clusters.delete(id, &DeleteParams::default()).await;
    }
    h.delete_nat_gateway(&b).await.unwrap();
    wait_for("flood copies gone", Duration::from_secs(120), || async {
        let n = exips(&c1)
            .list(&ListParams::default().labels(&format!("{SUBMARINER_CLUSTER_ID}=cluster6")))
            .await?
            .items
            .len();
        Ok(if n == 0 {
            Check::Done(())
        } else {
            Check::Pending(format!("{n} copies left"))
        })
    })
    .await
    .unwrap();
}

/// Broker TLS trusts what Submariner's admiral trusts: ServiceDiscovery's CA, and the system
/// roots. With a CA in ServiceDiscovery that did not sign the broker's certificate (stale) and
/// the broker's real CA among the system roots (`SSL_CERT_FILE`), exip-syncer still connects;
/// with neither, it does not, and says why.
#[tokio::test]
async fn the_broker_is_trusted_through_the_system_roots_when_service_discovery_has_a_stale_ca() {
    use base64::Engine as _;
    use multivpc_api::foreign::submariner::ServiceDiscovery;
    let h = harness_or_skip!([C1, BROKER]);
    let _lock = h.exclusive("exip-syncer").await.unwrap();
    h.install_fleet(&[C1], BROKER).await.unwrap();
    let _sd_lock = h.exclusive("submariner").await.unwrap();
    let dir = h.run_dir().join(Harness::unique_name("roots"));
    std::fs::create_dir_all(&dir).unwrap();
    // A CA of its own, which signed nothing the broker serves.
    let (stale_key, stale_ca) = (dir.join("stale.key"), dir.join("stale.pem"));
    host_exec(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=stale-ca",
        "-keyout",
        stale_key.to_str().unwrap(),
        "-out",
        stale_ca.to_str().unwrap(),
    ])
    .await
    .unwrap()
    .check()
    .unwrap();
    let stale_b64 =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&stale_ca).unwrap());
    let access = h.broker_access(BROKER, C1).await.unwrap();
    let roots = dir.join("roots.pem");
    std::fs::write(
        &roots,
        base64::engine::general_purpose::STANDARD
            .decode(&access.ca_b64)
            .unwrap(),
    )
    .unwrap();
    let sds: Api<ServiceDiscovery> = Api::namespaced(h.client(C1), fixtures::SUBMARINER_NS);
    sds.patch(
        "service-discovery",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"brokerK8sCA": stale_b64}})),
    )
    .await
    .unwrap();

    for (roots, expect) in [(Some(&roots), 1.0), (None, 0.0)] {
        let env: Vec<(&str, String)> = roots
            .map(|r| ("SSL_CERT_FILE", r.display().to_string()))
            .into_iter()
            .collect();
        let mut p = controllers::spawn_with_env(
            h.run_dir(),
            "exip-syncer",
            &h.kubeconfig(C1),
            &env,
            &[],
            CONVERGE,
        )
        .await
        .unwrap();
        if expect == 1.0 {
            p.wait_metric("multivpc_broker_connected", CONVERGE, |v| v == 1.0)
                .await
                .unwrap();
        } else {
            let log = p.log.clone();
            wait_for("a refused broker connection", CONVERGE, || async {
                let text = std::fs::read_to_string(&log)?;
                Ok(if text.contains("cannot reach the broker") {
                    Check::Done(())
                } else {
                    Check::Pending("no attempt logged yet".into())
                })
            })
            .await
            .unwrap();
            assert_eq!(
                p.metric("multivpc_broker_connected").await.unwrap(),
                Some(0.0)
            );
        }
        assert!(p.stop().unwrap());
    }
    h.install_default_submariner(C1, Some(BROKER))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
