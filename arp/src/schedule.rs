//! When to announce: at once, a quick burst, then a steady refresh.
//!
//! One frame can be lost, and a switch or neighbour may still be learning when
//! the first arrives, so the takeover is announced several times in the first
//! second and a half; after that a refresh every `refresh` keeps caches right
//! (kube-vip's `vip_arpRate`).

use std::time::Duration;

/// Gaps before the 2nd, 3rd, ... frame of the burst; the 1st goes at once.
const BURST_GAPS_MS: [u64; 4] = [100, 200, 400, 800];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Period once the burst is over.
    pub refresh: Duration,
}

impl Schedule {
    pub fn new(refresh: Duration) -> Self {
        Schedule { refresh }
    }

    /// How long to wait after the `sent`-th frame (1-based) before the next.
    pub fn gap_after(&self, sent: u32) -> Duration {
        match BURST_GAPS_MS.get(sent.saturating_sub(1) as usize) {
            Some(ms) if sent > 0 => Duration::from_millis(*ms).min(self.refresh),
            _ => self.refresh,
        }
    }

    /// Frames in the burst, the first one included.
    pub fn burst_len(&self) -> u32 {
        BURST_GAPS_MS.len() as u32 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refresh() {
        let s = Schedule::new(Duration::from_secs(3));
        let gaps: Vec<u64> = (1..=7).map(|n| s.gap_after(n).as_millis() as u64).collect();
        assert_eq!(gaps, vec![100, 200, 400, 800, 3000, 3000, 3000]);
        assert_eq!(s.burst_len(), 5);
    }

    #[test]
    fn burst_never_slower_than_refresh() {
        let s = Schedule::new(Duration::from_millis(150));
        assert_eq!(s.gap_after(1), Duration::from_millis(100));
        assert_eq!(s.gap_after(2), Duration::from_millis(150));
        assert_eq!(s.gap_after(0), Duration::from_millis(150));
    }
}
