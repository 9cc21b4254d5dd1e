//! Seed 002 as plain sequential Rust: `mp_worker` mapped over eight
//! `(name, seconds)` items, each announcing itself and sleeping.
//! `port_pool_map.rs` is the same program on Fleet (`Pool.map`); the diff
//! is in docs/porting.md.

use std::time::Duration;

/// Announces the item, sleeps its time and returns its name twice.
#[fleet::remote]
fn mp_worker(inputs: String, the_time: String) -> String {
    println!(" Process {inputs}\tWaiting {the_time} seconds");
    let secs: f64 = the_time.parse().unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs_f64(secs));
    println!(" Process {inputs}\tDONE");
    format!("{inputs}{inputs}")
}

fn main() -> anyhow::Result<()> {
    let data = [
        ("a", ".2"),
        ("b", ".4"),
        ("c", ".6"),
        ("d", ".8"),
        ("e", ".1"),
        ("f", ".3"),
        ("g", ".5"),
        ("h", ".7"),
    ];
    let results = fleet::get_all(&mp_worker::map(data))?;
    println!("RESULT {results:?}");
    Ok(())
}
