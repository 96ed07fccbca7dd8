//! `make demo`: the three controllers on cluster1 and cluster2 of the local harness, the seed's
//! GRE tunnel (`examples/tunnel.yaml`, unchanged) between two VPC NAT gateways `gw1` carrying a
//! ping, a DNS forward, and a short report. The gateways live in the harness's kernel VM (GRE
//! needs Debian's kernel); without the VM, a VXLAN tunnel between host gateways instead.
//!
//! ```text
//! multivpc-demo up        set up (idempotent), start the controllers in the background, report
//! multivpc-demo report    print the report again
//! multivpc-demo stop      stop the demo's controllers (the clusters stay)
//! multivpc-demo supervise (internal) holds the controllers and the harness locks
//! ```
//!
//! Everything of the demo lives in `<run dir>/demo/`: the supervisor's pid file and log, the
//! controllers' logs, and `state.tsv` (one line per controller: cluster, binary, pid, metrics
//! and probe addresses, log).

#[path = "../demo_support.rs"]
mod demo_support;

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::{Api, api::DynamicObject};
use multivpc_api::{GatewayExIp, VpcDnsForward, VpcNatTunnel, conditions};
use multivpc_e2e::{fixtures::KUBE_SYSTEM, prelude::*};

const C1: &str = "cluster1";
const C2: &str = "cluster2";
const BROKER: &str = "broker";
const CLUSTERS: [&str; 2] = [C1, C2];
const BINARIES: [&str; 3] = ["dns-forwarder", "tunnel-manager", "exip-syncer"];
const NS: &str = "ns1";

