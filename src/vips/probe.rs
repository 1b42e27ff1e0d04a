//! Asking the segment whether another host still holds an address before
//! this node adds it (see `plan::to_probe` for why).
//!
//! One round: an ARP Probe (IPv4) or a DAD Neighbour Solicitation (IPv6)
//! sent three times, 3 ms apart; the round ends [`WINDOW`] after its first
//! frame. Answers are heard by the conflict watcher (`conflict`), which
//! reports any frame for a watched address from another MAC; the owner
//! matches them with the round. A round nobody answered clears the address.
//! While another host answers, rounds repeat every [`RETRY`], and after
//! [`patience`] the address is taken anyway (it is this node's to hold; the
//! other host's copy should have expired by then), with a warning.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;
use vipd_arp::{build_probe, MacAddr, Sender};

use super::conflict::HeldSet;
use crate::netlink::Link;

/// How long a round waits for an answer after its first frame. A host on
/// the segment answers an ARP probe within a millisecond; this leaves room
/// for a loaded one.
pub const WINDOW: Duration = Duration::from_millis(10);
/// Between rounds while another host answers (at least: see
/// [`retry_delay`]).
pub const RETRY: Duration = Duration::from_millis(20);
/// At most this many rounds a second while other hosts answer, however many
/// addresses are being checked. A takeover of 5000 addresses asked every
/// `RETRY` meant 250 000 rounds a second: the owner fell behind on their
/// ends by seconds (an unbounded backlog), and with it behind on grants and
/// deadlines, while the dead node's guardian was long done.
pub const ROUNDS_PER_SECOND: u32 = 20_000;
const FRAMES: u32 = 3;
const FRAME_GAP: Duration = Duration::from_millis(3);

/// How long to wait for another host to stop answering before taking the
/// address anyway: its kernel lifetime (`lifetime`, the same on every vipd)
/// plus a second for the kernel's expiry work; 3 s for permanent ones.
pub fn patience(lifetime: Option<Duration>) -> Duration {
    lifetime.unwrap_or(Duration::from_secs(2)) + Duration::from_secs(1)
}

/// How long after an answered round the next one starts, when `probing`
/// addresses are being checked: `RETRY`, or longer so that all of them
/// together stay within [`ROUNDS_PER_SECOND`].
pub fn retry_delay(probing: usize) -> Duration {
    let spread = Duration::from_secs(1).saturating_mul(probing as u32) / ROUNDS_PER_SECOND;
    RETRY.max(spread)
}

/// One address being checked.
#[derive(Debug)]
pub struct Probe {
    /// When checking this address began.
    pub since: Instant,
    /// When the current round began.
    pub round: Instant,
    /// The last answer heard: when, from which MAC.
    pub answered: Option<(Instant, [u8; 6])>,
    pub task: JoinHandle<()>,
}

/// How long an address must have gone unanswered before it is added when
/// another host is known to have held it: it answered a probe, or the
/// claim takes it over from a node that had it (`until_silent`). A host
/// answering hundreds of probes at once (a takeover of a dead node's
/// addresses while its guardian removes them one by one, both cores busy)
/// can answer later than a round's window: one silent round proves little.
pub const QUIET: Duration = Duration::from_millis(100);

/// Whether silence clears an address: the round that ended went
/// unanswered and, when another host is known to have held the address
/// (`cautious`), nobody answered for `QUIET` (`quiet_for`: since the last
/// answer, or since checking began).
pub fn silent_enough(answered_this_round: bool, quiet_for: Duration, cautious: bool) -> bool {
    !answered_this_round && (!cautious || quiet_for >= QUIET)
}

impl Probe {
    /// Whether the current round was answered.
    pub fn answered_this_round(&self) -> bool {
        self.answered.is_some_and(|(at, _)| at >= self.round)
    }
}

/// Starts a round for `addr` on `link` after `delay`; `done` gets the
/// address when the round's window has passed.
///
/// The address is in `watched` (the conflict watchers' set) before the
/// round is started: an answer the watchers drop because the address was
/// not watched yet reads as silence, and the address would be added while
/// another host still holds it (a takeover starts hundreds of rounds in one
/// converge, which publishes its watched set only at its end).
pub fn round(
    link: &Link,
    sender: Option<Arc<Sender>>,
    addr: IpAddr,
    delay: Duration,
    watched: &HeldSet,
    done: mpsc::UnboundedSender<IpAddr>,
) -> JoinHandle<()> {
    watched.write().expect("not poisoned").insert(addr);
    let (ifname, mac) = (link.name.clone(), link.mac);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let started = tokio::time::Instant::now();
        match (mac, sender) {
            (Some(m), Some(sender)) => {
                let frame = build_probe(addr, MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5]));
                for i in 0..FRAMES {
                    if let Err(e) = sender.send(&frame) {
                        debug!(%addr, interface = %ifname, error = %e, "probe not sent");
                    }
                    if i + 1 < FRAMES {
                        tokio::time::sleep(FRAME_GAP).await;
                    }
                }
            }
            // Nothing can be asked: the round ends unanswered.
            (_, None) => debug!(%addr, interface = %ifname, "no raw socket to probe with"),
            (None, _) => {}
        }
        tokio::time::sleep_until(started + WINDOW).await;
        let _ = done.send(addr);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_silent_round_clears_a_fresh_address_but_a_held_one_needs_quiet() {
        let round = WINDOW;
        assert!(silent_enough(false, round, false));
        assert!(!silent_enough(true, round, false));
        // Known to have been held elsewhere: one silent round is not enough.
        assert!(!silent_enough(false, round, true));
        assert!(!silent_enough(
            false,
            QUIET - Duration::from_millis(1),
            true
        ));
        assert!(silent_enough(false, QUIET, true));
        assert!(!silent_enough(true, QUIET * 10, true));
    }

    #[test]
    fn answered_rounds_repeat_at_a_pace_the_owner_keeps_up_with() {
        // A few addresses: every RETRY.
        assert_eq!(retry_delay(1), RETRY);
        assert_eq!(retry_delay(400), RETRY);
        // A thousand: 50 ms; five thousand: 250 ms, so at most
        // ROUNDS_PER_SECOND rounds a second in all.
        assert_eq!(retry_delay(1000), Duration::from_millis(50));
        assert_eq!(retry_delay(5000), Duration::from_millis(250));
        for n in [1usize, 100, 1000, 5000, 20_000] {
            let per_second = n as f64 / retry_delay(n).as_secs_f64();
            assert!(
                per_second <= ROUNDS_PER_SECOND as f64 + 0.5,
                "{n}: {per_second}"
            );
        }
    }

    #[tokio::test]
    async fn a_round_watches_its_address_before_it_asks() {
        let link = Link {
            index: 1,
            name: "lo".into(),
            mac: None,
            up: true,
        };
        let watched = HeldSet::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let addr: IpAddr = "192.0.2.10".parse().unwrap();
        let task = round(&link, None, addr, Duration::from_secs(60), &watched, tx);
        // Watched already, though the round has not begun.
        assert!(watched.read().unwrap().contains(&addr));
        task.abort();
        assert!(rx.try_recv().is_err());
    }
}
