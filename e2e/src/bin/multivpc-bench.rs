//! `make bench`: measures the controllers against the local harness and writes
//! docs/BENCHMARKS.md. Not a test: it times things, so it runs only when asked.
//!
//! ```text
//! multivpc-bench [--profile release|debug] [--sizes 100,1000] [--gateways 4]
//!                [--shapes 1000x4,5000x4,1000x50] [--only idle,convergence,failover,dns,ipsec]
//!                [--out docs/BENCHMARKS.md]
//! ```
//!
//! `--shapes` lists (tunnels × gateways) pairs; without it, each of `--sizes` over `--gateways`.
//!
//! It holds the harness locks of the controllers it runs (exip-syncer, tunnel-manager,
//! dns-forwarder) for its whole run, so controller tests wait instead of racing it.

#[path = "../demo_support.rs"]
mod demo_support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use demo_support::{Controller, chart_args};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::Pod,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use multivpc_api::{GatewayExIp, VpcDnsForward, VpcNatTunnel, conditions, foreign::kubeovn::Vpc};
use multivpc_e2e::{fixtures::KUBE_SYSTEM, prelude::*};
use serde_json::json;

const C1: &str = "cluster1";
const C2: &str = "cluster2";
const BROKER: &str = "broker";

/// Text after this line in docs/BENCHMARKS.md is written by hand and kept by `make bench`.
const ANALYSIS_MARKER: &str = "<!-- analysis below: written by hand, kept by make bench -->";

