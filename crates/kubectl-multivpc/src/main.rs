//! kubectl-multivpc: a kubectl plugin (`kubectl multivpc ...`) for kubeovn-multivpc. `show`
//! prints the fleet as this cluster sees it (gateways, tunnels, broker sync); `diagnose` walks
//! one tunnel (or every tunnel of a VPC) from its object to packets crossing it, one check per
//! line. docs/kubectl-multivpc.md describes the commands, the output and every check.

mod checks;
mod diagnose;
mod dns_lookup;
mod view;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use multivpc_api::{
    GatewayExIp, VpcNatTunnel,
    foreign::{
        kubeovn::VpcNatGateway,
        submariner::{SERVICE_DISCOVERY_NAME, SUBMARINER_NAMESPACE, ServiceDiscovery},
    },
    gateway::{DEFAULT_NAT_GW_NAME_PREFIX, KubeOvn},
    keys::KUBE_SYSTEM,
};

const BINARY: &str = "kubectl-multivpc";
/// How long the API server has to answer the first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit status of a diagnosis with a failed check (1 is an error that stopped the command).
const EXIT_CHECK_FAILED: u8 = 2;

/// kubeovn-multivpc's view of this cluster, and step-by-step tunnel diagnosis.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-multivpc",
    bin_name = "kubectl multivpc",
    version,
    about
)]
struct Args {
    /// Path of the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,

    /// Namespace of the tunnels. show and diagnose vpc: all namespaces when not given;
    /// diagnose tunnel: the context's namespace.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,

    /// Namespace of the GatewayExIps (tunnel-manager's and exip-syncer's --gateway-namespace).
    #[arg(long, global = true, default_value = KUBE_SYSTEM)]
    gateway_namespace: String,

    /// Kube-OVN's namespace, where the NAT gateway pods run.
    #[arg(long, global = true, default_value = KUBE_SYSTEM)]
    kube_ovn_namespace: String,

    /// Kube-OVN's natGwNamePrefix: a gateway pod without the vpc_nat_gw annotation is known by
    /// its app=<prefix>-<gateway> label.
    #[arg(long, global = true, default_value = DEFAULT_NAT_GW_NAME_PREFIX)]
    nat_gw_name_prefix: String,

    /// Where the broker credentials come from, as exip-syncer's flag of that name:
    /// `service-discovery` (Submariner's), `secret:<namespace>/<name>` (a kubeconfig), or
    /// `none` (diagnose does not read the broker).
    #[arg(long, global = true, default_value = "service-discovery")]
    broker_credentials: multivpc_runtime::broker::Source,

    /// The broker namespace (default: ServiceDiscovery's, else the kubeconfig's, else
    /// submariner-k8s-broker).
    #[arg(long, global = true)]
    broker_namespace: Option<String>,

