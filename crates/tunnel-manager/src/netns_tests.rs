//! The scripts run for real in a network namespace made by the test (root only; skipped
//! loudly elsewhere): a stand-in gateway with `eth0` and `net1`. VXLAN runs everywhere Linux
//! has it; GRE runs where the kernel has GRE and is skipped with a clear message where not.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::script::{self, CleanupConfig, Encap, Mode, Port, Stale, TunnelConfig, Vni};

static N: AtomicU32 = AtomicU32::new(0);

fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n### SKIPPED netns script test: {why}\n"
    );
}

struct Netns(String, Option<String>);

impl Netns {
    /// A stand-in gateway: `eth0` and `net1`, each a veth with its peer inside.
    fn new() -> Option<Self> {
        if !run(&[
            "sh",
            "-c",
            "command -v ip && command -v iptables && command -v awk",
        ])
        .0
        {
            skip("needs iproute2, iptables and awk on the host (the harness installs them)");
            return None;
        }
        let ns = Self::bare()?;
        for cmd in [
            "ip link add eth0 type veth peer name eth0p",
            "ip addr add 10.1.0.254/24 dev eth0",
            "ip link set eth0 up",
            "ip link set eth0p up",
            "ip link add net1 type veth peer name net1p",
            "ip addr add 172.50.1.11/16 dev net1",
            "ip link set net1 up",
            "ip link set net1p up",
        ] {
            ns.must(cmd);
        }
        Some(ns)
    }

    /// A namespace with nothing but `lo` up, for tests that wire their own.
    fn bare() -> Option<Self> {
        if unsafe_euid() != 0 {
            skip("needs root to create network namespaces");
            return None;
        }
        let name = format!(
            "tmtest-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        if !run(&["ip", "netns", "add", &name]).0 {
            skip("`ip netns add` failed");
            return None;
        }
        let ns = Netns(name, None);
        ns.must("ip link set lo up");
        Some(ns)
    }

    /// Runs scripts with the shell and tools found first in `dir` (busybox applets).
    fn with_path(mut self, dir: &str) -> Self {
        self.1 = Some(dir.to_owned());
        self
    }

    fn sh(&self, script: &str) -> (bool, String, String) {
        match &self.1 {
            None => run(&["ip", "netns", "exec", &self.0, "sh", "-c", script]),
            Some(dir) => {
                let path = format!("PATH={dir}:{}", std::env::var("PATH").unwrap_or_default());
                run(&[
                    "ip", "netns", "exec", &self.0, "env", &path, "sh", "-c", script,
                ])
            }
        }
    }

    /// Whether this kernel can make a VXLAN device here; skips (loudly) when not.
    fn has_vxlan(&self) -> bool {
        let (ok, _, err) = self
            .sh("ip link add vxprobe type vxlan id 1 dstport 4789 dev net1 && ip link del vxprobe");
        if !ok {
            skip(&format!("this kernel has no VXLAN: {err}"));
        }
        ok
    }

    /// Runs a generated script; returns the changes it reported.
    fn script(&self, script: &str) -> u32 {
        let (ok, out, err) = self.sh(script);
        assert!(ok, "script failed:\n{out}\n{err}\n--- script ---\n{script}");
        script::reported_changes(&out).unwrap_or_else(|| panic!("no marker in {out}"))
    }

    /// `ip -d link` (MTUs included), `ip route`, the nat table and mangle's FORWARD chain, as
    /// the tests compare them.
    fn state(&self) -> String {
        let (_, out, _) = self.sh(
            "ip -d link show | grep -v -e 'link/' -e '^ *alias' | sed 's/^[0-9]*: //'; ip route; \
             ipt=iptables; if iptables-legacy -t nat -S INPUT 1 >/dev/null 2>&1; then ipt=iptables-legacy; fi; \
             $ipt -t nat -S; $ipt -t mangle -S FORWARD",
        );
        out
    }

    /// The MTU of `dev`.
    fn mtu(&self, dev: &str) -> u32 {
        let (ok, out, err) = self.sh(&format!("cat /sys/class/net/{dev}/mtu"));
        assert!(ok, "{err}");
        out.trim().parse().unwrap()
    }

