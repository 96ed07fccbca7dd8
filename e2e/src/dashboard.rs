//! The Grafana dashboard the umbrella chart ships (`charts/kubeovn-multivpc/dashboards/`): the
//! metric names its queries use, and whether a `/metrics` exposition serves a name, so that a
//! test against the running binaries can prove that every panel has data to show.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The dashboard JSON exactly as the chart ships it.
pub const DASHBOARD: &str =
    include_str!("../../charts/kubeovn-multivpc/dashboards/kubeovn-multivpc.json");

/// Prefixes of the metric families the controllers serve; anything else in a query (functions,
/// label names, `le`, `by`) is not a metric of ours.
const PREFIXES: [&str; 4] = [
    "multivpc_",
    "controller_runtime_",
    "leader_election_",
    "process_",
];

/// Suffixes under which a histogram's samples are exposed.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Every panel of the dashboard, rows' nested panels included, in order.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            // A collapsed row carries its panels inside itself.
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The `expr` of every target of every panel (a target without one is not a Prometheus query).
fn exprs(dashboard: &Value) -> Vec<&str> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect()
}

/// The metric names in a PromQL expression, as written (`x_bucket` stays `x_bucket`): the
/// identifiers with one of our prefixes, outside string literals (label values).
fn names_in(expr: &str, out: &mut BTreeSet<String>) {
    let mut chars = expr.chars().peekable();
    let mut ident = String::new();
    let flush = |ident: &mut String, out: &mut BTreeSet<String>| {
        if PREFIXES.iter().any(|p| ident.starts_with(p)) {
            out.insert(ident.clone());
        }
        ident.clear();
    };
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            ident.push(c);
            continue;
        }
        flush(&mut ident, out);
        if matches!(c, '"' | '\'' | '`') {
            // Skip the literal; only backquoted strings have no escapes.
            while let Some(s) = chars.next() {
                if s == '\\' && c != '`' {
                    chars.next();
                } else if s == c {
                    break;
                }
            }
        }
    }
    flush(&mut ident, out);
}

/// The metric names every query of `dashboard_json` uses, as written in the queries (a
/// histogram appears as `x_bucket`, `x_count`...; [`served`] accepts those).
pub fn metric_names(dashboard_json: &str) -> Result<BTreeSet<String>> {
    let dashboard: Value =
        serde_json::from_str(dashboard_json).context("the dashboard is not valid JSON")?;
    if !dashboard["panels"].is_array() {
        bail!("the dashboard has no panels");
    }
    let mut names = BTreeSet::new();
    for e in exprs(&dashboard) {
        names_in(e, &mut names);
    }
    Ok(names)
}

