//! The shell scripts run inside a VPC NAT gateway pod (container `vpc-nat-gw`, POSIX sh on
//! alpine/busybox with iproute2 and iptables).
//!
//! Everything interpolated into a script comes from a typed, validated value ([`Ipv4Addr`],
//! [`Ipv4Cidr`], [`InterfaceName`], [`RuleTag`], integers) and is rendered single-quoted by
//! [`quote`], so no user string ever reaches the shell as code.
//!
//! Three scripts share one body:
//! - **converge** creates or fixes the device (its MTU included), address, routes, the SNAT rule
//!   and the two TCP MSS clamps, removes what an earlier spec left behind, and prints one
//!   `change: …` line per fix;
//! - **check** is the same walk in read-only mode: it only prints the `change: …` lines it would
//!   act on (the periodic drift verification);
//! - **cleanup** removes the device, the routes and every rule tagged for the tunnel.
//!
//! One script carries any number of tunnels of one gateway: the steps are shell functions
//! defined once, and each tunnel is one *section*, a call of one of them in a subshell between
//! markers ([`batch`], [`sections`]). Every section ends by printing `multivpc-changes=<n>`; a
//! failing command stops that section alone with exit status 1 and a `multivpc: …` line.
//!
//! The gateway's routes, addresses and rules are read once per script (the prelude), and the
//! sections' rule changes are written together at its end (`commit_rules`): asked per tunnel, `ip`
//! and `iptables` read whole tables, which made a gateway's cost grow with the square of its
//! tunnels.

use std::{fmt, net::Ipv4Addr};

use crate::ipsec::{self, Carrier, Keying};

use multivpc_api::{
    TunnelType,
    net::{InterfaceName, Ipv4Cidr},
    tunnel::{MAX_MTU, MAX_VNI, MIN_MTU},
};

/// The gateway pod's interface on the external network (Kube-OVN's `EXTERNAL_INTERFACE`).
pub const EXTERNAL_INTERFACE: &str = "net1";
/// Routing protocol number marking the routes tunnel-manager programs (`ip route … proto 178`).
/// Cleanup and stale-route removal delete only routes carrying it, so a status that names a
/// route someone else owns (Kube-OVN's, the user's) deletes nothing: the pod confirms what is
/// ours. 178 is unassigned in iproute2's rt_protos. The functions spell it out (and `eth0`, the
/// interface towards the VPC, Kube-OVN's `VPC_INTERFACE`); a test holds them to this.
#[cfg(test)]
const ROUTE_PROTO: u8 = 178;
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
    #[error("mtu {0} is outside {MIN_MTU}..={MAX_MTU}")]
    Mtu(u32),
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

/// A tunnel MTU asked for by `spec.mtu`, 576..=9000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mtu(u32);

impl Mtu {
    pub fn new(v: u32) -> Result<Self, ValueError> {
        if (MIN_MTU..=MAX_MTU).contains(&v) {
            Ok(Self(v))
        } else {
            Err(ValueError::Mtu(v))
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

    /// Bytes the encapsulation adds to each packet on the underlay: an outer IPv4 header and
    /// GRE's 4 bytes; or an outer IPv4 header, UDP, VXLAN and the inner Ethernet header.
    pub fn overhead(&self) -> u32 {
        match self {
            Self::Gre => 20 + 4,
            Self::Vxlan { .. } => 20 + 8 + 8 + 14,
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
    /// `spec.mtu`; `None`: net1's MTU less [`Encap::overhead`] (and ESP's), read in the pod.
    pub mtu: Option<Mtu>,
    /// ESP for the underlay (`spec.encryption: ipsec`).
    pub esp: Option<EspConfig>,
}

/// ESP between the tunnel's underlay addresses: what the policies select and this epoch's SAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspConfig {
    pub carrier: Carrier,
    pub keying: Keying,
}

/// An encrypted pair programmed before (its policies and SAs go when it changes or ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspPair {
    pub local_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    pub carrier: Carrier,
}

impl EspPair {
    fn words(&self) -> [String; 4] {
        [
            q(self.local_ip),
            q(self.remote_ip),
            q(self.carrier.selector()),
            q(ipsec::carrier_tag(self.carrier)),
        ]
    }
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
    /// Encrypted pair programmed before, when the current config has another or none.
    pub esp: Option<EspPair>,
}

/// Converge or check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Converge,
    Check,
}

/// Once per script: helpers, the iptables flavour and the gateway's lock.
const PRELUDE: &str = r#"set -u
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
nl='
'
# The gateway's routes, addresses and nat rules, read once per script: a tunnel whose parts are
# all found here as wanted runs no command of its own, and only what is not is looked at
# closely. Asked per tunnel, `ip` and `iptables` read whole tables on every call, and a gateway
# of 1000 tunnels spent most of its time starting them. Each line ends with a space; `count
# <dev> <n>` gives the number of addresses of a device and `<tag> <n>` that of rules with that
# comment (nat POSTROUTING in $tags, mangle FORWARD in $mangle_tags). The sections queue their
# rule changes and commit_rules writes them at the end, one iptables-restore per flavour and
# table.
count_tags() { printf '%s\n' "$1" | awk '{ for (i = 1; i < NF; i++) if ($i == "--comment") { t = $(i + 1); gsub(/"/, "", t); n[t]++ } } END { for (t in n) print t " " n[t] " " }'; }
nat="$nl$($ipt -t nat -S POSTROUTING)$nl" || fail "cannot list the nat table's POSTROUTING chain ($ipt)"
tags="$nl$(count_tags "$nat")$nl"
mangle="$nl$($ipt -t mangle -S FORWARD)$nl" || fail "cannot list the mangle table's FORWARD chain ($ipt)"
mangle_tags="$nl$(count_tags "$mangle")$nl"
routes="$nl$(ip -4 route show | sed 's/$/ /')$nl"
addrs="$nl$(ip -o -4 addr show | awk '{ n[$2]++; print $2 " " $4 " " } END { for (d in n) print "count " d " " n[d] " " }')$nl"
# Every iptables flavour present is read for the original Go operator's untagged rules (it ran
# plain `iptables`, whichever flavour that was); names resolving to one binary are read once.
flavours= untagged=$nl seen=' '
for f in "$ipt" iptables iptables-legacy iptables-nft; do
  p=$(command -v "$f" 2>/dev/null) || continue
  p=$(readlink -f "$p" 2>/dev/null || echo "$p")
  case "$seen" in *" $p "*) continue ;; esac
  seen="$seen$p "
  flavours="$flavours $f"
  if [ "$f" = "$ipt" ]; then rules=$nat; else rules=$("$f" -t nat -S POSTROUTING 2>/dev/null) || continue; fi
  untagged="$untagged$(printf '%s\n' "$rules" | awk -v f="$f" '/ -j SNAT / && !/ --comment / { print f " " $0 }')$nl"
done
ruleq=
"#;