    /// Runs a shell command that must succeed.
    fn must(&self, cmd: &str) {
        let (ok, out, err) = self.sh(cmd);
        assert!(ok, "{cmd}: {out}{err}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

fn unsafe_euid() -> u32 {
    // `id -u` keeps the crate free of libc.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

fn run(cmd: &[&str]) -> (bool, String, String) {
    match Command::new(cmd[0]).args(&cmd[1..]).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), e.to_string()),
    }
}

fn cleanup_of(cfg: &TunnelConfig, keep_local: bool) -> CleanupConfig {
    CleanupConfig {
        esp: None,
        device: cfg.device.clone(),
        delete_device: true,
        tag: cfg.tag.clone(),
        remote_cidr: Some(cfg.remote_cidr),
        local_cidr: (!keep_local).then_some(cfg.local_cidr),
    }
}

fn lifecycle(ns: &Netns, cfg: TunnelConfig) {
    let before = ns.state();
    assert!(ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge)) > 0);
    let first = ns.state();
    assert!(first.contains(cfg.device.as_str()), "{first}");
    assert!(
        first.contains(&format!("{} dev {}", cfg.remote_cidr, cfg.device)),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "{} via {} dev eth0",
            cfg.local_cidr, cfg.ovn_gateway
        )),
        "{first}"
    );
    assert!(
        first.contains(&format!("--comment \"{}\"", cfg.tag))
            || first.contains(&format!("--comment {}", cfg.tag)),
        "{first}"
    );
    // The device's MTU is net1's (1500) less the encapsulation's overhead, the script reports
    // it, and TCP SYNs into and out of the device are clamped to fit it.
    let mtu = 1500 - cfg.encap.overhead();
    assert_eq!(ns.mtu(cfg.device.as_str()), mtu);
    let (_, out, _) = ns.sh(&script::converge(&cfg, &Stale::default(), Mode::Check));
    assert_eq!(script::reported_mtu(&out), Some(mtu));
    for dir in ["-i", "-o"] {
        let rule = format!(
            "-A FORWARD {dir} {} -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment \"{}\" -j TCPMSS --set-mss {}",
            cfg.device,
            cfg.tag,
            mtu - 40
        );
        assert!(first.contains(&rule), "{rule} missing:\n{first}");
    }
    // Converging twice changes nothing, and the check agrees.
    assert_eq!(
        ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge)),
        0
    );
    assert_eq!(ns.state(), first);
    assert_eq!(
        ns.script(&script::converge(&cfg, &Stale::default(), Mode::Check)),
        0
    );

    // Drift: a route deleted by hand is seen by the check (which changes nothing) and repaired.
    ns.sh(&format!("ip route del {}", cfg.remote_cidr));
    assert_eq!(
        ns.script(&script::converge(&cfg, &Stale::default(), Mode::Check)),
        1
    );
    assert_ne!(ns.state(), first);
    assert_eq!(
        ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge)),
        1
    );
    assert_eq!(ns.state(), first);
    // A duplicate tagged rule and a foreign address are drift too.
    ns.sh(&format!(
        "ipt=iptables; if iptables-legacy -t nat -S INPUT 1 >/dev/null 2>&1; then ipt=iptables-legacy; fi; \
         $ipt -t nat -A POSTROUTING -d 1.2.3.0/24 -m comment --comment {} -j ACCEPT; ip addr add 10.200.0.1/24 dev {}",
        cfg.tag, cfg.device
    ));
    assert!(ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge)) >= 2);
    assert_eq!(ns.state(), first);
    // So are an MTU changed by hand and a clamp rule deleted by hand.
    ns.must(&format!("ip link set dev {} mtu 1300", cfg.device));
    ns.must(&format!(
        "ipt=iptables; if iptables-legacy -t nat -S INPUT 1 >/dev/null 2>&1; then ipt=iptables-legacy; fi; \
         $ipt -t mangle -D FORWARD -o {} -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment {} -j TCPMSS --set-mss {}",
        cfg.device,
        cfg.tag,
        mtu - 40
    ));
    assert!(ns.script(&script::converge(&cfg, &Stale::default(), Mode::Check)) >= 2);
    assert!(ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge)) >= 2);
    assert_eq!(ns.state(), first);

    // A new spec (address, remote endpoint, remote CIDR; vni for VXLAN) leaves nothing behind.
    let old = Stale {
        esp: None,
        remote_cidr: Some(cfg.remote_cidr),
        local_cidr: Some(cfg.local_cidr),
    };
    let mut next = cfg.clone();
    next.mtu = Some(script::Mtu::new(1400).unwrap());
    next.interface_addr = "10.101.0.1/30".parse().unwrap();
    next.remote_ip = "172.50.2.99".parse().unwrap();
    next.remote_cidr = "242.7.0.0/16".parse().unwrap();
    next.local_cidr = "242.6.0.0/16".parse().unwrap();
    if let Encap::Vxlan { port, .. } = next.encap {
        next.encap = Encap::Vxlan {
            vni: Vni::new(4242).unwrap(),
            port,
        };
    }
    assert!(ns.script(&script::converge(&next, &old, Mode::Converge)) > 0);
    let second = ns.state();
    for gone in [
        "10.100.0.1",
        "172.50.2.11",
        "242.1.0.0/16",
        "242.0.0.0/16",
        "id 100 ",
    ] {
        assert!(!second.contains(gone), "{gone} left over:\n{second}");
    }
    assert_eq!(
        ns.script(&script::converge(&next, &Stale::default(), Mode::Check)),
        0
    );
    // spec.mtu replaces the derived MTU, and the clamp follows it.
    assert_eq!(ns.mtu(next.device.as_str()), 1400);
    assert!(second.contains("--set-mss 1360"), "{second}");
    assert!(
        !second.contains(&format!("--set-mss {}", mtu - 40)),
        "{second}"
    );

    // Cleanup returns the namespace to where it was.
    assert!(ns.script(&script::cleanup(&cleanup_of(&next, false))) > 0);
    assert_eq!(ns.state(), before);
    assert_eq!(ns.script(&script::cleanup(&cleanup_of(&next, false))), 0);
}

