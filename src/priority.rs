//! vipd's scheduling niceness (`vip_nice`).
//!
//! Linux keeps a niceness per thread and a new thread starts with its
//! creator's, so set once on the main thread before the runtime starts it
//! covers every thread vipd runs, and the guardian it spawns.

use tracing::{info, warn};

/// Sets the calling thread's niceness to `nice` (a no-op at 0, the
/// default every process starts with). Call before any other thread
/// exists. Without CAP_SYS_NICE a negative value is refused: said, and
/// vipd runs at the niceness it has.
pub fn apply(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority only changes the calling thread's niceness.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r == 0 {
        info!(nice, "scheduling niceness set");
    } else {
        let e = std::io::Error::last_os_error();
        warn!(nice, error = %e, "cannot set the scheduling niceness (a negative one needs CAP_SYS_NICE): running at the default, and a busy node may delay the election");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's niceness (for the calling thread getpriority
    /// cannot fail, so -1 is a value, not an error).
    fn current() -> i32 {
        // SAFETY: getpriority only reads the calling thread's niceness.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn a_niceness_reaches_the_threads_started_after_it() {
        // In a thread of its own: the test harness's threads keep theirs.
        std::thread::spawn(|| {
            let before = current();
            apply(before + 1);
            assert_eq!(current(), before + 1);
            let child = std::thread::spawn(current).join().unwrap();
            assert_eq!(child, before + 1);
        })
        .join()
        .unwrap();
    }
}
