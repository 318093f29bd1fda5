//! Tests, benchmarks, examples and the default config talk only to this machine: loopback
//! (127.0.0.0/8, `[::1]`, `localhost`). This scans them for IP literals and URLs that point
//! anywhere else and fails naming the file, the line and the address. Addresses that are only
//! data (an EC2 answer a test parses, a platform IP handed to a script as a variable) are listed
//! in [`DATA_ONLY`] with the reason; anything new must be loopback or be added there knowingly.
//!
//! `.ci/run` also runs the whole suite in a network namespace that has only loopback, so a test
//! that tries to reach another address fails at once even if this scan misses it.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use e2e::repo_root;

/// Directories scanned, relative to the workspace root.
const SCANNED: &[&str] = &[
    "tests/src",
    "tests/tests",
    "tests/examples",
    "tests/fixtures",
    "tests/browser",
    "tests/mcp",
    "benches",
    "host/benches",
    "config",
];

/// Crate sources, of which the unit tests (from a file's `#[cfg(test)]` on) are scanned too:
/// the product's own code names whatever hosts operators configure.
const UNIT_TESTS_IN: &[&str] = &[
    "host/src",
    "host/record-store/src",
    "plugin-api/src",
    "plugins/guest/src",
    "plugins/guest/local-host/src",
    "plugins/deployment_mcp/src",
    "plugins/deployment_mcp/core/src",
    "plugins/deployment_mcp/cli/src",
];

/// The unit tests of a crate source file: from its first `#[cfg(test)]` line on (a `tests.rs`
/// is scanned whole).
fn unit_tests(text: &str) -> &str {
    text.find("\n#[cfg(test)]")
        .map_or("", |start| &text[start..])
}

/// Never scanned: installed packages (npm's and the MCP client's virtual environment); npm's lock file, whose `resolved` download addresses are
/// used by `npm ci` when the peers are installed, before (and outside) the test run; and this
/// file, whose own checks are made of the addresses it looks for.
const SKIPPED: &[&str] = &[
    "node_modules",
    ".venv",
    "package-lock.json",
    "loopback_only.rs",
];

/// `(file, address)`: literals that only appear as data, never contacted.
const DATA_ONLY: &[(&str, &str, &str)] = &[
    (
        "host/src/http/shares.rs",
        "2001:db8:1:2::5",
        "client addresses a unit test maps to their share holder; never contacted",
    ),
    (
        "host/src/http/shares.rs",
        "2001:db8:1:2:ffff::9",
        "client addresses a unit test maps to their share holder; never contacted",
    ),
    (
        "host/src/http/shares.rs",
        "2001:db8:1:3::5",
        "client addresses a unit test maps to their share holder; never contacted",
    ),
    (
        "host/src/http/shares.rs",
        "::ffff:127.0.0.1",
        "client addresses a unit test maps to their share holder; never contacted",
    ),
    (
        "plugins/deployment_mcp/cli/src/output.rs",
        "x",
        "a URL in a unit test of the terminal output's cleaning; printed, never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/ec2.rs",
        "1.2.3.4",
        "addresses in EC2 answers a unit test parses; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/ec2.rs",
        "10.0.0.1",
        "addresses in EC2 answers a unit test parses; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/ec2.rs",
        "10.0.0.2",
        "addresses in EC2 answers a unit test parses; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/egress.rs",
        "10.0.0.0",
        "addresses a unit test checks against allowed_target_networks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/egress.rs",
        "10.1.1.1",
        "addresses a unit test checks against allowed_target_networks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/egress.rs",
        "10.200.3.4",
        "addresses a unit test checks against allowed_target_networks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/egress.rs",
        "11.0.0.1",
        "addresses a unit test checks against allowed_target_networks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/egress.rs",
        "203.0.113.7",
        "addresses a unit test checks against allowed_target_networks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/egress.rs",
        "::ffff:10.1.1.1",
        "addresses a unit test checks against allowed_target_networks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/egress.rs",
        "::ffff:127.0.0.1",
        "addresses a unit test checks against allowed_target_networks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/egress.rs",
        "fd12::1",
        "addresses a unit test checks against allowed_target_networks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/environments/tests.rs",
        "192.168.1.100",
        "hosts of environments a unit test validates; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/environments/tests.rs",
        "x",
        "hosts of environments a unit test validates; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/mcp/origin.rs",
        "127.0.0.1.evil.test",
        "browser Origin values a unit test matches against mcp.allowed_origins; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/mcp/origin.rs",
        "ops.example.com",
        "browser Origin values a unit test matches against mcp.allowed_origins; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/redact.rs",
        "broken",
        "URLs a unit test masks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/redact.rs",
        "chat.test",
        "URLs a unit test masks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/redact.rs",
        "h.test",
        "URLs a unit test masks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/redact.rs",
        "hooks.chat.test",
        "URLs a unit test masks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/redact.rs",
        "hooks.test",
        "URLs a unit test masks; never contacted",
    ),
    (
        "plugins/deployment_mcp/core/src/triggers/ssh.rs",
        "10.0.0.1",
        "the platform IP a unit test hands the script as a variable; never contacted",
    ),
    (
        "tests/tests/suite/mcp.rs",
        "attacker.invalid",
        "a browser Origin header the MCP endpoint must refuse (.invalid never resolves); never contacted",
    ),
    (
        "tests/tests/suite/ssh_trigger.rs",
        "203.0.113.7",
        "platform IP (TEST-NET-3) passed to the remote script as a variable",
    ),
    (
        "tests/tests/suite/cli.rs",
        "203.0.113.7",
        "EC2_PUBLIC_IP (TEST-NET-3) handed to the script as a variable",
    ),
    (
        "tests/tests/suite/ec2_phase.rs",
        "10.0.0.5",
        "private IP inside a DescribeInstances answer the test serves",
    ),
    (
        "tests/tests/suite/ec2_phase.rs",
        "10.1.2.3",
        "public IP a loopback metadata stub answers",
    ),
    (
        "tests/tests/suite/ec2_phase.rs",
        "ec2.amazonaws.com",
        "XML namespace of a DescribeInstances answer",
    ),
    (
        "tests/tests/suite/ec2_phase.rs",
        "ec2.eu-west-3.amazonaws.com",
        "endpoint_url given to settings validation only",
    ),
];

