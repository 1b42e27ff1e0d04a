//! vipd's own gobgpd: started with its gRPC API on localhost only and no
//! configuration file (the speaker configures it), restarted if it dies,
//! stopped gracefully (SIGTERM: it closes sessions with a NOTIFICATION, so
//! peers withdraw at once) when vipd stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

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

/// Runs gobgpd until `stop` turns true.
pub async fn run(binary: PathBuf, api: SocketAddr, mut stop: watch::Receiver<bool>) {
    let mut restarts = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut cmd = Command::new(&binary);
        cmd.arg("--api-hosts").arg(api.to_string()).args([
            "--log-level",
            "warn",
            "--log-plain",
            "--pprof-disable",
        ]);
        cmd.kill_on_drop(true);
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
