//! The generated CRDs: committed copies are fresh, and the schema carries the validations the
//! API server must enforce.

use std::{fs, path::Path};

use multivpc_api::{GatewayExIp, TunnelType, VpcDnsForward, VpcNatTunnel};
use serde_json::Value;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

/// Every directory that holds a committed copy of the generated CRDs, and which ones it holds
/// (empty: all). Keep in step with CRD_DIRS in the Makefile.
const CRD_DIRS: &[(&str, &[&str])] = &[
    ("crds", &[]),
    ("charts/kubeovn-multivpc/crds", &[]),
    ("charts/kubeovn-multivpc-broker/crds", &["gatewayexips"]),
];

#[test]
fn committed_crds_are_fresh() {
    for (dir, only) in CRD_DIRS {
        let dir = repo_root().join(dir);
        let wanted: Vec<(String, String)> = multivpc_api::crd::all()
            .into_iter()
            .filter(|(f, _)| only.is_empty() || only.iter().any(|p| multivpc_api::crd::is_of(f, p)))
            .collect();
        assert!(!wanted.is_empty(), "{} ships no CRD", dir.display());
        for (file, yaml) in &wanted {
            let path = dir.join(file);
            let committed = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
            assert!(
                committed == *yaml,
                "{} is stale; run `make crds` and commit the result",
                path.display()
            );
        }
        let extra: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !wanted.iter().any(|(f, _)| f == name))
            .collect();
        assert!(
            extra.is_empty(),
            "{} holds files that `make crds` does not generate: {extra:?}",
            dir.display()
        );
    }
}

fn schema_of(yaml: &str) -> Value {
    let crd: Value = serde_yaml::from_str(yaml).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn generated(plural: &str) -> Value {
    let (_, yaml) = multivpc_api::crd::all()
        .into_iter()
        .find(|(f, _)| f.contains(plural))
        .unwrap();
    serde_yaml::from_str(&yaml).unwrap()
}

#[test]
fn tunnel_schema_validates_at_admission() {
    let crd = generated("vpcnattunnels");
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let spec = &root["properties"]["spec"];

    // Root CEL rule: metadata.name is the interface name.
    let rule = root["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .unwrap();
    assert!(rule.contains("size(self.metadata.name) <= 15"), "{rule}");
    assert!(
        root["x-kubernetes-validations"][0]["message"]
            .as_str()
            .unwrap()
            .contains("metadata.name")
    );

    // Shapes.
    let props = &spec["properties"];
    assert_eq!(
        props["interfaceAddr"]["pattern"],
        multivpc_api::net::INTERFACE_ADDR_PATTERN
    );
    assert_eq!(props["type"]["enum"], serde_json::json!(["gre", "vxlan"]));
    assert_eq!(props["type"]["default"], "gre");
    assert_eq!(props["vni"]["minimum"], 1.0);
    assert_eq!(props["vni"]["maximum"], 16_777_215.0);
    assert_eq!(props["dstPort"]["minimum"], 1.0);
    assert_eq!(props["dstPort"]["maximum"], 65_535.0);
    assert_eq!(
        props["clusterId"]["pattern"],
        multivpc_api::net::DNS_LABEL_PATTERN
    );
    assert_eq!(
        spec["required"],
        serde_json::json!(["clusterId", "gatewayName", "interfaceAddr", "natGwDp"])
    );

    // vni/dstPort only with vxlan, reported on the field itself.
    let rules = spec["x-kubernetes-validations"].as_array().unwrap();
    let vni = rules
        .iter()
        .find(|r| r["fieldPath"] == ".vni")
        .expect("vni rule");
    assert_eq!(vni["rule"], "self.type == 'vxlan' || !has(self.vni)");
    let port = rules
        .iter()
        .find(|r| r["fieldPath"] == ".dstPort")
        .expect("dstPort rule");
    assert_eq!(port["rule"], "self.type == 'vxlan' || !has(self.dstPort)");

    // Names and columns.
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["vnt"])
    );
    let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Type",
            "Local GW",
            "Remote Cluster",
            "Remote GW",
            "Ready",
            "Healthy",
            "RTT",
            "Reason",
            "Age"
        ]
    );
    assert_eq!(
        crd["spec"]["versions"][0]["subresources"]["status"],
        serde_json::json!({})
    );
}

/// Conditions are a list-map keyed by type in both kinds with a status.
#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    for kind in ["vpcnattunnels", "vpcdnsforwards"] {
        let crd = generated(kind);
        let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{kind}"
        );
        let required = conditions["items"]["required"].as_array().unwrap();
        assert!(required.contains(&serde_json::json!("type")), "{kind}");
    }
}

