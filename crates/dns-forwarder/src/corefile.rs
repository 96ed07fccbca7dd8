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
    #[error("the Corefile's braces do not balance; fix it by hand")]
    UnbalancedBraces,
    #[error(
        "the Corefile has text outside braced server blocks; only a Corefile of braced server blocks can take another one"
    )]
    TextOutsideBlocks,
    #[error(
        "the Corefile imports {0:?} at top level: whether that serves clusterset.local cannot be told from here"
    )]
    UnresolvableImport(String),
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

/// A token of the Corefile grammar (Caddyfile syntax: whitespace-separated words, `"…"`
/// quoting with `\` escapes, `#` comments at the start of a word, `{`/`}` blocks).
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    Newline,
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut in_word, mut quoted, mut comment, mut escape) = (false, false, false, false);
    let flush = |out: &mut Vec<Token>, word: &mut String, in_word: &mut bool, quoted_word: bool| {
        if *in_word {
            let w = std::mem::take(word);
            match w.as_str() {
                "{" if !quoted_word => out.push(Token::Open),
                "}" if !quoted_word => out.push(Token::Close),
                _ if !quoted_word && w.len() > 1 && w.ends_with('{') => {
                    out.push(Token::Word(w[..w.len() - 1].to_owned()));
                    out.push(Token::Open);
                }
                _ => out.push(Token::Word(w)),
            }
            *in_word = false;
        }
    };
    let mut word_was_quoted = false;
    for c in text.chars() {
        if comment {
            if c == '\n' {
                comment = false;
                out.push(Token::Newline);
            }
            continue;
        }
        if quoted {
            if escape {
                word.push(c);
                escape = false;
            } else if c == '\\' {
                escape = true;
            } else if c == '"' {
                quoted = false;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\n' => {
                flush(&mut out, &mut word, &mut in_word, word_was_quoted);
                out.push(Token::Newline);
            }
            c if c.is_whitespace() => flush(&mut out, &mut word, &mut in_word, word_was_quoted),
            '#' if !in_word => comment = true,
            '"' if !in_word => {
                (in_word, quoted, word_was_quoted) = (true, true, true);
            }
            c => {
                if !in_word {
                    (in_word, word_was_quoted) = (true, false);
                }
                word.push(c);
            }
        }
    }
    flush(&mut out, &mut word, &mut in_word, word_was_quoted);
    out
}

