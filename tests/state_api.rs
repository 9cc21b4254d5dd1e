//! `fleet list` against a CLI cluster (`fleet start --head` plus a node
//! agent): tasks by state and function, nodes, actors, objects and jobs,
//! as a table and as JSON, with a limit; a wrong kind names the right ones.

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::{fleet_bin, CliCluster};
use common::{wait_until, Gate, GENEROUS};
use fleet::{remote, ObjectRef};

#[remote]
fn held(gate: String) -> u64 {
    common::wait_for_path(Path::new(&gate));
    1
}

#[remote]
fn quick(x: u64) -> u64 {
    x + 1
}

#[remote]
struct Keeper {
    n: u64,
}

#[remote]
impl Keeper {
    fn new() -> Self {
        Keeper { n: 0 }
    }
    fn get(&self) -> u64 {
        self.n
    }
}

fn list(c: &CliCluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fleet_bin())
        .arg("list")
        .args(args)
        .args(["--address", &c.address])
        .env("FLEET_TOKEN", &c.token)
        .output()
        .expect("running fleet list");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(c: &CliCluster, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = args.to_vec();
    a.push("--json");
    let (ok, out, err) = list(c, &a);
    assert!(ok, "fleet list {args:?} failed: {err}");
    serde_json::from_str(&out).expect("JSON rows")
}

#[test]
fn fleet_list_shows_the_cluster_state() {
    let mut c = CliCluster::start(2, &[]);
    let node = c.add_node("127.0.0.2", 1);
    let _driver = c.join();
    let done: Vec<ObjectRef<u64>> = (0..5).map(quick::remote).collect();
    assert_eq!(fleet::get_all(&done).expect("quick"), vec![1, 2, 3, 4, 5]);
    let gate = Gate::new();
    let running = held::remote(gate.path());
    let keeper = Keeper::remote().expect("actor");
    assert_eq!(fleet::get(&keeper.get()).expect("actor call"), 0);
    let big = fleet::put(vec![7u8; 1 << 20]).expect("put");

    let rows = wait_until("the held task to run", GENEROUS, || {
        let rows = json(&c, &["tasks", "--state", "running"]);
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0]["function"].as_str().unwrap().ends_with("held"));
    let finished = json(&c, &["tasks", "--state", "finished", "--function", "quick"]);
    assert_eq!(finished.len(), 5, "{finished:?}");
    let limited = json(&c, &["tasks", "--function", "quick", "--limit", "2"]);
    assert_eq!(limited.len(), 2);

    let nodes = json(&c, &["nodes"]);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(nodes.iter().any(|n| n["name"] == node.as_str()));
    assert_eq!(json(&c, &["nodes", "--node", &node]).len(), 1);

    let actors = json(&c, &["actors", "--state", "alive"]);
    assert_eq!(actors.len(), 1, "{actors:?}");
    assert!(actors[0]["class"].as_str().unwrap().ends_with("Keeper"));

    let stored = json(&c, &["objects", "--state", "stored"]);
    assert!(
        stored.iter().any(|o| o["size"].as_u64() >= Some(1 << 20)),
        "{stored:?}"
    );
    assert!(!json(&c, &["jobs"]).is_empty());

    // The table form, and a kind that does not exist.
    let (ok, table, _) = list(&c, &["tasks", "--state", "finished"]);
    assert!(ok);
    assert!(
        table.starts_with("ID") || table.contains("FUNCTION"),
        "{table}"
    );
    assert!(
        table.contains("of 5 rows") || table.contains("rows"),
        "{table}"
    );
    let (ok, _, err) = list(&c, &["gadgets"]);
    assert!(!ok);
    assert!(err.contains("tasks, actors, objects, nodes, jobs"), "{err}");

    gate.open();
    assert_eq!(
        fleet::get_timeout(&running, Some(GENEROUS)).expect("held"),
        1
    );
    drop(big);
}
