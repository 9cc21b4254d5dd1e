//! Short scheduler slices for the threads that pass tasks along.
//!
//! A task's way from the head to a worker and its result's way back cross
//! several threads that mostly sleep: the head's, and each worker's I/O
//! thread. On a machine whose cores all run tasks, each of those threads,
//! when woken, used to wait until the task running on its core had used up
//! its slice (Linux's EEVDF scheduler protects the running thread for a
//! slice, 1.5 ms on 2 cores) before it could run. Three such hops made a
//! worker's round trip to the head ~2 ms, and workers with ~2 ms of work
//! queued ran dry every few tasks (bench/README.md, "Session 5").
//!
//! Linux 6.12 and later let a thread ask for a shorter slice
//! (`sched_setattr` with `sched_runtime` under `SCHED_OTHER`); a woken
//! thread with a shorter slice than the running one preempts it at once.
//! No privilege is needed, and the thread's share of the CPU is unchanged:
//! only when it runs is affected. Older kernels ignore the request.

/// The slice asked for: the kernel's smallest (100 µs). These threads run
/// for microseconds at a time, so they never use it up.
const SLICE_NANOS: u64 = 100_000;

/// `struct sched_attr` of `sched_setattr(2)` (the first version, 56 bytes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks for a short slice for the calling thread; meant for
/// `on_thread_start` of the runtimes that carry the task path. Does
/// nothing if the thread's policy is not the normal one, or if
/// `FLEET_SHORT_SLICE=0`.
pub(crate) fn short_slice() {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ENABLED.get_or_init(|| std::env::var("FLEET_SHORT_SLICE").map_or(true, |v| v != "0")) {
        return;
    }
    // SAFETY: plain syscalls on the calling thread; `attr` outlives them.
    unsafe {
        if libc::sched_getscheduler(0) != libc::SCHED_OTHER {
            return;
        }
        // sched_setattr sets the nice value too: keep the thread's own.
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return;
        }
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: libc::SCHED_OTHER as u32,
            nice,
            runtime: SLICE_NANOS,
            ..Default::default()
        };
        // An old kernel refuses or ignores it: nothing else to do.
        libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_attribute_has_the_kernels_first_size() {
        assert_eq!(std::mem::size_of::<super::SchedAttr>(), 56);
    }

    #[test]
    fn asking_keeps_the_threads_nice_value() {
        std::thread::spawn(|| {
            // SAFETY: raising the calling thread's own nice value.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) };
            super::short_slice();
            // SAFETY: reads the calling thread's nice value.
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, 3);
        })
        .join()
        .unwrap();
    }
}
