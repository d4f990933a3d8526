//! The crate's shape: no two modules use each other (directly or round about), and `lib.rs`
//! is the only file that knows Python. Read from the sources, tests left out: a test may use
//! any module to build its input.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Each file of `rust/src` (path relative to it) with its text before its `mod tests`.
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("rust/src");
    let mut found = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("rust/src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).expect("sources are UTF-8");
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(at) => text[..at].to_owned(),
                    None => text,
                };
                let name = path.strip_prefix(&src).expect("under rust/src");
                found.push((name.to_string_lossy().into_owned(), code));
            }
        }
    }
    found.sort();
    found
}

/// The top-level module a file belongs to (`wal/writer.rs` → `wal`); `lib.rs` is the root.
fn module_of(file: &str) -> String {
    let first = file.split('/').next().expect("a path");
    first.strip_suffix(".rs").unwrap_or(first).to_owned()
}

/// Top-level module → the other top-level modules its code names as `crate::x`.
fn graph() -> Graph {
    let mut graph = Graph::new();
    for (file, code) in sources() {
        let module = module_of(&file);
        if module == "lib" {
            continue;
        }
        let uses = graph.entry(module.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if rest[..end] != module {
                uses.insert(rest[..end].to_owned());
            }
        }
    }
    graph
}

/// Each use `a -> b` for which `b` also reaches `a`, with the way back.
fn cycles(graph: &Graph) -> Vec<String> {
    let path_back = |from: &str, to: &str| -> Option<Vec<String>> {
        // Breadth first, so the way back shown is a shortest one.
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut frontier = vec![from.to_owned()];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for m in frontier {
                for n in graph.get(&m).into_iter().flatten() {
                    if n == to {
                        let mut way = vec![to.to_owned(), m.clone()];
                        let mut at = m;
                        while let Some(prev) = came_from.get(&at) {
                            way.push(prev.clone());
                            at = prev.clone();
                        }
                        way.reverse();
                        return Some(way);
                    }
                    if n != from && !came_from.contains_key(n) {
                        came_from.insert(n.clone(), m.clone());
                        next.push(n.clone());
                    }
                }
            }
            frontier = next;
        }
        None
    };
    let mut found = Vec::new();
    for (module, uses) in graph {
        for used in uses {
            if let Some(way) = path_back(used, module) {
                found.push(format!("{module} -> {}", way.join(" -> ")));
            }
        }
    }
    found
}

#[test]
fn no_two_modules_use_each_other() {
    assert_eq!(cycles(&graph()), Vec::<String>::new());
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut graph = graph();
    graph
        .entry("errors".to_owned())
        .or_default()
        .insert("parse".to_owned());
    let found = cycles(&graph);
    assert!(
        found.iter().any(|c| c.starts_with("errors -> parse -> ")),
        "{found:?}"
    );
}

#[test]
fn only_lib_rs_knows_python() {
    let knowing: Vec<String> = sources()
        .into_iter()
        .filter(|(_, code)| code.contains("pyo3"))
        .map(|(file, _)| file)
        .collect();
    assert_eq!(knowing, ["lib.rs"]);
}
