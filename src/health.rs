//! The local API server's health, for the control-plane VIP in BGP mode:
//! a node announces the VIP only while `GET <url>` answers 200 (by default
//! `https://127.0.0.1:6443/readyz`, which Kubernetes lets anyone read).
//!
//! The check is of this node's own API server over loopback, so its
//! certificate is not verified (the VIP's clients verify theirs). Two
//! failures in a row make the node unhealthy, two successes healthy again.

use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tracing::{info, warn};

/// One check: the HTTP status of `GET url`.
pub async fn check(url: &str, timeout: Duration) -> Result<u16> {
    Ok(crate::http_client::get(url, timeout).await?.0)
}

/// Checks `url` every second; publishes healthy/unhealthy on the returned
/// channel (unhealthy until the first two successes).
pub fn watch_health(url: String, mut stop: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let (mut ok_run, mut fail_run) = (0u32, 0u32);
        loop {
            let ok = matches!(check(&url, Duration::from_secs(1)).await, Ok(200));
            if ok {
                ok_run += 1;
                fail_run = 0;
            } else {
                fail_run += 1;
                ok_run = 0;
            }
            let healthy = *tx.borrow();
            if !healthy && ok_run >= 2 {
                info!(%url, "the local API server is healthy: announcing the control-plane VIP");
                tx.send_replace(true);
            } else if healthy && fail_run >= 2 {
                warn!(%url, "the local API server is unhealthy: withdrawing the control-plane VIP");
                tx.send_replace(false);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    rx
}
