//! Typed network values. Everything the controllers put into a Linux command line or compare
//! across clusters goes through these types first, so a malformed value is refused with a clear
//! error before it can reach a shell or an API object.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// One IPv4 octet, 0–255, without leading zeros (shared by the schema patterns below).
macro_rules! octet {
    () => {
        "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    };
}
macro_rules! ipv4 {
    () => {
        concat!(octet!(), "\\.", octet!(), "\\.", octet!(), "\\.", octet!())
    };
}

/// Schema pattern of an IPv4 address in dotted-quad form (`172.50.16.99`).
pub const IPV4_PATTERN: &str = concat!("^", ipv4!(), "$");
/// Schema pattern of an IPv4 address with a prefix length (`10.100.0.1/24`, `242.1.0.0/16`).
pub const IPV4_CIDR_PATTERN: &str = concat!("^", ipv4!(), "/([0-9]|[12][0-9]|3[0-2])$");
/// The prefix lengths a tunnel interface address may have: wide enough for the seed's /24 and a
/// point-to-point /30 or /31, never so wide that the connected route swallows VPC or Globalnet
/// ranges (a /1 would route half the address space into the tunnel).
pub const INTERFACE_PREFIXES: std::ops::RangeInclusive<u8> = 16..=31;
/// Schema pattern of a tunnel interface address: an IPv4 address with a prefix of
/// [`INTERFACE_PREFIXES`] (`10.100.0.1/24`).
pub const INTERFACE_ADDR_PATTERN: &str = concat!("^", ipv4!(), "/(1[6-9]|2[0-9]|3[01])$");
/// Schema pattern of a DNS-1123 label (Submariner cluster IDs).
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Schema pattern of a Kubernetes object name (DNS-1123 subdomain: VPCs, NAT gateways).
pub const OBJECT_NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// True when `name` is a Kubernetes object name (DNS-1123 subdomain, [`OBJECT_NAME_PATTERN`],
/// at most 253 bytes): safe as one segment of an API path.
pub fn is_object_name(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 253
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-' || *c == b'.')
}

/// Why a network value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not an IPv4 address (expected dotted quad such as 10.0.0.1)")]
    Ipv4(String),
    #[error("{0:?} is not an IPv4 CIDR (expected address/prefix such as 10.100.0.1/24)")]
    Cidr(String),
    #[error("{value:?} has prefix length {prefix}, but an IPv4 prefix is at most 32")]
    Prefix { value: String, prefix: String },
    #[error("{0:?} cannot be a Linux interface name: {1}")]
    InterfaceName(String, &'static str),
    #[error("{0:?} is a network or broadcast address, not a usable host address for its prefix")]
    NotAHost(String),
}

/// Parses a dotted-quad IPv4 address, refusing everything else (including leading zeros,
/// which some tools read as octal).
pub fn parse_ipv4(value: &str) -> Result<Ipv4Addr, ParseError> {
    // std's parser already refuses leading zeros, signs and whitespace.
    Ipv4Addr::from_str(value).map_err(|_| ParseError::Ipv4(value.to_owned()))
}

/// An IPv4 address together with a prefix length: either an interface address
/// (`10.100.0.1/24`, host bits set) or a network (`242.1.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// Builds a CIDR, refusing a prefix longer than 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, ParseError> {
        if prefix > 32 {
            return Err(ParseError::Prefix {
                value: format!("{addr}/{prefix}"),
                prefix: prefix.to_string(),
            });
        }
        Ok(Self { addr, prefix })
    }

    /// The address as written (host bits kept).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask of the prefix.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }

    /// The network this CIDR lies in (host bits cleared): `10.100.0.1/24` → `10.100.0.0/24`.
    pub fn network(&self) -> Self {
        let bits = u32::from(self.addr) & u32::from(self.netmask());
        Self {
            addr: Ipv4Addr::from(bits),
            prefix: self.prefix,
        }
    }

    /// The first and last address of this CIDR's network, as numbers.
    pub fn span(&self) -> (u32, u32) {
        let first = u32::from(self.addr) & u32::from(self.netmask());
        (first, first | !u32::from(self.netmask()))
    }

    /// Whether `ip` lies inside this CIDR's network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }

    /// Whether two networks share at least one address.
    pub fn overlaps(&self, other: &Self) -> bool {
        let shorter = if self.prefix <= other.prefix {
            self
        } else {
            other
        };
        let longer = if self.prefix <= other.prefix {
            other
        } else {
            self
        };
        shorter.contains(longer.addr)
    }

    /// Checks the address is usable on an interface: not the network address nor the broadcast
    /// address of its prefix (/31 and /32 have neither, RFC 3021).
    pub fn require_host(self) -> Result<Self, ParseError> {
        if self.prefix >= 31 {
            return Ok(self);
        }
        let host_bits = !u32::from(self.netmask());
        let host = u32::from(self.addr) & host_bits;
        if host == 0 || host == host_bits {
            return Err(ParseError::NotAHost(self.to_string()));
        }
        Ok(self)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = value
            .split_once('/')
            .ok_or_else(|| ParseError::Cidr(value.to_owned()))?;
        let addr = Ipv4Addr::from_str(addr).map_err(|_| ParseError::Cidr(value.to_owned()))?;
        if prefix.is_empty()
            || prefix.len() > 2
            || !prefix.bytes().all(|b| b.is_ascii_digit())
            || (prefix.len() == 2 && prefix.starts_with('0'))
        {
            return Err(ParseError::Cidr(value.to_owned()));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| ParseError::Cidr(value.to_owned()))?;
        if prefix > 32 {
            return Err(ParseError::Prefix {
                value: value.to_owned(),
                prefix: prefix.to_string(),
            });
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Names a tunnel may never take (the CRD's CEL rule lists the same, a test checks it): the
/// gateway pod's own interfaces; `all` and `default`, which are not devices but the sysctl
/// directories every device's settings fall back to; the kernel's fallback tunnel devices,
/// which appear when a tunnel module loads and are no one's to delete; and `bonding_masters`,
/// a file in /sys/class/net. Multus attachments `net<N>` are refused by [`is_multus_name`].
pub const RESERVED_INTERFACE_NAMES: [&str; 15] = [
    "lo",
    "eth0",
    "net1",
    "all",
    "default",
    "bonding_masters",
    "gre0",
    "gretap0",
    "erspan0",
    "tunl0",
    "sit0",
    "ip_vti0",
    "ip6_vti0",
    "ip6tnl0",
    "ip6gre0",
];

/// Whether `name` is a Multus attachment's name in a pod (`net<N>`, CEL `^net[0-9]+$`).
pub fn is_multus_name(name: &str) -> bool {
    name.strip_prefix("net")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A Linux network interface name that is also safe in a shell word: 1–15 bytes of
/// `[A-Za-z0-9_.-]`, not `.`/`..`, and not one of the gateway pod's own interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// The kernel's limit (IFNAMSIZ - 1).
    pub const MAX_LEN: usize = 15;

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InterfaceName {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let refuse = |why| Err(ParseError::InterfaceName(value.to_owned(), why));
        if value.is_empty() {
            return refuse("it is empty");
        }
        if value.len() > Self::MAX_LEN {
            return refuse("it is longer than 15 characters");
        }
        if value == "." || value == ".." {
            return refuse("the kernel refuses . and ..");
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return refuse("only letters, digits, '-', '_' and '.' are allowed");
        }
        if RESERVED_INTERFACE_NAMES.contains(&value) || is_multus_name(value) {
            return refuse(
                "it is reserved: the gateway pod's own interfaces (lo, eth0, net<N>), all, default, and the kernel's fallback tunnel devices (gre0, tunl0, sit0, ...)",
            );
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_subdomains() {
        for ok in ["a", "broker-secret-x2f9", "a.b-c", &"a".repeat(253)] {
            assert!(is_object_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a/b",
            "..",
            "a b",
            "%2e",
            &"a".repeat(254),
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }

    #[test]
    fn cidr_parses_and_prints() {
        let c: Ipv4Cidr = "10.100.0.1/24".parse().unwrap();
        assert_eq!(c.addr(), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(c.prefix(), 24);
        assert_eq!(c.to_string(), "10.100.0.1/24");
        assert_eq!(c.network().to_string(), "10.100.0.0/24");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().netmask(),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn cidr_refuses_garbage() {
        for bad in [
            "10.0.0.1/24;reboot",
            "10.0.0.1",
            "10.0.0.1/33",
            "10.0.0.1/",
            "10.0.0.1/024",
            "10.0.0.1/+4",
            "010.0.0.1/24",
            "10.0.0.1/24 ",
            " 10.0.0.1/24",
            "a.b.c.d/8",
            "$(reboot)/8",
            "",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad:?} must be refused");
        }
        let err = "10.0.0.1/33".parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(err.contains("at most 32"), "{err}");
    }

    #[test]
    fn host_addresses() {
        assert!(
            "10.100.0.1/24"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .require_host()
                .is_ok()
        );
        assert!(
            "10.100.0.0/24"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .require_host()
                .is_err()
        );
        assert!(
            "10.100.0.255/24"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .require_host()
                .is_err()
        );
        assert!(
            "10.100.0.0/31"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .require_host()
                .is_ok()
        );
        assert!(
            "10.100.0.7/32"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .require_host()
                .is_ok()
        );
    }

    #[test]
    fn overlap_and_contains() {
        let a: Ipv4Cidr = "242.0.0.0/16".parse().unwrap();
        let b: Ipv4Cidr = "242.0.5.0/24".parse().unwrap();
        let c: Ipv4Cidr = "242.1.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(a.contains(Ipv4Addr::new(242, 0, 255, 1)));
        assert!(!a.contains(Ipv4Addr::new(242, 1, 0, 1)));
    }

    #[test]
    fn ipv4_refuses_non_canonical() {
        assert!(parse_ipv4("172.50.16.99").is_ok());
        for bad in [
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.256",
            "1.2.3.4\n",
            "::1",
        ] {
            assert!(parse_ipv4(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_names() {
        for good in ["ovn-gre0", "vx_1", "a", "abcdefghijklmno"] {
            assert!(good.parse::<InterfaceName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "abcdefghijklmnop",
            ".",
            "..",
            "a b",
            "a/b",
            "a:b",
            "x;reboot",
            "$(id)",
            "eth0",
            "net1",
            "net2",
            "net10",
            "lo",
            "all",
            "default",
            "gre0",
            "tunl0",
            "erspan0",
        ] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad:?}");
        }
        for good in ["net", "netx", "net1a", "gre1", "network0"] {
            assert!(good.parse::<InterfaceName>().is_ok(), "{good}");
        }
    }

    #[test]
    fn schema_patterns_agree_with_parsers() {
        let ip = regex::Regex::new(IPV4_PATTERN).unwrap();
        let cidr = regex::Regex::new(IPV4_CIDR_PATTERN).unwrap();
        for value in [
            "172.50.16.99",
            "0.0.0.0",
            "255.255.255.255",
            "01.2.3.4",
            "1.2.3.256",
            "1.2.3",
            "10.0.0.1/24",
            "10.0.0.1/24;reboot",
            "242.1.0.0/16",
            "1.2.3.4/33",
            "1.2.3.4/024",
            "1.2.3.4/0",
            "a.b.c.d",
            " 1.2.3.4",
        ] {
            assert_eq!(
                ip.is_match(value),
                parse_ipv4(value).is_ok(),
                "IPv4 {value:?}"
            );
            assert_eq!(
                cidr.is_match(value),
                value.parse::<Ipv4Cidr>().is_ok(),
                "CIDR {value:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn cidr_round_trips(a: u32, p in 0u8..=32) {
            let c = Ipv4Cidr::new(Ipv4Addr::from(a), p).unwrap();
            let back: Ipv4Cidr = c.to_string().parse().unwrap();
            proptest::prop_assert_eq!(c, back);
            proptest::prop_assert!(c.network().contains(c.addr()));
        }

        #[test]
        fn accepted_interface_names_are_shell_safe(s in "\\PC{0,20}") {
            if let Ok(name) = s.parse::<InterfaceName>() {
                proptest::prop_assert!(name.as_str().len() <= 15);
                proptest::prop_assert!(name.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            }
        }
    }
}
