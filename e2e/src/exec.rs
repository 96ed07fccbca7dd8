//! Running commands: in pods through the API server, and in netns from the host.
use std::fmt;

use anyhow::{Context, Result, bail};
use kube::Client;

/// What a command printed and how it ended.
#[derive(Clone, Debug, Default)]
pub struct ExecOutput {
    /// The command as run (for messages).
    pub command: Vec<String>,
    pub stdout: String,
    pub stderr: String,
    /// Exit code: 0 on success, the reported code on failure, -1 when unknown.
    pub exit_code: i32,
    /// Raw status message reported by the API server (pod exec only).
    pub status_message: Option<String>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// `Ok(self)` when the command exited 0, else an error with everything it printed.
    pub fn check(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!("{self}")
        }
    }
}

impl fmt::Display for ExecOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command {:?} exited {}{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command,
            self.exit_code,
            self.status_message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            self.stdout,
            self.stderr
        )
    }
}

/// Exec `cmd` in `container` (or the pod's only container) of `namespace/pod`
/// through the API server (pods/exec over WebSocket) and collect its output.
/// A non-zero exit is not an error here: look at `exit_code` or call `check()`.
pub async fn pod_exec(
    client: &Client,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    cmd: &[&str],
) -> Result<ExecOutput> {
    use multivpc_runtime::pod_exec::{self, Command};
    let command: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let finished = pod_exec::run(
        client,
        &Command {
            namespace,
            pod,
            container,
            argv: command.clone(),
            stdin: None,
            max_output: u64::MAX,
        },
    )
    .await
    .with_context(|| format!("exec {command:?} in pod {namespace}/{pod}"))?;
    Ok(ExecOutput {
        command,
        stdout: finished.stdout,
        stderr: finished.stderr,
        exit_code: finished.exit_code,
        status_message: finished.message,
    })
}

/// Run `cmd` inside network namespace `netns` from the host (`ip netns exec`),
/// for assertions that must not go through the API.
pub async fn netns_exec(netns: &str, cmd: &[&str]) -> Result<ExecOutput> {
    let mut full = vec!["ip", "netns", "exec", netns];
    full.extend_from_slice(cmd);
    host_exec(&full).await
}

/// Run a command on the host and collect its output (non-zero exit is not an error).
pub async fn host_exec(cmd: &[&str]) -> Result<ExecOutput> {
    let (prog, args) = cmd.split_first().context("empty command")?;
    let out = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("spawn {cmd:?}"))?;
    Ok(ExecOutput {
        command: cmd.iter().map(|s| s.to_string()).collect(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit_code: out.status.code().unwrap_or(-1),
        status_message: None,
    })
}
