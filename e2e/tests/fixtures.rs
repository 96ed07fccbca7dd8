//! The fixture builders produce what Kube-OVN and Submariner would, and the
//! control planes turn them into running pods and real status.
//!
//! Serialisation: `install_default_submariner` writes per-cluster singletons
//! (Cluster `<id>`, ClusterGlobalEgressIP, ServiceDiscovery); every caller
//! writes the same values, so concurrent calls are harmless. Tests that
//! change those singletons to other values must not run concurrently with
//! others on the same cluster.
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use multivpc_e2e::Harness;
use multivpc_e2e::fixtures::{KUBE_SYSTEM, SUBMARINER_NS};
use multivpc_e2e::prelude::*;

fn deployment_available(d: &Deployment) -> bool {
    d.status.as_ref().and_then(|s| s.available_replicas) == Some(1)
}

#[tokio::test]
async fn vpc_dns_deployments_of_both_kube_ovn_generations_run() {
    let h = harness_or_skip!(["cluster1"]);
    let dns_ip = h.install_cluster_network("cluster1").await.unwrap();
    assert!(!dns_ip.is_empty());
    let c = h.client("cluster1");
    let deps: Api<Deployment> = Api::namespaced(c.clone(), KUBE_SYSTEM);

    let old = Harness::unique_name("dns112");
    let d = h
        .install_vpc_dns(
            "cluster1",
            &old,
            "vpc-a",
            "vpc-a-subnet",
            VpcDnsForm::V112InitContainer,
        )
        .await
        .unwrap();
    let init = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0];
    assert_eq!(init.name, "init-route");
    let script = &init.command.as_ref().unwrap()[2];
    assert!(
        script.starts_with("ip -4 route add ") && script.ends_with(" via 10.244.0.1 dev net1;"),
        "{script}"
    );
    wait_for_object(
        &deps,
        &format!("vpc-dns-{old}"),
        Duration::from_secs(60),
        deployment_available,
    )
    .await
    .unwrap();

    let new = Harness::unique_name("dns113");
    let d = h
        .install_vpc_dns(
            "cluster1",
            &new,
            "vpc-b",
            "vpc-b-subnet",
            VpcDnsForm::V113RoutesAnnotation,
        )
        .await
        .unwrap();
    let tmpl = d.spec.as_ref().unwrap().template.clone();
    assert!(tmpl.spec.as_ref().unwrap().init_containers.is_none());
    let routes =
        &tmpl.metadata.unwrap().annotations.unwrap()["ovn-nad.default.ovn.kubernetes.io/routes"];
    let routes: serde_json::Value = serde_json::from_str(routes).unwrap();
    assert_eq!(routes[0]["gw"], "10.244.0.1");
    wait_for_object(
        &deps,
        &format!("vpc-dns-{new}"),
        Duration::from_secs(60),
        deployment_available,
    )
    .await
    .unwrap();

    // The VpcDns objects report active, as Kube-OVN would.
    let ar = ApiResource {
        group: "kubeovn.io".into(),
        version: "v1".into(),
        api_version: "kubeovn.io/v1".into(),
        kind: "VpcDns".into(),
        plural: "vpc-dnses".into(),
    };
    let vdns: Api<DynamicObject> = Api::all_with(c.clone(), &ar);
    assert_eq!(vdns.get(&old).await.unwrap().data["status"]["active"], true);

    for n in [old, new] {
        let _ = deps
            .delete(&format!("vpc-dns-{n}"), &Default::default())
            .await;
        let _ = vdns.delete(&n, &Default::default()).await;
    }
}

