//! The route vpc-dns needs to reach the cluster DNS, in both forms Kube-OVN uses for vpc-dns
//! Deployments:
//!
//! - v1.12: an `init-route` init container running `sh -c "ip -4 route add <dst> via <gw> dev net1;…"`;
//! - v1.13+: a pod-template annotation `<nad-provider>.kubernetes.io/routes` holding JSON
//!   `[{"dst":"10.96.0.1/32","gw":"10.244.0.1"}]`.
//!
//! Everything here is pure: it reads a Deployment and returns the patch (if any) that makes it
//! carry, or stop carrying, one route.

use std::{fmt, net::Ipv4Addr};

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

/// Name of the v1.12 init container that installs routes.
pub const INIT_ROUTE_CONTAINER: &str = "init-route";
const ROUTES_SUFFIX: &str = ".kubernetes.io/routes";
const LOGICAL_SWITCH_SUFFIX: &str = ".kubernetes.io/logical_switch";

/// A host route on vpc-dns's `net1` (the ovn-default attachment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub gw: Ipv4Addr,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {} dev net1", self.dst, self.gw)
    }
}

impl Route {
    /// Parses the form written to status (`<dst> via <gw> dev net1`).
    pub fn parse_status(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let dst = words.next()?.parse().ok()?;
        let (Some("via"), Some(gw), Some("dev"), Some("net1"), None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return None;
        };
        Some(Self {
            dst,
            gw: gw.parse().ok()?,
        })
    }

    /// The v1.12 init-route script entry, exactly as Kube-OVN and the original operator write it.
    fn script_entry(&self) -> String {
        format!("ip -4 route add {} via {} dev net1", self.dst, self.gw)
    }
}

/// How a vpc-dns Deployment carries its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteForm {
    /// Kube-OVN v1.12: `init-route` init container.
    InitContainer,
    /// Kube-OVN v1.13+: pod-template annotation with this key.
    Annotation { key: String },
}

/// A Deployment whose routes this controller cannot edit safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "cannot tell how the Deployment carries routes: no init-route init container, no *.kubernetes.io/routes annotation and no NAD provider logical_switch annotation"
    )]
    UnknownForm,
    #[error("the init-route container's command is not [sh, -c, <script>]")]
    UnexpectedCommand,
    #[error(
        "the init-route script ends in a line continuation; a route appended to it would become part of that command"
    )]
    LineContinuation,
    #[error("annotation {key} is not a JSON list of routes: {reason}")]
    AnnotationNotJson { key: String, reason: String },
}

/// Detects the Kube-OVN generation from the Deployment's pod template.
pub fn detect(deployment: &Deployment) -> Result<RouteForm, RouteError> {
    let template = deployment.spec.as_ref().map(|s| &s.template);
    let has_init_route = template
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == INIT_ROUTE_CONTAINER));
    if has_init_route {
        return Ok(RouteForm::InitContainer);
    }
    let annotations = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    let Some(annotations) = annotations else {
        return Err(RouteError::UnknownForm);
    };
    if let Some(key) = annotations
        .keys()
        .find(|k| k.ends_with(ROUTES_SUFFIX) && !k.starts_with("ovn."))
    {
        return Ok(RouteForm::Annotation { key: key.clone() });
    }
    // No routes yet: the provider is the one whose logical switch is ovn-default.
    annotations
        .iter()
        .find_map(|(k, v)| {
            let provider = k.strip_suffix(LOGICAL_SWITCH_SUFFIX)?;
            (provider != "ovn" && v == "ovn-default").then(|| RouteForm::Annotation {
                key: format!("{provider}{ROUTES_SUFFIX}"),
            })
        })
        .ok_or(RouteError::UnknownForm)
}

/// One command of an init-route script: the bytes of its text (`start..end`, surrounding
/// whitespace excluded) and where its terminator (`;`) ends, when it has one.
struct Command {
    segment_start: usize,
    start: usize,
    end: usize,
    after_semicolon: Option<usize>,
}

