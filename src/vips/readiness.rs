//! Whether this node really has every address it claims, with every gap on
//! record: what `/readyz` answers and `/status` shows.

use std::time::SystemTime;

/// Whether this node really has every address it claims, and every time it
/// did not (a gap closed in a millisecond is still on record).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not.
    pub missing: Vec<String>,
    pub since: SystemTime,
    pub not_ready_total: u64,
    pub last_not_ready: Option<NotReady>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NotReady {
    pub at: SystemTime,
    pub reason: String,
    /// How long it lasted; None while it lasts.
    pub lasted_ms: Option<f64>,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness::new()
    }
}

impl Readiness {
    pub(super) fn new() -> Readiness {
        Readiness {
            ready: true,
            missing: Vec::new(),
            since: SystemTime::now(),
            not_ready_total: 0,
            last_not_ready: None,
        }
    }

    pub(super) fn record(&mut self, missing: Vec<String>) {
        let ready = missing.is_empty();
        let now = SystemTime::now();
        if ready != self.ready {
            if ready {
                if let Some(n) = self.last_not_ready.as_mut() {
                    n.lasted_ms = now
                        .duration_since(n.at)
                        .ok()
                        .map(|d| d.as_secs_f64() * 1000.0);
                }
            } else {
                self.not_ready_total += 1;
                self.last_not_ready = Some(NotReady {
                    at: now,
                    reason: missing.join("; "),
                    lasted_ms: None,
                });
            }
            self.ready = ready;
            self.since = now;
        }
        self.missing = missing;
    }
}
