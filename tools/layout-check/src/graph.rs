//! The file-level import graph of one crate target and its cycles: the module tree from the
//! target's root through `mod name;`, an edge per reference into another file (by the rule in
//! the crate docs), and the strongly connected components (Tarjan) of more than one file.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::{Path, PathBuf},
};

use crate::{
    scan::{absolute, scan, Scan},
    SourceFile,
};

/// The files of one strongly connected component of a crate target's import graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The target's root file (`host/src/lib.rs`).
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        write!(f, "{}: {}", self.root.display(), files.join(" <-> "))
    }
}

/// A target's root files among `files`: `lib.rs`, `main.rs`, `bin/*.rs`, `bin/*/main.rs`.
pub(crate) fn target_roots(src: &Path, files: &BTreeMap<&Path, &SourceFile>) -> Vec<PathBuf> {
    let bin = src.join("bin");
    files
        .keys()
        .filter(|path| {
            **path == src.join("lib.rs")
                || **path == src.join("main.rs")
                || path.parent() == Some(bin.as_path())
                || (path.parent().and_then(Path::parent) == Some(bin.as_path())
                    && path.file_name().is_some_and(|name| name == "main.rs"))
        })
        .map(|path| path.to_path_buf())
        .collect()
}

/// Each reached file's module path and scan, following `mod name;` from `root`.
fn module_tree(
    root: &Path,
    files: &BTreeMap<&Path, &SourceFile>,
) -> BTreeMap<PathBuf, (Vec<String>, Scan)> {
    let mut scans = BTreeMap::new();
    let mut queue = VecDeque::from([(Vec::new(), root.to_path_buf())]);
    while let Some((module, path)) = queue.pop_front() {
        let Some(file) = files.get(path.as_path()) else {
            continue;
        };
        if scans.contains_key(&path) {
            continue;
        }
        let scan = scan(&file.text);
        // Where its children's files are: beside a root or a `mod.rs`, else in `name/`.
        let own_dir = if path == root || path.file_name().is_some_and(|name| name == "mod.rs") {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            path.with_extension("")
        };
        for (inline, name) in &scan.children {
            let dir = inline
                .iter()
                .fold(own_dir.clone(), |dir, name| dir.join(name));
            let flat = dir.join(format!("{name}.rs"));
            let child = if files.contains_key(flat.as_path()) {
                flat
            } else {
                dir.join(name).join("mod.rs")
            };
            let mut child_module = module.clone();
            child_module.extend(inline.iter().cloned());
            child_module.push(name.clone());
            queue.push_back((child_module, child));
        }
        scans.insert(path, (module, scan));
    }
    scans
}

/// The cycles of the target rooted at `root`.
pub(crate) fn target_cycles(root: &Path, files: &BTreeMap<&Path, &SourceFile>) -> Vec<Cycle> {
    let scans = module_tree(root, files);
    let nodes: Vec<&PathBuf> = scans.keys().collect();
    let index: BTreeMap<&PathBuf, usize> = nodes.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let modules: BTreeMap<&[String], usize> = scans
        .iter()
        .map(|(path, (module, _))| (module.as_slice(), index[path]))
        .collect();
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); nodes.len()];
    for (from, (module, scan)) in &scans {
        for (inline, path) in &scan.paths {
            let here: Vec<String> = module.iter().chain(inline).cloned().collect();
            let Some(target) = absolute(&here, path) else {
                continue;
            };
            // The longest prefix that is a module with a file: the file that holds the item.
            let Some((owner, &to)) = (0..=target.len())
                .rev()
                .find_map(|len| modules.get_key_value(&target[..len]))
            else {
                continue;
            };
            // A module using its own descendants (or itself) is the tree, not an edge.
            if owner.starts_with(module) {
                continue;
            }
            edges[index[from]].insert(to);
        }
    }
    strongly_connected(&edges)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let mut files: Vec<PathBuf> = component.iter().map(|&i| nodes[i].clone()).collect();
            files.sort();
            Cycle {
                root: root.to_path_buf(),
                files,
            }
        })
        .collect()
}

/// Tarjan's strongly connected components of a graph given as each node's successors.
fn strongly_connected(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [BTreeSet<usize>],
        next: usize,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        components: Vec<Vec<usize>>,
    }
    fn visit(state: &mut State<'_>, node: usize) {
        state.index[node] = Some(state.next);
        state.low[node] = state.next;
        state.next += 1;
        state.stack.push(node);
        state.on_stack[node] = true;
        for &next in state.edges[node].iter() {
            match state.index[next] {
                None => {
                    visit(state, next);
                    state.low[node] = state.low[node].min(state.low[next]);
                }
                Some(index) if state.on_stack[next] => {
                    state.low[node] = state.low[node].min(index);
                }
                Some(_) => {}
            }
        }
        if Some(state.low[node]) == state.index[node] {
            let mut component = Vec::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack[top] = false;
                component.push(top);
                if top == node {
                    break;
                }
            }
            state.components.push(component);
        }
    }
    let mut state = State {
        edges,
        next: 0,
        index: vec![None; edges.len()],
        low: vec![0; edges.len()],
        on_stack: vec![false; edges.len()],
        stack: Vec::new(),
        components: Vec::new(),
    };
    for node in 0..edges.len() {
        if state.index[node].is_none() {
            visit(&mut state, node);
        }
    }
    state.components
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycles(sources: &[(&str, &str)]) -> Vec<Vec<String>> {
        let sources: Vec<SourceFile> = sources
            .iter()
            .map(|(path, text)| SourceFile {
                path: PathBuf::from(path),
                text: (*text).to_owned(),
            })
            .collect();
        let files: BTreeMap<&Path, &SourceFile> =
            sources.iter().map(|f| (f.path.as_path(), f)).collect();
        target_cycles(Path::new("c/src/lib.rs"), &files)
            .into_iter()
            .map(|cycle| {
                (cycle.files.iter())
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn siblings_that_use_each_other_are_a_cycle() {
        let found = cycles(&[
            ("c/src/lib.rs", "mod a; mod b; use a::X;"),
            ("c/src/a.rs", "use crate::b::Y; pub struct X;"),
            (
                "c/src/b.rs",
                "pub struct Y; fn f() -> super::a::X { todo!() }",
            ),
        ]);
        assert_eq!(found, [["c/src/a.rs", "c/src/b.rs"]]);
    }

    #[test]
    fn a_parent_with_its_children_is_no_cycle() {
        let found = cycles(&[
            ("c/src/lib.rs", "mod p; pub use p::q::Z; struct R;"),
            ("c/src/p/mod.rs", "mod q; pub use self::q::Z; pub struct W;"),
            (
                "c/src/p/q.rs",
                "use super::W; use crate::R; fn f() { crate::p::W; }",
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_descendant_of_a_sibling_closes_a_cycle() {
        let found = cycles(&[
            ("c/src/lib.rs", "mod a; mod p;"),
            ("c/src/a.rs", "use crate::p::q::Z;"),
            ("c/src/p/mod.rs", "mod q; pub struct W;"),
            ("c/src/p/q.rs", "use crate::a; pub struct Z;"),
        ]);
        assert_eq!(found, [["c/src/a.rs", "c/src/p/q.rs"]]);
    }

    #[test]
    fn tests_do_not_count() {
        let found = cycles(&[
            ("c/src/lib.rs", "mod a; mod b;"),
            ("c/src/a.rs", "use crate::b::Y;"),
            ("c/src/b.rs", "#[cfg(test)]\nmod tests { use crate::a; }"),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }
}