#[derive(Debug, PartialEq, Eq)]
struct Finding {
    line: usize,
    address: String,
}

fn is_identifier(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Maximal runs of characters in `allowed` that are not glued to an identifier on either side.
fn bounded_runs(line: &str, allowed: impl Fn(char) -> bool) -> Vec<&str> {
    let mut runs = Vec::new();
    let mut start: Option<usize> = None;
    let mut previous: Option<char> = None;
    let mut before_run: Option<char> = None;
    for (index, c) in line
        .char_indices()
        .chain(std::iter::once((line.len(), ' ')))
    {
        let inside = index < line.len() && allowed(c);
        match (start, inside) {
            (None, true) => {
                start = Some(index);
                before_run = previous;
            }
            (Some(from), false) => {
                let glued = before_run.is_some_and(is_identifier) || is_identifier(c);
                if !glued {
                    runs.push(&line[from..index]);
                }
                start = None;
            }
            _ => {}
        }
        previous = Some(c);
    }
    runs
}

/// The host part of every `scheme://host` URL on the line. Hosts built at run time (`{address}`,
/// `$address`) are skipped: they come from loopback listeners the tests start.
fn url_hosts(line: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("://") {
        let after = &rest[at + 3..];
        let end = after
            .find(|c: char| c.is_whitespace() || "/?#\"'<>)`\\,;".contains(c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        let host_port = authority.rsplit('@').next().unwrap_or(authority);
        let host = if let Some(bracketed) = host_port.strip_prefix('[') {
            bracketed.split(']').next().unwrap_or(bracketed)
        } else {
            host_port.split(':').next().unwrap_or(host_port)
        };
        let scheme_ok = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphabetic());
        let plain = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
        if scheme_ok && !host.is_empty() && plain {
            hosts.push(host.to_owned());
        }
        rest = after;
    }
    hosts
}

fn is_local_name(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

fn outside(address: &str) -> bool {
    if let Ok(ip) = address.parse::<Ipv4Addr>() {
        return !ip.is_loopback() && !ip.is_unspecified();
    }
    if let Ok(ip) = address.parse::<Ipv6Addr>() {
        return !ip.is_loopback();
    }
    !is_local_name(address)
}

/// Every non-loopback address on every line of `text`.
fn scan(text: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut found: Vec<String> = Vec::new();
        for run in bounded_runs(line, |c| c.is_ascii_digit() || c == '.') {
            let run = run.trim_matches('.');
            if let Ok(ip) = run.parse::<Ipv4Addr>() {
                if !ip.is_loopback() && !ip.is_unspecified() {
                    found.push(run.to_owned());
                }
            }
        }
        for run in bounded_runs(line, |c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            // `e2e::` and other Rust paths read as addresses; real literals do not end in `::`.
            if run.matches(':').count() < 2 || run.ends_with("::") {
                continue;
            }
            if let Ok(ip) = run.parse::<Ipv6Addr>() {
                if !ip.is_loopback() && !ip.is_unspecified() {
                    found.push(run.to_owned());
                }
            }
        }
        for host in url_hosts(line) {
            if outside(&host) && !found.contains(&host) {
                found.push(host);
            }
        }
        findings.extend(found.into_iter().map(|address| Finding {
            line: number + 1,
            address,
        }));
    }
    findings
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if SKIPPED.iter().any(|skipped| name == *skipped) {
            continue;
        }
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn tests_benches_examples_and_config_address_only_loopback() {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in SCANNED {
        let dir = root.join(dir);
        assert!(dir.is_dir(), "{} is gone: update SCANNED", dir.display());
        files_under(&dir, &mut files);
    }
    let mut crate_files = Vec::new();
    for dir in UNIT_TESTS_IN {
        let dir = root.join(dir);
        assert!(
            dir.is_dir(),
            "{} is gone: update UNIT_TESTS_IN",
            dir.display()
        );
        files_under(&dir, &mut crate_files);
    }
    let unit_test_files: std::collections::HashSet<PathBuf> = crate_files.iter().cloned().collect();
    files.extend(crate_files);
    assert!(files.len() > 20, "found only {} files to scan", files.len());
    let mut problems = Vec::new();
    let mut used_allowances = std::collections::HashSet::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // not text
        };
        let relative = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        // A module of tests in a file of its own (`tests.rs`) is test code from its first line.
        let tests_file = file.file_name().is_some_and(|name| name == "tests.rs");
        let scanned = if unit_test_files.contains(file) && !tests_file {
            unit_tests(&text)
        } else {
            &text
        };
        // Line numbers count from the file's start.
        let offset = text[..text.len() - scanned.len()]
            .lines()
            .count()
            .saturating_sub(1);
        for mut finding in scan(scanned) {
            finding.line += offset;
            let allowed = DATA_ONLY
                .iter()
                .position(|(path, address, _)| *path == relative && *address == finding.address);
            match allowed {
                Some(index) => {
                    used_allowances.insert(index);
                }
                None => problems.push(format!(
                    "{relative}:{}: {} is not a loopback address",
                    finding.line, finding.address
                )),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "tests may talk only to loopback (127.0.0.0/8, [::1], localhost); use a loopback peer \
         (or e2e::closed_port() for an address that must refuse), or, for a literal that is only \
         data, add it to DATA_ONLY with the reason:\n  {}",
        problems.join("\n  ")
    );
    let stale: Vec<_> = DATA_ONLY
        .iter()
        .enumerate()
        .filter(|(index, _)| !used_allowances.contains(index))
        .map(|(_, (path, address, _))| format!("{path}: {address}"))
        .collect();
    assert!(
        stale.is_empty(),
        "DATA_ONLY entries that match nothing any more; remove them:\n  {}",
        stale.join("\n  ")
    );
}

#[test]
fn the_scan_finds_what_it_must() {
    let flagged = |text: &str| -> Vec<String> {
        scan(text)
            .into_iter()
            .map(|finding| finding.address)
            .collect()
    };
    assert_eq!(
        flagged(r#""host": "192.168.1.100", "url": "http://192.168.1.100:8081/health""#),
        ["192.168.1.100", "192.168.1.100"]
    );
    assert_eq!(flagged("probe 169.254.169.254 now"), ["169.254.169.254"]);
    assert_eq!(flagged("GET https://example.com/x"), ["example.com"]);
    assert_eq!(flagged("connect to [fe80::1]:22"), ["fe80::1"]);
    assert_eq!(flagged("http://user:pw@10.0.0.1/hook"), ["10.0.0.1"]);
    assert_eq!(flagged("http://[2001:db8::7]:80/"), ["2001:db8::7"]);
    for fine in [
        "http://127.0.0.1:8080/health and 127.0.0.2",
        "http://[::1]:9000/ or ::1",
        "http://localhost:3000/",
        "format!(\"http://{address}/x\")",
        "version 1.274.0 and 0.11.3",
        "std::net::Ipv4Addr, e2e::closed_port, use e2e::{x}, a.b.c.d",
        "listen on 0.0.0.0 or :: only",
    ] {
        assert_eq!(flagged(fine), Vec::<String>::new(), "{fine}");
    }
}
