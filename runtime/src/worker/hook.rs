//! The switch into worker mode, run before `main`.
//!
//! A function pointer in `.init_array` runs while the C runtime starts the
//! process, after std has captured the arguments and before `main`. In a
//! process started by a node agent it never returns: it runs the worker and
//! exits. So every binary that links fleet (the user's program, an example,
//! a test harness) can serve as a worker with no code of the user's.

/// Set by the supervisor: this process is a worker with this id.
pub(crate) const ENV_WORKER_ID: &str = "FLEET_WORKER_ID";
/// Address of the head the worker connects to.
pub(crate) const ENV_HEAD: &str = "FLEET_WORKER_HEAD";
/// The cluster token the worker presents.
pub(crate) const ENV_TOKEN: &str = "FLEET_WORKER_TOKEN";
/// The job (driver) the worker serves.
pub(crate) const ENV_JOB: &str = "FLEET_WORKER_JOB";
/// The node that started the worker.
pub(crate) const ENV_NODE: &str = "FLEET_WORKER_NODE";
/// The node's own address (its agent's `--node-ip`, or the head node's
/// address), where the worker serves `Worker.Direct` for leased drivers:
/// a driver on another machine reaches it there.
pub(crate) const ENV_DIRECT_HOST: &str = "FLEET_WORKER_DIRECT_HOST";

#[used]
#[link_section = ".init_array"]
static WORKER_HOOK: extern "C" fn() = worker_hook;

extern "C" fn worker_hook() {
    let Some(id) = std::env::var(ENV_WORKER_ID)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let code = match std::panic::catch_unwind(|| super::run(id)) {
        Ok(Ok(())) => 0,
        // Refused because its job ended while it started: nothing to say.
        Ok(Err(crate::Error::Mismatch(why))) if why.ends_with("has ended") => 0,
        Ok(Err(e)) => {
            eprintln!("fleet worker {id} (pid {}): {e}", std::process::id());
            1
        }
        Err(_) => 101,
    };
    std::process::exit(code);
}

/// Referenced from `init` so the linker keeps the object file that holds
/// the hook.
pub(crate) fn ensure_linked() {
    std::hint::black_box(WORKER_HOOK as usize);
}