/// Whether a Prometheus text exposition serves `name`: a sample of it, or its `# TYPE` line
/// (a family without samples yet still proves the binary registers it). `x_bucket`, `x_sum`
/// and `x_count` are also served by `# TYPE x histogram`.
pub fn served(metrics_text: &str, name: &str) -> bool {
    let base = HISTOGRAM_SUFFIXES.iter().find_map(|s| name.strip_suffix(s));
    metrics_text.lines().any(|line| {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (family, kind) = (words.next(), words.next());
            family == Some(name)
                || (family.is_some() && family == base && kind == Some("histogram"))
        } else if line.starts_with('#') {
            false
        } else {
            let sample = line
                .split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            sample == name
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_extracted_from_every_target_of_nested_panels_and_not_from_label_values() {
        let sample = r#"{"panels": [
            {"type": "timeseries", "targets": [
                {"expr": "sum by (state) (multivpc_tunnel_tunnels)"},
                {"expr": "multivpc_connections{status!=\"connected\", tunnel=\"multivpc_not_a_metric\"} == 1"}
            ]},
            {"type": "row", "collapsed": true, "panels": [
                {"type": "timeseries", "targets": [
                    {"expr": "histogram_quantile(0.95, sum by (le, controller) (rate(controller_runtime_reconcile_time_seconds_bucket{controller=~'a|b'}[5m])))"},
                    {"expr": "process_cpu_seconds_total and on () leader_election_master_status"},
                    {"refId": "no expr"}
                ]}
            ]},
            {"type": "text"}
        ]}"#;
        let names = metric_names(sample).unwrap();
        let want: BTreeSet<String> = [
            "multivpc_tunnel_tunnels",
            "multivpc_connections",
            "controller_runtime_reconcile_time_seconds_bucket",
            "process_cpu_seconds_total",
            "leader_election_master_status",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(names, want);
        assert!(metric_names("{").is_err());
        assert!(metric_names(r#"{"title": "x"}"#).is_err());
    }

    #[test]
    fn the_shipped_dashboard_queries_every_category() {
        let names = metric_names(DASHBOARD).unwrap();
        for want in [
            // Tunnels Ready and Healthy, RTT, loss, probes
            "multivpc_tunnel_tunnels",
            "multivpc_connections",
            "multivpc_connection_latency_seconds",
            "multivpc_connection_loss_ratio",
            "multivpc_tunnel_probes_total",
            // Failovers and broker sync
            "multivpc_gateway_failover_total",
            "multivpc_gateway_failover_duration_seconds_bucket",
            "multivpc_broker_sync_total",
            "multivpc_broker_connected",
            // Reconciles
            "controller_runtime_reconcile_total",
            "controller_runtime_reconcile_errors_total",
            "controller_runtime_reconcile_time_seconds_bucket",
            // Gateway execs
            "multivpc_tunnel_exec_duration_seconds_bucket",
            "multivpc_tunnel_exec_failures_total",
        ] {
            assert!(names.contains(want), "{want} not queried: {names:?}");
        }
    }

    #[test]
    fn every_panel_is_described_and_queries_the_datasource_variable() {
        let d: Value = serde_json::from_str(DASHBOARD).unwrap();
        assert_eq!(d["uid"], "kubeovn-multivpc");
        assert_eq!(d["title"], "kubeovn-multivpc");
        assert_eq!(d["schemaVersion"], 39);
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "no prometheus datasource variable: {vars:?}"
        );
        let mut ids = BTreeSet::new();
        let mut queries = 0;
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "duplicate id: {title}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert!(
                !p["description"].as_str().unwrap_or_default().is_empty(),
                "{title}: no description"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{title}: no target");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "{title}: empty expr");
                let mut names = BTreeSet::new();
                names_in(expr, &mut names);
                assert!(
                    !names.is_empty(),
                    "{title}: {expr} queries no metric of ours"
                );
                queries += 1;
            }
        }
        assert!(queries >= 15, "{queries} queries");
    }

    /// Catches a misspelt name before any binary runs: every queried family (a histogram by its
    /// base name) is a string literal in the controllers' sources.
    #[test]
    fn every_queried_name_is_registered_in_the_sources() {
        fn sources(dir: &std::path::Path, out: &mut String) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    sources(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let mut text = String::new();
        for c in std::fs::read_dir(crate::repo_dir().join("crates")).unwrap() {
            let src = c.unwrap().path().join("src");
            if src.is_dir() {
                sources(&src, &mut text);
            }
        }
        for name in metric_names(DASHBOARD).unwrap() {
            let base = HISTOGRAM_SUFFIXES
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                text.contains(&format!("\"{name}\"")) || text.contains(&format!("\"{base}\"")),
                "{name} is not registered under crates/"
            );
        }
    }

    #[test]
    fn served_finds_samples_and_type_lines() {
        let text = "\
# HELP multivpc_tunnel_tunnels VpcNatTunnels by state
# TYPE multivpc_tunnel_tunnels gauge
multivpc_tunnel_tunnels{state=\"Programmed\"} 2
# HELP multivpc_gateway_failover_duration_seconds Time
# TYPE multivpc_gateway_failover_duration_seconds histogram
# TYPE multivpc_lonely_total counter
# TYPE multivpc_summary summary
multivpc_broker_connected 1
process_cpu_seconds_total 0.5
";
        for yes in [
            "multivpc_tunnel_tunnels",
            "multivpc_broker_connected",
            "process_cpu_seconds_total",
            "multivpc_lonely_total",
            "multivpc_gateway_failover_duration_seconds",
            "multivpc_gateway_failover_duration_seconds_bucket",
            "multivpc_gateway_failover_duration_seconds_count",
            "multivpc_gateway_failover_duration_seconds_sum",
        ] {
            assert!(served(text, yes), "{yes}");
        }
        for no in [
            "multivpc_tunnel",
            "multivpc_tunnel_tunnels_bucket",
            "multivpc_summary_bucket",
            "multivpc_connections",
            "VpcNatTunnels",
            "Programmed",
        ] {
            assert!(!served(text, no), "{no}");
        }
    }
}
