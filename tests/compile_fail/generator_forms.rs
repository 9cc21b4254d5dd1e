// Streaming generators return `impl Iterator<Item = T>`; other uses of
// `impl Trait` in a remote function get one error that names the fix.

// An iterator cannot be sent to another process: its items can, as a Vec.
#[fleet::remote]
fn total(items: impl Iterator<Item = u64>) -> u64 {
    items.sum()
}

// Only an iterator can be returned as `impl Trait`.
#[fleet::remote]
fn shown(x: u64) -> impl std::fmt::Display {
    x
}

// The items' type must be named.
#[fleet::remote]
fn unnamed(n: u64) -> impl Iterator {
    0..n
}

// A generator's items are refs already.
#[fleet::remote(num_returns = 2)]
fn pairs(n: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..n).map(|i| (i, i))
}

fn main() {}
