//! Publishes VPC NAT gateway endpoints and syncs them through the Submariner broker.

use clap::Parser;
use kube::Api;
use multivpc_api::GatewayExIp;
use multivpc_runtime::{CommonArgs, Runtime};

/// Publishes VPC NAT gateway endpoints and syncs them through the Submariner broker.
#[derive(Parser, Debug)]
#[command(name = "exip-syncer", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    multivpc_runtime::main_with("exip-syncer", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let runtime = Runtime::init("exip-syncer", args.common).await?;
    // Registered now so the reconcile families are scraped before the first reconcile.
    let _reconcile_metrics = runtime.metrics().controller("gatewayexip");
    let api: Api<GatewayExIp> = Api::all(runtime.client());
    let readiness = runtime.readiness();
    // The reconciler lands with its own issue; until then the binary runs watch-only.
    runtime
        .run(move |shutdown| {
            multivpc_runtime::watch_only::run(api.clone(), readiness.clone(), shutdown)
        })
        .await
}
