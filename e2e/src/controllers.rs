//! Running the project's controller binaries against a harness cluster, as a user would run
//! them: a kubeconfig, the chart's flags, metrics and probes on loopback.
//!
//! The binaries must be built first (`make e2e-run` builds them; by hand:
//! `cargo build -p dns-forwarder -p tunnel-manager -p exip-syncer`).

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A controller process; SIGTERM then kill when dropped.
pub struct ControllerProcess {
    pub binary: String,
    pub metrics: SocketAddr,
    pub probes: SocketAddr,
    pub log: PathBuf,
    /// Time from spawn to the first 200 of `/readyz`.
    pub start_to_ready: Duration,
    child: Child,
}

/// Directory of the workspace's debug binaries (`$CARGO_TARGET_DIR/debug` or `target/debug`).
pub fn binary_dir() -> PathBuf {
    binary_dir_for("debug")
}

/// Directory of the workspace's binaries built with `profile` (`debug`, `release`).
pub fn binary_dir_for(profile: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_dir().join("target"))
        .join(profile)
}

/// The last non-empty line of the file at `path` (a log), or a note that there is none.
pub fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "nothing logged".into())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `binary` (debug build) with `kubeconfig` and `args`, metrics and probes on free
/// loopback ports, logs in `<run dir>/logs/`, and waits until `/readyz` answers 200 (at most
/// `ready_within`).
pub async fn spawn(
    run_dir: &Path,
    binary: &str,
    kubeconfig: &Path,
    args: &[&str],
    ready_within: Duration,
) -> Result<ControllerProcess> {
    spawn_with_env(run_dir, binary, kubeconfig, &[], args, ready_within).await
}

/// [`spawn`] with extra environment variables.
pub async fn spawn_with_env(
    run_dir: &Path,
    binary: &str,
    kubeconfig: &Path,
    env: &[(&str, String)],
    args: &[&str],
    ready_within: Duration,
) -> Result<ControllerProcess> {
    let log = run_dir.join("logs").join(format!(
        "{binary}-{}.log",
        crate::Harness::unique_name("run")
    ));
    spawn_binary(
        &binary_dir().join(binary),
        log,
        kubeconfig,
        env,
        args,
        ready_within,
    )
    .await
}

/// Starts the controller binary at `path` with `kubeconfig`, extra environment `env` and
/// `args`, metrics and probes on free loopback ports, output in `log`, and waits until
/// `/readyz` answers 200 (at most `ready_within`).
pub async fn spawn_binary(
    path: &Path,
    log: PathBuf,
    kubeconfig: &Path,
    env: &[(&str, String)],
    args: &[&str],
    ready_within: Duration,
) -> Result<ControllerProcess> {
    let binary = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build -p {binary}` first (make demo and make e2e-run do)",
            path.display()
        );
    }
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let probes: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::File::create(&log)?;
    let started = std::time::Instant::now();
    let child = Command::new(path)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg(format!("--metrics-bind-address={metrics}"))
        .arg(format!("--health-probe-bind-address={probes}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {}", path.display()))?;
    let mut process = ControllerProcess {
        binary,
        metrics,
        probes,
        log,
        start_to_ready: Duration::ZERO,
        child,
    };
    let deadline = tokio::time::Instant::now() + ready_within;
    loop {
        if let Some(status) = process.child.try_wait()? {
            bail!(
                "{} exited with {status} before it was ready: {} (log: {})",
                process.binary,
                last_line(&process.log),
                process.log.display()
            );
        }
        if let Ok((200, _)) = http_get(probes, "/readyz").await {
            process.start_to_ready = started.elapsed();
            return Ok(process);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} not ready within {ready_within:?}: {} (log: {})",
                process.binary,
                last_line(&process.log),
                process.log.display()
            );
        }
        // Short: benchmarks read start-to-ready off this loop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl ControllerProcess {
    /// The process ID (for RSS readings and teardown).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.tail_of(lines, |_| true)
    }

    /// The last `lines` lines of the process's log above DEBUG (what a failed wait shows).
    pub fn log_tail_info(&self, lines: usize) -> String {
        self.tail_of(lines, |l| !l.contains("DEBUG") && !l.contains("TRACE"))
    }

    fn tail_of(&self, lines: usize, keep: impl Fn(&str) -> bool) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let kept: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
        kept[kept.len().saturating_sub(lines)..].join("\n")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> Result<String> {
        let (code, body) = http_get(self.metrics, "/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// Waits at most `timeout` until sample `series` satisfies `cond` (a missing sample is
    /// NaN) and returns its value; the error carries the tail of the process's log.
    pub async fn wait_metric(
        &self,
        series: &str,
        timeout: Duration,
        cond: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        crate::wait::wait_for(series, timeout, || async {
            let v = self.metric(series).await?.unwrap_or(f64::NAN);
            Ok(if cond(v) {
                crate::wait::Check::Done(v)
            } else {
                crate::wait::Check::Pending(format!("{series} = {v}"))
            })
        })
        .await
        .with_context(|| format!("{}'s log ends:\n{}", self.binary, self.log_tail(30)))
    }

    /// The value of the first sample whose line starts with `series` (name plus labels).
    pub async fn metric(&self, series: &str) -> Result<Option<f64>> {
        let text = self.metrics_text().await?;
        Ok(text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok()))
    }

    /// Sends SIGKILL, as the OOM killer or a node failure would, and reaps the process.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit (kills after 10 s); returns whether it exited 0.
    pub fn stop(&mut self) -> Result<bool> {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(false)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
