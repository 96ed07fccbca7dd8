//! dns-forwarder against a real API server: the binary runs as a user would run it, with the
//! vpc-dns Deployments Kube-OVN v1.12 and v1.13+ would build.
//!
//! The controller owns cluster singletons (the vpc-dns Corefile ConfigMap), so every test here
//! holds the `dns-forwarder` lock and leaves no VpcDnsForward behind.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use multivpc_api::{VpcDnsForward, conditions};
use multivpc_e2e::{
    ExclusiveGuard, Harness,
    controllers::{self, ControllerProcess},
    fixtures::{self, KUBE_SYSTEM, VpcDnsForm},
    prelude::*,
};
use serde_json::{Value, json};

const CLUSTER: &str = "cluster1";
const OVN_DEFAULT_GW: &str = "10.244.0.1";

struct Env {
    h: Harness,
    c: Client,
    ns: String,
    dns_ip: String,
    ctl: ControllerProcess,
    _lock: ExclusiveGuard,
}

async fn setup(h: Harness) -> Env {
    let lock = h.exclusive("dns-forwarder").await.unwrap();
    h.install_project_crds(CLUSTER).await.unwrap();
    let dns_ip = h.install_cluster_network(CLUSTER).await.unwrap();
    let c = h.client(CLUSTER);
    let ns = h.unique_namespace(CLUSTER, "dnsfwd").await.unwrap();
    let ctl = start(&h).await;
    // A test that failed earlier may have left forwards: the running controller removes
    // what they added, so every test starts from Kube-OVN's state.
    let all: Api<VpcDnsForward> = Api::all(c.clone());
    for f in all.list(&ListParams::default()).await.unwrap() {
        let api: Api<VpcDnsForward> = Api::namespaced(c.clone(), &f.namespace().unwrap());
        let _ = api.delete(&f.name_any(), &DeleteParams::default()).await;
        wait_for_deletion(&api, &f.name_any(), Duration::from_secs(60))
            .await
            .unwrap();
    }
    Env {
        h,
        c,
        ns,
        dns_ip,
        ctl,
        _lock: lock,
    }
}

async fn start(h: &Harness) -> ControllerProcess {
    start_with(h, &[]).await
}

