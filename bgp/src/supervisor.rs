//! vipd's own gobgpd: started with its gRPC API on a Unix socket in a
//! private directory (see [`crate::endpoint`]) and no
//! configuration file (the speaker configures it), restarted if it dies,
//! stopped gracefully (SIGTERM: it closes sessions with a NOTIFICATION, so
//! peers withdraw at once) when vipd stops.
//!
//! gobgpd never outlives vipd: the kernel sends it SIGTERM when vipd dies,
//! however it dies (a crash, SIGKILL), so a dead vipd's routes are
//! withdrawn at once, like the guardian removes its addresses. A gobgpd
//! left by an older vipd on this node (same network namespace, same API
//! address) is stopped before vipd starts its own, so vipd never configures
//! a stranger's speaker.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::endpoint::ApiAddr;

/// Waits until `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The flag gobgpd gets its API address with; leftovers are found by it.
const API_FLAG: &str = "--api-hosts";

/// Whether a process's arguments are those of a gobgpd vipd started for
/// the API address `api`.
pub fn is_vipd_gobgpd(args: &[String], api: &str) -> bool {
    let Some(program) = args.first() else {
        return false;
    };
    let named = std::path::Path::new(program)
        .file_name()
        .is_some_and(|n| n == "gobgpd");
    named && args.windows(2).any(|w| w[0] == API_FLAG && w[1] == api)
}

/// Stops every gobgpd in this network namespace that serves `api`: it can
/// only be left by an earlier vipd of this node (one vipd per node).
async fn stop_leftovers(api: &str) {
    let Ok(own_net) = std::fs::read_link("/proc/self/ns/net") else {
        return;
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let base = entry.path();
        if std::fs::read_link(base.join("ns/net")).ok().as_ref() != Some(&own_net) {
            continue;
        }
        let Ok(raw) = std::fs::read(base.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !is_vipd_gobgpd(&args, api) {
            continue;
        }
        warn!(pid, %api, "stopping a gobgpd left by an earlier vipd on this node");
        // SAFETY: signalling a process; at worst it is already gone.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        // Gone, or a zombie (its parent has yet to reap it): no arguments.
        let gone = || std::fs::read(base.join("cmdline")).map_or(true, |c| c.is_empty());
        for _ in 0..60 {
            if gone() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !gone() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs gobgpd until `stop` turns true.
pub async fn run(binary: PathBuf, api: ApiAddr, mut stop: watch::Receiver<bool>) {
    let mut restarts = 0u32;
    stop_leftovers(&api.to_string()).await;
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(e) = api.prepare() {
            warn!(%api, error = %e, "cannot prepare gobgpd's API socket");
        }
        let mut cmd = Command::new(&binary);
        cmd.arg(API_FLAG).arg(api.to_string()).args([
            "--log-level",
            "warn",
            "--log-plain",
            "--pprof-disable",
            // No metrics listener either (v4 opens localhost:6060 for them).
            "--metrics-path=",
        ]);
        cmd.kill_on_drop(true);
        // SIGTERM to gobgpd when the thread that started it ends: tokio's
        // worker threads live as long as vipd's runtime, so that is when
        // vipd ends. If vipd is already gone, gobgpd does not start.
        // SAFETY: async-signal-safe calls only, between fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("vipd is gone"));
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(binary = %binary.display(), error = %e, "cannot start gobgpd (install Debian's gobgpd, or set bgp_gobgpd_path)");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
        };
        info!(pid = ?child.id(), %api, "gobgpd started");
        tokio::select! {
            status = child.wait() => {
                restarts += 1;
                warn!(?status, restarts, "gobgpd exited; restarting it");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ = stopped(&mut stop) => {
                if let Some(pid) = child.id() {
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn leftovers_are_vipds_gobgpd_for_the_same_api_only() {
        let api = "127.0.0.1:50051";
        assert!(is_vipd_gobgpd(
            &args("/usr/bin/gobgpd --api-hosts 127.0.0.1:50051 --log-level warn"),
            api
        ));
        assert!(is_vipd_gobgpd(
            &args("gobgpd --api-hosts 127.0.0.1:50051"),
            api
        ));
        // Another API address, another program, the address elsewhere.
        assert!(!is_vipd_gobgpd(
            &args("/usr/bin/gobgpd --api-hosts 127.0.0.1:50052"),
            api
        ));
        assert!(!is_vipd_gobgpd(
            &args("/usr/bin/gobgp --api-hosts 127.0.0.1:50051"),
            api
        ));
        assert!(!is_vipd_gobgpd(
            &args("/usr/bin/gobgpd -f 127.0.0.1:50051"),
            api
        ));
        assert!(!is_vipd_gobgpd(&[], api));
    }
}
