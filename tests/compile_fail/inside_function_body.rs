// A remote function written inside `main`: workers find functions by their
// path in the module tree, which an item in a function body does not have.

fn main() {
    #[fleet::remote]
    fn double(x: f64) -> f64 {
        x * 2.0
    }

    let _ = double::remote(2.0);
}
