// `#[remote]` on one method of a plain impl block: methods are remote only
// in an actor (`#[remote]` on the struct and on its impl block).

struct Counter {
    n: u64,
}

impl Counter {
    #[fleet::remote]
    fn value(&self) -> u64 {
        self.n
    }
}

fn main() {}
