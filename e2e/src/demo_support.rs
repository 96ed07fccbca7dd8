#![allow(dead_code)] // each binary uses part of it
//! Shared by the `multivpc-demo` and `multivpc-bench` binaries (not part of the library):
//! running a controller binary detached from the test helpers, with its pid known (RSS,
//! teardown), and reading Prometheus text.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use multivpc_e2e::controllers;

/// A running controller of the demo or the bench (the support crate's process handle).
pub use multivpc_e2e::controllers::ControllerProcess as Controller;

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
                "--probe-interval=2s",
                "--probe-timeout=1s",
                "--probe-failure-threshold=3",
                "--probe-recovery-threshold=2",
            ]
            .map(String::from),
        ),
        "exip-syncer" => args.extend(
            [
                "--failover-grace-period=5s",
                "--failback=never",
                "--failback-delay=60s",
                "--failover-on-unhealthy-tunnels=true",
                "--unhealthy-failover-holddown=5m",
            ]
            .map(String::from),
        ),
        _ => {}
    }
    args
}

/// The chart's release namespace (leader election Leases live there).
pub const LEADER_NS: &str = "multi-vpc-system";

/// Starts `binary` of the `profile` build for `cluster`, as the chart would run it (pod name
/// and namespace in the environment), logging to `<log_dir>/<cluster>-<binary>.log`.
pub async fn spawn(
    profile: &str,
    log_dir: &Path,
    cluster: &str,
    binary: &str,
    kubeconfig: &Path,
    args: &[String],
    ready_within: Duration,
) -> Result<Controller> {
    let env = [
        (
            "POD_NAME",
            format!("{binary}-{cluster}-{}", std::process::id()),
        ),
        ("POD_NAMESPACE", LEADER_NS.to_owned()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    controllers::spawn_binary(
        &controllers::binary_dir_for(profile).join(binary),
        log_dir.join(format!("{cluster}-{binary}.log")),
        kubeconfig,
        &env,
        &args,
        ready_within,
    )
    .await
    .with_context(|| format!("{binary} on {cluster}"))
}

/// Sum of every sample of `name` (any labels) whose labels contain all of `with`, as scraped
/// from `controller` now.
pub async fn metric_sum(controller: &Controller, name: &str, with: &[&str]) -> Result<f64> {
    Ok(sum_samples(&controller.metrics_text().await?, name, with))
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