#[test]
fn vxlan_scripts_converge_idempotently_in_a_netns() {
    let Some(ns) = Netns::new() else { return };
    if !ns.has_vxlan() {
        return;
    }
    lifecycle(&ns, crate::script::tests::vxlan());
}

#[test]
fn gre_scripts_converge_idempotently_where_the_kernel_has_gre() {
    let Some(ns) = Netns::new() else { return };
    let (ok, _, err) = ns.sh(
        "ip tunnel add greprobe mode gre remote 172.50.2.1 local 172.50.1.11 ttl 255 && ip link del greprobe",
    );
    if !ok {
        skip(&format!(
            "this kernel has no GRE (ip tunnel add … mode gre: {}); the GRE script is covered by the script unit tests only",
            err.trim()
        ));
        return;
    }
    let mut cfg = crate::script::tests::vxlan();
    cfg.device = "ovn-gre0".parse().unwrap();
    cfg.tag = crate::script::RuleTag::new("ns1", &cfg.device).unwrap();
    cfg.encap = Encap::Gre;
    lifecycle(&ns, cfg);
}

#[test]
fn two_tunnels_share_the_local_route() {
    let Some(ns) = Netns::new() else { return };
    if !ns.has_vxlan() {
        return;
    }
    let a = crate::script::tests::vxlan();
    let mut b = a.clone();
    b.device = "vx2".parse().unwrap();
    b.tag = crate::script::RuleTag::new("ns1", &b.device).unwrap();
    b.remote_cidr = "242.2.0.0/16".parse().unwrap();
    b.remote_ip = "172.50.3.11".parse().unwrap();
    b.interface_addr = "10.100.1.1/24".parse().unwrap();
    b.encap = Encap::Vxlan {
        vni: Vni::new(200).unwrap(),
        port: Port::new(4789).unwrap(),
    };
    ns.script(&script::converge(&a, &Stale::default(), Mode::Converge));
    ns.script(&script::converge(&b, &Stale::default(), Mode::Converge));
    assert_eq!(
        ns.script(&script::converge(&a, &Stale::default(), Mode::Check)),
        0
    );
    // Deleting a keeps the route b still needs.
    ns.script(&script::cleanup(&cleanup_of(&a, true)));
    assert_eq!(
        ns.script(&script::converge(&b, &Stale::default(), Mode::Check)),
        0
    );
    let state = ns.state();
    assert!(!state.contains("vx1"), "{state}");
}

#[test]
fn the_original_operators_state_is_adopted() {
    let Some(ns) = Netns::new() else { return };
    if !ns.has_vxlan() {
        return;
    }
    let cfg = crate::script::tests::vxlan();
    // What the Go operator left: a device of the same name without our alias, and an untagged
    // SNAT rule for the same traffic.
    let (ok, _, err) = ns.sh(&format!(
        "ip link add {dev} type vxlan id 100 dstport 4789 dev net1 && ip addr add 10.100.0.1/24 dev {dev} && \
         {FLAVOUR}; $ipt -t nat -A POSTROUTING -d {remote} -j SNAT --to-source {snat}",
        dev = cfg.device,
        remote = cfg.remote_cidr,
        snat = cfg.snat,
    ));
    assert!(ok, "{err}");
    assert!(ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge)) > 0);
    let state = ns.state();
    assert_eq!(state.matches("SNAT").count(), 1, "{state}");
    assert!(state.contains(cfg.tag.as_str()), "{state}");
    assert!(
        state.contains("remote 172.50.2.11"),
        "device recreated: {state}"
    );
    let (_, out, _) = ns.sh(&script::converge(&cfg, &Stale::default(), Mode::Check));
    assert_eq!(script::change_lines(&out), Vec::<&str>::new(), "{state}");
}

