//! The three seed programs ported from the README: each `examples/port_X.rs`
//! differs from its sequential version `examples/seq_X.rs` in at most three
//! lines, prints the same results, and `docs/porting.md` shows the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The seeds: 003 (`executor.map`), 002 (`Pool.map` with prints), 000
/// (metrics split by id).
const PORTS: [&str; 3] = ["executor", "pool_map", "metrics"];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Lines of `b` that are not in the longest common subsequence with `a`,
/// plus lines of `a` not in it: a diff's `-` and `+` lines. A changed line
/// counts once (as its `+` line) when both sides have one at that place.
fn diff(a: &[&str], b: &[&str]) -> (Vec<String>, Vec<String>) {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            added.push(b[j].to_string());
            j += 1;
        } else {
            removed.push(a[i].to_string());
            i += 1;
        }
    }
    (removed, added)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `RESULT` lines an example prints.
fn results(example: &str) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["run", "-q", "--example", example, "--manifest-path"])
        .arg(workspace().join("Cargo.toml"))
        .env("FLEET_DASHBOARD", "0")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "{example} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("RESULT"))
        .map(str::to_string)
        .collect()
}

#[test]
fn each_port_changes_at_most_three_lines_and_the_guide_shows_them() {
    let guide = read(&workspace().join("docs/porting.md"));
    for name in PORTS {
        let seq = read(&workspace().join(format!("examples/seq_{name}.rs")));
        let port = read(&workspace().join(format!("examples/port_{name}.rs")));
        let seq: Vec<&str> = seq.lines().collect();
        let port: Vec<&str> = port.lines().collect();
        let (removed, added) = diff(&seq, &port);
        let changed = added.len().max(removed.len());
        assert!(
            (1..=3).contains(&changed),
            "port_{name}.rs changes {changed} lines of seq_{name}.rs:\n-{}\n+{}",
            removed.join("\n-"),
            added.join("\n+")
        );
        for line in removed.iter().map(|l| format!("-{l}")) {
            assert!(guide.contains(&line), "docs/porting.md shows {line:?}");
        }
        for line in added.iter().map(|l| format!("+{l}")) {
            assert!(guide.contains(&line), "docs/porting.md shows {line:?}");
        }
    }
}

#[test]
fn each_port_prints_what_its_sequential_version_prints() {
    for name in PORTS {
        let seq = results(&format!("seq_{name}"));
        assert!(!seq.is_empty(), "seq_{name} printed no RESULT line");
        assert_eq!(seq, results(&format!("port_{name}")), "port_{name}");
    }
}