/// The shell functions each tunnel's part of a script calls, defined once per script: a call is
/// one short line of quoted values, so one exec carries hundreds of tunnels within the length a
/// single `sh -c` argument may have.
const FUNCTIONS: &str = r#"# tagged_rules TAG RULES CHAIN: the rules tagged TAG in RULES (as `iptables -S CHAIN` printed
# them), one per line of $tagged, without `-A CHAIN` and with the comment unquoted (iptables
# quotes a comment holding `:` or `/`): each line split into words is that rule's own arguments
# again, so a rule is deleted by what it matches, never by a line number another writer may
# have shifted.
tagged_rules() {
  tagged=$(printf '%s\n' "$2" | awk -v t="$1" -v c="$3" '
    { q = index($0, " --comment \"" t "\" "); u = index($0, " --comment " t " ") }
    q || u {
      r = $0
      if (q) r = substr(r, 1, q - 1) " --comment " t " " substr(r, q + length(t) + 14)
      sub("^-A " c " ", "", r)
      print r
    }')
}
# queue FLAVOUR TABLE DESCRIPTION ARGS...: a change to an iptables table, counted and printed
# as step does, written by commit_rules after the last section.
queue() {
  f=$1 t=$2 d=$3
  shift 3
  changes=$((changes + 1))
  echo "change: $d"
  [ "$mode" = check ] || echo "multivpc-rule=$section_no $f $t $*"
}
# delete_tagged TABLE CHAIN DESCRIPTION: queues the deletion of each rule of $tagged.
delete_tagged() {
  while IFS= read -r r; do
    [ -n "$r" ] || continue
    set -f
    queue "$ipt" "$1" "$3: $r" -D "$2" $r
    set +f
  done <<MULTIVPC_RULES
$tagged
MULTIVPC_RULES
}
set_one() { echo 1 > "$1"; }
# has_route CIDR ROUTE: whether the route to CIDR reads `CIDR ROUTE …` (`via … dev eth0 proto
# 178`, `dev … proto 178`): in the prelude's copy, else as `ip` shows it now (another section
# of this script may have made it since).
has_route() {
  case "$routes" in *"$nl$1 $2 "*) return 0 ;; esac
  case "$(ip -4 route show exact "$1" | tr '\n' ' ') " in *"$2 "*) return 0 ;; esac
  return 1
}
# converge_tunnel MODE DEV gre|vxlan VNI PORT LOCAL_IP REMOTE_IP ADDR LOCAL_CIDR OVN_GW REMOTE_CIDR
#                 SNAT TAG ALIAS STALE_REMOTE STALE_LOCAL MTU OVERHEAD
#                 ESP_LINES ESP_SELECTOR ESP_OUT_REQID ESP_TAG ESP_SAS
#                 STALE_ESP_LOCAL STALE_ESP_REMOTE STALE_ESP_SELECTOR STALE_ESP_TAG
# (MTU empty: net1's MTU less OVERHEAD, the encapsulation's bytes. ESP_SELECTOR empty: no
# encryption; a STALE_ESP_* pair, when given, is an earlier encrypted pair to remove.)
converge_tunnel() {
  mode=$1 dev=$2 encap=$3 vni=$4 port=$5 lip=$6 rip=$7 addr=$8 lcidr=$9
  shift 9
  via=$1 rcidr=$2 snat=$3 tag=$4 alias=$5 stale_r=$6 stale_l=$7 mtu=$8 overhead=$9
  shift 9
  # Keys first: they are on stdin whatever happens next, and the sections after this one read
  # theirs after them. Then the policies and SAs, before the device: no packet of an encrypted
  # tunnel ever leaves in clear.
  esp_read "${1:-0}"
  [ -z "${6:-}" ] || cleanup_esp "$6" "$7" "$8" "$9"
  [ -z "${2:-}" ] || converge_esp "$1" "$2" "$3" "$4" "$5"
  [ -e /sys/class/net/net1 ] || fail 'the gateway has no net1 interface'
  if [ -z "$mtu" ]; then
    read -r m < /sys/class/net/net1/mtu || fail 'cannot read the MTU of net1'
    mtu=$((m - overhead))
  fi
  echo "multivpc-mtu=$mtu"
  # Kube-OVN v1.12's nat-gateway.sh `init` turns ARP off on net1 and only `add_eip` turns it
  # back on; without ARP the underlay packets cannot reach the peer (docs/tunnel-manager.md).
  read -r f < /sys/class/net/net1/flags || fail 'cannot read the flags of net1'
  [ $((f & 128)) = 0 ] || step "ARP on net1 (Kube-OVN v1.12 leaves it off until an EIP exists)" ip link set dev net1 arp on
  # Device: recreated when missing or when its alias or kernel parameters differ.
  if [ "$encap" = gre ]; then
    set -- "remote $rip " "local $lip " "gre "; same_kind='link/gre '
  else
    set -- "remote $rip " "local $lip " "vxlan id $vni " "dstport $port "; same_kind=' vxlan id '
  fi
  ok=1
  if [ -e "/sys/class/net/$dev" ]; then
    have_alias=
    read -r have_alias < "/sys/class/net/$dev/ifalias" 2>/dev/null || :
    [ "$have_alias" = "$alias" ] || ok=0
    details="$(ip -d link show dev "$dev" 2>/dev/null | tr '\n' ' ') "
    for e in "$@"; do case "$details" in *"$e"*) ;; *) ok=0 ;; esac; done
    # Replaced only when it is ours (alias) or a tunnel device of the same kind (the original
    # Go operator's, adopted); anything else of that name is someone else's and stays.
    if [ "$ok" = 0 ]; then
      case "$have_alias" in
        'multivpc '*) ;;
        *) case "$details" in *"$same_kind"*) ;; *) fail "device $dev exists and is not ours (no multivpc alias, not a tunnel device of this kind): refusing to replace it" ;; esac ;;
      esac
      step "device $dev has other parameters: delete it" ip link del dev "$dev"
    fi
  fi
  # A device made here has none of the addresses and routes read before: they are looked up.
  made=0
  if [ ! -e "/sys/class/net/$dev" ] || [ "$ok" = 0 ]; then
    made=1
    if [ "$encap" = gre ]; then
      step "create device $dev" ip tunnel add "$dev" mode gre remote "$rip" local "$lip" ttl 255
    else
      step "create device $dev" ip link add "$dev" type vxlan id "$vni" remote "$rip" local "$lip" dev net1 dstport "$port"
    fi
    step "label device $dev and set it up" ip link set dev "$dev" alias "$alias" up
  fi
  # In check mode a missing device cannot be inspected further: it already counts.
  if [ -e "/sys/class/net/$dev" ]; then
    # VXLAN is L2: each end answers ARP for the Globalnet CIDR behind it, so that
    # `<remote cidr> dev <device>` works without knowing the peer's tunnel address.
    if [ "$encap" = vxlan ]; then
      pa="/proc/sys/net/ipv4/conf/$dev/proxy_arp"
      v=
      read -r v < "$pa" 2>/dev/null || :
      [ "$v" = 1 ] || step "proxy_arp on $dev" set_one "$pa"
    fi
    # Address: exactly the wanted one.
    case "$made$addrs" in
      0*"$nl$dev $addr "*"${nl}count $dev 1 "*) ;;
      1*) step "address $addr on $dev" ip addr replace "$addr" dev "$dev" ;;
      *)
        have=$(ip -o -4 addr show dev "$dev" | awk '{ print $4 }')
        for a in $have; do [ "$a" = "$addr" ] || step "remove address $a from $dev" ip addr del "$a" dev "$dev"; done
        case " $(echo $have) " in *" $addr "*) ;; *) step "address $addr on $dev" ip addr replace "$addr" dev "$dev" ;; esac ;;
    esac
    read -r f < "/sys/class/net/$dev/flags" || fail "cannot read the flags of $dev"
    [ $((f & 1)) = 1 ] || step "set $dev up" ip link set dev "$dev" up
    read -r m < "/sys/class/net/$dev/mtu" || fail "cannot read the MTU of $dev"
    [ "$m" = "$mtu" ] || step "MTU $mtu on $dev (was $m)" ip link set dev "$dev" mtu "$mtu"
  fi
  # Routes.
  has_route "$lcidr" "via $via dev eth0 proto 178" || step "route $lcidr via $via" ip route replace "$lcidr" via "$via" dev eth0 proto 178
  if [ "$made" = 1 ] || ! has_route "$rcidr" "dev $dev proto 178"; then
    [ "$mode" = check ] || [ -e "/sys/class/net/$dev" ] || fail "device $dev vanished"
    step "route $rcidr dev $dev" ip route replace "$rcidr" dev "$dev" proto 178
  fi
  if [ -n "$stale_r" ] && [ -n "$(ip -4 route show exact "$stale_r" dev "$dev" proto 178 2>/dev/null)" ]; then step "remove stale route $stale_r" ip route del "$stale_r" dev "$dev" proto 178; fi
  if [ -n "$stale_l" ] && [ -n "$(ip -4 route show exact "$stale_l" dev eth0 proto 178 2>/dev/null)" ]; then step "remove stale route $stale_l" ip route del "$stale_l" dev eth0 proto 178; fi
  # SNAT: exactly one rule tagged for this tunnel, and it is the wanted one. The text is
  # compared first, spelt as `iptables -S` prints it (a range of one address as that address);
  # a rule spelt otherwise is asked about.
  to=$snat one=${snat%%-*}
  [ "$one-$one" != "$snat" ] || to=$one
  want="-d $rcidr -m comment --comment $tag -j SNAT --to-source $to"
  tagged=
  case "$tags" in *"$nl$tag 1 "*)
    case "$nat" in *"$nl-A POSTROUTING -d $rcidr -m comment --comment \"$tag\" -j SNAT --to-source $to$nl"*|*"$nl-A POSTROUTING $want$nl"*) tagged=$want ;; esac ;;
  esac
  [ "$tagged" = "$want" ] || tagged_rules "$tag" "$nat" POSTROUTING
  snat_ok=0
  case "$tagged" in
    "$want") snat_ok=1 ;;
    *"$nl"*|'') ;;
    *) ! $ipt -t nat -C POSTROUTING -d "$rcidr" -m comment --comment "$tag" -j SNAT --to-source "$snat" 2>/dev/null || snat_ok=1 ;;
  esac
  if [ "$snat_ok" = 0 ]; then
    delete_tagged nat POSTROUTING "remove stale SNAT rule"
    queue "$ipt" nat "SNAT to $snat for $rcidr" -I POSTROUTING 1 $want
  fi
  # The original Go operator's untagged rule for the same traffic (adoption), in any flavour.
  for f in $flavours; do
    case "$untagged" in *"$nl$f -A POSTROUTING -d $rcidr -j SNAT --to-source $to$nl"*) queue "$f" nat "remove untagged SNAT rule ($f)" -D POSTROUTING -d "$rcidr" -j SNAT --to-source "$snat" ;; esac
  done
  # TCP MSS: SYNs forwarded into and out of the device clamped to what its MTU carries, so a
  # path that drops ICMP "fragmentation needed" cannot stall TCP. Exactly these two rules.
  mss=$((mtu - 40))
  clamp="-p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment"
  clamp_to="-j TCPMSS --set-mss $mss"
  case "$mangle_tags$mangle" in
    *"$nl$tag 2 "*"$nl-A FORWARD -i $dev $clamp \"$tag\" $clamp_to$nl"*"$nl-A FORWARD -o $dev $clamp \"$tag\" $clamp_to$nl"*) ;;
    *"$nl$tag 2 "*"$nl-A FORWARD -o $dev $clamp \"$tag\" $clamp_to$nl"*"$nl-A FORWARD -i $dev $clamp \"$tag\" $clamp_to$nl"*) ;;
    *)
      tagged_rules "$tag" "$mangle" FORWARD
      case "$tagged" in
        "-i $dev $clamp $tag $clamp_to$nl-o $dev $clamp $tag $clamp_to"|"-o $dev $clamp $tag $clamp_to$nl-i $dev $clamp $tag $clamp_to") ;;
        *)
          delete_tagged mangle FORWARD "remove stale MSS rule"
          set -f
          queue "$ipt" mangle "clamp TCP MSS to $mss into $dev" -I FORWARD 1 -o "$dev" $clamp "$tag" $clamp_to
          queue "$ipt" mangle "clamp TCP MSS to $mss out of $dev" -I FORWARD 1 -i "$dev" $clamp "$tag" $clamp_to
          set +f ;;
      esac ;;
  esac
}
# esp_read N: the next N lines of stdin (the `ip -batch` lines adding this tunnel's ESP SAs,
# which hold keys) into $esp_batch. They stay in this shell's memory: `read` and `printf` are
# builtins, so no process's argv and no file ever holds a key.
esp_read() {
  esp_batch= i=0
  while [ "$i" -lt "$1" ]; do
    IFS= read -r l || fail "the script's input ended before this tunnel's keys"
    esp_batch="$esp_batch$l$nl"
    i=$((i + 1))
  done
}
# esp_spis SRC DST TAG: "SPI REQID" of each ESP SA from SRC to DST whose reqid carries TAG (the
# carrier's part: another tunnel kind between the same addresses has its own). Keys are read
# past, never printed.
esp_spis() {
  ip xfrm state list src "$1" dst "$2" proto esp 2>/dev/null |
    sed -n 's/^.*proto esp spi \(0x[0-9a-f]*\) reqid \([0-9]*\) .*$/\1 \2/p' |
    while read -r spi req; do [ $((req >> 20)) = "$3" ] && echo "$spi"; done
}
# esp_key TEXT: the AEAD key in TEXT (an SA as `ip xfrm` prints it, or a batch line adding
# one) into $esp_k. Parameter expansions only: the key is never in an argv.
esp_key() {
  esp_k=${1#*"aead rfc4106(gcm(aes)) "}
  esp_k=${esp_k%%[!0-9a-fx]*}
}
# esp_line SPI: the line of $esp_batch adding SA SPI into $esp_l (empty when there is none).
esp_line() {
  esp_l= rest=$esp_batch
  while [ -n "$rest" ]; do
    l=${rest%%"$nl"*}
    rest=${rest#*"$nl"}
    case "$l" in *" spi $1 "*) esp_l=$l; break ;; esac
  done
  l= rest=
}
# esp_diff LINES: the SAs of $sas ("src,dst,spi" each) the kernel lacks into $missing, and,
# when keys were given (LINES > 0), those it holds with another key into $rekey (the SPIs do
# not depend on the pre-shared key, so a new key keeps them).
esp_diff() {
  missing= rekey=
  for sa in $sas; do
    IFS=, read -r s d spi <<MULTIVPC_SA
$sa
MULTIVPC_SA
    if ! esp_cur=$(ip xfrm state get src "$s" dst "$d" proto esp spi "$spi" 2>/dev/null); then
      missing="$missing $spi"
    elif [ "$1" -gt 0 ]; then
      esp_line "$spi"
      esp_key "$esp_l"
      esp_want=$esp_k
      esp_key "$esp_cur"
      [ "$esp_k" = "$esp_want" ] || rekey="$rekey $spi"
    fi
  done
  esp_cur= esp_l= esp_want= esp_k=
}
# converge_esp LINES SELECTOR OUT_REQID TAG SAS (lip, rip, mode set): the SAs named in SAS
# ("src,dst,spi" each) present with the keys of $esp_batch, added (or replaced) from it when
# one is missing (or holds another key); no other SA of this pair and carrier; the outbound
# policy on this epoch's SA (OUT_REQID) and the inbound one demanding ESP, so that clear
# packets of the tunnel are neither sent nor taken.
converge_esp() {
  sel=$2 oreq=$3 etag=$4 sas=" $5 "
  esp_diff "$1"
  if [ -n "$missing$rekey" ]; then
    [ "$mode" = check ] || [ "$1" -gt 0 ] || fail "ESP security associations$missing are missing and no keys were given"
    changes=$((changes + 1))
    [ -z "$missing" ] || echo "change: ESP security associations$missing between $lip and $rip"
    [ -z "$rekey" ] || echo "change: ESP security associations$rekey between $lip and $rip rekeyed (another pre-shared key)"
    if [ "$mode" != check ]; then
      # Only the missing ones and those to replace (the kernel changes no key in place):
      # `ip xfrm` ends a batch at its first error (`-force` or not), and one present already
      # is "File exists". The lines are walked with parameter expansions, not a
      # here-document, which some shells keep in a temporary file.
      add= rest=$esp_batch
      while [ -n "$rest" ]; do
        l=${rest%%"$nl"*}
        rest=${rest#*"$nl"}
        for spi in $missing; do case "$l" in *" spi $spi "*) add="$add$l$nl" ;; esac; done
        for spi in $rekey; do
          case "$l" in *" spi $spi "*) id=${l#xfrm state add }; add="${add}xfrm state delete ${id%% reqid *}$nl$l$nl" ;; esac
        done
      done
      printf '%s' "$add" | ip -batch - >/dev/null 2>&1 || :
      add= l= id=
      esp_diff "$1"
      [ -z "$missing$rekey" ] ||
        fail "the kernel refused ESP security associations$missing$rekey between $lip and $rip: it needs the esp4 and xfrm_user modules and rfc4106(gcm(aes))"
    fi
  fi
  set -f
  case "$(ip xfrm policy get src "$lip/32" dst "$rip/32" $sel dir out 2>/dev/null | tr '\n' ' ')" in
    *"tmpl src $lip dst $rip"*"proto esp reqid $oreq mode transport"*) ;;
    *) step "ESP policy out to $rip (SA reqid $oreq)" ip xfrm policy update src "$lip/32" dst "$rip/32" $sel dir out tmpl src "$lip" dst "$rip" proto esp reqid "$oreq" mode transport ;;
  esac
  case "$(ip xfrm policy get src "$rip/32" dst "$lip/32" $sel dir in 2>/dev/null | tr '\n' ' ')" in
    *"tmpl src $rip dst $lip"*"proto esp reqid 0 mode transport"*) ;;
    *) step "ESP policy in from $rip" ip xfrm policy update src "$rip/32" dst "$lip/32" $sel dir in tmpl src "$rip" dst "$lip" proto esp mode transport ;;
  esac
  set +f
  # Stale SAs last: the outbound policy no longer points at any of them.
  for pair in "$lip $rip" "$rip $lip"; do
    set -- $pair
    for spi in $(esp_spis "$1" "$2" "$etag"); do
      case "$sas" in *" $1,$2,$spi "*) ;; *) step "remove ESP security association $spi ($1 to $2)" ip xfrm state delete src "$1" dst "$2" proto esp spi "$spi" ;; esac
    done
  done
}
# cleanup_esp LOCAL REMOTE SELECTOR TAG: the policies of that pair and carrier, and its SAs.
cleanup_esp() {
  etag=$4
  set -f
  if ip xfrm policy get src "$1/32" dst "$2/32" $3 dir out >/dev/null 2>&1; then step "remove ESP policy out to $2" ip xfrm policy delete src "$1/32" dst "$2/32" $3 dir out; fi
  if ip xfrm policy get src "$2/32" dst "$1/32" $3 dir in >/dev/null 2>&1; then step "remove ESP policy in from $2" ip xfrm policy delete src "$2/32" dst "$1/32" $3 dir in; fi
  set +f
  for pair in "$1 $2" "$2 $1"; do
    set -- $pair
    for spi in $(esp_spis "$1" "$2" "$etag"); do
      step "remove ESP security association $spi ($1 to $2)" ip xfrm state delete src "$1" dst "$2" proto esp spi "$spi"
    done
  done
}
# cleanup_tunnel DEV DELETE_DEVICE(1|0) TAG REMOTE_CIDR LOCAL_CIDR
#                [ESP_LOCAL ESP_REMOTE ESP_SELECTOR ESP_TAG] (either route may be empty)
cleanup_tunnel() {
  mode=converge dev=$1 delete_dev=$2 tag=$3 rcidr=$4 lcidr=$5
  [ "$#" -lt 9 ] || [ -z "$6" ] || cleanup_esp "$6" "$7" "$8" "$9"
  if [ -n "$rcidr" ] && [ -n "$(ip -4 route show exact "$rcidr" dev "$dev" proto 178 2>/dev/null)" ]; then step "remove route $rcidr" ip route del "$rcidr" dev "$dev" proto 178; fi
  if [ -n "$lcidr" ] && [ -n "$(ip -4 route show exact "$lcidr" dev eth0 proto 178 2>/dev/null)" ]; then step "remove route $lcidr" ip route del "$lcidr" dev eth0 proto 178; fi
  # Only a device marked as ours: status says what was programmed, the pod confirms it.
  if [ "$delete_dev" = 1 ] && [ -e "/sys/class/net/$dev" ]; then
    case "$(cat "/sys/class/net/$dev/ifalias" 2>/dev/null)" in
      'multivpc '*) step "delete device $dev" ip link del dev "$dev" ;;
      *) echo "note: device $dev has no multivpc alias: not ours, left in place" ;;
    esac
  fi
  tagged_rules "$tag" "$nat" POSTROUTING
  delete_tagged nat POSTROUTING "remove SNAT rule"
  tagged_rules "$tag" "$mangle" FORWARD
  delete_tagged mangle FORWARD "remove MSS rule"
}
# section N FUNCTION ARGS...: one tunnel's part, in a subshell (its variables and its failure
# stay its own), stderr with stdout, between markers the executor splits the output by. Its
# queued rule changes are kept for commit_rules.
section() {
  section_no=$1
  shift
  out=$( { trap - EXIT; changes=0; "$@"; echo "multivpc-changes=$changes"; } 2>&1 )
  rc=$?
  echo "multivpc-section=$section_no"
  printf '%s\n' "$out"
  echo "multivpc-section-status=$rc"
  [ "$rc" = 0 ] || status=$rc
  case "$out" in *multivpc-rule=*) ruleq="$ruleq$(printf '%s\n' "$out" | sed -n 's/^multivpc-rule=//p')$nl" ;; esac
}
# Writes the queued rule changes: per flavour and table, all in one iptables-restore (which
# applies all or nothing); when that fails or there is none, one at a time, each failure its
# section's (printed as that section again). A section that queued a change counts as finished
# only once the closing marker is printed.
commit_rules() {
  [ -n "$ruleq" ] || return 0
  for f in $flavours; do
    for t in nat mangle; do
      lines=$(printf '%s' "$ruleq" | awk -v f="$f" -v t="$t" '$2 == f && $3 == t { $1 = ""; $2 = ""; $3 = ""; sub(/^ +/, ""); print }')
      [ -n "$lines" ] || continue
      if command -v "$f-restore" >/dev/null 2>&1 && printf '*%s\n%s\nCOMMIT\n' "$t" "$lines" | "$f-restore" --noflush 2>/dev/null; then continue; fi
      while read -r n qf qt args; do
        [ "$qf" = "$f" ] && [ "$qt" = "$t" ] || continue
        set -f
        if ! err=$("$f" -t "$t" $args 2>&1); then
          printf 'multivpc-section=%s\nmultivpc: %s -t %s %s failed: %s\nmultivpc-section-status=1\n' "$n" "$f" "$t" "$args" "$err"
          status=1
        fi
        set +f
      done <<MULTIVPC_RULES
$ruleq
MULTIVPC_RULES
    done
  done
}
status=0
"#;

