//! tunnel-manager: turns each VpcNatTunnel into a GRE or VXLAN tunnel, routes and SNAT inside
//! the local Kube-OVN VPC NAT gateway pod (through `pods/exec`), and keeps it that way.

mod controller;
mod exec;
mod health;
mod ipsec;
#[cfg(test)]
mod netns_tests;
mod plan;
mod prober;
mod resolve;
mod script;

use std::time::Duration;

use clap::Parser;
use multivpc_api::{
    gateway::{DEFAULT_NAT_GW_NAME_PREFIX, KubeOvn},
    keys::KUBE_SYSTEM,
};
use multivpc_runtime::{
    CommonArgs, Runtime,
    args::{TenancyArgs, dns_label, duration},
};

/// Builds GRE and VXLAN tunnels in Kube-OVN VPC NAT gateway pods.
#[derive(Parser, Debug)]
#[command(name = "tunnel-manager", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    #[command(flatten)]
    tenancy: TenancyArgs,

    /// Namespace of the GatewayExIps (local and synchronised from other clusters).
    #[arg(long, env = "GATEWAY_NAMESPACE", default_value = KUBE_SYSTEM)]
    gateway_namespace: String,

    /// Kube-OVN's natGwNamePrefix (ConfigMap ovn-vpc-nat-config, v1.13+): NAT gateway
    /// StatefulSets are <prefix>-<gateway>. Pods are found by their vpc_nat_gw annotation; the
    /// prefix is the fallback and names the StatefulSet in messages.
    #[arg(long, env = "NAT_GW_NAME_PREFIX", default_value = DEFAULT_NAT_GW_NAME_PREFIX, value_parser = dns_label)]
    nat_gw_name_prefix: String,

    /// Period of the read-only verification that finds and repairs drift in the gateway pods
    /// (e.g. 300s, 5m, 1h; 0 disables it).
    #[arg(long, env = "VERIFY_INTERVAL", default_value = "5m", value_parser = duration)]
    verify_interval: Duration,

    /// Time limit of one exec in a gateway pod (the exec itself, not the wait for the pod's turn
    /// or a permit).
    #[arg(long, env = "EXEC_TIMEOUT", default_value = "30s", value_parser = duration)]
    exec_timeout: Duration,

    /// How often each programmed tunnel's far end is probed through the tunnel (one exec per
    /// gateway pod per round); 0 disables the probes and the Healthy condition says so.
    #[arg(long, env = "PROBE_INTERVAL", default_value = "2s", value_parser = duration)]
    probe_interval: Duration,

    /// How long a probe waits for its answer (whole seconds, at least 1s).
    #[arg(long, env = "PROBE_TIMEOUT", default_value = "1s", value_parser = duration)]
    probe_timeout: Duration,

    /// Unanswered probes in a row that make a tunnel Healthy=False.
    #[arg(long, env = "PROBE_FAILURE_THRESHOLD", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    probe_failure_threshold: u32,

    /// Answered probes in a row that make an unhealthy tunnel Healthy=True again.
    #[arg(long, env = "PROBE_RECOVERY_THRESHOLD", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    probe_recovery_threshold: u32,

    /// The Secret holding the fleet's IPsec pre-shared key, as <namespace>/<name> (the same on
    /// every cluster, as Submariner's submariner-operator/submariner-ipsec-psk is). Unset:
    /// tunnels with encryption ipsec are refused (Ready=False IPsecKeyUnavailable).
    #[arg(long, env = "IPSEC_PSK_SECRET", value_parser = secret_ref)]
    ipsec_psk_secret: Option<(String, String)>,

    /// The key of that Secret holding the pre-shared key (at least 32 bytes).
    #[arg(long, env = "IPSEC_PSK_KEY", default_value = "psk")]
    ipsec_psk_key: String,

    /// How long one epoch's ESP keys serve before both ends move to the next (the clocks of the
    /// gateways' nodes must agree within it).
    #[arg(long, env = "IPSEC_REKEY_INTERVAL", default_value = "1h", value_parser = duration)]
    ipsec_rekey_interval: Duration,

    /// Execs running at once across all gateway pods (one at a time per pod regardless).
    #[arg(long, env = "MAX_CONCURRENT_EXECS", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    max_concurrent_execs: u16,
}

/// `<namespace>/<name>` of a Secret.
fn secret_ref(s: &str) -> Result<(String, String), String> {
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected <namespace>/<name>"))?;
    let ns = dns_label(ns)?;
    if !multivpc_api::net::is_object_name(name) {
        return Err(format!("{name:?} is not a Secret name"));
    }
    Ok((ns, name.to_owned()))
}

