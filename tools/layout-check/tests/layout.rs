//! The repository's structure rules, checked on the sources as they are (see the crate docs for
//! what each check looks at and how the import graph is built).

use std::path::Path;

use layout_check::{repo_root, Workspace, MAX_LINES};

/// The deployment plugin's crates: being restructured, so their files are checked apart.
const DEPLOYMENT_MCP: &str = "plugins/deployment_mcp";

fn workspace() -> Workspace {
    let root = repo_root();
    Workspace::load(&root).unwrap_or_else(|error| panic!("reading {}: {error}", root.display()))
}

fn oversized_report(keep: impl Fn(&Path) -> bool) -> Vec<String> {
    workspace()
        .oversized(MAX_LINES, keep)
        .into_iter()
        .map(|(path, lines)| format!("{}: {lines} lines", path.display()))
        .collect()
}

#[test]
fn source_files_stay_under_the_line_limit() {
    let over = oversized_report(|path| !path.starts_with(DEPLOYMENT_MCP));
    assert!(
        over.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        over.join("\n")
    );
}

#[test]
fn deployment_mcp_files_stay_under_the_line_limit() {
    let over = oversized_report(|path| path.starts_with(DEPLOYMENT_MCP));
    assert!(
        over.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        over.join("\n")
    );
}

#[test]
fn no_file_level_import_cycles() {
    let cycles: Vec<String> = workspace()
        .cycles()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        cycles.is_empty(),
        "file-level import cycles:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn deployment_mcp_store_access_stays_in_persist() {
    let found = workspace().store_access(
        Path::new(DEPLOYMENT_MCP),
        Path::new("plugins/deployment_mcp/core/src/persist"),
    );
    assert!(
        found.is_empty(),
        "outside plugins/deployment_mcp/core/src/persist/, these lines name a store collection \
         or build a store operation:\n{}",
        found.join("\n")
    );
}
