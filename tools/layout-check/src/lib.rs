//! Structure checks over the workspace's own sources, run as this crate's tests (`cargo test -p
//! layout-check`). Plain std and a small hand-written scanner, so they take a fraction of a
//! second and need no build of the crates they look at.
//!
//! What is looked at: every `.rs` file under the `src/` directory of each workspace member
//! (listed in the root `Cargo.toml`); benches, examples and the end-to-end suite are not product
//! code and are left out, and so is any `target/` directory.
//!
//! - [`Workspace::oversized`]: files longer than a limit ([`MAX_LINES`]).
//! - [`Workspace::cycles`]: cycles in the file-level import graph of each crate target.
//! - [`Workspace::store_access`]: lines that name a store collection or build a store operation,
//!   for the rule that only the deployment plugin's persistence layer does.
//!
//! # The import graph
//!
//! One graph per crate target (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`), with a node per
//! file reached from the target's root through `mod name;` declarations (`name.rs` or
//! `name/mod.rs`; inline `mod name { .. }` blocks are part of their file). Comments, string and
//! character literals are blanked before scanning, so text in docs creates no edge.
//!
//! A path that starts with `crate::`, `$crate::`, `super::` or `self::` (in a `use` tree, nested
//! groups expanded, or inline in code and attributes) resolves to the longest prefix that is a
//! module with a file of its own: an item maps to the file of the module that holds it. Paths
//! through other names (external crates, names a `use` brought in) are not followed: the `use`
//! that brought them in is the edge. A re-export is not looked through: `crate::Thing` re-exported
//! by the root is an edge to the root file.
//!
//! The edge rule: file A depends on file B when A refers into B, except
//! - a reference to itself (including `super::` from one of its inline modules);
//! - a reference from a module to one of its own descendants (`self::child::X`, a parent's
//!   `pub use child::X`): a module owns its children, and its using them is the tree itself.
//!
//! Items under `#[cfg(test)]` (a file's `mod tests { .. }`, a `#[cfg(test)] mod tests;` and the
//! file it names) are left out: a test may reach anywhere without making the product's layers
//! circular (counted, the deployment core's data types would be one cycle only because the
//! tests of `environments` use `wire`).
//!
//! A child's reference to an ancestor (`super::X`, `crate::X`) is an edge like any other, and
//! so are references between siblings and unrelated modules. A cycle is then two modules that
//! need each other without one owning the other, such as two siblings that each use the other's
//! items, or a module whose descendant is used by a sibling that the descendant uses. Counting
//! the parent-to-child direction as well would make a cycle of every parent that uses a child
//! which uses `super::` (the CLI's `main.rs` and `backend.rs`), which says nothing about the
//! layering. Cycles are reported as the files of each strongly connected component of more
//! than one file.
//!
//! # Store access
//!
//! [`Workspace::store_access`] reports each line, outside an allowed directory, with
//! `collection::`, `StoreOp::`, `StoreOp {`, `Condition::` in code, or a string literal that
//! starts with `deployment_mcp.` (the plugin's collection names).

#![forbid(unsafe_code)]

mod graph;
mod scan;
mod strip;

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

pub use graph::Cycle;
pub use strip::{strip, Stripped};

/// The most lines a product source file may have.
pub const MAX_LINES: usize = 800;

/// The repository root, two levels above this crate.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One source file, its path relative to the repository root.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// A workspace member's `src/` files.
#[derive(Debug)]
pub struct Member {
    /// The member's directory, relative to the repository root.
    pub dir: PathBuf,
    pub files: Vec<SourceFile>,
}

/// Every member's sources, read once.
#[derive(Debug)]
pub struct Workspace {
    pub members: Vec<Member>,
}

