//! exip-syncer: publishes VPC NAT gateway endpoints as GatewayExIps, fails a VPC's routes over
//! to a standby gateway, and syncs GatewayExIps both ways through the Submariner broker.

mod broker;
mod controller;
mod failover;
mod metrics;
mod model;
mod pruning;
mod publish;
mod sync;
mod trust;

use std::time::Duration;

use clap::Parser;
use multivpc_api::{
    gateway::{DEFAULT_NAT_GW_NAME_PREFIX, KubeOvn},
    keys::KUBE_SYSTEM,
};
use multivpc_runtime::{
    CommonArgs, Runtime,
    args::{dns_label, duration},
};

/// Publishes VPC NAT gateway endpoints and syncs them through the Submariner broker.
#[derive(Parser, Debug)]
#[command(name = "exip-syncer", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Namespace of the GatewayExIps (the NAT gateway pods are in --kube-ovn-namespace).
    #[arg(long, env = "GATEWAY_NAMESPACE", default_value = KUBE_SYSTEM)]
    gateway_namespace: String,

    /// Kube-OVN's natGwNamePrefix (ConfigMap ovn-vpc-nat-config, v1.13+): NAT gateway
    /// StatefulSets are <prefix>-<gateway>. Pods are found by their vpc_nat_gw annotation; the
    /// prefix is the fallback and names the StatefulSet in messages.
    #[arg(long, env = "NAT_GW_NAME_PREFIX", default_value = DEFAULT_NAT_GW_NAME_PREFIX, value_parser = dns_label)]
    nat_gw_name_prefix: String,

    /// Globalnet CIDR to publish (otherwise the Submariner Cluster's spec.global_cidr[0]).
    #[arg(long, env = "GLOBALNET_CIDR", value_parser = parse_cidr)]
    globalnet_cidr: Option<String>,

    /// How long the gateway a VPC's routes point to must be unavailable (its pod not Ready,
    /// or its tunnels failing) before failover. A pod deleted after it was available fails
    /// over at once.
    #[arg(long, env = "FAILOVER_GRACE_PERIOD", default_value = "5s", value_parser = duration)]
    failover_grace_period: Duration,

    /// What to do when a failed primary is available again.
    #[arg(long, env = "FAILBACK", value_enum, default_value_t = failover::FailbackPolicy::Never)]
    failback: failover::FailbackPolicy,

    /// With --failback=auto: how long the primary must be available again before fail-back.
    #[arg(long, env = "FAILBACK_DELAY", default_value = "60s", value_parser = duration)]
    failback_delay: Duration,

    /// Fail a gateway over, like one whose pod is lost, when every tunnel it carries whose
    /// health tunnel-manager knows is Healthy=False (after the same grace period).
    #[arg(long, env = "FAILOVER_ON_UNHEALTHY_TUNNELS", default_value_t = true,
          action = clap::ArgAction::Set)]
    failover_on_unhealthy_tunnels: bool,

    /// How long a gateway failed over for its tunnels is not used again, as carrier or standby.
    #[arg(long, env = "UNHEALTHY_FAILOVER_HOLDDOWN", default_value = "5m", value_parser = duration)]
    unhealthy_failover_holddown: Duration,

    /// Where the broker credentials come from: "service-discovery" (Submariner's), "none", or
    /// "secret:<namespace>/<name>" (a Secret whose key `kubeconfig` is a broker kubeconfig).
    #[arg(long, env = "BROKER_CREDENTIALS", default_value = "service-discovery", value_parser = parse_source)]
    broker_credentials: broker::Source,

    /// Broker namespace (default: ServiceDiscovery's brokerK8sRemoteNamespace, else
    /// submariner-k8s-broker).
    #[arg(long, env = "BROKER_NAMESPACE")]
    broker_namespace: Option<String>,

    /// Most GatewayExIps imported from any one other cluster (the rest are refused, counted and
    /// logged): a flood from one member cannot crowd out the others.
    #[arg(long, env = "MAX_IMPORTED_PER_CLUSTER", default_value_t = trust::DEFAULT_MAX_PER_CLUSTER)]
    max_imported_per_cluster: usize,

    /// Accept a plain-http broker URL and unverified broker TLS (ServiceDiscovery's
    /// brokerK8sInsecure, a kubeconfig's insecure-skip-tls-verify), with a warning. Refused
    /// without it: the broker token would be exposed.
    #[arg(long, env = "ALLOW_INSECURE_BROKER")]
    allow_insecure_broker: bool,

    /// Most GatewayExIps imported from the broker in all.
    #[arg(long, env = "MAX_IMPORTED", default_value_t = trust::DEFAULT_MAX_TOTAL)]
    max_imported: usize,
}

