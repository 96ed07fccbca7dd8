//! The shell scripts run inside a VPC NAT gateway pod (container `vpc-nat-gw`, POSIX sh on
//! alpine/busybox with iproute2 and iptables).
//!
//! Everything interpolated into a script comes from a typed, validated value ([`Ipv4Addr`],
//! [`Ipv4Cidr`], [`InterfaceName`], [`RuleTag`], integers) and is rendered single-quoted by
//! [`quote`], so no user string ever reaches the shell as code.
//!
//! Three scripts share one body:
//! - **converge** creates or fixes the device, address, routes and the SNAT rule, removes what an
//!   earlier spec left behind, and prints one `change: …` line per fix;
//! - **check** is the same walk in read-only mode: it only prints the `change: …` lines it would
//!   act on (the periodic drift verification);
//! - **cleanup** removes the device, the routes and every rule tagged for the tunnel.
//!
//! Every script ends by printing `multivpc-changes=<n>`; a failing command stops the script with
//! exit status 1 and a `multivpc: …` line on stderr.

use std::{fmt, net::Ipv4Addr};

use multivpc_api::{
    TunnelType,
    net::{InterfaceName, Ipv4Cidr},
    tunnel::MAX_VNI,
};

/// The gateway pod's interface towards the VPC (Kube-OVN's `VPC_INTERFACE`).
pub const VPC_INTERFACE: &str = "eth0";
/// The gateway pod's interface on the external network (Kube-OVN's `EXTERNAL_INTERFACE`).
pub const EXTERNAL_INTERFACE: &str = "net1";
/// Routing protocol number marking the routes tunnel-manager programs (`ip route … proto 178`).
/// Cleanup and stale-route removal delete only routes carrying it, so a status that names a
/// route someone else owns (Kube-OVN's, the user's) deletes nothing: the pod confirms what is
/// ours. 178 is unassigned in iproute2's rt_protos.
pub const ROUTE_PROTO: u8 = 178;
/// Marker line the scripts end with.
pub const CHANGES_MARKER: &str = "multivpc-changes=";

/// Single-quotes `s` for POSIX sh: `'` becomes `'\''`. Safe for any string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// A value that renders as a shell word (always quoted).
fn q(v: impl fmt::Display) -> String {
    quote(&v.to_string())
}

/// Why a typed script value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("vni {0} is outside 1..={MAX_VNI}")]
    Vni(u32),
    #[error("dstPort 0 is not a UDP port")]
    Port,
    #[error("{0:?} is not a Kubernetes namespace name (DNS-1123 label)")]
    Namespace(String),
    #[error("egress range {0}-{1} is reversed")]
    Range(Ipv4Addr, Ipv4Addr),
}

/// A VXLAN network identifier, 1..=16777215.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vni(u32);

