//! Seed 003: `concurrent.futures` executor `map` of `add` and `product`
//! over two lists.
//!
//! `executor.map(f, a, b)` becomes `f::map(a.iter().zip(&b))`: one remote
//! call per pair, submitted all at once, and the results gathered in input
//! order. Both maps are checked against the plain local map.

use anyhow::ensure;

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

fn main() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("This machine has {cores} cores");
    let _cluster = fleet::init()?;

    let a = [1, 2, 3, 4, 5];
    let b = [6, 7, 8, 9, 10];

    let sums = fleet::get_all(&add::map(a.iter().zip(&b)))?;
    let products = fleet::get_all(&product::map(a.iter().zip(&b)))?;
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
