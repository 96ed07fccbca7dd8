//! The Helm chart (charts/kubeovn-multivpc) with the harness's pinned helm: lint and render
//! every combination of enabled controllers (the exact objects), the values schema, install /
//! upgrade / uninstall on a real API server, and the chart's RBAC proven by running the
//! controller binaries with tokens of the chart's ServiceAccounts.

use std::collections::BTreeSet;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet, StatefulSet},
    authorization::v1::SelfSubjectAccessReview,
    core::v1::{Pod, Secret},
    events::v1::Event,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use multivpc_api::{GatewayExIp, VpcDnsForward, VpcNatTunnel, conditions, foreign::kubeovn::Vpc};
use multivpc_e2e::{
    Harness,
    chart::{
        assert_never_forbidden, chart_dir, ensure_namespace, helm_or_skip, install_without_pods,
        run_as_chart, uninstall,
    },
    controllers,
    fixtures::{KUBE_SYSTEM, VpcDnsForm},
    prelude::*,
};
use serde_json::{Value, json};

const CONTROLLERS: [&str; 3] = ["dns-forwarder", "tunnel-manager", "exip-syncer"];
const RELEASE: &str = "mv";
const NAMESPACE: &str = "mvns";

/// Runs helm with `args`; Ok(stdout) or Err(stderr).
async fn helm(bin: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = vec![bin];
    cmd.extend_from_slice(args);
    let out = host_exec(&cmd).await.map_err(|e| e.to_string())?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{}{}", out.stdout, out.stderr))
    }
}

/// `--set` arguments for a combination and extra values.
fn set_args(enabled: &[bool; 3], extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (c, on) in CONTROLLERS.iter().zip(enabled) {
        args.push("--set".into());
        args.push(format!("{c}.enabled={on}"));
    }
    for e in extra {
        args.push("--set".into());
        args.push(e.to_string());
    }
    args
}

/// `helm template` of the umbrella chart: the rendered documents.
async fn render(bin: &str, enabled: &[bool; 3], extra: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart_dir();
    let sets = set_args(enabled, extra);
    let mut args = vec![
        "template",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    args.extend(sets.iter().map(String::as_str));
    let text = helm(bin, &args).await?;
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(d).map_err(|e| e.to_string())?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// (kind, namespace, name) of every rendered object.
fn identities(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    docs.iter()
        .map(|d| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&d["kind"]),
                s(&d["metadata"]["namespace"]),
                s(&d["metadata"]["name"]),
            )
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// What the chart must render with its defaults for the enabled controllers, nothing more.
fn expected(enabled: &[bool; 3]) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    let mut add = |k: &str, ns: &str, n: &str| set.insert((k.into(), ns.into(), n.into()));
    for crd in [
        "gatewayexips.kubeovn.ustc.io",
        "vpcdnsforwards.kubeovn.ustc.io",
        "vpcnattunnels.kubeovn.ustc.io",
    ] {
        add("CustomResourceDefinition", "", crd);
    }
    for (c, on) in CONTROLLERS.iter().zip(enabled) {
        if !on {
            continue;
        }
        let full = format!("{RELEASE}-{c}");
        let global = format!("{NAMESPACE}-{full}");
        add("ServiceAccount", NAMESPACE, &full);
        add("Deployment", NAMESPACE, &full);
        add("Service", NAMESPACE, &format!("{full}-metrics"));
        for k in ["Role", "RoleBinding"] {
            add(k, NAMESPACE, &format!("{full}-leader-election"));
        }
        for k in [
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ] {
            add(k, "", &global);
        }
        let roles: &[(&str, &str)] = match *c {
            "dns-forwarder" => &[("kube-system", ""), ("kube-system", "-cluster-dns")],
            "tunnel-manager" => &[
                ("kube-system", "-gateway-pods"),
                ("kube-system", "-gatewayexips"),
                ("submariner-operator", "-submariner"),
            ],
            _ => &[
                ("kube-system", "-gateway-pods"),
                ("kube-system", "-gateways"),
                ("submariner-operator", "-submariner"),
            ],
        };
        for (ns, suffix) in roles {
            for k in ["Role", "RoleBinding"] {
                add(k, ns, &format!("{global}{suffix}"));
            }
        }
    }
    set
}

#[tokio::test]
async fn every_combination_lints_and_renders_exactly_the_expected_objects() {
    let Some(bin) = helm_or_skip() else { return };
    let chart = chart_dir();
    for mask in 0..8u8 {
        let enabled = [mask & 1 != 0, mask & 2 != 0, mask & 4 != 0];
        let sets = set_args(&enabled, &[]);
        let mut lint = vec!["lint", "--strict", &chart];
        lint.extend(sets.iter().map(String::as_str));
        helm(&bin, &lint)
            .await
            .unwrap_or_else(|e| panic!("helm lint {enabled:?}: {e}"));
        let docs = render(&bin, &enabled, &[]).await.unwrap();
        let got = identities(&docs);
        let want = expected(&enabled);
        assert_eq!(
            got,
            want,
            "{enabled:?}: extra {:?}, missing {:?}",
            got.difference(&want).collect::<Vec<_>>(),
            want.difference(&got).collect::<Vec<_>>()
        );
        // No wildcard anywhere, pods/exec only for tunnel-manager and only in kube-system,
        // Secrets never (the default broker credentials come from ServiceDiscovery).
        for d in docs
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("Role" | "ClusterRole")))
        {
            let name = d["metadata"]["name"].as_str().unwrap();
            for rule in d["rules"].as_array().unwrap() {
                let text = rule.to_string();
                assert!(!text.contains('*'), "wildcard in {name}: {text}");
                assert!(!text.contains("secrets"), "Secrets in {name}: {text}");
                if text.contains("pods/exec") {
                    assert!(name.ends_with("tunnel-manager-gateway-pods"), "{name}");
                    assert_eq!(d["metadata"]["namespace"], "kube-system");
                }
            }
        }
    }
}

/// IPsec values: off by default (no flag, no Secret anywhere in the RBAC); with the Secret
/// named, tunnel-manager gets the three flags and `get` on that one Secret, in its namespace,
/// bound to its own service account.
#[tokio::test]
async fn ipsec_values_pass_their_flags_and_grant_get_on_that_secret_only() {
    let Some(bin) = helm_or_skip() else { return };
    let all = [true; 3];
    let args = |docs: &[Value]| -> Vec<String> {
        find(docs, "Deployment", &format!("{RELEASE}-tunnel-manager"))["spec"]["template"]["spec"]
            ["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let off = render(&bin, &all, &[]).await.unwrap();
    assert!(
        !args(&off).iter().any(|a| a.contains("ipsec")),
        "{:?}",
        args(&off)
    );
    let on = render(
        &bin,
        &all,
        &[
            "tunnel-manager.ipsec.pskSecret=submariner-operator/submariner-ipsec-psk",
            "tunnel-manager.ipsec.pskKey=key.1",
            "tunnel-manager.ipsec.rekeyInterval=30m",
        ],
    )
    .await
    .unwrap();
    let got = args(&on);
    for want in [
        "--ipsec-psk-secret=submariner-operator/submariner-ipsec-psk",
        "--ipsec-psk-key=key.1",
        "--ipsec-rekey-interval=30m",
    ] {
        assert!(got.iter().any(|a| a == want), "{want} not in {got:?}");
    }
    let name = format!("{RELEASE}-tunnel-manager-ipsec-psk");
    let role = find(&on, "Role", &name);
    assert_eq!(role["metadata"]["namespace"], "submariner-operator");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"],
                "resourceNames": ["submariner-ipsec-psk"], "verbs": ["get"]}])
    );
    let binding = find(&on, "RoleBinding", &name);
    assert_eq!(binding["metadata"]["namespace"], "submariner-operator");
    assert_eq!(binding["roleRef"]["name"], name.as_str());
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": format!("{RELEASE}-tunnel-manager"),
                "namespace": NAMESPACE}])
    );
    // No other role of any controller names a Secret.
    let secret_roles: Vec<&str> = on
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Role" | "ClusterRole")))
        .filter(|d| d["rules"].to_string().contains("secrets"))
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(secret_roles, [name.as_str()]);
}