fn parse_cidr(s: &str) -> Result<String, String> {
    s.parse::<multivpc_api::net::Ipv4Cidr>()
        .map(|c| c.to_string())
        .map_err(|e| e.to_string())
}

fn parse_source(s: &str) -> Result<broker::Source, String> {
    s.parse()
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    multivpc_runtime::main_with(controller::MANAGER, run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = controller::Settings {
        cluster_id: args.common.cluster_id.clone(),
        namespace: args.gateway_namespace.clone(),
        kube_ovn: KubeOvn {
            namespace: args.common.kube_ovn_namespace.clone(),
            nat_gw_name_prefix: args.nat_gw_name_prefix.clone(),
        },
        globalnet_cidr: args.globalnet_cidr.clone(),
        policy: failover::Policy {
            grace: args.failover_grace_period,
            failback: args.failback,
            failback_delay: args.failback_delay,
            on_unhealthy_tunnels: args.failover_on_unhealthy_tunnels,
            unhealthy_holddown: args.unhealthy_failover_holddown,
        },
        broker: broker::BrokerSettings {
            access: broker::Access {
                source: args.broker_credentials.clone(),
                namespace: args.broker_namespace.clone(),
                allow_insecure: args.allow_insecure_broker,
            },
            max_imported_per_cluster: args.max_imported_per_cluster,
            max_imported: args.max_imported,
        },
    };
    let runtime = Runtime::init(controller::MANAGER, args.common).await?;
    let reconcile_metrics = runtime.metrics().controller("gatewayexip");
    let metrics = metrics::SyncerMetrics::register(runtime.metrics().registry())?;
    let client = runtime.client();
    let probes = runtime.probes();
    let watch_metrics = runtime.metrics().watch();
    runtime
        .run(move |shutdown| {
            controller::run(
                client.clone(),
                settings.clone(),
                metrics.clone(),
                reconcile_metrics.clone(),
                probes.clone(),
                watch_metrics.clone(),
                shutdown,
            )
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "x",
            "--failover-grace-period=1500ms",
            "--failback=auto",
            "--broker-credentials=secret:ns1/brk",
            "--globalnet-cidr=242.1.0.0/16",
        ])
        .unwrap();
        assert_eq!(a.failover_grace_period, Duration::from_millis(1500));
        assert_eq!(a.failback, failover::FailbackPolicy::Auto);
        assert_eq!(
            a.broker_credentials,
            broker::Source::Secret {
                namespace: "ns1".into(),
                name: "brk".into()
            }
        );
        let d = Args::try_parse_from(["x"]).unwrap();
        assert_eq!(d.failover_grace_period, Duration::from_secs(5));
        assert_eq!(d.failback, failover::FailbackPolicy::Never);
        assert_eq!(d.broker_credentials, broker::Source::ServiceDiscovery);
        assert_eq!(d.gateway_namespace, "kube-system");
        assert!(d.failover_on_unhealthy_tunnels);
        assert_eq!(d.unhealthy_failover_holddown, Duration::from_secs(300));
        let off = Args::try_parse_from(["x", "--failover-on-unhealthy-tunnels=false"]).unwrap();
        assert!(!off.failover_on_unhealthy_tunnels);
        for bad in [
            "--broker-credentials=secret:x",
            "--globalnet-cidr=242.1.0.0",
            "--failover-grace-period=5d",
        ] {
            assert!(Args::try_parse_from(["x", bad]).is_err(), "{bad}");
        }
    }
}
