//! The async side of the API: `async fn` remote functions and actor
//! methods run on the worker's runtime, and an `ObjectRef` can be awaited.

use std::time::Duration;

use fleet::{remote, ObjectRef};

#[remote]
async fn later(x: u64, ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    x + 1
}

/// An actor with an async method.
#[remote]
struct Clock {
    ticks: u64,
}

#[remote]
impl Clock {
    fn new() -> Self {
        Clock { ticks: 0 }
    }

    async fn tick(&mut self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.ticks += 1;
        self.ticks
    }
}

#[test]
fn async_functions_and_methods_run_and_refs_can_be_awaited() {
    let _c = fleet::init().expect("cluster");
    let refs: Vec<ObjectRef<u64>> = (0..20).map(|x| later::remote(x, 5)).collect();
    assert_eq!(
        fleet::get_all(&refs).unwrap(),
        (1..21).collect::<Vec<u64>>()
    );

    let clock = Clock::remote().expect("actor");
    let ticks: Vec<ObjectRef<u64>> = (0..5).map(|_| clock.tick(2)).collect();
    assert_eq!(fleet::get_all(&ticks).unwrap(), vec![1, 2, 3, 4, 5]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let awaited = rt.block_on(async {
        let a = later::remote(10, 1).await?;
        let b = later::remote(a, 1).await?;
        Ok::<u64, fleet::Error>(b)
    });
    assert_eq!(awaited.unwrap(), 12);
}
