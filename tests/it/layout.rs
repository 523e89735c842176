//! The crate's shape: dependencies between its modules point one way (no import cycle), and the
//! README's layout section names exactly the source files that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn source_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .expect("under src")
        .to_string_lossy()
        .replace('\\', "/")
}

/// `a/b.rs` and `a/b/mod.rs` are `a::b`; `lib.rs` is the root, "".
fn module_of(relative: &str) -> String {
    let path = relative.strip_suffix(".rs").unwrap_or(relative);
    let path = path
        .strip_suffix("/mod")
        .or_else(|| (path == "lib").then_some(""))
        .unwrap_or(path);
    path.replace('/', "::")
}

/// The code outside `#[cfg(test)]` items: tests may reach anywhere.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let (brace, semicolon) = (after.find('{'), after.find(';'));
        match (brace, semicolon) {
            (Some(b), Some(s)) if s < b => rest = &after[s + 1..],
            (Some(b), _) => {
                let mut depth = 0;
                let mut end = after.len();
                for (i, c) in after[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            _ => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Every module a file's code names through `crate::`, `super::` or `self::` paths (brace groups
/// in `use` included), resolved to the longest known module prefix.
/// In `a/b.rs` and `a/b/mod.rs` alike (module `a::b`), `super` is `a` and `self` is `a::b`.
fn imports(module: &str, code: &str, modules: &BTreeSet<String>) -> Vec<String> {
    let parent = |m: &str| {
        m.rsplit_once("::")
            .map_or(String::new(), |(p, _)| p.to_string())
    };
    let mut found = Vec::new();
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{' || c == ','))
        .collect();
    for word in words {
        let (base, rest) = if let Some(rest) = word.strip_prefix("crate::") {
            (String::new(), rest)
        } else if let Some(rest) = word.strip_prefix("super::") {
            (parent(module), rest)
        } else if let Some(rest) = word.strip_prefix("self::") {
            (module.to_string(), rest)
        } else {
            continue;
        };
        // `use crate::{a, b::c}` names several paths at once.
        let (head, group) = match rest.split_once('{') {
            Some((head, group)) => (head, Some(group)),
            None => (rest, None),
        };
        let mut paths = Vec::new();
        match group {
            Some(group) => {
                for member in group.split(',') {
                    paths.push(format!("{head}{member}"));
                }
            }
            None => paths.push(head.to_string()),
        }
        for path in paths {
            let mut candidate = base.clone();
            let mut best = None;
            for segment in path.split("::").filter(|s| !s.is_empty()) {
                candidate = if candidate.is_empty() {
                    segment.to_string()
                } else {
                    format!("{candidate}::{segment}")
                };
                if modules.contains(&candidate) {
                    best = Some(candidate.clone());
                }
            }
            let target = best.unwrap_or_else(|| base.clone());
            if target != module && !target.is_empty() {
                found.push(target);
            }
        }
    }
    found
}

/// Strongly connected groups of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        groups: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, node: &'a str) {
        s.index.insert(node, s.next);
        s.low.insert(node, s.next);
        s.next += 1;
        s.stack.push(node);
        s.on_stack.insert(node);
        for next in s.graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !s.index.contains_key(next) {
                visit(s, next);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut group = Vec::new();
            while let Some(member) = s.stack.pop() {
                s.on_stack.remove(member);
                group.push(member.to_string());
                if member == node {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.groups.push(group);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        groups: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.groups
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<(String, PathBuf)> = source_files()
        .into_iter()
        .map(|path| (relative(&path), path))
        .filter(|(relative, _)| relative != "main.rs")
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(r, _)| module_of(r)).collect();
    let mut graph = BTreeMap::new();
    for (relative, path) in &files {
        let module = module_of(relative);
        let code = without_tests(&std::fs::read_to_string(path).expect("read source"));
        let targets = imports(&module, &code, &modules);
        graph
            .entry(module)
            .or_insert_with(BTreeSet::new)
            .extend(targets);
    }
    graph
}

#[test]
fn no_import_cycle_in_src() {
    let graph = import_graph();
    // The check sees the edges it must: the request stages import the error vocabulary.
    assert!(graph["proxy"].contains("error"), "{graph:?}");
    assert!(graph["proxy::authenticate"].contains("error"), "{graph:?}");
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles in src/: {found:?}");
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut graph = import_graph();
    graph
        .get_mut("error")
        .expect("error module")
        .insert("proxy".to_string());
    assert_eq!(cycles(&graph).len(), 1, "error -> proxy -> error");
}

#[test]
fn readme_layout_names_every_source_file() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Layout")
        .nth(1)
        .expect("a Layout section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let named: BTreeSet<String> = section
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '/' || c == '.'))
        .filter(|word| {
            word.ends_with(".rs") && !word.starts_with("tests/") && !word.starts_with("benches/")
        })
        .map(|word| word.trim_start_matches("src/").to_string())
        .collect();
    let existing: BTreeSet<String> = source_files().iter().map(|p| relative(p)).collect();
    let missing: Vec<_> = existing.difference(&named).collect();
    let stale: Vec<_> = named.difference(&existing).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README layout: not described {missing:?}; described but gone {stale:?}"
    );
}
