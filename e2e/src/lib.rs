//! Support crate for the end-to-end tests of kubeovn-multivpc.
//!
//! The harness (`make e2e-up`, see `e2e/README.md`) runs real control planes
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) with kwok
//! nodes; NAT gateway pods are backed by Linux network namespaces. This crate
//! attaches to it:
//!
//! ```no_run
//! use multivpc_e2e::prelude::*;
//!
//! #[tokio::test]
//! async fn my_test() {
//!     let h = harness_or_skip!(["cluster1"]);
//!     let c1 = h.client("cluster1");
//!     let ns = h.unique_namespace("cluster1", "my-test").await.unwrap();
//!     // apply fixtures, wait_for(..), pod_exec(..)
//! }
//! ```
//!
//! Without a harness, tests using [`harness_or_skip!`] return early with a loud
//! message; with `MULTIVPC_E2E=1` (make test, CI) a missing harness fails them.
pub mod apply;
pub mod chart;
pub mod cli;
pub mod controllers;
pub mod dashboard;
pub mod dns;
pub mod exec;
pub mod fixtures;
pub mod outage;
pub mod plugin;
pub mod proxy;
pub mod vm;
pub mod wait;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use apply::{
    apply, apply_dynamic, apply_file, apply_json, apply_json_as, apply_yaml, parse_yaml,
    patch_status_dynamic,
};
pub use exec::{ExecOutput, host_exec, netns_exec, pod_exec};
pub use fixtures::{GatewayNode, NatGateway, NatGatewaySpec};
pub use wait::{Check, wait_for, wait_for_deletion, wait_for_object};

/// Everything a test usually needs.
pub mod prelude {
    pub use crate::fixtures::{self, GatewayNode, NatGateway, NatGatewaySpec, VpcDnsForm};
    pub use crate::{
        Check, ExecOutput, Harness, apply, apply_dynamic, apply_file, apply_json, apply_yaml,
        harness_or_skip, host_exec, netns_exec, pod_exec, wait_for, wait_for_deletion,
        wait_for_object,
    };
    pub use std::time::Duration;
}

/// Environment variable that turns "harness missing" from a skip into a failure.
pub const E2E_ENV: &str = "MULTIVPC_E2E";
/// Environment variable overriding the run directory (default `e2e/.run`).
pub const RUN_DIR_ENV: &str = "MULTIVPC_E2E_RUN_DIR";
/// Set to `1` when the kernel VM must be up (see [`Harness::kernel_vm`]).
pub const VM_REQUIRED_ENV: &str = "MULTIVPC_E2E_VM";

/// The `e2e/` directory of the repository.
pub fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository root.
pub fn repo_dir() -> PathBuf {
    e2e_dir().parent().expect("e2e/ has a parent").to_path_buf()
}

/// The harness run directory: `$MULTIVPC_E2E_RUN_DIR` or `e2e/.run`.
pub fn run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| e2e_dir().join(".run"))
}

/// True when `MULTIVPC_E2E` is set to something other than empty/0/false.
pub fn e2e_required() -> bool {
    std::env::var(E2E_ENV)
        .map(|v| !matches!(v.as_str(), "" | "0" | "false" | "no"))
        .unwrap_or(false)
}

/// A pin from `e2e/versions.env` (e.g. `K8S_VERSION`), as compiled into this crate.
pub fn pinned_version(key: &str) -> Option<String> {
    include_str!("../versions.env").lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.split_whitespace().next().unwrap_or_default().to_string())
    })
}

/// The harness binary cache: `$MULTIVPC_CACHE` or `~/.cache/kubeovn-multivpc`.
pub fn binary_cache() -> PathBuf {
    std::env::var_os("MULTIVPC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/kubeovn-multivpc")
        })
}

