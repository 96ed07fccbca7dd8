//! A harness cluster's control plane stopped (`kwokctl stop cluster`: API server, etcd, the
//! controllers and kwok) and started again, as after a crash or an upgrade of a member or the
//! broker. Objects survive in etcd; every watch of the old server ends, and the new one answers
//! resource versions from before its start with 410 Gone.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use kube::Client;

use crate::{Check, Harness, wait_for};

/// How long a started cluster may take to answer again.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs kwokctl with the harness's environment (e2e/scripts/lib.sh).
fn kwokctl(run_dir: &std::path::Path, args: &str) -> Result<()> {
    let lib = crate::e2e_dir().join("scripts/lib.sh");
    let script = format!(
        "export MULTIVPC_E2E_RUN_DIR='{}'; source '{}'; kwokctl {args}",
        run_dir.display(),
        lib.display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "kwokctl {args}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A stopped cluster; started again when dropped, so a failing test never leaves it down.
/// Hold the cluster's lock (tests that share it must not see it vanish) while it is down.
pub struct ClusterDown {
    run_dir: PathBuf,
    name: String,
    client: Client,
    up: bool,
}

impl Harness {
    /// Stops cluster `name`'s control plane.
    pub fn stop_cluster(&self, name: &str) -> Result<ClusterDown> {
        kwokctl(self.run_dir(), &format!("stop cluster --name {name}"))?;
        Ok(ClusterDown {
            run_dir: self.run_dir().to_path_buf(),
            name: name.to_owned(),
            client: self.client(name),
            up: false,
        })
    }
}

impl ClusterDown {
    /// Starts the cluster again and waits until its API server answers.
    pub async fn start(mut self) -> Result<()> {
        let (run_dir, name) = (self.run_dir.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || {
            kwokctl(&run_dir, &format!("start cluster --name {name}"))
        })
        .await??;
        self.up = true;
        let client = self.client.clone();
        wait_for(
            &format!("{} API server", self.name),
            START_TIMEOUT,
            || async {
                client.apiserver_version().await?;
                Ok(Check::Done(()))
            },
        )
        .await
    }
}

impl ClusterDown {
    async fn wait_answering(client: Client, name: &str) -> Result<()> {
        wait_for(&format!("{name} API server"), START_TIMEOUT, || async {
            client.apiserver_version().await?;
            Ok(Check::Done(()))
        })
        .await
    }
}

impl Drop for ClusterDown {
    /// A test that failed while the cluster was down: start it and wait until it answers, so
    /// the next test finds the harness as it should be.
    fn drop(&mut self) {
        if self.up {
            return;
        }
        if let Err(err) = kwokctl(
            &self.run_dir,
            &format!("start cluster --name {}", self.name),
        ) {
            eprintln!("could not start {} again: {err:#}", self.name);
            return;
        }
        // Dropped inside the test's runtime, which is blocked here: wait on a runtime of our
        // own, on its own thread, with a client of its own (the test's client is served by
        // tasks of the blocked runtime).
        let name = self.name.clone();
        let kubeconfig = self.run_dir.join(format!("{name}.kubeconfig"));
        let waited = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                Self::wait_answering(Client::try_from(config)?, &name).await
            })
        })
        .join();
        if !matches!(waited, Ok(Ok(()))) {
            eprintln!("{} did not answer again after its restart", self.name);
        }
    }
}
