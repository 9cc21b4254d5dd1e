//! The tour: remote functions, refs as arguments, get/get_all/put/wait.

use std::time::Duration;

use fleet::{remote, ObjectRef};

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

#[remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn main() -> fleet::Result<()> {
    let _cluster = fleet::init()?;
    let r: ObjectRef<u64> = square::remote(3);
    assert_eq!(fleet::get(&r)?, 9);
    let s = square::remote(r.clone());
    assert_eq!(fleet::get(&s)?, 81);
    let t = add::remote(&r, 1);
    assert_eq!(fleet::get(&t)?, 10);
    let refs: Vec<ObjectRef<u64>> = (0..1000).map(square::remote).collect();
    let all: Vec<u64> = fleet::get_all(&refs)?;
    assert_eq!(all, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let big: ObjectRef<Vec<u8>> = fleet::put(vec![7u8; 64 << 20])?;
    assert_eq!(fleet::get(&big)?.len(), 64 << 20);
    let (ready, pending) = fleet::wait(&refs, 10, Some(Duration::from_secs(1)))?;
    println!(
        "square(3) = 9, 1000 squares summed to {}, wait: {} ready, {} pending",
        all.iter().sum::<u64>(),
        ready.len(),
        pending.len()
    );
    Ok(())
}
