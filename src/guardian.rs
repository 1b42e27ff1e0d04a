//! The guardian: a dead man's switch for held addresses, in a process of
//! its own.
//!
//! A killed vipd cannot remove its addresses, and a frozen one (SIGSTOP, a
//! stalled node) cannot notice that its lead ran out; the kernel's address
//! lifetime catches both, but only in whole seconds. The guardian is a small
//! child process (`vipd guard`) that the address owner keeps told of the
//! earliest claim deadline, and of the addresses that may go the moment
//! vipd dies (placed addresses others take over at once). When a deadline
//! passes without a newer one, the guardian deletes every address carrying
//! vipd's mark, within milliseconds; when vipd dies (its end of the pipe
//! closes), it deletes those at once and the others a little before the
//! last deadline. In a container the manager is the child of vipd's init
//! (`crate::init`), so its death leaves the guardian running; killing the
//! whole container takes the guardian too, and then the kernel lifetime
//! remains.

use std::io::{self, Write};

use futures::StreamExt;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tracing::{debug, warn};

use crate::netlink::Netlink;

/// Held by a running guardian (see [`crate::singleton::bind_abstract`]).
const LOCK: &[u8] = b"vipd-guard";

fn bind_lock() -> io::Result<std::os::unix::net::UnixListener> {
    crate::singleton::bind_abstract(LOCK)
}

/// Waits (up to `timeout`) for the guardian of a previous vipd on this node
/// to finish: it may still remove addresses at its last deadline, and must
/// be done before a new vipd adds any.
pub fn wait_for_previous(timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match bind_lock() {
            Ok(_) => return true,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => return false,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in both processes.
fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// vipd's end: tells the guardian the current deadline.
pub struct Guardian {
    child: Child,
    stdin: Option<ChildStdin>,
    last: Option<Option<u64>>,
    last_death: Option<Option<u64>>,
    last_drop: Option<Vec<IpAddr>>,
}

impl Guardian {
    /// Starts `vipd guard` from this executable.
    pub fn spawn() -> io::Result<Guardian> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("guard")
            .stdin(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Guardian {
            child,
            stdin,
            last: None,
            last_death: None,
            last_drop: None,
        })
    }

    /// The addresses to remove the moment vipd dies, not at the deadline:
    /// others take them over at once (placement following peer links).
    pub fn set_drop_on_death(&mut self, addrs: Vec<IpAddr>) {
        if self.last_drop.as_ref() == Some(&addrs) {
            return;
        }
        let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
        self.write(&format!("drop {}\n", list.join(",")));
        self.last_drop = Some(addrs);
    }

    /// Sets until when the addresses may stay if vipd dies now (see
    /// `vips::plan::at_death`); None: the deadline decides.
    pub fn set_at_death(&mut self, remaining: Option<Duration>) {
        // Zero: at once (0 is always past, and the same every time).
        let at = remaining.map(|r| {
            if r.is_zero() {
                0
            } else {
                mono_ns() + r.as_nanos() as u64
            }
        });
        let line = match at {
            Some(ns) => format!("death {ns}\n"),
            None => "death none\n".to_string(),
        };
        self.tell(at, line, |g| &mut g.last_death);
    }

    /// Writes `line`, which says instant `at`, unless the last one `last`
    /// recorded says the same (see [`differs`]); records it once written.
    fn tell(
        &mut self,
        at: Option<u64>,
        line: String,
        last: impl Fn(&mut Guardian) -> &mut Option<Option<u64>>,
    ) {
        if !differs(*last(self), at) {
            return;
        }
        self.write(&line);
        if self.stdin.is_some() {
            *last(self) = Some(at);
        }
    }

    fn write(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            if let Err(e) = s.write_all(line.as_bytes()) {
                warn!(error = %e, "the guardian is gone; addresses rely on their kernel lifetime alone");
                self.stdin = None;
            }
        }
    }

    /// Sets the deadline: `Some(remaining)` from now, or None (no deadline).
    pub fn set(&mut self, remaining: Option<Duration>) {
        let at = remaining.map(|r| mono_ns() + r.as_nanos() as u64);
        let line = match at {
            Some(ns) => format!("until {ns}\n"),
            None => "none\n".to_string(),
        };
        self.tell(at, line, |g| &mut g.last);
    }
}

