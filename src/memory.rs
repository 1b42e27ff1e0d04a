//! Memory a burst of work freed goes back to the kernel, and one heap
//! instead of one per thread.
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

/// One malloc arena for the whole process instead of one per thread that
/// ever allocated (glibc's default, up to eight per core): vipd's threads
/// take turns on the same work (two runtime workers, blocking calls, the
/// ARP/NDP watchers), so per-thread arenas only hold each other's freed
/// memory. Measured with 1000 Services (`vipd-lab bench services --set
/// MALLOC_ARENA_MAX=1`): the leader's own memory 14 MiB instead of 20, a
/// follower's 9 instead of 12, passes as fast. `MALLOC_ARENA_MAX` in the
/// environment still decides when set. Call first thing in `main`, before
/// any other thread exists.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
