//! Actors: a counter, a named actor reached from a task, an actor pool, and
//! a restart after the actor's process is killed. Checks its own results.

use std::time::Duration;

use fleet::{remote, ActorPool, ObjectRef};

/// A counter living in a worker process.
#[remote]
struct Counter {
    n: i64,
}

#[remote]
impl Counter {
    fn new(start: i64) -> Self {
        Counter { n: start }
    }

    fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    fn value(&self) -> i64 {
        self.n
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    /// An async method: runs on the worker's runtime.
    async fn value_later(&self, ms: u64) -> i64 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        self.n
    }
}

/// Finds the named counter from inside a task and bumps it.
#[remote]
fn bump_named(name: String, by: i64) -> fleet::Result<i64> {
    let c = fleet::get_actor::<Counter>(&name)?;
    fleet::get(&c.incr(by))
}

/// A task that receives a handle as an argument (Ray's `work(actors)`).
#[remote]
fn bump_all(counters: Vec<CounterHandle>) -> fleet::Result<i64> {
    let refs: Vec<ObjectRef<i64>> = counters.iter().map(|c| c.incr(1)).collect();
    Ok(fleet::get_all(&refs)?.into_iter().sum())
}

fn main() -> anyhow::Result<()> {
    let _cluster = fleet::init()?;

    let c = Counter::remote(0)?;
    let r: ObjectRef<i64> = c.incr(5);
    let refs: Vec<ObjectRef<i64>> = (0..100).map(|_| c.incr(1)).collect();
    anyhow::ensure!(fleet::get(&r)? == 5, "first incr");
    anyhow::ensure!(
        fleet::get_all(&refs)? == (6..106).collect::<Vec<_>>(),
        "calls ran out of order"
    );
    anyhow::ensure!(fleet::get(&c.value())? == 105, "value");
    anyhow::ensure!(fleet::get(&c.value_later(20))? == 105, "async method");
    println!(
        "counter: 101 ordered calls, value {}",
        fleet::get(&c.value())?
    );

    let named = Counter::options().name("hits").max_restarts(2).remote(10)?;
    let from_task = fleet::get(&bump_named::remote("hits".to_string(), 5))?;
    anyhow::ensure!(from_task == 15, "named actor from a task: {from_task}");
    println!("named actor `hits` bumped from a task: {from_task}");

    let total = fleet::get(&bump_all::remote(vec![c.clone(), named.clone()]))?;
    anyhow::ensure!(total == 106 + 16, "handles passed to a task: {total}");

    let pool = ActorPool::new(
        (0..4)
            .map(|_| Counter::remote(0))
            .collect::<fleet::Result<Vec<_>>>()?,
    );
    let squares = pool.map(0..20i64, |a, v| a.incr(v * v))?;
    let per_actor: i64 = pool
        .actors()
        .iter()
        .map(|a| fleet::get(&a.value()))
        .sum::<fleet::Result<i64>>()?;
    anyhow::ensure!(squares.len() == 20, "pool results");
    anyhow::ensure!(
        per_actor == (0..20i64).map(|v| v * v).sum::<i64>(),
        "pool sum"
    );
    println!("actor pool: 20 calls over 4 actors, total {per_actor}");

    // Kill the named actor's process: it is rebuilt by running `new(10)` again.
    let pid = fleet::get(&named.pid())?;
    // SAFETY: plain kill(2) of a worker process of ours.
    unsafe { libc_kill(pid) };
    let mut after = None;
    for _ in 0..600 {
        match fleet::get_timeout(&named.value(), Some(Duration::from_secs(10))) {
            Ok(v) => {
                after = Some(v);
                break;
            }
            Err(fleet::Error::ActorDied { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::ensure!(
        after == Some(10),
        "restarted actor has its constructor's state: {after:?}"
    );
    let new_pid = fleet::get(&named.pid())?;
    anyhow::ensure!(new_pid != pid, "restarted in another process");
    println!("restart: killed pid {pid}, actor rebuilt in pid {new_pid} with value 10");
    fleet::kill(&named)?;
    Ok(())
}

unsafe fn libc_kill(pid: u32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    kill(pid as i32, 9);
}