#[tokio::test]
async fn submariner_fixtures_point_at_the_broker_with_working_credentials() {
    let h = harness_or_skip!(["cluster1", "broker"]);
    let (cidr, egress) = h
        .install_default_submariner("cluster1", Some("broker"))
        .await
        .unwrap();
    assert_eq!(cidr, h.vpc_network("cluster1").unwrap().globalnet_cidr);
    let c = h.client("cluster1");
    let gvk = |g: &str, v: &str, k: &str, p: &str| ApiResource {
        group: g.into(),
        version: v.into(),
        api_version: format!("{g}/{v}"),
        kind: k.into(),
        plural: p.into(),
    };
    let clusters: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        SUBMARINER_NS,
        &gvk("submariner.io", "v1", "Cluster", "clusters"),
    );
    let cl = clusters.get("cluster1").await.unwrap();
    assert_eq!(cl.data["spec"]["global_cidr"][0], cidr.as_str());
    let egress_api: Api<DynamicObject> = Api::all_with(
        c.clone(),
        &gvk(
            "submariner.io",
            "v1",
            "ClusterGlobalEgressIP",
            "clusterglobalegressips",
        ),
    );
    let e = egress_api
        .get("cluster-egress.submariner.io")
        .await
        .unwrap();
    assert_eq!(e.data["status"]["allocatedIPs"], serde_json::json!(egress));

    // ServiceDiscovery carries working broker credentials (RBAC is real).
    let sds: Api<DynamicObject> = Api::namespaced_with(
        c,
        SUBMARINER_NS,
        &gvk(
            "submariner.io",
            "v1alpha1",
            "ServiceDiscovery",
            "servicediscoveries",
        ),
    );
    let sd = sds.get("service-discovery").await.unwrap();
    let spec = &sd.data["spec"];
    let server = format!("https://{}", spec["brokerK8sApiServer"].as_str().unwrap());
    assert_eq!(server, h.cluster("broker").server);
    let ca = base64_decode(spec["brokerK8sCA"].as_str().unwrap());
    let mut cfg = kube::Config::new(server.parse().unwrap());
    cfg.root_cert = Some(vec![pem_to_der(&ca)]);
    cfg.auth_info.token = Some(
        spec["brokerK8sApiServerToken"]
            .as_str()
            .unwrap()
            .to_string()
            .into(),
    );
    let broker_client = kube::Client::try_from(cfg).unwrap();
    let ns = spec["brokerK8sRemoteNamespace"].as_str().unwrap();
    // Exactly what Submariner's broker-client Role and the broker chart grant: GatewayExIps and
    // Submariner's Clusters in the broker namespace, nothing else there or anywhere else.
    let exips: Api<multivpc_api::GatewayExIp> = Api::namespaced(broker_client.clone(), ns);
    exips
        .list(&ListParams::default())
        .await
        .expect("the member token lists GatewayExIps in the broker namespace");
    let clusters: Api<DynamicObject> = Api::namespaced_with(
        broker_client.clone(),
        ns,
        &gvk("submariner.io", "v1", "Cluster", "clusters"),
    );
    clusters
        .list(&ListParams::default())
        .await
        .expect("the member token lists Submariner's Clusters in the broker namespace");
    for (namespace, what) in [
        (ns, "ConfigMaps of the broker namespace"),
        ("kube-system", "ConfigMaps of kube-system"),
    ] {
        let cms: Api<ConfigMap> = Api::namespaced(broker_client.clone(), namespace);
        let denied = cms.list(&ListParams::default()).await.unwrap_err();
        assert!(
            matches!(denied, kube::Error::Api(ref s) if s.code == 403),
            "{what}: {denied}"
        );
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&body)
}

/// The upstream objects under `e2e/fixtures/upstream/` are byte-for-byte the shared verbatim
/// copies (`../shared/upstream/`, beside the repository on the project's machines and in CI).
#[test]
fn upstream_fixtures_equal_the_shared_verbatim_copies() {
    let ours = multivpc_e2e::e2e_dir().join("fixtures/upstream");
    let shared = multivpc_e2e::repo_dir().join("../shared/upstream");
    if !shared.is_dir() {
        eprintln!(
            "\n### SKIPPED upstream_fixtures_equal_the_shared_verbatim_copies: no {}\n",
            shared.display()
        );
        return;
    }
    let mut compared = 0;
    for dir in std::fs::read_dir(&ours).unwrap() {
        let dir = dir.unwrap().path();
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let rel = file.strip_prefix(&ours).unwrap();
            let theirs = shared.join(rel);
            assert_eq!(
                std::fs::read(&file).unwrap(),
                std::fs::read(&theirs).unwrap_or_else(|e| panic!("{}: {e}", theirs.display())),
                "{} differs from {}",
                file.display(),
                theirs.display()
            );
            compared += 1;
        }
    }
    assert!(compared >= 5, "only {compared} upstream fixtures");
}
