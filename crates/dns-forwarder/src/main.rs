//! Forwards clusterset.local from Kube-OVN vpc-dns to the cluster DNS.

use clap::Parser;
use kube::Api;
use multivpc_api::VpcDnsForward;
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
    let runtime = Runtime::init("dns-forwarder", args.common).await?;
    // Registered now so the reconcile families are scraped before the first reconcile.
    let _reconcile_metrics = runtime.metrics().controller("vpcdnsforward");
    let api: Api<VpcDnsForward> = Api::all(runtime.client());
    let readiness = runtime.readiness();
    // The reconciler lands with its own issue; until then the binary runs watch-only.
    runtime
        .run(move |shutdown| {
            multivpc_runtime::watch_only::run(api.clone(), readiness.clone(), shutdown)
        })
        .await
}