#[tokio::test]
async fn deployments_are_restricted_probed_and_scrapable() {
    let Some(bin) = helm_or_skip() else { return };
    let all = [true; 3];
    let docs = render(&bin, &all, &["global.clusterId=cluster1"])
        .await
        .unwrap();
    for c in CONTROLLERS {
        let full = format!("{RELEASE}-{c}");
        let d = find(&docs, "Deployment", &full);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], full.as_str());
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let ctr = &pod["containers"][0];
        assert_eq!(ctr["image"], format!("ghcr.io/kubeovn-multivpc/{c}:0.1.0"));
        let sc = &ctr["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(ctr["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(ctr["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(ctr["livenessProbe"]["httpGet"]["port"], "health");
        assert!(ctr["resources"]["requests"].is_object());
        let args: Vec<&str> = ctr["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&"--leader-elect"), "{args:?}");
        assert!(
            args.contains(&"--health-probe-bind-address=:8081"),
            "{args:?}"
        );
        let env = ctr["env"].as_array().unwrap();
        let var = |n: &str| env.iter().find(|e| e["name"] == n).cloned();
        assert_eq!(
            var("POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            var("POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(
            var("LEADER_ELECTION_NAMESPACE").unwrap()["value"],
            NAMESPACE
        );
        assert_eq!(var("CLUSTER_ID").unwrap()["value"], "cluster1");
        let svc = find(&docs, "Service", &format!("{full}-metrics"));
        let ann = &svc["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/scrape"], "true");
        assert_eq!(ann["prometheus.io/port"], "8080");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    }

    // replicas > 1: a PodDisruptionBudget, and leader election even when switched off.
    let docs = render(
        &bin,
        &all,
        &[
            "tunnel-manager.replicas=2",
            "global.leaderElection.enabled=false",
        ],
    )
    .await
    .unwrap();
    let pdbs: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(pdbs, ["mv-tunnel-manager"]);
    let tm = find(&docs, "Deployment", "mv-tunnel-manager");
    assert!(tm.to_string().contains("--leader-elect"));
    assert_eq!(tm["spec"]["strategy"]["type"], "RollingUpdate");
    let dns = find(&docs, "Deployment", "mv-dns-forwarder");
    assert!(!dns.to_string().contains("--leader-elect"));
    // Without leader election an update must never run two controllers at once.
    assert_eq!(dns["spec"]["strategy"]["type"], "Recreate");
    assert!(!identities(&docs).contains(&(
        "Role".into(),
        NAMESPACE.into(),
        "mv-dns-forwarder-leader-election".into()
    )));

    // ServiceMonitor: only when asked for and the cluster serves monitoring.coreos.com/v1.
    let on = ["dns-forwarder.serviceMonitor.enabled=true"];
    let count = |docs: &[Value]| {
        docs.iter()
            .filter(|d| d["kind"] == "ServiceMonitor")
            .count()
    };
    assert_eq!(count(&render(&bin, &all, &on).await.unwrap()), 0);
    let chart = chart_dir();
    let text = helm(
        &bin,
        &[
            "template",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--api-versions",
            "monitoring.coreos.com/v1",
            "--set",
            on[0],
        ],
    )
    .await
    .unwrap();
    assert_eq!(text.matches("kind: ServiceMonitor").count(), 1, "{text}");

    // Broker credentials from a Secret: one Role naming that Secret, in the release namespace.
    let docs = render(
        &bin,
        &all,
        &[
            "global.broker.credentials=secret",
            "global.broker.secretName=brk",
        ],
    )
    .await
    .unwrap();
    let role = find(&docs, "Role", "mv-exip-syncer-broker-secret");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["brk"], "verbs": ["get"]}])
    );
    let env = find(&docs, "Deployment", "mv-exip-syncer").to_string();
    assert!(env.contains("secret:mvns/brk"), "{env}");
    assert!(
        render(&bin, &all, &["global.broker.credentials=secret"])
            .await
            .unwrap_err()
            .contains("secretName is required")
    );
}

/// The chart's args and env are read by each binary's own flag parser: a value the chart renders
/// under a flag name the binary does not know (or in a form it refuses) fails here, not in a
/// crash-looping pod. The binaries then stop at the missing cluster, with one line.
#[tokio::test]
async fn every_rendered_flag_and_variable_is_accepted_by_its_binary() {
    let Some(bin) = helm_or_skip() else { return };
    let docs = render(
        &bin,
        &[true; 3],
        &[
            "global.clusterId=cluster1",
            "global.logLevel=debug",
            "exip-syncer.maxImportedPerCluster=7",
            "exip-syncer.maxImported=70",
            "exip-syncer.globalnetCidr=242.1.0.0/16",
            "exip-syncer.failback=auto",
            "tunnel-manager.verifyInterval=2m",
            "tunnel-manager.ipsec.pskSecret=submariner-operator/submariner-ipsec-psk",
            "tunnel-manager.ipsec.rekeyInterval=30m",
        ],
    )
    .await
    .unwrap();
    for c in CONTROLLERS {
        let path = controllers::binary_dir().join(c);
        if !path.exists() {
            assert!(!multivpc_e2e::e2e_required(), "{} missing", path.display());
            eprintln!("SKIPPED: no {} (cargo build -p {c})", path.display());
            continue;
        }
        let ctr = &find(&docs, "Deployment", &format!("{RELEASE}-{c}"))["spec"]["template"]["spec"]
            ["containers"][0];
        // Loopback listeners instead of the pod's all-interfaces ports.
        let mut args: Vec<String> = ctr["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .filter(|a| !a.contains("-bind-address="))
            .collect();
        args.push("--metrics-bind-address=127.0.0.1:0".into());
        args.push("--health-probe-bind-address=127.0.0.1:0".into());
        let mut cmd = tokio::process::Command::new(&path);
        cmd.args(&args)
            .env_clear()
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("RUST_BACKTRACE", "1")
            .stdin(std::process::Stdio::null());
        for var in ctr["env"].as_array().unwrap() {
            if let Some(value) = var["value"].as_str() {
                cmd.env(var["name"].as_str().unwrap(), value);
            }
        }
        let out = cmd.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{c} {args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("{c}: error: no usable Kubernetes configuration")),
            "{c} refused the chart's flags {args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn values_schema_rejects_wrong_types_and_unknown_keys() {
    let Some(bin) = helm_or_skip() else { return };
    let all = [true; 3];
    for (bad, says) in [
        ("dns-forwarder.replicas=two", "want integer"),
        ("tunnel-manager.enabled=yes", "enabled"),
        ("global.logFormat=xml", "logFormat"),
        ("global.leaderElection.enabled=1", "want boolean"),
        ("global.clusterId=Cluster_1", "clusterId"),
        ("exip-syncer.failback=sometimes", "failback"),
        (
            "exip-syncer.maxImportedPerCluster=0",
            "maxImportedPerCluster",
        ),
        ("exip-syncer.maxImported=many", "want integer"),
        (
            "tunnel-manager.maxConcurrentExecs=1000",
            "maxConcurrentExecs",
        ),
        ("dns-forwarder.metrics.port=http", "want integer"),
        ("dns-forwarder.replica=2", "replica"),
        ("global.broker.credentials=token", "credentials"),
        (
            "tunnel-manager.ipsec.pskSecret=submariner-ipsec-psk",
            "pskSecret",
        ),
        ("tunnel-manager.ipsec.rekeyInterval=1d", "rekeyInterval"),
    ] {
        let err = render(&bin, &all, &[bad])
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} was accepted"));
        assert!(err.contains("schema") && err.contains(says), "{bad}: {err}");
        let chart = chart_dir();
        assert!(
            helm(&bin, &["lint", &chart, "--set", bad]).await.is_err(),
            "helm lint accepted {bad}"
        );
    }
}

#[test]
fn shared_templates_are_identical_in_every_subchart() {
    let base = multivpc_e2e::repo_dir().join("charts/kubeovn-multivpc/charts");
    for f in [
        "_common.tpl",
        "deployment.yaml",
        "service.yaml",
        "serviceaccount.yaml",
        "servicemonitor.yaml",
        "pdb.yaml",
        "leader-election.yaml",
    ] {
        let read =
            |c: &str| std::fs::read_to_string(base.join(c).join("templates").join(f)).unwrap();
        let first = read(CONTROLLERS[0]);
        for c in &CONTROLLERS[1..] {
            assert!(
                read(c) == first,
                "charts/{c}/templates/{f} differs from dns-forwarder's"
            );
        }
    }
}

#[tokio::test]
async fn grafana_dashboard_configmap_renders_only_when_enabled() {
    let Some(bin) = helm_or_skip() else { return };
    let name = format!("{RELEASE}-grafana-dashboard");
    let docs = render(&bin, &[true; 3], &[]).await.unwrap();
    assert!(
        !docs.iter().any(|d| d["kind"] == "ConfigMap"),
        "a ConfigMap rendered with the defaults"
    );
    let shipped: Value = serde_json::from_str(multivpc_e2e::dashboard::DASHBOARD).unwrap();
    // No subchart enabled: the template must not lean on their helpers.
    let docs = render(
        &bin,
        &[false; 3],
        &[
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.annotations.grafana_folder=Networking",
        ],
    )
    .await
    .unwrap();
    let cm = find(&docs, "ConfigMap", &name);
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/instance"],
        RELEASE
    );
    assert_eq!(
        cm["metadata"]["annotations"]["grafana_folder"],
        "Networking"
    );
    let data = cm["data"]["kubeovn-multivpc.json"].as_str().unwrap();
    let got: Value = serde_json::from_str(data).expect("the ConfigMap's dashboard is JSON");
    assert_eq!(got, shipped);
    // Another sidecar label; `--set labelValue=1` is an integer and must still be a string.
    let docs = render(
        &bin,
        &[true; 3],
        &[
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.label=example.com/dashboards",
            "grafanaDashboard.labelValue=1",
        ],
    )
    .await
    .unwrap();
    let cm = find(&docs, "ConfigMap", &name);
    assert_eq!(cm["metadata"]["namespace"], NAMESPACE);
    assert_eq!(cm["metadata"]["labels"]["example.com/dashboards"], "1");
    assert!(cm["metadata"]["labels"].get("grafana_dashboard").is_none());
    let chart = chart_dir();
    helm(
        &bin,
        &[
            "lint",
            "--strict",
            &chart,
            "--set",
            "grafanaDashboard.enabled=true",
        ],
    )
    .await
    .unwrap();
    for (bad, says) in [
        ("grafanaDashboard.enable=true", "enable"),
        ("grafanaDashboard.label=not a label", "label"),
        ("grafanaDashboard.namespace=Monitoring", "namespace"),
    ] {
        let err = render(&bin, &[true; 3], &[bad])
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} was accepted"));
        assert!(err.contains("schema") && err.contains(says), "{bad}: {err}");
    }
}

