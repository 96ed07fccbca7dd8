//! Command-line flags shared by every controller (names follow controller-runtime's, so
//! existing Helm values and habits carry over).

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

/// Flags every controller binary accepts. Each can also be given through the environment.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Address the Prometheus /metrics endpoint binds to (":8080" means all interfaces;
    /// "0" disables it).
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = ":8080")]
    pub metrics_bind_address: BindAddress,

    /// Address the /healthz and /readyz probes bind to (":8081" means all interfaces).
    #[arg(long, env = "HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    pub health_probe_bind_address: BindAddress,

    /// /healthz fails (and the kubelet restarts the container) when a watch has kept failing, or
    /// a reconcile has kept running, for longer than this.
    #[arg(long, env = "STALL_TIMEOUT", default_value = "5m", value_parser = duration)]
    pub stall_timeout: Duration,

    /// Run the controller only while holding a Lease, so several replicas can run safely.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,

    /// Namespace of the leader election Lease (defaults to the pod's namespace).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Submariner cluster ID of this cluster (otherwise read from Submariner's ServiceDiscovery).
    #[arg(long, env = "CLUSTER_ID")]
    pub cluster_id: Option<String>,

    /// Namespace Kube-OVN runs in (its controller's POD_NAMESPACE): the NAT gateway pods, the
    /// vpc-dns Deployments and their Corefile ConfigMaps are there.
    #[arg(long, env = "KUBE_OVN_NAMESPACE", default_value = "kube-system", value_parser = dns_label)]
    pub kube_ovn_namespace: String,
}

/// How namespaced objects are tied to the VPCs they change; flattened into the binaries whose
/// objects act on a VPC (dns-forwarder, tunnel-manager).
#[derive(clap::Args, Debug, Clone)]
pub struct TenancyArgs {
    /// "vpc-namespaces": a VpcNatTunnel or VpcDnsForward in namespace N acts only on a VPC
    /// whose spec.namespaces lists N; "any": on every VPC (only when administrators alone can
    /// create these objects).
    #[arg(long, env = "TENANCY", default_value = "vpc-namespaces", value_parser = tenancy)]
    pub tenancy: multivpc_api::tenancy::Tenancy,
}

fn tenancy(value: &str) -> Result<multivpc_api::tenancy::Tenancy, String> {
    value.parse()
}

/// A duration flag: a number (decimals allowed) and a unit `ms`, `s` (the default), `m` or `h`,
/// e.g. `250ms`, `30s`, `1.5m`, `1h`, `300`.
pub fn duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: f64 = number
        .parse()
        .ok()
        .filter(|_| !number.starts_with('.') && !number.ends_with('.'))
        .ok_or_else(|| format!("{value:?} is not a duration such as 30s, 5m or 1h"))?;
    let per_unit = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{value:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(n * per_unit).map_err(|_| format!("{value:?} is too long"))
}

/// A DNS label (RFC 1123, at most 63 characters): a namespace name, a name prefix.
pub fn dns_label(value: &str) -> Result<String, String> {
    let label = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
        && !value.is_empty();
    if label {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a DNS label (lower-case letters, digits and inner dashes, at most 63)"
        ))
    }
}

/// Log output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A listen address in Go style: `:8080` (all interfaces), `127.0.0.1:8080`, `[::1]:8080`,
/// or `0` for "do not listen".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindAddress {
    Disabled,
    Socket(SocketAddr),
}

/// A bind address that is not one of the accepted forms.
#[derive(Debug, thiserror::Error)]
#[error("invalid bind address {0:?}: expected \":PORT\", \"HOST:PORT\" or \"0\" to disable")]
pub struct BindAddressError(String);

impl FromStr for BindAddress {
    type Err = BindAddressError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == "0" {
            return Ok(Self::Disabled);
        }
        let full = match value.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => value.to_owned(),
        };
        full.parse()
            .map(Self::Socket)
            .map_err(|_| BindAddressError(value.to_owned()))
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("0"),
            Self::Socket(addr) => addr.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(
            ":8080".parse::<BindAddress>().unwrap().to_string(),
            "0.0.0.0:8080"
        );
        assert_eq!(
            "127.0.0.1:9".parse::<BindAddress>().unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert_eq!(
            "[::1]:80".parse::<BindAddress>().unwrap().to_string(),
            "[::1]:80"
        );
        assert_eq!("0".parse::<BindAddress>().unwrap(), BindAddress::Disabled);
        for bad in ["", "8080", ":http", "localhost:80", ":99999"] {
            assert!(bad.parse::<BindAddress>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        let ok = |v: &str| duration(v).unwrap();
        assert_eq!(ok("300"), Duration::from_secs(300));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in [
            "",
            "5 m",
            "-1s",
            "1d",
            "m",
            ".5s",
            "5.s",
            "1.2.3s",
            "99999999999999999999h",
        ] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_match_controller_runtime() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.common.metrics_bind_address.to_string(), "0.0.0.0:8080");
        assert_eq!(
            cli.common.health_probe_bind_address.to_string(),
            "0.0.0.0:8081"
        );
        assert!(!cli.common.leader_elect);
        assert_eq!(cli.common.log_format, LogFormat::Text);
        assert_eq!(cli.common.cluster_id, None);
        assert_eq!(cli.common.kube_ovn_namespace, "kube-system");
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "--metrics-bind-address=127.0.0.1:18080",
            "--leader-elect",
            "--log-format=json",
            "--cluster-id=cluster1",
        ])
        .unwrap();
        assert!(cli.common.leader_elect);
        assert_eq!(cli.common.log_format, LogFormat::Json);
        assert_eq!(cli.common.cluster_id.as_deref(), Some("cluster1"));
        assert!(Cli::try_parse_from(["x", "--log-format=xml"]).is_err());
        let cli = Cli::try_parse_from(["x", "--kube-ovn-namespace=kube-ovn"]).unwrap();
        assert_eq!(cli.common.kube_ovn_namespace, "kube-ovn");
        for bad in ["", "Kube", "a/b", "-a", &"a".repeat(64)] {
            assert!(
                Cli::try_parse_from(["x", &format!("--kube-ovn-namespace={bad}")]).is_err(),
                "{bad:?}"
            );
        }
    }
}