async fn start_with(h: &Harness, args: &[&str]) -> ControllerProcess {
    controllers::spawn(
        h.run_dir(),
        "dns-forwarder",
        &h.kubeconfig(CLUSTER),
        args,
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

impl Env {
    fn forwards(&self) -> Api<VpcDnsForward> {
        Api::namespaced(self.c.clone(), &self.ns)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.c.clone(), KUBE_SYSTEM)
    }

    fn route_line(&self) -> String {
        format!(
            "ip -4 route add {} via {OVN_DEFAULT_GW} dev net1;",
            self.dns_ip
        )
    }

    fn route_entry(&self) -> Value {
        json!({ "dst": format!("{}/32", self.dns_ip), "gw": OVN_DEFAULT_GW })
    }

    /// A forward in the test's namespace, which `vpc` is first made to admit (as its user would).
    async fn apply_forward(&self, name: &str, vpc: &str, finalizers: &[&str]) {
        fixtures::admit_namespace(&self.c, vpc, &self.ns)
            .await
            .unwrap();
        apply_json(
            &self.c,
            json!({
                "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcDnsForward",
                "metadata": { "name": name, "namespace": self.ns, "finalizers": finalizers },
                "spec": { "vpc": vpc },
            }),
        )
        .await
        .unwrap();
    }

    async fn wait_reason(&self, name: &str, reason: &str) -> VpcDnsForward {
        let generation_seen = |f: &VpcDnsForward| {
            let status = f.status.clone().unwrap_or_default();
            status.observed_generation == f.metadata.generation
                && conditions::find(&status.conditions, conditions::READY)
                    .is_some_and(|c| c.reason == reason)
        };
        wait_for_object(
            &self.forwards(),
            name,
            Duration::from_secs(30),
            generation_seen,
        )
        .await
        .unwrap()
    }

    async fn delete_forward(&self, name: &str) {
        self.forwards()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_for_deletion(&self.forwards(), name, Duration::from_secs(30))
            .await
            .unwrap();
    }

    async fn init_script(&self, deployment: &str) -> String {
        let d = self.deployments().get(deployment).await.unwrap();
        let init = d
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .init_containers
            .unwrap();
        init.iter()
            .find(|c| c.name == "init-route")
            .unwrap()
            .command
            .clone()
            .unwrap()[2]
            .clone()
    }

    async fn annotation_routes(&self, deployment: &str) -> Vec<Value> {
        let d = self.deployments().get(deployment).await.unwrap();
        let annotations: BTreeMap<String, String> = d
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap_or_default();
        annotations
            .get(&format!(
                "{}.kubernetes.io/routes",
                fixtures::VPC_DNS_NAD_PROVIDER
            ))
            .map(|v| serde_json::from_str(v).unwrap())
            .unwrap_or_default()
    }

    /// Whether the Deployment carries the route: in its `init-route` script (v1.12) or its
    /// routes annotation (v1.13+).
    async fn has_route(&self, deployment: &str, init_route: bool) -> bool {
        if init_route {
            self.init_script(deployment)
                .await
                .contains(&self.route_line())
        } else {
            self.annotation_routes(deployment)
                .await
                .contains(&self.route_entry())
        }
    }

    async fn corefile(&self) -> String {
        let cms: Api<ConfigMap> = Api::namespaced(self.c.clone(), KUBE_SYSTEM);
        cms.get("vpc-dns-corefile").await.unwrap().data.unwrap()["Corefile"].clone()
    }

    /// Waits until `check` holds for the Deployment, with the last state in the failure.
    async fn wait_deployment(&self, name: &str, what: &str, check: impl Fn(&Deployment) -> bool) {
        wait_for_object(&self.deployments(), name, Duration::from_secs(30), check)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    }

    /// A full Update of the Deployment, as Kube-OVN sends, retried when kube-controller-manager
    /// changed the Deployment's status in between (409).
    async fn rewrite_deployment(&self, name: &str, edit: impl Fn(&mut Deployment)) {
        wait_for(
            "a full update of the Deployment",
            Duration::from_secs(20),
            || async {
                let mut d = self.deployments().get(name).await?;
                edit(&mut d);
                match self
                    .deployments()
                    .replace(name, &PostParams::default(), &d)
                    .await
                {
                    Ok(_) => Ok(Check::Done(())),
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        Ok(Check::Pending("conflict".into()))
                    }
                    Err(e) => Err(e.into()),
                }
            },
        )
        .await
        .unwrap();
    }

    async fn finish(self) {
        let _ = self.h.delete_namespace(CLUSTER, &self.ns).await;
    }
}

fn script_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0]
        .command
        .as_ref()
        .unwrap()[2]
        .clone()
}

