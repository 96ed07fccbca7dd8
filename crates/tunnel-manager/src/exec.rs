//! Running a script in a gateway pod through `pods/exec`: one call per script, a timeout,
//! a bound on concurrent execs, and one exec at a time per pod (scripts of tunnels sharing a
//! gateway never interleave; inside the pod a lock keeps a timed-out script and the next one
//! apart, see `script`). A slow or dead gateway holds only its own pod's turn and one
//! permit for at most the timeout, so other gateways go on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::AttachParams};
use multivpc_api::gateway::NAT_GW_CONTAINER;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::{io::AsyncReadExt, sync::Semaphore};

use crate::resolve::PodTarget;

/// Bytes of stdout/stderr kept from one exec.
const MAX_OUTPUT: usize = 64 * 1024;

/// What a script printed on stdout; exit status 0.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: String,
}

/// Why an exec failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("exec in pod {pod} timed out after {timeout:?}")]
    Timeout { pod: String, timeout: Duration },
    #[error("exec in pod {pod}: {source}")]
    Api {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("exec in pod {pod}: {message}")]
    Stream { pod: String, message: String },
    #[error("script in pod {pod} exited {code}: {}", summary(.stderr, .stdout))]
    Exit {
        pod: String,
        code: i32,
        stdout: String,
        stderr: String,
    },
}

impl ExecError {
    fn label(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Api { .. } => "api",
            Self::Stream { .. } => "stream",
            Self::Exit { .. } => "exit",
        }
    }
}

/// The last lines of stderr (or stdout when stderr is empty), at most ~1 KiB, one line.
pub fn summary(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.len() > 1024 {
        let mut cut = tail.len() - 1024;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        format!("…{}", &tail[cut..])
    } else if tail.is_empty() {
        "(no output)".into()
    } else {
        tail
    }
}

/// Exec metrics.
#[derive(Clone)]
pub struct ExecMetrics {
    duration: HistogramVec,
    failures: IntCounterVec,
}

impl ExecMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "multivpc_tunnel_exec_duration_seconds",
                "Duration of script execs in VPC NAT gateway pods",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["script"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "multivpc_tunnel_exec_failures_total",
                "Script execs in VPC NAT gateway pods that failed, by script and reason (timeout, api, stream, exit)",
            ),
            &["script", "reason"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        for script in ["converge", "check", "cleanup"] {
            duration.with_label_values(&[script]);
            for reason in ["timeout", "api", "stream", "exit"] {
                failures.with_label_values(&[script, reason]);
            }
        }
        Ok(Self { duration, failures })
    }
}

/// Runs scripts in gateway pods.
pub struct Executor {
    client: Client,
    /// Kube-OVN's namespace, where every NAT gateway pod runs.
    namespace: String,
    timeout: Duration,
    permits: Semaphore,
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    metrics: ExecMetrics,
}

impl Executor {
    pub fn new(
        client: Client,
        namespace: String,
        timeout: Duration,
        concurrency: usize,
        metrics: ExecMetrics,
    ) -> Self {
        Self {
            client,
            namespace,
            timeout,
            permits: Semaphore::new(concurrency.max(1)),
            pod_locks: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn pod_lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.pod_locks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget locks nobody holds or waits for (pods come and go).
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(uid.to_owned()).or_default().clone()
    }

    /// Runs `script` (kind `converge`, `check` or `cleanup`) with `sh -c` in the gateway
    /// container of `pod`. The wait for the pod's turn and a permit counts towards the timeout.
    pub async fn run(
        &self,
        pod: &PodTarget,
        kind: &'static str,
        script: String,
    ) -> Result<Output, ExecError> {
        let started = Instant::now();
        let result = self
            .gated(pod, exec(&self.client, &self.namespace, &pod.name, script))
            .await;
        self.metrics
            .duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics
                .failures
                .with_label_values(&[kind, e.label()])
                .inc();
        }
        result
    }

    /// Runs `work` in `pod`'s turn, holding one permit, within the timeout.
    async fn gated<T>(
        &self,
        pod: &PodTarget,
        work: impl std::future::Future<Output = Result<T, ExecError>>,
    ) -> Result<T, ExecError> {
        tokio::time::timeout(self.timeout, async {
            let lock = self.pod_lock(&pod.uid);
            let _turn = lock.lock().await;
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("semaphore never closed");
            work.await
        })
        .await
        .unwrap_or_else(|_| {
            Err(ExecError::Timeout {
                pod: pod.name.clone(),
                timeout: self.timeout,
            })
        })
    }
}