/// Marker opening a section's output: `multivpc-section=<n>`.
pub const SECTION_MARKER: &str = "multivpc-section=";
/// Marker closing it with the section's exit status: `multivpc-section-status=<code>`.
pub const SECTION_STATUS_MARKER: &str = "multivpc-section-status=";

/// One tunnel's part of a script: a call of one of the script's functions with quoted values,
/// and the lines it reads from the script's stdin (keys: never formatted).
#[derive(Clone, PartialEq, Eq)]
pub struct Call {
    text: String,
    stdin: Vec<String>,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Call({:?}, {} stdin lines)", self.text, self.stdin.len())
    }
}

impl Call {
    /// Converges (or, with [`Mode::Check`], only checks) the tunnel `cfg`; `stale` names what
    /// an earlier spec programmed that this one no longer wants.
    pub fn converge(cfg: &TunnelConfig, stale: &Stale, mode: Mode) -> Self {
        let (encap, vni, port) = match cfg.encap {
            Encap::Gre => ("gre", String::new(), String::new()),
            Encap::Vxlan { vni, port } => ("vxlan", vni.get().to_string(), port.get().to_string()),
        };
        let opt = |c: Option<Ipv4Cidr>| c.map(q).unwrap_or_else(|| "''".into());
        let words = [
            q(match mode {
                Mode::Converge => "converge",
                Mode::Check => "check",
            }),
            q(&cfg.device),
            q(encap),
            q(vni),
            q(port),
            q(cfg.local_ip),
            q(cfg.remote_ip),
            q(cfg.interface_addr),
            q(cfg.local_cidr),
            q(cfg.ovn_gateway),
            q(cfg.remote_cidr),
            q(cfg.snat),
            q(&cfg.tag),
            q(cfg.device_alias()),
            opt(stale.remote_cidr.filter(|c| *c != cfg.remote_cidr)),
            opt(stale.local_cidr.filter(|c| *c != cfg.local_cidr)),
            cfg.mtu.map(|m| q(m.get())).unwrap_or_else(|| "''".into()),
            q(cfg.encap.overhead() + cfg.esp.as_ref().map_or(0, |_| ipsec::ESP_OVERHEAD)),
        ];
        // Keys to check too: a new pre-shared key keeps the SPIs, only the keys tell.
        let stdin: Vec<String> = match &cfg.esp {
            Some(esp) => esp.keying.all().map(|sa| sa.batch_line()).collect(),
            None => vec![],
        };
        let esp = match &cfg.esp {
            Some(esp) => vec![
                q(stdin.len()),
                q(esp.carrier.selector()),
                q(esp.keying.outbound.reqid),
                q(ipsec::carrier_tag(esp.carrier)),
                q(esp
                    .keying
                    .all()
                    .map(|sa| format!("{},{},{:#010x}", sa.src, sa.dst, sa.spi))
                    .collect::<Vec<_>>()
                    .join(" ")),
            ],
            None => vec![],
        };
        // A pair programmed before and not the one wanted now.
        let wanted = cfg.esp.as_ref().map(|e| EspPair {
            local_ip: cfg.local_ip,
            remote_ip: cfg.remote_ip,
            carrier: e.carrier,
        });
        let stale_esp = stale.esp.filter(|p| Some(*p) != wanted);
        // The ESP words only when there is ESP to program or remove: most tunnels have none,
        // and every byte counts against the exec URI ([`call_budget`]).
        let mut all: Vec<String> = words.into();
        if let Some(stale_esp) = &stale_esp {
            let mut esp = esp;
            esp.resize(5, "''".to_owned());
            esp[0] = q(stdin.len());
            all.extend(esp);
            all.extend(stale_esp.words());
        } else {
            all.extend(esp);
        }
        Self {
            text: format!("converge_tunnel {}", all.join(" ")),
            stdin,
        }
    }