/// The Go operator ran plain `iptables`, whichever flavour that was in its image; Kube-OVN's
/// gateway (and our scripts) may use the other one. Its untagged rule is found and removed there,
/// and ours lands in the gateway's flavour only.
#[test]
fn the_original_operators_rule_is_removed_from_the_other_iptables_flavour() {
    let Some(ns) = Netns::new() else { return };
    if !ns
        .sh("command -v iptables-legacy && command -v iptables-nft")
        .0
    {
        skip("needs both iptables-legacy and iptables-nft on the host");
        return;
    }
    if !ns.has_vxlan() {
        return;
    }
    let cfg = crate::script::tests::vxlan();
    let gateway = ns
        .sh(&format!("{FLAVOUR}; readlink -f \"$(command -v $ipt)\""))
        .1;
    let (ours, other) = if gateway.contains("legacy") {
        ("iptables-legacy", "iptables-nft")
    } else {
        ("iptables-nft", "iptables-legacy")
    };
    let (ok, _, err) = ns.sh(&format!(
        "{other} -t nat -A POSTROUTING -d {} -j SNAT --to-source {}",
        cfg.remote_cidr, cfg.snat
    ));
    assert!(ok, "{err}");
    assert!(ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge)) > 0);
    let rules = |flavour: &str| ns.sh(&format!("{flavour} -t nat -S POSTROUTING")).1;
    let (in_ours, in_other) = (rules(ours), rules(other));
    assert_eq!(in_ours.matches("SNAT").count(), 1, "{ours}: {in_ours}");
    assert!(in_ours.contains(cfg.tag.as_str()), "{in_ours}");
    assert!(!in_other.contains("SNAT"), "{other}: {in_other}");
    assert_eq!(
        ns.script(&script::converge(&cfg, &Stale::default(), Mode::Check)),
        0
    );
}

/// A device of the tunnel's name that is neither ours (alias) nor a tunnel device is someone
/// else's: converge refuses to replace it, and cleanup never deletes a device without our alias.
#[test]
fn only_our_devices_are_ever_deleted() {
    let Some(ns) = Netns::new() else { return };
    let cfg = crate::script::tests::vxlan();
    let (ok, _, err) = ns.sh(&format!(
        "ip link add {} type veth peer name vxpeer",
        cfg.device
    ));
    assert!(ok, "{err}");
    let (ok, out, err) = ns.sh(&script::converge(&cfg, &Stale::default(), Mode::Converge));
    assert!(!ok, "converge replaced a foreign device: {out}");
    // A section's stderr is part of its output (script::sections).
    assert!(
        out.contains("multivpc: device") && out.contains("is not ours"),
        "{out}{err}"
    );
    assert!(ns.state().contains(&format!("{}@vxpeer", cfg.device)));
    // Cleanup (status says we programmed it) leaves the foreign device in place.
    let (ok, out, err) = ns.sh(&script::cleanup(&cleanup_of(&cfg, false)));
    assert!(ok, "{err}");
    assert!(out.contains("not ours, left in place"), "{out}");
    assert!(ns.state().contains(&format!("{}@vxpeer", cfg.device)));
}

const FLAVOUR: &str = "ipt=iptables; if iptables-legacy -t nat -S INPUT 1 >/dev/null 2>&1; then ipt=iptables-legacy; fi";

