//! The `dns-lookup` check of `diagnose vpc`, pure: the name to resolve, the lookup command and
//! what its output means. A client inside the VPC (a NAT gateway pod of the VPC: vpc-dns's
//! CoreDNS image has no shell, and the gateway pod asks vpc-dns exactly as the VPC's
//! workloads do) asks vpc-dns's address for a `clusterset.local` name; the answer, or the
//! lack of one, names the broken link.

use std::net::Ipv4Addr;

use multivpc_api::net::parse_ipv4;

use crate::checks::{CheckResult, CommandOutput, quote};

pub const DNS_LOOKUP: &str = "dns-lookup";

/// The zone Submariner's Lighthouse serves and dns-forwarder forwards.
const ZONE: &str = "clusterset.local";

/// Kube-OVN's ConfigMap of vpc-dns settings, and its key for the address VPC workloads ask.
pub const VPC_DNS_CONFIG: &str = "vpc-dns-config";
pub const COREDNS_VIP_KEY: &str = "coredns-vip";

/// A name under `clusterset.local` (a trailing dot allowed), lowercased: letters, digits,
/// `-` and `.`, labels of 1–63 characters, at most 253 in all.
pub fn lookup_name(name: &str) -> Result<String, String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| Err(format!("--lookup {name:?}: {why}"));
    if name.len() > 253 {
        return bad("longer than 253 characters");
    }
    if name != ZONE && !name.ends_with(&format!(".{ZONE}")) {
        return bad("not a name under clusterset.local (e.g. web.demo.svc.clusterset.local)");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("has an empty label or one longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("may hold only letters, digits, '-' and '.'");
        }
    }
    Ok(name)
}

/// The name Lighthouse gives an exported service: `<name>.<namespace>.svc.clusterset.local`.
pub fn service_name(name: &str, namespace: &str) -> Result<String, String> {
    lookup_name(&format!("{name}.{namespace}.svc.{ZONE}"))
}

/// `vpc-dns-config`'s `coredns-vip`: the address vpc-dns serves each VPC on.
pub fn vip(value: Option<&str>) -> Result<Ipv4Addr, CheckResult> {
    let fix = format!(
        "set {COREDNS_VIP_KEY} in Kube-OVN's {VPC_DNS_CONFIG} ConfigMap (Kube-OVN's vpc-dns guide); without it Kube-OVN runs no vpc-dns for VPCs"
    );
    match value {
        None => Err(CheckResult::fail(
            DNS_LOOKUP,
            format!("{VPC_DNS_CONFIG} has no {COREDNS_VIP_KEY}: vpc-dns has no address in the VPC"),
            fix,
        )),
        Some(v) => parse_ipv4(v.trim()).map_err(|e| {
            CheckResult::fail(
                DNS_LOOKUP,
                format!("{VPC_DNS_CONFIG} {COREDNS_VIP_KEY}: {e}"),
                fix,
            )
        }),
    }
}

/// Separates the lookup's output from the control lookup's.
const CONTROL: &str = "multivpc-dns-lookup-control";

/// An A lookup of `name` at `server`, with whichever nslookup the image has (busybox's in
/// Kube-OVN's Alpine-based gateway image); then, when it got no answer, a control lookup of
/// the root zone's SOA, which vpc-dns answers through its own upstream (the node's resolver),
/// not through the cluster DNS: an answer there means vpc-dns runs and only its way to the
/// cluster DNS is broken. `name` comes from [`lookup_name`].
pub fn script(name: &str, server: Ipv4Addr) -> String {
    let server = quote(&server.to_string());
    format!(
        "if command -v nslookup >/dev/null 2>&1; then ns() {{ nslookup \"$@\"; }}\n\
         elif command -v busybox >/dev/null 2>&1; then ns() {{ busybox nslookup \"$@\"; }}\n\
         else echo 'nslookup: not found'; exit 127; fi\n\
         out=$(ns -type=a {} {server} 2>&1); rc=$?\n\
         printf '%s\\n' \"$out\"\n\
         case $out in *'timed out'*|*'no servers could be reached'*)\n\
         echo {CONTROL}; ns -type=soa . {server} 2>&1;;\n\
         esac\n\
         exit $rc\n",
        quote(name)
    )
}

/// What nslookup (busybox's or BIND's) printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Addresses(Vec<Ipv4Addr>),
    NxDomain,
    ServFail,
    Refused,
    /// No reply at all.
    Silent,
    /// Anything else: its last line.
    Other(String),
}

