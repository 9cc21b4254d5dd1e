//! User values as workers and drivers decode them: postcard (the codec
//! Fleet uses for values) into a spread of serde shapes, and `fleet::Blob`.
//! Errors are fine; panics, aborts and huge allocations are not (run with
//! `-rss_limit_mb` / `-malloc_limit_mb` to bound the latter).
#![no_main]

use std::collections::{BTreeMap, HashMap};

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Shape {
    Unit,
    Circle(f64),
    Poly {
        points: Vec<(i32, i32)>,
        label: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    shape: Shape,
    scores: BTreeMap<String, i64>,
    flag: bool,
    c: char,
    big: u128,
    raw: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<Record>(data);
    let _ = postcard::from_bytes::<Vec<Shape>>(data);
    let _ = postcard::from_bytes::<HashMap<u32, Vec<u8>>>(data);
    let _ = postcard::from_bytes::<(String, Option<f32>, i16)>(data);
    let _ = postcard::from_bytes::<Vec<Vec<Vec<u8>>>>(data);
    let _ = postcard::from_bytes::<fleet::Blob>(data);
    let _ = postcard::from_bytes::<Vec<fleet::Blob>>(data);
});