/// How many exec timeouts a reconcile may take before `/healthz` calls it stalled.
const STALL_PER_EXEC: u32 = 4;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    multivpc_runtime::main_with("tunnel-manager", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = controller::Settings {
        cluster_id: args.common.cluster_id.clone().filter(|c| !c.is_empty()),
        exip_namespace: args.gateway_namespace.clone(),
        kube_ovn: KubeOvn {
            namespace: args.common.kube_ovn_namespace.clone(),
            nat_gw_name_prefix: args.nat_gw_name_prefix.clone(),
        },
        verify_interval: (!args.verify_interval.is_zero()).then_some(args.verify_interval),
        tenancy: args.tenancy.tenancy,
        probes: (!args.probe_interval.is_zero()).then(|| prober::ProbeSettings {
            interval: args.probe_interval,
            timeout_secs: args.probe_timeout.as_secs_f64().ceil().max(1.0) as u64,
            policy: health::Policy {
                failure_threshold: args.probe_failure_threshold,
                recovery_threshold: args.probe_recovery_threshold,
            },
        }),
        ipsec: args
            .ipsec_psk_secret
            .clone()
            .map(|(namespace, secret)| controller::IpsecSettings {
                namespace,
                secret,
                key: args.ipsec_psk_key.clone(),
                rekey_interval: args.ipsec_rekey_interval,
            }),
    };
    if args.ipsec_rekey_interval < Duration::from_secs(10) {
        anyhow::bail!("--ipsec-rekey-interval must be at least 10s");
    }
    if args.exec_timeout.is_zero() {
        anyhow::bail!("--exec-timeout must be greater than 0");
    }
    // A reconcile may run a few execs in a row (a check, a cleanup, a converge): one that only
    // waits for its execs must not count as stalled.
    if args.common.stall_timeout < args.exec_timeout * STALL_PER_EXEC {
        anyhow::bail!(
            "--stall-timeout ({:?}) must be at least {STALL_PER_EXEC} × --exec-timeout ({:?})",
            args.common.stall_timeout,
            args.exec_timeout
        );
    }
    let runtime = Runtime::init(controller::MANAGER, args.common).await?;
    let reconcile_metrics = runtime.metrics().controller("vpcnattunnel");
    let exec_metrics = exec::ExecMetrics::register(runtime.metrics().registry())?;
    let tunnel_metrics = controller::TunnelMetrics::register(runtime.metrics().registry())?;
    let health_metrics = prober::HealthMetrics::register(runtime.metrics().registry())?;
    let client = runtime.client();
    let probes = runtime.probes();
    let watch_metrics = runtime.metrics().watch();
    let (timeout, concurrency) = (args.exec_timeout, usize::from(args.max_concurrent_execs));
    runtime
        .run(move |shutdown| {
            controller::run(
                client.clone(),
                settings.clone(),
                reconcile_metrics.clone(),
                tunnel_metrics.clone(),
                health_metrics.clone(),
                exec::Executor::new(
                    client.clone(),
                    settings.kube_ovn.namespace.clone(),
                    timeout,
                    concurrency,
                    exec_metrics.clone(),
                ),
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
    fn defaults() {
        let a = Args::try_parse_from(["tunnel-manager"]).unwrap();
        assert_eq!(a.verify_interval, Duration::from_secs(300));
        assert_eq!(a.exec_timeout, Duration::from_secs(30));
        assert_eq!(a.max_concurrent_execs, 8);
        assert_eq!(a.probe_interval, Duration::from_secs(2));
        assert_eq!(a.probe_timeout, Duration::from_secs(1));
        assert_eq!(
            (a.probe_failure_threshold, a.probe_recovery_threshold),
            (3, 2)
        );
        assert_eq!(a.gateway_namespace, "kube-system");
        assert_eq!(
            a.tenancy.tenancy,
            multivpc_api::tenancy::Tenancy::VpcNamespaces
        );
        assert_eq!(a.ipsec_psk_secret, None);
        assert_eq!(
            (a.ipsec_psk_key.as_str(), a.ipsec_rekey_interval),
            ("psk", Duration::from_secs(3600))
        );
    }

    #[test]
    fn the_psk_secret_is_a_namespace_and_a_name() {
        let a = Args::try_parse_from([
            "tunnel-manager",
            "--ipsec-psk-secret=submariner-operator/submariner-ipsec-psk",
        ])
        .unwrap();
        assert_eq!(
            a.ipsec_psk_secret,
            Some((
                "submariner-operator".to_owned(),
                "submariner-ipsec-psk".to_owned()
            ))
        );
        for bad in ["noslash", "Bad/x", "ns/bad name", "ns/"] {
            assert!(
                Args::try_parse_from(["tunnel-manager", &format!("--ipsec-psk-secret={bad}")])
                    .is_err(),
                "{bad}"
            );
        }
    }
}