async fn exec(
    client: &Client,
    namespace: &str,
    pod: &str,
    script: String,
) -> Result<Output, ExecError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = AttachParams::default()
        .container(NAT_GW_CONTAINER)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut process = pods
        .exec(pod, vec!["sh".to_owned(), "-c".to_owned(), script], &params)
        .await
        .map_err(|source| ExecError::Api {
            pod: pod.to_owned(),
            source,
        })?;
    let stream_err = |e: &dyn std::fmt::Display| ExecError::Stream {
        pod: pod.to_owned(),
        message: e.to_string(),
    };
    let (stdout, stderr) = (process.stdout(), process.stderr());
    let status = process.take_status();
    let read = |r: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
        let mut buf = Vec::new();
        if let Some(r) = r {
            r.take(MAX_OUTPUT as u64).read_to_end(&mut buf).await?;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let (stdout, stderr) =
        tokio::try_join!(read(stdout), read(stderr)).map_err(|e| stream_err(&e))?;
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    process.join().await.map_err(|e| stream_err(&e))?;
    let code = match status {
        Some(s) if s.status.as_deref() == Some("Success") => 0,
        Some(s) => s
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.parse::<i32>().ok())
            // Some kubelets (kwok) report a non-zero exit only in the message.
            .or_else(|| s.message.as_deref().and_then(exit_status_from_message))
            .unwrap_or(-1),
        None => {
            return Err(ExecError::Stream {
                pod: pod.to_owned(),
                message: "no exit status received".into(),
            });
        }
    };
    if code == 0 {
        Ok(Output { stdout })
    } else {
        Err(ExecError::Exit {
            pod: pod.to_owned(),
            code,
            stdout,
            stderr,
        })
    }
}

fn exit_status_from_message(m: &str) -> Option<i32> {
    let idx = m.rfind("exit status ")?;
    let digits: String = m[idx + "exit status ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_messages() {
        assert_eq!(
            exit_status_from_message("command terminated: exit status 3"),
            Some(3)
        );
        assert_eq!(exit_status_from_message("other"), None);
    }

    fn target(name: &str) -> PodTarget {
        PodTarget {
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn executor(timeout: Duration, concurrency: usize) -> Executor {
        // A client that is never used: the gating is tested with stand-in work.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let metrics = ExecMetrics::register(&Registry::new()).unwrap();
        Executor::new(client, "kube-system".into(), timeout, concurrency, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_gateway_times_out_without_blocking_others() {
        let ex = Arc::new(executor(Duration::from_secs(30), 2));
        let dead = target("dead");
        // Three scripts queue on the dead gateway (one at a time per pod) ...
        let stuck: Vec<_> = (0..3)
            .map(|_| {
                let (ex, dead) = (ex.clone(), dead.clone());
                tokio::spawn(async move {
                    ex.gated(&dead, std::future::pending::<Result<(), ExecError>>())
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        // ... while other gateways' scripts run at once.
        let started = tokio::time::Instant::now();
        for name in ["a", "b", "c", "d"] {
            ex.gated(&target(name), async { Ok::<_, ExecError>(()) })
                .await
                .unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        for s in stuck {
            let err = s.await.unwrap().unwrap_err();
            assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_script_at_a_time_per_pod() {
        let ex = Arc::new(executor(Duration::from_secs(30), 8));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (ex, running) = (ex.clone(), running.clone());
                tokio::spawn(async move {
                    ex.gated(&target("gw"), async {
                        let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(now, 0, "two scripts in one pod at once");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        Ok::<_, ExecError>(())
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }

    #[test]
    fn summaries_are_short_and_prefer_stderr() {
        assert_eq!(summary("a\n\nb\n", "x"), "a | b");
        assert_eq!(summary("  ", "only stdout"), "only stdout");
        assert_eq!(summary("", ""), "(no output)");
        let long = "é".repeat(2000);
        let s = summary(&long, "");
        assert!(s.len() <= 1100 && s.starts_with('…'));
    }
}