/// Path of a harness tool built by `make e2e-build`: `kubectl`, `helm`,
/// `kwokctl`, `kwok`, `etcd`, `kube-apiserver`, ...
pub fn tool_path(tool: &str) -> PathBuf {
    let (dir, key) = match tool {
        "etcd" => ("etcd", "ETCD_VERSION"),
        "kwok" | "kwokctl" => ("kwok", "KWOK_VERSION"),
        "helm" => ("helm", "HELM_VERSION"),
        "coredns" => ("coredns", "COREDNS_VERSION"),
        _ => ("kubernetes", "K8S_VERSION"),
    };
    let v = pinned_version(key).unwrap_or_default();
    binary_cache()
        .join(format!("{dir}-{v}"))
        .join("bin")
        .join(tool)
}

/// One harness cluster.
#[derive(Clone)]
pub struct Cluster {
    pub name: String,
    pub kubeconfig: PathBuf,
    /// API server URL, e.g. `https://127.0.0.1:34567`.
    pub server: String,
    pub client: Client,
}

/// Handle on the running harness: one client per cluster.
#[derive(Clone)]
pub struct Harness {
    run_dir: PathBuf,
    clusters: BTreeMap<String, Cluster>,
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

impl Harness {
    /// Attach to every cluster with a kubeconfig in the run directory and check
    /// that each API server answers. Errors when none is up.
    pub async fn attach() -> Result<Harness> {
        install_crypto_provider();
        let run_dir = run_dir();
        let mut clusters = BTreeMap::new();
        let entries = std::fs::read_dir(&run_dir).with_context(|| {
            format!(
                "no harness run dir {} (run `make e2e-up`)",
                run_dir.display()
            )
        })?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("kubeconfig") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let cluster = Self::connect(&name, &path).await?;
            clusters.insert(name, cluster);
        }
        if clusters.is_empty() {
            bail!(
                "no *.kubeconfig in {} (run `make e2e-up`)",
                run_dir.display()
            );
        }
        Ok(Harness { run_dir, clusters })
    }

