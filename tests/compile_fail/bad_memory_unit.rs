// `memory` takes bytes or a unit Fleet knows; "2GB" style typos name the units.
#[fleet::remote(memory = "2XB")]
fn train(x: u64) -> u64 {
    x
}

fn main() {}