struct Opts {
    profile: String,
    sizes: Vec<usize>,
    gateways: usize,
    /// (tunnels, gateways) per convergence run.
    shapes: Vec<(usize, usize)>,
    only: Vec<String>,
    out: std::path::PathBuf,
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        profile: "release".into(),
        sizes: vec![100, 1000],
        gateways: 4,
        shapes: vec![],
        only: vec![],
        out: multivpc_e2e::repo_dir().join("docs/BENCHMARKS.md"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--profile" => o.profile = v,
            "--sizes" => o.sizes = v.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
            "--gateways" => o.gateways = v.parse()?,
            "--shapes" => {
                o.shapes = v
                    .split(',')
                    .map(|shape| {
                        let (n, g) = shape.split_once('x').with_context(|| {
                            format!("shape {shape:?} is not <tunnels>x<gateways>")
                        })?;
                        anyhow::Ok((n.parse()?, g.parse()?))
                    })
                    .collect::<Result<_>>()?
            }
            "--only" => o.only = v.split(',').map(String::from).collect(),
            "--out" => o.out = v.into(),
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    if o.shapes.is_empty() {
        o.shapes = o.sizes.iter().map(|&n| (n, o.gateways)).collect();
    }
    Ok(o)
}

fn log(what: &str) {
    eprintln!("[bench {}] {what}", chrono_now());
}

fn chrono_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%H:%M:%S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn chrono_now_date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() -> std::process::ExitCode {
    multivpc_e2e::install_crypto_provider();
    multivpc_runtime::main_with("multivpc-bench", bench())
}

async fn bench() -> Result<()> {
    let o = parse_opts()?;
    let h = Harness::attach()
        .await
        .context("the harness is not up: make e2e-up")?;
    let mut locks = Vec::new();
    for name in ["exip-syncer", "tunnel-manager", "dns-forwarder"] {
        log(&format!("taking the harness lock {name}"));
        locks.push(h.exclusive(name).await?);
    }
    for c in [C1, C2, BROKER] {
        h.install_foreign_crds(c).await?;
        h.install_project_crds(c).await?;
    }
    for c in [C1, C2] {
        h.install_default_submariner(c, Some(BROKER)).await?;
        h.install_cluster_network(c).await?;
        apply_json(
            &h.client(c),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": demo_support::LEADER_NS}}),
        )
        .await?;
    }
    let want = |s: &str| o.only.is_empty() || o.only.iter().any(|x| x == s);
    // Each section is saved as it completes, beside the document (`bench/<key>.json`, kept in
    // the repository with it); a run with --only renders the others from their saved result.
    let bench_dir = o
        .out
        .parent()
        .map_or_else(|| std::path::PathBuf::from("bench"), |d| d.join("bench"));
    let saved = |key: &str| bench_dir.join(format!("{key}.json"));
    let mut sections = Vec::new();
    for key in ["idle", "convergence", "failover", "dns", "ipsec"] {
        if !want(key) {
            if let Ok(text) = std::fs::read_to_string(saved(key)) {
                sections.push(
                    serde_json::from_str::<Section>(&text)
                        .with_context(|| format!("{}", saved(key).display()))?,
                );
            }
            continue;
        }
        let mut s = match key {
            "idle" => bench_idle(&h, &o).await?,
            "convergence" => bench_convergence(&h, &o).await?,
            "failover" => bench_failover(&h, &o).await?,
            "dns" => bench_dns(&h, &o).await?,
            _ => bench_ipsec(&h, &o).await?,
        };
        s.key = key.into();
        s.body = format!(
            "*Measured {} with `{}`.*\n\n{}",
            chrono_now_date(),
            std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            s.body
        );
        std::fs::create_dir_all(&bench_dir)?;
        std::fs::write(saved(key), serde_json::to_string_pretty(&s)? + "\n")?;
        sections.push(s);
    }
    let mut doc = render(&o, &sections)?;
    // The hand-written analysis below the marker survives a refresh.
    if let Some((_, kept)) = std::fs::read_to_string(&o.out)
        .unwrap_or_default()
        .split_once(ANALYSIS_MARKER)
    {
        doc = format!("{doc}\n{ANALYSIS_MARKER}{kept}");
    }
    std::fs::write(&o.out, &doc)?;
    log(&format!("wrote {}", o.out.display()));
    print!("{doc}");
    drop(locks);
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Section {
    key: String,
    title: String,
    body: String,
    /// (target, measured, verdict)
    targets: Vec<(String, String, String)>,
}

fn render(o: &Opts, sections: &[Section]) -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut d = String::new();
    writeln!(d, "# Benchmarks\n")?;
    writeln!(
        d,
        "Generated by `make bench` ({}), {date}. Refresh with the same command (it brings \
         the harness and its kernel VM up); no test may run against them meanwhile.\n",
        format_args!(
            "controllers built with `cargo build --release -p dns-forwarder -p tunnel-manager -p exip-syncer`, then `cargo run -p multivpc-e2e --bin multivpc-bench -- --profile {} --shapes {}`",
            o.profile,
            o.shapes
                .iter()
                .map(|(n, g)| format!("{n}x{g}"))
                .collect::<Vec<_>>()
                .join(","),
        )
    )?;
    writeln!(
        d,
        "**Machine:** {cores} cores ({cpu}), {mem} RAM, Linux {}. The three local clusters \
         (real kube-apiserver, etcd, kube-controller-manager, kube-scheduler, kwok; e2e/README.md) \
         run on the same 2 cores as the controllers, so every figure includes the control plane's \
         share of the CPU. Controllers: `{}` profile, started with the Helm chart's flags \
         (`demo_support::chart_args`). Pod exec goes kube-apiserver → kwok kubelet → `sh` in the \
         gateway's network namespace, as through a real kubelet.\n",
        kernel.trim(),
        o.profile
    )?;
    writeln!(d, "## Targets\n")?;
    writeln!(d, "| target | measured | verdict |\n|---|---|---|")?;
    for s in sections {
        for (t, m, v) in &s.targets {
            writeln!(d, "| {t} | {m} | {v} |")?;
        }
    }
    writeln!(d)?;
    for s in sections {
        writeln!(d, "## {}\n\n{}", s.title, s.body)?;
    }
    Ok(d)
}

// ------------------------------------------------------------------ API server metrics

fn delta(
    a: &BTreeMap<(String, String), f64>,
    b: &BTreeMap<(String, String), f64>,
) -> BTreeMap<(String, String), f64> {
    b.iter()
        .filter_map(|(k, v)| {
            let d = v - a.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

fn is_write(verb: &str) -> bool {
    matches!(verb, "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY")
}

fn delta_table(d: &BTreeMap<(String, String), f64>, per: f64, per_name: &str) -> String {
    let mut s = format!("| verb | resource | requests | per {per_name} |\n|---|---|---|---|\n");
    for ((verb, res), n) in d {
        let _ = writeln!(s, "| {verb} | {res} | {n} | {:.2} |", n / per);
    }
    s
}

// ------------------------------------------------------------------ 5. idle

async fn bench_idle(h: &Harness, o: &Opts) -> Result<Section> {
    log("idle RSS and start-to-ready");
    let dir = multivpc_e2e::run_dir().join("bench");
    let mut rows = String::from(
        "| binary | start → /readyz 200 | RSS after 10 s idle | peak RSS (VmHWM) |\n|---|---|---|---|\n",
    );
    let mut targets = Vec::new();
    let mut worst = 0u64;
    for b in ["dns-forwarder", "tunnel-manager", "exip-syncer"] {
        let mut times = Vec::new();
        let mut rss = (0, 0);
        for _ in 0..3 {
            let mut c = demo_support::spawn(
                &o.profile,
                &dir,
                C1,
                b,
                &h.kubeconfig(C1),
                &chart_args(b, C1),
                Duration::from_secs(60),
            )
            .await?;
            times.push(c.start_to_ready);
            if times.len() == 3 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                rss = demo_support::rss_kib(c.pid());
            }
            // The exit status does not matter to a measurement.
            let _ = c.stop();
        }
        times.sort();
        worst = worst.max(rss.0);
        writeln!(
            rows,
            "| {b} | {} (median of 3; {} – {}) | {} | {} |",
            secs(times[1]),
            secs(times[0]),
            secs(times[2]),
            mib(rss.0),
            mib(rss.1)
        )?;
    }
    targets.push((
        "each binary < 25 MiB RSS idle".into(),
        format!("largest {}", mib(worst)),
        if worst < 25 * 1024 { "met" } else { "missed" }.into(),
    ));
    Ok(Section {
        key: String::new(),
        title: "5. Idle RSS and start-to-ready".into(),
        body: format!(
            "Each binary alone against cluster1 (whatever objects the harness holds then: a few \
             gateways, Submariner objects), with the chart's flags including `--leader-elect`. Start-to-ready: from `spawn` to the first \
             200 of `/readyz` (polled every 20 ms), the chart's readiness probe.\n\n{rows}"
        ),
        targets,
    })
}

// ------------------------------------------------------------------ 1./2. convergence

fn tunnel_ready(t: &VpcNatTunnel) -> bool {
    let Some(s) = &t.status else { return false };
    s.observed_generation == t.metadata.generation
        && conditions::find(&s.conditions, conditions::READY)
            .is_some_and(|c| c.status == "True" && c.reason == "Programmed")
}

async fn bench_convergence(h: &Harness, o: &Opts) -> Result<Section> {
    let mut body = String::new();
    let mut targets = Vec::new();
    writeln!(
        body,
        "N VpcNatTunnels (VXLAN) in one namespace of cluster1 over G VPC NAT gateways \
         (tunnel i on gateway i mod G); tunnel-manager alone on cluster1 (the chart's flags: \
         `--max-concurrent-execs=8`). Each tunnel has its own interface name (`b<i>`), its own \
         /30 tunnel address, and a remote GatewayExIp `r-f<k>` of a fake remote cluster `f<k>` \
         (k = i div G) with its own Globalnet CIDR `100.x.y.0/24` (no remote-CIDR conflict \
         on one gateway) and an external address in 172.50.200.0/21 on the harness's external \
         bridge (nothing answers; nothing is sent but the devices' own link-local chatter, inside \
         the harness's namespaces). The remote GatewayExIps exist before the clock starts. Clock: \
         from the first create to every tunnel Ready=True/Programmed at its generation (listed \
         every second). API requests: deltas of cluster1's kube-apiserver \
         `apiserver_request_total` over the run, less the bench's own creates and lists; \
         kube-controller-manager, kube-scheduler and kwok share that API server, so a few \
         requests (leases, node status) are theirs.\n"
    )?;
    let mut summary = String::from(
        "| tunnels | gateways | apply → all Ready | tunnels/s | execs (tunnel-manager metric; execs that reached the API) | per tunnel | tunnel sections per exec | API writes/tunnel (successful; refused) | API requests/tunnel (all verbs) | tunnel-manager peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut details = String::new();
    let mut steady_done = false;
    let mut steady = String::new();
    let mut outage = String::new();
    for &(n, g) in &o.shapes {
        log(&format!("convergence with {n} tunnels over {g} gateways"));
        let r = converge(h, o, n, g, !steady_done).await?;
        writeln!(
            summary,
            "| {n} | {g} | {} | {:.0} | {}; {} | {:.2}; {:.2} | {:.1} | {:.2}; {:.2} | {:.2} | {} |",
            if r.all_ready {
                secs(r.elapsed)
            } else {
                format!("not all Ready: {} of {n} in {}", r.ready, secs(r.elapsed))
            },
            r.ready as f64 / r.elapsed.as_secs_f64(),
            r.execs,
            r.connects,
            r.execs / n as f64,
            r.connects / n as f64,
            r.sections / r.execs.max(1.0),
            r.writes / n as f64,
            r.failed_writes / n as f64,
            r.all / n as f64,
            mib(r.hwm_kib)
        )?;
        writeln!(
            details,
            "<details><summary>{n} tunnels over {g} gateways: apiserver_request_total deltas (bench's own requests removed)</summary>\n\n{}\n</details>\n",
            delta_table(&r.requests, n as f64, "tunnel")
        )?;
        if n >= 1000 {
            let limit = if n <= 1000 { 10 } else { 30 };
            targets.push((
                format!("{n} tunnels over {g} gateways Ready ≤ {limit} s"),
                format!("{} of {n} Ready in {}", r.ready, secs(r.elapsed)),
                if r.all_ready && r.elapsed <= Duration::from_secs(limit) {
                    "met".into()
                } else {
                    "missed".into()
                },
            ));
        }
        let per = |writes: f64| writes / n as f64;
        let tunnel_writes = per(r.writes_to("vpcnattunnels"));
        let event_writes = per(r.writes_to("events"));
        targets.push((
            format!("≤ 2 API writes per tunnel to converge, 0 refused ({n}×{g})"),
            format!(
                "{tunnel_writes:.2} writes per tunnel to its VpcNatTunnel (finalizer, status) and \
                 {event_writes:.2} events; {:.2} writes per tunnel from every client; {:.2} \
                 refused; {:.2} execs per tunnel ({:.1} tunnel sections per exec)",
                per(r.writes),
                per(r.failed_writes),
                per(r.execs),
                r.sections / r.execs.max(1.0)
            ),
            // Per tunnel converged: a run that did not converge them all proves nothing.
            match (
                r.all_ready,
                tunnel_writes <= 2.0 && r.failed_writes == 0.0,
                per(r.writes) <= 2.0,
            ) {
                (false, ..) => "not all Ready: not judged".into(),
                (true, true, true) => "met".into(),
                (true, true, false) => "met for the VpcNatTunnel; its event makes 3".into(),
                _ => "missed".into(),
            },
        ));
        targets.push((
            format!("tunnel-manager < 60 MiB RSS ({n}×{g})"),
            mib(r.hwm_kib),
            if r.hwm_kib < 60 * 1024 {
                "met"
            } else {
                "missed"
            }
            .into(),
        ));
        if let Some(out) = &r.outage {
            targets.push((
                format!("API server back → first reconcile ({n}×{g}, 20 s outage)"),
                format!(
                    "first reconcile {}; a tunnel created then Ready {}",
                    secs(out.first_reconcile),
                    secs(out.new_tunnel_ready)
                ),
                "measured".into(),
            ));
            outage = format!(
                "With {n} tunnels Ready over {g} gateways, cluster1's control plane stopped \
                 (`kwokctl stop cluster`) for 20 s and started again; clock from its API server \
                 answering again: tunnel-manager's first reconcile (its \
                 `controller_runtime_reconcile_total` rising) after {}, a tunnel created then \
                 Ready after {}.\n",
                secs(out.first_reconcile),
                secs(out.new_tunnel_ready)
            );
        }
        if let Some(s) = r.steady
            && !steady_done
        {
            steady_done = true;
            let writes: f64 = s
                .iter()
                .filter(|((v, _), _)| is_write(v))
                .map(|(_, n)| n)
                .sum();
            let tm_writes: f64 = s
                .iter()
                .filter(|((v, r), _)| {
                    (is_write(v) || v == "CONNECT")
                        && ["vpcnattunnels", "events", "pods/exec"]
                            .iter()
                            .any(|p| r.starts_with(p))
                })
                .map(|(_, n)| n)
                .sum::<f64>()
                + 0.0; // an empty sum is -0.0
            let all: f64 = s.values().sum();
            targets.push((
                format!("0 writes per minute at steady state ({n} tunnels)"),
                format!(
                    "{tm_writes} writes+execs/min on VpcNatTunnels, events, pods/exec; \
                     {writes} writes/min from all clients of cluster1 (leases, node status), \
                     {all} requests/min in all"
                ),
                if tm_writes == 0.0 { "met" } else { "missed" }.into(),
            ));
            steady = format!(
                "With {n} tunnels Ready and tunnel-manager idle, one minute of cluster1's \
                 `apiserver_request_total` deltas (every client of the API server, the \
                 bench's two scrapes excluded; `--verify-interval=5m`, so no verification \
                 falls in the minute; exec CONNECTs and tunnel writes would show here):\n\n{}\n\
                 Writes and execs on VpcNatTunnels, events and pods/exec in that minute: {tm_writes}.\n",
                delta_table(&s, 1.0, "minute"),
            );
        }
    }
    Ok(Section {
        key: String::new(),
        title: "1. Convergence at scale (and 2. steady state)".into(),
        body: format!(
            "{body}\n{summary}\n{details}\n### 2. Steady state\n\n{}\n### API server outage\n\n{}",
            if steady.is_empty() {
                "Not measured (no size ≥ 1000 in this run).\n".to_string()
            } else {
                steady
            },
            if outage.is_empty() {
                "Not measured (no size ≥ 1000 in this run).\n".to_string()
            } else {
                outage
            }
        ),
        targets,
    })
}

struct Converged {
    elapsed: Duration,
    all_ready: bool,
    ready: usize,
    execs: f64,
    sections: f64,
    writes: f64,
    failed_writes: f64,
    connects: f64,
    all: f64,
    hwm_kib: u64,
    requests: BTreeMap<(String, String), f64>,
    steady: Option<BTreeMap<(String, String), f64>>,
    outage: Option<Outage>,
}

impl Converged {
    /// Successful writes to resources named `prefix` (and their subresources).
    fn writes_to(&self, prefix: &str) -> f64 {
        self.requests
            .iter()
            .filter(|((v, r), _)| is_write(v) && r.starts_with(prefix) && !r.contains("(HTTP"))
            .fold(0.0, |total, (_, n)| total + n)
    }
}

/// After a 20 s control-plane outage, from the API server answering again.
struct Outage {
    first_reconcile: Duration,
    new_tunnel_ready: Duration,
}

/// The remote GatewayExIp of fake remote cluster `f<k>`, as exip-syncer imports it (its labels
/// and field manager).
async fn apply_remote(c1: &kube::Client, k: usize) -> Result<()> {
    multivpc_e2e::apply_json_as(
        c1,
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "GatewayExIp",
            "metadata": {"name": format!("r-f{k}"), "namespace": KUBE_SYSTEM,
                         "labels": {
                             multivpc_api::keys::LABEL_GATEWAY: "r",
                             multivpc_api::keys::LABEL_CLUSTER: format!("f{k}"),
                             multivpc_api::keys::SUBMARINER_CLUSTER_ID: format!("f{k}"),
                         }},
            "spec": {
                "externalip": format!("172.50.{}.{}", 200 + k / 250, 1 + k % 250),
                "globalnetcidr": format!("100.{}.{}.0/24", 64 + k / 256, k % 256),
            },
        }),
        multivpc_api::keys::EXIP_SYNCER_MANAGER,
    )
    .await
    .map(|_| ())
}

/// Tunnel `b<i>`: on gateway `bgw<i mod g>`, to remote `f<i div g>`.
async fn create_tunnel(tunnels: &Api<VpcNatTunnel>, i: usize, g: usize) -> Result<()> {
    let a = i * 4 + 1;
    let t: VpcNatTunnel = serde_json::from_value(json!({
        "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
        "metadata": {"name": format!("b{i}")},
        "spec": {
            "clusterId": format!("f{}", i / g), "gatewayName": "r", "natGwDp": format!("bgw{}", i % g),
            "interfaceAddr": format!("10.{}.{}.{}/30", 200 + a / 65536, (a / 256) % 256, a % 256),
            "type": "vxlan", "vni": 100 + i as u32,
        },
    }))?;
    match tunnels.create(&PostParams::default(), &t).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::Error::from(e)),
    }
}