/// The zone a server block key names: without scheme (`dns://`), port, final dot or case.
fn zone_of(key: &str) -> String {
    let key = key.split_once("://").map_or(key, |(_, rest)| rest);
    let key = match key.rsplit_once(':') {
        Some((zone, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => zone,
        _ => key,
    };
    key.trim_end_matches('.').to_ascii_lowercase()
}

/// The keys of every server block of `tokens` (top level), expanding top-level imports of
/// snippets defined in the same Corefile; `(name) { … }` blocks are snippets, not servers.
fn server_keys(tokens: &[Token]) -> Result<Vec<String>, CorefileError> {
    // Snippets first: Caddy lets an import refer to a snippet defined anywhere in the file.
    let mut snippets: std::collections::BTreeMap<String, Vec<Token>> = Default::default();
    let blocks = top_level(tokens)?;
    for block in &blocks {
        if let TopLevel::Block { header, body } = block
            && let [Token::Word(name)] = header.as_slice()
            && name.len() > 2
            && name.starts_with('(')
            && name.ends_with(')')
        {
            snippets.insert(name[1..name.len() - 1].to_owned(), body.clone());
        }
    }
    let mut keys = Vec::new();
    collect_keys(&blocks, &snippets, 0, &mut keys)?;
    Ok(keys)
}

/// What the top level of a Corefile holds.
enum TopLevel {
    /// A server block or a snippet: the words before `{` and the tokens inside.
    Block {
        header: Vec<Token>,
        body: Vec<Token>,
    },
    /// `import <arg>` outside any block.
    Import(String),
}

fn top_level(tokens: &[Token]) -> Result<Vec<TopLevel>, CorefileError> {
    let mut out = Vec::new();
    let mut header: Vec<Token> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Newline => {
                if let [Token::Word(import), Token::Word(arg), ..] = header.as_slice()
                    && import == "import"
                {
                    out.push(TopLevel::Import(arg.clone()));
                    header.clear();
                }
                i += 1;
            }
            Token::Word(_) => {
                header.push(tokens[i].clone());
                i += 1;
            }
            Token::Close => return Err(CorefileError::UnbalancedBraces),
            Token::Open => {
                let mut depth = 1;
                let start = i + 1;
                i += 1;
                while i < tokens.len() && depth > 0 {
                    match tokens[i] {
                        Token::Open => depth += 1,
                        Token::Close => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                }
                if depth > 0 {
                    return Err(CorefileError::UnbalancedBraces);
                }
                out.push(TopLevel::Block {
                    header: std::mem::take(&mut header),
                    body: tokens[start..i - 1].to_vec(),
                });
            }
        }
    }
    if let [Token::Word(import), Token::Word(arg), ..] = header.as_slice()
        && import == "import"
    {
        out.push(TopLevel::Import(arg.clone()));
    } else if !header.is_empty() {
        return Err(CorefileError::TextOutsideBlocks);
    }
    Ok(out)
}

fn collect_keys(
    blocks: &[TopLevel],
    snippets: &std::collections::BTreeMap<String, Vec<Token>>,
    depth: usize,
    keys: &mut Vec<String>,
) -> Result<(), CorefileError> {
    for block in blocks {
        match block {
            TopLevel::Block { header, .. } => {
                let words = header.iter().filter_map(|t| match t {
                    Token::Word(w) => Some(w.as_str()),
                    _ => None,
                });
                let words: Vec<&str> = words.collect();
                let is_snippet =
                    matches!(words.as_slice(), [w] if w.starts_with('(') && w.ends_with(')'));
                if !is_snippet {
                    keys.extend(
                        words
                            .iter()
                            .flat_map(|w| w.split(','))
                            .filter(|k| !k.is_empty())
                            .map(str::to_owned),
                    );
                }
            }
            TopLevel::Import(arg) => match snippets.get(arg) {
                Some(body) if depth < 8 => {
                    collect_keys(&top_level(body)?, snippets, depth + 1, keys)?
                }
                _ => return Err(CorefileError::UnresolvableImport(arg.clone())),
            },
        }
    }
    Ok(())
}

/// Whether a server block for `clusterset.local` exists outside our sections, in any spelling
/// CoreDNS accepts (`dns://`, a port, a final dot, any case, quoted, one of several keys, from
/// an imported snippet).
fn serves_clusterset(text: &str) -> Result<bool, CorefileError> {
    Ok(server_keys(&tokens(text))?
        .iter()
        .any(|k| zone_of(k) == "clusterset.local"))
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
    if serves_clusterset(&outside)? {
        return match adopt_go_block(corefile, kube_dns) {
            Some(adopted) if !serves_clusterset(&cut(&adopted, &find_sections(&adopted)?))? => {
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

    #[test]
    fn every_spelling_of_a_clusterset_server_block_is_recognised() {
        for key in [
            "clusterset.local",
            "clusterset.local:53",
            "clusterset.local.:53",
            "dns://clusterset.local:53",
            "DNS://ClusterSet.LOCAL",
            "\"clusterset.local:53\"",
            "example.org clusterset.local",
            "example.org,clusterset.local:53",
            "tls://clusterset.local:853",
        ] {
            let text = format!("{DOCUMENTED}{key} {{\n    forward . 9.9.9.9\n}}\n");
            assert_eq!(
                ensure(&text, DNS),
                Err(CorefileError::ForeignClustersetZone),
                "{key}"
            );
        }
        // From a snippet imported at top level, and one imported where it cannot be seen.
        let snippet = format!(
            "(mc) {{\n  clusterset.local {{\n    forward . 9.9.9.9\n  }}\n}}\n{DOCUMENTED}import mc\n"
        );
        assert_eq!(
            ensure(&snippet, DNS),
            Err(CorefileError::ForeignClustersetZone)
        );
        let file = format!("{DOCUMENTED}import /etc/coredns/custom/*.server\n");
        assert!(matches!(
            ensure(&file, DNS),
            Err(CorefileError::UnresolvableImport(f)) if f == "/etc/coredns/custom/*.server"
        ));
        // Not server blocks: a zone inside a block, in a comment, in a quoted argument, or a
        // snippet nobody imports at top level.
        for fine in [
            ".:53 {\n  kubernetes clusterset.local cluster.local\n}\n".to_owned(),
            format!("{DOCUMENTED}# clusterset.local {{ }}\n"),
            ".:53 {\n  log \"clusterset.local {\"\n}\n".to_owned(),
            format!("(unused) {{\n  clusterset.local {{\n  }}\n}}\n{DOCUMENTED}"),
            "(dirs) {\n  errors\n}\n.:53 {\n  import dirs\n}\n".to_owned(),
            "local:53 {\n  forward . 1.1.1.1\n}\n".to_owned(),
        ] {
            let with = ensure(&fine, DNS).unwrap_or_else(|e| panic!("{fine}: {e}"));
            assert_eq!(clusterset_blocks(&with), 1, "{with}");
            assert_eq!(remove(&with).unwrap(), fine);
        }
        // Brace structure: appending after an unclosed block would land inside it.
        for bad in [".:53 {\n  errors\n", ".:53 {\n}\n}\n", "errors\nlog\n"] {
            assert!(
                matches!(
                    ensure(bad, DNS),
                    Err(CorefileError::UnbalancedBraces | CorefileError::TextOutsideBlocks)
                ),
                "{bad:?}"
            );
        }
    }

    /// Server blocks serving clusterset.local, as the tokenizer sees them.
    fn clusterset_blocks(text: &str) -> usize {
        server_keys(&tokens(text))
            .unwrap()
            .iter()
            .filter(|k| zone_of(k) == "clusterset.local")
            .count()
    }

    /// Corefiles in CoreDNS's grammar: server blocks with one or more keys (schemes, ports,
    /// case, quotes, commas), directives with arguments and nested blocks, comments, snippets
    /// imported at top level and inside blocks, and optionally one foreign clusterset.local
    /// block in any spelling.
    fn corefile() -> impl Strategy<Value = (String, bool)> {
        let zone = prop_oneof![
            Just(".".to_owned()),
            Just("example.org".to_owned()),
            Just("cluster.local".to_owned()),
            Just("in-addr.arpa".to_owned()),
            Just("local".to_owned()),
            Just("clusterset.localdomain".to_owned()),
        ];
        let key = (
            zone,
            prop_oneof![Just(""), Just("dns://")],
            prop_oneof![Just(""), Just(":53"), Just(":1053")],
            any::<bool>(),
        )
            .prop_map(|(z, scheme, port, quoted)| {
                let k = format!("{scheme}{z}{port}");
                if quoted { format!("\"{k}\"") } else { k }
            });
        let directive = prop_oneof![
            Just("errors".to_owned()),
            Just("cache 30".to_owned()),
            Just("forward . /etc/resolv.conf {\n      prefer_udp\n    }".to_owned()),
            Just(
                "kubernetes cluster.local clusterset.local {\n      pods insecure\n    }"
                    .to_owned()
            ),
            Just("log \"{remote} clusterset.local }\"".to_owned()),
            Just("# clusterset.local { a comment }".to_owned()),
            Just("import common".to_owned()),
        ];
        let block = (
            prop::collection::vec(key, 1..3),
            prop::collection::vec(directive, 0..4),
            prop_oneof![Just(" "), Just(", ")],
        )
            .prop_map(|(keys, dirs, sep)| {
                let body: String = dirs.iter().map(|d| format!("    {d}\n")).collect();
                format!("{} {{\n{body}}}\n", keys.join(sep))
            });
        let foreign = prop_oneof![
            Just("clusterset.local"),
            Just("clusterset.local:53"),
            Just("dns://clusterset.local."),
            Just("CLUSTERSET.Local"),
            Just("\"clusterset.local:53\""),
            Just("example.org clusterset.local"),
        ];
        (
            prop::collection::vec(block, 0..4),
            prop::option::of((foreign, any::<prop::sample::Index>())),
            any::<bool>(),
            prop_oneof![Just(""), Just("# head comment\n"), Just("\n\n")],
        )
            .prop_map(|(mut blocks, foreign, final_newline, head)| {
                let has_foreign = foreign.is_some();
                if let Some((key, at)) = foreign {
                    let at = at.index(blocks.len() + 1);
                    blocks.insert(at, format!("{key} {{\n    forward . 9.9.9.9\n}}\n"));
                }
                let mut text = format!("{head}(common) {{\n    errors\n}}\n{}", blocks.concat());
                if !final_newline {
                    text.pop();
                }
                (text, has_foreign)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// For any Corefile of the grammar: a foreign clusterset.local block is refused;
        /// otherwise the result has exactly one, balanced, adding is idempotent and removing
        /// gives back the same bytes.
        #[test]
        fn grammar_corefiles_get_exactly_one_clusterset_block((text, has_foreign) in corefile()) {
            match ensure(&text, DNS) {
                Err(CorefileError::ForeignClustersetZone) => prop_assert!(has_foreign, "{}", text),
                Err(e) => prop_assert!(false, "{e} for\n{text}"),
                Ok(with) => {
                    prop_assert!(!has_foreign, "accepted\n{}", text);
                    prop_assert_eq!(clusterset_blocks(&with), 1);
                    prop_assert!(top_level(&tokens(&with)).is_ok());
                    prop_assert_eq!(ensure(&with, DNS).unwrap(), with.clone());
                    prop_assert_eq!(remove(&with).unwrap(), text);
                }
            }
        }

        /// For any text at all: a refusal, or a round trip with one section.
        #[test]
        fn any_text_is_refused_or_round_trips(text in "[ -~\t\n]{0,200}") {
            prop_assume!(!text.contains("multivpc-"));
            if let Ok(with) = ensure(&text, DNS) {
                prop_assert_eq!(ensure(&with, DNS).unwrap(), with.clone());
                prop_assert_eq!(with.matches(START).count(), 1);
                prop_assert_eq!(remove(&with).unwrap(), text);
            }
        }
    }
}
