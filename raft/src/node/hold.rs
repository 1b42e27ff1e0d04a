//! When the leader may hold the VIP (told to the user as the quorum keeps
//! acknowledging), and handing leadership over at a graceful stop.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Loop, RaftError};
use crate::events::LeaderEvent;
use crate::transport::Inbound;

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
        match self.claimed_until {
            // First claim after a handover the old leader asked for.
            None if self
                .handover_asked
                .take()
                .is_some_and(|t| t.elapsed() < self.election_timeout * 2) =>
            {
                self.tell(LeaderEvent::Started {
                    hold_until: hold,
                    after_handover: true,
                })
                .await;
                self.claimed_until = Some(hold);
            }
            // First claim, or the previous hold lapsed (a quorum was silent
            // for a while and is back): claim again.
            None => {
                self.tell(LeaderEvent::Started {
                    hold_until: hold,
                    after_handover: false,
                })
                .await;
                self.claimed_until = Some(hold);
            }
            Some(c) if c <= now => {
                self.tell(LeaderEvent::Started {
                    hold_until: hold,
                    after_handover: false,
                })
                .await;
                self.claimed_until = Some(hold);
            }
            Some(c) if hold > c => {
                self.tell(LeaderEvent::Renewed { hold_until: hold }).await;
                self.claimed_until = Some(hold);
            }
            Some(_) => {}
        }
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
