//! The gateway's modules form layers: no module reaches, through its imports, a module that
//! reaches back to it. This test reads the source (not the compiled crate): every `crate::x`
//! path and every `super::` path that climbs out of a top-level module, in non-test code, is an
//! edge from the file's top-level module to `x`; a cycle among the top-level modules fails the
//! test with the edges and the files that make it. The simulator's crate is held to the same.
//!
//! Why top-level modules: inside one module (`journal/`, `alerts/`) the files are one room and
//! may refer to each other; between rooms the dependencies must point one way, so that a stage
//! can be understood, tested and replaced from the bottom up (docs/architecture.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// module -> (module it uses -> files that use it)
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn the_gateway_has_no_module_cycle() {
    let graph = graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        graph.len() > 10,
        "the source was read: {:?}",
        graph.keys().collect::<Vec<_>>()
    );
    // The bottom of the house really is at the bottom.
    for low in ["reading", "clock", "telemetry", "diagnostics", "secret", "safety"] {
        let ups: Vec<&String> = graph.get(low).map(|e| e.keys().collect()).unwrap_or_default();
        for up in &ups {
            assert!(
                ["reading", "clock", "vocabulary"].contains(&up.as_str()),
                "`{low}` is a bottom-layer module but uses `{up}`"
            );
        }
    }
    assert_acyclic(&graph);
}

#[test]
fn the_simulator_has_no_module_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-sim/src");
    let graph = graph_of(&src);
    assert!(graph.len() > 5, "the source was read");
    assert_acyclic(&graph);
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut g = Graph::new();
    let mut edge = |a: &str, b: &str| {
        g.entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default()
            .insert(format!("{a}.rs"));
    };
    edge("config", "journal");
    edge("journal", "telemetry");
    edge("telemetry", "config");
    edge("app", "config");
    let cycles = cycles(&g);
    assert_eq!(
        cycles,
        vec![vec!["config".to_owned(), "journal".into(), "telemetry".into()]]
    );
    // Test code and comments are not dependencies.
    let code = "use crate::a::X;\n// crate::b\n/// [`crate::c`]\nfn f() { super::d(); \"crate::e\"; }\n#[cfg(test)]\nmod tests {\n    use crate::f;\n    fn g() { let s = \"}\"; }\n}\n#[cfg(test)]\nuse crate::h;\nfn k() { crate::i::j() }\n";
    let refs = references(code, &["m".to_owned()]);
    assert_eq!(refs, BTreeSet::from(["a".to_owned(), "d".to_owned(), "i".to_owned()]));
}

fn assert_acyclic(graph: &Graph) {
    let found = cycles(graph);
    let mut report = String::new();
    for c in &found {
        report.push_str(&format!("cycle among {c:?}:\n"));
        for a in c {
            for (b, files) in &graph[a] {
                if c.contains(b) {
                    report.push_str(&format!(
                        "  {a} -> {b}  ({})\n",
                        files.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    assert!(found.is_empty(), "module cycles:\n{report}");
}

/// The strongly connected components of more than one module (Tarjan), each sorted.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct T<'g> {
        g: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(t: &mut T<'g>, v: &'g str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(edges) = t.g.get(v) {
            for w in edges.keys() {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn graph_of(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).expect("under src").to_path_buf();
        let mut path: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let last = path.pop().expect("a file name");
        let stem = last.trim_end_matches(".rs").to_owned();
        if path.is_empty() && ["lib", "main"].contains(&stem.as_str()) {
            continue;
        }
        // A file's module path: `a/b.rs` is a::b, `a/mod.rs` is a, `a/tests.rs` is test code.
        if stem == "tests" {
            continue;
        }
        if stem != "mod" {
            path.push(stem);
        }
        let top = path[0].clone();
        let code = std::fs::read_to_string(&file).expect("readable source");
        for used in references(&code, &path) {
            if used != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(used)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
        graph.entry(top).or_default();
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("a source folder").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The top-level modules a file's non-test code refers to. `module` is the file's own module
/// path (`["journal", "writer"]`), to resolve `super::`.
fn references(code: &str, module: &[String]) -> BTreeSet<String> {
    let code = strip_test_items(&strip_comments_and_strings(code));
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident_at = |i: usize| -> String {
        code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let boundary =
        |i: usize| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
    let mut i = 0;
    while i < code.len() {
        if code[i..].starts_with("crate::") && boundary(i) {
            let name = ident_at(i + "crate::".len());
            if !name.is_empty() {
                out.insert(name);
            }
            i += "crate::".len();
        } else if code[i..].starts_with("super::") && boundary(i) {
            let mut ups = 0;
            let mut j = i;
            while code[j..].starts_with("super::") {
                ups += 1;
                j += "super::".len();
            }
            let name = ident_at(j);
            // `super` from module a::b::c climbs to a::b; from a top-level module, to the root.
            let base = &module[..module.len().saturating_sub(ups)];
            let top = base.first().cloned().unwrap_or(name);
            if !top.is_empty() && top != "self" {
                out.insert(top);
            }
            i = j;
        } else {
            i += code[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

/// The text with comments removed and string and char literals emptied, so that neither a
/// path in a doc comment nor a brace in a string counts.
fn strip_comments_and_strings(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && (i == 0 || !is_ident(chars[i - 1])) {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j + 1;
        } else if c == '\''
            && (chars.get(i + 2) == Some(&'\'') || (next == Some('\\') && chars.get(i + 3) == Some(&'\'')))
        {
            // A char literal ('{', '\n'); lifetimes ('a) are left alone.
            out.push_str("' '");
            i += if next == Some('\\') { 4 } else { 3 };
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The text without the items marked `#[cfg(test)]` (a `mod tests { ... }`, a `use`, a fn).
fn strip_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        // The item ends at its first `;` before any `{`, or at the `}` closing its first `{`.
        let semi = item.find(';');
        let brace = item.find('{');
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (Some(s), None) => s + 1,
            (_, Some(b)) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, ch) in item[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}