impl Vni {
    pub fn new(v: u32) -> Result<Self, ValueError> {
        if (1..=MAX_VNI).contains(&v) {
            Ok(Self(v))
        } else {
            Err(ValueError::Vni(v))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A UDP destination port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(u16);

impl Port {
    pub fn new(p: u16) -> Result<Self, ValueError> {
        if p == 0 {
            Err(ValueError::Port)
        } else {
            Ok(Self(p))
        }
    }
    pub fn get(self) -> u16 {
        self.0
    }
}

/// The iptables comment naming a tunnel: `multivpc-tunnel:<namespace>/<name>`. Built only from
/// a DNS-1123 label and an [`InterfaceName`], so it holds `[a-z0-9-._/:A-Z]` only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleTag(String);

impl RuleTag {
    pub fn new(namespace: &str, name: &InterfaceName) -> Result<Self, ValueError> {
        let ok = !namespace.is_empty()
            && namespace.len() <= 63
            && namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !namespace.starts_with('-')
            && !namespace.ends_with('-');
        if !ok {
            return Err(ValueError::Namespace(namespace.to_owned()));
        }
        Ok(Self(format!("multivpc-tunnel:{namespace}/{name}")))
    }
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An SNAT source range `first-last` (first <= last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressRange {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

impl EgressRange {
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<Self, ValueError> {
        if u32::from(first) > u32::from(last) {
            return Err(ValueError::Range(first, last));
        }
        Ok(Self { first, last })
    }
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn first(&self) -> Ipv4Addr {
        self.first
    }
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn last(&self) -> Ipv4Addr {
        self.last
    }
    /// Number of addresses in the range.
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.last) - u32::from(self.first)) + 1
    }
}

impl fmt::Display for EgressRange {
    /// iptables' `--to-source` form: `242.0.0.1-242.0.0.8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The encapsulation with its typed parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    Gre,
    Vxlan { vni: Vni, port: Port },
}

impl Encap {
    pub fn tunnel_type(&self) -> TunnelType {
        match self {
            Self::Gre => TunnelType::Gre,
            Self::Vxlan { .. } => TunnelType::Vxlan,
        }
    }
}

/// Everything the converge script programs for one tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    pub device: InterfaceName,
    pub tag: RuleTag,
    pub encap: Encap,
    /// Underlay addresses (net1 of each gateway).
    pub local_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    /// Address of the tunnel device, with prefix (host bits set).
    pub interface_addr: Ipv4Cidr,
    /// `<local globalnet> via <ovn gateway> dev eth0`.
    pub local_cidr: Ipv4Cidr,
    pub ovn_gateway: Ipv4Addr,
    /// `<remote globalnet> dev <device>` and the SNAT destination.
    pub remote_cidr: Ipv4Cidr,
    pub snat: EgressRange,
}

impl TunnelConfig {
    /// The fingerprint stored as the device's alias: a device whose alias differs was made for
    /// other parameters (or by someone else) and is recreated.
    pub fn device_alias(&self) -> String {
        match self.encap {
            Encap::Gre => format!(
                "multivpc gre local={} remote={} ttl=255",
                self.local_ip, self.remote_ip
            ),
            Encap::Vxlan { vni, port } => format!(
                "multivpc vxlan id={} local={} remote={} dstport={} dev={EXTERNAL_INTERFACE}",
                vni.get(),
                self.local_ip,
                self.remote_ip,
                port.get()
            ),
        }
    }
}

/// What an earlier spec programmed that the current one may no longer want.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stale {
    /// Remote route (through the device) programmed before.
    pub remote_cidr: Option<Ipv4Cidr>,
    /// Local route (via eth0) programmed before; `None` also when another tunnel of the same
    /// gateway still uses it.
    pub local_cidr: Option<Ipv4Cidr>,
}

/// Converge or check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Converge,
    Check,
}