    async fn connect(name: &str, path: &Path) -> Result<Cluster> {
        let kc = Kubeconfig::read_from(path).with_context(|| format!("read {}", path.display()))?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("kubeconfig {}", path.display()))?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(60));
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let client = Client::try_from(config)?;
        tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
            .await
            .map_err(|_| anyhow!("cluster {name} ({server}) did not answer within 10s"))?
            .with_context(|| format!("cluster {name} ({server}) is not answering"))?;
        Ok(Cluster {
            name: name.to_string(),
            kubeconfig: path.to_path_buf(),
            server,
            client,
        })
    }

    /// Attach for a test. With `MULTIVPC_E2E=1`: `Some(harness)` when the harness is up and has
    /// every cluster in `required`, else a panic (the test fails). Without it, a loud SKIPPED
    /// banner and `None`, even when a harness is up: `make unit` and a plain `cargo test` never
    /// touch clusters (or take minutes) by surprise.
    pub async fn attach_or_skip(test: &str, required: &[&str]) -> Option<Harness> {
        let res = if e2e_required() {
            Self::attach().await
        } else {
            Err(anyhow!("{E2E_ENV} is not set"))
        };
        let res = res.and_then(|h| {
            let missing: Vec<_> = required.iter().filter(|c| !h.clusters.contains_key(**c)).collect();
            if missing.is_empty() {
                Ok(h)
            } else {
                Err(anyhow!(
                    "harness is up but lacks clusters {missing:?} (has {:?}); start them with `make e2e-up CLUSTERS=\"...\"`",
                    h.cluster_names()
                ))
            }
        });
        match res {
            Ok(h) => Some(h),
            Err(e) if e2e_required() => {
                panic!("{E2E_ENV} is set but the e2e harness is not usable for {test}: {e:#}")
            }
            Err(e) => {
                // Written to the stderr handle, not with eprintln!, so that the
                // test harness does not capture it: a skip must be visible.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n##########################################################################\n\
                     ### SKIPPED e2e test {test}: {e:#}\n\
                     ### run `make e2e-build e2e-up` then `MULTIVPC_E2E=1 cargo test -p multivpc-e2e`\n\
                     ##########################################################################\n"
                );
                None
            }
        }
    }

    /// The run directory this harness was found in.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The harness's kernel VM (`make e2e-vm-up`), if one is up. With
    /// `MULTIVPC_E2E_VM=1` (make e2e-test, CI) a missing VM is an error, so the tests that
    /// need its kernel cannot pass by falling back to the host's.
    pub fn kernel_vm(&self) -> Result<Option<vm::Vm>> {
        let vm = vm::Vm::from_run_dir(&self.run_dir);
        if vm.is_none() && std::env::var(VM_REQUIRED_ENV).is_ok_and(|v| v == "1") {
            bail!(
                "{VM_REQUIRED_ENV}=1 but no kernel VM is up for {} (make e2e-vm-up)",
                self.run_dir.display()
            );
        }
        Ok(vm)
    }

    /// The API server's `apiserver_request_total`, summed by (verb, resource[/subresource]),
    /// with ` (HTTP <code>)` appended to the resource of requests that were refused.
    pub async fn apiserver_requests(
        &self,
        cluster: &str,
    ) -> Result<BTreeMap<(String, String), f64>> {
        let out = self
            .kubectl(cluster, &["get", "--raw", "/metrics"])
            .await?
            .check()?;
        let mut m = BTreeMap::new();
        for l in out.stdout.lines() {
            let Some(rest) = l.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let resource = label("resource");
            if resource.is_empty() {
                continue;
            }
            let sub = label("subresource");
            let code = label("code");
            let mut res = if sub.is_empty() {
                resource
            } else {
                format!("{resource}/{sub}")
            };
            if !code.starts_with('2') && code != "0" && code != "101" {
                res = format!("{res} (HTTP {code})");
            }
            let key = (label("verb"), res);
            *m.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
        Ok(m)
    }

    /// Names of the clusters that are up.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    /// The cluster `name`; panics with a clear message when it is not up.
    pub fn cluster(&self, name: &str) -> &Cluster {
        self.clusters.get(name).unwrap_or_else(|| {
            panic!(
                "cluster {name:?} is not up (up: {:?})",
                self.cluster_names()
            )
        })
    }

    /// A client (admin credentials) for cluster `name`.
    pub fn client(&self, name: &str) -> Client {
        self.cluster(name).client.clone()
    }

    /// Path of the admin kubeconfig of cluster `name`.
    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        self.cluster(name).kubeconfig.clone()
    }

    /// A name unique within this test process run: `<prefix>-<pid>-<n>`,
    /// valid as a DNS label when prefix is short.
    pub fn unique_name(prefix: &str) -> String {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{}-{n}", std::process::id() % 100_000)
    }

    /// Create a fresh namespace `<prefix>-<pid>-<n>` in `cluster` and return its name.
    pub async fn unique_namespace(&self, cluster: &str, prefix: &str) -> Result<String> {
        let name = Self::unique_name(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"multivpc.e2e/test": "true"}}
        }))?;
        apply(&self.client(cluster), &ns).await?;
        Ok(name)
    }

    /// Delete a namespace (does not wait).
    pub async fn delete_namespace(&self, cluster: &str, name: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client(cluster));
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Ensure a gateway node backed by its own netns exists in `cluster`
    /// (runs `e2e/scripts/netns.sh gateway-up`, idempotent) and wait until the
    /// node is Ready. Addresses are allocated per (cluster, gateway) slot.
    pub async fn gateway_node(&self, cluster: &str, gateway: &str) -> Result<GatewayNode> {
        self.gateway_node_at(cluster, gateway, false).await
    }

    /// [`Harness::gateway_node`], with its netns inside the kernel VM when `in_vm`.
    pub async fn gateway_node_at(
        &self,
        cluster: &str,
        gateway: &str,
        in_vm: bool,
    ) -> Result<GatewayNode> {
        let _ = self.cluster(cluster);
        let script = e2e_dir().join("scripts/netns.sh");
        let out = host_exec(&[
            "bash",
            &script.to_string_lossy(),
            "gateway-up",
            cluster,
            gateway,
            if in_vm { "vm" } else { "host" },
        ])
        .await?
        .check()
        .with_context(|| format!("create gateway node {gateway} in {cluster}"))?;
        let node = GatewayNode::from_env(&out.stdout)?;
        let nodes: Api<Node> = Api::all(self.client(cluster));
        wait_for_object(&nodes, &node.node, Duration::from_secs(60), node_ready).await?;
        Ok(node)
    }

    /// Remove a gateway node, its kwok-controller and its netns.
    pub async fn remove_gateway_node(&self, cluster: &str, gateway: &str) -> Result<()> {
        let script = e2e_dir().join("scripts/netns.sh");
        host_exec(&[
            "bash",
            &script.to_string_lossy(),
            "gateway-down",
            cluster,
            gateway,
        ])
        .await?
        .check()?;
        Ok(())
    }

    /// Hold an exclusive, named lock across threads and test processes
    /// (flock on `<run dir>/locks/<name>.lock`) until the guard is dropped.
    /// Use it around changes to shared state such as a VPC netns' routes or a
    /// cluster's Submariner singletons: `let _g = h.exclusive("cluster1-vpc").await?;`
    pub async fn exclusive(&self, name: &str) -> Result<ExclusiveGuard> {
        let dir = self.run_dir.join("locks");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let file = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on an fd we own; blocks this blocking-pool thread.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                Ok(file)
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await?
        .with_context(|| format!("lock {}", path.display()))?;
        Ok(ExclusiveGuard { _file: file })
    }

    /// Run the pinned `kubectl` against `cluster` (admin), e.g. to attach
    /// `kubectl describe` output to a failure message.
    pub async fn kubectl(&self, cluster: &str, args: &[&str]) -> Result<ExecOutput> {
        let kc = self.kubeconfig(cluster);
        let bin = tool_path("kubectl");
        let mut cmd = vec![
            bin.to_str().unwrap_or("kubectl"),
            "--kubeconfig",
            kc.to_str().unwrap(),
        ];
        cmd.extend_from_slice(args);
        host_exec(&cmd).await
    }

    /// Run the pinned `helm` against `cluster` (admin).
    pub async fn helm(&self, cluster: &str, args: &[&str]) -> Result<ExecOutput> {
        let kc = self.kubeconfig(cluster);
        let bin = tool_path("helm");
        let mut cmd = vec![
            bin.to_str().unwrap_or("helm"),
            "--kubeconfig",
            kc.to_str().unwrap(),
        ];
        cmd.extend_from_slice(args);
        host_exec(&cmd).await
    }

    /// A bound token (1 h) for ServiceAccount `namespace/name` of `cluster`
    /// (TokenRequest API); the ServiceAccount must exist.
    pub async fn service_account_token(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<String> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client(cluster), namespace);
        let tr: TokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": 3600}
        }))?;
        let tr = sas
            .create_token_request(name, &kube::api::PostParams::default(), &tr)
            .await
            .with_context(|| format!("token for ServiceAccount {namespace}/{name} in {cluster}"))?;
        tr.status
            .map(|s| s.token)
            .context("TokenRequest without status")
    }

    /// Write a kubeconfig that authenticates as ServiceAccount
    /// `namespace/name` of `cluster` (so RBAC is real, as with a chart's
    /// ServiceAccount) and return its path (under `<run dir>/kubeconfigs/`).
    pub async fn service_account_kubeconfig(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf> {
        let token = self.service_account_token(cluster, namespace, name).await?;
        let kc = Kubeconfig::read_from(self.kubeconfig(cluster))?;
        let c = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .context("kubeconfig has no cluster")?;
        let ca = match (c.certificate_authority_data, c.certificate_authority) {
            (Some(d), _) => d,
            (None, Some(p)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(std::fs::read(&p)?)
            }
            (None, None) => bail!("kubeconfig of {cluster} has no CA"),
        };
        let server = c.server.context("kubeconfig has no server")?;
        let user = format!("{namespace}-{name}");
        let yaml = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": cluster, "user": user, "namespace": namespace}}],
            "current-context": user,
        });
        let dir = self.run_dir.join("kubeconfigs");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{cluster}-{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&yaml)?)?;
        Ok(path)
    }

    /// A client that authenticates as ServiceAccount `namespace/name` of `cluster`.
    pub async fn service_account_client(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Client> {
        let path = self
            .service_account_kubeconfig(cluster, namespace, name)
            .await?;
        let kc = Kubeconfig::read_from(&path)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Facts about the VPC-side netns of `cluster` (created by `make e2e-up`).
    pub fn vpc_network(&self, cluster: &str) -> Result<VpcNetwork> {
        let path = self.run_dir.join(cluster).join("vpc.env");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        VpcNetwork::from_env(&text)
    }
}

/// Install rustls' ring crypto provider as the process default (kube 5 with
/// `rustls-tls` does not pick one). Idempotent; [`Harness::attach`] calls it.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Guard of [`Harness::exclusive`]; the lock is released when it is dropped.
pub struct ExclusiveGuard {
    _file: std::fs::File,
}

/// Node condition Ready=True.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Parse `KEY=VALUE` lines.
pub(crate) fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

pub(crate) fn env_get(env: &BTreeMap<String, String>, key: &str) -> Result<String> {
    env.get(key)
        .cloned()
        .ok_or_else(|| anyhow!("missing {key} in harness env file"))
}

/// The VPC side of a cluster: a netns standing for the OVN logical router.
#[derive(Clone, Debug)]
pub struct VpcNetwork {
    pub netns: String,
    /// Subnet of the VPC's NAT gateways, e.g. `10.1.0.0/24`.
    pub cidr: String,
    /// OVN router address on that subnet (the gateways' `ovn.kubernetes.io/gateway`).
    pub gateway: String,
    /// The cluster's Globalnet CIDR, e.g. `242.0.0.0/16`.
    pub globalnet_cidr: String,
    /// An address in the Globalnet CIDR held by the VPC netns (a "workload").
    pub workload_ip: String,
    /// The shared external network netns and CIDR.
    pub ext_netns: String,
    pub ext_cidr: String,
}

impl VpcNetwork {
    fn from_env(text: &str) -> Result<Self> {
        let e = parse_env(text);
        Ok(VpcNetwork {
            netns: env_get(&e, "VPC_NETNS")?,
            cidr: env_get(&e, "VPC_CIDR")?,
            gateway: env_get(&e, "VPC_GATEWAY")?,
            globalnet_cidr: env_get(&e, "GLOBALNET_CIDR")?,
            workload_ip: env_get(&e, "VPC_WORKLOAD_IP")?,
            ext_netns: env_get(&e, "EXT_NETNS")?,
            ext_cidr: env_get(&e, "EXT_CIDR")?,
        })
    }
}

/// Return early from a test when the e2e harness is not up (loud message), or
/// fail it when `MULTIVPC_E2E=1`. Evaluates to the [`Harness`].
///
/// * `harness_or_skip!()` — any running harness
/// * `harness_or_skip!(["cluster1", "cluster2"])` — these clusters must be up
/// * `harness_or_skip!(["cluster1"], Ok(()))` — value to return when skipping
#[macro_export]
macro_rules! harness_or_skip {
    () => {
        $crate::harness_or_skip!([], ())
    };
    ([$($c:expr),* $(,)?]) => {
        $crate::harness_or_skip!([$($c),*], ())
    };
    ([$($c:expr),* $(,)?], $ret:expr) => {
        match $crate::Harness::attach_or_skip(
            concat!(module_path!(), ":", line!()),
            &[$($c),*],
        )
        .await
        {
            Some(h) => h,
            None => return $ret,
        }
    };
}
