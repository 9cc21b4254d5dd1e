//! A program that depends on the `fleet` library links only what drivers
//! and workers need (issue 14, item 18): the `fleet` command, its argument
//! parser (clap) and `fleet microbenchmark` (rayon) live in the package
//! `fleet-cli` (`cli/`), which provides the `fleet` binary.
//!
//! These tests ask cargo itself (`cargo tree`, `cargo metadata`) about the
//! real dependency graph of this workspace, so they fail as soon as
//! someone adds one of the CLI's crates to `runtime/Cargo.toml` again or
//! puts a binary back into the library package.

use std::collections::BTreeSet;
use std::process::Command;

/// The workspace's manifest (this package is the workspace root).
const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

/// Crates only the `fleet` tool needs; a user's program must not compile
/// them because it depends on `fleet`.
const CLI_ONLY: &[&str] = &[
    "fleet-cli",
    "clap",
    "clap_builder",
    "clap_derive",
    "clap_lex",
    "rayon",
    "rayon-core",
    "shlex",
];

/// Not in the library's own `[dependencies]`: `thiserror` in libraries,
/// `anyhow` only in binaries. (prost's derive macro uses anyhow itself, so
/// it is in the graph; the library's code must not be.)
const NOT_DIRECT: &[&str] = &["anyhow", "clap", "rayon"];

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs cargo with `args` against this workspace; its stdout.
fn cargo_output(args: &[&str]) -> String {
    let out = cargo()
        .args(args)
        .args(["--offline", "--manifest-path", MANIFEST])
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo prints UTF-8")
}

/// Every package a program that depends on `fleet` compiles for it: the
/// library's normal dependencies, all the way down (proc-macros included;
/// `fleet`'s own build script's dependencies are counted apart).
fn library_packages() -> BTreeSet<String> {
    cargo_output(&[
        "tree", "-p", "fleet", "-e", "normal", "--prefix", "none", "--format", "{p}",
    ])
    .lines()
    .filter_map(|l| l.split_whitespace().next())
    .map(str::to_string)
    .collect()
}

#[test]
fn the_library_does_not_depend_on_the_clis_crates() {
    let packages = library_packages();
    // The graph was read: the runtime's own crates are in it.
    for needed in ["fleet", "fleet-macros", "tokio", "tonic", "serde"] {
        assert!(
            packages.contains(needed),
            "`cargo tree -p fleet` lists no {needed}: {packages:?}"
        );
    }
    let found: Vec<&str> = CLI_ONLY
        .iter()
        .copied()
        .filter(|c| packages.contains(*c))
        .collect();
    assert!(
        found.is_empty(),
        "the fleet library depends on {found:?} (see `cargo tree -p fleet -e normal -i {}`); \
         crates only the `fleet` command needs belong in cli/Cargo.toml (package fleet-cli), \
         so that users' programs do not compile and link them",
        found[0]
    );
    println!(
        "the fleet library compiles {} packages, none of {CLI_ONLY:?}",
        packages.len()
    );
}

#[test]
fn the_fleet_binary_is_built_by_fleet_cli_and_the_library_has_no_binary() {
    let meta: serde_json::Value = serde_json::from_str(&cargo_output(&[
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))
    .expect("cargo metadata prints JSON");
    let package = |name: &str| -> &serde_json::Value {
        meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no package {name} in the workspace"))
    };
    let direct: Vec<&str> = package("fleet")["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|d| d["kind"].is_null())
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(direct.contains(&"tokio"), "{direct:?}");
    let wrong: Vec<&&str> = NOT_DIRECT.iter().filter(|n| direct.contains(n)).collect();
    assert!(
        wrong.is_empty(),
        "runtime/Cargo.toml lists {wrong:?} under [dependencies]: the library uses thiserror; \
         anyhow, clap and rayon are for the fleet command (cli/Cargo.toml)"
    );
    let targets = |name: &str| -> Vec<(String, Vec<String>)> {
        package(name)["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|t| {
                let kinds = t["kind"].as_array().expect("kind");
                (
                    t["name"].as_str().expect("name").to_string(),
                    kinds
                        .iter()
                        .map(|k| k.as_str().unwrap_or("").to_string())
                        .collect(),
                )
            })
            .collect()
    };
    let library_bins: Vec<String> = targets("fleet")
        .into_iter()
        .filter(|(_, kinds)| kinds.iter().any(|k| k == "bin"))
        .map(|(name, _)| name)
        .collect();
    assert!(
        library_bins.is_empty(),
        "the fleet library package has binaries {library_bins:?}: the `fleet` command is the \
         package fleet-cli (cli/); a binary in runtime/ makes its dependencies the library's"
    );
    assert!(
        targets("fleet-cli")
            .iter()
            .any(|(name, kinds)| name == "fleet" && kinds.iter().any(|k| k == "bin")),
        "package fleet-cli has no binary named fleet"
    );
}
