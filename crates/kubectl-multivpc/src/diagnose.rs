//! `kubectl multivpc diagnose`: reads the objects, runs the in-pod commands, and hands both to
//! the pure checks in `checks.rs`. Nothing here decides a check's outcome.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt, api::ListParams};
use multivpc_api::{
    GatewayExIp, VpcNatTunnel,
    foreign::kubeovn::VpcNatGateway,
    gateway::{KubeOvn, NAT_GW_CONTAINER, pod_ready},
    keys::gateway_exip_name,
};

use crate::checks::{self, CheckResult, CommandOutput, Report};

/// Longest an exec may take (the in-pod reads, or three pings of a second each).
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Output kept per stream: nat POSTROUTING of a gateway with thousands of tunnels fits.
const MAX_OUTPUT: u64 = 8 << 20;

/// Where the objects a diagnosis reads live.
pub struct Namespaces {
    pub kube_ovn: String,
    pub gateway: String,
    /// Kube-OVN's natGwNamePrefix (gateway pods without the vpc_nat_gw annotation).
    pub nat_gw_name_prefix: String,
}

/// An error as a check's reason prints it: an API refusal by its message alone (its Display
/// repeats the whole status).
fn in_short(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => status.message.clone(),
        _ => e.to_string(),
    }
}

/// Longest the broker may take to answer before its checks are skipped.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker as exip-syncer reaches it, connected at the first tunnel that needs it (once per
/// run): a client and its namespace, or why there is none.
pub struct Broker {
    access: multivpc_runtime::broker::Access,
    connection: tokio::sync::OnceCell<Result<(Client, String), String>>,
}

impl Broker {
    pub fn new(access: multivpc_runtime::broker::Access) -> Self {
        Self {
            access,
            connection: tokio::sync::OnceCell::new(),
        }
    }

    async fn connection(&self, client: &Client) -> &Result<(Client, String), String> {
        self.connection
            .get_or_init(|| async {
                if self.access.source == multivpc_runtime::broker::Source::Disabled {
                    return Err("--broker-credentials none".into());
                }
                let mut secret_note = None;
                let connect =
                    multivpc_runtime::broker::connect(client, &self.access, &mut secret_note);
                match tokio::time::timeout(BROKER_TIMEOUT, connect).await {
                    Ok(Ok(connected)) => Ok(connected),
                    Ok(Err(e)) => Err(e.chain().map(in_short).collect::<Vec<_>>().join(": ")),
                    Err(_) => Err(format!("no answer within {}s", BROKER_TIMEOUT.as_secs())),
                }
            })
            .await
    }
}

