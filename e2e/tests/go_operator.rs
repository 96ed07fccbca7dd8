//! Objects of the original Go operator (its CRDs, verbatim in `e2e/fixtures/upstream/go-operator/`)
//! left behind locally and on the broker: after the switch to this project's CRDs they no longer
//! decode. They are skipped and counted; every controller still becomes ready, restarts, and
//! syncs everything else.
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
