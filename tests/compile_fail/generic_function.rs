// A generic remote function: workers find a function by name and decode its
// arguments by type, so each concrete type needs its own function.

#[fleet::remote]
fn largest<T: PartialOrd + Copy>(items: Vec<T>) -> T {
    items.into_iter().fold(None, |m: Option<T>, x| match m {
        Some(m) if m >= x => Some(m),
        _ => Some(x),
    }).unwrap()
}

fn main() {}