/// Every check of tunnel `namespace/name`, in order.
pub async fn tunnel(
    client: &Client,
    ns: &Namespaces,
    broker: &Broker,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Report> {
    let tunnels: Api<VpcNatTunnel> = Api::namespaced(client.clone(), namespace);
    let tunnel = tunnels
        .get_opt(name)
        .await
        .with_context(|| format!("cannot read VpcNatTunnel {namespace}/{name}"))?;
    let mut report = Report::default();
    report.push(checks::tunnel_ready(namespace, name, tunnel.as_ref()));
    let Some(tunnel) = tunnel else {
        for check in [
            checks::GATEWAY_POD,
            checks::REMOTE_GATEWAY,
            checks::BROKER_GATEWAY,
        ]
        .into_iter()
        .chain(checks::IN_POD_CHECKS)
        .chain([checks::HEALTHY, checks::PING])
        {
            report.push(CheckResult::skip(
                check,
                "needs tunnel-ready: the tunnel does not exist",
            ));
        }
        return Ok(report);
    };

    // b. The gateway pod.
    let pod_name = match checks::gateway_pod_ref(&tunnel) {
        Ok(want) => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.kube_ovn);
            let pod = pods
                .get_opt(&want.name)
                .await
                .with_context(|| format!("cannot read pod {}/{}", ns.kube_ovn, want.name))?;
            report.push(checks::gateway_pod(&ns.kube_ovn, want, pod.as_ref()));
            Some(want.name.clone())
        }
        Err(result) => {
            report.push(result);
            None
        }
    };

    // c. The remote GatewayExIp.
    let exips: Api<GatewayExIp> = Api::namespaced(client.clone(), &ns.gateway);
    let remote = gateway_exip_name(&tunnel.spec.gateway_name, &tunnel.spec.cluster_id);
    let exip = exips
        .get_opt(&remote)
        .await
        .with_context(|| format!("cannot read GatewayExIp {}/{remote}", ns.gateway))?;
    report.push(checks::remote_gateway(
        &tunnel,
        &ns.gateway,
        exip.as_ref(),
        jiff::Timestamp::now(),
    ));
    // A list by name: members may list and watch GatewayExIps on the broker, not get them
    // (the broker chart grants exip-syncer's verbs only).
    let on_broker = match broker.connection(client).await {
        Ok((broker, broker_ns)) => Api::<GatewayExIp>::namespaced(broker.clone(), broker_ns)
            .list(&ListParams::default().fields(&format!("metadata.name={remote}")))
            .await
            .map(|l| (broker_ns.as_str(), l.items.into_iter().next()))
            .map_err(|e| {
                format!(
                    "cannot list GatewayExIp {broker_ns}/{remote} there: {}",
                    in_short(&e)
                )
            }),
        Err(why) => Err(why.clone()),
    };
    report.push(checks::broker_gateway(
        &tunnel,
        exip.as_ref(),
        on_broker
            .as_ref()
            .map(|(n, o)| (*n, o.as_ref()))
            .map_err(Clone::clone),
        jiff::Timestamp::now(),
    ));

    // d. Inside the pod.
    let pod_ok = report.passed(checks::GATEWAY_POD);
    let plan = match (pod_ok, checks::in_pod_plan(&tunnel)) {
        (false, _) => {
            let why = format!("needs {}", checks::GATEWAY_POD);
            for check in checks::IN_POD_CHECKS {
                report.push(CheckResult::skip(check, why.clone()));
            }
            None
        }
        (true, Err(results)) => {
            results.into_iter().for_each(|r| report.push(r));
            None
        }
        (true, Ok(plan)) => {
            let pod = pod_name.clone().unwrap_or_default();
            let output = exec(client, &ns.kube_ovn, &pod, plan.script()).await;
            let shown = format!("{}/{pod}", ns.kube_ovn);
            checks::in_pod_checks(&plan, &shown, &output)
                .into_iter()
                .for_each(|r| report.push(r));
            Some(plan)
        }
    };

    // e. Health: the condition, then a ping of our own.
    report.push(checks::healthy(&tunnel));
    let ping = match (plan, report.passed(checks::DEVICE)) {
        (Some(plan), true) => match checks::ping_target(&tunnel) {
            Ok(target) => {
                let pod = pod_name.unwrap_or_default();
                let output = exec(
                    client,
                    &ns.kube_ovn,
                    &pod,
                    checks::ping_script(&plan.device, target),
                )
                .await;
                checks::ping(&plan.device, target, &output)
            }
            Err(result) => result,
        },
        _ => CheckResult::skip(checks::PING, format!("needs {}", checks::DEVICE)),
    };
    report.push(ping);
    Ok(report)
}

/// The `clusterset.local` forwarding checks of VPC `vpc` ([`checks::dns_forwards`]), from every
/// VpcDnsForward of the cluster.
pub async fn dns_forwards(client: &Client, vpc: &str) -> anyhow::Result<Report> {
    let forwards: Api<multivpc_api::VpcDnsForward> = Api::all(client.clone());
    let list = forwards
        .list(&ListParams::default())
        .await
        .context("cannot list VpcDnsForwards")?
        .items;
    let mut report = Report::default();
    for check in checks::dns_forwards(vpc, &list) {
        report.push(check);
    }
    Ok(report)
}

