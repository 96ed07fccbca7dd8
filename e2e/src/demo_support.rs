#![allow(dead_code)] // each binary uses part of it
//! Shared by the `multivpc-demo` and `multivpc-bench` binaries (not part of the library):
//! running a controller binary detached from the test helpers, with its pid known (RSS,
//! teardown), and reading Prometheus text.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use multivpc_e2e::controllers::http_get;

/// Which build of the controllers to run.
pub fn binary_dir(profile: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| multivpc_e2e::repo_dir().join("target"))
        .join(profile)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running controller; SIGTERM (then kill) on drop.
pub struct Controller {
    pub cluster: String,
    pub binary: String,
    pub metrics: SocketAddr,
    pub probes: SocketAddr,
    pub log: PathBuf,
    /// Time from spawn to the first 200 of /readyz.
    pub start_to_ready: Duration,
    child: Child,
}

/// The flags the Helm chart gives each controller (charts/*/templates/_controller.tpl and
/// deployment.yaml, default values), less the in-cluster addresses.
pub fn chart_args(binary: &str, cluster: &str) -> Vec<String> {
    let mut args = vec![
        "--log-format=json".to_string(),
        "--leader-elect".to_string(),
        format!("--leader-election-namespace={LEADER_NS}"),
        format!("--cluster-id={cluster}"),
    ];
    match binary {
        "tunnel-manager" => args.extend(
            [
                "--verify-interval=5m",
                "--exec-timeout=30s",
                "--max-concurrent-execs=8",
            ]
            .map(String::from),
        ),
        "exip-syncer" => args.extend(
            [
                "--failover-grace-period=5s",
                "--failback=never",
                "--failback-delay=60s",
            ]
            .map(String::from),
        ),
        _ => {}
    }
    args
}

/// The chart's release namespace (leader election Leases live there).
pub const LEADER_NS: &str = "multi-vpc-system";

#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    profile: &str,
    log_dir: &Path,
    cluster: &str,
    binary: &str,
    kubeconfig: &Path,
    args: &[String],
    ready_within: Duration,
) -> Result<Controller> {
    let path = binary_dir(profile).join(binary);
    if !path.exists() {
        bail!("{} not found: build it first", path.display());
    }
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let probes: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(log_dir)?;
    let log = log_dir.join(format!("{cluster}-{binary}.log"));
    let out = std::fs::File::create(&log)?;
    let started = Instant::now();
    let child = Command::new(&path)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env(
            "POD_NAME",
            format!("{binary}-{cluster}-{}", std::process::id()),
        )
        .env("POD_NAMESPACE", LEADER_NS)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .arg(format!("--metrics-bind-address={metrics}"))
        .arg(format!("--health-probe-bind-address={probes}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {}", path.display()))?;
    let mut c = Controller {
        cluster: cluster.into(),
        binary: binary.into(),
        metrics,
        probes,
        log,
        start_to_ready: Duration::ZERO,
        child,
    };
    let deadline = Instant::now() + ready_within;
    loop {
        if let Some(status) = c.child.try_wait()? {
            bail!(
                "{binary} ({cluster}) exited with {status} before it was ready; see {}",
                c.log.display()
            );
        }
        if let Ok((200, _)) = http_get(probes, "/readyz").await {
            c.start_to_ready = started.elapsed();
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!(
                "{binary} ({cluster}) not ready within {ready_within:?}; see {}",
                c.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Controller {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        rss_kib(self.pid())
    }

    pub async fn metrics_text(&self) -> Result<String> {
        let (code, body) = http_get(self.metrics, "/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// Sum of every sample of `name` (any labels) whose labels contain all of `with`.
    pub async fn metric_sum(&self, name: &str, with: &[&str]) -> Result<f64> {
        Ok(sum_samples(&self.metrics_text().await?, name, with))
    }

    pub fn stop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// (VmRSS, VmHWM) of a process in KiB, zeros when gone.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Sum of the samples of metric `name` (exactly that name, any labels) whose label text
/// contains every string in `with`.
pub fn sum_samples(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && with.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