    /// Accept a broker reached over http:// or without TLS verification.
    #[arg(long, global = true)]
    allow_insecure_broker: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Gateways, tunnels and GatewayExIps (broker sync) as this cluster sees them.
    Show {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,

        /// This cluster's Submariner cluster ID (default: ServiceDiscovery's clusterID).
        #[arg(long)]
        cluster_id: Option<String>,
    },
    /// Check a tunnel step by step; exits 2 when a check fails.
    Diagnose {
        #[command(subcommand)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum Target {
    /// One VpcNatTunnel (in -n, else the context's namespace).
    Tunnel {
        /// The VpcNatTunnel's name.
        name: String,
    },
    /// The VPC's clusterset.local resolution, then every tunnel whose local gateway serves the
    /// VPC (in -n, else all namespaces).
    Vpc {
        /// The Kube-OVN VPC's name.
        vpc: String,

        /// A clusterset.local name to resolve from inside the VPC (default: the first
        /// ServiceImport's <name>.<namespace>.svc.clusterset.local, when there is one).
        #[arg(long, value_name = "NAME")]
        lookup: Option<String>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Table,
    Json,
    Yaml,
}

fn main() -> ExitCode {
    // kubectl passes its own name's plugin arguments through unchanged; clap prints usage
    // errors and help itself (exit 2 and 0).
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{BINARY}: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(err) => {
            // One line, causes included, never a backtrace (RUST_BACKTRACE may be set).
            eprintln!("{BINARY}: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (client, default_namespace) = connect(&args).await?;
    match &args.command {
        Command::Show { output, cluster_id } => {
            show(&client, &args, *output, cluster_id.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diagnose { target } => {
            let namespaces = diagnose::Namespaces {
                kube_ovn: args.kube_ovn_namespace.clone(),
                gateway: args.gateway_namespace.clone(),
                nat_gw_name_prefix: args.nat_gw_name_prefix.clone(),
            };
            let broker = diagnose::Broker::new(multivpc_runtime::broker::Access {
                source: args.broker_credentials.clone(),
                namespace: args.broker_namespace.clone(),
                allow_insecure: args.allow_insecure_broker,
            });
            let failed = match target {
                Target::Tunnel { name } => {
                    let namespace = args.namespace.clone().unwrap_or(default_namespace);
                    let report =
                        diagnose::tunnel(&client, &namespaces, &broker, &namespace, name).await?;
                    print!("{}", report.render());
                    report.failed()
                }
                Target::Vpc { vpc, lookup } => {
                    let lookup = lookup
                        .as_deref()
                        .map(dns_lookup::lookup_name)
                        .transpose()
                        .map_err(anyhow::Error::msg)?;
                    let tunnels =
                        diagnose::tunnels_of_vpc(&client, args.namespace.as_deref(), vpc).await?;
                    println!("== DNS of VPC {vpc}");
                    let mut dns = diagnose::dns_forwards(&client, vpc).await?;
                    let looked_up =
                        diagnose::dns_lookup(&client, &namespaces, vpc, lookup, &dns).await;
                    dns.push(looked_up);
                    print!("{}", dns.render());
                    let mut failed = dns.failed();
                    if tunnels.is_empty() {
                        println!("no tunnel's gateway serves VPC {vpc}");
                    }
                    for (namespace, name) in &tunnels {
                        println!();
                        println!("== tunnel {namespace}/{name}");
                        let report =
                            diagnose::tunnel(&client, &namespaces, &broker, namespace, name)
                                .await?;
                        print!("{}", report.render());
                        failed |= report.failed();
                    }
                    failed
                }
            };
            Ok(if failed {
                ExitCode::from(EXIT_CHECK_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// An error and its causes on one line (what `{:#}` prints), leaving out a cause whose text
/// the one before already shows: client errors often repeat their source in their message.
fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        if parts
            .last()
            .is_none_or(|previous| !previous.contains(&text))
        {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// A client as kubectl would make it from the same flags, checked to answer, and the
/// context's namespace.
async fn connect(args: &Args) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("unusable kubeconfig {}", path.display()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .context("unusable kubeconfig")?,
        (None, None) => Config::infer()
            .await
            .map_err(|err| anyhow::anyhow!("no usable Kubernetes configuration: {err}"))?,
    };
    let url = config.cluster_url.clone();
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).context("invalid Kubernetes client configuration")?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok((client, namespace)),
        Ok(Err(err)) => {
            Err(err).with_context(|| format!("cannot reach the Kubernetes API server at {url}"))
        }
        Err(_) => anyhow::bail!(
            "cannot reach the Kubernetes API server at {url}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// A list, or an empty one when the API server does not serve the kind (its CRD is not
/// installed), said once on stderr.
async fn list_or_empty<K>(api: Api<K>, params: &ListParams, what: &str) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(params).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            eprintln!("{BINARY}: note: no {what} here (is its CRD installed?)");
            Ok(Vec::new())
        }
        Err(err) => Err(err).with_context(|| format!("cannot list {what}")),
    }
}

async fn show(
    client: &Client,
    args: &Args,
    output: Output,
    cluster_id_flag: Option<&str>,
) -> anyhow::Result<()> {
    let kube_ovn = KubeOvn {
        namespace: args.kube_ovn_namespace.clone(),
        nat_gw_name_prefix: args.nat_gw_name_prefix.clone(),
    };
    let service_discovery = match cluster_id_flag {
        Some(_) => None,
        None => {
            let api: Api<ServiceDiscovery> = Api::namespaced(client.clone(), SUBMARINER_NAMESPACE);
            match api.get_opt(SERVICE_DISCOVERY_NAME).await {
                Ok(sd) => sd.map(|sd| sd.spec.cluster_id),
                Err(kube::Error::Api(status)) if status.code == 404 => None,
                Err(err) => {
                    eprintln!(
                        "{BINARY}: note: cannot read ServiceDiscovery {SUBMARINER_NAMESPACE}/{SERVICE_DISCOVERY_NAME} for the cluster ID ({err}); give --cluster-id"
                    );
                    None
                }
            }
        }
    };
    let tunnels_api: Api<VpcNatTunnel> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let everything = ListParams::default();
    let pods_params = ListParams::default().labels(&KubeOvn::pod_selector());
    let (gateways, pods, tunnels, exips) = tokio::try_join!(
        list_or_empty(
            Api::<VpcNatGateway>::all(client.clone()),
            &everything,
            "VpcNatGateways"
        ),
        list_or_empty(
            Api::<Pod>::namespaced(client.clone(), &kube_ovn.namespace),
            &pods_params,
            "NAT gateway pods"
        ),
        list_or_empty(tunnels_api, &everything, "VpcNatTunnels"),
        list_or_empty(
            Api::<GatewayExIp>::namespaced(client.clone(), &args.gateway_namespace),
            &everything,
            "GatewayExIps"
        ),
    )?;
    let fleet = view::build(&view::Inputs {
        cluster_id: view::ClusterId::resolve(cluster_id_flag, service_discovery.as_deref()),
        kube_ovn: &kube_ovn,
        gateways: &gateways,
        pods: &pods,
        tunnels: &tunnels,
        exips: &exips,
        now: jiff::Timestamp::now(),
    });
    match output {
        Output::Table => print!("{}", view::render_table(&fleet)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&fleet)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&fleet)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn errors_are_one_line_without_repeats() {
        let err = anyhow::Error::msg("No such file (os error 2)")
            .context("failed to read kubeconfig: No such file (os error 2)")
            .context("cannot read kubeconfig /k");
        assert_eq!(
            one_line(&err),
            "cannot read kubeconfig /k: failed to read kubeconfig: No such file (os error 2)"
        );
    }

    #[test]
    fn flags_parse_as_kubectl_users_type_them() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            BINARY,
            "diagnose",
            "tunnel",
            "t1",
            "-n",
            "ns1",
            "--kubeconfig",
            "/k",
            "--context",
            "c",
        ])
        .unwrap();
        assert_eq!(a.namespace.as_deref(), Some("ns1"));
        assert_eq!(a.kubeconfig, Some(PathBuf::from("/k")));
        assert!(
            matches!(a.command, Command::Diagnose { target: Target::Tunnel { ref name } } if name == "t1")
        );
        assert_eq!(
            (a.gateway_namespace.as_str(), a.kube_ovn_namespace.as_str()),
            ("kube-system", "kube-system")
        );

        let a = Args::try_parse_from([BINARY, "--gateway-namespace", "gw", "show", "-o", "yaml"])
            .unwrap();
        assert_eq!(a.gateway_namespace, "gw");
        assert!(matches!(
            a.command,
            Command::Show {
                output: Output::Yaml,
                cluster_id: None
            }
        ));
        assert!(Args::try_parse_from([BINARY, "show", "-o", "wide"]).is_err());
    }
}