/// The commands of a `sh -c` script: separated by `;` or newlines; `#` comments (at the start
/// of a word) run to the end of the line and hold no command.
fn commands(script: &str) -> Vec<Command> {
    let bytes = script.as_bytes();
    let mut out = Vec::new();
    let mut segment_start = 0;
    let mut i = 0;
    let push = |out: &mut Vec<Command>, from: usize, to: usize, after: Option<usize>| {
        let text = &script[from..to];
        let start = from + (text.len() - text.trim_start().len());
        let end = from + text.trim_end().len();
        if start < end {
            out.push(Command {
                segment_start: from,
                start,
                end,
                after_semicolon: after,
            });
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b';' => {
                push(&mut out, segment_start, i, Some(i + 1));
                segment_start = i + 1;
            }
            b'\n' => {
                push(&mut out, segment_start, i, None);
                segment_start = i + 1;
            }
            b'#' if i == segment_start
                || bytes[i - 1].is_ascii_whitespace()
                || bytes[i - 1] == b';' =>
            {
                push(&mut out, segment_start, i, None);
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                segment_start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    push(&mut out, segment_start, bytes.len(), None);
    out
}

/// Whether the script's last line ends in a comment (which would swallow text appended to it).
fn ends_in_comment(script: &str) -> bool {
    let last = script.rsplit('\n').next().unwrap_or_default();
    let bytes = last.as_bytes();
    (0..bytes.len()).any(|i| {
        bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace() || bytes[i - 1] == b';')
    })
}

/// Whether [`script_with`] appends `<entry>;` right after `script` (else on a line of its own).
fn appends_directly(script: &str) -> bool {
    script.is_empty()
        || (!ends_in_comment(script) && (script.ends_with(';') || script.ends_with('\n')))
}

/// Whether the script holds the route as a command of its own (spacing tolerated; not in a
/// comment).
pub fn script_has(script: &str, route: &Route) -> bool {
    let entry = route.script_entry();
    commands(script)
        .iter()
        .any(|c| normalise(&script[c.start..c.end]) == entry)
}

fn normalise(entry: &str) -> String {
    entry.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The script with the route appended (unchanged if present). After a script that ends in `;`
/// or a newline (Kube-OVN's and the original operator's form) the entry follows directly,
/// `<entry>;`; after anything else (a command without `;`, a comment) on a line of its own,
/// `\n<entry>;\n`, so [`script_without`] can tell the two apart and give back the exact bytes.
/// A script ending in a line continuation would swallow the entry: refused.
pub fn script_with(script: &str, route: &Route) -> Result<String, RouteError> {
    if script_has(script, route) {
        return Ok(script.to_owned());
    }
    let body = script.strip_suffix('\n').unwrap_or(script);
    if (body.len() - body.trim_end_matches('\\').len()) % 2 == 1 {
        return Err(RouteError::LineContinuation);
    }
    let entry = route.script_entry();
    Ok(if appends_directly(script) {
        format!("{script}{entry};")
    } else {
        format!("{script}\n{entry};\n")
    })
}

/// The script without the route (every copy of it): the inverse of [`script_with`], byte for
/// byte, for what it appended.
pub fn script_without(script: &str, route: &Route) -> String {
    let entry = route.script_entry();
    let mut out = script.to_owned();
    for c in commands(script).iter().rev() {
        if normalise(&script[c.start..c.end]) != entry {
            continue;
        }
        let (mut from, mut to) = (c.segment_start, c.after_semicolon.unwrap_or(c.end));
        // The `\n<entry>;\n` form: its two newlines were added with it.
        let before = &script[..from];
        if to + 1 == script.len()
            && script[to..] == *"\n"
            && before.ends_with('\n')
            && !appends_directly(&before[..before.len() - 1])
        {
            from -= 1;
            to += 1;
        }
        out.replace_range(from..to, "");
    }
    out
}

fn annotation_routes(key: &str, value: Option<&str>) -> Result<Vec<Value>, RouteError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    serde_json::from_str::<Vec<Value>>(value).map_err(|err| RouteError::AnnotationNotJson {
        key: key.to_owned(),
        reason: err.to_string(),
    })
}

fn annotation_entry_is(entry: &Value, route: &Route) -> bool {
    let dst = route.dst.to_string();
    let gw = route.gw.to_string();
    let dst_matches = entry
        .get("dst")
        .and_then(Value::as_str)
        .is_some_and(|d| d == dst || d.strip_suffix("/32") == Some(dst.as_str()));
    dst_matches && entry.get("gw").and_then(Value::as_str) == Some(gw.as_str())
}

fn annotation_value(deployment: &Deployment, key: &str) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

fn init_route_command(deployment: &Deployment) -> Option<Vec<String>> {
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == INIT_ROUTE_CONTAINER)?
        .command
        .clone()
}

/// Whether the Deployment currently carries the route.
pub fn has_route(deployment: &Deployment, route: &Route) -> Result<bool, RouteError> {
    match detect(deployment)? {
        RouteForm::InitContainer => {
            let command = init_route_command(deployment).unwrap_or_default();
            match command.as_slice() {
                [sh, c, script] if sh == "sh" && c == "-c" => Ok(script_has(script, route)),
                _ => Err(RouteError::UnexpectedCommand),
            }
        }
        RouteForm::Annotation { key } => {
            let entries = annotation_routes(&key, annotation_value(deployment, &key).as_deref())?;
            Ok(entries.iter().any(|e| annotation_entry_is(e, route)))
        }
    }
}

/// The patch that makes the Deployment carry (`present`) or not carry the route, or `None`
/// when it already is as wanted. The patch carries the Deployment's resourceVersion so that a
/// concurrent rewrite by Kube-OVN makes it fail (409) rather than be overwritten; it is a
/// strategic merge patch (init container, merged by name) or a merge patch (annotation), as
/// told by [`PatchKind`].
pub fn route_patch(
    deployment: &Deployment,
    route: &Route,
    present: bool,
) -> Result<Option<(PatchKind, Value)>, RouteError> {
    let resource_version = deployment.metadata.resource_version.clone();
    match detect(deployment)? {
        RouteForm::InitContainer => {
            let command = init_route_command(deployment).unwrap_or_default();
            let [sh, c, script] = command.as_slice() else {
                return Err(RouteError::UnexpectedCommand);
            };
            if sh != "sh" || c != "-c" {
                return Err(RouteError::UnexpectedCommand);
            }
            let edited = if present {
                script_with(script, route)?
            } else {
                script_without(script, route)
            };
            if edited == *script {
                return Ok(None);
            }
            Ok(Some((
                PatchKind::Strategic,
                json!({
                    "metadata": { "resourceVersion": resource_version },
                    "spec": { "template": { "spec": { "initContainers": [
                        { "name": INIT_ROUTE_CONTAINER, "command": [sh, c, edited] }
                    ]}}}
                }),
            )))
        }
        RouteForm::Annotation { key } => {
            let current = annotation_value(deployment, &key);
            let mut entries = annotation_routes(&key, current.as_deref())?;
            let had = entries.iter().any(|e| annotation_entry_is(e, route));
            let value = match (present, had) {
                (true, true) | (false, false) => return Ok(None),
                (true, false) => {
                    entries.push(
                        json!({ "dst": format!("{}/32", route.dst), "gw": route.gw.to_string() }),
                    );
                    Value::String(serde_json::to_string(&entries).expect("JSON values serialise"))
                }
                (false, true) => {
                    entries.retain(|e| !annotation_entry_is(e, route));
                    if entries.is_empty() {
                        // Only this controller had put routes there: drop the annotation.
                        Value::Null
                    } else {
                        Value::String(
                            serde_json::to_string(&entries).expect("JSON values serialise"),
                        )
                    }
                }
            };
            Ok(Some((
                PatchKind::Merge,
                json!({
                    "metadata": { "resourceVersion": resource_version },
                    "spec": { "template": { "metadata": { "annotations": { key: value } } } }
                }),
            )))
        }
    }
}

/// Which patch type a [`route_patch`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Strategic,
    Merge,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ROUTE: Route = Route {
        dst: Ipv4Addr::new(10, 96, 0, 10),
        gw: Ipv4Addr::new(10, 244, 0, 1),
    };
    /// The seed's init-route script before the forward existed.
    const SEED_SCRIPT: &str = "ip -4 route add 10.96.0.1 via 10.244.0.1 dev net1;ip -4 route add 218.2.2.2 via 10.244.0.1 dev net1;ip -4 route add 114.114.114.114 via 10.244.0.1 dev net1;";

    fn v112(script: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "vpc-dns-test-dns1", "namespace": "kube-system", "resourceVersion": "7" },
            "spec": { "selector": {}, "template": {
                "metadata": { "annotations": {
                    "k8s.v1.cni.cncf.io/networks": "default/ovn-nad",
                    "ovn-nad.default.ovn.kubernetes.io/logical_switch": "ovn-default",
                    "ovn.kubernetes.io/logical_switch": "vpc2-net1"
                }},
                "spec": {
                    "initContainers": [{ "name": "init-route", "image": "kubeovn/vpc-nat-gateway:v1.12.8", "command": ["sh", "-c", script] }],
                    "containers": [{ "name": "coredns" }]
                }
            }}
        }))
        .unwrap()
    }

    fn v113(routes: Option<&str>) -> Deployment {
        let mut annotations = json!({
            "k8s.v1.cni.cncf.io/networks": "default/ovn-nad",
            "ovn-nad.default.ovn.kubernetes.io/logical_switch": "ovn-default",
            "ovn.kubernetes.io/logical_switch": "vpc2-net1"
        });
        if let Some(r) = routes {
            annotations["ovn-nad.default.ovn.kubernetes.io/routes"] = json!(r);
        }
        serde_json::from_value(json!({
            "metadata": { "name": "vpc-dns-x", "namespace": "kube-system", "resourceVersion": "9" },
            "spec": { "selector": {}, "template": {
                "metadata": { "annotations": annotations },
                "spec": { "containers": [{ "name": "coredns" }] }
            }}
        }))
        .unwrap()
    }

    #[test]
    fn seed_v112_gets_the_seed_line() {
        let d = v112(SEED_SCRIPT);
        assert_eq!(detect(&d).unwrap(), RouteForm::InitContainer);
        assert!(!has_route(&d, &ROUTE).unwrap());
        let (kind, patch) = route_patch(&d, &ROUTE, true).unwrap().unwrap();
        assert_eq!(kind, PatchKind::Strategic);
        let script = patch["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
            .as_str()
            .unwrap();
        // Exactly what the seed README shows after `kubectl apply -f dns.yaml`.
        assert_eq!(
            script,
            format!("{SEED_SCRIPT}ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1;")
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        assert_eq!(script_without(script, &ROUTE), SEED_SCRIPT);
    }

    #[test]
    fn adopted_route_is_not_duplicated_and_is_removed() {
        let adopted = format!("{SEED_SCRIPT}ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1;");
        let d = v112(&adopted);
        assert!(has_route(&d, &ROUTE).unwrap());
        assert_eq!(route_patch(&d, &ROUTE, true).unwrap(), None);
        let (_, patch) = route_patch(&d, &ROUTE, false).unwrap().unwrap();
        assert_eq!(
            patch["spec"]["template"]["spec"]["initContainers"][0]["command"][2],
            SEED_SCRIPT
        );
    }

    #[test]
    fn v113_annotation_is_edited_keeping_foreign_entries() {
        let kube_ovn = r#"[{"dst":"10.96.0.1/32","gw":"10.244.0.1"}]"#;
        let d = v113(Some(kube_ovn));
        assert_eq!(
            detect(&d).unwrap(),
            RouteForm::Annotation {
                key: "ovn-nad.default.ovn.kubernetes.io/routes".into()
            }
        );
        let (kind, patch) = route_patch(&d, &ROUTE, true).unwrap().unwrap();
        assert_eq!(kind, PatchKind::Merge);
        let value = patch["spec"]["template"]["metadata"]["annotations"]["ovn-nad.default.ovn.kubernetes.io/routes"]
            .as_str()
            .unwrap();
        let entries: Vec<Value> = serde_json::from_str(value).unwrap();
        assert_eq!(
            entries,
            vec![
                json!({"dst": "10.96.0.1/32", "gw": "10.244.0.1"}),
                json!({"dst": "10.96.0.10/32", "gw": "10.244.0.1"}),
            ]
        );
        let programmed = v113(Some(value));
        assert!(has_route(&programmed, &ROUTE).unwrap());
        assert_eq!(route_patch(&programmed, &ROUTE, true).unwrap(), None);
        let (_, removal) = route_patch(&programmed, &ROUTE, false).unwrap().unwrap();
        let left = removal["spec"]["template"]["metadata"]["annotations"]["ovn-nad.default.ovn.kubernetes.io/routes"]
            .as_str()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(left).unwrap(),
            serde_json::from_str::<Value>(kube_ovn).unwrap()
        );
    }

    #[test]
    fn v113_without_routes_uses_the_nad_provider() {
        let d = v113(None);
        let (_, patch) = route_patch(&d, &ROUTE, true).unwrap().unwrap();
        let annotations = &patch["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["ovn-nad.default.ovn.kubernetes.io/routes"],
            r#"[{"dst":"10.96.0.10/32","gw":"10.244.0.1"}]"#
        );
        let programmed = v113(Some(
            annotations["ovn-nad.default.ovn.kubernetes.io/routes"]
                .as_str()
                .unwrap(),
        ));
        let (_, removal) = route_patch(&programmed, &ROUTE, false).unwrap().unwrap();
        assert_eq!(
            removal["spec"]["template"]["metadata"]["annotations"]["ovn-nad.default.ovn.kubernetes.io/routes"],
            Value::Null
        );
    }

    #[test]
    fn hostile_deployments_are_refused() {
        let garbage = v113(Some("not json"));
        assert!(matches!(
            route_patch(&garbage, &ROUTE, true),
            Err(RouteError::AnnotationNotJson { .. })
        ));
        let mut odd = v112(SEED_SCRIPT);
        odd.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .init_containers
            .as_mut()
            .unwrap()[0]
            .command = Some(vec!["/bin/route-helper".into()]);
        assert_eq!(
            route_patch(&odd, &ROUTE, true),
            Err(RouteError::UnexpectedCommand)
        );
        let bare: Deployment = serde_json::from_value(
            json!({"metadata": {"name": "x"}, "spec": {"selector": {}, "template": {}}}),
        )
        .unwrap();
        assert_eq!(detect(&bare), Err(RouteError::UnknownForm));
    }

    #[test]
    fn odd_spacing_counts_as_present() {
        let script = "ip  -4 route add 10.96.0.10   via 10.244.0.1 dev net1 ; echo done;";
        assert!(script_has(script, &ROUTE));
        assert_eq!(script_with(script, &ROUTE).unwrap(), script);
        assert_eq!(script_without(script, &ROUTE), " echo done;");
    }

    #[test]
    fn status_form_round_trips() {
        assert_eq!(Route::parse_status(&ROUTE.to_string()), Some(ROUTE));
        assert_eq!(Route::parse_status("10.96.0.10 via x dev net1"), None);
        assert_eq!(
            Route::parse_status("10.96.0.10 via 10.0.0.1 dev net1; reboot"),
            None
        );
    }

    /// Runs `script` with `sh` and a stub `ip` that only prints its arguments (nothing touches
    /// the host's routes); returns the `ip` calls, or None when sh refuses the syntax.
    fn ip_calls(script: &str) -> Option<Vec<String>> {
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                "ip() { printf 'ip %s\\n' \"$*\"; }; echo() { :; }; ls() { :; }; eval \"$1\"",
                "sh",
                script,
            ])
            .output()
            .expect("sh runs");
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
    }

    const OURS: &str = "ip -4 route add 10.96.0.10 via 10.244.0.1 dev net1";

    #[test]
    fn scripts_with_newlines_comments_and_continuations() {
        for script in [
            "ip -4 route add 10.96.0.1 via 10.244.0.1 dev net1;\n",
            "ip -4 route add 10.96.0.1 via 10.244.0.1 dev net1;\n\n",
            "ip -4 route add 10.96.0.1 via 10.244.0.1 dev net1",
            "ip -4 route add 10.96.0.1 via 10.244.0.1 dev net1 # the apiserver",
            "# routes\nip -4 route add 10.96.0.1 via 10.244.0.1 dev net1",
            "ip -4 route add \\\n  10.96.0.1 via 10.244.0.1 dev net1;",
            "ip -4 route add 10.96.0.1 via 10.244.0.1 dev net1;  ",
        ] {
            let with = script_with(script, &ROUTE).unwrap();
            let calls = ip_calls(&with).unwrap_or_else(|| panic!("sh refuses {with:?}"));
            assert_eq!(
                calls.iter().filter(|c| *c == OURS).count(),
                1,
                "{script:?} -> {with:?}: {calls:?}"
            );
            assert_eq!(script_without(&with, &ROUTE), script, "{with:?}");
            assert_eq!(script_with(&with, &ROUTE).unwrap(), with);
        }
        // A route in a comment is not there; a script ending in a continuation is refused.
        let commented = format!("echo x # {OURS};");
        assert!(!script_has(&commented, &ROUTE));
        for cont in ["echo x \\", "echo x \\\n"] {
            assert_eq!(
                script_with(cont, &ROUTE),
                Err(RouteError::LineContinuation),
                "{cont:?}"
            );
        }
        assert!(
            script_with("echo x \\\\", &ROUTE).is_ok(),
            "an escaped backslash ends nothing"
        );
    }

    /// Scripts of Kube-OVN's grammar and worse: commands (some carrying routes), comments,
    /// continuation lines, joined by `;`, newlines or both, with or without a final newline.
    fn script() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            Just("ip -4 route add 10.96.0.1 via 10.244.0.1 dev net1".to_owned()),
            Just("ip -4 route add 10.16.0.2 via 10.244.0.1 dev net1".to_owned()),
            Just("echo hi".to_owned()),
            Just(format!("# {OURS};")),
            Just("ls \\\n  -l".to_owned()),
            Just("echo a # trailing comment".to_owned()),
        ];
        let joint = prop_oneof![Just(";"), Just("\n"), Just(";\n"), Just("; ")];
        (
            prop::collection::vec((line, joint), 0..5),
            prop_oneof![Just(""), Just("\n"), Just(";"), Just(" # end")],
        )
            .prop_map(|(parts, tail)| {
                let mut s: String = parts.iter().map(|(l, j)| format!("{l}{j}")).collect();
                s.push_str(tail);
                s
            })
    }

    proptest! {
        /// Adding runs the route exactly once wherever the script stood, keeps the script
        /// valid sh, and removing gives back the bytes.
        #[test]
        fn route_in_any_script_runs_once_and_leaves_exactly(script in script()) {
            prop_assume!(ip_calls(&script).is_some());
            let with = script_with(&script, &ROUTE).unwrap();
            let calls = ip_calls(&with);
            prop_assert!(calls.is_some(), "sh refuses {:?}", with);
            prop_assert_eq!(calls.unwrap().iter().filter(|c| *c == OURS).count(), 1);
            prop_assert_eq!(script_with(&with, &ROUTE).unwrap(), with.clone());
            prop_assert_eq!(script_without(&with, &ROUTE), script);
        }

        #[test]
        fn script_round_trip(entries in proptest::collection::vec("[a-z0-9 .-]{0,30}", 0..5)) {
            let script: String = entries.iter().map(|e| format!("{e};")).collect();
            prop_assume!(!script_has(&script, &ROUTE));
            let with = script_with(&script, &ROUTE).unwrap();
            prop_assert!(script_has(&with, &ROUTE));
            prop_assert_eq!(script_with(&with, &ROUTE).unwrap(), with.clone());
            prop_assert_eq!(script_without(&with, &ROUTE), script);
        }
    }
}