impl Workspace {
    /// Reads the members listed in `root/Cargo.toml` and their `src/` files.
    pub fn load(root: &Path) -> io::Result<Workspace> {
        let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
        let mut members = Vec::new();
        for dir in workspace_members(&manifest) {
            let mut paths = Vec::new();
            collect_rs(&root.join(&dir).join("src"), &mut paths)?;
            paths.sort();
            let mut files = Vec::new();
            for path in paths {
                let text = fs::read_to_string(&path)?;
                let path = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                files.push(SourceFile { path, text });
            }
            members.push(Member { dir, files });
        }
        Ok(Workspace { members })
    }

    fn files(&self) -> impl Iterator<Item = &SourceFile> {
        self.members.iter().flat_map(|member| &member.files)
    }

    /// Files longer than `max` lines, with their length, among those `keep` selects.
    pub fn oversized(&self, max: usize, keep: impl Fn(&Path) -> bool) -> Vec<(PathBuf, usize)> {
        self.files()
            .filter(|file| keep(&file.path))
            .map(|file| (file.path.clone(), file.text.lines().count()))
            .filter(|(_, lines)| *lines > max)
            .collect()
    }

    /// Import cycles of every crate target (see the module docs for the rule).
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut cycles = Vec::new();
        for member in &self.members {
            let by_path: BTreeMap<&Path, &SourceFile> = member
                .files
                .iter()
                .map(|file| (file.path.as_path(), file))
                .collect();
            let src = member.dir.join("src");
            for root in graph::target_roots(&src, &by_path) {
                cycles.extend(graph::target_cycles(&root, &by_path));
            }
        }
        cycles
    }

    /// `file:line: text` for each line of the files under `dir` (outside `allowed`) that names
    /// a store collection or builds a store operation.
    pub fn store_access(&self, dir: &Path, allowed: &Path) -> Vec<String> {
        let mut found = Vec::new();
        for file in self.files() {
            if !file.path.starts_with(dir) || file.path.starts_with(allowed) {
                continue;
            }
            let stripped = strip(&file.text);
            let code = stripped.code.lines();
            let literals = stripped.with_strings.lines();
            for (number, ((code, literals), original)) in
                code.zip(literals).zip(file.text.lines()).enumerate()
            {
                if names_store(code) || literals.contains("\"deployment_mcp.") {
                    found.push(format!(
                        "{}:{}: {}",
                        file.path.display(),
                        number + 1,
                        original.trim()
                    ));
                }
            }
        }
        found
    }
}

/// The paths in the root manifest's `members = [..]`.
pub fn workspace_members(manifest: &str) -> Vec<PathBuf> {
    // The lines from `members = [` to the `]` that ends the list, without their `#` comments.
    let list: String = manifest
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("members"))
        .scan(false, |done, line| {
            let line = line.split('#').next().unwrap_or_default();
            (!std::mem::replace(done, line.contains(']'))).then_some(line)
        })
        .collect();
    let list = list.split(']').next().unwrap_or_default();
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(PathBuf::from)
        .collect()
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "target") {
                collect_rs(&path, out)?;
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn names_store(code: &str) -> bool {
    let word_at = |pattern: &str| {
        code.match_indices(pattern).any(|(at, _)| {
            !code[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    if word_at("collection::") || word_at("StoreOp::") || word_at("Condition::") {
        return true;
    }
    code.match_indices("StoreOp").any(|(at, pattern)| {
        let before_ok = !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        before_ok && code[at + pattern.len()..].trim_start().starts_with('{')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_access_is_found() {
        assert!(names_store("let op = StoreOp::put(a, b, c);"));
        assert!(names_store("records::collection::DEPLOYMENTS"));
        assert!(names_store("plugin_guest::StoreOp { key }"));
        assert!(names_store("when(Condition::Absent)"));
        assert!(!names_store("my_collection::x; AStoreOp::y; StoreOp) {"));
    }

    #[test]
    fn members_are_read_from_the_manifest() {
        let manifest = "[workspace]\nresolver = \"2\"\nmembers = [\n  \"a\", # one \"x\"\n  \"b/c\",\n]\n[x]\ny = [\"z\"]";
        assert_eq!(
            workspace_members(manifest),
            [PathBuf::from("a"), PathBuf::from("b/c")]
        );
    }
}
