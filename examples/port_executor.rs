//! Seed 003 as plain sequential Rust: `add` and `product` mapped over two
//! lists. `port_executor.rs` is the same program on Fleet; docs/porting.md
//! shows the diff (3 lines).

#[fleet::remote]
mod ops {
    /// Returns the sum of the two arguments.
    pub(crate) fn add(x: i64, y: i64) -> i64 {
        x + y
    }

    /// Returns the product of the two arguments.
    pub(crate) fn product(x: i64, y: i64) -> i64 {
        x * y
    }
}

use ops::{add, product};

fn main() -> anyhow::Result<()> {
    let a = [1, 2, 3, 4, 5];
    let b = [6, 7, 8, 9, 10];
    let sums = fleet::get_all(&add::map(a.iter().zip(&b)))?;
    let products = fleet::get_all(&product::map(a.iter().zip(&b)))?;
    println!("RESULT sums {sums:?} products {products:?}");
    Ok(())
}
