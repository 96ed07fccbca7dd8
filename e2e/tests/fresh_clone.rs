//! A newcomer's first commands, in CI's conditions: a fresh `git clone` of this repository's
//! HEAD with an empty `target/`, no standard input, `CI=true` and `RUST_BACKTRACE=1` (as these
//! machines set it). `make demo` builds everything it runs, brings up its own clusters (its own
//! run dir, apart from the suite's harness), and reports a ping across the tunnel; a failing
//! command is one line without a backtrace; `make demo-down` leaves nothing behind.
//!
//! The harness's Go binaries come from the shared binary cache (`$MULTIVPC_CACHE`, which `make
//! e2e-build` filled earlier in this run): a cold Go build is measured by CI's own first run.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

fn make(clone: &Path, run_dir: &Path, target: &str) -> Output {
    Command::new("make")
        .arg("--no-print-directory")
        .arg(target)
        .current_dir(clone)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env("CI", "true")
        .env("RUST_BACKTRACE", "1")
        .env(multivpc_e2e::RUN_DIR_ENV, run_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run make")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn make_demo_from_a_fresh_clone() {
    if !multivpc_e2e::e2e_required() {
        eprintln!(
            "\n### SKIPPED e2e test make_demo_from_a_fresh_clone: set MULTIVPC_E2E=1 (make test does)\n"
        );
        return;
    }
    let base = std::env::temp_dir().join(format!("multivpc-fresh-clone-{}", std::process::id()));
    let clone = base.join("repo");
    let run_dir = base.join("run");
    std::fs::create_dir_all(&base).unwrap();
    let cloned = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(multivpc_e2e::repo_dir())
        .arg(&clone)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(cloned.status.success(), "git clone: {}", text(&cloned));
    assert!(
        !clone.join("target").exists(),
        "a fresh clone has no target/"
    );

    // A command that fails (no demo is up yet) says so in one line, without a backtrace.
    let report = make(&clone, &run_dir, "demo-report");
    let report_text = text(&report);
    assert!(!report.status.success(), "{report_text}");
    let demo_lines: Vec<&str> = report_text
        .lines()
        .filter(|l| l.starts_with("multivpc-demo:"))
        .collect();
    assert_eq!(
        demo_lines.len(),
        1,
        "one error line expected:\n{report_text}"
    );
    assert!(
        demo_lines[0].contains("error: the harness is not up"),
        "{report_text}"
    );
    assert!(
        !report_text.contains("backtrace"),
        "no backtrace expected:\n{report_text}"
    );

    let demo = make(&clone, &run_dir, "demo");
    let down = make(&clone, &run_dir, "demo-down");
    let demo_text = text(&demo);
    assert!(demo.status.success(), "make demo failed:\n{demo_text}");
    for want in [
        "ready in",
        "──── ping across the tunnel",
        " 0% packet loss",
        "clusterset.local",
    ] {
        assert!(
            demo_text.contains(want),
            "the demo's report lacks {want:?}:\n{demo_text}"
        );
    }
    assert!(!demo_text.contains("PING FAILED"), "{demo_text}");
    if std::env::var(multivpc_e2e::VM_REQUIRED_ENV).is_ok_and(|v| v == "1") {
        // With the kernel VM (as in CI), the seed's own GRE tunnel, not the VXLAN stand-in.
        for want in [
            "examples/tunnel.yaml -> cluster1 (unchanged)",
            "242.1.0.0/16 dev ovn-gre0",
        ] {
            assert!(
                demo_text.contains(want),
                "the demo's report lacks {want:?}:\n{demo_text}"
            );
        }
        let ready_gre = demo_text.lines().filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 7 && cols[1..4] == ["ovn-gre0", "gre", "gw1"] && cols[6] == "True"
        });
        assert_eq!(
            ready_gre.count(),
            2,
            "both seed tunnels Ready:\n{demo_text}"
        );
    }
    // Kept for docs/demo.md (the harness keeps its logs/ through e2e-down).
    let logs = multivpc_e2e::run_dir().join("logs");
    let _ = std::fs::create_dir_all(&logs);
    let _ = std::fs::write(logs.join("fresh-clone-demo.txt"), &demo_text);
    assert!(
        down.status.success(),
        "make demo-down failed:\n{}",
        text(&down)
    );
    println!("{demo_text}");
    // The clone's target/ is several GiB: keep it only when something failed above.
    std::fs::remove_dir_all(&base).unwrap();
}
