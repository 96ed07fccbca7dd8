//! Editing the vpc-dns Corefile: one marked section forwarding `clusterset.local` to the
//! cluster DNS. Everything outside the section is left byte for byte as it was, and removing
//! the section restores the text exactly as it was before it was added.

use std::net::Ipv4Addr;

/// First line of the section this controller owns.
pub const START: &str = "#multivpc-start";
/// Last line of the section this controller owns.
pub const END: &str = "#multivpc-end";

/// A Corefile this controller refuses to edit, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorefileError {
    #[error(
        "the Corefile has a {START} line without a matching {END} line; fix or remove it by hand"
    )]
    UnterminatedSection,
    #[error(
        "the Corefile already serves clusterset.local outside the {START}/{END} section; CoreDNS would refuse a second server block for it"
    )]
    ForeignClustersetZone,
}

/// The section's text, each line ending in a newline.
pub fn section(kube_dns: Ipv4Addr) -> String {
    format!("{START}\nclusterset.local:53 {{\n    forward . {kube_dns}\n}}\n{END}\n")
}

/// A section found in the text: byte range of its lines, including the newline after the end
/// marker when there is one.
struct Found {
    start: usize,
    end: usize,
    ends_with_newline: bool,
}

/// Byte offsets of every line: (start, end without newline, end with newline).
fn lines(text: &str) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let mut offset = 0;
    text.split_inclusive('\n').map(move |line| {
        let start = offset;
        offset += line.len();
        let bare = line.strip_suffix('\n').unwrap_or(line);
        (start, start + bare.len(), offset)
    })
}

fn find_sections(text: &str) -> Result<Vec<Found>, CorefileError> {
    let mut found = Vec::new();
    let mut open: Option<usize> = None;
    for (start, bare_end, end) in lines(text) {
        match (text[start..bare_end].trim(), open) {
            (START, None) => open = Some(start),
            (END, Some(section_start)) => {
                found.push(Found {
                    start: section_start,
                    end,
                    ends_with_newline: end > bare_end,
                });
                open = None;
            }
            (END, None) | (START, Some(_)) => return Err(CorefileError::UnterminatedSection),
            _ => {}
        }
    }
    if open.is_some() {
        return Err(CorefileError::UnterminatedSection);
    }
    Ok(found)
}

/// Removes the sections' bytes. A section that ends the text without a final newline was
/// appended to a text that had none, after a newline of its own: that newline goes too.
fn cut(text: &str, sections: &[Found]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for s in sections {
        let mut start = s.start;
        if !s.ends_with_newline
            && s.end == text.len()
            && start > from
            && text[..start].ends_with('\n')
        {
            start -= 1;
        }
        out.push_str(&text[from..start]);
        from = s.end;
    }
    out.push_str(&text[from..]);
    out
}

/// Whether a server block for `clusterset.local` exists outside our sections.
fn serves_clusterset(text: &str) -> bool {
    text.lines().any(|line| {
        let code = line.split('#').next().unwrap_or_default().trim_start();
        code.strip_prefix("clusterset.local")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '.', ' ', '\t', '{']))
    })
}

/// The original Go operator's block, unmarked: the three lines `clusterset.local:53 {`,
/// `forward . <kube_dns>`, `}` (any indentation). Replaced by a marked section in place, so a
/// migrated cluster's Corefile is adopted rather than refused. A block that forwards anywhere
/// else, or holds anything more, is someone else's and stays refused.
fn adopt_go_block(text: &str, kube_dns: Ipv4Addr) -> Option<String> {
    let lines: Vec<(usize, usize, usize)> = lines(text).collect();
    let forward = format!("forward . {kube_dns}");
    lines.windows(3).find_map(|w| {
        let [a, b, c] = [w[0], w[1], w[2]].map(|(s, e, _)| text[s..e].trim());
        (a == "clusterset.local:53 {" && b == forward && c == "}").then(|| {
            let (start, end) = (w[0].0, w[2].2);
            let mut wanted = section(kube_dns);
            if !text[..end].ends_with('\n') {
                wanted.pop();
            }
            format!("{}{wanted}{}", &text[..start], &text[end..])
        })
    })
}