    /// Removes the tunnel `cfg` (device, routes, every rule tagged for it).
    pub fn cleanup(cfg: &CleanupConfig) -> Self {
        let opt = |c: Option<Ipv4Cidr>| c.map(q).unwrap_or_else(|| "''".into());
        Self {
            text: format!(
                "cleanup_tunnel {} {} {} {} {}{}",
                q(&cfg.device),
                if cfg.delete_device { "1" } else { "0" },
                q(&cfg.tag),
                opt(cfg.remote_cidr),
                opt(cfg.local_cidr),
                cfg.esp
                    .as_ref()
                    .map(|p| format!(" {}", p.words().join(" ")))
                    .unwrap_or_default(),
            ),
            stdin: vec![],
        }
    }

    /// Bytes this call adds to a script as it travels: `pods/exec` carries the command in the
    /// request URI, form-encoded ([`encoded_len`]).
    pub fn len(&self) -> usize {
        encoded_len(&self.text) + encoded_len("section 0000 \n")
    }
}

/// Encoded bytes of a script's command in the `pods/exec` URI at most: the client refuses a URI
/// over 64 KiB ("uri too long"), and the path and the other parameters need some.
pub const MAX_ENCODED_SCRIPT: usize = 60_000;

/// Bytes of `s` once form-encoded as a URI query value, as the exec request carries it: ASCII
/// letters, digits and `*-._` stay, a space becomes `+`, every other byte `%XX`.
pub fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"*-._ ".contains(&b) {
                1
            } else {
                3
            }
        })
        .sum()
}