/// Whether instant `at` is worth telling after `last` was (instants within
/// 1 ms of the last sent are not worth a write).
fn differs(last: Option<Option<u64>>, at: Option<u64>) -> bool {
    !match (last, at) {
        (Some(None), None) => true,
        (Some(Some(a)), Some(b)) => a.abs_diff(b) < 1_000_000,
        _ => false,
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // Closing the pipe tells it to clean up and exit.
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// Removes every address carrying vipd's mark (only those of `only`, when
/// given).
fn remove_ours(only: Option<&[IpAddr]>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return,
    };
    rt.block_on(async {
        let Ok(nl) = Netlink::connect() else { return };
        let Ok(addrs) = nl.addresses().await else {
            return;
        };
        let chosen = |a: &IpAddr| only.is_none_or(|o| o.contains(a));
        // Many at once (a thousand one by one take over a second), but
        // not so many that the kernel's answers overflow the socket.
        let gone =
            futures::stream::iter(addrs.into_iter().filter(|k| k.ours && chosen(&k.addr)).map(
                |k| {
                    let nl = &nl;
                    async move { (k.addr, nl.del_address(k.ifindex, k.addr, k.prefix).await) }
                },
            ))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        for (addr, result) in gone {
            match result {
                Ok(()) => say(&format!("removed {addr} (vipd stopped renewing it)")),
                Err(e) => say(&format!("cannot remove {addr}: {e}")),
            }
        }
    });
}

fn say(what: &str) {
    crate::stamped::say("vipd guard", what);
}

/// How long to wait, `left` before a dead vipd's deadline, before removing
/// its addresses: a little early (a quarter second, or half of what is
/// left when that is less), so that removing a thousand of them is done by
/// the deadline, when another node may add them.
fn early(left: u64) -> u64 {
    let margin = (left / 2).min(250_000_000);
    left - margin
}

/// `vipd guard`: runs until vipd's end of the pipe closes. When vipd is
/// gone, the addresses of the last `drop` line go at once (others take
/// them over without waiting), the rest stay until just before the last
/// deadline it gave (its lead was guaranteed until then; see [`early`]).
pub fn run_guard() -> ! {
    // Held until exit: a new vipd waits for this guardian to be done.
    let _lock = bind_lock();
    let fd = io::stdin().as_raw_fd();
    let mut deadline: Option<u64> = None;
    let mut drop_on_death: Vec<IpAddr> = Vec::new();
    let mut death: Option<u64> = None;
    let mut pending = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let timeout_ms: i32 = match deadline {
            None => -1,
            Some(d) => {
                let now = mono_ns();
                if now >= d {
                    remove_ours(None);
                    deadline = None;
                    continue;
                }
                ((d - now) / 1_000_000 + 1).min(i32::MAX as u64) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n == 0 {
            continue; // the deadline is checked at the top
        }
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            remove_ours(None);
            std::process::exit(1);
        }
        // SAFETY: reading into our own buffer from stdin's descriptor.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match r {
            r if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {
                continue
            }
            r if r <= 0 => {
                // vipd is gone (killed, crashed, or stopped cleanly).
                let until = match (deadline, death) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let now = mono_ns();
                say(&match until {
                    Some(d) if d > now => format!(
                        "vipd is gone; its addresses go in {} ms ({} at once)",
                        early(d - now) / 1_000_000,
                        drop_on_death.len()
                    ),
                    Some(_) => "vipd is gone past its deadline; its addresses go now".to_string(),
                    None => "vipd is gone; its addresses go now (no deadline)".to_string(),
                });
                if !drop_on_death.is_empty() {
                    remove_ours(Some(&drop_on_death));
                }
                if let Some(d) = until {
                    let now = mono_ns();
                    if d > now {
                        std::thread::sleep(Duration::from_nanos(early(d - now)));
                    }
                }
                remove_ours(None);
                std::process::exit(0);
            }
            k => {
                let k = k as usize;
                pending.push_str(&String::from_utf8_lossy(&buf[..k]));
                while let Some(i) = pending.find('\n') {
                    let line: String = pending.drain(..=i).collect();
                    let line = line.trim();
                    if line == "none" {
                        deadline = None;
                    } else if line == "death none" {
                        death = None;
                    } else if let Some(ns) =
                        line.strip_prefix("death ").and_then(|v| v.parse().ok())
                    {
                        death = Some(ns);
                    } else if let Some(list) = line.strip_prefix("drop ") {
                        drop_on_death = list.split(',').filter_map(|a| a.parse().ok()).collect();
                    } else if let Some(ns) =
                        line.strip_prefix("until ").and_then(|v| v.parse().ok())
                    {
                        deadline = Some(ns);
                    } else {
                        debug!(line, "guardian: unknown line");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{differs, early};

    #[test]
    fn only_instants_that_moved_by_a_millisecond_or_changed_kind_are_told() {
        let ms = 1_000_000;
        assert!(differs(None, None));
        assert!(!differs(Some(None), None));
        assert!(differs(Some(None), Some(5 * ms)));
        assert!(!differs(Some(Some(5 * ms)), Some(5 * ms + ms / 2)));
        assert!(differs(Some(Some(5 * ms)), Some(7 * ms)));
        assert!(differs(Some(Some(5 * ms)), None));
    }

    #[test]
    fn a_dead_vipds_addresses_go_a_little_before_its_deadline() {
        let ms = 1_000_000;
        // A Lease's three seconds: a quarter second early.
        assert_eq!(early(3000 * ms), 2750 * ms);
        // Raft's hundred milliseconds: half of it.
        assert_eq!(early(100 * ms), 50 * ms);
        assert_eq!(early(0), 0);
    }
}