/// The Corefile with exactly one section forwarding to `kube_dns`. An existing section is
/// rewritten in place (extra copies are dropped); otherwise the section is appended.
pub fn ensure(corefile: &str, kube_dns: Ipv4Addr) -> Result<String, CorefileError> {
    let sections = find_sections(corefile)?;
    let outside = cut(corefile, &sections);
    if serves_clusterset(&outside) {
        return match adopt_go_block(corefile, kube_dns) {
            Some(adopted) if !serves_clusterset(&cut(&adopted, &find_sections(&adopted)?)) => {
                ensure(&adopted, kube_dns)
            }
            _ => Err(CorefileError::ForeignClustersetZone),
        };
    }
    let wanted = section(kube_dns);
    let Some(first) = sections.first() else {
        return Ok(if corefile.is_empty() || corefile.ends_with('\n') {
            format!("{corefile}{wanted}")
        } else {
            format!("{corefile}\n{}", wanted.trim_end_matches('\n'))
        });
    };
    // Keep the first section where it is (and its final-newline style), drop the others.
    let replacement = if first.ends_with_newline {
        wanted
    } else {
        wanted.trim_end_matches('\n').to_owned()
    };
    let mut out = String::with_capacity(corefile.len());
    out.push_str(&corefile[..first.start]);
    out.push_str(&replacement);
    out.push_str(&cut(
        &corefile[first.end..],
        &shift(&sections[1..], first.end),
    ));
    Ok(out)
}

fn shift(sections: &[Found], by: usize) -> Vec<Found> {
    sections
        .iter()
        .map(|s| Found {
            start: s.start - by,
            end: s.end - by,
            ends_with_newline: s.ends_with_newline,
        })
        .collect()
}

/// The Corefile without any section of ours.
pub fn remove(corefile: &str) -> Result<String, CorefileError> {
    let sections = find_sections(corefile)?;
    Ok(cut(corefile, &sections))
}

#[cfg(test)]
mod go_operator {
    use super::*;

    /// The Corefile Kube-OVN's docs give for vpc-dns, after the Go operator's edit (it put its
    /// block before `.:53 {`, unmarked): ../shared/reviews/upstream-compat.md, "Reproducing M1".
    const GO_EDITED: &str = "clusterset.local:53 {\n    forward . 10.96.0.10\n  }\n  .:53 {\n    errors\n    health {\n      lameduck 5s\n    }\n    ready\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa ip6.arpa\n    }\n    prometheus :9153\n    forward . /etc/resolv.conf {\n      prefer_udp\n    }\n    cache 30\n    loop\n    reload\n    loadbalance\n}\n";

    #[test]
    fn the_go_operators_block_is_adopted_when_it_forwards_to_kube_dns() {
        let dns: Ipv4Addr = "10.96.0.10".parse().unwrap();
        let out = ensure(GO_EDITED, dns).unwrap();
        assert!(out.starts_with(&section(dns)), "{out}");
        assert_eq!(out.matches("clusterset.local").count(), 1, "{out}");
        // Everything after the Go block is untouched, and ensure is idempotent.
        assert!(out.ends_with(&GO_EDITED[GO_EDITED.find("  .:53 {").unwrap()..]));
        assert_eq!(ensure(&out, dns).unwrap(), out);
        // A kube-dns move rewrites the adopted section like any other.
        let moved = ensure(&out, "10.96.0.11".parse().unwrap()).unwrap();
        assert!(moved.contains("forward . 10.96.0.11") && !moved.contains("10.96.0.10"));
    }

