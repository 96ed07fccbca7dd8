//! Running scripts in gateway pods through `pods/exec`, with **group commit per pod**: the
//! calls queued for one pod while its previous exec runs go together in its next exec, as the
//! sections of one script ([`script::batch`]). So a change to many tunnels of a gateway costs
//! that gateway one or two execs, not one per tunnel, and two scripts never run in one pod at
//! once (inside the pod a lock keeps a timed-out script and the next one apart, see `script`).
//!
//! Execs across pods are bounded by a semaphore; the timeout counts only the exec, not the wait
//! for the pod's turn or a permit. A slow or dead gateway holds only its own queue and one
//! permit for at most the timeout, so other gateways go on.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::Client;
use multivpc_api::gateway::NAT_GW_CONTAINER;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::sync::{Semaphore, oneshot};

use crate::{resolve::PodTarget, script};

/// Bytes of stdout/stderr kept from one exec (a batch of up to [`MAX_CALLS`] sections).
const MAX_OUTPUT: usize = 1024 * 1024;
/// Sections in one exec at most (the request URI bounds them too, see [`script::call_budget`]).
const MAX_CALLS: usize = 200;

/// What a script (or one section of a batch) printed; exit status 0.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: String,
}

/// Why an exec failed. A failure of the whole exec is the failure of each call it carried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    #[error("exec in pod {pod} timed out after {timeout:?}")]
    Timeout { pod: String, timeout: Duration },
    #[error("exec in pod {pod}: {message}")]
    Api { pod: String, message: String },
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
    sections: IntCounterVec,
}

impl ExecMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "multivpc_tunnel_exec_duration_seconds",
                "Duration of execs in VPC NAT gateway pods (the exec only, not the wait for its turn), by script",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["script"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "multivpc_tunnel_exec_failures_total",
                "Tunnel scripts (sections of an exec) that failed, by script and reason (timeout, api, stream, exit)",
            ),
            &["script", "reason"],
        )?;
        let sections = IntCounterVec::new(
            Opts::new(
                "multivpc_tunnel_exec_sections_total",
                "Tunnel scripts carried by execs in VPC NAT gateway pods (one section per tunnel), by script",
            ),
            &["script"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(sections.clone()))?;
        for script in ["converge", "check", "cleanup", "probe"] {
            duration.with_label_values(&[script]);
            sections.with_label_values(&[script]);
            for reason in ["timeout", "api", "stream", "exit"] {
                failures.with_label_values(&[script, reason]);
            }
        }
        Ok(Self {
            duration,
            failures,
            sections,
        })
    }
}

type ExecFuture = Pin<Box<dyn Future<Output = Result<Output, ExecError>> + Send>>;
/// Runs a script in a pod: `pods/exec` in production, a stand-in in unit tests.
/// Runs (pod, script, the script's stdin).
type Runner = Arc<dyn Fn(String, String, Vec<u8>) -> ExecFuture + Send + Sync>;

/// Runs tunnel scripts in gateway pods, batched per pod.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    runner: Runner,
    timeout: Duration,
    permits: Semaphore,
    /// Calls waiting for their pod's next exec, by pod UID. A pod has an entry exactly while a
    /// task drains it, so pods that come and go leave nothing behind.
    queues: Mutex<HashMap<String, VecDeque<Job>>>,
    /// Sections per exec for pods whose exec timed out, below [`MAX_CALLS`]: quartered at a
    /// timeout, doubled at each exec that ends in time (gone once back at the maximum). A pod
    /// slowed by its own size (every command there scans its growing rule set) then gets
    /// batches it can finish, instead of the same too-big batch timing out again and again.
    caps: Mutex<HashMap<String, usize>>,
    metrics: ExecMetrics,
}

struct Job {
    kind: &'static str,
    call: script::Call,
    reply: oneshot::Sender<Result<Output, ExecError>>,
}