const PRELUDE: &str = r#"set -u
changes=0
fail() { echo "multivpc: $*" >&2; exit 1; }
step() { d=$1; shift; changes=$((changes + 1)); echo "change: $d"; [ "$mode" = check ] && return 0; "$@" || fail "$d: command failed: $*"; }
command -v ip >/dev/null 2>&1 || fail "ip (iproute2) not found"
# iptables flavour: the one Kube-OVN nat-gateway.sh chooses.
ipt=iptables
if command -v iptables-legacy >/dev/null 2>&1 && iptables-legacy -t nat -S INPUT 1 >/dev/null 2>&1; then ipt=iptables-legacy; fi
command -v "$ipt" >/dev/null 2>&1 || fail "$ipt not found"
# One script at a time in this network namespace, also when an earlier exec timed out while its
# script still runs: a lock symlink keyed by the namespace, naming the holder PID. A holder
# that is gone is replaced; a lock that cannot be made at all (no writable /tmp) is skipped.
netns=$(readlink /proc/self/ns/net 2>/dev/null); netns=${netns#net:[}; netns=${netns%]}
lock="/tmp/multivpc-lock-${netns:-0}"
waited=0
until ln -s "$$" "$lock" 2>/dev/null; do
  [ -L "$lock" ] || { echo "note: cannot take $lock; going on without it" >&2; lock=; break; }
  holder=$(readlink "$lock" 2>/dev/null)
  if [ -n "$holder" ] && ! kill -0 "$holder" 2>/dev/null; then rm -f "$lock"; continue; fi
  waited=$((waited + 1))
  [ "$waited" -le 300 ] || fail "another multivpc script (PID $holder) has held $lock for 30s"
  sleep 0.1 2>/dev/null || sleep 1
done
[ -z "$lock" ] || trap 'rm -f "$lock"' EXIT
"#;

/// The POSTROUTING rules carrying `tag`, one per line of `$tagged`, as `iptables -S` prints
/// them without `-A POSTROUTING` and with the comment unquoted (iptables quotes a comment that
/// holds `:` or `/`), so each line split into words is that rule's own arguments again: a rule
/// is deleted by what it matches, never by a line number another writer may have shifted.
fn tagged_rules(tag: &RuleTag) -> String {
    let plain = tag.to_string();
    let pattern = plain.replace('.', "\\.");
    format!(
        "tagged=$($ipt -t nat -S POSTROUTING | grep -F -e {quoted_word} -e {plain_word} | sed {sed})\n",
        quoted_word = quote(&format!(" --comment \"{plain}\" ")),
        plain_word = quote(&format!(" --comment {plain} ")),
        sed = quote(&format!(
            "s|^-A POSTROUTING ||; s| --comment \"{pattern}\" | --comment {plain} |"
        )),
    )
}

/// Runs `step` with `description` on each rule of `$tagged` (see [`tagged_rules`]), deleting
/// it. A here-document, not a pipe: the loop runs in this shell, so `step` counts and fails it.
fn delete_tagged(description: &str) -> String {
    format!(
        "while IFS= read -r r; do\n  [ -n \"$r\" ] || continue\n  set -f\n  step \"{description}: $r\" $ipt -t nat -D POSTROUTING $r\n  set +f\ndone <<MULTIVPC_RULES\n$tagged\nMULTIVPC_RULES\n"
    )
}

fn epilogue() -> String {
    format!("echo \"{CHANGES_MARKER}$changes\"\n")
}

/// The converge (or, with [`Mode::Check`], the read-only check) script for `cfg`.
pub fn converge(cfg: &TunnelConfig, stale: &Stale, mode: Mode) -> String {
    let dev = q(&cfg.device);
    let mut s = String::new();
    s.push_str(&format!(
        "mode={}\n",
        quote(match mode {
            Mode::Converge => "converge",
            Mode::Check => "check",
        })
    ));
    s.push_str(PRELUDE);
    s.push_str(&format!("dev={dev}\n"));
    s.push_str(&format!(
        "[ -e /sys/class/net/{EXTERNAL_INTERFACE} ] || fail 'the gateway has no {EXTERNAL_INTERFACE} interface'\n"
    ));
    // Kube-OVN v1.12's nat-gateway.sh `init` turns ARP off on net1 and only `add_eip` (the
    // first IptablesEIP) turns it back on; v1.13 dropped the `arp off`. Without ARP the tunnel's
    // underlay packets cannot reach the peer, so it is turned on, as add_eip and later versions
    // leave it (docs/tunnel-manager.md, "Kube-OVN v1.12 and ARP on net1").
    s.push_str(&format!(
        "case \"$(ip -o link show dev {EXTERNAL_INTERFACE})\" in *'<NOARP,'*|*'<NOARP>'*|*',NOARP,'*|*',NOARP>'*) step \"ARP on {EXTERNAL_INTERFACE} (Kube-OVN v1.12 leaves it off until an EIP exists)\" ip link set dev {EXTERNAL_INTERFACE} arp on ;; esac\n"
    ));

    // Device: recreate when missing or when its alias or kernel parameters differ.
    let alias = q(cfg.device_alias());
    let mut expected = vec![
        format!("remote {} ", cfg.remote_ip),
        format!("local {} ", cfg.local_ip),
    ];
    let create = match cfg.encap {
        Encap::Gre => {
            expected.push("gre ".into());
            format!(
                "ip tunnel add \"$dev\" mode gre remote {} local {} ttl 255",
                q(cfg.remote_ip),
                q(cfg.local_ip)
            )
        }
        Encap::Vxlan { vni, port } => {
            expected.push(format!("vxlan id {} ", vni.get()));
            expected.push(format!("dstport {} ", port.get()));
            format!(
                "ip link add \"$dev\" type vxlan id {} remote {} local {} dev {EXTERNAL_INTERFACE} dstport {}",
                q(vni.get()),
                q(cfg.remote_ip),
                q(cfg.local_ip),
                q(port.get())
            )
        }
    };
    s.push_str("ok=1\n");
    s.push_str("if [ -e \"/sys/class/net/$dev\" ]; then\n");
    s.push_str(&format!(
        "  [ \"$(cat \"/sys/class/net/$dev/ifalias\" 2>/dev/null)\" = {alias} ] || ok=0\n"
    ));
    s.push_str("  details=\"$(ip -d link show dev \"$dev\" 2>/dev/null | tr '\\n' ' ') \"\n");
    for e in &expected {
        s.push_str(&format!(
            "  case \"$details\" in *{}*) ;; *) ok=0 ;; esac\n",
            quote(e)
        ));
    }
    // Replaced only when it is ours (alias) or a tunnel device of the same kind (the original
    // Go operator's, adopted); anything else of that name is someone else's and is left alone.
    s.push_str("  if [ \"$ok\" = 0 ]; then\n");
    s.push_str("    case \"$(cat \"/sys/class/net/$dev/ifalias\" 2>/dev/null)\" in\n");
    s.push_str("      'multivpc '*) ;;\n");
    let same_kind = match cfg.encap {
        Encap::Gre => "*'link/gre '*",
        Encap::Vxlan { .. } => "*' vxlan id '*",
    };
    s.push_str(&format!("      *) case \"$details\" in {same_kind}) ;; *) fail \"device $dev exists and is not ours (no multivpc alias, not a tunnel device of this kind): refusing to replace it\" ;; esac ;;\n"));
    s.push_str("    esac\n");
    s.push_str(
        "    step \"device $dev has other parameters: delete it\" ip link del dev \"$dev\"\n",
    );
    s.push_str("  fi\n");
    s.push_str("fi\n");
    s.push_str("if [ ! -e \"/sys/class/net/$dev\" ] || [ \"$ok\" = 0 ]; then\n");
    s.push_str(&format!("  step \"create device $dev\" {create}\n"));
    s.push_str(&format!(
        "  step \"label device $dev\" ip link set dev \"$dev\" alias {alias}\n"
    ));
    s.push_str("fi\n");
    // In check mode a missing device cannot be inspected further: it already counts.
    s.push_str("if [ -e \"/sys/class/net/$dev\" ]; then\n");
    if matches!(cfg.encap, Encap::Vxlan { .. }) {
        // VXLAN is L2: each end answers ARP for the Globalnet CIDR behind it, so that
        // `<remote cidr> dev <device>` works without knowing the peer's tunnel address.
        s.push_str("  pa=\"/proc/sys/net/ipv4/conf/$dev/proxy_arp\"\n");
        s.push_str("  [ \"$(cat \"$pa\" 2>/dev/null)\" = 1 ] || step \"proxy_arp on $dev\" sh -c 'echo 1 > \"$1\"' sh \"$pa\"\n");
    }
    // Address: exactly the wanted one.
    let addr = q(cfg.interface_addr);
    s.push_str(&format!("  want={addr}\n"));
    s.push_str("  have=$(ip -o -4 addr show dev \"$dev\" | awk '{ print $4 }')\n");
    s.push_str("  for a in $have; do [ \"$a\" = \"$want\" ] || step \"remove address $a from $dev\" ip addr del \"$a\" dev \"$dev\"; done\n");
    s.push_str("  case \" $(echo $have) \" in *\" $want \"*) ;; *) step \"address $want on $dev\" ip addr replace \"$want\" dev \"$dev\" ;; esac\n");
    s.push_str("  flags=$(cat \"/sys/class/net/$dev/flags\")\n");
    s.push_str("  [ $((flags & 1)) = 1 ] || step \"set $dev up\" ip link set dev \"$dev\" up\n");
    s.push_str("fi\n");

    // Routes.
    let local = q(cfg.local_cidr);
    let via = q(cfg.ovn_gateway);
    let remote = q(cfg.remote_cidr);
    s.push_str(&format!(
        "r=\"$(ip -4 route show exact {local} | tr '\\n' ' ') \"\n"
    ));
    s.push_str(&format!(
        "case \"$r\" in *\"via \"{via}\" dev {VPC_INTERFACE} proto {ROUTE_PROTO} \"*) ;; *) step \"route \"{local}\" via \"{via} ip route replace {local} via {via} dev {VPC_INTERFACE} proto {ROUTE_PROTO} ;; esac\n"
    ));
    s.push_str(&format!(
        "r=\"$(ip -4 route show exact {remote} | tr '\\n' ' ') \"\n"
    ));
    s.push_str(&format!(
        "case \"$r\" in *\"dev $dev proto {ROUTE_PROTO} \"*) ;; *) [ \"$mode\" = check ] || [ -e \"/sys/class/net/$dev\" ] || fail \"device $dev vanished\"; step \"route \"{remote}\" dev $dev\" ip route replace {remote} dev \"$dev\" proto {ROUTE_PROTO} ;; esac\n"
    ));
    if let Some(old) = stale.remote_cidr.filter(|c| *c != cfg.remote_cidr) {
        let old = q(old);
        s.push_str(&format!(
            "[ -z \"$(ip -4 route show exact {old} dev \"$dev\" proto {ROUTE_PROTO} 2>/dev/null)\" ] || step \"remove stale route \"{old} ip route del {old} dev \"$dev\" proto {ROUTE_PROTO}\n"
        ));
    }
    if let Some(old) = stale.local_cidr.filter(|c| *c != cfg.local_cidr) {
        let old = q(old);
        s.push_str(&format!(
            "[ -z \"$(ip -4 route show exact {old} dev {VPC_INTERFACE} proto {ROUTE_PROTO} 2>/dev/null)\" ] || step \"remove stale route \"{old} ip route del {old} dev {VPC_INTERFACE} proto {ROUTE_PROTO}\n"
        ));
    }

    // SNAT: exactly one rule tagged for this tunnel, and it is the wanted one.
    let tag = q(&cfg.tag);
    let to = q(cfg.snat);
    let rule = format!("-d {remote} -m comment --comment {tag} -j SNAT --to-source {to}");
    s.push_str(&tagged_rules(&cfg.tag));
    s.push_str(&format!(
        "if [ \"$(printf '%s\\n' \"$tagged\" | grep -c .)\" = 1 ] && $ipt -t nat -C POSTROUTING {rule} 2>/dev/null; then :; else\n"
    ));
    s.push_str(&delete_tagged("remove stale SNAT rule"));
    s.push_str(&format!(
        "  step \"SNAT to \"{to}\" for \"{remote} $ipt -t nat -I POSTROUTING 1 {rule}\n"
    ));
    s.push_str("fi\n");
    // The original Go operator's untagged rule for the same traffic (adoption). It ran plain
    // `iptables`, whichever flavour that was in the image, so every flavour present is searched;
    // names resolving to the same binary are searched once.
    let untagged = format!("-d {remote} -j SNAT --to-source {to}");
    s.push_str("seen=' '\n");
    s.push_str("for f in \"$ipt\" iptables iptables-legacy iptables-nft; do\n");
    s.push_str("  p=$(command -v \"$f\" 2>/dev/null) || continue\n");
    s.push_str("  p=$(readlink -f \"$p\" 2>/dev/null || echo \"$p\")\n");
    s.push_str("  case \"$seen\" in *\" $p \"*) continue ;; esac\n");
    s.push_str("  seen=\"$seen$p \"\n");
    s.push_str(&format!(
        "  if \"$f\" -t nat -C POSTROUTING {untagged} 2>/dev/null; then step \"remove untagged SNAT rule ($f)\" \"$f\" -t nat -D POSTROUTING {untagged}; fi\n"
    ));
    s.push_str("done\n");
    s.push_str(&epilogue());
    s
}

/// What cleanup removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupConfig {
    pub device: InterfaceName,
    /// False when another live tunnel of the same name has taken the device over: only this
    /// tunnel's tagged rules (and the routes given) go.
    pub delete_device: bool,
    pub tag: RuleTag,
    /// Remote route through the device, when one was programmed.
    pub remote_cidr: Option<Ipv4Cidr>,
    /// Local route via eth0, unless another tunnel of the gateway still uses it.
    pub local_cidr: Option<Ipv4Cidr>,
}

