//! How long a Raft leader may hold the VIP.
//!
//! A follower resets its election timer when it receives a heartbeat, and
//! with check-quorum it refuses to vote for anyone until a full election
//! timeout has passed since then. The leader stamps every heartbeat with its
//! send time; the follower echoes the stamp. If a quorum (the leader counts
//! itself) acknowledged heartbeats sent at or after `t`, every possible
//! quorum for a new leader contains one of them, and none of them votes
//! before `t + election timeout`. So the leader may hold the VIP until then,
//! minus a margin; when acknowledgements stop, the hold lapses by itself.
//!
//! That bounds a holder that is alive. A holder whose vipd and guardian die
//! together leaves its address to the kernel, which forgets it only after
//! its lifetime (whole seconds, longer than an election): the new leader
//! therefore adds the VIP only once no other host answers for it on the
//! wire (vipd's `vips::probe`), so two nodes never hold it at once in that
//! case either.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LeaseTracker {
    /// Per follower: the send time of the newest heartbeat it acknowledged.
    acked: HashMap<u64, Instant>,
    quorum: usize,
    /// Election timeout minus the safety margin.
    window: Duration,
}

impl LeaseTracker {
    pub fn new(quorum: usize, election_timeout: Duration, margin: Duration) -> LeaseTracker {
        LeaseTracker {
            acked: HashMap::new(),
            quorum,
            window: election_timeout.saturating_sub(margin),
        }
    }

    /// Forgets all acknowledgements (a new term of leadership starts).
    pub fn reset(&mut self) {
        self.acked.clear();
    }

    /// Follower `id` acknowledged the heartbeat sent at `sent`.
    pub fn ack(&mut self, id: u64, sent: Instant) {
        let e = self.acked.entry(id).or_insert(sent);
        if sent > *e {
            *e = sent;
        }
    }

    /// Until when the leader may hold the VIP, or None without a quorum of
    /// acknowledgements yet. `now` stands for the leader's own "ack".
    pub fn hold_until(&self, now: Instant) -> Option<Instant> {
        let mut times: Vec<Instant> = self.acked.values().copied().collect();
        times.push(now);
        if times.len() < self.quorum {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times[self.quorum - 1] + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ET: Duration = Duration::from_millis(400);
    const MARGIN: Duration = Duration::from_millis(100);

    #[test]
    fn needs_a_quorum_counting_itself() {
        let t0 = Instant::now();
        let mut l = LeaseTracker::new(2, ET, MARGIN);
        assert_eq!(l.hold_until(t0), None);
        l.ack(2, t0);
        assert_eq!(
            l.hold_until(t0 + Duration::from_millis(50)),
            Some(t0 + Duration::from_millis(300))
        );
        // A single node is its own quorum.
        assert_eq!(
            LeaseTracker::new(1, ET, MARGIN).hold_until(t0),
            Some(t0 + Duration::from_millis(300))
        );
    }

    #[test]
    fn the_quorum_th_newest_acknowledgement_counts() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = LeaseTracker::new(3, ET, MARGIN); // 5 nodes
        l.ack(2, t0 + ms(100));
        l.ack(3, t0 + ms(50));
        l.ack(4, t0 + ms(10));
        l.ack(5, t0);
        // Newest first: now, 100, 50, 10, 0 -> the third is 50.
        assert_eq!(l.hold_until(t0 + ms(120)), Some(t0 + ms(50) + ms(300)));
        // An older stamp never moves an acknowledgement back.
        l.ack(2, t0);
        assert_eq!(l.hold_until(t0 + ms(120)), Some(t0 + ms(350)));
    }

    #[test]
    fn lapses_when_acknowledgements_stop() {
        let t0 = Instant::now();
        let mut l = LeaseTracker::new(2, ET, MARGIN);
        l.ack(2, t0);
        let hold = l.hold_until(t0 + Duration::from_secs(5)).unwrap();
        assert!(
            hold < t0 + Duration::from_secs(5),
            "the hold does not follow the leader's own clock"
        );
        l.reset();
        assert_eq!(l.hold_until(t0), None);
    }
}
