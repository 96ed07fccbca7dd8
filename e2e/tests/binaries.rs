//! Each controller binary as shipped, against a real API server: it becomes ready, serves its
//! probes and the reconcile metric families, and exits 0 on SIGTERM.

use multivpc_e2e::{controllers, prelude::*};

const CLUSTER: &str = "cluster1";

#[tokio::test]
async fn each_binary_serves_probes_and_metrics_and_stops_cleanly() {
    let h = harness_or_skip!([CLUSTER]);
    h.install_foreign_crds(CLUSTER).await.unwrap();
    h.install_project_crds(CLUSTER).await.unwrap();
    let cluster_id = format!("--cluster-id={CLUSTER}");
    // (binary, controller label, lock held by that controller's own tests, extra flags)
    let binaries: [(&str, &str, &[&str]); 3] = [
        ("dns-forwarder", "vpcdnsforward", &[]),
        ("tunnel-manager", "vpcnattunnel", &[&cluster_id]),
        ("exip-syncer", "gatewayexip", &[&cluster_id]),
    ];
    for (binary, controller, args) in binaries {
        // One controller of a kind per cluster at a time: its own tests hold this lock too.
        let _lock = h.exclusive(binary).await.unwrap();
        let mut process = controllers::spawn(
            h.run_dir(),
            binary,
            &h.kubeconfig(CLUSTER),
            args,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let (code, body) = controllers::http_get(process.probes, "/healthz")
            .await
            .unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"), "{binary} /healthz");

        let text = process.metrics_text().await.unwrap();
        for series in [
            format!(
                "controller_runtime_reconcile_total{{controller=\"{controller}\",result=\"success\"}}"
            ),
            format!(
                "controller_runtime_reconcile_total{{controller=\"{controller}\",result=\"error\"}}"
            ),
            format!("controller_runtime_reconcile_errors_total{{controller=\"{controller}\"}}"),
            format!(
                "controller_runtime_reconcile_time_seconds_count{{controller=\"{controller}\"}}"
            ),
            format!("controller_runtime_active_workers{{controller=\"{controller}\"}}"),
            format!("leader_election_master_status{{name=\"{binary}\"}} 1"),
            "process_resident_memory_bytes".to_owned(),
        ] {
            assert!(
                text.contains(&series),
                "{binary} /metrics lacks {series}:\n{text}"
            );
        }
        assert!(
            process.stop().unwrap(),
            "{binary} must exit 0 on SIGTERM; log:\n{}",
            process.log_tail(20)
        );
    }
}