/// The cleanup script: removes the device, the routes and every rule tagged for the tunnel.
pub fn cleanup(cfg: &CleanupConfig) -> String {
    let mut s = String::from("mode='converge'\n");
    s.push_str(PRELUDE);
    s.push_str(&format!("dev={}\n", q(&cfg.device)));
    if let Some(remote) = cfg.remote_cidr {
        let remote = q(remote);
        s.push_str(&format!(
            "[ -z \"$(ip -4 route show exact {remote} dev \"$dev\" proto {ROUTE_PROTO} 2>/dev/null)\" ] || step \"remove route \"{remote} ip route del {remote} dev \"$dev\" proto {ROUTE_PROTO}\n"
        ));
    }
    if let Some(local) = cfg.local_cidr {
        let local = q(local);
        s.push_str(&format!(
            "[ -z \"$(ip -4 route show exact {local} dev {VPC_INTERFACE} proto {ROUTE_PROTO} 2>/dev/null)\" ] || step \"remove route \"{local} ip route del {local} dev {VPC_INTERFACE} proto {ROUTE_PROTO}\n"
        ));
    }
    if cfg.delete_device {
        // Only a device marked as ours: status says what was programmed, the pod confirms it.
        s.push_str("if [ -e \"/sys/class/net/$dev\" ]; then\n");
        s.push_str("  case \"$(cat \"/sys/class/net/$dev/ifalias\" 2>/dev/null)\" in\n");
        s.push_str("    'multivpc '*) step \"delete device $dev\" ip link del dev \"$dev\" ;;\n");
        s.push_str(
            "    *) echo \"note: device $dev has no multivpc alias: not ours, left in place\" ;;\n",
        );
        s.push_str("  esac\n");
        s.push_str("fi\n");
    }
    s.push_str(&tagged_rules(&cfg.tag));
    s.push_str(&delete_tagged("remove SNAT rule"));
    s.push_str(&epilogue());
    s
}

