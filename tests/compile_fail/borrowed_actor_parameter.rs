// The same for an actor's method: its arguments travel too.

#[fleet::remote]
struct Greeter {
    greeting: String,
}

#[fleet::remote]
impl Greeter {
    fn new(greeting: String) -> Self {
        Greeter { greeting }
    }

    fn greet(&self, name: &str) -> String {
        format!("{} {name}", self.greeting)
    }
}

fn main() {}