pub fn parse(output: &str) -> Answer {
    let mut addresses = Vec::new();
    let mut after_name = false;
    for line in output.lines().map(str::trim) {
        if line.starts_with("Name:") {
            after_name = true;
        } else if after_name && line.starts_with("Address") {
            // `Address: 1.2.3.4` (busybox ≥ 1.28, BIND) or `Address 1: 1.2.3.4 name` (older).
            if let Some(ip) = line
                .split_once(':')
                .and_then(|(_, v)| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
            {
                addresses.push(ip);
            }
        }
    }
    if !addresses.is_empty() {
        return Answer::Addresses(addresses);
    }
    let has = |s: &str| output.contains(s);
    if has("NXDOMAIN") {
        Answer::NxDomain
    } else if has("SERVFAIL") {
        Answer::ServFail
    } else if has("REFUSED") {
        Answer::Refused
    } else if has("timed out") || has("no servers could be reached") || has("can't connect") {
        Answer::Silent
    } else {
        Answer::Other(
            output
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
                .to_owned(),
        )
    }
}

const ROUTE_FIX: &str = "vpc-dns forwards clusterset.local but gets no answer from the cluster DNS: the route dns-forwarder adds (the VpcDnsForward's status.route) must be in the running vpc-dns pods (they get it when they start: restart them if they predate it), and the cluster DNS must forward clusterset.local to Lighthouse (subctl diagnose service-discovery)";

/// The check's result for the lookup of `name` at `server` from `pod`.
pub fn check(
    name: &str,
    server: Ipv4Addr,
    pod: &str,
    output: &Result<CommandOutput, String>,
) -> CheckResult {
    let out = match output {
        Ok(out) => out,
        Err(e) => {
            return CheckResult::fail(
                DNS_LOOKUP,
                format!("cannot run nslookup in {pod}: {e}"),
                "check pods/exec permission and the pod",
            );
        }
    };
    if out.exit_code == 127 {
        return CheckResult::skip(DNS_LOOKUP, format!("{pod} has no nslookup"));
    }
    let asked = format!("vpc-dns at {server}, asked from {pod},");
    let text = format!("{}{}", out.stdout, out.stderr);
    let (lookup, control) = text
        .split_once(&format!("{CONTROL}\n"))
        .unwrap_or((text.as_str(), ""));
    match parse(lookup) {
        Answer::Addresses(ips) => CheckResult::pass(
            DNS_LOOKUP,
            format!(
                "{asked} resolves {name} to {}",
                ips.iter()
                    .map(Ipv4Addr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Answer::NxDomain => CheckResult::fail(
            DNS_LOOKUP,
            format!("{asked} says {name} does not exist (NXDOMAIN)"),
            "either vpc-dns does not forward clusterset.local (see dns-forward above: the Corefile ConfigMap needs the block, and the running vpc-dns must have reloaded it) or nothing is exported under that name (kubectl get serviceimports -A; subctl export service)",
        ),
        Answer::ServFail => CheckResult::fail(
            DNS_LOOKUP,
            format!("{asked} could not get an answer for {name} (SERVFAIL)"),
            ROUTE_FIX,
        ),
        Answer::Refused => CheckResult::fail(
            DNS_LOOKUP,
            format!("{asked} refused the query for {name} (REFUSED)"),
            "vpc-dns serves no zone that holds the name: check the Corefile the vpc-dns Deployment mounts",
        ),
        Answer::Silent if !matches!(parse(control), Answer::Silent | Answer::Other(_)) => {
            CheckResult::fail(
                DNS_LOOKUP,
                format!(
                    "{asked} did not answer the query for {name} in time, though it answers for the root zone: it runs, but waits on the cluster DNS"
                ),
                ROUTE_FIX,
            )
        }
        Answer::Silent => CheckResult::fail(
            DNS_LOOKUP,
            format!("{asked} answers nothing, not even for the root zone"),
            "check that the vpc-dns pods of the VPC run (kubectl -n kube-system get deploy -l app=vpc-dns) and Kube-OVN's SwitchLBRule for the address (kubectl get slr)",
        ),
        Answer::Other(last) => CheckResult::fail(
            DNS_LOOKUP,
            format!(
                "nslookup {name} at {server} in {pod} failed (exit {}): {last}",
                out.exit_code
            ),
            "read the error above",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Outcome;

    fn out(stdout: &str, exit_code: i32) -> Result<CommandOutput, String> {
        Ok(CommandOutput {
            stdout: stdout.into(),
            stderr: String::new(),
            exit_code,
        })
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 3);

    #[test]
    fn names_are_checked_before_they_reach_a_command() {
        assert_eq!(
            lookup_name("Web.Demo.svc.clusterset.local.").unwrap(),
            "web.demo.svc.clusterset.local"
        );
        assert_eq!(
            service_name("web", "demo").unwrap(),
            "web.demo.svc.clusterset.local"
        );
        for bad in [
            "web.demo.svc.cluster.local",
            "clusterset.local.evil",
            "a..clusterset.local",
            "$(reboot).clusterset.local",
            "a'b.clusterset.local",
            "a b.clusterset.local",
            &format!("{}.clusterset.local", "a".repeat(64)),
            &format!("{}clusterset.local", "a.".repeat(125)),
        ] {
            assert!(lookup_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_script_quotes_and_parses_in_sh() {
        let s = script("web.demo.svc.clusterset.local", SERVER);
        assert!(s.contains("ns -type=a 'web.demo.svc.clusterset.local' '10.96.0.3'"));
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", &s])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn busybox_and_bind_answers_are_read() {
        let busybox = "Server:\t\t10.96.0.3\nAddress:\t10.96.0.3:53\n\nName:\tweb.demo.svc.clusterset.local\nAddress: 242.1.0.10\n\n";
        assert_eq!(
            parse(busybox),
            Answer::Addresses(vec!["242.1.0.10".parse().unwrap()])
        );
        let old_busybox = "Server:    10.96.0.3\nAddress 1: 10.96.0.3\n\nName:      web.demo.svc.clusterset.local\nAddress 1: 242.1.0.10 web.demo.svc.clusterset.local\nAddress 2: 242.1.0.11\n";
        assert_eq!(
            parse(old_busybox),
            Answer::Addresses(vec![
                "242.1.0.10".parse().unwrap(),
                "242.1.0.11".parse().unwrap()
            ])
        );
        let bind = "Server:\t\t10.96.0.3\nAddress:\t10.96.0.3#53\n\nNon-authoritative answer:\nName:\tweb.demo.svc.clusterset.local\nAddress: 242.1.0.10\n";
        assert_eq!(
            parse(bind),
            Answer::Addresses(vec!["242.1.0.10".parse().unwrap()])
        );
        assert_eq!(
            parse(
                "Server:\t\t10.96.0.3\nAddress:\t10.96.0.3:53\n\n** server can't find x.clusterset.local: NXDOMAIN\n"
            ),
            Answer::NxDomain
        );
        assert_eq!(
            parse("** server can't find x.clusterset.local: SERVFAIL\n"),
            Answer::ServFail
        );
        assert_eq!(
            parse(";; connection timed out; no servers could be reached\n"),
            Answer::Silent
        );
        assert_eq!(
            parse("weird\nlast words\n\n"),
            Answer::Other("last words".into())
        );
    }

    #[test]
    fn each_answer_is_a_result_naming_the_link() {
        let name = "web.demo.svc.clusterset.local";
        let pass = check(
            name,
            SERVER,
            "kube-system/gw-0",
            &out("Name:\tx\nAddress: 242.1.0.10\n", 0),
        );
        assert_eq!(pass.outcome, Outcome::Pass);
        assert!(pass.reason.contains("242.1.0.10"), "{}", pass.reason);
        for (text, words) in [
            (
                "** server can't find x: NXDOMAIN",
                "does not forward clusterset.local",
            ),
            ("** server can't find x: SERVFAIL", "status.route"),
            (
                ";; connection timed out; no servers could be reached",
                "SwitchLBRule",
            ),
            (
                ";; connection timed out; no servers could be reached\nmultivpc-dns-lookup-control\n;; connection timed out; no servers could be reached",
                "SwitchLBRule",
            ),
            (
                ";; connection timed out; no servers could be reached\nmultivpc-dns-lookup-control\n** server can't find .: NXDOMAIN",
                "status.route",
            ),
        ] {
            let r = check(name, SERVER, "kube-system/gw-0", &out(text, 1));
            assert_eq!(r.outcome, Outcome::Fail, "{text}");
            assert!(r.fix.as_deref().unwrap().contains(words), "{r:?}");
        }
        assert_eq!(
            check(name, SERVER, "p", &out("nslookup: not found", 127)).outcome,
            Outcome::Skip
        );
        assert_eq!(
            check(name, SERVER, "p", &Err("forbidden".into())).outcome,
            Outcome::Fail
        );
        assert!(vip(None).is_err());
        assert!(vip(Some("10.96.0.3;reboot")).is_err());
        assert_eq!(vip(Some(" 10.96.0.3 ")).unwrap(), SERVER);
    }
}