/// Stops cluster1's control plane for 20 s and starts it again; then times tunnel-manager's
/// first reconcile and a new tunnel (`b<n>`, with a remote of its own) becoming Ready.
async fn outage(
    h: &Harness,
    tm: &Controller,
    tunnels: &Api<VpcNatTunnel>,
    n: usize,
    g: usize,
) -> Result<Outage> {
    const RECONCILES: &str = "controller_runtime_reconcile_total";
    let c1 = h.client(C1);
    apply_remote(&c1, n / g).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reconciles0 = demo_support::metric_sum(tm, RECONCILES, &[]).await?;
    let down = h.stop_cluster(C1)?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    down.start().await?;
    let back = Instant::now();
    let mut first_reconcile = None;
    let mut created = false;
    loop {
        if first_reconcile.is_none()
            && demo_support::metric_sum(tm, RECONCILES, &[]).await? > reconciles0
        {
            first_reconcile = Some(back.elapsed());
        }
        if !created {
            created = create_tunnel(tunnels, n, g).await.is_ok();
        } else if let (Some(first), Ok(t)) = (first_reconcile, tunnels.get(&format!("b{n}")).await)
            && tunnel_ready(&t)
        {
            return Ok(Outage {
                first_reconcile: first,
                new_tunnel_ready: back.elapsed(),
            });
        }
        if back.elapsed() > Duration::from_secs(300) {
            bail!("no reconcile, or b{n} not Ready, 300 s after the API server returned");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn converge(
    h: &Harness,
    o: &Opts,
    n: usize,
    g: usize,
    want_steady: bool,
) -> Result<Converged> {
    let c1 = h.client(C1);
    let ns = format!("bench-{n}x{g}");
    let vpc = "bench-vpc";
    // Gateways (left from an earlier run they are reused).
    let mut gws = Vec::new();
    for i in 0..g {
        gws.push(
            h.create_nat_gateway(C1, NatGatewaySpec::new(&format!("bgw{i}"), vpc))
                .await?,
        );
    }
    for gw in &gws {
        gw.wait_available(h, Duration::from_secs(120)).await?;
    }
    apply_json(
        &c1,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await?;
    // Remote GatewayExIps of fake remote clusters.
    let remotes = n.div_ceil(g);
    let exips: Api<GatewayExIp> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    stream::iter(0..remotes)
        .map(|k| {
            let c1 = c1.clone();
            async move { apply_remote(&c1, k).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    log(&format!(
        "{remotes} remote GatewayExIps, {g} gateways ready"
    ));
    let dir = multivpc_e2e::run_dir().join("bench");
    let tm = demo_support::spawn(
        &o.profile,
        &dir,
        C1,
        "tunnel-manager",
        &h.kubeconfig(C1),
        &chart_args("tunnel-manager", C1),
        Duration::from_secs(120),
    )
    .await?;
    let execs0 =
        demo_support::metric_sum(&tm, "multivpc_tunnel_exec_duration_seconds_count", &[]).await?;
    let sections0 =
        demo_support::metric_sum(&tm, "multivpc_tunnel_exec_sections_total", &[]).await?;
    let before = h.apiserver_requests(C1).await?;
    let tunnels: Api<VpcNatTunnel> = Api::namespaced(c1.clone(), &ns);
    for j in 0..g {
        fixtures::admit_namespace_to_gateway(&c1, &format!("bgw{j}"), &ns).await?;
    }
    let start = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let tunnels = tunnels.clone();
            async move { create_tunnel(&tunnels, i, g).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    log(&format!("{n} tunnels created in {}", secs(start.elapsed())));
    let mut lists = 0.0;
    let limit = Duration::from_secs((60 + n as u64 / 10).min(300));
    let mut ready;
    loop {
        let list = tunnels.list(&ListParams::default()).await?;
        lists += 1.0;
        ready = list.items.iter().filter(|t| tunnel_ready(t)).count();
        if ready >= n || start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = start.elapsed();
    log(&format!("{ready} of {n} Ready after {}", secs(elapsed)));
    // Let the last status writes land before the snapshot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let execs = demo_support::metric_sum(&tm, "multivpc_tunnel_exec_duration_seconds_count", &[])
        .await?
        - execs0;
    let sections = demo_support::metric_sum(&tm, "multivpc_tunnel_exec_sections_total", &[])
        .await?
        - sections0;
    let after = h.apiserver_requests(C1).await?;
    let mut requests = delta(&before, &after);
    // The bench's own requests.
    for (key, own) in [
        (("POST".to_string(), "vpcnattunnels".to_string()), n as f64),
        (("LIST".to_string(), "vpcnattunnels".to_string()), lists),
    ] {
        if let Some(v) = requests.get_mut(&key) {
            *v -= own;
        }
    }
    requests.retain(|_, v| *v > 0.0);
    let writes: f64 = requests
        .iter()
        .filter(|((v, r), _)| is_write(v) && !r.starts_with("leases") && !r.contains("(HTTP"))
        .map(|(_, n)| n)
        .sum();
    let failed_writes: f64 = requests
        .iter()
        .filter(|((v, r), _)| is_write(v) && r.contains("(HTTP"))
        // Not `sum`: an empty f64 sum is -0.0, printed "-0.00".
        .fold(0.0, |total, (_, n)| total + n);
    let all: f64 = requests.values().sum();
    let hwm_kib = demo_support::rss_kib(tm.pid()).1;
    let steady = if n >= 1000 && want_steady {
        log("steady state: one idle minute");
        let a = h.apiserver_requests(C1).await?;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let b = h.apiserver_requests(C1).await?;
        Some(delta(&a, &b))
    } else {
        None
    };
    let outage = if n >= 1000 && want_steady {
        log("outage: cluster1's control plane stopped for 20 s");
        Some(outage(h, &tm, &tunnels, n, g).await?)
    } else {
        None
    };
    // Clean up: stop the controller, drop the finalizers, delete the namespace and remotes.
    drop(tm);
    log("cleaning up");
    let list = tunnels.list(&ListParams::default()).await?;
    stream::iter(list.items)
        .map(|t| {
            let tunnels = tunnels.clone();
            async move {
                let _ = tunnels
                    .patch(
                        &t.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let _ = h.delete_namespace(C1, &ns).await;
    // (and the outage's extra remote)
    stream::iter(0..=remotes)
        .map(|k| {
            let exips = exips.clone();
            async move {
                let _ = exips
                    .delete(&format!("r-f{k}"), &DeleteParams::default())
                    .await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for gw in &gws {
        h.delete_nat_gateway(gw).await?;
    }
    Ok(Converged {
        elapsed,
        all_ready: ready >= n,
        ready,
        execs,
        sections,
        writes,
        failed_writes,
        connects: requests
            .iter()
            .filter(|((v, r), _)| v == "CONNECT" && r.starts_with("pods/exec"))
            .map(|(_, n)| n)
            .sum(),
        all,
        hwm_kib,
        requests,
        steady,
        outage,
    })
}

// ------------------------------------------------------------------ 3. failover

async fn bench_failover(h: &Harness, o: &Opts) -> Result<Section> {
    log("failover");
    let (c1, c2) = (h.client(C1), h.client(C2));
    let dir = multivpc_e2e::run_dir().join("bench");
    let vpc = "bench-fo-vpc";
    let (p, s, r) = (
        h.create_nat_gateway(C1, NatGatewaySpec::new("bfo-p", vpc))
            .await?,
        h.create_nat_gateway(C1, NatGatewaySpec::new("bfo-s", vpc))
            .await?,
        h.create_nat_gateway(C2, NatGatewaySpec::new("bfo-r", "bench-fo-rvpc"))
            .await?,
    );
    for gw in [&p, &s, &r] {
        gw.wait_available(h, Duration::from_secs(120)).await?;
    }
    let remote_cidr = h.vpc_network(C2)?.globalnet_cidr;
    apply_dynamic(&c1, &fixtures::vpc(vpc, &[(&remote_cidr, &p.node.lan_ip)])).await?;
    let mut ctls: Vec<Controller> = Vec::new();
    for c in [C1, C2] {
        for b in ["exip-syncer", "tunnel-manager"] {
            ctls.push(
                demo_support::spawn(
                    &o.profile,
                    &dir,
                    c,
                    b,
                    &h.kubeconfig(c),
                    &chart_args(b, c),
                    Duration::from_secs(60),
                )
                .await?,
            );
        }
    }
    let p_name = format!("{}-{C1}", p.spec.name);
    let ns = "bench-fo";
    for c in [&c1, &c2] {
        apply_json(
            c,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    let dev = "bfo0";
    for (c, remote, remote_gw, local_gw, addr) in [
        (&c1, C2, &r.spec.name, &p.spec.name, "10.252.0.1/24"),
        (&c2, C1, &p.spec.name, &r.spec.name, "10.252.0.2/24"),
    ] {
        fixtures::admit_namespace_to_gateway(c, local_gw, ns).await?;
        apply_json(
            c,
            json!({
                "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
                "metadata": {"name": dev, "namespace": ns},
                "spec": {"clusterId": remote, "gatewayName": remote_gw, "interfaceAddr": addr,
                         "natGwDp": local_gw, "type": "vxlan", "vni": 4388},
            }),
        )
        .await?;
    }
    let (t1, t2): (Api<VpcNatTunnel>, Api<VpcNatTunnel>) = (
        Api::namespaced(c1.clone(), ns),
        Api::namespaced(c2.clone(), ns),
    );
    wait_for_object(&t1, dev, Duration::from_secs(90), tunnel_ready).await?;
    wait_for_object(&t2, dev, Duration::from_secs(90), tunnel_ready).await?;
    r.sh(h, "ping -c 2 -W 2 10.252.0.1").await?.check()?;
    log("tunnel up, ping OK; losing the primary");

    let sts: Api<StatefulSet> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    let pods: Api<Pod> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    let vpcs: Api<Vpc> = Api::all(c1.clone());
    let ex1: Api<GatewayExIp> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    let ex2: Api<GatewayExIp> = Api::namespaced(c2.clone(), KUBE_SYSTEM);
    let s_ip = s.node.external_ip.clone();
    let s_lan = s.node.lan_ip.clone();
    let t0 = Instant::now();
    let pinger = Pinger::start(&r.node.netns, "10.252.0.1", t0)?;
    sts.patch(
        &p.statefulset_name(),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await?;
    let _ = pods.delete(&p.pod_name(), &DeleteParams::default()).await;
    // The harness keeps a deleted pod's netns; a lost gateway sends nothing any more.
    netns_exec(&p.node.netns, &["ip", "link", "set", "net1", "down"])
        .await?
        .check()?;
    let mut phases: BTreeMap<&str, Duration> = BTreeMap::new();
    let names = [
        "1 pod gone (API)",
        "2 Vpc route repointed to the standby",
        "3 local GatewayExIp updated",
        "4 remote (cluster2) GatewayExIp synced",
        "5a cluster1 tunnel rebuilt in the standby",
        "5b cluster2 tunnel rebuilt towards the standby",
    ];
    while phases.len() < names.len() && t0.elapsed() < Duration::from_secs(120) {
        if !phases.contains_key(names[0]) && pods.get_opt(&p.pod_name()).await?.is_none() {
            phases.insert(names[0], t0.elapsed());
        }
        if !phases.contains_key(names[1])
            && vpcs
                .get(vpc)
                .await?
                .spec
                .static_routes
                .first()
                .map(|r| r.next_hop_ip.clone())
                == Some(s_lan.clone())
        {
            phases.insert(names[1], t0.elapsed());
        }
        if !phases.contains_key(names[2])
            && ex1
                .get_opt(&p_name)
                .await?
                .is_some_and(|e| e.spec.externalip == s_ip)
        {
            phases.insert(names[2], t0.elapsed());
        }
        if !phases.contains_key(names[3])
            && ex2
                .get_opt(&p_name)
                .await?
                .is_some_and(|e| e.spec.externalip == s_ip)
        {
            phases.insert(names[3], t0.elapsed());
        }
        if !phases.contains_key(names[4])
            && t1.get_opt(dev).await?.is_some_and(|t| {
                tunnel_ready(&t)
                    && t.status.as_ref().and_then(|s| s.local_ip.as_deref()) == Some(s_ip.as_str())
            })
        {
            phases.insert(names[4], t0.elapsed());
        }
        if !phases.contains_key(names[5])
            && t2.get_opt(dev).await?.is_some_and(|t| {
                tunnel_ready(&t)
                    && t.status.as_ref().and_then(|s| s.remote_ip.as_deref()) == Some(s_ip.as_str())
            })
        {
            phases.insert(names[5], t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (first_fail, restored) = pinger.outage(Duration::from_secs(30)).await?;
    let gone = phases.get(names[0]).copied().unwrap_or_default();
    let mut rows = String::from("| phase | since pod delete | since pod gone |\n|---|---|---|\n");
    let mut all: Vec<(&str, Duration)> = phases.iter().map(|(k, v)| (*k, *v)).collect();
    if let Some(f) = first_fail {
        all.push(("0 first failed ping", f));
    }
    all.push(("6 ping restored through the standby", restored));
    all.sort_by_key(|(_, d)| *d);
    for (k, d) in &all {
        writeln!(
            rows,
            "| {k} | {} | {} |",
            secs(*d),
            if *d >= gone {
                secs(*d - gone)
            } else {
                format!("-{}", secs(gone - *d))
            }
        )?;
    }
    // Clean up.
    for api in [&t1, &t2] {
        let _ = api.delete(dev, &DeleteParams::default()).await;
        let _ = wait_for_deletion(api, dev, Duration::from_secs(60)).await;
    }
    drop(ctls);
    for gw in [&p, &s, &r] {
        h.delete_nat_gateway(gw).await?;
    }
    let _ = vpcs.delete(vpc, &DeleteParams::default()).await;
    let _ = h.delete_namespace(C1, ns).await;
    let _ = h.delete_namespace(C2, ns).await;
    Ok(Section {
        key: String::new(),
        title: "3. Failover".into(),
        body: format!(
            "exip-syncer and tunnel-manager on cluster1 and cluster2 with the chart's default \
             flags. Primary `bfo-p` and standby `bfo-s` of one VPC on cluster1, `bfo-r` on \
             cluster2, a VXLAN tunnel pair between `bfo-p` and `bfo-r` carrying a ping. At t=0 \
             the primary's pod is deleted (after its StatefulSet is scaled to 0; pod gone = the \
             API no longer has it) and its net1 set down (the harness keeps a deleted pod's \
             netns, whose old tunnel end would otherwise go on answering). A deleted pod fails \
             over without the grace period, which is for pods that are merely not Ready \
             ([exip-syncer.md](exip-syncer.md#failover)). The phases are the first poll (every \
             ~50 ms, each a GET) that sees them; the ping runs in `bfo-r`'s netns every 20 ms \
             (`ping -O -i 0.02`), and its lines are stamped as they arrive.\n\n{rows}"
        ),
        targets: vec![(
            "failover, pod deleted to ping restored, chart defaults < 2 s".into(),
            secs(restored),
            if restored < Duration::from_secs(2) {
                "met".into()
            } else {
                "missed".into()
            },
        )],
    })
}

/// A continuous ping (every 20 ms, `-O` reporting each missing reply) from a netns the harness
/// made, each output line stamped with the time since `t0` as it arrives: the outage's start
/// and end are known to about one interval, without a process start per probe.
struct Pinger {
    lines: tokio::sync::mpsc::UnboundedReceiver<(Duration, String)>,
    _child: tokio::process::Child,
}

impl Pinger {
    fn start(netns: &str, target: &str, t0: Instant) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("ip")
            .args([
                "netns", "exec", netns, "ping", "-n", "-O", "-i", "0.02", "-W", "1", target,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start ping")?;
        let mut out =
            tokio::io::BufReader::new(child.stdout.take().context("ping stdout")?).lines();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send((t0.elapsed(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            lines,
            _child: child,
        })
    }

    /// The first missing reply and the first reply after it (waiting up to `wait` for them).
    async fn outage(mut self, wait: Duration) -> Result<(Option<Duration>, Duration)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut failed = None;
        loop {
            let (at, line) = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .context("ping: no reply after the outage")?
                .context("ping exited")?;
            if line.starts_with("no answer yet") {
                failed.get_or_insert(at);
            } else if line.contains("bytes from") && failed.is_some() {
                return Ok((failed, at));
            }
        }
    }
}

// ------------------------------------------------------------------ 6. IPsec overhead

/// MiB/s of AES-128-GCM sealing 1400-byte packets on one core of this machine, natively (no
/// emulation): what the cipher itself costs where the CPU has AES instructions.
fn native_aes_gcm_mib_s() -> Result<f64> {
    use ring::aead;
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_128_GCM, &[7u8; 16])
            .map_err(|_| anyhow::anyhow!("AES-128-GCM key"))?,
    );
    let mut packet = vec![0u8; 1400];
    let packets: u64 = 200_000;
    let t0 = Instant::now();
    for i in 0..packets {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                &mut packet,
            )
            .map_err(|_| anyhow::anyhow!("AES-128-GCM seal"))?;
        let _ = std::hint::black_box(tag);
    }
    Ok((packets * 1400) as f64 / 1048576.0 / t0.elapsed().as_secs_f64())
}

/// Receives one TCP stream on `argv[1]:5201` and prints its bytes and the seconds from its first
/// byte to its end; touches `argv[2]` once listening.
const RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); open(sys.argv[2], "w").close()
s.settimeout(60); c, _ = s.accept(); c.settimeout(60)
buf = bytearray(1 << 18); n = 0; t0 = None
while True:
    k = c.recv_into(buf)
    if not k: break
    if t0 is None: t0 = time.monotonic()
    n += k
print(n, time.monotonic() - t0)
"#;

/// Sends `argv[2]` MiB of zeros to `argv[1]:5201`.
const SENDER: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 5201), timeout=60)
b = bytes(1 << 20)
for _ in range(int(sys.argv[2])): s.sendall(b)
s.close()
"#;

/// One measurement through a tunnel: ping round trips and TCP throughput.
struct PathFigures {
    rtt_avg_ms: f64,
    rtt_min_ms: f64,
    rtt_max_ms: f64,
    /// MiB/s of each transfer.
    throughput: Vec<f64>,
}

impl PathFigures {
    fn median_throughput(&self) -> f64 {
        let mut t = self.throughput.clone();
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 2).copied().unwrap_or_default()
    }
}

const TRANSFER_MIB: u32 = 16;
const TRANSFERS: usize = 3;

async fn measure_path(
    from: &multivpc_e2e::fixtures::NatGateway,
    to: &multivpc_e2e::fixtures::NatGateway,
    to_addr: &str,
) -> Result<PathFigures> {
    let ping = from
        .node
        .netns_exec(&["ping", "-q", "-c", "100", "-i", "0.05", "-W", "1", to_addr])
        .await?
        .check()?
        .stdout;
    // iputils: "rtt min/avg/max/mdev = a/b/c/d ms"; busybox: "round-trip min/avg/max = a/b/c ms".
    let figures: Vec<f64> = ping
        .lines()
        .find_map(|l| l.split_once(" = "))
        .map(|(_, v)| {
            v.trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [rtt_min_ms, rtt_avg_ms, rtt_max_ms, ..] = figures[..] else {
        bail!("no round trips in: {ping}");
    };
    let mut throughput = Vec::new();
    for _ in 0..TRANSFERS {
        let ready = format!("/tmp/multivpc-bench-recv-{}", std::process::id());
        let listen = format!("rm -f {ready}; python3 -c '{RECEIVER}' {to_addr} {ready}");
        let send = format!(
            "for i in $(seq 200); do [ -e {ready} ] && break; sleep 0.1; done; python3 -c '{SENDER}' {to_addr} {TRANSFER_MIB}"
        );
        let (listen, send) = (["sh", "-c", &listen], ["sh", "-c", &send]);
        let (received, sent) =
            tokio::join!(to.node.netns_exec(&listen), from.node.netns_exec(&send),);
        sent?.check()?;
        let out = received?.check()?.stdout;
        let mut words = out.split_whitespace();
        let (Some(Ok(bytes)), Some(Ok(secs))) = (
            words.next().map(str::parse::<f64>),
            words.next().map(str::parse::<f64>),
        ) else {
            bail!("receiver printed: {out}");
        };
        if bytes < f64::from(TRANSFER_MIB) * 1048576.0 || secs <= 0.0 {
            bail!("receiver got {bytes} bytes in {secs} s");
        }
        throughput.push(bytes / 1048576.0 / secs);
    }
    Ok(PathFigures {
        rtt_avg_ms,
        rtt_min_ms,
        rtt_max_ms,
        throughput,
    })
}

async fn bench_ipsec(h: &Harness, o: &Opts) -> Result<Section> {
    log("ipsec");
    if h.kernel_vm()?.is_none() {
        bail!("the IPsec section needs the kernel VM: make e2e-up VM=1");
    }
    let (c1, c2) = (h.client(C1), h.client(C2));
    let dir = multivpc_e2e::run_dir().join("bench");
    let (a, b) = (
        h.create_nat_gateway(
            C1,
            NatGatewaySpec::new("bip-a", "bench-ip-vpc").in_kernel_vm(),
        )
        .await?,
        h.create_nat_gateway(
            C2,
            NatGatewaySpec::new("bip-b", "bench-ip-rvpc").in_kernel_vm(),
        )
        .await?,
    );
    for gw in [&a, &b] {
        gw.wait_available(h, Duration::from_secs(180)).await?;
    }
    let secret = "bench-ipsec-psk";
    let mut key = [0u8; 48];
    {
        use std::io::Read as _;
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    }
    for c in [&c1, &c2] {
        apply_json(
            c,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": secret, "namespace": KUBE_SYSTEM},
                   "data": {"psk": base64_of(&key)}}),
        )
        .await?;
    }
    let mut ctls: Vec<Controller> = Vec::new();
    for c in [C1, C2] {
        for bin in ["exip-syncer", "tunnel-manager"] {
            let mut args = chart_args(bin, c);
            if bin == "tunnel-manager" {
                args.push(format!("--ipsec-psk-secret={KUBE_SYSTEM}/{secret}"));
            }
            ctls.push(
                demo_support::spawn(
                    &o.profile,
                    &dir,
                    c,
                    bin,
                    &h.kubeconfig(c),
                    &args,
                    Duration::from_secs(60),
                )
                .await?,
            );
        }
    }
    let ns = "bench-ip";
    for c in [&c1, &c2] {
        apply_json(
            c,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    let dev = "bip0";
    let tunnel = |remote: &str, remote_gw: &str, local_gw: &str, addr: &str, encryption: &str| {
        json!({
            "apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcNatTunnel",
            "metadata": {"name": dev, "namespace": ns},
            "spec": {"clusterId": remote, "gatewayName": remote_gw, "interfaceAddr": addr,
                     "natGwDp": local_gw, "type": "vxlan", "vni": 4387,
                     "encryption": encryption},
        })
    };
    let ends = [
        (&c1, C2, &b.spec.name, &a.spec.name, "10.252.1.1/24"),
        (&c2, C1, &a.spec.name, &b.spec.name, "10.252.1.2/24"),
    ];
    let (t1, t2): (Api<VpcNatTunnel>, Api<VpcNatTunnel>) = (
        Api::namespaced(c1.clone(), ns),
        Api::namespaced(c2.clone(), ns),
    );
    for (c, _, _, local_gw, _) in ends {
        fixtures::admit_namespace_to_gateway(c, local_gw, ns).await?;
    }
    let mut results = Vec::new();
    for encryption in ["none", "ipsec"] {
        for (c, remote, remote_gw, local_gw, addr) in ends {
            apply_json(c, tunnel(remote, remote_gw, local_gw, addr, encryption)).await?;
        }
        // Programmed toward the far gateway's address of now (a GatewayExIp of an earlier
        // run may name an older one until exip-syncer has synced).
        for (t, far) in [(&t1, &b), (&t2, &a)] {
            wait_for_object(t, dev, Duration::from_secs(120), |t: &VpcNatTunnel| {
                let s = t.status.as_ref();
                tunnel_ready(t)
                    && s.and_then(|s| s.remote_ip.as_deref()) == Some(far.node.external_ip.as_str())
                    && s.and_then(|s| s.applied.as_ref())
                        .is_some_and(|a| a.encryption.to_string() == encryption)
            })
            .await?;
        }
        b.sh(h, "ping -c 3 -i 0.3 -W 2 10.252.1.1").await?.check()?;
        log(&format!(
            "tunnel up with encryption {encryption}; measuring"
        ));
        results.push((encryption, measure_path(&a, &b, "10.252.1.2").await?));
    }
    let esp = a
        .node
        .netns_exec(&["ip", "xfrm", "state", "count"])
        .await?
        .stdout;
    for api in [&t1, &t2] {
        let _ = api.delete(dev, &DeleteParams::default()).await;
        let _ = wait_for_deletion(api, dev, Duration::from_secs(60)).await;
    }
    // The gateways first: their exip-syncers withdraw their GatewayExIps.
    for gw in [&a, &b] {
        h.delete_nat_gateway(gw).await?;
    }
    drop(ctls);
    for c in [&c1, &c2] {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(c.clone(), KUBE_SYSTEM);
        let _ = secrets.delete(secret, &DeleteParams::default()).await;
    }
    let _ = h.delete_namespace(C1, ns).await;
    let _ = h.delete_namespace(C2, ns).await;

    let (clear, encrypted) = (&results[0].1, &results[1].1);
    let mut rows = String::from(
        "| tunnel | RTT min / avg / max | TCP throughput (median of 3, each) |\n|---|---|---|\n",
    );
    for (name, f) in &results {
        writeln!(
            rows,
            "| VXLAN, encryption `{name}` | {:.2} / {:.2} / {:.2} ms | {:.1} MiB/s ({}) |",
            f.rtt_min_ms,
            f.rtt_avg_ms,
            f.rtt_max_ms,
            f.median_throughput(),
            f.throughput
                .iter()
                .map(|t| format!("{t:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    let rtt_overhead = encrypted.rtt_avg_ms - clear.rtt_avg_ms;
    let native = native_aes_gcm_mib_s()?;
    let throughput_ratio = encrypted.median_throughput() / clear.median_throughput();
    Ok(Section {
        key: String::new(),
        title: "6. IPsec overhead".into(),
        body: format!(
            "Two VPC NAT gateways in the kernel VM (Debian's kernel; `make e2e-up VM=1`), one \
             per cluster, exip-syncer and tunnel-manager on both with the chart's flags and \
             `--ipsec-psk-secret`. One VXLAN tunnel pair, measured with `encryption: none`, then \
             the same tunnels switched to `encryption: ipsec` (ESP transport, \
             `rfc4106(gcm(aes))`; the gateway held {} SAs after the switch). From `bip-a`'s \
             netns to `bip-b`'s tunnel address: 100 pings 50 ms apart, then {TRANSFERS} TCP \
             transfers of {TRANSFER_MIB} MiB (python sockets, timed by the receiver from its \
             first byte).\n\n{rows}\n\
             **The VM is emulated (TCG: this machine is itself a microVM without nested KVM), \
             so every figure is CPU-bound emulation, AES included: the absolute numbers say \
             nothing about real hardware, and the throughput ratio shows emulated AES \
             instructions, not what they cost on a real CPU.** For scale, AES-128-GCM sealing \
             1400-byte packets natively on one core of this machine (ring, the same AES \
             instructions the kernel's `aesni_intel` uses): {native:.0} MiB/s, {:.0}× the clear \
             tunnel's emulated throughput above.\n",
            esp.split_whitespace().last().unwrap_or("?"),
            native / clear.median_throughput(),
        ),
        targets: vec![
            (
                "IPsec round-trip overhead (avg), informational".into(),
                format!("{rtt_overhead:+.2} ms"),
                "measured".into(),
            ),
            (
                "IPsec throughput relative to clear, informational (emulated AES)".into(),
                format!("{:.0} %", throughput_ratio * 100.0),
                "measured".into(),
            ),
            (
                "AES-128-GCM natively on one core, informational".into(),
                format!("{native:.0} MiB/s"),
                "measured".into(),
            ),
        ],
    })
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ------------------------------------------------------------------ 4. dns-forwarder

fn init_script(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|ics| ics.iter().find(|c| c.name == "init-route"))
        .and_then(|c| c.command.as_ref())
        .and_then(|c| c.get(2).cloned())
        .unwrap_or_default()
}

async fn bench_dns(h: &Harness, o: &Opts) -> Result<Section> {
    log("dns-forwarder");
    let c1 = h.client(C1);
    let dns_ip = h.install_cluster_network(C1).await?;
    let dir = multivpc_e2e::run_dir().join("bench");
    let ctl = demo_support::spawn(
        &o.profile,
        &dir,
        C1,
        "dns-forwarder",
        &h.kubeconfig(C1),
        &chart_args("dns-forwarder", C1),
        Duration::from_secs(60),
    )
    .await?;
    let ns = "bench-dns";
    apply_json(
        &c1,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await?;
    let route = format!("ip -4 route add {dns_ip} via 10.244.0.1 dev net1;");
    let deps: Api<Deployment> = Api::namespaced(c1.clone(), KUBE_SYSTEM);
    let forwards: Api<VpcDnsForward> = Api::namespaced(c1.clone(), ns);
    let mut applies = Vec::new();
    let mut repairs = Vec::new();
    for i in 0..5 {
        let name = format!("bdns{i}");
        let vpc = format!("bench-dns-vpc{i}");
        let original = h
            .install_vpc_dns(
                C1,
                &name,
                &vpc,
                &format!("bsub{i}"),
                VpcDnsForm::V112InitContainer,
            )
            .await?;
        let dep = format!("vpc-dns-{name}");
        fixtures::admit_namespace(&c1, &vpc, ns).await?;
        let t = Instant::now();
        apply_json(
            &c1,
            json!({"apiVersion": "kubeovn.ustc.io/v1", "kind": "VpcDnsForward",
                   "metadata": {"name": name, "namespace": ns}, "spec": {"vpc": vpc}}),
        )
        .await?;
        wait_poll(&deps, &dep, |d| init_script(d).contains(&route)).await?;
        applies.push(t.elapsed());
        // Kube-OVN's full Update without the route.
        let t = loop {
            let mut d = deps.get(&dep).await?;
            d.spec = original.spec.clone();
            let t = Instant::now();
            match deps.replace(&dep, &PostParams::default(), &d).await {
                Ok(_) => break t,
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        };
        wait_poll(&deps, &dep, |d| init_script(d).contains(&route)).await?;
        repairs.push(t.elapsed());
        forwards.delete(&name, &DeleteParams::default()).await?;
        wait_for_deletion(&forwards, &name, Duration::from_secs(30)).await?;
        let _ = deps.delete(&dep, &DeleteParams::default()).await;
    }
    drop(ctl);
    let _ = h.delete_namespace(C1, ns).await;
    applies.sort();
    repairs.sort();
    let row = |v: &[Duration]| {
        format!(
            "{} | {} | {}",
            secs(v[v.len() / 2]),
            secs(v[0]),
            secs(v[v.len() - 1])
        )
    };
    Ok(Section {
        key: String::new(),
        title: "4. dns-forwarder".into(),
        body: format!(
            "dns-forwarder alone on cluster1. Five times: a fresh vpc-dns (Kube-OVN v1.12 \
             init-container form), then a VpcDnsForward for its VPC; apply → the Deployment's \
             init script routes the kube-dns ClusterIP (polled every 20 ms). Then a full Update \
             of the Deployment with Kube-OVN's spec (route dropped) → route back.\n\n\
             | what | median | min | max |\n|---|---|---|---|\n\
             | apply → Deployment routed | {} |\n| Kube-OVN rewrite → repaired | {} |\n",
            row(&applies),
            row(&repairs)
        ),
        targets: vec![],
    })
}

async fn wait_poll(
    api: &Api<Deployment>,
    name: &str,
    check: impl Fn(&Deployment) -> bool,
) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let Some(d) = api.get_opt(name).await?
            && check(&d)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("Deployment {name}: condition not reached in 30 s")
}
