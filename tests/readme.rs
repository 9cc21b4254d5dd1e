//! The README's shell recipes, run as written: every ```` ```sh ```` block
//! not tagged `no-ci` (its info string, e.g. ```` ```sh no-ci ````). The
//! README's Rust blocks are doctests of the `fleet` crate instead
//! (`cargo test --doc -p fleet`, a step of `.ci/run`).
//!
//! A recipe runs from the workspace root in a network namespace of its own
//! (`unshare --net`, loopback up), so its fixed ports (6380, 8265) and
//! addresses (127.0.0.2, …) clash with nothing else on the machine, with a
//! temp folder of its own as `TMPDIR`, so `fleet stop` stops only what the
//! recipe started. Needs root (for the namespace); skips with a printed
//! reason otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::bounded;

/// A recipe may build release binaries first: minutes on a loaded machine.
const RECIPE_LIMIT: Duration = Duration::from_secs(45 * 60);

/// One fenced block of the README.
struct Block {
    info: String,
    line: usize,
    text: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    line: i + 1,
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The shell blocks CI runs: language `sh`, not tagged `no-ci`.
fn recipes(readme: &str) -> Vec<Block> {
    blocks(readme)
        .into_iter()
        .filter(|b| {
            let mut words = b.info.split([' ', ',']).filter(|w| !w.is_empty());
            words.next() == Some("sh") && !words.any(|w| w == "no-ci")
        })
        .collect()
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Stops what a recipe started with `fleet start` (pid files under its
/// `TMPDIR`), whatever happened to the recipe.
struct StopDaemons<'a> {
    tmp: &'a Path,
}

impl Drop for StopDaemons<'_> {
    fn drop(&mut self) {
        let fleet = workspace().join("target/release/fleet");
        if fleet.is_file() {
            let _ = Command::new(fleet)
                .arg("stop")
                .env("TMPDIR", self.tmp)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn the_readme_tags_its_blocks_so_ci_knows_what_to_run() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let all = blocks(&readme);
    // Rustdoc runs an untagged block as Rust: every block names its language.
    for b in &all {
        assert!(
            !b.info.is_empty(),
            "README.md line {}: tag the block (```text, ```sh, ```rust)",
            b.line
        );
    }
    let runs = recipes(&readme);
    assert!(
        runs.iter().any(|b| b.text.contains("sum_random")),
        "the 3-node recipe is among the recipes CI runs"
    );
}

#[test]
fn every_shell_recipe_in_the_readme_runs() {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("SKIPPED: the recipes run in a network namespace of their own, which needs root");
        return;
    }
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    for block in recipes(&readme) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let script = tmp.path().join("recipe.sh");
        std::fs::write(
            &script,
            format!("set -euxo pipefail\nip link set lo up\n{}", block.text),
        )
        .expect("write the recipe");
        let _stop = StopDaemons { tmp: tmp.path() };
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", "bash"])
            .arg(&script)
            .current_dir(workspace())
            .env("TMPDIR", tmp.path())
            .env("CARGO_NET_OFFLINE", "true")
            .env_remove("FLEET_ADDRESS")
            .env_remove("FLEET_TOKEN")
            .stdin(Stdio::null());
        let line = block.line;
        let out = bounded(
            &format!("the README recipe at line {line}"),
            RECIPE_LIMIT,
            move || cmd.output().expect("run unshare"),
        );
        assert!(
            out.status.success(),
            "README.md line {line}: the recipe failed ({})\n{}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            block.text,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
