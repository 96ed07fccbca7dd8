//! Runs the built `kubectl-multivpc` as a user does, against a harness cluster.

use crate::{Harness, controllers};

/// The plugin's output and exit status.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `kubectl-multivpc` against `cluster`'s admin kubeconfig.
pub async fn run(h: &Harness, cluster: &str, args: &[&str]) -> Run {
    let binary = controllers::binary_dir().join("kubectl-multivpc");
    assert!(
        binary.exists(),
        "{} not found: run `cargo build -p kubectl-multivpc` first (make e2e-run does)",
        binary.display()
    );
    let out = tokio::process::Command::new(&binary)
        .arg("--kubeconfig")
        .arg(h.kubeconfig(cluster))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The line of check `name` in a diagnosis.
pub fn check_line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} check in:\n{stdout}"))
}