async fn deployment(c: &Client, ns: &str, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(c.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

#[tokio::test]
async fn install_upgrade_rolls_the_deployment_and_uninstall_keeps_crds_and_objects() {
    const CLUSTER: &str = "cluster2";
    let h = harness_or_skip!([CLUSTER]);
    let Some(_) = helm_or_skip() else { return };
    let c = h.client(CLUSTER);
    ensure_namespace(&h, CLUSTER, "submariner-operator").await;
    let ns = h.unique_namespace(CLUSTER, "chart").await.unwrap();
    let release = Harness::unique_name("rel");
    let chart = chart_dir();
    let install = |extra: &'static str| {
        let (h, ns, release, chart) = (h.clone(), ns.clone(), release.clone(), chart.clone());
        async move {
            h.helm(
                CLUSTER,
                &[
                    "upgrade",
                    "--install",
                    &release,
                    &chart,
                    "--namespace",
                    &ns,
                    "--set",
                    "global.clusterId=cluster2",
                    "--set",
                    extra,
                    "--wait",
                    "--timeout",
                    "120s",
                ],
            )
            .await
            .unwrap()
            .check()
            .unwrap()
        }
    };
    install("global.logLevel=info").await;
    let deployments = [
        format!("{release}-dns-forwarder"),
        format!("{release}-tunnel-manager"),
        format!("{release}-exip-syncer"),
    ];
    // `helm --wait` can return a moment before kube-controller-manager counts the ready pod in
    // the Deployment's status (seen once in CI): wait for the count, within a bound.
    let api = Api::<Deployment>::namespaced(c.clone(), &ns);
    for d in &deployments {
        wait_for_object(&api, d, Duration::from_secs(60), |dep: &Deployment| {
            dep.status.as_ref().and_then(|s| s.ready_replicas) == Some(1)
        })
        .await
        .unwrap_or_else(|e| panic!("{d} never counted 1 ready replica: {e:#}"));
    }
    let crds = h
        .kubectl(CLUSTER, &["get", "crd", "-o", "name"])
        .await
        .unwrap()
        .stdout;
    for crd in ["vpcdnsforwards", "vpcnattunnels", "gatewayexips"] {
        assert!(crds.contains(&format!("{crd}.kubeovn.ustc.io")), "{crds}");
    }
    // A user's object, made while the chart is installed.
    apply_json(
        &c,
        json!({"apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcDnsForward",
               "metadata": {"name": "users-own", "namespace": ns}, "spec": {"vpc": "vpc-x"}}),
    )
    .await
    .unwrap();

    // Upgrade with a changed value: a new pod template (new ReplicaSet hash), generation + 1.
    let target = &deployments[0];
    let before = deployment(&c, &ns, target).await;
    install("global.logLevel=debug").await;
    let after = deployment(&c, &ns, target).await;
    assert_eq!(
        after.metadata.generation.unwrap(),
        before.metadata.generation.unwrap() + 1
    );
    let status = after.status.clone().unwrap();
    assert_eq!(status.observed_generation, after.metadata.generation);
    assert_eq!(status.updated_replicas, Some(1));
    let env = serde_json::to_string(&after.spec.unwrap().template).unwrap();
    assert!(env.contains("\"debug\""), "{env}");
    let rs: Api<ReplicaSet> = Api::namespaced(c.clone(), &ns);
    let hashes: BTreeSet<String> = rs
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={release},app.kubernetes.io/name=dns-forwarder"
        )))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.labels().get("pod-template-hash").cloned())
        .collect();
    assert_eq!(hashes.len(), 2, "one ReplicaSet per template: {hashes:?}");

    // Uninstall: the chart's objects go, the CRDs and the user's object stay.
    h.helm(
        CLUSTER,
        &["uninstall", &release, "--namespace", &ns, "--wait"],
    )
    .await
    .unwrap()
    .check()
    .unwrap();
    let left = Api::<Deployment>::namespaced(c.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(left.items.is_empty(), "Deployments left after uninstall");
    let crds = h
        .kubectl(CLUSTER, &["get", "crd", "-o", "name"])
        .await
        .unwrap()
        .stdout;
    for crd in ["vpcdnsforwards", "vpcnattunnels", "gatewayexips"] {
        assert!(crds.contains(&format!("{crd}.kubeovn.ustc.io")), "{crds}");
    }
    let forwards: Api<VpcDnsForward> = Api::namespaced(c.clone(), &ns);
    assert!(forwards.get_opt("users-own").await.unwrap().is_some());
    h.delete_namespace(CLUSTER, &ns).await.unwrap();
}

/// SelfSubjectAccessReview with `client`'s credentials.
async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: &str,
    name: &str,
) -> bool {
    let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource, "subresource": sub,
            "namespace": ns, "name": name,
        }}
    }))
    .unwrap();
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    api.create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

