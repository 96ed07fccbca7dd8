//! Tests of the e2e harness itself (issue 3): versions, admission of the
//! project's CRDs, netns-backed gateway exec, VXLAN between clusters.
//!
//! Every test uses its own names (unique gateways / namespaces), so they may
//! run in parallel against one harness.
use multivpc_e2e::prelude::*;

const PINNED_K8S: &str = include_str!("../versions.env");

fn pinned_k8s_version() -> String {
    PINNED_K8S
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
        .expect("K8S_VERSION in e2e/versions.env")
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