impl Executor {
    pub fn new(
        client: Client,
        namespace: String,
        timeout: Duration,
        concurrency: usize,
        metrics: ExecMetrics,
    ) -> Self {
        let runner: Runner = Arc::new(move |pod, script, stdin| {
            let (client, namespace) = (client.clone(), namespace.clone());
            Box::pin(async move { exec(&client, &namespace, &pod, script, stdin).await })
        });
        Self::with_runner(runner, timeout, concurrency, metrics)
    }

    fn with_runner(
        runner: Runner,
        timeout: Duration,
        concurrency: usize,
        metrics: ExecMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                runner,
                timeout,
                permits: Semaphore::new(concurrency.max(1)),
                queues: Mutex::new(HashMap::new()),
                caps: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// Runs `call` (kind `converge`, `check` or `cleanup`) in the gateway container of `pod`,
    /// in the pod's next exec together with the other calls queued for it meanwhile. The output
    /// is the call's own section.
    pub async fn run(
        &self,
        pod: &PodTarget,
        kind: &'static str,
        call: script::Call,
    ) -> Result<Output, ExecError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { kind, call, reply };
        let start_drain = {
            let mut queues = self.inner.queues();
            match queues.get_mut(&pod.uid) {
                Some(queue) => {
                    queue.push_back(job);
                    false
                }
                None => {
                    queues.insert(pod.uid.clone(), VecDeque::from([job]));
                    true
                }
            }
        };
        if start_drain {
            tokio::spawn(self.inner.clone().drain(pod.clone()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(ExecError::Stream {
                pod: pod.name.clone(),
                message: "the exec was abandoned".into(),
            })
        })
    }
}

impl Executor {
    /// Runs a read-only script of its own in `pod` at once, outside the pod's queue (it takes
    /// no lock in the pod and needs no turn), within the same permits and timeout. `kind`
    /// names it in the metrics (one section).
    pub async fn run_alone(
        &self,
        pod: &PodTarget,
        kind: &'static str,
        script: String,
    ) -> Result<Output, ExecError> {
        let inner = &self.inner;
        let result = inner.exec_timed(pod, kind, script, Vec::new()).await;
        inner.metrics.sections.with_label_values(&[kind]).inc();
        if let Err(e) = &result {
            inner
                .metrics
                .failures
                .with_label_values(&[kind, e.label()])
                .inc();
        }
        result
    }
}

impl Inner {
    /// The queues (a panic elsewhere while holding them leaves them usable: every change to
    /// them is one insert, push or removal).
    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Job>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn caps(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.caps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `script` in `pod` under one permit and the timeout (which counts only the exec,
    /// not the wait for the permit), recording its duration under `kind`.
    async fn exec_timed(
        &self,
        pod: &PodTarget,
        kind: &'static str,
        script: String,
        stdin: Vec<u8>,
    ) -> Result<Output, ExecError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.timeout, (self.runner)(pod.name.clone(), script, stdin))
                .await
                .unwrap_or_else(|_| {
                    Err(ExecError::Timeout {
                        pod: pod.name.clone(),
                        timeout: self.timeout,
                    })
                });
        self.metrics
            .duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Runs `pod`'s queued calls, one exec at a time, until its queue is empty.
    async fn drain(self: Arc<Self>, pod: PodTarget) {
        let _unwedge = Unwedge {
            inner: &self,
            uid: &pod.uid,
        };
        while let Some(batch) = self.next_batch(&pod.uid, self.cap(&pod.uid)) {
            let kind = batch[0].kind;
            let script = script::batch(batch.iter().map(|j| &j.call));
            let stdin = script::batch_stdin(batch.iter().map(|j| &j.call));
            let result = self.exec_timed(&pod, kind, script, stdin).await;
            self.adapt(&pod.uid, batch.len(), &result);
            // A pod that did not answer (timeout, API, stream) would not answer the calls
            // queued behind these either: they fail with them, each retried by its tunnel's
            // backoff, instead of waiting a timeout per batch.
            let mut batch = batch;
            if let Err(e) = &result
                && !matches!(e, ExecError::Exit { .. })
            {
                batch.extend(self.take_queued(&pod.uid));
            }
            self.metrics
                .sections
                .with_label_values(&[kind])
                .inc_by(batch.len() as u64);
            let answers = split(&pod.name, batch.len(), result);
            for (job, answer) in batch.into_iter().zip(answers) {
                if let Err(e) = &answer {
                    self.metrics
                        .failures
                        .with_label_values(&[job.kind, e.label()])
                        .inc();
                }
                // The caller may be gone (shut down); its answer is not needed then.
                let _ = job.reply.send(answer);
            }
        }
    }

    /// The calls of `uid`'s next exec: the longest run of queued calls of one kind, within the
    /// size limits; `None` (and the queue forgotten) when nothing is queued.
    fn next_batch(&self, uid: &str, cap: usize) -> Option<Vec<Job>> {
        let mut queues = self.queues();
        let queue = queues.get_mut(uid)?;
        let Some(kind) = queue.front().map(|j| j.kind) else {
            queues.remove(uid);
            return None;
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        let budget = script::call_budget();
        while let Some(job) = queue.front() {
            if job.kind != kind
                || batch.len() == cap
                || (!batch.is_empty() && bytes + job.call.len() > budget)
            {
                break;
            }
            bytes += job.call.len();
            batch.extend(queue.pop_front());
        }
        Some(batch)
    }

    /// Sections `uid`'s next exec may carry.
    fn cap(&self, uid: &str) -> usize {
        let caps = self.caps();
        caps.get(uid).copied().unwrap_or(MAX_CALLS)
    }

    /// Adjusts `uid`'s cap after an exec of `carried` sections ended with `result`.
    fn adapt(&self, uid: &str, carried: usize, result: &Result<Output, ExecError>) {
        let mut caps = self.caps();
        let cap = caps.get(uid).copied().unwrap_or(MAX_CALLS);
        let next = match result {
            Err(ExecError::Timeout { .. }) => (carried / 4).max(1),
            _ => cap.saturating_mul(2),
        };
        if next >= MAX_CALLS {
            caps.remove(uid);
        } else {
            // Bounded: pods that timed out and went away must not pile up.
            if caps.len() >= 4096 && !caps.contains_key(uid) {
                caps.clear();
            }
            caps.insert(uid.to_owned(), next);
        }
    }

    /// Every call queued for `uid` now.
    fn take_queued(&self, uid: &str) -> Vec<Job> {
        let mut queues = self.queues();
        queues
            .get_mut(uid)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }
}

/// Forgets a pod's queue when its drain task panics: the calls queued there fail (their
/// callers see an abandoned exec and retry), and the pod's next call starts a new drain instead
/// of queueing behind one that is gone.
struct Unwedge<'a> {
    inner: &'a Inner,
    uid: &'a str,
}

impl Drop for Unwedge<'_> {
    fn drop(&mut self) {
        // Only on a panic: a drain that ends normally has removed its queue itself, and a new
        // drain may own the entry by now.
        if std::thread::panicking() {
            let mut queues = self.inner.queues();
            queues.remove(self.uid);
        }
    }
}

/// Each call's answer from the outcome of the exec that carried `n` calls: its own section's
/// output and status. A failure of the exec itself (timeout, API, stream) or before the first
/// section (no `ip`, the in-pod lock) is every call's.
fn split(pod: &str, n: usize, result: Result<Output, ExecError>) -> Vec<Result<Output, ExecError>> {
    let (stdout, stderr, code) = match result {
        Ok(out) => (out.stdout, String::new(), 0),
        Err(ExecError::Exit {
            stdout,
            stderr,
            code,
            ..
        }) => (stdout, stderr, code),
        Err(e) => return vec![Err(e); n],
    };
    let sections = script::sections(&stdout);
    if sections.is_empty() {
        let e = if code == 0 {
            ExecError::Stream {
                pod: pod.to_owned(),
                message: format!("no section output: {}", summary(&stderr, &stdout)),
            }
        } else {
            ExecError::Exit {
                pod: pod.to_owned(),
                code,
                stdout,
                stderr,
            }
        };
        return vec![Err(e); n];
    }
    (0..n)
        .map(|i| match sections.get(&i) {
            Some(script::SectionOutput {
                text,
                status: Some(0),
            }) => Ok(Output {
                stdout: text.clone(),
            }),
            Some(script::SectionOutput {
                text,
                status: Some(code),
            }) => Err(ExecError::Exit {
                pod: pod.to_owned(),
                code: *code,
                stdout: text.clone(),
                stderr: String::new(),
            }),
            _ => Err(ExecError::Stream {
                pod: pod.to_owned(),
                message: format!(
                    "the script ended before tunnel section {i} finished (exit {code}): {}",
                    summary(&stderr, "")
                ),
            }),
        })
        .collect()
}

async fn exec(
    client: &Client,
    namespace: &str,
    pod: &str,
    script: String,
    stdin: Vec<u8>,
) -> Result<Output, ExecError> {
    use multivpc_runtime::pod_exec::{self, Command};
    let command = Command {
        namespace,
        pod,
        container: Some(NAT_GW_CONTAINER),
        argv: vec!["sh".to_owned(), "-c".to_owned(), script],
        // Keys, when a section has any: on stdin, never in the argv.
        stdin: (!stdin.is_empty()).then_some(stdin.as_slice()),
        max_output: MAX_OUTPUT as u64,
    };
    let finished = pod_exec::run(client, &command).await.map_err(|e| match e {
        pod_exec::ExecError::Refused(message) => ExecError::Api {
            pod: pod.to_owned(),
            message,
        },
        pod_exec::ExecError::Stream(message) => ExecError::Stream {
            pod: pod.to_owned(),
            message,
        },
    })?;
    if finished.success() {
        Ok(Output {
            stdout: finished.stdout,
        })
    } else {
        Err(ExecError::Exit {
            pod: pod.to_owned(),
            code: finished.exit_code,
            stdout: finished.stdout,
            stderr: finished.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::script::{CleanupConfig, RuleTag};

    fn target(name: &str) -> PodTarget {
        PodTarget {
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    /// A call whose device name is `dev`, so a stand-in can tell calls apart.
    fn call(dev: &str) -> script::Call {
        let device = dev.parse().unwrap();
        script::Call::cleanup(&CleanupConfig {
            esp: None,
            tag: RuleTag::new("ns1", &device).unwrap(),
            device,
            delete_device: true,
            remote_cidr: None,
            local_cidr: None,
        })
    }

    /// What a pod answers a batch with, as the real script would: each section's output and
    /// status, `fail` sections exiting 1.
    fn answer(script: &str, fail: &[&str]) -> Result<Output, ExecError> {
        let mut stdout = String::new();
        let mut status = 0;
        for line in script.lines() {
            let Some(rest) = line.strip_prefix("section ") else {
                continue;
            };
            let (n, call) = rest.split_once(' ').unwrap();
            let dev = call.split('\'').nth(1).unwrap();
            let code = i32::from(fail.contains(&dev));
            stdout.push_str(&format!(
                "multivpc-section={n}\nran {dev}\nmultivpc-changes=0\nmultivpc-section-status={code}\n"
            ));
            status = status.max(code);
        }
        if status == 0 {
            Ok(Output { stdout })
        } else {
            Err(ExecError::Exit {
                pod: "gw".into(),
                code: status,
                stdout,
                stderr: String::new(),
            })
        }
    }

    /// An executor whose pods answer with `answer`, each exec taking `delay` (or forever, on
    /// pods named `dead`), counting the execs.
    fn executor(
        timeout: Duration,
        concurrency: usize,
        delay: Duration,
        fail: &'static [&'static str],
    ) -> (Executor, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let execs = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let (e, r) = (execs.clone(), running.clone());
        let runner: Runner = Arc::new(move |pod: String, script: String, _stdin: Vec<u8>| {
            let (e, r) = (e.clone(), r.clone());
            Box::pin(async move {
                e.fetch_add(1, Ordering::SeqCst);
                assert!(script::encoded_len(&script) <= script::MAX_ENCODED_SCRIPT);
                if pod == "dead" {
                    std::future::pending::<()>().await;
                }
                let now = r.fetch_add(1, Ordering::SeqCst);
                assert_eq!(now, 0, "two execs at once in a one-pod test");
                tokio::time::sleep(delay).await;
                r.fetch_sub(1, Ordering::SeqCst);
                answer(&script, fail)
            })
        });
        let metrics = ExecMetrics::register(&Registry::new()).unwrap();
        let ex = Executor::with_runner(runner, timeout, concurrency, metrics);
        (ex, execs, running)
    }

    async fn run_all(
        ex: &Executor,
        pod: &PodTarget,
        devs: &[String],
    ) -> Vec<Result<Output, ExecError>> {
        let tasks: Vec<_> = devs
            .iter()
            .map(|d| {
                let (ex, pod, c) = (ex.clone(), pod.clone(), call(d));
                tokio::spawn(async move { ex.run(&pod, "cleanup", c).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn calls_queued_for_a_pod_share_its_next_exec() {
        let (ex, execs, _) = executor(Duration::from_secs(30), 8, Duration::from_secs(1), &[]);
        let first = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run(&target("gw"), "cleanup", call("vx0")).await })
        };
        // While the first call's exec runs, 49 more arrive: they wait for it and go in one more.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(execs.load(Ordering::SeqCst), 1);
        let devs: Vec<String> = (1..50).map(|i| format!("vx{i}")).collect();
        let out = run_all(&ex, &target("gw"), &devs).await;
        assert_eq!(execs.load(Ordering::SeqCst), 2);
        assert_eq!(
            first.await.unwrap().unwrap().stdout,
            "ran vx0\nmultivpc-changes=0\n"
        );
        for (d, o) in devs.iter().zip(out) {
            assert_eq!(o.unwrap().stdout, format!("ran {d}\nmultivpc-changes=0\n"));
        }
        assert!(
            ex.inner.queues.lock().unwrap().is_empty(),
            "queue forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_bounded() {
        let (ex, execs, _) = executor(Duration::from_secs(30), 8, Duration::from_secs(1), &[]);
        let devs: Vec<String> = (0..(2 * MAX_CALLS + 1)).map(|i| format!("vx{i}")).collect();
        let out = run_all(&ex, &target("gw"), &devs).await;
        assert!(out.iter().all(|o| o.is_ok()));
        // Two full execs and one for the last call.
        assert_eq!(execs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_drain_that_panics_leaves_the_pod_usable() {
        let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = panicked.clone();
        let runner: Runner = Arc::new(move |_pod: String, script: String, _stdin: Vec<u8>| {
            let p = p.clone();
            Box::pin(async move {
                if !p.swap(true, Ordering::SeqCst) {
                    // Give the calls behind this one time to queue.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    panic!("a bug in the exec path");
                }
                answer(&script, &[])
            })
        });
        let metrics = ExecMetrics::register(&Registry::new()).unwrap();
        let ex = Executor::with_runner(runner, Duration::from_secs(30), 8, metrics);
        let first = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run(&target("gw"), "cleanup", call("vx0")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let queued = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run(&target("gw"), "cleanup", call("vx1")).await })
        };
        assert!(
            first.await.unwrap().is_err(),
            "the panicking exec's call fails"
        );
        assert!(
            queued.await.unwrap().is_err(),
            "so does the one queued behind it"
        );
        // The pod's next call is not stuck behind the dead drain.
        let next = tokio::time::timeout(
            Duration::from_secs(10),
            ex.run(&target("gw"), "cleanup", call("vx2")),
        )
        .await
        .expect("the next call runs");
        assert_eq!(next.unwrap().stdout, "ran vx2\nmultivpc-changes=0\n");
    }

    #[test]
    fn a_timeout_shrinks_the_pods_batches_and_execs_in_time_grow_them_back() {
        let (ex, _, _) = executor(Duration::from_secs(30), 8, Duration::ZERO, &[]);
        let inner = &ex.inner;
        let timeout = Err(ExecError::Timeout {
            pod: "gw".into(),
            timeout: Duration::from_secs(30),
        });
        let ok = Ok(Output::default());
        assert_eq!(inner.cap("u"), MAX_CALLS);
        inner.adapt("u", 120, &timeout);
        assert_eq!(inner.cap("u"), 30);
        inner.adapt("u", 30, &timeout);
        assert_eq!(inner.cap("u"), 7);
        inner.adapt("u", 1, &timeout);
        assert_eq!(inner.cap("u"), 1, "never below one");
        for _ in 0..8 {
            inner.adapt("u", 1, &ok);
        }
        assert_eq!(inner.cap("u"), MAX_CALLS);
        assert!(
            inner.caps.lock().unwrap().is_empty(),
            "forgotten at the maximum"
        );
        assert_eq!(inner.cap("other"), MAX_CALLS, "per pod");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_section_fails_its_call_alone() {
        let (ex, _, _) = executor(Duration::from_secs(30), 8, Duration::from_secs(1), &["vx2"]);
        let devs: Vec<String> = (0..4).map(|i| format!("vx{i}")).collect();
        let out = run_all(&ex, &target("gw"), &devs).await;
        for (d, o) in devs.iter().zip(out) {
            match (d.as_str(), o) {
                (
                    "vx2",
                    Err(ExecError::Exit {
                        code: 1, stdout, ..
                    }),
                ) => {
                    assert_eq!(stdout, "ran vx2\nmultivpc-changes=0\n")
                }
                ("vx2", o) => panic!("vx2: {o:?}"),
                (_, o) => assert!(o.is_ok(), "{d}: {o:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_gateway_times_out_without_blocking_others() {
        let (ex, execs, _) = executor(Duration::from_secs(30), 2, Duration::ZERO, &[]);
        let dead = target("dead");
        let spawn_dead = |dev: &'static str| {
            let (ex, dead) = (ex.clone(), dead.clone());
            tokio::spawn(async move { ex.run(&dead, "cleanup", call(dev)).await })
        };
        let mut stuck = vec![spawn_dead("vx1")];
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Two more queue behind the exec that hangs ...
        stuck.extend([spawn_dead("vx2"), spawn_dead("vx3")]);
        tokio::task::yield_now().await;
        // ... while other gateways' scripts run at once.
        let started = tokio::time::Instant::now();
        for name in ["a", "b", "c", "d"] {
            ex.run(&target(name), "cleanup", call("vx1")).await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // The hung exec's timeout fails the calls queued behind it too: one exec in the dead
        // pod, not one timeout per batch.
        for s in stuck {
            let err = s.await.unwrap().unwrap_err();
            assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        }
        assert_eq!(execs.load(Ordering::SeqCst), 1 + 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_counts_only_the_exec() {
        // One permit, execs of 20 s each, a 30 s timeout: the calls queued behind others wait
        // longer than the timeout in all and still succeed.
        let (ex, execs, _) = executor(Duration::from_secs(30), 1, Duration::from_secs(20), &[]);
        let tasks: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|p| {
                let ex = ex.clone();
                tokio::spawn(async move { ex.run(&target(p), "cleanup", call("vx1")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(execs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_whole_exec_failure_is_every_calls() {
        let timeout = Err(ExecError::Timeout {
            pod: "gw".into(),
            timeout: Duration::from_secs(1),
        });
        assert!(
            split("gw", 3, timeout)
                .iter()
                .all(|r| matches!(r, Err(ExecError::Timeout { .. })))
        );
        // The prelude failed: no section ran.
        let prelude = Err(ExecError::Exit {
            pod: "gw".into(),
            code: 1,
            stdout: String::new(),
            stderr: "multivpc: ip (iproute2) not found\n".into(),
        });
        for r in split("gw", 2, prelude) {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("ip (iproute2) not found"), "{e}");
        }
        // Cut after the first section.
        let cut = Ok(Output {
            stdout: "multivpc-section=0\nmultivpc-changes=0\nmultivpc-section-status=0\nmultivpc-section=1\n".into(),
        });
        let r = split("gw", 2, cut);
        assert!(r[0].is_ok());
        assert!(matches!(&r[1], Err(ExecError::Stream { .. })), "{:?}", r[1]);
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