/// The `dns-lookup` check of VPC `vpc` ([`dns_lookup`](crate::dns_lookup)): `name` (else the
/// first ServiceImport's name) asked of vpc-dns's address from a Ready NAT gateway pod of the
/// VPC. Runs only when a VpcDnsForward of the VPC is Ready (`dns` holds those checks). What
/// cannot be read (RBAC) fails this check alone: the tunnels' checks still run.
pub async fn dns_lookup(
    client: &Client,
    ns: &Namespaces,
    vpc: &str,
    name: Option<String>,
    dns: &Report,
) -> CheckResult {
    lookup_in_vpc(client, ns, vpc, name, dns)
        .await
        .unwrap_or_else(|e| {
            CheckResult::fail(
                crate::dns_lookup::DNS_LOOKUP,
                format!("{e:#}"),
                "the lookup reads Kube-OVN's vpc-dns-config ConfigMap, the VpcNatGateways, their pods and ServiceImports, and execs into a gateway pod: run it with those permissions",
            )
        })
}

async fn lookup_in_vpc(
    client: &Client,
    ns: &Namespaces,
    vpc: &str,
    name: Option<String>,
    dns: &Report,
) -> anyhow::Result<CheckResult> {
    use crate::dns_lookup::{self as lookup, DNS_LOOKUP};
    if !dns.passed(checks::DNS_FORWARD) {
        return Ok(CheckResult::skip(
            DNS_LOOKUP,
            format!("needs {}", checks::DNS_FORWARD),
        ));
    }
    let name = match name {
        Some(name) => name,
        None => match first_service_import(client).await? {
            Some(name) => name,
            None => {
                return Ok(CheckResult::skip(
                    DNS_LOOKUP,
                    "nothing to resolve: no ServiceImport in this cluster (export a Service with subctl export service, or name one with --lookup)",
                ));
            }
        },
    };
    let configs: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns.kube_ovn);
    let config = configs
        .get_opt(lookup::VPC_DNS_CONFIG)
        .await
        .with_context(|| {
            format!(
                "cannot read ConfigMap {}/{}",
                ns.kube_ovn,
                lookup::VPC_DNS_CONFIG
            )
        })?;
    let server = match lookup::vip(
        config
            .as_ref()
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(lookup::COREDNS_VIP_KEY))
            .map(String::as_str),
    ) {
        Ok(ip) => ip,
        Err(result) => return Ok(result),
    };
    let Some(pod) = ready_gateway_pod(client, ns, vpc).await? else {
        return Ok(CheckResult::skip(
            DNS_LOOKUP,
            format!("no Ready NAT gateway pod in VPC {vpc} to ask from"),
        ));
    };
    let output = exec(client, &ns.kube_ovn, &pod, lookup::script(&name, server)).await;
    Ok(lookup::check(
        &name,
        server,
        &format!("{}/{pod}", ns.kube_ovn),
        &output,
    ))
}

/// `<name>.<namespace>.svc.clusterset.local` of the first ServiceImport (Lighthouse's, API
/// `multicluster.x-k8s.io/v1alpha1`) in a service's namespace, when the API exists. Those in
/// `submariner-operator` are the per-cluster copies of Lighthouse before 0.15, whose names are
/// not service names.
async fn first_service_import(client: &Client) -> anyhow::Result<Option<String>> {
    use kube::{
        api::{ApiResource, DynamicObject},
        core::GroupVersionKind,
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "multicluster.x-k8s.io",
        "v1alpha1",
        "ServiceImport",
    ));
    let imports: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let list = match imports.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
        Err(e) => return Err(e).context("cannot list ServiceImports"),
    };
    let mut names: Vec<String> = list
        .iter()
        .filter_map(|i| {
            let namespace = i.namespace()?;
            (namespace != "submariner-operator")
                .then(|| crate::dns_lookup::service_name(&i.name_any(), &namespace).ok())
                .flatten()
        })
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