#[test]
fn vxlan_scripts_run_under_busybox_as_on_alpine() {
    let Some(busybox) = run(&["sh", "-c", "command -v busybox"])
        .0
        .then(|| run(&["sh", "-c", "command -v busybox"]).1.trim().to_owned())
    else {
        skip(
            "no busybox on this host (apt-get install busybox to run the scripts under busybox sh)",
        );
        return;
    };
    let Some(ns) = Netns::new() else { return };
    let dir = std::env::temp_dir().join(format!("tm-busybox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The gateway image is alpine: busybox sh and text tools, iproute2 and iptables.
    for applet in ["sh", "awk", "sort", "wc", "tr", "cat", "echo"] {
        let link = dir.join(applet);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&busybox, &link).unwrap();
    }
    let ns = ns.with_path(dir.to_str().unwrap());
    let (_, out, _) = ns.sh("readlink -f \"$(command -v sh)\"; awk --version 2>&1 | head -1");
    assert!(out.contains("busybox") || out.contains("BusyBox"), "{out}");
    if ns.has_vxlan() {
        lifecycle(&ns, crate::script::tests::vxlan());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kube-OVN v1.12 leaves net1 without ARP until an IptablesEIP exists: converge turns it on
/// (as Kube-OVN's add_eip does), and the check reports it off as drift.
#[test]
fn arp_is_turned_on_on_net1_where_kube_ovn_v1_12_left_it_off() {
    let Some(ns) = Netns::new() else { return };
    if !ns.has_vxlan() {
        return;
    }
    let cfg = crate::script::tests::vxlan();
    let noarp = |ns: &Netns| ns.sh("ip -o link show dev net1").1.contains("NOARP");
    ns.sh("ip link set dev net1 arp off");
    assert!(noarp(&ns));
    ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge));
    assert!(!noarp(&ns), "converge leaves ARP off on net1");
    assert_eq!(
        ns.script(&script::converge(&cfg, &Stale::default(), Mode::Check)),
        0
    );
    ns.sh("ip link set dev net1 arp off");
    assert_eq!(
        ns.script(&script::converge(&cfg, &Stale::default(), Mode::Check)),
        1,
        "the check sees ARP off as drift"
    );
    assert!(noarp(&ns), "the check changes nothing");
}

/// A status edited to name routes someone else owns (Kube-OVN's service route via eth0, a
/// user's route through the tunnel device): cleanup deletes only routes marked as ours
/// (`proto 178`), so nothing foreign goes.
#[test]
fn a_status_naming_foreign_routes_deletes_nothing_foreign() {
    let Some(ns) = Netns::new() else { return };
    if !ns.has_vxlan() {
        return;
    }
    let cfg = crate::script::tests::vxlan();
    ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge));
    for cmd in [
        "ip route add 10.96.0.0/12 via 10.1.0.1 dev eth0",
        "ip route add 192.168.77.0/24 dev vx1",
    ] {
        let (ok, _, err) = ns.sh(cmd);
        assert!(ok, "{cmd}: {err}");
    }
    let forged = CleanupConfig {
        esp: None,
        device: cfg.device.clone(),
        delete_device: false,
        tag: cfg.tag.clone(),
        remote_cidr: Some("192.168.77.0/24".parse().unwrap()),
        local_cidr: Some("10.96.0.0/12".parse().unwrap()),
    };
    ns.script(&script::cleanup(&forged));
    let state = ns.state();
    assert!(
        state.contains("10.96.0.0/12 via 10.1.0.1 dev eth0"),
        "{state}"
    );
    assert!(state.contains("192.168.77.0/24 dev vx1"), "{state}");
    // Stale-route removal is held to the same mark.
    let stale = Stale {
        esp: None,
        remote_cidr: Some("192.168.77.0/24".parse().unwrap()),
        local_cidr: Some("10.96.0.0/12".parse().unwrap()),
    };
    ns.script(&script::converge(&cfg, &stale, Mode::Converge));
    let state = ns.state();
    assert!(
        state.contains("10.96.0.0/12 via 10.1.0.1 dev eth0"),
        "{state}"
    );
    assert!(state.contains("192.168.77.0/24 dev vx1"), "{state}");
    // The real ones go.
    ns.script(&script::cleanup(&cleanup_of(&cfg, false)));
    let state = ns.state();
    assert!(!state.contains(&cfg.remote_cidr.to_string()), "{state}");
    assert!(!state.contains(&cfg.local_cidr.to_string()), "{state}");
}

/// Two scripts never run in one gateway at once, even when the exec of the first timed out
/// and its shell still runs: the second waits for the first's lock (keyed by the network
/// namespace); a lock whose holder is gone is taken over.
#[test]
fn a_script_waits_for_the_one_still_running_in_its_gateway() {
    let Some(ns) = Netns::new() else { return };
    if !ns.has_vxlan() {
        return;
    }
    let cfg = crate::script::tests::vxlan();
    let converge = script::converge(&cfg, &Stale::default(), Mode::Converge);
    // A stand-in for a timed-out script: a shell of this netns holding the lock for 2 s.
    let holder = "netns=$(readlink /proc/self/ns/net); netns=${netns#net:[}; netns=${netns%]}; \
                  lock=/tmp/multivpc-lock-$netns; ln -s $$ $lock; sleep 2; rm -f $lock";
    let (_, netns, _) = ns.sh("readlink /proc/self/ns/net");
    let id = netns
        .trim()
        .trim_start_matches("net:[")
        .trim_end_matches(']');
    let lock = format!("/tmp/multivpc-lock-{id}");
    let name = ns.0.clone();
    let held = std::thread::spawn(move || run(&["ip", "netns", "exec", &name, "sh", "-c", holder]));
    // The script starts once the holder has the lock (however long a busy machine takes to
    // get there), and must not finish before the holder lets go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::symlink_metadata(&lock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never took {lock}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let started = std::time::Instant::now();
    assert!(ns.script(&converge) > 0);
    let waited = started.elapsed();
    assert!(held.join().unwrap().0);
    assert!(
        waited >= std::time::Duration::from_millis(1500),
        "the script ran while the other held the gateway ({waited:?})"
    );

    // A lock left by a script that is gone (its PID no longer runs) does not block.
    let (ok, _, err) = ns.sh(&format!("ln -s 999999999 {lock}"));
    assert!(ok, "{err}");
    assert_eq!(
        ns.script(&converge),
        0,
        "converged already; the stale lock was replaced"
    );
    assert!(
        std::fs::symlink_metadata(&lock).is_err(),
        "the lock is released"
    );
    ns.script(&script::cleanup(&cleanup_of(&cfg, false)));
}