/// Encoded bytes the calls of one script may take ([`Call::len`] each): what the prelude and the
/// functions leave of [`MAX_ENCODED_SCRIPT`].
pub fn call_budget() -> usize {
    MAX_ENCODED_SCRIPT - encoded_len(shared()) - encoded_len(EPILOGUE)
}

/// The prelude and the functions as a script carries them: without their comment lines, which
/// are for the reader of this file and would take a tenth of the exec URI.
fn shared() -> &'static str {
    static SHARED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("{PRELUDE}{FUNCTIONS}")
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| [l, "\n"])
            .collect()
    });
    &SHARED
}

const EPILOGUE: &str = "commit_rules\necho multivpc-rules-committed\nexit \"$status\"\n";

/// The script running `calls` in order, each as its own section (see [`sections`]). It exits
/// with the status of the last section that failed (0 when none did); a failure before the
/// first section (no `ip`, the lock held for too long) fails them all.
pub fn batch<'a>(calls: impl IntoIterator<Item = &'a Call>) -> String {
    let mut s = String::from(shared());
    for (i, call) in calls.into_iter().enumerate() {
        s.push_str(&format!("section {i} {}\n", call.text));
    }
    s.push_str(EPILOGUE);
    s
}

/// What the script of `calls` reads on stdin: each call's lines, in the calls' order (each
/// section reads exactly its own). Empty when no call has any. It holds keys: it is written to
/// the exec's stdin and nowhere else.
pub fn batch_stdin<'a>(calls: impl IntoIterator<Item = &'a Call>) -> Vec<u8> {
    let mut out = Vec::new();
    for line in calls.into_iter().flat_map(|c| &c.stdin) {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The converge (or, with [`Mode::Check`], the read-only check) script for `cfg` alone.
#[cfg(test)]
pub fn converge(cfg: &TunnelConfig, stale: &Stale, mode: Mode) -> String {
    batch([&Call::converge(cfg, stale, mode)])
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
    /// The encrypted pair programmed, whose policies and SAs go too.
    pub esp: Option<EspPair>,
}

/// The cleanup script for `cfg` alone.
#[cfg(test)]
pub fn cleanup(cfg: &CleanupConfig) -> String {
    batch([&Call::cleanup(cfg)])
}

/// What one section of a script printed (stdout and stderr together) and its exit status;
/// `None` for a section whose end the output does not reach (the script died or its output was
/// cut).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionOutput {
    pub text: String,
    pub status: Option<i32>,
}

/// Marker of a rule change a section queued: `multivpc-rule=<section> <flavour> <table>
/// <arguments>`.
const RULE_QUEUED_MARKER: &str = "multivpc-rule=";
/// Line the script prints once the queued rule changes are written (or their failures printed).
const RULES_COMMITTED: &str = "multivpc-rules-committed";
/// Marker of the MTU a converge section gave (or, checking, wants for) the device.
const MTU_MARKER: &str = "multivpc-mtu=";

/// Splits a script's stdout into its sections' outputs, by section number. A section printed
/// again (a queued nat change of it that failed) adds its text, and its failure if it had
/// none. A section that queued a nat change has not finished (status `None`) unless the script
/// got as far as writing them.
pub fn sections(stdout: &str) -> std::collections::BTreeMap<usize, SectionOutput> {
    let mut out = std::collections::BTreeMap::<usize, SectionOutput>::new();
    let mut add = |i: usize, text: String, status: Option<i32>| match out.get_mut(&i) {
        Some(earlier) => {
            earlier.text.push_str(&text);
            if earlier.status == Some(0) {
                earlier.status = status;
            }
        }
        None => {
            out.insert(i, SectionOutput { text, status });
        }
    };
    let mut current: Option<(usize, String)> = None;
    let mut committed = false;
    for line in stdout.lines() {
        if let Some(n) = line
            .strip_prefix(SECTION_MARKER)
            .and_then(|n| n.parse().ok())
        {
            if let Some((i, text)) = current.take() {
                add(i, text, None);
            }
            current = Some((n, String::new()));
        } else if let Some(code) = line.strip_prefix(SECTION_STATUS_MARKER) {
            if let Some((i, text)) = current.take() {
                add(i, text, code.trim().parse().ok());
            }
        } else if line == RULES_COMMITTED && current.is_none() {
            committed = true;
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((i, text)) = current {
        add(i, text, None);
    }
    if !committed {
        for section in out.values_mut() {
            if section
                .text
                .lines()
                .any(|l| l.starts_with(RULE_QUEUED_MARKER))
            {
                section.status = section.status.filter(|s| *s != 0);
            }
        }
    }
    out
}

/// The MTU a converge section gave the device (or, checking, wants for it), if it got that far.
pub fn reported_mtu(stdout: &str) -> Option<u32> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(MTU_MARKER))
        .and_then(|n| n.parse().ok())
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

/// One tunnel's probe: its far end's address, pinged out of its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub device: InterfaceName,
    pub target: Ipv4Addr,
    /// An encrypted tunnel's inbound SAs, whose authentication failures the probe reads.
    pub esp: Option<EspInbound>,
}

/// The SAs of an encrypted tunnel's inbound direction: from the far end's underlay address to
/// this one's, of the carrier whose reqid tag is `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspInbound {
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
    pub tag: u32,
}

/// Probes run at once inside a pod (each is a `ping` process for up to the timeout).
const PROBES_IN_PARALLEL: usize = 64;
/// Marker of one probe's result: `multivpc-probe=<n> <exit status> <ping's reply line>`.
const PROBE_MARKER: &str = "multivpc-probe=";
/// Printed instead of results when the gateway has no `ping`.
const NO_PING: &str = "multivpc-probe-unavailable";
/// Marker of an encrypted probe's inbound SAs: `multivpc-esp=<n> <packets they failed to
/// authenticate>`.
const ESP_MARKER: &str = "multivpc-esp=";

const PROBE_PRELUDE: &str = r#"set +e
command -v ping >/dev/null 2>&1 || { echo multivpc-probe-unavailable; exit 0; }
probe() {
  out=$(ping -c 1 -W "$4" -I "$2" "$3" 2>&1)
  rc=$?
  printf 'multivpc-probe=%s %s %s
' "$1" "$rc" "$(printf '%s
' "$out" | grep -m 1 'time=')"
}
esp_failed() {
  ip -s xfrm state list src "$2" dst "$3" proto esp 2>/dev/null |
    sed -n -e 's/^.*proto esp spi 0x[0-9a-f]*[^ ]* reqid \([0-9]*\).*$/r \1/p' \
      -e 's/^[[:space:]]*replay-window [0-9]* replay [0-9]* failed \([0-9]*\).*$/f \1/p' | {
    n=0 t=
    while read -r k v; do
      case $k in r) t=$((v >> 20)) ;; f) [ "$t" = "$4" ] && n=$((n + v)) ;; esac
    done
    printf 'multivpc-esp=%s %s
' "$1" "$n"
  }
}
"#;

