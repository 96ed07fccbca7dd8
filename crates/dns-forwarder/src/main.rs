//! dns-forwarder: lets pods of Kube-OVN custom VPCs resolve Submariner's `clusterset.local` by
//! forwarding it from vpc-dns to the cluster DNS, and routing vpc-dns there.

mod controller;
mod corefile;
mod plan;
mod repairs;
mod routes;

use clap::Parser;
use multivpc_runtime::{
    CommonArgs, Runtime,
    args::{TenancyArgs, duration},
};

/// Forwards clusterset.local from Kube-OVN vpc-dns to the cluster DNS.
#[derive(Parser, Debug)]
#[command(name = "dns-forwarder", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    #[command(flatten)]
    tenancy: TenancyArgs,

    /// Spacing of repeated repairs of one vpc-dns Deployment (each restarts vpc-dns): the
    /// first after a rewrite is immediate, the next waits this long, then twice as long each
    /// time up to 5m, while the Deployment keeps losing the route.
    #[arg(long, env = "REPAIR_SPACING", default_value = "10s", value_parser = duration)]
    repair_spacing: std::time::Duration,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    multivpc_runtime::main_with("dns-forwarder", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = controller::Settings {
        kube_ovn_namespace: args.common.kube_ovn_namespace.clone(),
        repair_spacing: args.repair_spacing,
        tenancy: args.tenancy.tenancy,
    };
    let runtime = Runtime::init(controller::MANAGER, args.common).await?;
    let reconcile_metrics = runtime.metrics().controller("vpcdnsforward");
    let metrics = controller::DnsMetrics::register(runtime.metrics().registry())?;
    let client = runtime.client();
    let probes = runtime.probes();
    let watch_metrics = runtime.metrics().watch();
    runtime
        .run(move |shutdown| {
            controller::run(
                client.clone(),
                settings.clone(),
                reconcile_metrics.clone(),
                metrics.clone(),
                probes.clone(),
                watch_metrics.clone(),
                shutdown,
            )
        })
        .await
}
