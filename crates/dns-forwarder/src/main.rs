//! dns-forwarder: lets pods of Kube-OVN custom VPCs resolve Submariner's `clusterset.local` by
//! forwarding it from vpc-dns to the cluster DNS, and routing vpc-dns there.

mod controller;
mod corefile;
mod plan;
mod routes;

use clap::Parser;
use multivpc_runtime::{CommonArgs, Runtime};

/// Forwards clusterset.local from Kube-OVN vpc-dns to the cluster DNS.
#[derive(Parser, Debug)]
#[command(name = "dns-forwarder", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    multivpc_runtime::main_with("dns-forwarder", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let kube_ovn_namespace = args.common.kube_ovn_namespace.clone();
    let runtime = Runtime::init(controller::MANAGER, args.common).await?;
    let reconcile_metrics = runtime.metrics().controller("vpcdnsforward");
    let routes_programmed = prometheus::IntGauge::new(
        "multivpc_dns_routes_programmed",
        "vpc-dns Deployments carrying the route to the cluster DNS",
    )?;
    runtime
        .metrics()
        .registry()
        .register(Box::new(routes_programmed.clone()))?;
    let client = runtime.client();
    let readiness = runtime.readiness();
    let watch_metrics = runtime.metrics().watch();
    runtime
        .run(move |shutdown| {
            controller::run(
                client.clone(),
                kube_ovn_namespace.clone(),
                reconcile_metrics.clone(),
                routes_programmed.clone(),
                readiness.clone(),
                watch_metrics.clone(),
                shutdown,
            )
        })
        .await
}
