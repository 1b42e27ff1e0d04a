//! Shutdown: SIGTERM or SIGINT flips one watch channel every task listens to.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::info;

/// Returns a receiver that turns `true` on the first SIGTERM or SIGINT.
pub fn on_signal() -> std::io::Result<watch::Receiver<bool>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = name,
            "shutting down: releasing addresses and leases"
        );
        let _ = tx.send(true);
    });
    Ok(rx)
}
