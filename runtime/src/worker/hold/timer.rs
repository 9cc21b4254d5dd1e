//! A one-shot kernel timer (Linux `timerfd`) that the worker's I/O runtime
//! watches through its reactor: an [`Alarm`].
//!
//! The hold watchdog needs a deadline per batch of held results, and the
//! summaries of direct tasks one per period, both set by the thread that
//! runs the tasks. A tokio timer would have to be set on the runtime's own
//! thread, so each batch cost a wake-up of the I/O thread (tens of
//! microseconds on a virtual machine) just to arm it, and another when it
//! fired although the batch had long gone out. Setting a timerfd is one
//! system call from any thread, setting it again replaces the old
//! deadline, and nothing wakes unless a deadline really passes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A deadline, set from any thread, whose expiry runs a callback on a
/// tokio runtime. Cloning gives another handle to the same timer.
#[derive(Clone)]
pub(crate) struct Alarm {
    timer: Arc<Timer>,
}

impl Alarm {
    /// Makes the timer and the task on `rt` that runs `fire` at each
    /// expiry, with a handle to set it again; `fire` returning false ends
    /// that task. `Err`: no timer could be made (out of file descriptors).
    pub(crate) fn start(
        rt: &tokio::runtime::Handle,
        fire: impl Fn(&Alarm) -> bool + Send + 'static,
    ) -> io::Result<Alarm> {
        let timer = Arc::new(Timer::new()?);
        let watched = {
            let _in_rt = rt.enter();
            // SAFETY: the Arc keeps the timer's descriptor open, and the
            // same, for as long as the AsyncFd holds its clone.
            unsafe { AsyncFd::register_with_interest(timer.clone(), Interest::READABLE)? }
        };
        let me = Alarm { timer };
        let handle = me.clone();
        rt.spawn(async move {
            loop {
                let Ok(mut ready) = watched.readable().await else {
                    return;
                };
                if ready.try_io(|t| t.get_ref().take()).is_err() {
                    continue; // woken without an expiry
                }
                if !fire(&handle) {
                    return;
                }
            }
        });
        Ok(me)
    }

    /// Fires once, `after` from now; replaces the deadline set before.
    pub(crate) fn set(&self, after: Duration) {
        self.timer.set(after);
    }
}

/// A `CLOCK_MONOTONIC` timerfd, non-blocking.
struct Timer(OwnedFd);

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: plain system call; a valid descriptor is owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Timer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once, `after` from now; replaces any deadline set before.
    fn set(&self, after: Duration) {
        // A zero it_value would disarm the timer: fire in 1 ns instead.
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec and the descriptor is ours;
        // it cannot fail for a valid timerfd and these values.
        unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    /// Consumes an expiry; `WouldBlock` if none happened since the last.
    fn take(&self) -> io::Result<()> {
        let mut expirations = 0u64;
        // SAFETY: reads 8 bytes into a u64 the call owns.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut expirations as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        match n < 0 {
            true => Err(io::Error::last_os_error()),
            false => Ok(()),
        }
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
