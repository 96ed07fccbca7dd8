//! Running commands: in pods through the API server, and in netns from the host.
use std::fmt;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, AttachParams};
use tokio::io::AsyncReadExt;

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
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut ap = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    if let Some(c) = container {
        ap = ap.container(c);
    }
    let command: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let mut proc = pods
        .exec(pod, command.clone(), &ap)
        .await
        .with_context(|| format!("exec {command:?} in pod {namespace}/{pod}"))?;
    let stdout = proc.stdout();
    let stderr = proc.stderr();
    let status = proc.take_status();
    let read = |r: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            r.read_to_end(&mut buf).await?;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let (stdout, stderr) = tokio::try_join!(read(stdout), read(stderr))?;
    let status = match status {
        Some(fut) => fut.await,
        None => None,
    };
    proc.join().await.context("exec stream")?;
    let (exit_code, status_message) = match status {
        Some(s) if s.status.as_deref() == Some("Success") => (0, None),
        Some(s) => {
            let code = s
                .details
                .as_ref()
                .and_then(|d| d.causes.as_ref())
                .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
                .and_then(|c| c.message.as_deref())
                .and_then(|m| m.parse::<i32>().ok())
                // kwok reports a non-zero exit as an InternalError whose message
                // ends in "exit status N" rather than a NonZeroExitCode cause.
                .or_else(|| s.message.as_deref().and_then(exit_status_from_message))
                .unwrap_or(-1);
            (code, s.message)
        }
        None => (-1, Some("no status received".into())),
    };
    Ok(ExecOutput {
        command,
        stdout,
        stderr,
        exit_code,
        status_message,
    })
}

fn exit_status_from_message(m: &str) -> Option<i32> {
    let idx = m.rfind("exit status ")?;
    let digits: String = m[idx + "exit status ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_read_from_kwok_messages() {
        let m = "Internal error occurred: error executing command in container: cmd wait: sh -c exit 3: exit status 3";
        assert_eq!(exit_status_from_message(m), Some(3));
        assert_eq!(exit_status_from_message("something else"), None);
    }
}