#[tokio::test]
async fn chart_service_accounts_are_enough_for_the_controllers_and_nothing_more() {
    const CLUSTER: &str = "cluster1";
    let h = harness_or_skip!([CLUSTER]);
    let Some(_) = helm_or_skip() else { return };
    let c = h.client(CLUSTER);
    h.install_project_crds(CLUSTER).await.unwrap();
    h.install_foreign_crds(CLUSTER).await.unwrap();
    ensure_namespace(&h, CLUSTER, "submariner-operator").await;
    let ns = h.unique_namespace(CLUSTER, "rbac").await.unwrap();
    // GatewayExIps in a namespace of this test, so nothing here touches other tests' gateways.
    let gw_ns = h.unique_namespace(CLUSTER, "rbacgw").await.unwrap();
    let release = Harness::unique_name("rbac");
    let chart = chart_dir();
    let gw_set = format!("global.gatewayNamespace={gw_ns}");
    // The chart's objects without pods: the controllers run on the host with the chart's
    // ServiceAccounts instead.
    h.helm(
        CLUSTER,
        &[
            "install",
            &release,
            &chart,
            "--namespace",
            &ns,
            "--skip-crds",
            "--set",
            "global.clusterId=cluster1",
            "--set",
            &gw_set,
            "--set",
            "global.broker.credentials=none",
            "--set",
            "dns-forwarder.replicas=0",
            "--set",
            "tunnel-manager.replicas=0",
            "--set",
            "exip-syncer.replicas=0",
        ],
    )
    .await
    .unwrap()
    .check()
    .unwrap();
    let sa = |c: &str| format!("{release}-{c}");
    let kubeconfig = |c: &'static str| {
        let (h, ns, name) = (h.clone(), ns.clone(), sa(c));
        async move {
            h.service_account_kubeconfig(CLUSTER, &ns, &name)
                .await
                .unwrap()
        }
    };
    let client_of = |c: &'static str| {
        let (h, ns, name) = (h.clone(), ns.clone(), sa(c));
        async move { h.service_account_client(CLUSTER, &ns, &name).await.unwrap() }
    };
    let elect = format!("--leader-election-namespace={ns}");

    // Nothing the chart grants reads Secrets, anywhere.
    for ctl in CONTROLLERS {
        let sc = client_of(ctl).await;
        assert!(
            !can(&sc, "list", "", "secrets", "", "").await,
            "{ctl} lists Secrets"
        );
        assert!(
            !can(&sc, "get", "", "secrets", "kube-system", "x").await,
            "{ctl}"
        );
        assert!(!can(&sc, "get", "", "secrets", &ns, "x").await, "{ctl}");
        let err = Api::<Secret>::all(sc.clone())
            .list(&ListParams::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 403),
            "{ctl}: {err}"
        );
        assert!(
            !can(&sc, "create", "", "pods", "kube-system", "").await,
            "{ctl}"
        );
    }

    // dns-forwarder: its scenario (a forward becomes Programmed, its delete cleans up).
    {
        let _lock = h.exclusive("dns-forwarder").await.unwrap();
        h.install_cluster_network(CLUSTER).await.unwrap();
        let (vpc, dns) = (
            Harness::unique_name("rbacvpc"),
            Harness::unique_name("rbacdns"),
        );
        h.install_vpc_dns(
            CLUSTER,
            &dns,
            &vpc,
            "sub-rbac",
            VpcDnsForm::V113RoutesAnnotation,
        )
        .await
        .unwrap();
        let kc = kubeconfig("dns-forwarder").await;
        let mut ctl = controllers::spawn(
            h.run_dir(),
            "dns-forwarder",
            &kc,
            &["--leader-elect", &elect],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let forwards: Api<VpcDnsForward> = Api::namespaced(c.clone(), &ns);
        fixtures::admit_namespace(&c, &vpc, &ns).await.unwrap();
        apply_json(
            &c,
            json!({"apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcDnsForward",
                   "metadata": {"name": "rbac", "namespace": ns}, "spec": {"vpc": vpc}}),
        )
        .await
        .unwrap();
        let programmed = |f: &VpcDnsForward| {
            let status = f.status.clone().unwrap_or_default();
            conditions::find(&status.conditions, conditions::READY)
                .is_some_and(|c| c.status == "True" && c.reason == "Programmed")
        };
        if let Err(e) =
            wait_for_object(&forwards, "rbac", Duration::from_secs(30), programmed).await
        {
            panic!("{e:#}\nlog:\n{}", ctl.log_tail(40));
        }
        let dep: Api<Deployment> = Api::namespaced(c.clone(), "kube-system");
        let routes = dep.get(&format!("vpc-dns-{dns}")).await.unwrap();
        assert!(serde_json::to_string(&routes.spec).unwrap().contains("/32"));
        forwards.delete("rbac", &Default::default()).await.unwrap();
        wait_for_deletion(&forwards, "rbac", Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", ctl.log_tail(40)));
        assert_never_forbidden(&ctl);
        assert!(ctl.stop().unwrap(), "dns-forwarder did not exit cleanly");
        let sc = client_of("dns-forwarder").await;
        assert!(!can(&sc, "create", "", "pods/exec", "kube-system", "").await);
        assert!(!can(&sc, "get", "", "pods/exec", "kube-system", "").await);
        assert!(!can(&sc, "patch", "", "configmaps", "kube-system", "coredns").await);
        assert!(
            can(
                &sc,
                "patch",
                "",
                "configmaps",
                "kube-system",
                "vpc-dns-corefile"
            )
            .await
        );
        assert!(!can(&sc, "patch", "apps", "deployments", "default", "x").await);
        assert!(!can(&sc, "patch", "kubeovn.ustc.io", "vpcnattunnels", &ns, "x").await);
    }

    // tunnel-manager and exip-syncer act on every object of their kind in the cluster: hold
    // their locks (in the order their own tests take them) while one runs.
    let _syncer_lock = h.exclusive("exip-syncer").await.unwrap();
    let _manager_lock = h.exclusive("tunnel-manager").await.unwrap();

    // tunnel-manager: every cache syncs with the chart's grants (Ready); exec only in kube-system.
    let kc = kubeconfig("tunnel-manager").await;
    let gw_env = format!("--gateway-namespace={gw_ns}");
    let mut tm = controllers::spawn(
        h.run_dir(),
        "tunnel-manager",
        &kc,
        &["--leader-elect", &elect, "--cluster-id=cluster1", &gw_env],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let sc = client_of("tunnel-manager").await;
    assert!(
        can(
            &sc,
            "create",
            "",
            "pods/exec",
            "kube-system",
            "vpc-nat-gw-x-0"
        )
        .await
    );
    assert!(can(&sc, "get", "", "pods/exec", "kube-system", "vpc-nat-gw-x-0").await);
    assert!(!can(&sc, "create", "", "pods/exec", "default", "x").await);
    assert!(!can(&sc, "create", "", "pods/exec", &ns, "x").await);
    assert!(
        can(
            &sc,
            "patch",
            "kubeovn.ustc.io",
            "vpcnattunnels/status",
            "default",
            "x"
        )
        .await
    );
    assert!(!can(&sc, "patch", "kubeovn.ustc.io", "gatewayexips", &gw_ns, "x").await);
    assert!(!can(&sc, "delete", "", "pods", "kube-system", "x").await);
    // The cluster ID is known: neither ServiceDiscovery (it holds the broker token) nor other
    // clusters' Cluster objects.
    for verb in ["get", "list", "watch"] {
        assert!(
            !can(
                &sc,
                verb,
                "submariner.io",
                "servicediscoveries",
                "submariner-operator",
                "service-discovery"
            )
            .await
        );
    }
    assert!(
        can(
            &sc,
            "watch",
            "submariner.io",
            "clusters",
            "submariner-operator",
            "cluster1"
        )
        .await
    );
    assert!(
        !can(
            &sc,
            "watch",
            "submariner.io",
            "clusters",
            "submariner-operator",
            "cluster2"
        )
        .await
    );
    assert!(tm.stop().unwrap(), "tunnel-manager did not exit cleanly");
    assert_never_forbidden(&tm);

    // exip-syncer: Ready with the chart's grants; it owns GatewayExIps (server-side apply
    // needs "create" as well as "patch" for a new one), repoints VPC routes, and reads no Secret.
    let kc = kubeconfig("exip-syncer").await;
    let mut es = controllers::spawn(
        h.run_dir(),
        "exip-syncer",
        &kc,
        &[
            "--leader-elect",
            &elect,
            "--cluster-id=cluster1",
            &gw_env,
            "--broker-credentials=none",
        ],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let sc = client_of("exip-syncer").await;
    let exips: Api<GatewayExIp> = Api::namespaced(sc.clone(), &gw_ns);
    let exip = json!({"apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
        "metadata": {"name": "rbac-cluster9", "namespace": gw_ns},
        "spec": {"externalip": "172.50.9.9", "globalnetcidr": "242.9.0.0/16"}});
    exips
        .patch(
            "rbac-cluster9",
            &PatchParams::apply("rbac-test").force(),
            &Patch::Apply(&exip),
        )
        .await
        .expect("server-side apply creates a GatewayExIp with the chart's grants");
    // (exip-syncer may already have removed it: it is no GatewayExIp of this cluster's.)
    let _ = exips.delete("rbac-cluster9", &Default::default()).await;
    assert!(can(&sc, "patch", "kubeovn.io", "vpcs", "", "vpc-x").await);
    assert!(!can(&sc, "delete", "kubeovn.io", "vpcs", "", "vpc-x").await);
    assert!(
        !can(
            &sc,
            "patch",
            "kubeovn.ustc.io",
            "gatewayexips",
            "kube-system",
            "x"
        )
        .await
    );
    assert!(!can(&sc, "create", "", "pods/exec", &gw_ns, "x").await);
    assert!(
        can(
            &sc,
            "get",
            "submariner.io",
            "servicediscoveries",
            "submariner-operator",
            "service-discovery"
        )
        .await
    );
    assert!(
        !can(
            &sc,
            "get",
            "submariner.io",
            "servicediscoveries",
            "submariner-operator",
            "other"
        )
        .await
    );
    assert!(es.stop().unwrap(), "exip-syncer did not exit cleanly");
    assert_never_forbidden(&es);

    uninstall(&h, CLUSTER, &ns, &release).await;
    h.delete_namespace(CLUSTER, &gw_ns).await.unwrap();
}

#[tokio::test]
async fn make_deploy_renders_a_deploy_yaml_that_kubectl_applies() {
    const CLUSTER: &str = "cluster2";
    let h = harness_or_skip!([CLUSTER]);
    let Some(_) = helm_or_skip() else { return };
    ensure_namespace(&h, CLUSTER, "submariner-operator").await;
    let ns = Harness::unique_name("deploy");
    let dir = h.run_dir().join("deploy");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{ns}.yaml"));
    let repo = multivpc_e2e::repo_dir();
    host_exec(&[
        "make",
        "-s",
        "-C",
        repo.to_str().unwrap(),
        "deploy",
        "IMG=registry.example.com:5000/team/multivpc:v1.2.3",
        "CLUSTER_ID=cluster2",
        &format!("DEPLOY_NAMESPACE={ns}"),
        &format!("DEPLOY_FILE={}", file.display()),
        "HELM_VALUES=--set exip-syncer.enabled=false",
    ])
    .await
    .unwrap()
    .check()
    .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    // The seed's order: the Namespace, then the CRDs, then everything else.
    assert_eq!(docs[0]["kind"], "Namespace");
    assert!(
        docs[1..4]
            .iter()
            .all(|d| d["kind"] == "CustomResourceDefinition")
    );
    let images: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        images,
        BTreeSet::from([
            "registry.example.com:5000/team/multivpc/dns-forwarder:v1.2.3",
            "registry.example.com:5000/team/multivpc/tunnel-manager:v1.2.3",
        ])
    );
    let out = h
        .kubectl(CLUSTER, &["apply", "-f", file.to_str().unwrap()])
        .await
        .unwrap()
        .check()
        .unwrap();
    assert!(
        out.stdout
            .contains("deployment.apps/kubeovn-multivpc-tunnel-manager created"),
        "{}",
        out.stdout
    );
    let c = h.client(CLUSTER);
    let dep = deployment(&c, &ns, "kubeovn-multivpc-dns-forwarder").await;
    assert_eq!(dep.spec.unwrap().replicas, Some(1));
    // Clean up everything but the CRDs (shared with the other tests, and kept as helm keeps them).
    let rest: String = text
        .split("\n---")
        .filter(|d| !d.contains("kind: CustomResourceDefinition"))
        .collect::<Vec<_>>()
        .join("\n---");
    let rest_file = dir.join(format!("{ns}-rest.yaml"));
    std::fs::write(&rest_file, rest).unwrap();
    h.kubectl(
        CLUSTER,
        &["delete", "--wait=false", "-f", rest_file.to_str().unwrap()],
    )
    .await
    .unwrap()
    .check()
    .unwrap();
}

/// exip-syncer and tunnel-manager, each with only its chart ServiceAccount, on two clusters and
/// a broker: gateways are published, exchanged through the broker (credentials from
/// Submariner's ServiceDiscovery), a VXLAN tunnel is built both ways and carries a ping, and
/// deleting tunnels and gateways cleans up — the chart's RBAC is enough for the whole chain.
#[tokio::test]
async fn exip_syncer_and_tunnel_manager_connect_two_clusters_with_the_charts_rbac() {
    const C1: &str = "cluster1";
    const C2: &str = "cluster2";
    let h = harness_or_skip!([C1, C2, "broker"]);
    let Some(_) = helm_or_skip() else { return };
    let _syncer_lock = h.exclusive("exip-syncer").await.unwrap();
    let _manager_lock = h.exclusive("tunnel-manager").await.unwrap();
    h.install_fleet(&[C1, C2], "broker").await.unwrap();
    // cluster1 takes the broker credentials from Submariner's ServiceDiscovery (the default);
    // cluster2 from a kubeconfig Secret in the release namespace, the one Secret its chart
    // ServiceAccount may read.
    let ((ns1, rel1), (ns2, rel2)) = tokio::join!(
        install_without_pods(&h, C1, "chtun", &[]),
        install_without_pods(
            &h,
            C2,
            "chtun",
            &[
                "global.broker.credentials=secret",
                "global.broker.secretName=broker-kubeconfig"
            ]
        ),
    );
    let secret_arg = broker_kubeconfig_secret(&h, C2, &ns2).await;
    let gw = Harness::unique_name("ch");
    let standby = Harness::unique_name("chs");
    let vpc1 = Harness::unique_name("chvpc");
    let (g1, g2, s1) = tokio::try_join!(
        h.create_nat_gateway(C1, NatGatewaySpec::new(&gw, &vpc1)),
        h.create_nat_gateway(C2, NatGatewaySpec::new(&gw, &Harness::unique_name("chvpc"))),
        h.create_nat_gateway(C1, NatGatewaySpec::new(&standby, &vpc1)),
    )
    .unwrap();
    tokio::try_join!(
        g1.wait_available(&h, Duration::from_secs(90)),
        g2.wait_available(&h, Duration::from_secs(90)),
        s1.wait_available(&h, Duration::from_secs(90)),
    )
    .unwrap();
    // cluster1's VPC routes cluster2's Globalnet CIDR through gw (s1 is its standby).
    let remote_cidr = h.vpc_network(C2).unwrap().globalnet_cidr;
    apply_dynamic(
        &h.client(C1),
        &fixtures::vpc(&vpc1, &[(&remote_cidr, &g1.node.lan_ip)]),
    )
    .await
    .unwrap();

    let mut procs = vec![
        run_as_chart(
            &h,
            C1,
            &ns1,
            &rel1,
            "exip-syncer",
            &["--failover-grace-period=1s"],
        )
        .await,
        run_as_chart(&h, C2, &ns2, &rel2, "exip-syncer", &[&secret_arg]).await,
        run_as_chart(&h, C1, &ns1, &rel1, "tunnel-manager", &[]).await,
        run_as_chart(&h, C2, &ns2, &rel2, "tunnel-manager", &[]).await,
    ];
    let (c1, c2) = (h.client(C1), h.client(C2));
    let sa2 = h
        .service_account_client(C2, &ns2, &format!("{rel2}-exip-syncer"))
        .await
        .unwrap();
    assert!(can(&sa2, "get", "", "secrets", &ns2, "broker-kubeconfig").await);
    assert!(!can(&sa2, "get", "", "secrets", &ns2, "other").await);
    assert!(!can(&sa2, "list", "", "secrets", &ns2, "").await);
    // Each side's endpoint, published by its exip-syncer and copied over by the other's.
    for (c, name, ip) in [
        (&c1, format!("{gw}-{C2}"), &g2.node.external_ip),
        (&c2, format!("{gw}-{C1}"), &g1.node.external_ip),
    ] {
        let api: Api<GatewayExIp> = Api::namespaced(c.clone(), "kube-system");
        if let Err(e) = wait_for_object(&api, &name, Duration::from_secs(60), |o: &GatewayExIp| {
            &o.spec.externalip == ip
        })
        .await
        {
            let logs: Vec<String> = procs.iter().map(|p| p.log_tail(20)).collect();
            panic!("GatewayExIp {name}: {e:#}\n{}", logs.join("\n----\n"));
        }
    }

    let dev = format!("chv{}", std::process::id() % 100_000);
    let vni = 5000 + std::process::id() % 10_000;
    let (t1, t2) = (
        h.unique_namespace(C1, "chtun").await.unwrap(),
        h.unique_namespace(C2, "chtun").await.unwrap(),
    );
    for (c, ns, remote, addr) in [
        (&c1, &t1, C2, "10.251.0.1/24"),
        (&c2, &t2, C1, "10.251.0.2/24"),
    ] {
        fixtures::admit_namespace_to_gateway(c, &gw, ns)
            .await
            .unwrap();
        apply_json(
            c,
            json!({"apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
                   "metadata": {"name": dev, "namespace": ns},
                   "spec": {"clusterId": remote, "gatewayName": gw, "natGwDp": gw,
                            "interfaceAddr": addr, "type": "vxlan", "vni": vni}}),
        )
        .await
        .unwrap();
    }
    let apis: [Api<VpcNatTunnel>; 2] = [
        Api::namespaced(c1.clone(), &t1),
        Api::namespaced(c2.clone(), &t2),
    ];
    for api in &apis {
        let programmed = |t: &VpcNatTunnel| {
            t.status.as_ref().is_some_and(|s| {
                conditions::find(&s.conditions, conditions::READY)
                    .is_some_and(|c| c.status == "True" && c.reason == "Programmed")
            })
        };
        if let Err(e) = wait_for_object(api, &dev, Duration::from_secs(60), programmed).await {
            let logs: Vec<String> = procs.iter().map(|p| p.log_tail(20)).collect();
            panic!("tunnel {dev}: {e:#}\n{}", logs.join("\n----\n"));
        }
    }
    g1.sh(&h, "ping -c 2 -W 2 10.251.0.2").await.unwrap();

    // Deleting the tunnels removes the devices (an exec per side) and the finalizers.
    for api in &apis {
        api.delete(&dev, &Default::default()).await.unwrap();
    }
    for api in &apis {
        wait_for_deletion(api, &dev, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let links = g1.sh(&h, "ip -o link show").await.unwrap().stdout;
    assert!(!links.contains(&dev), "{links}");

    // Failover: gw is lost, exip-syncer repoints the VPC's route to the standby (a patch of the
    // Vpc) and records an event on it.
    let sts: Api<StatefulSet> = Api::namespaced(c1.clone(), "kube-system");
    sts.patch(
        &g1.statefulset_name(),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c1.clone(), "kube-system");
    let _ = pods.delete(&g1.pod_name(), &Default::default()).await;
    let vpcs: Api<Vpc> = Api::all(c1.clone());
    if let Err(e) = wait_for_object(&vpcs, &vpc1, Duration::from_secs(60), |v: &Vpc| {
        v.spec.static_routes.first().map(|r| r.next_hop_ip.as_str())
            == Some(s1.node.lan_ip.as_str())
    })
    .await
    {
        panic!("failover: {e:#}\n{}", procs[0].log_tail(30));
    }
    let events: Api<Event> = Api::all(c1.clone());
    wait_for("GatewayFailover event", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(
            if list.items.iter().any(|e| {
                e.reason.as_deref() == Some("GatewayFailover")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(vpc1.as_str())
            }) {
                Check::Done(())
            } else {
                Check::Pending("no GatewayFailover event for the Vpc".into())
            },
        )
    })
    .await
    .unwrap();

    // Gateways gone: exip-syncer withdraws their GatewayExIps (locally and, through the broker,
    // on the other side).
    let (x, y, z) = tokio::join!(
        h.delete_nat_gateway(&g1),
        h.delete_nat_gateway(&g2),
        h.delete_nat_gateway(&s1)
    );
    x.unwrap();
    y.unwrap();
    z.unwrap();
    for (c, name) in [
        (&c1, format!("{gw}-{C1}")),
        (&c1, format!("{gw}-{C2}")),
        (&c1, format!("{standby}-{C1}")),
        (&c2, format!("{gw}-{C1}")),
    ] {
        let api: Api<GatewayExIp> = Api::namespaced(c.clone(), "kube-system");
        wait_for_deletion(&api, &name, Duration::from_secs(60))
            .await
            .unwrap();
    }
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

/// A Secret `<ns>/broker-kubeconfig` on `cluster` holding a kubeconfig for the broker; returns
/// the exip-syncer flag the chart passes for it (BROKER_CREDENTIALS).
async fn broker_kubeconfig_secret(h: &Harness, cluster: &str, ns: &str) -> String {
    let access = h.broker_access("broker", cluster).await.unwrap();
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "broker", "cluster": {
            "server": format!("https://{}", access.api_server),
            "certificate-authority-data": access.ca_b64,
        }}],
        "users": [{"name": "broker", "user": {"token": access.token}}],
        "contexts": [{"name": "broker", "context": {"cluster": "broker", "user": "broker", "namespace": access.namespace}}],
        "current-context": "broker",
    });
    apply_json(
        &h.client(cluster),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "broker-kubeconfig", "namespace": ns},
            "stringData": {"kubeconfig": serde_yaml::to_string(&kubeconfig).unwrap()},
        }),
    )
    .await
    .unwrap();
    format!("--broker-credentials=secret:{ns}/broker-kubeconfig")
}