    #[test]
    fn a_block_forwarding_elsewhere_or_holding_more_stays_refused() {
        let dns: Ipv4Addr = "10.96.0.10".parse().unwrap();
        let elsewhere = GO_EDITED.replace("forward . 10.96.0.10", "forward . 10.1.1.1");
        assert_eq!(
            ensure(&elsewhere, dns),
            Err(CorefileError::ForeignClustersetZone)
        );
        let more = GO_EDITED.replace("forward . 10.96.0.10\n", "forward . 10.96.0.10\n    log\n");
        assert_eq!(
            ensure(&more, dns),
            Err(CorefileError::ForeignClustersetZone)
        );
        // Two Go blocks: one is adopted, the other is still a second server block.
        let twice = format!("clusterset.local:53 {{\n  forward . 10.96.0.10\n}}\n{GO_EDITED}");
        assert_eq!(
            ensure(&twice, dns),
            Err(CorefileError::ForeignClustersetZone)
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    /// The Corefile Kube-OVN documents for vpc-dns.
    const DOCUMENTED: &str = ".:53 {\n    errors\n    health {\n      lameduck 5s\n    }\n    ready\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa ip6.arpa\n    }\n    prometheus :9153\n    forward . /etc/resolv.conf {\n      prefer_udp\n    }\n    cache 30\n    loop\n    reload\n    loadbalance\n}\n";

    #[test]
    fn adds_one_section_and_removes_it_exactly() {
        let with = ensure(DOCUMENTED, DNS).unwrap();
        assert!(with.starts_with(DOCUMENTED));
        assert!(with.ends_with(
            "#multivpc-start\nclusterset.local:53 {\n    forward . 10.96.0.10\n}\n#multivpc-end\n"
        ));
        assert_eq!(ensure(&with, DNS).unwrap(), with, "idempotent");
        assert_eq!(remove(&with).unwrap(), DOCUMENTED);
    }

    #[test]
    fn new_address_rewrites_in_place() {
        let with = ensure(&format!("{DOCUMENTED}# tail comment\n"), DNS).unwrap();
        let moved = format!("# head\n{with}");
        let updated = ensure(&moved, Ipv4Addr::new(10, 96, 0, 99)).unwrap();
        assert!(updated.contains("forward . 10.96.0.99") && !updated.contains("10.96.0.10"));
        assert_eq!(updated.replace("10.96.0.99", "10.96.0.10"), moved);
    }

    #[test]
    fn text_without_final_newline_round_trips() {
        let text = ".:53 {\n    forward . 1.1.1.1\n}";
        let with = ensure(text, DNS).unwrap();
        assert_eq!(remove(&with).unwrap(), text);
        assert_eq!(ensure(&with, DNS).unwrap(), with);
        assert_eq!(remove(&ensure("", DNS).unwrap()).unwrap(), "");
    }

    #[test]
    fn foreign_sections_are_left_alone() {
        let text = format!(
            "{DOCUMENTED}#lighthouse-start AUTO-GENERATED SECTION. DO NOT EDIT\nsupercluster.local:53 {{\n    forward . 10.0.0.1\n}}\n#lighthouse-end\n"
        );
        let with = ensure(&text, DNS).unwrap();
        assert!(with.starts_with(&text));
        assert_eq!(remove(&with).unwrap(), text);
    }

    #[test]
    fn duplicate_sections_collapse_to_one() {
        let one = ensure(DOCUMENTED, DNS).unwrap();
        let twice = format!("{one}{}", section(Ipv4Addr::new(1, 2, 3, 4)));
        let fixed = ensure(&twice, DNS).unwrap();
        assert_eq!(fixed, one);
        assert_eq!(remove(&twice).unwrap(), DOCUMENTED);
    }

    #[test]
    fn hostile_inputs_are_refused_not_guessed() {
        let unterminated = format!("{DOCUMENTED}#multivpc-start\nclusterset.local:53 {{\n}}\n");
        assert_eq!(
            ensure(&unterminated, DNS),
            Err(CorefileError::UnterminatedSection)
        );
        assert_eq!(
            remove(&unterminated),
            Err(CorefileError::UnterminatedSection)
        );
        assert_eq!(
            ensure("#multivpc-end\n", DNS),
            Err(CorefileError::UnterminatedSection)
        );
        let foreign = format!("{DOCUMENTED}clusterset.local:53 {{\n    forward . 9.9.9.9\n}}\n");
        assert_eq!(
            ensure(&foreign, DNS),
            Err(CorefileError::ForeignClustersetZone)
        );
        // A comment mentioning the zone is not a server block.
        let comment = format!("{DOCUMENTED}# clusterset.local is served by lighthouse\n");
        assert!(ensure(&comment, DNS).is_ok());
    }

    #[test]
    fn markers_with_odd_whitespace_are_recognised() {
        let text = format!(
            "{DOCUMENTED}  #multivpc-start  \r\nclusterset.local:53 {{\n}}\n\t#multivpc-end\n"
        );
        let fixed = ensure(&text, DNS).unwrap();
        assert_eq!(fixed.matches(START).count(), 1);
        assert_eq!(remove(&fixed).unwrap(), DOCUMENTED);
    }

    proptest! {
        /// For any text holding no marker and no clusterset zone, adding and then removing the
        /// section gives back the same bytes, and adding is idempotent.
        #[test]
        fn round_trip(text in "[ -~\t\n]{0,200}") {
            prop_assume!(!text.contains("multivpc-") && !text.contains("clusterset.local"));
            let with = ensure(&text, DNS).unwrap();
            prop_assert_eq!(ensure(&with, DNS).unwrap(), with.clone());
            prop_assert_eq!(with.matches(START).count(), 1);
            prop_assert_eq!(remove(&with).unwrap(), text);
        }
    }
}