#[tokio::test]
async fn both_kube_ovn_forms_shared_routes_move_and_exact_cleanup() {
    let env = setup(harness_or_skip!([CLUSTER])).await;
    let (vpc_a, vpc_b) = (Harness::unique_name("vpca"), Harness::unique_name("vpcb"));
    let (dns_a, dns_b) = (Harness::unique_name("dnsa"), Harness::unique_name("dnsb"));
    let (dep_a, dep_b) = (format!("vpc-dns-{dns_a}"), format!("vpc-dns-{dns_b}"));
    env.h
        .install_vpc_dns(
            CLUSTER,
            &dns_a,
            &vpc_a,
            "sub-a",
            VpcDnsForm::V112InitContainer,
        )
        .await
        .unwrap();
    env.h
        .install_vpc_dns(
            CLUSTER,
            &dns_b,
            &vpc_b,
            "sub-b",
            VpcDnsForm::V113RoutesAnnotation,
        )
        .await
        .unwrap();
    let corefile_before = env.corefile().await;
    let script_before = env.init_script(&dep_a).await;
    let annotation_before = env.annotation_routes(&dep_b).await;

    env.apply_forward("f1", &vpc_a, &[]).await;
    env.apply_forward("f2", &vpc_b, &[]).await;
    let f1 = env.wait_reason("f1", "Programmed").await;
    env.wait_reason("f2", "Programmed").await;

    // v1.12: the route appended to init-route, exactly as the seed shows.
    assert_eq!(
        env.init_script(&dep_a).await,
        format!("{script_before}{}", env.route_line())
    );
    // v1.13+: one more JSON route, Kube-OVN's own kept.
    let mut expected = annotation_before.clone();
    expected.push(env.route_entry());
    assert_eq!(env.annotation_routes(&dep_b).await, expected);
    // Corefile: unchanged byte for byte outside one appended section.
    let corefile = env.corefile().await;
    assert_eq!(
        corefile,
        format!(
            "{corefile_before}#multivpc-start\nclusterset.local:53 {{\n    forward . {}\n}}\n#multivpc-end\n",
            env.dns_ip
        )
    );
    let status = f1.status.unwrap();
    assert_eq!(status.deployments, vec![dep_a.clone()]);
    assert_eq!(status.vpc_dns, vec![dns_a]);
    assert_eq!(
        status.route.unwrap(),
        format!("{} via {OVN_DEFAULT_GW} dev net1", env.dns_ip)
    );

    // Move f1 to vpc b: the route leaves a, and b still has it once.
    env.apply_forward("f1", &vpc_b, &[]).await;
    env.wait_deployment(&dep_a, "route removed from the VPC f1 left", |d| {
        script_of(d) == script_before
    })
    .await;
    let f1 = env.wait_reason("f1", "Programmed").await;
    assert_eq!(f1.status.unwrap().deployments, vec![dep_b.clone()]);
    assert_eq!(
        env.annotation_routes(&dep_b).await,
        expected,
        "two forwards share one route"
    );

    // Deleting one of two forwards of a VPC keeps the shared route and the section.
    env.delete_forward("f2").await;
    assert_eq!(env.annotation_routes(&dep_b).await, expected);
    assert_eq!(env.corefile().await, corefile);

    // The last forward takes everything it added with it.
    env.delete_forward("f1").await;
    assert_eq!(env.annotation_routes(&dep_b).await, annotation_before);
    assert_eq!(
        env.corefile().await,
        corefile_before,
        "Corefile restored byte for byte"
    );
    assert_eq!(
        env.ctl
            .metric("multivpc_dns_routes_programmed")
            .await
            .unwrap(),
        Some(0.0)
    );
    let successes = env
        .ctl
        .metric(
            "controller_runtime_reconcile_total{controller=\"vpcdnsforward\",result=\"success\"}",
        )
        .await
        .unwrap()
        .unwrap();
    assert!(successes >= 4.0, "{successes}");
    env.finish().await;
}

