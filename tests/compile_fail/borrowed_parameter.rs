// A remote function's arguments are sent to another process: it takes
// owned values, and says so once, on the parameter.

#[fleet::remote]
fn concat(data: (&str, &str)) -> String {
    format!("{}{}", data.0, data.1)
}

#[fleet::remote]
fn total(v: &Vec<u64>) -> u64 {
    v.iter().sum()
}

fn main() {}
