//! The command-line contract every controller binary keeps, checked by each binary crate's
//! `tests/cli.rs` (which knows its binary's path): flags are documented, and a cluster that
//! cannot be reached is one clear line on stderr and exit status 1 — no panic, no retry loop.

use std::process::Command;

/// The flags every controller takes (multivpc-runtime's `CommonArgs`).
pub const COMMON_FLAGS: [&str; 5] = [
    "--metrics-bind-address",
    "--health-probe-bind-address",
    "--leader-elect",
    "--log-format",
    "--cluster-id",
];

/// `binary --help` succeeds and lists every common flag.
pub fn assert_help_lists_common_flags(binary: &str) {
    let out = Command::new(binary).arg("--help").output().unwrap();
    assert!(out.status.success(), "{binary} --help failed: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in COMMON_FLAGS {
        assert!(help.contains(flag), "{binary} --help lacks {flag}:\n{help}");
    }
}

/// With a kubeconfig pointing at a loopback port nobody listens on, `binary` (named `name`)
/// prints exactly one line, `<name>: error: cannot reach the Kubernetes API server at …`, and
/// exits 1.
pub fn assert_unreachable_cluster_is_one_line(name: &str, binary: &str) {
    let dir = std::env::temp_dir().join(format!("{name}-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    // Port 1 on loopback: the connection is refused at once.
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
    let out = Command::new(binary)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_BACKTRACE", "1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args([
            "--metrics-bind-address=0",
            "--health-probe-bind-address=127.0.0.1:0",
        ])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got:\n{stderr}"
    );
    let expected =
        format!("{name}: error: cannot reach the Kubernetes API server at https://127.0.0.1:1/");
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