#[tokio::test]
async fn kube_ovn_rewrite_is_repaired_and_steady_state_writes_nothing() {
    let mut env = setup(harness_or_skip!([CLUSTER])).await;
    // Repairs after the first are spaced out; 60s here so the second rewrite below is surely
    // within the spacing, however slow the machine.
    env.ctl.stop().unwrap();
    env.ctl = start_with(&env.h, &["--repair-spacing=60s"]).await;
    let vpc = Harness::unique_name("vpch");
    let dns = Harness::unique_name("dnsh");
    let dep = format!("vpc-dns-{dns}");
    let original = env
        .h
        .install_vpc_dns(CLUSTER, &dns, &vpc, "sub-h", VpcDnsForm::V112InitContainer)
        .await
        .unwrap();
    env.apply_forward("heal", &vpc, &[]).await;
    let forward = env.wait_reason("heal", "Programmed").await;
    let route = env.route_line();
    assert!(env.init_script(&dep).await.ends_with(&route));

    // Kube-OVN reconciles the VpcDns: a full Update with the Deployment it builds, dropping
    // the route.
    env.rewrite_deployment(&dep, |d| {
        d.spec = original.spec.clone();
        d.metadata.annotations = original.metadata.annotations.clone();
    })
    .await;
    env.wait_deployment(&dep, "route re-added after the rewrite", |d| {
        script_of(d).ends_with(&route)
    })
    .await;
    assert_eq!(env.init_script(&dep).await.matches(&route).count(), 1);
    let repairs = |result: &str| format!("multivpc_dns_route_repairs_total{{result=\"{result}\"}}");
    // Counted once the controller has the PATCH's answer, which may be after this test saw the
    // route: waited for, then exactly one.
    let repaired = env
        .ctl
        .wait_metric(&repairs("repaired"), Duration::from_secs(30), |v| v >= 1.0)
        .await
        .unwrap();
    assert_eq!(repaired, 1.0);

    // Kube-OVN rewrites it again at once: each repair restarts vpc-dns, so this one waits, and
    // the forward says so instead of claiming Programmed over a missing route.
    env.rewrite_deployment(&dep, |d| {
        d.spec = original.spec.clone();
    })
    .await;
    let deferred = env.wait_reason("heal", "RepairDeferred").await;
    let message = conditions::find(&deferred.status.unwrap().conditions, conditions::READY)
        .unwrap()
        .message
        .clone();
    assert!(message.contains(&dep), "{message}");
    assert!(!env.init_script(&dep).await.contains(&route));
    assert!(env.ctl.metric(&repairs("deferred")).await.unwrap() >= Some(1.0));
    // A restarted controller (no repair history) repairs at once.
    env.ctl.stop().unwrap();
    env.ctl = start(&env.h).await;
    env.wait_deployment(&dep, "route re-added by the restarted controller", |d| {
        script_of(d).ends_with(&route)
    })
    .await;
    env.wait_reason("heal", "Programmed").await;
    let after_heal = env.forwards().get("heal").await.unwrap();
    assert_eq!(
        after_heal.metadata.generation, forward.metadata.generation,
        "spec untouched"
    );

    // Steady state: a restarted controller re-lists and reconciles everything, and writes nothing.
    let versions = |f: &VpcDnsForward, d: &Deployment, cm: &ConfigMap| {
        (
            f.resource_version(),
            d.metadata.generation,
            cm.resource_version(),
        )
    };
    let cms: Api<ConfigMap> = Api::namespaced(env.c.clone(), KUBE_SYSTEM);
    let before = versions(
        &after_heal,
        &env.deployments().get(&dep).await.unwrap(),
        &cms.get("vpc-dns-corefile").await.unwrap(),
    );
    env.ctl.stop().unwrap();
    env.ctl.stop().unwrap();
    env.ctl = start(&env.h).await;
    let success =
        "controller_runtime_reconcile_total{controller=\"vpcdnsforward\",result=\"success\"}";
    wait_for(
        "a reconcile by the restarted controller",
        Duration::from_secs(30),
        || async {
            let n = env.ctl.metric(success).await?.unwrap_or_default();
            Ok(if n >= 1.0 {
                Check::Done(())
            } else {
                Check::Pending(format!("{n} reconciles"))
            })
        },
    )
    .await
    .unwrap();
    let after = versions(
        &env.forwards().get("heal").await.unwrap(),
        &env.deployments().get(&dep).await.unwrap(),
        &cms.get("vpc-dns-corefile").await.unwrap(),
    );
    assert_eq!(
        before,
        after,
        "no writes at steady state; forward status before {:?}, after {:?}",
        after_heal.status,
        env.forwards().get("heal").await.unwrap().status
    );

    env.delete_forward("heal").await;
    assert!(!env.init_script(&dep).await.contains(&route));
    env.finish().await;
}