/// A Ready pod of a VpcNatGateway of `vpc`, by gateway name then pod name.
async fn ready_gateway_pod(
    client: &Client,
    ns: &Namespaces,
    vpc: &str,
) -> anyhow::Result<Option<String>> {
    let serving = gateways_of_vpc(client, vpc).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.kube_ovn);
    let mut list = pods
        .list(&ListParams::default().labels(&KubeOvn::pod_selector()))
        .await
        .context("cannot list the NAT gateway pods")?
        .items;
    list.sort_by_key(|p| p.name_any());
    let kube_ovn = KubeOvn {
        namespace: ns.kube_ovn.clone(),
        nat_gw_name_prefix: ns.nat_gw_name_prefix.clone(),
    };
    Ok(serving.iter().find_map(|gw| {
        list.iter()
            .find(|p| kube_ovn.gateway_of(p).as_ref() == Some(gw) && pod_ready(p))
            .map(|p| p.name_any())
    }))
}

/// The names of the VpcNatGateways serving `vpc`, sorted.
async fn gateways_of_vpc(client: &Client, vpc: &str) -> anyhow::Result<Vec<String>> {
    let gateways: Api<VpcNatGateway> = Api::all(client.clone());
    let mut serving: Vec<String> = gateways
        .list(&ListParams::default())
        .await
        .context("cannot list VpcNatGateways")?
        .into_iter()
        .filter(|g| g.spec.vpc == vpc)
        .map(|g| g.name_any())
        .collect();
    serving.sort();
    Ok(serving)
}

/// The tunnels whose gateway serves VPC `vpc`: `status.localGateway` (after a failover) or else
/// `spec.natGwDp` is a VpcNatGateway of that VPC. Sorted by namespace and name.
pub async fn tunnels_of_vpc(
    client: &Client,
    namespace: Option<&str>,
    vpc: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let serving = gateways_of_vpc(client, vpc).await?;
    if serving.is_empty() {
        anyhow::bail!("no VpcNatGateway serves VPC {vpc}");
    }
    let tunnels: Api<VpcNatTunnel> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut found: Vec<(String, String)> = tunnels
        .list(&ListParams::default())
        .await
        .context("cannot list VpcNatTunnels")?
        .into_iter()
        .filter(|t| {
            let local = t
                .status
                .as_ref()
                .and_then(|s| s.local_gateway.as_deref())
                .unwrap_or(&t.spec.nat_gw_dp);
            serving.iter().any(|g| g == local)
        })
        .map(|t| (t.namespace().unwrap_or_default(), t.name_any()))
        .collect();
    found.sort();
    Ok(found)
}

/// Runs `sh -c <script>` in the gateway container of `namespace/pod`: its output and exit
/// status, or why it could not run.
async fn exec(
    client: &Client,
    namespace: &str,
    pod: &str,
    script: String,
) -> Result<CommandOutput, String> {
    tokio::time::timeout(EXEC_TIMEOUT, exec_inner(client, namespace, pod, script))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", EXEC_TIMEOUT.as_secs())))
}

async fn exec_inner(
    client: &Client,
    namespace: &str,
    pod: &str,
    script: String,
) -> Result<CommandOutput, String> {
    use multivpc_runtime::pod_exec::{self, Command};
    let command = Command {
        namespace,
        pod,
        container: Some(NAT_GW_CONTAINER),
        argv: vec!["sh".to_owned(), "-c".to_owned(), script],
        stdin: None,
        max_output: MAX_OUTPUT,
    };
    let finished = pod_exec::run(client, &command)
        .await
        .map_err(|e| e.to_string())?;
    Ok(CommandOutput {
        stdout: finished.stdout,
        stderr: finished.stderr,
        exit_code: finished.exit_code,
    })
}
