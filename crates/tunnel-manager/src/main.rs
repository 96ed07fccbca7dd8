//! Builds GRE and VXLAN tunnels in Kube-OVN VPC NAT gateway pods.

#[cfg(test)]
mod netns_tests;
#[allow(dead_code)]
mod resolve;
#[allow(dead_code)]
mod script;

use clap::Parser;
use kube::Api;
use multivpc_api::VpcNatTunnel;
use multivpc_runtime::{CommonArgs, Runtime};

/// Builds GRE and VXLAN tunnels in Kube-OVN VPC NAT gateway pods.
#[derive(Parser, Debug)]
#[command(name = "tunnel-manager", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    multivpc_runtime::main_with("tunnel-manager", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let runtime = Runtime::init("tunnel-manager", args.common).await?;
    // Registered now so the reconcile families are scraped before the first reconcile.
    let _reconcile_metrics = runtime.metrics().controller("vpcnattunnel");
    let api: Api<VpcNatTunnel> = Api::all(runtime.client());
    let readiness = runtime.readiness();
    // The reconciler lands with its own issue; until then the binary runs watch-only.
    runtime
        .run(move |shutdown| {
            multivpc_runtime::watch_only::run(api.clone(), readiness.clone(), shutdown)
        })
        .await
}
