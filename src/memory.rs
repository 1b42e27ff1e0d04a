//! Memory a burst of work freed goes back to the kernel.
//!
//! vipd allocates with jemalloc (its `main` sets it up): objects of one
//! size share pages, and freed pages go back to the kernel after a second
//! of decay. glibc's heap kept a Services leader's burst-time churn (pass
//! data, writes, netlink answers) as holes between live objects: after
//! 1000 Services the leader's heap was 8.7 MB for 5.1 MB in use
//! (BENCHMARKS.md, "Memory"). The C library's own allocations (name
//! resolution) still use glibc's allocator, in one arena.

/// Returns freed memory to the kernel now: jemalloc's (which would go
/// after its decay anyway) and glibc's. Called on the Services loop's slow
/// resync, where the cost (a walk of the free lists) is nothing.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallctl with a NUL-terminated name and no values to read or
    // write; "arena.4096.purge" (MALLCTL_ARENAS_ALL) purges every arena.
    // malloc_trim only walks glibc's own free lists.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
        libc::malloc_trim(0);
    }
}

/// One glibc malloc arena for the whole process instead of one per thread
/// that ever allocated (up to eight per core): only the C library's own
/// allocations use it. `MALLOC_ARENA_MAX` in the environment still
/// decides when set. Call first thing in `main`, before any other thread
/// exists.
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