#[tokio::test]
async fn vpc_dns_created_later_is_picked_up_without_restart() {
    let env = setup(harness_or_skip!([CLUSTER])).await;
    let vpc = Harness::unique_name("vpcl");
    let dns = Harness::unique_name("dnsl");
    env.apply_forward("late", &vpc, &[]).await;
    let waiting = env.wait_reason("late", "VpcDnsNotFound").await;
    assert!(!conditions::is_true(
        &waiting.status.unwrap().conditions,
        conditions::READY
    ));
    let events: Api<Event> = Api::namespaced(env.c.clone(), &env.ns);
    wait_for(
        "a VpcDnsNotFound event",
        Duration::from_secs(15),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(
                match list
                    .items
                    .iter()
                    .find(|e| e.reason.as_deref() == Some("VpcDnsNotFound"))
                {
                    Some(e) if e.type_.as_deref() == Some("Warning") => Check::Done(()),
                    _ => Check::Pending(format!("{} events", list.items.len())),
                },
            )
        },
    )
    .await
    .unwrap();

    env.h
        .install_vpc_dns(
            CLUSTER,
            &dns,
            &vpc,
            "sub-l",
            VpcDnsForm::V113RoutesAnnotation,
        )
        .await
        .unwrap();
    env.wait_reason("late", "Programmed").await;
    assert!(
        env.annotation_routes(&format!("vpc-dns-{dns}"))
            .await
            .contains(&env.route_entry())
    );
    env.delete_forward("late").await;
    assert!(
        !env.annotation_routes(&format!("vpc-dns-{dns}"))
            .await
            .contains(&env.route_entry())
    );
    env.finish().await;
}

#[tokio::test]
async fn original_operator_objects_are_adopted_and_cleaned_up() {
    let env = setup(harness_or_skip!([CLUSTER])).await;
    let vpc = Harness::unique_name("vpco");
    let dns = Harness::unique_name("dnso");
    let dep = format!("vpc-dns-{dns}");
    env.h
        .install_vpc_dns(CLUSTER, &dns, &vpc, "sub-o", VpcDnsForm::V112InitContainer)
        .await
        .unwrap();
    let kube_ovn_script = env.init_script(&dep).await;
    // What the Go operator left: its route appended, its finalizer on the forward.
    let operator_script = format!("{kube_ovn_script}{}", env.route_line());
    env.rewrite_deployment(&dep, |d| {
        let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        spec.init_containers.as_mut().unwrap()[0].command =
            Some(vec!["sh".into(), "-c".into(), operator_script.clone()]);
    })
    .await;
    env.apply_forward("old", &vpc, &[multivpc_api::keys::DNS_FINALIZER])
        .await;

    let adopted = env.wait_reason("old", "Programmed").await;
    assert_eq!(
        adopted.finalizers(),
        [multivpc_api::keys::DNS_FINALIZER.to_owned()]
    );
    assert_eq!(
        env.init_script(&dep)
            .await
            .matches(&env.route_line())
            .count(),
        1,
        "not duplicated"
    );
    env.delete_forward("old").await;
    assert_eq!(env.init_script(&dep).await, kube_ovn_script);
    env.finish().await;
}

