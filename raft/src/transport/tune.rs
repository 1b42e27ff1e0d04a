//! TCP options of a Raft link: a lost segment is sent again within
//! milliseconds.
//!
//! Heartbeats go every 20 ms and a follower campaigns after 100 ms
//! without one, but Linux waits at least 200 ms before it sends a lost
//! segment again when it is the only one in flight (a heartbeat), and
//! everything behind it on the connection waits too. With 2 % of the
//! frames lost, followers lost their leader for 100-140 ms several times a
//! minute and the leader's hold lapsed (`tests/raft.rs`,
//! `no_spurious_failover_under_load_and_loss`). So, on every Raft
//! connection: a minimum retransmission timeout of 5 ms (`TCP_RTO_MIN_US`,
//! Linux 6.16; the kernel rounds it up to whole jiffies), backoff capped at
//! one second (`TCP_RTO_MAX_MS`, 6.15) and linear timeouts while the
//! stream is thin (`TCP_THIN_LINEAR_TIMEOUTS`). An older kernel refuses
//! the first two: said once, and the link works as before.

use std::sync::Once;

use tokio::net::TcpStream;
use tracing::info;

/// Linux's numbers for the options the libc crate may not know yet.
const TCP_RTO_MAX_MS: libc::c_int = 44;
const TCP_RTO_MIN_US: libc::c_int = 45;

/// The minimum retransmission timeout asked for, in microseconds.
const RTO_MIN_US: libc::c_int = 5_000;
/// The longest backoff between retransmissions, in milliseconds (the
/// kernel's smallest accepted value).
const RTO_MAX_MS: libc::c_int = 1_000;

static OLD_KERNEL: Once = Once::new();

/// Sets the options on `s`: no Nagle delay, fast retransmissions.
pub(super) fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = s.as_raw_fd();
        let _ = set(fd, libc::TCP_THIN_LINEAR_TIMEOUTS, 1);
        let fast = set(fd, TCP_RTO_MIN_US, RTO_MIN_US).and(set(fd, TCP_RTO_MAX_MS, RTO_MAX_MS));
        if let Err(e) = fast {
            OLD_KERNEL.call_once(|| {
                info!(error = %e, "this kernel cannot shorten TCP retransmission timeouts (Linux 6.16 can): a lost Raft segment waits 200 ms, and under packet loss followers may lose the leader for a moment");
            });
        }
    }
}

#[cfg(target_os = "linux")]
fn set(fd: std::os::fd::RawFd, opt: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: an int option on a socket descriptor we own, its size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(fd: std::os::fd::RawFd, opt: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reading an int option into our own variable.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        v
    }

    #[tokio::test]
    async fn raft_links_retransmit_within_milliseconds() {
        use std::os::fd::AsRawFd;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        tune(&s);
        let fd = s.as_raw_fd();
        assert!(s.nodelay().unwrap());
        assert_eq!(get(fd, libc::TCP_THIN_LINEAR_TIMEOUTS), 1);
        // Kernels before 6.16 do not have it (then nothing to check).
        if set(fd, TCP_RTO_MIN_US, RTO_MIN_US).is_ok() {
            let min = get(fd, TCP_RTO_MIN_US);
            assert!((RTO_MIN_US..=20_000).contains(&min), "{min} us");
            assert_eq!(get(fd, TCP_RTO_MAX_MS), RTO_MAX_MS);
        }
    }
}