/// `n` VXLAN tunnels of one gateway, each with its own device, VNI and remote CIDR.
fn many(n: u32) -> Vec<TunnelConfig> {
    (0..n)
        .map(|i| {
            let mut cfg = crate::script::tests::vxlan();
            cfg.device = format!("vx{i}").parse().unwrap();
            cfg.tag = crate::script::RuleTag::new("ns1", &cfg.device).unwrap();
            cfg.encap = Encap::Vxlan {
                vni: Vni::new(100 + i).unwrap(),
                port: Port::new(4789).unwrap(),
            };
            cfg.remote_cidr = format!("100.{}.{}.0/24", 64 + i / 256, i % 256)
                .parse()
                .unwrap();
            cfg
        })
        .collect()
}

#[test]
fn a_batch_writes_its_rule_changes_together_and_one_at_a_time_when_that_fails() {
    let Some(ns) = Netns::new() else { return };
    if !ns.has_vxlan() {
        return;
    }
    let rules = |ns: &Netns, chain: &str| {
        ns.state()
            .lines()
            .filter(|l| {
                l.starts_with(&format!("-A {chain} ")) && l.contains("multivpc-tunnel:ns1/")
            })
            .count()
    };
    let tagged = |ns: &Netns| rules(ns, "POSTROUTING");
    let converge: Vec<script::Call> = many(30)
        .iter()
        .map(|c| script::Call::converge(c, &Stale::default(), Mode::Converge))
        .collect();
    let (ok, out, err) = ns.sh(&script::batch(&converge));
    assert!(ok, "{out}\n{err}");
    let sections = script::sections(&out);
    assert_eq!(sections.len(), 30);
    assert!(sections.values().all(|s| s.status == Some(0)), "{out}");
    assert_eq!(tagged(&ns), 30, "one SNAT rule per tunnel");
    assert_eq!(rules(&ns, "FORWARD"), 60, "two MSS clamps per tunnel");
    let check: Vec<script::Call> = many(30)
        .iter()
        .map(|c| script::Call::converge(c, &Stale::default(), Mode::Check))
        .collect();
    let (_, out, _) = ns.sh(&script::batch(&check));
    assert_eq!(script::change_lines(&out), Vec::<&str>::new());

    // The same tunnel cleaned up twice in one script: both sections queue the deletion of its
    // rule, so the restore (all or nothing) fails; one at a time, the first deletes it and the
    // second alone fails, saying what.
    let all = many(30);
    let twice = script::Call::cleanup(&cleanup_of(&all[0], true));
    let (ok, out, _) = ns.sh(&script::batch([&twice, &twice]));
    assert!(!ok);
    let sections = script::sections(&out);
    assert_eq!(sections[&0].status, Some(0), "{out}");
    assert_eq!(sections[&1].status, Some(1), "{out}");
    assert!(sections[&1].text.contains("-D POSTROUTING"), "{out}");
    assert!(sections[&1].text.contains("-t mangle -D FORWARD"), "{out}");
    assert_eq!(tagged(&ns), 29);
    assert_eq!(rules(&ns, "FORWARD"), 58);

    // Without any iptables-restore, the changes are written one at a time.
    let stubs = tempdir();
    for f in [
        "iptables-restore",
        "iptables-legacy-restore",
        "iptables-nft-restore",
    ] {
        let path = format!("{stubs}/{f}");
        std::fs::write(&path, "#!/bin/sh\nexit 1\n").unwrap();
        run(&["chmod", "+x", &path]);
    }
    let ns = ns.with_path(&stubs);
    let cleanup: Vec<script::Call> = all[1..]
        .iter()
        .map(|c| script::Call::cleanup(&cleanup_of(c, true)))
        .collect();
    let (ok, out, err) = ns.sh(&script::batch(&cleanup));
    assert!(ok, "{out}\n{err}");
    assert!(
        script::sections(&out).values().all(|s| s.status == Some(0)),
        "{out}"
    );
    assert_eq!(tagged(&ns), 0);
    assert_eq!(rules(&ns, "FORWARD"), 0);
    let _ = std::fs::remove_dir_all(&stubs);
}