/// The number of changes a script reported (`multivpc-changes=<n>`), if it got that far.
pub fn reported_changes(stdout: &str) -> Option<u32> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(CHANGES_MARKER))
        .and_then(|n| n.parse().ok())
}

/// The `change: …` lines of a script's output.
pub fn change_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("change: "))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn vxlan() -> TunnelConfig {
        let device: InterfaceName = "vx1".parse().unwrap();
        TunnelConfig {
            tag: RuleTag::new("ns1", &device).unwrap(),
            device,
            encap: Encap::Vxlan {
                vni: Vni::new(100).unwrap(),
                port: Port::new(4789).unwrap(),
            },
            local_ip: "172.50.1.11".parse().unwrap(),
            remote_ip: "172.50.2.11".parse().unwrap(),
            interface_addr: "10.100.0.1/24".parse().unwrap(),
            local_cidr: "242.0.0.0/16".parse().unwrap(),
            ovn_gateway: "10.1.0.1".parse().unwrap(),
            remote_cidr: "242.1.0.0/16".parse().unwrap(),
            snat: EgressRange::new("242.0.0.1".parse().unwrap(), "242.0.0.8".parse().unwrap())
                .unwrap(),
        }
    }

    fn gre() -> TunnelConfig {
        let device: InterfaceName = "ovn-gre0".parse().unwrap();
        TunnelConfig {
            tag: RuleTag::new("ns1", &device).unwrap(),
            device,
            encap: Encap::Gre,
            ..vxlan()
        }
    }

    #[test]
    fn quote_neutralises_everything() {
        assert_eq!(quote("abc"), "'abc'");
        assert_eq!(quote("a'b"), "'a'\\''b'");
        assert_eq!(quote(""), "''");
        assert_eq!(
            quote("$(reboot); `id` \"x\" \\n"),
            "'$(reboot); `id` \"x\" \\n'"
        );
    }

    #[test]
    fn quoted_values_come_back_verbatim_from_sh() {
        for hostile in [
            "a'b",
            "$(touch /tmp/pwned)",
            "`id`",
            "x; rm -rf /",
            "'; exit 7; '",
            "\\'",
            "new\nline",
            "* ?",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(hostile)))
                .output()
                .unwrap();
            assert!(out.status.success());
            assert_eq!(String::from_utf8(out.stdout).unwrap(), hostile);
        }
    }

    #[test]
    fn typed_values_refuse_out_of_range() {
        assert!(Vni::new(0).is_err());
        assert!(Vni::new(MAX_VNI + 1).is_err());
        assert!(Vni::new(MAX_VNI).is_ok());
        assert!(Port::new(0).is_err());
        assert!(
            EgressRange::new("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()).is_err()
        );
        let name: InterfaceName = "vx1".parse().unwrap();
        for bad in [
            "",
            "NS",
            "a;b",
            "a b",
            "-a",
            "a-",
            "a/b",
            "$(id)",
            &"a".repeat(64),
        ] {
            assert!(RuleTag::new(bad, &name).is_err(), "{bad:?}");
        }
        assert_eq!(
            RuleTag::new("ns-1", &name).unwrap().as_str(),
            "multivpc-tunnel:ns-1/vx1"
        );
    }

    #[test]
    fn hostile_interface_names_never_become_values() {
        // The only way into a script is through InterfaceName, which refuses these.
        for bad in ["x;reboot", "$(id)", "a'b", "a b", "`x`", "eth0", "a\nb"] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vxlan_script_has_the_commands_of_the_issue() {
        let s = converge(&vxlan(), &Stale::default(), Mode::Converge);
        assert!(s.starts_with("mode='converge'\n"), "{s}");
        assert!(s.contains("dev='vx1'"), "{s}");
        assert!(s.contains(
            "ip link add \"$dev\" type vxlan id '100' remote '172.50.2.11' local '172.50.1.11' dev net1 dstport '4789'"
        ), "{s}");
        assert!(s.contains("want='10.100.0.1/24'"));
        assert!(s.contains("ip route replace '242.0.0.0/16' via '10.1.0.1' dev eth0"));
        assert!(s.contains("ip route replace '242.1.0.0/16' dev \"$dev\""));
        assert!(s.contains(
            "$ipt -t nat -I POSTROUTING 1 -d '242.1.0.0/16' -m comment --comment 'multivpc-tunnel:ns1/vx1' -j SNAT --to-source '242.0.0.1-242.0.0.8'"
        ), "{s}");
        assert!(s.contains("proxy_arp"));
        assert!(s.contains("iptables-legacy -t nat -S INPUT 1"));
        assert!(s.trim_end().ends_with("echo \"multivpc-changes=$changes\""));
        // No stale removal without a stale spec.
        assert!(!s.contains("remove stale route"));
    }

    #[test]
    fn gre_script_uses_ip_tunnel_with_ttl() {
        let s = converge(&gre(), &Stale::default(), Mode::Converge);
        assert!(
            s.contains(
                "ip tunnel add \"$dev\" mode gre remote '172.50.2.11' local '172.50.1.11' ttl 255"
            ),
            "{s}"
        );
        assert!(!s.contains("vxlan"));
        assert!(!s.contains("proxy_arp"), "GRE is point-to-point, no ARP");
        assert!(s.contains("'multivpc gre local=172.50.1.11 remote=172.50.2.11 ttl=255'"));
    }

    #[test]
    fn stale_routes_are_removed_only_when_they_differ() {
        let cfg = vxlan();
        let same = Stale {
            remote_cidr: Some(cfg.remote_cidr),
            local_cidr: Some(cfg.local_cidr),
        };
        assert!(!converge(&cfg, &same, Mode::Converge).contains("remove stale route"));
        let old = Stale {
            remote_cidr: Some("242.9.0.0/16".parse().unwrap()),
            local_cidr: Some("242.8.0.0/16".parse().unwrap()),
        };
        let s = converge(&cfg, &old, Mode::Converge);
        assert!(
            s.contains("ip route del '242.9.0.0/16' dev \"$dev\""),
            "{s}"
        );
        assert!(s.contains("ip route del '242.8.0.0/16' dev eth0"), "{s}");
    }

    #[test]
    fn check_mode_differs_only_in_the_mode_line() {
        let c = converge(&vxlan(), &Stale::default(), Mode::Converge);
        let k = converge(&vxlan(), &Stale::default(), Mode::Check);
        assert_eq!(
            c.replacen("mode='converge'", "mode='check'", 1),
            k,
            "one body, two modes"
        );
    }

    #[test]
    fn cleanup_removes_device_routes_and_tagged_rules() {
        let cfg = CleanupConfig {
            device: "vx1".parse().unwrap(),
            delete_device: true,
            tag: RuleTag::new("ns1", &"vx1".parse().unwrap()).unwrap(),
            remote_cidr: Some("242.1.0.0/16".parse().unwrap()),
            local_cidr: None,
        };
        let s = cleanup(&cfg);
        assert!(s.contains("ip link del dev \"$dev\""));
        assert!(s.contains("ip route del '242.1.0.0/16' dev \"$dev\""));
        assert!(!s.contains("dev eth0"), "shared local route kept: {s}");
        assert!(s.contains("' --comment multivpc-tunnel:ns1/vx1 '"), "{s}");
        let kept = cleanup(&CleanupConfig {
            delete_device: false,
            remote_cidr: None,
            ..cfg
        });
        assert!(
            !kept.contains("ip link del") && !kept.contains("ip route del"),
            "{kept}"
        );
        assert!(
            kept.contains("' --comment multivpc-tunnel:ns1/vx1 '"),
            "{kept}"
        );
    }

    #[test]
    fn every_single_quote_is_balanced() {
        // Each line must have an even number of single quotes outside of the `'\''` escape,
        // otherwise a value would have escaped its quoting.
        for s in [
            converge(&vxlan(), &Stale::default(), Mode::Converge),
            converge(&gre(), &Stale::default(), Mode::Check),
        ] {
            for line in s.lines() {
                assert_eq!(
                    line.matches('\'').count() % 2,
                    0,
                    "unbalanced quotes in {line}"
                );
            }
        }
    }

    #[test]
    fn scripts_parse_with_sh() {
        for s in [
            converge(&vxlan(), &Stale::default(), Mode::Converge),
            converge(
                &gre(),
                &Stale {
                    remote_cidr: Some("1.2.3.0/24".parse().unwrap()),
                    local_cidr: Some("1.2.4.0/24".parse().unwrap()),
                },
                Mode::Check,
            ),
            cleanup(&CleanupConfig {
                device: "vx1".parse().unwrap(),
                delete_device: true,
                tag: RuleTag::new("ns1", &"vx1".parse().unwrap()).unwrap(),
                remote_cidr: Some("242.1.0.0/16".parse().unwrap()),
                local_cidr: Some("242.0.0.0/16".parse().unwrap()),
            }),
        ] {
            let out = std::process::Command::new("sh")
                .arg("-n")
                .arg("-c")
                .arg(&s)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "sh -n refused:\n{s}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn output_parsing() {
        let out = "change: create device vx1\nchange: set vx1 up\nmultivpc-changes=2\n";
        assert_eq!(reported_changes(out), Some(2));
        assert_eq!(change_lines(out), ["create device vx1", "set vx1 up"]);
        assert_eq!(reported_changes("garbage"), None);
    }

    proptest::proptest! {
        #[test]
        fn quoting_round_trips_any_string(s in "\\PC{0,40}") {
            let quoted = quote(&s);
            // Inside single quotes only `'` is special; after splitting on the escape the
            // pieces must contain no quote at all.
            let inner = &quoted[1..quoted.len() - 1];
            for piece in inner.split("'\\''") {
                proptest::prop_assert!(!piece.contains('\''));
            }
        }
    }
}