#[test]
fn gatewayexip_and_forward_schemas() {
    let exip = generated("gatewayexips");
    let props = &exip["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(
        props["externalip"]["pattern"],
        multivpc_api::net::IPV4_PATTERN
    );
    assert_eq!(
        props["globalnetcidr"]["pattern"],
        multivpc_api::net::IPV4_CIDR_PATTERN
    );
    assert_eq!(
        exip["spec"]["names"]["shortNames"],
        serde_json::json!(["gwexip"])
    );

    let vdf = generated("vpcdnsforwards");
    let spec = &vdf["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["vpc"]));
    assert_eq!(
        spec["properties"]["vpc"]["pattern"],
        multivpc_api::net::OBJECT_NAME_PATTERN
    );
    assert_eq!(
        vdf["spec"]["names"]["shortNames"],
        serde_json::json!(["vdf"])
    );
}

/// `kubectl explain` is only useful when every field says what it is.
#[test]
fn every_field_has_a_description() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                // metadata/apiVersion/kind are described by Kubernetes itself.
                let builtin =
                    path.is_empty() && matches!(name.as_str(), "metadata" | "apiVersion" | "kind");
                if !builtin
                    && sub
                        .get("description")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(&here, sub, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    for (file, yaml) in multivpc_api::crd::all() {
        let mut missing = Vec::new();
        walk("", &schema_of(&yaml), &mut missing);
        assert!(
            missing.is_empty(),
            "{file}: fields without description: {missing:?}"
        );
    }
}

fn example(name: &str) -> String {
    fs::read_to_string(repo_root().join("examples").join(name)).unwrap()
}

#[test]
fn seed_examples_deserialize() {
    let dns: VpcDnsForward = serde_yaml::from_str(&example("dns.yaml")).unwrap();
    assert_eq!(dns.spec.vpc, "test-vpc-1");
    assert_eq!(dns.metadata.namespace.as_deref(), Some("ns1"));

    let tunnel: VpcNatTunnel = serde_yaml::from_str(&example("tunnel.yaml")).unwrap();
    assert_eq!(tunnel.metadata.name.as_deref(), Some("ovn-gre0"));
    assert_eq!(tunnel.spec.cluster_id, "cluster2");
    assert_eq!(tunnel.spec.gateway_name, "gw1");
    assert_eq!(tunnel.spec.interface_addr, "10.100.0.1/24");
    assert_eq!(tunnel.spec.nat_gw_dp, "gw1");
    assert_eq!(
        tunnel.spec.tunnel_type,
        TunnelType::Gre,
        "type defaults to gre"
    );
    assert_eq!(tunnel.spec.vni, None);

    let vxlan: VpcNatTunnel = serde_yaml::from_str(&example("vxlan-tunnel.yaml")).unwrap();
    assert_eq!(vxlan.spec.tunnel_type, TunnelType::Vxlan);
    assert_eq!(
        (vxlan.effective_vni(), vxlan.effective_dst_port()),
        (Ok(100), Ok(4789))
    );
    // A tunnel the Go operator wrote keeps its VNI and port from the labels vid / vx-port.
    let mut go = vxlan.clone();
    (go.spec.vni, go.spec.dst_port) = (None, None);
    go.metadata.labels = Some(
        [("vid", "4242"), ("vx-port", "8472")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    );
    assert_eq!(
        (go.effective_vni(), go.effective_dst_port()),
        (Ok(4242), Ok(8472))
    );
    go.metadata.labels = Some([("vid".to_string(), "x".to_string())].into());
    assert!(go.effective_vni().unwrap_err().contains("vid"));
    // The spec wins over the labels.
    go.spec.vni = Some(7);
    assert_eq!(go.effective_vni(), Ok(7));

    let seed_exip = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed-gatewayexip.yaml"),
    )
    .unwrap();
    let exip: GatewayExIp = serde_yaml::from_str(&seed_exip).unwrap();
    assert_eq!(exip.spec.externalip, "172.50.16.99");
    assert_eq!(exip.spec.globalnetcidr, "242.1.0.0/16");
    assert_eq!(exip.metadata.name.as_deref(), Some("gw1-cluster1"));
}

#[test]
fn seed_values_match_schema_patterns() {
    let cidr = regex::Regex::new(multivpc_api::net::IPV4_CIDR_PATTERN).unwrap();
    let ip = regex::Regex::new(multivpc_api::net::IPV4_PATTERN).unwrap();
    assert!(cidr.is_match("10.100.0.1/24"));
    assert!(cidr.is_match("242.1.0.0/16"));
    assert!(ip.is_match("172.50.16.99"));
    assert!(!cidr.is_match("10.0.0.1/24;reboot"));
}
