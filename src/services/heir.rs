//! Standing in for a dead Services leader (leader mode: addresses that do
//! not need a node of their own are all the Services leader's).
//!
//! The leader holds those addresses under its Lease, which nobody may take
//! before it expires (`vip_leaseduration`, 4 s): taking it early on a hint
//! would let two leaders write allocations. With placement a dead leader is
//! known sooner, by its link (`/v1/alive` closed or silent, no renewal of
//! its liveness Lease seen since) or by its liveness Lease. Then one live
//! node, the *heir* (the same on every node that sees the same live nodes),
//! holds the leader's addresses under its own liveness, as it holds placed
//! addresses, but added only once nobody answers for them and never
//! "taken anyway": the leader's claims are fenced by its Services Lease,
//! not by its liveness, so only silence proves it let them go (its
//! guardian removes them at its death). The Lease is still
//! taken only once free; the others wait [`HEAD_START`] longer before they
//! try, so the heir, which already holds the addresses, becomes the leader
//! and they do not move twice.

use std::collections::BTreeSet;
use std::time::Duration;

use super::eligibility::stable_hash;
use super::placement::Live;

/// How much later than the heir the other nodes try to take a dead
/// leader's Lease once it is free.
pub const HEAD_START: Duration = Duration::from_secs(1);

/// This node's part while the Services leader may be dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StandIn {
    /// The leader is alive, unknown, or this node: nothing to stand in for.
    #[default]
    Nobody,
    /// This node is the heir: it holds the leader's addresses, added only
    /// once nobody answers for them (known dead `by_link`, or by its
    /// liveness Lease).
    Heir { by_link: bool },
    /// Another live node is the heir: this node lets it take the Lease.
    Other,
}

impl StandIn {
    /// How long after the Lease is free this node waits to take it.
    pub fn acquire_delay(self) -> Duration {
        match self {
            StandIn::Other => HEAD_START,
            _ => Duration::ZERO,
        }
    }
}

/// The heir among `live`: the first by rendezvous hash.
pub fn heir(live: &BTreeSet<String>) -> Option<&str> {
    live.iter()
        .max_by_key(|n| {
            (
                stable_hash(&[b"services-leader", n.as_bytes()]),
                std::cmp::Reverse(*n),
            )
        })
        .map(String::as_str)
}

/// This node's part, `me`, when `leader` last held the Services Lease as far
/// as this node saw (it is not this node's to stand in for a leader that
/// never had a liveness Lease: such a node is in no set of `live`).
pub fn stand_in(me: &str, leader: Option<&str>, live: &Live) -> StandIn {
    let Some(leader) = leader.filter(|l| *l != me) else {
        return StandIn::Nobody;
    };
    let by_link = live.suspect.contains(leader);
    if live.nodes.contains(leader) || !(by_link || live.expired.contains(leader)) {
        return StandIn::Nobody;
    }
    match heir(&live.nodes) {
        Some(h) if h == me => StandIn::Heir { by_link },
        Some(_) => StandIn::Other,
        None => StandIn::Nobody,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn live(nodes: &[&str], suspect: &[&str], expired: &[&str]) -> Live {
        Live {
            nodes: set(nodes),
            suspect: set(suspect),
            expired: set(expired),
        }
    }

    #[test]
    fn every_node_names_the_same_heir_and_only_it_stands_in() {
        let view = live(&["n1", "n2"], &["n3"], &[]);
        let h = heir(&view.nodes).unwrap().to_string();
        let other = if h == "n1" { "n2" } else { "n1" };
        assert_eq!(
            stand_in(&h, Some("n3"), &view),
            StandIn::Heir { by_link: true }
        );
        assert_eq!(stand_in(other, Some("n3"), &view), StandIn::Other);
        assert_eq!(StandIn::Other.acquire_delay(), HEAD_START);
        assert_eq!(
            StandIn::Heir { by_link: true }.acquire_delay(),
            Duration::ZERO
        );
        // The heir does not depend on the order nodes are listed in, nor
        // on who died: it is the first of the live nodes.
        assert_eq!(heir(&set(&["n2", "n1"])), heir(&view.nodes));
    }

    #[test]
    fn a_leader_dead_by_its_liveness_lease_is_stood_in_for_too() {
        let view = live(&["n1", "n2"], &[], &["n3"]);
        let h = heir(&view.nodes).unwrap();
        assert_eq!(
            stand_in(h, Some("n3"), &view),
            StandIn::Heir { by_link: false }
        );
    }

    #[test]
    fn nobody_stands_in_for_a_live_unknown_or_own_lead() {
        // Alive.
        let view = live(&["n1", "n2", "n3"], &[], &[]);
        for me in ["n1", "n2"] {
            assert_eq!(stand_in(me, Some("n3"), &view), StandIn::Nobody);
        }
        // A leader with no liveness Lease (placement off there, or an
        // older vipd): nothing says it died.
        let view = live(&["n1", "n2"], &[], &[]);
        for me in ["n1", "n2"] {
            assert_eq!(stand_in(me, Some("n3"), &view), StandIn::Nobody);
        }
        // No leader seen, or this node was it.
        let view = live(&["n1", "n2"], &["n3"], &[]);
        assert_eq!(stand_in("n1", None, &view), StandIn::Nobody);
        assert_eq!(stand_in("n3", Some("n3"), &view), StandIn::Nobody);
        // Nobody live to stand in.
        let view = live(&[], &["n3"], &[]);
        assert_eq!(stand_in("n1", Some("n3"), &view), StandIn::Nobody);
    }
}