/// What the demo builds: the seed's own objects on the kernel VM, or a VXLAN stand-in on the
/// host's kernel, which has no GRE.
struct Mode {
    in_vm: bool,
    /// cluster1's gateway and VPC, then cluster2's.
    gw: [&'static str; 2],
    vpc: [&'static str; 2],
    tunnel: &'static str,
    tunnel_addr: [&'static str; 2],
    example: &'static str,
}

/// examples/tunnel.yaml as it is: GRE between gateways `gw1` of VPC `test-vpc-1`.
const SEED: Mode = Mode {
    in_vm: true,
    gw: ["gw1", "gw1"],
    vpc: ["test-vpc-1", "test-vpc-1"],
    tunnel: "ovn-gre0",
    tunnel_addr: ["10.100.0.1/24", "10.100.0.2/24"],
    example: "examples/tunnel.yaml",
};

/// examples/vxlan-tunnel.yaml with the gateways renamed apart from the VM's.
const VXLAN_ON_HOST: Mode = Mode {
    in_vm: false,
    gw: ["demo-gw1", "demo-gw2"],
    vpc: ["demo-vpc1", "demo-vpc2"],
    tunnel: "ovn-vxlan0",
    tunnel_addr: ["10.101.0.1/24", "10.101.0.2/24"],
    example: "examples/vxlan-tunnel.yaml",
};

fn mode(h: &Harness) -> Result<&'static Mode> {
    Ok(if h.kernel_vm()?.is_some() {
        &SEED
    } else {
        &VXLAN_ON_HOST
    })
}
/// examples/dns.yaml forwards for this VPC; the demo gives it a vpc-dns.
const DNS_VPC: &str = "test-vpc-1";
const VPC_DNS: &str = "demo-dns";
const WAIT: Duration = Duration::from_secs(90);

fn demo_dir() -> PathBuf {
    multivpc_e2e::run_dir().join("demo")
}

fn pid_file() -> PathBuf {
    demo_dir().join("supervisor.pid")
}

fn state_file() -> PathBuf {
    demo_dir().join("state.tsv")
}

fn main() -> std::process::ExitCode {
    multivpc_e2e::install_crypto_provider();
    multivpc_runtime::main_with("multivpc-demo", async {
        let cmd = std::env::args().nth(1).unwrap_or_default();
        match cmd.as_str() {
            "up" => up().await,
            "report" => report(&attach().await?).await,
            "stop" => stop(),
            "supervise" => supervise().await,
            _ => bail!("usage: multivpc-demo up | report | stop"),
        }
    })
}

async fn attach() -> Result<Harness> {
    Harness::attach()
        .await
        .context("the harness is not up: run `make demo` (or `make e2e-up`)")
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

// ------------------------------------------------------------------------------ up

async fn up() -> Result<()> {
    let t0 = Instant::now();
    let h = attach().await?;
    step("CRDs (Kube-OVN, Submariner fixtures; crds/) on cluster1, cluster2, broker");
    for c in [C1, C2, BROKER] {
        h.install_foreign_crds(c).await?;
        h.install_project_crds(c).await?;
    }
    step(
        "Submariner (Cluster, ClusterGlobalEgressIP, ServiceDiscovery -> broker), kube-dns, ovn-default",
    );
    for c in CLUSTERS {
        h.install_default_submariner(c, Some(BROKER)).await?;
        h.install_cluster_network(c).await?;
        for ns in [NS, demo_support::LEADER_NS] {
            apply_json(
                &h.client(c),
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await?;
        }
    }
    let m = mode(&h)?;
    if m.in_vm {
        step(
            "VPC NAT gateways gw1 of VPC test-vpc-1 on cluster1 and cluster2, netns-backed in the kernel VM",
        );
    } else {
        eprintln!(
            "    no kernel VM is up, and this host's kernel has no GRE: the demo runs \
             examples/vxlan-tunnel.yaml between host gateways instead of examples/tunnel.yaml"
        );
        step("VPC NAT gateways demo-gw1 (cluster1) and demo-gw2 (cluster2), netns-backed");
    }
    let gws = gateways(&h, m).await?;
    for (i, gw) in gws.iter().enumerate() {
        // The VPC routes the other cluster's Globalnet CIDR to its gateway (Kube-OVN would).
        let remote = h.vpc_network(CLUSTERS[1 - i])?.globalnet_cidr;
        apply_dynamic(
            &h.client(CLUSTERS[i]),
            &fixtures::vpc(m.vpc[i], &[(&remote, &gw.node.lan_ip)]),
        )
        .await?;
        // Tenancy: the tunnels of ns1 may program this VPC's gateway.
        fixtures::admit_namespace(&h.client(CLUSTERS[i]), m.vpc[i], NS).await?;
    }
    step("vpc-dns for VPC test-vpc-1 on cluster1 (Kube-OVN v1.12 form), admitting ns1");
    fixtures::admit_namespace(&h.client(C1), DNS_VPC, NS).await?;
    h.install_vpc_dns(
        C1,
        VPC_DNS,
        DNS_VPC,
        "demo-dns-subnet",
        VpcDnsForm::V112InitContainer,
    )
    .await?;

    step("controllers: dns-forwarder, tunnel-manager, exip-syncer on each member cluster");
    ensure_supervisor().await?;

    step("examples/dns.yaml -> cluster1");
    apply_file(
        &h.client(C1),
        multivpc_e2e::repo_dir().join("examples/dns.yaml"),
    )
    .await?;
    step(&format!(
        "{} -> cluster1{}, its mirror -> cluster2",
        m.example,
        if m.in_vm {
            " (unchanged)"
        } else {
            " (gateways renamed)"
        }
    ));
    let text = std::fs::read_to_string(multivpc_e2e::repo_dir().join(m.example))?;
    for (i, c) in CLUSTERS.iter().enumerate() {
        let mut obj: DynamicObject = multivpc_e2e::apply::parse_yaml(&text)?
            .pop()
            .with_context(|| format!("{} holds no object", m.example))?;
        if i == 1 || !m.in_vm {
            let spec = &mut obj.data["spec"];
            spec["clusterId"] = CLUSTERS[1 - i].into();
            spec["gatewayName"] = m.gw[1 - i].into();
            spec["natGwDp"] = m.gw[i].into();
            spec["interfaceAddr"] = m.tunnel_addr[i].into();
        }
        apply_dynamic(&h.client(c), &obj).await?;
    }

    step("waiting until GatewayExIps are exchanged and everything is Ready");
    for (i, c) in CLUSTERS.iter().enumerate() {
        let exips: Api<GatewayExIp> = Api::namespaced(h.client(c), KUBE_SYSTEM);
        let remote = format!("{}-{}", m.gw[1 - i], CLUSTERS[1 - i]);
        wait_for_object(&exips, &remote, WAIT, |_| true).await?;
        let tunnels: Api<VpcNatTunnel> = Api::namespaced(h.client(c), NS);
        wait_for_object(&tunnels, m.tunnel, WAIT, |t: &VpcNatTunnel| {
            let Some(s) = &t.status else { return false };
            s.observed_generation == t.metadata.generation
                && conditions::find(&s.conditions, conditions::READY)
                    .is_some_and(|c| c.status == "True")
        })
        .await
        .with_context(|| {
            format!(
                "tunnel {} on {c}; logs in {}",
                m.tunnel,
                demo_dir().display()
            )
        })?;
    }
    let forwards: Api<VpcDnsForward> = Api::namespaced(h.client(C1), NS);
    wait_for_object(&forwards, "dns-1", WAIT, |f: &VpcDnsForward| {
        f.status.as_ref().is_some_and(|s| {
            conditions::find(&s.conditions, conditions::READY).is_some_and(|c| c.status == "True")
        })
    })
    .await?;
    eprintln!("    ready in {:.1} s\n", t0.elapsed().as_secs_f64());
    report(&h).await?;
    println!("\nEverything stays up. Tear down (controllers, clusters, netns): make demo-down");
    println!("(make demo-stop stops only the demo's controllers; make demo re-runs this)");
    Ok(())
}

async fn gateways(h: &Harness, m: &Mode) -> Result<Vec<NatGateway>> {
    let mut out = Vec::new();
    for (i, c) in CLUSTERS.iter().enumerate() {
        let mut spec = NatGatewaySpec::new(m.gw[i], m.vpc[i]);
        if m.in_vm {
            spec = spec.in_kernel_vm();
        }
        out.push(h.create_nat_gateway(c, spec).await?);
    }
    for gw in &out {
        gw.wait_available(h, WAIT).await?;
    }
    Ok(out)
}

// ------------------------------------------------------------------------------ report

async fn report(h: &Harness) -> Result<()> {
    let m = mode(h)?;
    let gws = gateways(h, m).await?;
    let kubectl = |c: &'static str, args: &'static [&'static str]| async move {
        let out = h.kubectl(c, args).await?;
        Ok::<_, anyhow::Error>(if out.success() {
            out.stdout
        } else {
            out.to_string()
        })
    };
    println!("──── GatewayExIps (kubectl get gwexip -A)");
    for c in CLUSTERS {
        println!("[{c}]");
        print!("{}", kubectl(c, &["get", "gwexip", "-A"]).await?);
    }
    println!("\n──── Tunnels (kubectl get vnt -A)");
    for c in CLUSTERS {
        println!("[{c}]");
        print!("{}", kubectl(c, &["get", "vnt", "-A"]).await?);
    }
    for gw in &gws {
        println!(
            "\n──── inside {} ({}, pod kube-system/{}, through pods/exec)",
            gw.spec.name,
            gw.cluster,
            gw.pod_name()
        );
        let tunnel = m.tunnel;
        let link = gw.exec(h, &["ip", "-d", "link", "show", tunnel]).await?;
        println!("$ ip -d link show {tunnel}\n{}", link.stdout.trim_end());
        let addr = gw.exec(h, &["ip", "-4", "addr", "show", tunnel]).await?;
        println!("$ ip -4 addr show {tunnel}\n{}", addr.stdout.trim_end());
        let route = gw.exec(h, &["ip", "route"]).await?;
        println!("$ ip route\n{}", route.stdout.trim_end());
        let snat = gw
            .exec(h, &["iptables", "-t", "nat", "-L", "POSTROUTING", "-n"])
            .await?;
        println!(
            "$ iptables -t nat -L POSTROUTING -n\n{}",
            snat.stdout.trim_end()
        );
    }
    let peer = m.tunnel_addr[0].split('/').next().unwrap_or_default();
    println!(
        "\n──── ping across the tunnel: {} (cluster2) -> {peer} ({}'s {} on cluster1)",
        m.gw[1], m.gw[0], m.tunnel
    );
    let ping = gws[1]
        .exec(h, &["ping", "-c", "3", "-W", "2", peer])
        .await?;
    let summary: Vec<&str> = ping
        .stdout
        .lines()
        .filter(|l| l.contains("packets transmitted") || l.contains("min/avg/max"))
        .collect();
    println!(
        "$ ping -c 3 {peer}\n{}{}",
        summary.join("\n"),
        if ping.success() { "" } else { "\nPING FAILED" }
    );

    println!("\n──── DNS forward (cluster1, examples/dns.yaml)");
    print!("{}", kubectl(C1, &["get", "vdf", "-A"]).await?);
    let forwards: Api<VpcDnsForward> = Api::namespaced(h.client(C1), NS);
    if let Some(f) = forwards.get_opt("dns-1").await? {
        for c in f.status.map(|s| s.conditions).unwrap_or_default() {
            println!(
                "condition {}={} {}: {}",
                c.type_, c.status, c.reason, c.message
            );
        }
    }
    let deps: Api<Deployment> = Api::namespaced(h.client(C1), KUBE_SYSTEM);
    let dep = deps.get(&format!("vpc-dns-{VPC_DNS}")).await?;
    let script = dep
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.init_containers)
        .and_then(|ics| ics.into_iter().find(|c| c.name == "init-route"))
        .and_then(|c| c.command)
        .and_then(|cmd| cmd.get(2).cloned())
        .unwrap_or_default();
    println!("Deployment kube-system/vpc-dns-{VPC_DNS}, init-route script:");
    for line in script.split(';').map(str::trim).filter(|l| !l.is_empty()) {
        println!("  {line};");
    }
    let cms: Api<ConfigMap> = Api::namespaced(h.client(C1), KUBE_SYSTEM);
    let corefile = cms
        .get("vpc-dns-corefile")
        .await?
        .data
        .and_then(|d| d.get("Corefile").cloned())
        .unwrap_or_default();
    println!("ConfigMap kube-system/vpc-dns-corefile, clusterset.local section:");
    let mut inside = false;
    for line in corefile.lines() {
        if line.contains("clusterset.local") {
            inside = true;
        }
        if inside {
            println!("  {line}");
            if line.trim() == "}" {
                inside = false;
            }
        }
    }

    println!(
        "\n──── controllers (logs and pids in {})",
        demo_dir().display()
    );
    for line in std::fs::read_to_string(state_file())
        .unwrap_or_default()
        .lines()
    {
        let f: Vec<&str> = line.split('\t').collect();
        if let [cluster, binary, pid, metrics, probes, _log] = f[..] {
            println!(
                "{cluster:<9} {binary:<15} pid {pid:<8} http://{metrics}/metrics  http://{probes}/readyz"
            );
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------ supervisor

fn supervisor_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("multivpc-demo")
        .then_some(pid)
}

async fn ensure_supervisor() -> Result<()> {
    if supervisor_pid().is_some() && state_file().exists() {
        eprintln!(
            "    already running (pid {})",
            supervisor_pid().unwrap_or(0)
        );
        return Ok(());
    }
    stop()?;
    std::fs::create_dir_all(demo_dir())?;
    let log = std::fs::File::create(demo_dir().join("supervisor.log"))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("supervise")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid in the child before exec, so the supervisor outlives `make`.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("start the demo supervisor")?;
    std::fs::write(pid_file(), child.id().to_string())?;
    wait_for("the demo's six controllers ready", WAIT, || async {
        if supervisor_pid().is_none() {
            let log = demo_dir().join("supervisor.log");
            bail!(
                "the demo supervisor exited ({}; full log: {})",
                multivpc_e2e::controllers::last_line(&log),
                log.display()
            );
        }
        Ok(if state_file().exists() {
            Check::Done(())
        } else {
            Check::Pending(
                std::fs::read_to_string(demo_dir().join("supervisor.log"))
                    .unwrap_or_default()
                    .lines()
                    .last()
                    .unwrap_or("starting")
                    .to_string(),
            )
        })
    })
    .await
}

/// Holds the harness locks the tests take for these controllers (so a test run waits for the
/// demo to stop rather than racing it), runs the six controllers, stops them on SIGTERM.
async fn supervise() -> Result<()> {
    let h = Harness::attach().await?;
    let mut locks = Vec::new();
    // The order the tests take them in (exip-syncer before tunnel-manager).
    for name in ["exip-syncer", "tunnel-manager", "dns-forwarder"] {
        eprintln!("waiting for the harness lock {name} (held while a test runs it)");
        locks.push(h.exclusive(name).await?);
    }
    let mut running = Vec::new();
    let mut state = String::new();
    for c in CLUSTERS {
        for b in BINARIES {
            let args = demo_support::chart_args(b, c);
            let ctl = demo_support::spawn(
                "debug",
                &demo_dir(),
                c,
                b,
                &h.kubeconfig(c),
                &args,
                Duration::from_secs(60),
            )
            .await?;
            eprintln!("{c} {b} ready (pid {})", ctl.pid());
            state.push_str(&format!(
                "{c}\t{b}\t{}\t{}\t{}\t{}\n",
                ctl.pid(),
                ctl.metrics,
                ctl.probes,
                ctl.log.display()
            ));
            running.push(ctl);
        }
    }
    std::fs::write(state_file(), state)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("stopping the controllers");
    let _ = std::fs::remove_file(state_file());
    for mut c in running {
        let _ = c.stop();
    }
    drop(locks);
    Ok(())
}

/// Stops the supervisor (which stops the controllers), then anything left from the state file.
fn stop() -> Result<()> {
    if let Some(pid) = supervisor_pid() {
        // SAFETY: signalling the demo supervisor we recorded (cmdline checked).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        for _ in 0..150 {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() || supervisor_pid().is_none()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("stopped the demo supervisor (pid {pid}) and its controllers");
    }
    for line in std::fs::read_to_string(state_file())
        .unwrap_or_default()
        .lines()
    {
        let Some(pid) = line.split('\t').nth(2).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let binary = line.split('\t').nth(1).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !binary.is_empty() && String::from_utf8_lossy(&cmdline).contains(binary) {
            // SAFETY: a controller the demo started (pid and binary name checked).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            eprintln!("killed leftover {binary} (pid {pid})");
        }
    }
    let _ = std::fs::remove_file(state_file());
    let _ = std::fs::remove_file(pid_file());
    Ok(())
}
