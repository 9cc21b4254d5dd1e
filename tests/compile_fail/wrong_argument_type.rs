// An argument of the wrong type: the error says what may stand for the
// parameter, plain values first.

#[fleet::remote]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let _ = square::remote("three");
}