/// With ServiceDiscovery credentials, exip-syncer takes the broker token from the Secret that
/// ServiceDiscovery names (`brokerK8sSecret`, what Submariner rotates), the one Secret of
/// `submariner-operator` the chart lets it read (found by a lookup at install): a stale inline
/// token does not matter. When the token in that Secret is rotated and the old one revoked,
/// the next write the broker refuses makes exip-syncer re-read it, and exports go on.
#[tokio::test]
async fn exip_syncer_follows_the_broker_secret_service_discovery_names_through_a_rotation() {
    use base64::Engine as _;
    use multivpc_api::foreign::submariner::ServiceDiscovery;
    const C1: &str = "cluster1";
    const BROKER: &str = "broker";
    const SUBMARINER_NS: &str = "submariner-operator";
    let h = harness_or_skip!([C1, BROKER]);
    let Some(_) = helm_or_skip() else { return };
    let _syncer_lock = h.exclusive("exip-syncer").await.unwrap();
    h.install_fleet(&[C1], BROKER).await.unwrap();
    // ServiceDiscovery is a singleton other tests set up: held for the test, restored at the end.
    let _sd_lock = h.exclusive("submariner").await.unwrap();
    let c1 = h.client(C1);
    let access = h.broker_access(BROKER, C1).await.unwrap();
    let ca_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&access.ca_b64)
            .unwrap(),
    )
    .unwrap();
    let pid = std::process::id() % 100_000;
    let secret_name = format!("broker-secret-{pid}");
    let (rot1, rot2) = (format!("rot1-{pid}"), format!("rot2-{pid}"));
    let member_secret = |token: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": secret_name, "namespace": SUBMARINER_NS},
               "stringData": {"token": token, "ca.crt": ca_pem, "namespace": fixtures::BROKER_NS}})
    };
    let token1 = h.revocable_broker_token(BROKER, C1, &rot1).await.unwrap();
    apply_json(&c1, member_secret(&token1)).await.unwrap();
    let sds: Api<ServiceDiscovery> = Api::namespaced(c1.clone(), SUBMARINER_NS);
    sds.patch(
        "service-discovery",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"brokerK8sApiServerToken": "stale-token",
                                      "brokerK8sSecret": secret_name}})),
    )
    .await
    .unwrap();

    let (ns, rel) = install_without_pods(&h, C1, "chrot", &[]).await;
    let sa = h
        .service_account_client(C1, &ns, &format!("{rel}-exip-syncer"))
        .await
        .unwrap();
    assert!(can(&sa, "get", "", "secrets", SUBMARINER_NS, &secret_name).await);
    assert!(
        !can(
            &sa,
            "get",
            "",
            "secrets",
            SUBMARINER_NS,
            "submariner-ipsec-psk"
        )
        .await
    );
    assert!(!can(&sa, "list", "", "secrets", SUBMARINER_NS, "").await);
    let mut syncer = run_as_chart(&h, C1, &ns, &rel, "exip-syncer", &[]).await;
    syncer
        .wait_metric("multivpc_broker_connected", Duration::from_secs(60), |v| {
            v == 1.0
        })
        .await
        .unwrap();
    let on_broker: Api<GatewayExIp> = Api::namespaced(h.client(BROKER), fixtures::BROKER_NS);
    let export = |gw: NatGateway| {
        let (h, on_broker, syncer) = (&h, &on_broker, &syncer);
        async move {
            gw.wait_available(h, Duration::from_secs(90)).await.unwrap();
            let name = format!("{}-{C1}", gw.spec.name);
            if let Err(e) = wait_for_object(
                on_broker,
                &name,
                Duration::from_secs(90),
                |_: &GatewayExIp| true,
            )
            .await
            {
                panic!("{name} on the broker: {e:#}\n{}", syncer.log_tail(30));
            }
            gw
        }
    };
    let g1 = export(
        h.create_nat_gateway(
            C1,
            NatGatewaySpec::new(&Harness::unique_name("rot"), "rotvpc"),
        )
        .await
        .unwrap(),
    )
    .await;

    // The rotation: a new token in the Secret, the old one revoked.
    let token2 = h.revocable_broker_token(BROKER, C1, &rot2).await.unwrap();
    apply_json(&c1, member_secret(&token2)).await.unwrap();
    let markers: Api<Secret> = Api::namespaced(h.client(BROKER), fixtures::BROKER_NS);
    markers.delete(&rot1, &Default::default()).await.unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(h.kubeconfig(BROKER)).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token1.clone().into()),
        ..Default::default()
    };
    let old_token: Api<GatewayExIp> =
        Api::namespaced(Client::try_from(config).unwrap(), fixtures::BROKER_NS);
    wait_for("the old token revoked", Duration::from_secs(60), || async {
        Ok(
            match old_token.list(&ListParams::default().limit(1)).await {
                Err(kube::Error::Api(s)) if s.code == 401 => Check::Done(()),
                other => Check::Pending(format!("{:?}", other.map(|_| "still accepted"))),
            },
        )
    })
    .await
    .unwrap();
    let g2 = export(
        h.create_nat_gateway(
            C1,
            NatGatewaySpec::new(&Harness::unique_name("rot"), "rotvpc"),
        )
        .await
        .unwrap(),
    )
    .await;
    let log = std::fs::read_to_string(&syncer.log).unwrap();
    assert!(
        log.contains("refused a write as Unauthorized"),
        "{}",
        syncer.log_tail(30)
    );
    for token in [&token1, &token2] {
        assert!(!log.contains(token.as_str()), "a token was logged");
    }

    let (x, y) = tokio::join!(h.delete_nat_gateway(&g1), h.delete_nat_gateway(&g2));
    x.unwrap();
    y.unwrap();
    assert!(syncer.stop().unwrap());
    assert_never_forbidden(&syncer);
    sds.patch(
        "service-discovery",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"brokerK8sSecret": null}})),
    )
    .await
    .unwrap();
    h.install_default_submariner(C1, Some(BROKER))
        .await
        .unwrap();
    let _ = Api::<Secret>::namespaced(c1.clone(), SUBMARINER_NS)
        .delete(&secret_name, &Default::default())
        .await;
    let _ = markers.delete(&rot2, &Default::default()).await;
    uninstall(&h, C1, &ns, &rel).await;
}

