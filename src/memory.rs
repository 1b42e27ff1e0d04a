//! Memory a burst of work freed goes back to the kernel.
//!
//! glibc's allocator keeps freed memory in per-thread arenas for reuse, so
//! after a burst (a thousand Services created and deleted) the process
//! stays at its peak although nothing is in use. `malloc_trim` returns the
//! free pages of every arena; vipd calls it on its slow resync tick, where
//! its cost (a walk of the free lists) is nothing.

/// Returns freed heap memory to the kernel (glibc; elsewhere a no-op).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
