use super::*;
use crate::services::eligibility::{placed_on, Eligible};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use std::net::IpAddr;

const D: Duration = Duration::from_secs(4);

fn lease(node: &str, holder: &str, rv: &str) -> Arc<Lease> {
    let mut l = Lease::default();
    l.metadata.name = Some(lease_name(node));
    l.metadata.resource_version = Some(rv.into());
    l.spec = Some(LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(4),
        ..Default::default()
    });
    Arc::new(l)
}

fn no_links() -> BTreeMap<String, LinkState> {
    BTreeMap::new()
}

fn link(up: bool, since: Instant, was_up: bool) -> LinkState {
    LinkState {
        up,
        since,
        was_up,
        why: if up {
            String::new()
        } else {
            "closed by the peer".into()
        },
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_node_that_stops_renewing_is_dead_one_lease_duration_after_its_last_renewal_was_seen() {
    let t0 = Instant::now();
    let mut l = Liveness::default();
    l.update(
        &[
            lease("n1", "n1", "1"),
            lease("n2", "n2", "1"),
            lease("n3", "n3", "1"),
        ],
        t0,
    );
    assert_eq!(
        l.live("n1", true, t0, D, &no_links()).nodes,
        set(&["n1", "n2", "n3"])
    );
    // n1 and n2 renew; n3 does not.
    let t1 = t0 + Duration::from_secs(3);
    l.update(
        &[
            lease("n1", "n1", "2"),
            lease("n2", "n2", "2"),
            lease("n3", "n3", "1"),
        ],
        t1,
    );
    assert_eq!(
        l.live("n1", true, t1, D, &no_links()).nodes,
        set(&["n1", "n2", "n3"])
    );
    let t2 = t0 + D;
    let live = l.live("n1", true, t2, D, &no_links());
    assert_eq!(live.nodes, set(&["n1", "n2"]));
    // Dead by its Lease, which the Services leader's heir reads.
    assert_eq!(live.expired, set(&["n3"]));
}

/// Renewals need no pass: the live set changes only when a Lease lapses,
/// and `next_change` says when that could be, counted from the last
/// renewal seen; a renewal seen moves it on.
#[test]
fn the_live_set_changes_only_when_a_lease_lapses_and_next_change_says_when() {
    let t0 = Instant::now();
    let mut l = Liveness::default();
    l.update(&[lease("n1", "n1", "1"), lease("n2", "n2", "1")], t0);
    let live0 = l.live("n1", true, t0, D, &no_links());
    assert_eq!(l.next_change("n1", t0, D), Some(t0 + D));
    // n2 renews at 1 s: nothing changes, and the next change moves on to
    // n1's own staleness (it renewed at t0 and was seen then).
    let t1 = t0 + Duration::from_secs(1);
    l.update(&[lease("n1", "n1", "1"), lease("n2", "n2", "2")], t1);
    assert_eq!(l.live("n1", true, t1, D, &no_links()), live0);
    assert_eq!(l.next_change("n1", t1, D), Some(t0 + D));
    // n1 renews at 2 s: n2's expiry (5 s) is next.
    let t2 = t0 + Duration::from_secs(2);
    l.update(&[lease("n1", "n1", "2"), lease("n2", "n2", "2")], t2);
    assert_eq!(l.next_change("n1", t2, D), Some(t1 + D));
    // Just before it the set is the same; at it, n2 is gone.
    let before = t1 + D - Duration::from_millis(1);
    assert_eq!(l.live("n1", true, before, D, &no_links()), live0);
    assert_eq!(
        l.live("n1", true, t1 + D, D, &no_links()).nodes,
        set(&["n1"])
    );
}

#[test]
fn a_released_liveness_lease_is_dead_at_once() {
    let t0 = Instant::now();
    let mut l = Liveness::default();
    l.update(&[lease("n1", "n1", "1"), lease("n2", "n2", "1")], t0);
    l.update(
        &[lease("n1", "n1", "1"), lease("n2", "", "2")],
        t0 + Duration::from_millis(100),
    );
    let live = l.live("n1", true, t0 + Duration::from_millis(100), D, &no_links());
    assert_eq!(live.nodes, set(&["n1"]));
    assert_eq!(live.expired, set(&["n2"]));
}

#[test]
fn nobody_is_declared_dead_while_this_node_does_not_see_its_own_renewals() {
    let t0 = Instant::now();
    let mut l = Liveness::default();
    l.update(&[lease("n1", "n1", "1"), lease("n2", "n2", "1")], t0);
    assert_eq!(
        l.live("n1", true, t0, D, &no_links()).nodes,
        set(&["n1", "n2"])
    );
    // The watch stalls: nothing changes for 10 s, n1's own renewals
    // included. n2 is not declared dead, n1 still counts while it holds
    // its own Lease (holding on API loss).
    let later = t0 + Duration::from_secs(10);
    assert_eq!(
        l.live("n1", true, later, D, &no_links()).nodes,
        set(&["n1", "n2"])
    );
    // Not alive itself: it places nothing on itself.
    assert_eq!(
        l.live("n1", false, later, D, &no_links()).nodes,
        set(&["n2"])
    );
    assert!(l.live("n1", true, later, D, &no_links()).expired.is_empty());
    // Its renewals come back: the view is fresh again, n2 is judged.
    l.update(&[lease("n1", "n1", "9"), lease("n2", "n2", "1")], later);
    let live = l.live("n1", true, later, D, &no_links());
    assert_eq!(live.nodes, set(&["n1"]));
    assert_eq!(live.expired, set(&["n2"]));
}

#[test]
fn placement_is_the_same_everywhere_moves_only_a_dead_nodes_addresses_and_spreads_them() {
    let all = set(&["n1", "n2", "n3"]);
    let addrs: Vec<IpAddr> = (1..=300)
        .map(|i| format!("2001:db8:100::{i:x}").parse().unwrap())
        .collect();
    let before: Vec<&str> = addrs
        .iter()
        .map(|a| placed_on(*a, &Eligible::Any, &all).unwrap())
        .collect();
    // Spread: each node gets a fair share.
    for n in ["n1", "n2", "n3"] {
        let c = before.iter().filter(|p| **p == n).count();
        assert!((60..=140).contains(&c), "{n} got {c} of 300");
    }
    // n2 dies: only its addresses move, to both survivors.
    let survivors = set(&["n1", "n3"]);
    let mut moved_to = BTreeSet::new();
    for (a, b) in addrs.iter().zip(&before) {
        let after = placed_on(*a, &Eligible::Any, &survivors).unwrap();
        if *b != "n2" {
            assert_eq!(after, *b, "{a} moved though its node lives");
        } else {
            moved_to.insert(after);
        }
    }
    assert_eq!(moved_to, BTreeSet::from(["n1", "n3"]));
    // Eligibility narrows the candidates; no live eligible node: nobody.
    let only = Eligible::Only(set(&["n3"]));
    assert_eq!(placed_on(addrs[0], &only, &all), Some("n3"));
    assert_eq!(
        placed_on(addrs[0], &Eligible::Only(set(&["n9"])), &all),
        None
    );
}

#[test]
fn nothing_is_placed_here_before_this_nodes_own_lease_is_seen() {
    let t0 = Instant::now();
    let mut l = Liveness::default();
    // n1 just took its liveness Lease; its watch shows only the others.
    l.update(&[lease("n2", "n2", "1"), lease("n3", "n3", "1")], t0);
    assert!(l.live("n1", true, t0, D, &no_links()).nodes.is_empty());
    l.update(
        &[
            lease("n1", "n1", "1"),
            lease("n2", "n2", "1"),
            lease("n3", "n3", "1"),
        ],
        t0,
    );
    assert_eq!(
        l.live("n1", true, t0, D, &no_links()).nodes,
        set(&["n1", "n2", "n3"])
    );
}

#[test]
fn a_peer_whose_link_closed_after_its_last_renewal_is_dead_before_its_lease_expires() {
    let t0 = Instant::now();
    let mut l = Liveness::default();
    let three = [
        lease("n1", "n1", "1"),
        lease("n2", "n2", "1"),
        lease("n3", "n3", "1"),
    ];
    l.update(&three, t0);
    // n3's vipd dies 100 ms after its renewal was seen: its stream closes.
    let down = t0 + Duration::from_millis(100);
    let links = BTreeMap::from([
        ("n2".to_string(), link(true, t0, true)),
        ("n3".to_string(), link(false, down, true)),
    ]);
    let now = down + Duration::from_millis(10);
    let live = l.live("n1", true, now, D, &links);
    assert_eq!(live.nodes, set(&["n1", "n2"]));
    assert_eq!(live.suspect, set(&["n3"]));
    // Without links the Lease alone keeps n3 alive for its duration.
    assert_eq!(
        l.live("n1", true, now, D, &no_links()).nodes,
        set(&["n1", "n2", "n3"])
    );
}

#[test]
fn a_link_alone_never_declares_a_death_the_lease_contradicts_or_this_node_cannot_judge() {
    let t0 = Instant::now();
    let mut l = Liveness::default();
    l.update(
        &[
            lease("n1", "n1", "1"),
            lease("n2", "n2", "1"),
            lease("n3", "n3", "1"),
        ],
        t0,
    );
    let down = t0 + Duration::from_millis(100);
    let now = down + Duration::from_millis(10);
    let all = set(&["n1", "n2", "n3"]);
    // Never up (its status port unreachable from here): the Lease decides.
    let never = BTreeMap::from([
        ("n2".to_string(), link(true, t0, true)),
        ("n3".to_string(), link(false, down, false)),
    ]);
    assert_eq!(l.live("n1", true, now, D, &never).nodes, all);
    // Every link down: it is this node that is cut off, not the others.
    let alone = BTreeMap::from([
        ("n2".to_string(), link(false, down, true)),
        ("n3".to_string(), link(false, down, true)),
    ]);
    let live = l.live("n1", true, now, D, &alone);
    assert_eq!(live.nodes, all);
    assert!(live.suspect.is_empty());
    // n3's link broke, but its Lease was renewed after that: it lives.
    let broken = BTreeMap::from([
        ("n2".to_string(), link(true, t0, true)),
        ("n3".to_string(), link(false, down, true)),
    ]);
    let renewed = down + Duration::from_millis(500);
    l.update(
        &[
            lease("n1", "n1", "2"),
            lease("n2", "n2", "2"),
            lease("n3", "n3", "2"),
        ],
        renewed,
    );
    let live = l.live("n1", true, renewed, D, &broken);
    assert_eq!(live.nodes, all);
    assert!(live.suspect.is_empty());
    // This node is never its own suspect.
    let me_down = BTreeMap::from([
        ("n1".to_string(), link(false, down, true)),
        ("n2".to_string(), link(true, t0, true)),
    ]);
    assert!(l.live("n1", true, renewed, D, &me_down).suspect.is_empty());
}