/// Installed after `subctl join` without `global.clusterId`, the chart finds the cluster ID in
/// Submariner's ServiceDiscovery (a lookup at install): every controller gets it, and
/// tunnel-manager needs no access to ServiceDiscovery (which holds the broker token) and sees
/// only this cluster's Cluster object.
#[tokio::test]
async fn the_cluster_id_is_looked_up_at_install_and_tunnel_manager_never_reads_service_discovery() {
    const C1: &str = "cluster1";
    let h = harness_or_skip!([C1, "broker"]);
    let Some(_) = helm_or_skip() else { return };
    h.install_fleet(&[C1], "broker").await.unwrap();
    let ns = h.unique_namespace(C1, "chid").await.unwrap();
    let chart = chart_dir();
    let out = h
        .helm(
            C1,
            &[
                "install",
                "chid",
                &chart,
                "--namespace",
                &ns,
                "--skip-crds",
                "--dry-run=server",
            ],
        )
        .await
        .unwrap()
        .check()
        .unwrap()
        .stdout;
    let manifest = out.split_once("MANIFEST:").map(|(_, m)| m).unwrap_or(&out);
    let manifest = manifest
        .split_once("\nNOTES:")
        .map(|(m, _)| m)
        .unwrap_or(manifest);
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(manifest)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| v.is_object())
        .collect();
    let find = |kind: &str, suffix: &str| {
        docs.iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(suffix))
            })
            .unwrap_or_else(|| panic!("no {kind} *{suffix} in:\n{manifest}"))
    };
    for ctl in CONTROLLERS {
        let env = &find("Deployment", ctl)["spec"]["template"]["spec"]["containers"][0]["env"];
        let id = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "CLUSTER_ID")
            .map(|e| e["value"].clone());
        assert_eq!(id, Some(json!(C1)), "{ctl}: {env}");
    }
    let tm_role = find("Role", "tunnel-manager-submariner");
    let rules = tm_role["rules"].to_string();
    assert!(!rules.contains("servicediscoveries"), "{rules}");
    assert!(
        rules.contains(&format!("\"resourceNames\":[\"{C1}\"]")),
        "{rules}"
    );
    h.delete_namespace(C1, &ns).await.unwrap();
}

