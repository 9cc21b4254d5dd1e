//! Seed 003: `concurrent.futures` executor `map` of `add` and `product`
//! over two lists.
//!
//! `executor.map(f, a, b)` becomes one remote call per pair, submitted all
//! at once, and the results gathered in input order. Both maps are checked
//! against the plain local map.

use anyhow::ensure;
use fleet::ObjectRef;

/// Returns the sum of the two arguments.
#[fleet::remote]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// Returns the product of the two arguments.
#[fleet::remote]
fn product(x: i64, y: i64) -> i64 {
    x * y
}

/// Like `executor.map(f, a, b)`: submits `f(a[i], b[i])` for every pair at
/// once, then gathers the results in order.
fn map<R: serde::de::DeserializeOwned>(
    submit: impl Fn(i64, i64) -> ObjectRef<R>,
    a: &[i64],
    b: &[i64],
) -> fleet::Result<Vec<R>> {
    let refs: Vec<ObjectRef<R>> = a.iter().zip(b).map(|(&x, &y)| submit(x, y)).collect();
    fleet::get_all(&refs)
}

fn main() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("This machine has {cores} cores");
    let _cluster = fleet::init()?;

    let a = [1, 2, 3, 4, 5];
    let b = [6, 7, 8, 9, 10];

    let sums = map(add::remote, &a, &b)?;
    let products = map(product::remote, &a, &b)?;
    println!("add:     {a:?} + {b:?} = {sums:?}");
    println!("product: {a:?} * {b:?} = {products:?}");

    let local_sums: Vec<i64> = a.iter().zip(&b).map(|(&x, &y)| x + y).collect();
    let local_products: Vec<i64> = a.iter().zip(&b).map(|(&x, &y)| x * y).collect();
    ensure!(sums == local_sums, "add: {sums:?} != {local_sums:?}");
    ensure!(
        products == local_products,
        "product: {products:?} != {local_products:?}"
    );
    println!("OK: both maps equal the local map");
    Ok(())
}
