//! A command in a pod's container through the API server (`pods/exec`), the one way the
//! binaries and the tests run one: argv, optional bytes on stdin, output bounded per stream,
//! and the exit code as real kubelets and kwok's report it.
//!
//! Stdin carries what must not be in a process's argv inside the pod (key material): the
//! command reads it. Whether the far end sees EOF when the bytes are written depends on the
//! protocol the kubelet speaks (`v5.channel.k8s.io` signals it, `v4` cannot), so a command fed
//! this way reads exactly what it expects and never waits for EOF.

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Status};
use kube::{
    Api, Client,
    api::{AttachParams, AttachedProcess},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What to run, where.
pub struct Command<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    /// `None`: the pod's only container.
    pub container: Option<&'a str>,
    pub argv: Vec<String>,
    /// Written to the command's stdin, when set.
    pub stdin: Option<&'a [u8]>,
    /// Bytes kept per stream (the rest is read and dropped).
    pub max_output: u64,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    /// 0 on success, the reported code on failure, -1 when the status names none.
    pub exit_code: i32,
    /// The status message on failure (e.g. `command terminated with non-zero exit code`).
    pub message: Option<String>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// Why the command could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The API server refused the exec (no such pod, RBAC, the container not running, ...).
    #[error("{0}")]
    Refused(String),
    /// The stream broke, or ended without an exit status.
    #[error("{0}")]
    Stream(String),
}

/// Runs `cmd` and waits for its exit status.
pub async fn run(client: &Client, cmd: &Command<'_>) -> Result<Finished, ExecError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), cmd.namespace);
    let mut params = AttachParams::default()
        .stdin(cmd.stdin.is_some())
        .stdout(true)
        .stderr(true);
    if let Some(container) = cmd.container {
        params = params.container(container);
    }
    let mut process = pods
        .exec(cmd.pod, cmd.argv.clone(), &params)
        .await
        .map_err(|e| ExecError::Refused(e.to_string()))?;
    let stream = |e: &dyn std::fmt::Display| ExecError::Stream(e.to_string());
    let feed = feed(&mut process, cmd.stdin);
    let (stdout, stderr) = (process.stdout(), process.stderr());
    let status = process.take_status();
    let max = cmd.max_output;
    let read = |r: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            (&mut r).take(max).read_to_end(&mut buf).await?;
            // Drain the rest, so that a chatty command does not stall on a full pipe.
            tokio::io::copy(&mut r, &mut tokio::io::sink()).await?;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let (stdout, stderr, ()) =
        tokio::try_join!(read(stdout), read(stderr), feed).map_err(|e| stream(&e))?;
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    process.join().await.map_err(|e| stream(&e))?;
    let Some(status) = status else {
        return Err(ExecError::Stream(
            "the exec ended without an exit status".into(),
        ));
    };
    let exit_code = exit_code(&status);
    Ok(Finished {
        stdout,
        stderr,
        exit_code,
        message: (exit_code != 0).then(|| status.message.unwrap_or_default()),
    })
}

/// Writes `bytes` to the process's stdin and closes it (a no-op without stdin).
fn feed<'a>(
    process: &mut AttachedProcess,
    bytes: Option<&'a [u8]>,
) -> impl Future<Output = std::io::Result<()>> + 'a {
    let writer = bytes.and_then(|_| process.stdin());
    async move {
        if let (Some(mut w), Some(bytes)) = (writer, bytes) {
            w.write_all(bytes).await?;
            w.shutdown().await?;
        }
        Ok(())
    }
}

/// The exit code an exec status reports: 0 for `Success`, else the `ExitCode` cause (real
/// kubelets), else the `exit status N` at the end of the message (kwok's), else -1.
pub fn exit_code(status: &Status) -> i32 {
    if status.status.as_deref() == Some("Success") {
        return 0;
    }
    status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.parse::<i32>().ok())
        .or_else(|| status.message.as_deref().and_then(exit_status_in))
        .unwrap_or(-1)
}

/// `N` of the last `exit status N` in a message.
fn exit_status_in(message: &str) -> Option<i32> {
    let at = message.rfind("exit status ")? + "exit status ".len();
    let digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    #[test]
    fn exit_codes_of_real_kubelets_and_of_kwok() {
        let ok = Status {
            status: Some("Success".into()),
            ..Default::default()
        };
        assert_eq!(exit_code(&ok), 0);
        let kubelet = Status {
            status: Some("Failure".into()),
            message: Some("command terminated with non-zero exit code".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("3".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_code(&kubelet), 3);
        let kwok = Status {
            status: Some("Failure".into()),
            message: Some("InternalError: exit status 127 (x)".into()),
            ..Default::default()
        };
        assert_eq!(exit_code(&kwok), 127);
        let unknown = Status {
            status: Some("Failure".into()),
            message: Some("no status".into()),
            ..Default::default()
        };
        assert_eq!(exit_code(&unknown), -1);
        assert_eq!(exit_status_in("command terminated: exit status 2"), Some(2));
        // As kwok v0.7 words it.
        assert_eq!(
            exit_status_in(
                "Internal error occurred: error executing command in container: cmd wait: sh -c exit 3: exit status 3"
            ),
            Some(3)
        );
    }
}