/// Probes in one script at most, so that its command stays within the exec URI
/// ([`MAX_ENCODED_SCRIPT`]): an encrypted tunnel's two lines take ~140 encoded bytes at most.
pub const MAX_PROBES: usize = 256;

/// The script that pings each probe's target once out of its device, `PROBES_IN_PARALLEL` at a
/// time, each waiting `timeout_secs` at most for the answer, then sums what the inbound SAs of
/// each encrypted one failed to authenticate (`ip -s xfrm state`; the keys it also prints stay
/// in the pod: only the counters leave `sed`). Read-only: it takes no lock and changes nothing.
/// Every value is typed and quoted.
pub fn probes(probes: &[Probe], timeout_secs: u64) -> String {
    let mut s = String::from(PROBE_PRELUDE);
    let wait = q(timeout_secs.max(1));
    for (i, p) in probes.iter().enumerate() {
        s.push_str(&format!(
            "probe {i} {} {} {wait} &\n",
            q(&p.device),
            q(p.target)
        ));
        if (i + 1) % PROBES_IN_PARALLEL == 0 {
            s.push_str("wait\n");
        }
    }
    s.push_str("wait\n");
    for (i, p) in probes.iter().enumerate() {
        if let Some(esp) = &p.esp {
            s.push_str(&format!(
                "esp_failed {i} {} {} {}\n",
                q(esp.from),
                q(esp.to),
                q(esp.tag)
            ));
        }
    }
    s
}

