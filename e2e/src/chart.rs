//! The umbrella chart on a harness cluster, as a member cluster installs it: `helm install` with
//! the controllers' replicas at 0, and each controller run on the host with a token of its
//! chart ServiceAccount (kwok runs no containers), so the chart's RBAC is what they get.

use std::time::Duration;

use serde_json::json;

use crate::{Harness, apply_json, controllers, e2e_required, repo_dir, tool_path};

/// `charts/kubeovn-multivpc`.
pub fn chart_dir() -> String {
    repo_dir()
        .join("charts/kubeovn-multivpc")
        .to_string_lossy()
        .into_owned()
}

/// The harness's helm, or None (skip) when it is not built and MULTIVPC_E2E is not set.
pub fn helm_or_skip() -> Option<String> {
    let helm = tool_path("helm");
    if helm.exists() {
        return Some(helm.to_string_lossy().into_owned());
    }
    assert!(
        !e2e_required(),
        "{} missing: run `make e2e-build`",
        helm.display()
    );
    eprintln!(
        "SKIPPED chart test: no helm at {} (make e2e-build)",
        helm.display()
    );
    None
}

/// Creates namespace `name` on `cluster` if it is missing.
pub async fn ensure_namespace(h: &Harness, cluster: &str, name: &str) {
    apply_json(
        &h.client(cluster),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await
    .unwrap();
}

/// The chart's release on `cluster` in a fresh namespace `<prefix>-…`, without pods (the
/// controllers run on the host with its ServiceAccounts' tokens; `extra` are more `--set`
/// values): (release namespace, release name).
pub async fn install_without_pods(
    h: &Harness,
    cluster: &str,
    prefix: &str,
    extra: &[&str],
) -> (String, String) {
    ensure_namespace(h, cluster, "submariner-operator").await;
    let ns = h.unique_namespace(cluster, prefix).await.unwrap();
    let release = Harness::unique_name(prefix);
    let chart = chart_dir();
    let cluster_id = format!("global.clusterId={cluster}");
    let mut args = vec![
        "install",
        &release,
        &chart,
        "--namespace",
        &ns,
        "--skip-crds",
        "--set",
        &cluster_id,
        "--set",
        "dns-forwarder.replicas=0",
        "--set",
        "tunnel-manager.replicas=0",
        "--set",
        "exip-syncer.replicas=0",
    ];
    for e in extra {
        args.extend(["--set", e]);
    }
    h.helm(cluster, &args).await.unwrap().check().unwrap();
    (ns, release)
}

/// Starts `binary` on the host as the chart's ServiceAccount of release `ns/release` on
/// `cluster`, with the flags the chart's Deployment passes.
pub async fn run_as_chart(
    h: &Harness,
    cluster: &str,
    ns: &str,
    release: &str,
    binary: &str,
    extra: &[&str],
) -> controllers::ControllerProcess {
    let kc = h
        .service_account_kubeconfig(cluster, ns, &format!("{release}-{binary}"))
        .await
        .unwrap();
    let elect = format!("--leader-election-namespace={ns}");
    let id = format!("--cluster-id={cluster}");
    let mut args = vec!["--leader-elect", &elect, &id];
    args.extend_from_slice(extra);
    // Generous: a RoleBinding just created may take the API server a moment to honour, and
    // the watchers back off meanwhile.
    controllers::spawn(h.run_dir(), binary, &kc, &args, Duration::from_secs(120))
        .await
        .unwrap()
}

/// The controller's log shows no call the API server refused as forbidden.
pub fn assert_never_forbidden(ctl: &controllers::ControllerProcess) {
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    assert!(
        !log.contains("forbidden"),
        "{}: a call was forbidden:\n{log}",
        ctl.binary
    );
}

/// Uninstalls release `ns/release` from `cluster` and deletes its namespace.
pub async fn uninstall(h: &Harness, cluster: &str, ns: &str, release: &str) {
    h.helm(cluster, &["uninstall", release, "--namespace", ns])
        .await
        .unwrap()
        .check()
        .unwrap();
    h.delete_namespace(cluster, ns).await.unwrap();
}
