//! The binary's command line: flags are documented, and a missing cluster is one clear line.

use assert_cmd::Command;

fn binary() -> Command {
    Command::cargo_bin("exip-syncer").unwrap()
}

#[test]
fn help_lists_the_common_flags() {
    let out = binary()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(out).unwrap();
    for flag in [
        "--metrics-bind-address",
        "--health-probe-bind-address",
        "--leader-elect",
        "--log-format",
        "--cluster-id",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn unreachable_cluster_is_one_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("exip-syncer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    std::fs::write(
        &kubeconfig,
        concat!(
            "apiVersion: v1\nkind: Config\n",
            "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n",
            "users: [{name: u, user: {token: t}}]\n",
            "contexts: [{name: c, context: {cluster: c, user: u}}]\n",
            "current-context: c\n",
        ),
    )
    .unwrap();
    let out = binary()
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_BACKTRACE", "1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args([
            "--metrics-bind-address=0",
            "--health-probe-bind-address=127.0.0.1:0",
        ])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got:\n{stderr}"
    );
    assert!(
        stderr.starts_with(
            "exip-syncer: error: cannot reach the Kubernetes API server at https://127.0.0.1:1/"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
