//! When the leader may hold the VIP (told to the user as the quorum keeps
//! acknowledging), and handing leadership over at a graceful stop.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Loop, RaftError};
use crate::events::LeaderEvent;
use crate::transport::Inbound;

/// What a leader whose quorum now allows it to hold until `hold` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldNews {
    /// A claim: the first of this term, or again after the hold lapsed.
    Started {
        unopposed: bool,
    },
    /// The hold reaches further than told.
    Renewed,
    Nothing,
}

/// `claimed_until`: the hold last told in this term (None: none yet);
/// `asked_handover`: the previous leader asked this node to take over.
/// A hold that lapsed and comes back within the term is unopposed: a
/// leader of a later term needs a vote from every quorum, so from one of
/// the nodes whose acknowledgements of this term make `hold`, and a node
/// that voted in a later term no longer acknowledges this one (a node
/// that votes later does so only after `hold`, by check-quorum).
fn news(
    claimed_until: Option<Instant>,
    hold: Instant,
    now: Instant,
    asked_handover: bool,
) -> HoldNews {
    match claimed_until {
        None => HoldNews::Started {
            unopposed: asked_handover,
        },
        Some(c) if c <= now => HoldNews::Started { unopposed: true },
        Some(c) if hold > c => HoldNews::Renewed,
        Some(_) => HoldNews::Nothing,
    }
}

impl Loop {
    /// Claims or extends the VIP while a quorum keeps acknowledging.
    pub(super) async fn update_hold(&mut self) {
        if !self.leading {
            return;
        }
        let now = Instant::now();
        let Some(hold) = self.lease.hold_until(now).filter(|h| *h > now) else {
            return;
        };
        let asked_handover = self.claimed_until.is_none()
            && self
                .handover_asked
                .take()
                .is_some_and(|t| t.elapsed() < self.election_timeout * 2);
        match news(self.claimed_until, hold, now, asked_handover) {
            HoldNews::Started { unopposed } => {
                self.tell(LeaderEvent::Started {
                    hold_until: hold,
                    unopposed,
                })
                .await;
            }
            HoldNews::Renewed => {
                self.tell(LeaderEvent::Renewed { hold_until: hold }).await;
            }
            HoldNews::Nothing => return,
        }
        self.claimed_until = Some(hold);
    }

    /// Graceful stop: withdraw, then let the best follower take over now.
    /// The loop keeps running (the transferee may need log entries first,
    /// and its vote request needs our answer) until another node is known
    /// to lead, or for one election timeout at most.
    pub(super) async fn hand_over(
        &mut self,
        ticker: &mut tokio::time::Interval,
        inbound: &mut mpsc::Receiver<Inbound>,
        limit: Duration,
    ) -> Result<(), RaftError> {
        if !self.leading {
            return Ok(());
        }
        self.tell(LeaderEvent::Stopped).await;
        self.leading = false;
        self.claimed_until = None;
        self.handing_over = true;
        let Some(target) = self.transferee() else {
            return Ok(());
        };
        let peers = self.peers.clone();
        let name = |id| peers.by_id(id).map(|p| p.name.clone());
        info!(to = ?name(target), "handing Raft leadership over");
        self.node.transfer_leader(target);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.handle_ready().await?;
            let leader = self.node.raft.leader_id;
            if leader != 0 && leader != self.node.raft.id {
                info!(to = ?name(leader), took = ?started.elapsed(), "Raft leadership handed over");
                break;
            }
            if !self
                .next_input(ticker, inbound, tokio::time::sleep_until(deadline))
                .await
            {
                warn!(after = ?limit, "no new Raft leader yet; the peers will elect one");
                break;
            }
        }
        // Let the transport write the last messages before the process ends.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }

    /// The follower to hand leadership to: one heard from lately, with the
    /// longest log, and of those the highest priority (the first in the
    /// peer list), whose vote request no equally up-to-date peer refuses.
    fn transferee(&self) -> Option<u64> {
        let me = self.node.raft.id;
        self.node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .max_by_key(|(id, p)| (p.recent_active, p.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_claim_of_a_term_waits_for_the_wire_unless_handed_over() {
        let t0 = Instant::now();
        assert_eq!(
            news(None, t0 + ms(80), t0, false),
            HoldNews::Started { unopposed: false }
        );
        assert_eq!(
            news(None, t0 + ms(80), t0, true),
            HoldNews::Started { unopposed: true }
        );
    }

    /// A leader starved for longer than its window (load) lost its hold
    /// and withdrew the VIP; once its quorum answers again within the same
    /// term nobody else can have held it, so it comes back at once rather
    /// than after a probe of the wire.
    #[test]
    fn a_hold_that_lapsed_within_the_term_comes_back_unopposed() {
        let t0 = Instant::now();
        assert_eq!(
            news(Some(t0), t0 + ms(80), t0 + ms(5), false),
            HoldNews::Started { unopposed: true }
        );
        assert_eq!(
            news(Some(t0), t0 + ms(80), t0, false),
            HoldNews::Started { unopposed: true }
        );
    }

    #[test]
    fn a_hold_still_running_is_renewed_only_when_it_reaches_further() {
        let t0 = Instant::now();
        assert_eq!(
            news(Some(t0 + ms(50)), t0 + ms(80), t0, false),
            HoldNews::Renewed
        );
        assert_eq!(
            news(Some(t0 + ms(80)), t0 + ms(80), t0, false),
            HoldNews::Nothing
        );
    }
}