/// The refusal of a ValidatingAdmissionPolicy (not RBAC's): a 403 naming the policy.
fn refused_by_policy<T: std::fmt::Debug>(what: &str, result: Result<T, impl std::fmt::Display>) {
    match result {
        Ok(v) => panic!("{what}: allowed ({v:?})"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("ValidatingAdmissionPolicy"), "{what}: {e}");
        }
    }
}

/// What the API server answers a pods/exec of `container` in `ns/pod` before any connection to
/// the kubelet: admission runs first, so a policy's refusal comes back as a Status with its
/// message (a WebSocket client sees only the code).
async fn exec_admission(
    client: &Client,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<String, String> {
    let uri = format!(
        "/api/v1/namespaces/{ns}/pods/{pod}/exec?container={container}&command=true&stdout=true"
    );
    let req = http::Request::post(uri).body(Vec::new()).unwrap();
    match client.request_text(req).await {
        Ok(body) => Ok(body),
        Err(kube::Error::Api(s)) => Err(format!("{} {}", s.code, s.message)),
        Err(e) => Err(e.to_string()),
    }
}

/// RBAC cannot name pods or Deployments by label nor fields of an object: with each chart
/// ServiceAccount's own token, the API server lets through what the controller does and
/// refuses the rest (exec into another kube-system pod or container, a change to a Deployment
/// that is not vpc-dns or to anything but a vpc-dns Deployment's routes, any Vpc field but a
/// static route's nextHopIP). With `global.admissionPolicies.enabled=false`, nothing renders.
#[tokio::test]
async fn chart_service_accounts_are_held_to_their_work_by_admission_policies() {
    const C1: &str = "cluster1";
    let h = harness_or_skip!([C1]);
    let Some(bin) = helm_or_skip() else { return };
    let off = render(
        &bin,
        &[true; 3],
        &["global.admissionPolicies.enabled=false"],
    )
    .await
    .unwrap();
    assert!(
        !off.iter().any(|d| d["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))),
        "rendered although switched off"
    );
    let _syncer_lock = h.exclusive("exip-syncer").await.unwrap();
    let _manager_lock = h.exclusive("tunnel-manager").await.unwrap();
    let admin = h.client(C1);
    let (ns, release) = install_without_pods(&h, C1, "vap", &[]).await;
    let sa = |binary: &str| {
        let (h, ns, release) = (&h, &ns, &release);
        let name = format!("{release}-{binary}");
        async move { h.service_account_client(C1, ns, &name).await.unwrap() }
    };
    let (tm, dns, exip) = (
        sa("tunnel-manager").await,
        sa("dns-forwarder").await,
        sa("exip-syncer").await,
    );

    // tunnel-manager: exec into a NAT gateway pod's vpc-nat-gw container, nothing else.
    let gw = h
        .create_nat_gateway(
            C1,
            NatGatewaySpec::new(
                &Harness::unique_name("vap"),
                &Harness::unique_name("vapvpc"),
            ),
        )
        .await
        .unwrap();
    gw.wait_available(&h, Duration::from_secs(90))
        .await
        .unwrap();
    let pod = gw.spec.pod_name();
    // A just-created RoleBinding may take the API server a moment to honour.
    wait_for(
        "tunnel-manager execs into its gateway",
        Duration::from_secs(60),
        || async {
            Ok(
                match pod_exec(&tm, KUBE_SYSTEM, &pod, Some("vpc-nat-gw"), &["true"]).await {
                    Ok(out) if out.success() => Check::Done(()),
                    other => Check::Pending(format!("{other:?}")),
                },
            )
        },
    )
    .await
    .unwrap();
    // Just-installed policy bindings may take the API server a moment to enforce (seen once on
    // a freshly started harness): wait, within a bound, for the first refusal.
    wait_for(
        "the chart's policies in force",
        Duration::from_secs(60),
        || async {
            Ok(
                match exec_admission(&tm, KUBE_SYSTEM, &pod, "sidecar").await {
                    Err(e) if e.contains("ValidatingAdmissionPolicy") => Check::Done(()),
                    other => Check::Pending(format!("{other:?}")),
                },
            )
        },
    )
    .await
    .unwrap();
    refused_by_policy(
        "exec into another container of the gateway pod",
        exec_admission(&tm, KUBE_SYSTEM, &pod, "sidecar").await,
    );
    let bystander = Harness::unique_name("bystander");
    apply_json(
        &admin,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": bystander, "namespace": KUBE_SYSTEM},
               "spec": {"nodeName": format!("{C1}-worker"),
                        "containers": [{"name": "vpc-nat-gw", "image": "registry.k8s.io/pause:3.10"}]}}),
    )
    .await
    .unwrap();
    refused_by_policy(
        "exec into a kube-system pod that is no NAT gateway",
        exec_admission(&tm, KUBE_SYSTEM, &bystander, "vpc-nat-gw").await,
    );

    // dns-forwarder: the routes of vpc-dns Deployments, nothing else.
    let vpc_dns = Harness::unique_name("vapdns");
    h.install_vpc_dns(
        C1,
        &vpc_dns,
        "vapdns-vpc",
        "vapdns-subnet",
        VpcDnsForm::V112InitContainer,
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(dns.clone(), KUBE_SYSTEM);
    let name = format!("vpc-dns-{vpc_dns}");
    let strategic =
        |init: Value| json!({"spec": {"template": {"spec": {"initContainers": [init]}}}});
    let route = json!({"name": "init-route", "command": ["sh", "-c", "ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1;"]});
    deployments
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(strategic(route)),
        )
        .await
        .unwrap();
    refused_by_policy(
        "another image for vpc-dns",
        deployments
            .patch(&name, &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "coredns", "image": "evil"}]}}}})))
            .await,
    );
    refused_by_policy(
        "another image for init-route",
        deployments
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(strategic(json!({"name": "init-route", "image": "evil"}))),
            )
            .await,
    );
    let coredns = Harness::unique_name("coredns");
    apply_json(
        &admin,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": coredns, "namespace": KUBE_SYSTEM, "labels": {"k8s-app": "kube-dns"}},
               "spec": {"replicas": 0, "selector": {"matchLabels": {"k8s-app": coredns}},
                        "template": {"metadata": {"labels": {"k8s-app": coredns}},
                                     "spec": {"containers": [{"name": "coredns", "image": "coredns"}]}}}}),
    )
    .await
    .unwrap();
    refused_by_policy(
        "a routes annotation on coredns",
        deployments
            .patch(&coredns, &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"ovn.kubernetes.io/routes": "[]"}}}}})))
            .await,
    );

    // exip-syncer: a static route's nextHopIP, nothing else.
    let vpc = Harness::unique_name("vapvpc");
    apply_dynamic(
        &admin,
        &fixtures::vpc(&vpc, &[("242.9.0.0/16", "10.9.0.254")]),
    )
    .await
    .unwrap();
    let vpcs: Api<Vpc> = Api::all(exip.clone());
    let json_patch = |ops: Value| Patch::<Value>::Json(serde_json::from_value(ops).unwrap());
    vpcs.patch(
        &vpc,
        &PatchParams::default(),
        &json_patch(json!([
            {"op": "test", "path": "/spec/staticRoutes/0/cidr", "value": "242.9.0.0/16"},
            {"op": "replace", "path": "/spec/staticRoutes/0/nextHopIP", "value": "10.9.0.253"},
        ])),
    )
    .await
    .unwrap();
    for (what, ops) in [
        (
            "another CIDR",
            json!([{"op": "replace", "path": "/spec/staticRoutes/0/cidr", "value": "0.0.0.0/0"}]),
        ),
        (
            "a new static route",
            json!([{"op": "add", "path": "/spec/staticRoutes/-", "value": {"cidr": "0.0.0.0/0", "nextHopIP": "10.9.0.1", "policy": "policyDst"}}]),
        ),
        (
            "a namespace admitted",
            json!([{"op": "add", "path": "/spec/namespaces", "value": ["tenant"]}]),
        ),
    ] {
        refused_by_policy(
            what,
            vpcs.patch(&vpc, &PatchParams::default(), &json_patch(ops))
                .await,
        );
    }

    h.delete_nat_gateway(&gw).await.unwrap();
    let _ = Api::<Pod>::namespaced(admin.clone(), KUBE_SYSTEM)
        .delete(&bystander, &Default::default())
        .await;
    let _ = Api::<Deployment>::namespaced(admin.clone(), KUBE_SYSTEM)
        .delete(&coredns, &Default::default())
        .await;
    uninstall(&h, C1, &ns, &release).await;
}