fn tempdir() -> String {
    let dir = std::env::temp_dir().join(format!(
        "tmtest-stubs-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.to_string_lossy().into_owned()
}

/// An egress range of one address is printed by `iptables -S` as that address: the text
/// comparison finds both our rule and the original operator's untagged one in that spelling.
#[test]
fn a_one_address_egress_range_is_found_as_iptables_prints_it() {
    let Some(ns) = Netns::new() else { return };
    if !ns.has_vxlan() {
        return;
    }
    let mut cfg = crate::script::tests::vxlan();
    let one: std::net::Ipv4Addr = "242.0.0.5".parse().unwrap();
    cfg.snat = script::EgressRange::new(one, one).unwrap();
    let (ok, _, err) = ns.sh(&format!(
        "{FLAVOUR}; $ipt -t nat -A POSTROUTING -d {} -j SNAT --to-source {one}",
        cfg.remote_cidr
    ));
    assert!(ok, "{err}");
    assert!(ns.script(&script::converge(&cfg, &Stale::default(), Mode::Converge)) > 0);
    let state = ns.state();
    assert_eq!(state.matches("SNAT").count(), 1, "{state}");
    assert!(state.contains(cfg.tag.as_str()), "{state}");
    let (_, out, _) = ns.sh(&script::converge(&cfg, &Stale::default(), Mode::Check));
    assert_eq!(script::change_lines(&out), Vec::<&str>::new(), "{out}");
}

/// The MSS clamp is what lets TCP cross a tunnel whose path drops ICMP "fragmentation needed"
/// (a PMTU black hole, common on WANs). Two stand-in gateways joined by a VXLAN tunnel over a
/// veth underlay, a client behind one and a web server behind the other (its address in the
/// remote Globalnet CIDR), every namespace made here: a 2 MiB download stalls with the clamp
/// rules taken out, and completes intact once converge has put them back.
/// Two stand-in gateways joined on net1, each with a client namespace on eth0 (the second's
/// answering for 242.1.0.10), and a VXLAN tunnel between them converged on both sides: (gateway
/// a, gateway b, client a, client b, a's config, b's config). `None` (skipped, loudly) where
/// the host cannot.
fn vxlan_pair() -> Option<(Netns, Netns, Netns, Netns, TunnelConfig, TunnelConfig)> {
    let (Some(ga), Some(gb), Some(ca), Some(cb)) =
        (Netns::bare(), Netns::bare(), Netns::bare(), Netns::bare())
    else {
        return None;
    };
    let veth = |a: &Netns, an: &str, b: &Netns, bn: &str| {
        let (ok, _, err) = run(&[
            "ip", "link", "add", an, "netns", &a.0, "type", "veth", "peer", "name", bn, "netns",
            &b.0,
        ]);
        assert!(ok, "veth {an}/{bn}: {err}");
    };
    veth(&ga, "net1", &gb, "net1");
    veth(&ga, "eth0", &ca, "eth0");
    veth(&gb, "eth0", &cb, "eth0");
    for (ns, cmds) in [
        (
            &ga,
            &[
                "ip addr add 172.50.1.11/16 dev net1",
                "ip addr add 10.1.0.254/24 dev eth0",
            ][..],
        ),
        (
            &gb,
            &[
                "ip addr add 172.50.2.11/16 dev net1",
                "ip addr add 10.2.0.254/24 dev eth0",
            ],
        ),
        (
            &ca,
            &[
                "ip addr add 10.1.0.1/24 dev eth0",
                "ip link set eth0 up",
                "ip route add default via 10.1.0.254",
            ],
        ),
        (
            &cb,
            &[
                "ip addr add 10.2.0.1/24 dev eth0",
                "ip addr add 242.1.0.10/32 dev lo",
                "ip link set eth0 up",
                "ip route add default via 10.2.0.254",
            ],
        ),
    ] {
        for cmd in cmds {
            ns.must(cmd);
        }
    }
    for g in [&ga, &gb] {
        g.must("ip link set net1 up && ip link set eth0 up && sysctl -qw net.ipv4.ip_forward=1");
    }
    if !ga.has_vxlan() {
        return None;
    }
    let a = crate::script::tests::vxlan();
    let b = TunnelConfig {
        local_ip: a.remote_ip,
        remote_ip: a.local_ip,
        interface_addr: "10.100.0.2/24".parse().unwrap(),
        local_cidr: a.remote_cidr,
        ovn_gateway: "10.2.0.1".parse().unwrap(),
        remote_cidr: a.local_cidr,
        snat: script::EgressRange::new("242.1.0.1".parse().unwrap(), "242.1.0.8".parse().unwrap())
            .unwrap(),
        ..a.clone()
    };
    Some((ga, gb, ca, cb, a, b))
}

/// The probe script pings the far end through the tunnel: answered while both devices are up,
/// lost once the far end's device is down, and lost toward an address nobody has; under
/// busybox's ping (the gateway image's) as under iputils'.
#[test]
fn probes_see_the_far_end_through_the_tunnel_and_its_loss() {
    let Some((ga, gb, _ca, _cb, a, b)) = vxlan_pair() else {
        return;
    };
    if !run(&["sh", "-c", "command -v ping"]).0 {
        skip("no ping on this host (the harness installs iputils-ping)");
        return;
    }
    for (g, cfg) in [(&ga, &a), (&gb, &b)] {
        g.script(&script::converge(cfg, &Stale::default(), Mode::Converge));
    }
    let far = script::Probe {
        device: a.device.clone(),
        target: b.interface_addr.addr(),
        esp: None,
    };
    let nobody = script::Probe {
        device: a.device.clone(),
        target: "10.100.0.77".parse().unwrap(),
        esp: None,
    };
    let probe = |ns: &Netns| {
        let (ok, out, err) = ns.sh(&script::probes(&[far.clone(), nobody.clone()], 1));
        assert!(ok, "{out}{err}");
        script::probe_results(&out).unwrap_or_else(|| panic!("no ping: {out}"))
    };
    // The first probe may wait for ARP through the tunnel; it answers within a few.
    let answered =
        |ns: &Netns| (0..5).any(|_| matches!(probe(ns)[&0], script::ProbeResult::Answered { .. }));
    assert!(answered(&ga), "the far end never answered");
    let r = probe(&ga);
    assert!(
        matches!(r[&0], script::ProbeResult::Answered { rtt_ms } if rtt_ms > 0.0 && rtt_ms < 1000.0),
        "{r:?}"
    );
    assert_eq!(r[&1], script::ProbeResult::Lost);

    gb.must(&format!("ip link set {} down", b.device));
    assert_eq!(probe(&ga)[&0], script::ProbeResult::Lost);
    gb.must(&format!("ip link set {} up", b.device));
    assert!(answered(&ga), "the far end did not answer again");

    if let Some(busybox) = run(&["sh", "-c", "command -v busybox"])
        .0
        .then(|| run(&["sh", "-c", "command -v busybox"]).1.trim().to_owned())
    {
        let dir = tempdir();
        for applet in ["sh", "ping", "grep"] {
            std::os::unix::fs::symlink(&busybox, format!("{dir}/{applet}")).unwrap();
        }
        let ga = ga.with_path(&dir);
        let (_, out, _) = ga.sh("ping 2>&1 | head -1");
        assert!(out.contains("BusyBox"), "{out}");
        assert!(answered(&ga), "busybox ping saw no answer");
        gb.must(&format!("ip link set {} down", b.device));
        assert_eq!(probe(&ga)[&0], script::ProbeResult::Lost);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_large_tcp_transfer_crosses_the_tunnel_only_with_its_mss_clamped() {
    let Some(busybox) = run(&["sh", "-c", "command -v busybox"])
        .0
        .then(|| run(&["sh", "-c", "command -v busybox"]).1.trim().to_owned())
    else {
        skip("no busybox on this host (its httpd and wget carry the transfer)");
        return;
    };
    let Some((ga, gb, ca, cb, a, b)) = vxlan_pair() else {
        return;
    };
    for g in [&ga, &gb] {
        // The black hole: the gateway's "fragmentation needed" never reaches the sender.
        g.must(&format!(
            "{FLAVOUR}; $ipt -A OUTPUT -p icmp --icmp-type fragmentation-needed -j DROP"
        ));
    }
    let converge = |g: &Netns, cfg: &TunnelConfig| {
        g.script(&script::converge(cfg, &Stale::default(), Mode::Converge))
    };
    converge(&ga, &a);
    converge(&gb, &b);

    let site = tempdir();
    ga.must(&format!(
        "head -c 2097152 /dev/urandom > {site}/big && echo small > {site}/small"
    ));
    /// Kills the server however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new("ip")
            .args([
                "netns", "exec", &cb.0, &busybox, "httpd", "-f", "-p", "8080", "-h", &site,
            ])
            .spawn()
            .expect("busybox httpd"),
    );
    let download = |file: &str, bound: u32| {
        ca.sh(&format!(
            "rm -f {site}/got; timeout {bound} {busybox} wget -q -O {site}/got http://242.1.0.10:8080/{file} && cmp -s {site}/{file} {site}/got"
        ))
        .0
    };
    // A small file crosses either way (no segment is large): the path itself works.
    let mut up = false;
    for _ in 0..50 {
        if download("small", 2) {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "no small transfer through the tunnel");

    // Without the clamps, full-size segments die at the tunnel and nobody is told.
    for g in [&ga, &gb] {
        g.must(&format!("{FLAVOUR}; $ipt -t mangle -F FORWARD"));
    }
    assert!(download("small", 10), "the path broke");
    assert!(
        !download("big", 8),
        "an unclamped transfer crossed the black hole"
    );
    // Converge finds the clamps missing (two per side) and puts them back; the download
    // then completes, byte for byte.
    assert_eq!(converge(&ga, &a), 2);
    assert_eq!(converge(&gb, &b), 2);
    let done = download("big", 60);
    let _ = std::fs::remove_dir_all(&site);
    assert!(done, "the clamped transfer did not complete");
}