#[tokio::test]
async fn missing_corefile_is_a_condition_then_recovers() {
    let env = setup(harness_or_skip!([CLUSTER])).await;
    let vpc = Harness::unique_name("vpcm");
    let dns = Harness::unique_name("dnsm");
    env.h
        .install_vpc_dns(
            CLUSTER,
            &dns,
            &vpc,
            "sub-m",
            VpcDnsForm::V113RoutesAnnotation,
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(env.c.clone(), KUBE_SYSTEM);
    let original = cms.get("vpc-dns-corefile").await.unwrap();
    let text = original.data.clone().unwrap()["Corefile"].clone();
    cms.delete("vpc-dns-corefile", &DeleteParams::default())
        .await
        .unwrap();

    env.apply_forward("nocore", &vpc, &[]).await;
    env.wait_reason("nocore", "CorefileMissing").await;
    // The route is still programmed: only the Corefile is missing.
    assert!(
        env.annotation_routes(&format!("vpc-dns-{dns}"))
            .await
            .contains(&env.route_entry())
    );

    apply(&env.c, &fixtures::vpc_dns_corefile_configmap(&text))
        .await
        .unwrap();
    env.wait_reason("nocore", "Programmed").await;
    assert!(env.corefile().await.contains("#multivpc-start"));
    env.delete_forward("nocore").await;
    assert_eq!(env.corefile().await, text);
    env.finish().await;
}

/// A DNS forward in each Kube-OVN generation, on its real CRDs and vpc-dns shapes: v1.12 (the
/// route in the `init-route` container), v1.14 (the routes annotation), v1.16 (a VpcDns naming
/// its own Corefile ConfigMap in `spec.corefile`: the section goes there, which its vpc-dns
/// mounts, and `vpc-dns-corefile` is left alone). Deleting the forward restores every Corefile
/// byte for byte and removes the route.
#[tokio::test]
async fn each_kube_ovn_generation_forwards_clusterset_local() {
    use fixtures::KubeOvnVersion;
    let mut env = setup(harness_or_skip!([CLUSTER])).await;
    let _crds = env.h.exclusive("kube-ovn-crds").await.unwrap();
    let vdns: Api<multivpc_api::foreign::kubeovn::VpcDns> = Api::all(env.c.clone());
    let cms: Api<ConfigMap> = Api::namespaced(env.c.clone(), KUBE_SYSTEM);
    let text_of = |cm: ConfigMap| cm.data.unwrap()["Corefile"].clone();
    for version in [
        KubeOvnVersion::V1_12,
        KubeOvnVersion::V1_14,
        KubeOvnVersion::V1_16,
    ] {
        env.h.install_kube_ovn_crds(CLUSTER, version).await.unwrap();
        // dns-forwarder as it runs on a cluster of that version: started after the CRDs (a
        // watch opened under an older schema serves objects pruned by it for a while).
        env.ctl.stop().unwrap();
        env.ctl = start(&env.h).await;
        let vpc = Harness::unique_name("vpcg");
        let dns = Harness::unique_name("dnsg");
        let deployment = format!("vpc-dns-{dns}");
        let (form, own) = match version {
            KubeOvnVersion::V1_12 => (VpcDnsForm::V112InitContainer, None),
            KubeOvnVersion::V1_16 => (
                VpcDnsForm::V113RoutesAnnotation,
                Some(format!("corefile-{dns}")),
            ),
            _ => (VpcDnsForm::V113RoutesAnnotation, None),
        };
        env.h
            .install_vpc_dns_mounting(CLUSTER, &dns, &vpc, "sub-g", form, own.as_deref())
            .await
            .unwrap();
        assert_eq!(
            vdns.get(&dns).await.unwrap().spec.corefile,
            own,
            "{version}: spec.corefile is kept by the v1.16 CRD (and absent before)"
        );
        let corefile = own.clone().unwrap_or_else(|| "vpc-dns-corefile".into());
        let before = text_of(cms.get(&corefile).await.unwrap());
        let default_before = env.corefile().await;
        let init_route = version == KubeOvnVersion::V1_12;

        env.apply_forward("gen", &vpc, &[]).await;
        let programmed = env.wait_reason("gen", "Programmed").await;
        assert_eq!(programmed.status.unwrap().corefiles, vec![corefile.clone()]);
        let after = text_of(cms.get(&corefile).await.unwrap());
        assert_eq!(
            after.matches("clusterset.local").count(),
            1,
            "{version}: {after}"
        );
        assert!(after.starts_with(&before), "{version}: {after}");
        if own.is_some() {
            assert_eq!(
                env.corefile().await,
                default_before,
                "{version}: vpc-dns-corefile is not this VpcDns's Corefile"
            );
        }
        assert!(
            env.has_route(&deployment, init_route).await,
            "{version}: no route on {deployment}"
        );
        eprintln!(
            "Kube-OVN {version}: forward Programmed, section in {corefile}, route on {deployment}"
        );

        env.delete_forward("gen").await;
        assert_eq!(
            text_of(cms.get(&corefile).await.unwrap()),
            before,
            "{version}"
        );
        assert!(
            !env.has_route(&deployment, init_route).await,
            "{version}: route left on {deployment}"
        );
        let _ = vdns.delete(&dns, &DeleteParams::default()).await;
        let _ = env
            .deployments()
            .delete(&deployment, &DeleteParams::default())
            .await;
        if let Some(own) = &own {
            let _ = cms.delete(own, &DeleteParams::default()).await;
        }
    }
    env.h
        .install_kube_ovn_crds(CLUSTER, KubeOvnVersion::harness_default())
        .await
        .unwrap();
    env.finish().await;
}

/// The API server stops for 20 s and starts again (every watch ends; the new server answers
/// the old resource versions with 410 Gone): afterwards a forward created is programmed and a
/// forward deleted is cleaned up, without a restart of dns-forwarder. Holds the
/// `dns-forwarder` lock like every test here, so no other test of this file runs meanwhile.
#[tokio::test]
async fn dns_forwarder_acts_again_after_its_api_server_restarts() {
    let env = setup(harness_or_skip!([CLUSTER])).await;
    let (vpc_a, vpc_b) = (Harness::unique_name("vpcr"), Harness::unique_name("vpcr"));
    let (dns_a, dns_b) = (Harness::unique_name("dnsr"), Harness::unique_name("dnsr"));
    for (dns, vpc, subnet) in [(&dns_a, &vpc_a, "sub-ra"), (&dns_b, &vpc_b, "sub-rb")] {
        env.h
            .install_vpc_dns(CLUSTER, dns, vpc, subnet, VpcDnsForm::V113RoutesAnnotation)
            .await
            .unwrap();
    }
    env.apply_forward("before", &vpc_a, &[]).await;
    env.wait_reason("before", "Programmed").await;

    let down = env.h.stop_cluster(CLUSTER).unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    down.start().await.unwrap();

    env.apply_forward("after", &vpc_b, &[]).await;
    env.wait_reason("after", "Programmed").await;
    assert!(
        env.annotation_routes(&format!("vpc-dns-{dns_b}"))
            .await
            .contains(&env.route_entry())
    );
    env.delete_forward("before").await;
    assert!(
        !env.annotation_routes(&format!("vpc-dns-{dns_a}"))
            .await
            .contains(&env.route_entry())
    );
    env.delete_forward("after").await;
    env.finish().await;
}

/// A `clusterset.local` name resolves from inside the VPC through real CoreDNS (the DNS leg,
/// `multivpc_e2e::dns`): vpc-dns runs the Corefile dns-forwarder wrote, with the routes of the
/// Deployment it patched, and the lookup goes from the VPC's NAT gateway pod to vpc-dns's
/// address, then to the cluster DNS over the route, then to Lighthouse. `kubectl multivpc
/// diagnose vpc --lookup` passes, and names the link when a vpc-dns pod lacks the route
/// (SERVFAIL) or the Corefile block (NXDOMAIN).
#[tokio::test]
async fn clusterset_local_resolves_from_the_vpc_and_diagnose_names_the_broken_link() {
    use multivpc_e2e::{
        dns::{VPC_DNS_VIP, vpc_dns_routes},
        plugin::{self, check_line},
    };
    let env = setup(harness_or_skip!([CLUSTER])).await;
    let vpc = Harness::unique_name("vpcr");
    let dns = Harness::unique_name("dnsr");
    let deployment = format!("vpc-dns-{dns}");
    env.h
        .install_vpc_dns(
            CLUSTER,
            &dns,
            &vpc,
            "sub-r",
            VpcDnsForm::V113RoutesAnnotation,
        )
        .await
        .unwrap();
    let gw = env
        .h
        .create_nat_gateway(
            CLUSTER,
            NatGatewaySpec::new(&Harness::unique_name("dgw"), &vpc),
        )
        .await
        .unwrap();
    gw.wait_available(&env.h, Duration::from_secs(120))
        .await
        .unwrap();
    let name = "web.demo.svc.clusterset.local";
    env.h
        .dns_leg_up(
            CLUSTER,
            &env.dns_ip,
            &[(name, "242.0.0.10".parse().unwrap())],
        )
        .await
        .unwrap();
    let routes = |d: &Deployment| vpc_dns_routes(d, fixtures::VPC_DNS_NAD_PROVIDER).unwrap();
    let args = ["diagnose", "vpc", vpc.as_str(), "--lookup", name];
    let diagnose = || plugin::run(&env.h, CLUSTER, &args);

    // Before any forward, vpc-dns asks the node's resolver, which knows no clusterset.local.
    let plain = env.corefile().await;
    let kube_ovn_routes = routes(&env.deployments().get(&deployment).await.unwrap());
    env.h
        .run_vpc_dns(CLUSTER, &plain, &kube_ovn_routes)
        .await
        .unwrap();
    let asked = netns_exec(
        &gw.node.netns,
        &["busybox", "nslookup", "-type=a", name, VPC_DNS_VIP],
    )
    .await
    .unwrap();
    assert!(asked.stdout.contains("NXDOMAIN"), "{asked:?}");
    let skipped = diagnose().await;
    assert!(
        check_line(&skipped.stdout, "dns-lookup").starts_with("SKIP"),
        "no forward, nothing to look up yet:\n{}",
        skipped.stdout
    );

    // vpc-dns pods started after dns-forwarder programmed the forward: block and route.
    env.apply_forward("resolve", &vpc, &[]).await;
    env.wait_reason("resolve", "Programmed").await;
    let forwarded = env.corefile().await;
    let programmed = routes(&env.deployments().get(&deployment).await.unwrap());
    assert!(programmed.len() > kube_ovn_routes.len(), "{programmed:?}");
    env.h
        .run_vpc_dns(CLUSTER, &forwarded, &programmed)
        .await
        .unwrap();
    let ok = diagnose().await;
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    let line = check_line(&ok.stdout, "dns-lookup");
    assert!(
        line.starts_with("PASS") && line.contains("242.0.0.10"),
        "{}",
        ok.stdout
    );
    eprintln!("{}", ok.stdout);

    // A vpc-dns pod from before the route: the block, but no way to the cluster DNS.
    env.h
        .run_vpc_dns(CLUSTER, &forwarded, &kube_ovn_routes)
        .await
        .unwrap();
    let no_route = diagnose().await;
    assert_eq!(no_route.code, Some(2), "{}", no_route.stdout);
    // CoreDNS waits on the unreachable cluster DNS longer than nslookup waits for it: no
    // answer, but vpc-dns answers the control lookup, so the route is what is named.
    let line = check_line(&no_route.stdout, "dns-lookup");
    assert!(
        line.starts_with("FAIL") && line.contains("waits on the cluster DNS"),
        "{}",
        no_route.stdout
    );
    assert!(
        no_route.stdout.contains("status.route"),
        "{}",
        no_route.stdout
    );

    // One that has not reloaded its Corefile: the route, but no block.
    env.h
        .run_vpc_dns(CLUSTER, &plain, &programmed)
        .await
        .unwrap();
    let stale = diagnose().await;
    assert_eq!(stale.code, Some(2), "{}", stale.stdout);
    let line = check_line(&stale.stdout, "dns-lookup");
    assert!(
        line.starts_with("FAIL") && line.contains("NXDOMAIN"),
        "{}",
        stale.stdout
    );
    assert!(
        stale.stdout.contains("does not forward clusterset.local"),
        "{}",
        stale.stdout
    );

    env.delete_forward("resolve").await;
    env.h.delete_nat_gateway(&gw).await.unwrap();
    let vdns: Api<multivpc_api::foreign::kubeovn::VpcDns> = Api::all(env.c.clone());
    let _ = vdns.delete(&dns, &DeleteParams::default()).await;
    let _ = env
        .deployments()
        .delete(&deployment, &DeleteParams::default())
        .await;
    env.finish().await;
}