/// What the inbound SAs of each encrypted probe's tunnel failed to authenticate so far, by
/// probe index (a count of the SAs present now: it falls when old ones go at a rekey).
pub fn esp_failures(stdout: &str) -> std::collections::BTreeMap<usize, u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(ESP_MARKER))
        .filter_map(|rest| {
            let (i, n) = rest.trim().split_once(' ')?;
            Some((i.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// What one probe saw: the round trip, or nothing back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeResult {
    Answered { rtt_ms: f64 },
    Lost,
}

/// The results of a probe script's output, by probe index; `None` when the gateway has no
/// `ping`. A probe whose line is missing is left out (its script was cut off): not a loss.
pub fn probe_results(stdout: &str) -> Option<std::collections::BTreeMap<usize, ProbeResult>> {
    if stdout.lines().any(|l| l.trim() == NO_PING) {
        return None;
    }
    let results = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(PROBE_MARKER))
        .filter_map(|rest| {
            let mut words = rest.splitn(3, ' ');
            let index: usize = words.next()?.parse().ok()?;
            let code: i32 = words.next()?.parse().ok()?;
            let reply = words.next().unwrap_or("");
            // iputils and busybox both print `time=0.123 ms`.
            let rtt_ms = reply
                .split_once("time=")
                .map(|(_, t)| {
                    t.chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.')
                        .collect::<String>()
                })
                .and_then(|t| t.parse::<f64>().ok())
                .filter(|t| t.is_finite() && *t >= 0.0);
            let result = match (code, rtt_ms) {
                (0, Some(rtt_ms)) => ProbeResult::Answered { rtt_ms },
                _ => ProbeResult::Lost,
            };
            Some((index, result))
        })
        .collect();
    Some(results)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn vxlan() -> TunnelConfig {
        let device: InterfaceName = "vx1".parse().unwrap();
        TunnelConfig {
            esp: None,
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
            mtu: None,
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
    fn a_vxlan_call_carries_every_value_quoted() {
        let call = Call::converge(&vxlan(), &Stale::default(), Mode::Converge);
        assert_eq!(
            call.text,
            "converge_tunnel 'converge' 'vx1' 'vxlan' '100' '4789' '172.50.1.11' '172.50.2.11' \
             '10.100.0.1/24' '242.0.0.0/16' '10.1.0.1' '242.1.0.0/16' '242.0.0.1-242.0.0.8' \
             'multivpc-tunnel:ns1/vx1' \
             'multivpc vxlan id=100 local=172.50.1.11 remote=172.50.2.11 dstport=4789 dev=net1' '' '' \
             '' '50'"
        );
        // spec.mtu, when given, replaces the one derived from net1.
        let mut fixed = vxlan();
        fixed.mtu = Some(Mtu::new(1400).unwrap());
        assert!(
            Call::converge(&fixed, &Stale::default(), Mode::Converge)
                .text
                .ends_with(" '' '' '1400' '50'")
        );
        let s = converge(&vxlan(), &Stale::default(), Mode::Converge);
        assert!(s.contains(&format!("section 0 {}\n", call.text)), "{s}");
        assert!(s.contains(
            "ip link add \"$dev\" type vxlan id \"$vni\" remote \"$rip\" local \"$lip\" dev net1 dstport \"$port\""
        ), "{s}");
        assert!(s.contains("ip route replace \"$lcidr\" via \"$via\" dev eth0 proto 178"));
        assert!(s.contains("ip route replace \"$rcidr\" dev \"$dev\" proto 178"));
        assert!(
            s.contains("want=\"-d $rcidr -m comment --comment $tag -j SNAT --to-source $to\""),
            "{s}"
        );
        assert!(
            s.contains("queue \"$ipt\" nat \"SNAT to $snat for $rcidr\" -I POSTROUTING 1 $want")
        );
        assert!(s.contains("-j TCPMSS --set-mss $mss"), "{s}");
        assert!(s.contains("\"$f-restore\" --noflush"));
        assert!(s.contains("iptables-legacy -t nat -S INPUT 1"));
        assert!(s.trim_end().ends_with("exit \"$status\""));
    }

    #[test]
    fn a_gre_call_names_gre_and_its_alias() {
        let call = Call::converge(&gre(), &Stale::default(), Mode::Converge);
        assert!(
            call.text
                .starts_with("converge_tunnel 'converge' 'ovn-gre0' 'gre' '' '' "),
            "{}",
            call.text
        );
        assert!(
            call.text
                .contains("'multivpc gre local=172.50.1.11 remote=172.50.2.11 ttl=255'")
        );
        let s = converge(&gre(), &Stale::default(), Mode::Converge);
        assert!(
            s.contains("ip tunnel add \"$dev\" mode gre remote \"$rip\" local \"$lip\" ttl 255")
        );
    }

    #[test]
    fn stale_routes_are_passed_only_when_they_differ() {
        let cfg = vxlan();
        let same = Stale {
            esp: None,
            remote_cidr: Some(cfg.remote_cidr),
            local_cidr: Some(cfg.local_cidr),
        };
        assert!(
            Call::converge(&cfg, &same, Mode::Converge)
                .text
                .ends_with(" '' '' '' '50'")
        );
        let old = Stale {
            esp: None,
            remote_cidr: Some("242.9.0.0/16".parse().unwrap()),
            local_cidr: Some("242.8.0.0/16".parse().unwrap()),
        };
        assert!(
            Call::converge(&cfg, &old, Mode::Converge)
                .text
                .ends_with(" '242.9.0.0/16' '242.8.0.0/16' '' '50'")
        );
    }

    #[test]
    fn an_encrypted_call_names_the_sas_and_carries_their_keys_on_stdin_only() {
        let carrier = Carrier::Vxlan { port: 4789 };
        let psk = ipsec::Psk::new(vec![0x5a; 48]).unwrap();
        let cfg = TunnelConfig {
            esp: Some(EspConfig {
                carrier,
                keying: ipsec::keying(&psk, vxlan().local_ip, vxlan().remote_ip, carrier, 1000),
            }),
            ..vxlan()
        };
        let keying = &cfg.esp.as_ref().unwrap().keying;
        for mode in [Mode::Converge, Mode::Check] {
            let call = Call::converge(&cfg, &Stale::default(), mode);
            // A check compares the keys too: a new pre-shared key keeps the SPIs.
            let lines: Vec<String> = keying.all().map(|sa| sa.batch_line()).collect();
            assert_eq!(call.stdin, lines, "{mode:?}");
            for sa in keying.all() {
                assert!(
                    call.text
                        .contains(&format!("{},{},{:#010x}", sa.src, sa.dst, sa.spi))
                );
                let line = sa.batch_line();
                let key = line.split(' ').nth_back(1).unwrap();
                assert!(key.starts_with("0x") && !call.text.contains(&key[2..]));
            }
            assert!(!format!("{call:?}").contains("aead"));
        }
        // The shell finds the key after the AEAD's name as both `ip xfrm` and the batch
        // lines write it.
        assert!(FUNCTIONS.contains(&format!("\"aead {} \"", ipsec::AEAD)));
        assert!(
            keying
                .outbound
                .batch_line()
                .contains(&format!(" aead {} 0x", ipsec::AEAD))
        );
    }

    #[test]
    fn check_mode_differs_only_in_the_mode_word() {
        let c = Call::converge(&vxlan(), &Stale::default(), Mode::Converge);
        let k = Call::converge(&vxlan(), &Stale::default(), Mode::Check);
        assert_eq!(
            c.text.replacen("'converge'", "'check'", 1),
            k.text,
            "one body, two modes"
        );
    }

    #[test]
    fn a_cleanup_call_names_only_what_goes() {
        let cfg = CleanupConfig {
            esp: None,
            device: "vx1".parse().unwrap(),
            delete_device: true,
            tag: RuleTag::new("ns1", &"vx1".parse().unwrap()).unwrap(),
            remote_cidr: Some("242.1.0.0/16".parse().unwrap()),
            local_cidr: None,
        };
        assert_eq!(
            Call::cleanup(&cfg).text,
            "cleanup_tunnel 'vx1' 1 'multivpc-tunnel:ns1/vx1' '242.1.0.0/16' ''"
        );
        let kept = Call::cleanup(&CleanupConfig {
            delete_device: false,
            remote_cidr: None,
            ..cfg
        });
        assert_eq!(
            kept.text,
            "cleanup_tunnel 'vx1' 0 'multivpc-tunnel:ns1/vx1' '' ''"
        );
    }

    #[test]
    fn sections_split_the_output_by_marker() {
        let out = "note: before\nmultivpc-section=0\nchange: a\nmultivpc-changes=1\n\
                   multivpc-section-status=0\nmultivpc-section=1\nmultivpc: boom\n\
                   multivpc-section-status=1\nmultivpc-section=2\nchange: b\n";
        let s = sections(out);
        assert_eq!(s.len(), 3);
        assert_eq!(s[&0].status, Some(0));
        assert_eq!(reported_changes(&s[&0].text), Some(1));
        assert_eq!(s[&1].status, Some(1));
        assert_eq!(s[&1].text, "multivpc: boom\n");
        assert_eq!(s[&2].status, None, "cut off before its end");
    }

    #[test]
    fn a_queued_rule_change_finishes_its_section_only_once_written() {
        let queued = "multivpc-section=0\nchange: SNAT\nmultivpc-rule=0 iptables nat -I POSTROUTING 1 -d x\n\
                      multivpc-changes=1\nmultivpc-section-status=0\n\
                      multivpc-section=1\nmultivpc-changes=0\nmultivpc-section-status=0\n";
        let cut = sections(queued);
        assert_eq!(cut[&0].status, None, "the script ended before writing it");
        assert_eq!(cut[&1].status, Some(0), "nothing queued: finished");
        let written = sections(&format!("{queued}multivpc-rules-committed\n"));
        assert_eq!(written[&0].status, Some(0));
        let failed = sections(&format!(
            "{queued}multivpc-section=0\nmultivpc: iptables -t nat -I … failed: no\n\
             multivpc-section-status=1\nmultivpc-rules-committed\n"
        ));
        assert_eq!(
            failed[&0].status,
            Some(1),
            "its failure printed as the section again"
        );
        assert!(
            failed[&0].text.contains("change: SNAT"),
            "{:?}",
            failed[&0].text
        );
        assert!(
            failed[&0].text.contains("failed: no"),
            "{:?}",
            failed[&0].text
        );
        assert_eq!(failed[&1].status, Some(0));
    }

    #[test]
    fn one_failing_section_leaves_the_others_alone() {
        let script = format!(
            "{PRELUDE}{FUNCTIONS}section 0 true\nsection 1 fail nope\nsection 2 step x true\nexit \"$status\"\n"
        )
        .replace("command -v \"$ipt\" >/dev/null 2>&1 || fail \"$ipt not found\"\n", "");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("mode", "converge")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !stdout.contains("multivpc-section=0") {
            // No `ip` on this host: the prelude refused, as it would in such a pod.
            assert!(String::from_utf8_lossy(&out.stderr).contains("ip (iproute2) not found"));
            return;
        }
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        let s = sections(&stdout);
        assert_eq!(s[&0].status, Some(0));
        assert_eq!(s[&1].status, Some(1));
        assert!(s[&1].text.contains("multivpc: nope"), "{stdout}");
        assert_eq!(s[&2].status, Some(0));
        assert_eq!(reported_changes(&s[&2].text), Some(1));
    }

    #[test]
    fn every_single_quote_is_balanced() {
        // Values reach a script only in its call lines: each must have an even number of
        // single quotes, otherwise a value would have escaped its quoting. (The fixed body is
        // checked by `sh -n` below.)
        for s in [
            converge(&vxlan(), &Stale::default(), Mode::Converge),
            converge(&gre(), &Stale::default(), Mode::Check),
        ] {
            let calls: Vec<&str> = s.lines().filter(|l| l.starts_with("section ")).collect();
            assert_eq!(calls.len(), 1);
            for line in calls {
                assert_eq!(
                    line.matches('\'').count() % 2,
                    0,
                    "unbalanced quotes in {line}"
                );
            }
        }
    }

    #[test]
    fn a_full_batch_fits_the_exec_uri() {
        // The longest call there is: the longest names and addresses, both stale routes.
        let device: InterfaceName = "a23456789012345".parse().unwrap();
        let cfg = TunnelConfig {
            esp: None,
            tag: RuleTag::new(&"n".repeat(63), &device).unwrap(),
            device,
            encap: Encap::Vxlan {
                vni: Vni::new(MAX_VNI).unwrap(),
                port: Port::new(65535).unwrap(),
            },
            local_ip: "255.255.255.255".parse().unwrap(),
            remote_ip: "255.255.255.254".parse().unwrap(),
            interface_addr: "255.255.255.253/32".parse().unwrap(),
            local_cidr: "255.255.255.0/24".parse().unwrap(),
            ovn_gateway: "255.255.255.252".parse().unwrap(),
            remote_cidr: "255.255.254.0/24".parse().unwrap(),
            snat: EgressRange::new(
                "255.255.255.250".parse().unwrap(),
                "255.255.255.251".parse().unwrap(),
            )
            .unwrap(),
            mtu: Some(Mtu::new(MAX_MTU).unwrap()),
        };
        let stale = Stale {
            esp: None,
            remote_cidr: Some("255.255.253.0/24".parse().unwrap()),
            local_cidr: Some("255.255.252.0/24".parse().unwrap()),
        };
        let call = Call::converge(&cfg, &stale, Mode::Converge);
        let n = call_budget() / call.len();
        assert!(n >= 64, "only {n} calls fit");
        let calls = vec![call; n];
        let script = batch(&calls);
        let form: String = url_form(&script);
        assert_eq!(form.len(), encoded_len(&script));
        assert!(form.len() <= MAX_ENCODED_SCRIPT, "{}", form.len());
    }

    /// Form-encodes `s` as the exec request does (for the test above).
    fn url_form(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b' ' => "+".to_owned(),
                b if b.is_ascii_alphanumeric() || b"*-._".contains(&b) => (b as char).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    #[test]
    fn every_route_we_touch_carries_our_protocol() {
        let proto = format!("proto {ROUTE_PROTO}");
        for line in FUNCTIONS.lines().filter(|l| l.contains("ip route")) {
            assert!(line.contains(&proto), "{line}");
        }
        assert!(FUNCTIONS.contains("via \"$via\" dev eth0 proto 178"));
    }

    #[test]
    fn scripts_parse_with_sh() {
        for s in [
            converge(&vxlan(), &Stale::default(), Mode::Converge),
            converge(
                &gre(),
                &Stale {
                    esp: None,
                    remote_cidr: Some("1.2.3.0/24".parse().unwrap()),
                    local_cidr: Some("1.2.4.0/24".parse().unwrap()),
                },
                Mode::Check,
            ),
            cleanup(&CleanupConfig {
                esp: None,
                device: "vx1".parse().unwrap(),
                delete_device: true,
                tag: RuleTag::new("ns1", &"vx1".parse().unwrap()).unwrap(),
                remote_cidr: Some("242.1.0.0/16".parse().unwrap()),
                local_cidr: Some("242.0.0.0/16".parse().unwrap()),
            }),
            probes(
                &(0..130)
                    .map(|i| Probe {
                        device: format!("vx{i}").parse().unwrap(),
                        target: Ipv4Addr::new(10, 100, 0, 2),
                        esp: (i % 2 == 0).then_some(EspInbound {
                            from: Ipv4Addr::new(172, 50, 2, 11),
                            to: Ipv4Addr::new(172, 50, 1, 11),
                            tag: 2,
                        }),
                    })
                    .collect::<Vec<_>>(),
                1,
            ),
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
    fn probe_scripts_quote_every_value_and_fit_the_exec_uri() {
        let p = |dev: &str| Probe {
            device: dev.parse().unwrap(),
            target: Ipv4Addr::new(10, 100, 0, 2),
            esp: None,
        };
        let encrypted = Probe {
            esp: Some(EspInbound {
                from: Ipv4Addr::new(172, 50, 2, 11),
                to: Ipv4Addr::new(172, 50, 1, 11),
                tag: 2,
            }),
            ..p("vx.2")
        };
        let s = probes(&[p("gre1"), encrypted], 3);
        assert!(s.contains("probe 0 'gre1' '10.100.0.2' '3' &\n"), "{s}");
        assert!(s.contains("probe 1 'vx.2' '10.100.0.2' '3' &\n"), "{s}");
        assert!(
            s.ends_with("wait\nesp_failed 1 '172.50.2.11' '172.50.1.11' '2'\n"),
            "{s}"
        );
        // A timeout of 0 would make ping wait forever under some versions.
        assert!(probes(&[p("gre1")], 0).contains("'1' &"));
        // At most MAX_PROBES of the longest values fit the exec request.
        let longest: Vec<Probe> = (0..MAX_PROBES)
            .map(|_| Probe {
                device: "abcdefghijklmno".parse().unwrap(),
                target: Ipv4Addr::new(255, 255, 255, 255),
                esp: Some(EspInbound {
                    from: Ipv4Addr::new(255, 255, 255, 255),
                    to: Ipv4Addr::new(255, 255, 255, 255),
                    tag: 4094,
                }),
            })
            .collect();
        let s = probes(&longest, 30);
        assert!(encoded_len(&s) <= MAX_ENCODED_SCRIPT, "{}", encoded_len(&s));
        assert_eq!(
            s.lines().filter(|l| *l == "wait").count(),
            MAX_PROBES / PROBES_IN_PARALLEL + 1
        );
    }

    #[test]
    fn probe_output_of_iputils_and_busybox() {
        let out = "multivpc-probe=0 0 64 bytes from 10.100.0.2: icmp_seq=1 ttl=64 time=0.412 ms\n\
                   multivpc-probe=1 1 \n\
                   multivpc-probe=2 0 64 bytes from 10.100.0.2: seq=0 ttl=64 time=12.5 ms\n\
                   multivpc-probe=3 0 \n\
                   noise\n";
        let r = probe_results(out).unwrap();
        assert_eq!(r[&0], ProbeResult::Answered { rtt_ms: 0.412 });
        assert_eq!(r[&1], ProbeResult::Lost);
        assert_eq!(r[&2], ProbeResult::Answered { rtt_ms: 12.5 });
        // Exit 0 without a reply line is no proof of an answer.
        assert_eq!(r[&3], ProbeResult::Lost);
        assert_eq!(r.len(), 4);
        assert_eq!(probe_results("multivpc-probe-unavailable\n"), None);
        let esp =
            esp_failures("multivpc-esp=1 0\nmultivpc-esp=3 17\nmultivpc-esp=x 1\nmultivpc-esp=4\n");
        assert_eq!(esp, [(1, 0), (3, 17)].into_iter().collect());
    }

    /// The shells a gateway may have: the host's `sh`, and busybox's (Kube-OVN's gateway image
    /// is alpine) where this machine has it.
    /// `script` run by each of them, with the shell's name.
    fn in_every_shell(script: &str) -> Vec<(&'static str, std::process::Output)> {
        let mut shells = vec![("sh", vec!["sh"])];
        if std::process::Command::new("busybox")
            .arg("true")
            .status()
            .is_ok_and(|s| s.success())
        {
            shells.push(("busybox sh", vec!["busybox", "sh"]));
        }
        shells
            .into_iter()
            .map(|(name, argv)| {
                let out = std::process::Command::new(argv[0])
                    .args(&argv[1..])
                    .arg("-c")
                    .arg(script)
                    .output()
                    .unwrap();
                (name, out)
            })
            .collect()
    }

    /// The key comparison of the converge script, on the text `ip xfrm state get` prints: an SA
    /// with the derived key is kept, one with another key is to be replaced, a missing one to
    /// be added; in every shell a gateway may have.
    #[test]
    fn esp_keys_are_compared_with_what_the_kernel_holds() {
        let carrier = Carrier::Vxlan { port: 4789 };
        let (a, b) = (vxlan().local_ip, vxlan().remote_ip);
        let ours = ipsec::Psk::new(vec![1; 48]).unwrap();
        let theirs = ipsec::Psk::new(vec![2; 48]).unwrap();
        let keying = ipsec::keying(&ours, a, b, carrier, 7);
        let sas: Vec<&ipsec::Sa> = keying.all().take(3).collect();
        // What the kernel prints for an SA holding the key of `line` (a batch line).
        let printed = |line: &str| {
            let key = line.split(' ').nth_back(1).unwrap().to_owned();
            format!(
                "src {a} dst {b}\n\tproto esp spi 0x1(1) reqid 1 mode transport\n\treplay-window 128 flag esn\n\taead {} {key} 128\n\tanti-replay esn context:\n\t sel src 0.0.0.0/0 dst 0.0.0.0/0\n",
                ipsec::AEAD
            )
        };
        let same = printed(&sas[0].batch_line());
        let other = printed(
            &ipsec::derive(&theirs, sas[1].src, sas[1].dst, carrier, sas[1].epoch).batch_line(),
        );
        let batch: String = sas.iter().map(|sa| sa.batch_line() + "\n").collect();
        let spi = |sa: &ipsec::Sa| format!("{:#010x}", sa.spi);
        let named: Vec<String> = sas
            .iter()
            .map(|sa| format!("{},{},{}", sa.src, sa.dst, spi(sa)))
            .collect();
        let script = format!(
            "set -u\nnl='\n'\n{FUNCTIONS}\nip() {{ case \"$*\" in *\"spi {}\"*) printf '%s' '{same}' ;; *\"spi {}\"*) printf '%s' '{other}' ;; *) return 2 ;; esac; }}\nesp_batch='{batch}'\nsas=' {} '\nesp_diff 3\necho \"missing=$missing rekey=$rekey\"\n",
            spi(sas[0]),
            spi(sas[1]),
            named.join(" "),
        );
        for (shell, out) in in_every_shell(&script) {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("missing= {} rekey= {}", spi(sas[2]), spi(sas[1])),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The reading of `ip -s xfrm state` as iproute2 prints it: the failures of the SAs of the
    /// probe's carrier summed, another carrier's left out, no key printed.
    #[test]
    fn esp_failures_are_read_from_the_sas_of_the_carrier() {
        let sa = |spi: &str, reqid: u32, failed: u32| {
            format!(
                "src 172.50.2.11 dst 172.50.1.11\n\
                 \tproto esp spi {spi}(1) reqid {reqid}({reqid:#010x}) mode transport\n\
                 \treplay-window 128 seq 0x00000000 flag esn (0x00000010)\n\
                 \taead rfc4106(gcm(aes)) 0xabcdefabcdefabcdefabcdefabcdefabcdefabcd (160 bits) 128\n\
                 \tlifetime current:\n\
                 \t  84(bytes), 1(packets)\n\
                 \tstats:\n\
                 \t  replay-window 0 replay 0 failed {failed}\n"
            )
        };
        let listing = [
            sa("0x1a2b3c4d", (2 << 20) | 7, 3),
            sa("0x1a2b3c4e", (2 << 20) | 8, 4),
            sa("0x1a2b3c4f", (1 << 20) | 8, 50),
        ]
        .concat();
        let probe = Probe {
            device: "vx1".parse().unwrap(),
            target: Ipv4Addr::new(10, 100, 0, 2),
            esp: Some(EspInbound {
                from: Ipv4Addr::new(172, 50, 2, 11),
                to: Ipv4Addr::new(172, 50, 1, 11),
                tag: 2,
            }),
        };
        let script = probes(&[probe], 1);
        let script = script.replace("probe 0 ", ": ").replacen(
            "set +e\n",
            &format!("set +e\nping() {{ :; }}\nip() {{ printf '%s' '{listing}'; }}\n"),
            1,
        );
        for (shell, out) in in_every_shell(&script) {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                esp_failures(&stdout),
                [(0, 7)].into_iter().collect(),
                "{shell}: {stdout}"
            );
            assert!(!stdout.contains("abcdef"), "{stdout}");
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
