//! The pure part of the address owner: from what is claimed and what the
//! kernel has, what to add and what to remove.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Claim, Source};
use crate::netlink::KernelAddr;

/// The claims of one source, valid until `hold_until` (None: no limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSet {
    pub claims: Vec<Claim>,
    pub hold_until: Option<Instant>,
    /// False while the source holds on without being able to confirm its
    /// right (a Lease it cannot renew because the API server is out of
    /// reach): then another node announcing the address wins at once.
    pub confirmed: bool,
    /// Add an address only once no other host answers for it on the wire
    /// (see [`to_probe`]).
    pub probe_first: bool,
    /// Some when the right to hold comes from an election's grant (see
    /// `VipHandle::grant`): the term it was granted in. Addresses are then
    /// set under that term only, so a list decided in an earlier term is
    /// refused instead of outliving the lead it was decided under.
    pub term: Option<u64>,
    /// The addresses go the moment vipd dies (the guardian does not wait
    /// for `hold_until`): other nodes take them over at once.
    pub drop_on_death: bool,
}

impl ClaimSet {
    pub fn live(&self, now: Instant) -> bool {
        self.hold_until.is_none_or(|t| now < t)
    }
}

/// One wanted address: on which interface, with which prefix, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub interface: String,
    pub prefix: u8,
    /// How to announce it by BGP (the first claim decides).
    pub route: vipd_bgp::RouteAttrs,
    /// In source order, each once (one, nearly always: a list, not a set,
    /// whose smallest node would be 300 bytes per address and converge).
    pub sources: Vec<Source>,
}

/// Every address that should be on this node now, by address. When two
/// sources claim one address, the first claim (in source order) decides its
/// interface and prefix.
pub fn wanted(now: Instant, claims: &BTreeMap<Source, ClaimSet>) -> BTreeMap<IpAddr, Want> {
    let mut out: BTreeMap<IpAddr, Want> = BTreeMap::new();
    for (source, set) in claims {
        if !set.live(now) {
            continue;
        }
        for c in &set.claims {
            let sources = &mut out
                .entry(c.addr)
                .or_insert_with(|| Want {
                    interface: c.interface.clone(),
                    prefix: c.prefix,
                    route: c.route.clone(),
                    sources: Vec::new(),
                })
                .sources;
            // The claims come in source order: a repeat is the last one.
            if sources.last() != Some(source) {
                sources.push(source.clone());
            }
        }
    }
    out
}

impl Source {
    /// A Service's address (by any election, or BGP).
    pub fn is_service(&self) -> bool {
        !matches!(self, Source::ControlPlane)
    }

    /// Whether its addresses are checked on the wire before they are added,
    /// whatever its claim asks: a Service address announced by ARP/NDP.
    /// Their kernel lifetime is long (`svc_addr_lifetime`, see
    /// `refresh`), so a node whose vipd died together with its guardian
    /// keeps answering for them that long, and a new holder that added
    /// them at once would share them with it. (BGP addresses are on every
    /// eligible node by design.)
    pub fn always_probes(&self) -> bool {
        matches!(
            self,
            Source::ServicesLeader | Source::ServiceAddress(_) | Source::ServicesPlaced
        )
    }
}

/// Takes out of `want` every address claimed only for Services that the
/// kernel has and vipd did not add (on any interface): it is the node's own,
/// or another program's, and vipd would announce it from under its owner.
/// Returns them, with why. A control-plane VIP configured by hand is still
/// announced (the operator meant it).
pub fn refuse_foreign(
    want: &mut BTreeMap<IpAddr, Want>,
    have: &[KernelAddr],
) -> BTreeMap<IpAddr, String> {
    let mut refused = BTreeMap::new();
    let foreign_addrs: std::collections::HashSet<IpAddr> =
        have.iter().filter(|k| !k.ours).map(|k| k.addr).collect();
    want.retain(|addr, w| {
        if refuses(foreign_addrs.contains(addr), w.sources.iter()) {
            refused.insert(
                *addr,
                format!("{addr} is an address of this node that vipd did not add"),
            );
            false
        } else {
            true
        }
    });
    refused
}

/// Whether vipd refuses to hold a claimed address: it is on this node but
/// not vipd's (`foreign`), and only Services claim it (`sources`).
fn refuses<'a>(foreign: bool, mut sources: impl Iterator<Item = &'a Source>) -> bool {
    foreign && sources.all(Source::is_service)
}

/// Whether `addr` is wanted now ([`wanted`]) and not refused
/// ([`refuse_foreign`]), asked of one address without building either
/// map: the owner asks it of every address the kernel reports removed.
pub fn wanted_and_allowed(
    now: Instant,
    claims: &BTreeMap<Source, ClaimSet>,
    have: &[KernelAddr],
    addr: IpAddr,
) -> bool {
    let sources: Vec<&Source> = claims
        .iter()
        .filter(|(_, set)| set.live(now) && set.claims.iter().any(|c| c.addr == addr))
        .map(|(source, _)| source)
        .collect();
    let foreign = have.iter().any(|k| !k.ours && k.addr == addr);
    !sources.is_empty() && !refuses(foreign, sources.into_iter())
}

/// The wanted addresses that must first be checked on the wire: claimed by
/// a source that asks for it (`probe_first`) or always does (a Service's,
/// [`Source::always_probes`]), not on this node yet, and not checked
/// already (`cleared`).
///
/// Why: Raft hands the VIP over faster than the kernel can forget an
/// address (lifetimes count whole seconds). When a holder's vipd and its
/// guardian die together (a container killed), the dead holder's kernel
/// keeps answering for the VIP until its lifetime ends; a new leader that
/// added the VIP at once would hold it together with it. Checking first
/// (an ARP probe, a DAD solicitation: the dead holder's kernel answers
/// them) makes the new leader wait exactly as long as the old address
/// lives, and not at all otherwise.
pub fn to_probe(
    now: Instant,
    want: &BTreeMap<IpAddr, Want>,
    claims: &BTreeMap<Source, ClaimSet>,
    have: &[KernelAddr],
    cleared: &std::collections::HashSet<IpAddr>,
) -> BTreeSet<IpAddr> {
    let present: std::collections::HashSet<IpAddr> = have.iter().map(|k| k.addr).collect();
    // One pass over the claims, not one per address: a takeover of 5000
    // addresses is 25 million comparisons the other way.
    let asked: std::collections::HashSet<IpAddr> = claims
        .iter()
        .filter(|(source, set)| (set.probe_first || source.always_probes()) && set.live(now))
        .flat_map(|(_, set)| set.claims.iter().map(|c| c.addr))
        .collect();
    want.keys()
        .filter(|a| !present.contains(*a) && !cleared.contains(*a) && asked.contains(*a))
        .copied()
        .collect()
}

/// Whether to let `addr` go because another node announces it: only when
/// every live source claiming it holds on unconfirmed. A confirmed holder
/// keeps it (the other node is the one in the wrong, and its own election
/// will say so); an address nobody claims is not ours to judge.
pub fn yields_to_another(now: Instant, claims: &BTreeMap<Source, ClaimSet>, addr: IpAddr) -> bool {
    let mut claimed = false;
    for set in claims.values().filter(|s| s.live(now)) {
        if set.claims.iter().any(|c| c.addr == addr) {
            if set.confirmed {
                return false;
            }
            claimed = true;
        }
    }
    claimed
}

/// Every address [`yields_to_another`] holds for, in one pass over the
/// claims (the announcers' probing is set for all held addresses at once).
pub fn yielding(now: Instant, claims: &BTreeMap<Source, ClaimSet>) -> HashSet<IpAddr> {
    let mut confirmed = HashSet::new();
    let mut unconfirmed = HashSet::new();
    for set in claims.values().filter(|s| s.live(now)) {
        let into = if set.confirmed {
            &mut confirmed
        } else {
            &mut unconfirmed
        };
        into.extend(set.claims.iter().map(|c| c.addr));
    }
    unconfirmed.retain(|a| !confirmed.contains(a));
    unconfirmed
}

/// What to change in the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Wanted and absent: add (as ours).
    pub add: Vec<(IpAddr, String, u8)>,
    /// Ours and no longer wanted (or on the wrong interface): remove.
    pub remove: Vec<KernelAddr>,
}

/// Compares what is wanted with what the kernel has. `ifindex_of` maps an
/// interface name to its index (None: it does not exist, so nothing is added
/// there). Addresses that are not ours are never removed; a wanted address
/// that someone else configured already counts as present.
pub fn plan(
    want: &BTreeMap<IpAddr, Want>,
    have: &[KernelAddr],
    ifindex_of: impl Fn(&str) -> Option<u32>,
) -> Plan {
    let mut p = Plan::default();
    let present: std::collections::HashSet<(IpAddr, u32)> =
        have.iter().map(|k| (k.addr, k.ifindex)).collect();
    for (addr, w) in want {
        let Some(idx) = ifindex_of(&w.interface) else {
            continue;
        };
        if !present.contains(&(*addr, idx)) {
            p.add.push((*addr, w.interface.clone(), w.prefix));
        }
    }
    for k in have.iter().filter(|k| k.ours) {
        let keep = want
            .get(&k.addr)
            .is_some_and(|w| ifindex_of(&w.interface) == Some(k.ifindex) && w.prefix == k.prefix);
        if !keep {
            p.remove.push(*k);
        }
    }
    p
}

/// How long after a claim's deadline the guardian of a living vipd removes
/// its addresses (a frozen vipd cannot). The owner tells the guardian each
/// extension only after it has read it, and the guardian removes all of
/// vipd's addresses, not only the lapsed claim's: with no slack, an
/// extension read late (a busy owner: thousands of addresses) or a claim
/// that lapses as it should (a lead lost) cost every other address too,
/// the control-plane VIP included. Well inside a Lease's margin between its
/// renew deadline and its expiry (1.5 s at vipd's defaults), and a Raft
/// successor checks the wire before it adds.
pub const GUARDIAN_SLACK: Duration = Duration::from_millis(250);

/// The deadline a living vipd's guardian keeps, `now` on: the earliest
/// deadline of the claims in force, [`GUARDIAN_SLACK`] later.
pub fn guardian_deadline(claims: &BTreeMap<Source, ClaimSet>, now: Instant) -> Option<Duration> {
    claims
        .values()
        .filter(|c| !c.claims.is_empty())
        .filter_map(|c| c.hold_until)
        .filter(|t| *t > now)
        .min()
        .map(|d| d - now + GUARDIAN_SLACK)
}

/// Until when a dead vipd's addresses may stay (the guardian's deadline at
/// its death): each confirmed claim's deadline; a claim held on without a
/// renewed Lease (`confirmed` false) guarantees nothing once vipd cannot
/// watch for another announcer, so its addresses go at once (`now`).
pub fn at_death(claims: &BTreeMap<Source, ClaimSet>, now: Instant) -> Option<Instant> {
    claims
        .values()
        .filter(|c| !c.claims.is_empty())
        .filter_map(|c| c.hold_until.map(|t| if c.confirmed { t } else { now }))
        .min()
}

/// Whether an address another host still answers for is taken anyway
/// after `waited` of checking: once `patience` has passed (that host's copy
/// should have expired), unless a claim on it is `until_silent` (the host
/// it comes from may still be alive: never taken while it answers).
pub fn takes_anyway(until_silent: bool, waited: Duration, patience: Duration) -> bool {
    !until_silent && waited >= patience
}

/// The addresses a claim takes over from a node that may still hold them
/// (`Claim::until_silent`).
pub fn until_silent(claims: &BTreeMap<Source, ClaimSet>) -> HashSet<IpAddr> {
    claims
        .values()
        .flat_map(|set| &set.claims)
        .filter(|c| c.until_silent)
        .map(|c| c.addr)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn claim(addr: &str, iface: &str) -> Claim {
        Claim {
            route: Default::default(),
            until_silent: false,
            addr: addr.parse().unwrap(),
            prefix: 32,
            interface: iface.into(),
        }
    }

    fn kaddr(addr: &str, idx: u32, ours: bool) -> KernelAddr {
        KernelAddr {
            ifindex: idx,
            addr: addr.parse().unwrap(),
            prefix: 32,
            ours,
        }
    }

    fn idx(name: &str) -> Option<u32> {
        match name {
            "eth0" => Some(2),
            "eth1" => Some(3),
            _ => None,
        }
    }

    fn claims(pairs: Vec<(Source, Vec<Claim>, Option<Instant>)>) -> BTreeMap<Source, ClaimSet> {
        pairs
            .into_iter()
            .map(|(s, c, h)| {
                (
                    s,
                    ClaimSet {
                        probe_first: false,
                        confirmed: true,
                        term: None,
                        drop_on_death: false,
                        claims: c,
                        hold_until: h,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn adds_what_is_missing_and_removes_only_ours() {
        let now = Instant::now();
        let c = claims(vec![(
            Source::ControlPlane,
            vec![claim("192.0.2.100", "eth0")],
            None,
        )]);
        let have = vec![
            kaddr("192.0.2.11", 2, false), // the node's own address: never touched
            kaddr("192.0.2.200", 2, true), // a stale address of ours
        ];
        let p = plan(&wanted(now, &c), &have, idx);
        assert_eq!(
            p.add,
            vec![("192.0.2.100".parse().unwrap(), "eth0".into(), 32)]
        );
        assert_eq!(p.remove, vec![kaddr("192.0.2.200", 2, true)]);
    }

    #[test]
    fn nothing_to_do_when_converged() {
        let now = Instant::now();
        let c = claims(vec![(
            Source::ControlPlane,
            vec![claim("192.0.2.100", "eth0")],
            None,
        )]);
        let p = plan(&wanted(now, &c), &[kaddr("192.0.2.100", 2, true)], idx);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn an_expired_claim_is_withdrawn_even_if_never_released() {
        let now = Instant::now();
        let c = claims(vec![(
            Source::ControlPlane,
            vec![claim("192.0.2.100", "eth0")],
            Some(now - Duration::from_millis(1)),
        )]);
        let p = plan(&wanted(now, &c), &[kaddr("192.0.2.100", 2, true)], idx);
        assert!(p.add.is_empty());
        assert_eq!(p.remove, vec![kaddr("192.0.2.100", 2, true)]);
        // ... and is not re-added when the kernel already dropped it.
        assert_eq!(plan(&wanted(now, &c), &[], idx), Plan::default());
    }

    #[test]
    fn a_foreign_address_counts_as_present_and_is_kept() {
        let now = Instant::now();
        let c = claims(vec![(
            Source::ControlPlane,
            vec![claim("192.0.2.100", "eth0")],
            None,
        )]);
        assert_eq!(
            plan(&wanted(now, &c), &[kaddr("192.0.2.100", 2, false)], idx),
            Plan::default()
        );
        assert_eq!(
            plan(&BTreeMap::new(), &[kaddr("192.0.2.100", 2, false)], idx),
            Plan::default()
        );
    }

    #[test]
    fn shared_address_stays_while_any_source_claims_it() {
        let now = Instant::now();
        let svc = Source::ServicesLeader;
        let c = claims(vec![
            (Source::ControlPlane, vec![], None),
            (svc.clone(), vec![claim("192.0.2.150", "eth0")], None),
            (
                Source::ServiceAddress("192.0.2.150".parse().unwrap()),
                vec![claim("192.0.2.150", "eth0")],
                None,
            ),
        ]);
        let w = wanted(now, &c);
        assert_eq!(
            w[&"192.0.2.150".parse::<IpAddr>().unwrap()].sources.len(),
            2
        );
        assert_eq!(
            plan(&w, &[kaddr("192.0.2.150", 2, true)], idx),
            Plan::default()
        );
    }

    #[test]
    fn a_service_never_takes_an_address_the_node_has() {
        let now = Instant::now();
        let c = claims(vec![
            (
                Source::ServicesLeader,
                vec![claim("192.0.2.11", "eth0"), claim("192.0.2.150", "eth0")],
                None,
            ),
            (
                Source::ServicesBgp,
                vec![claim("198.51.100.7", "eth0")],
                None,
            ),
        ]);
        let have = [
            kaddr("192.0.2.11", 2, false),   // the node's address, on eth0
            kaddr("198.51.100.7", 3, false), // another interface's address
        ];
        let mut w = wanted(now, &c);
        let refused = refuse_foreign(&mut w, &have);
        assert_eq!(
            refused.keys().copied().collect::<Vec<IpAddr>>(),
            vec![
                "192.0.2.11".parse::<IpAddr>().unwrap(),
                "198.51.100.7".parse().unwrap()
            ]
        );
        assert_eq!(
            w.keys().copied().collect::<Vec<IpAddr>>(),
            vec!["192.0.2.150".parse::<IpAddr>().unwrap()]
        );
        // The control-plane VIP configured by hand is still announced.
        let c = claims(vec![(
            Source::ControlPlane,
            vec![claim("192.0.2.100", "eth0")],
            None,
        )]);
        let mut w = wanted(now, &c);
        assert!(refuse_foreign(&mut w, &[kaddr("192.0.2.100", 2, false)]).is_empty());
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn moved_to_another_interface_is_removed_there_and_added_here() {
        let now = Instant::now();
        let c = claims(vec![(
            Source::ControlPlane,
            vec![claim("192.0.2.100", "eth1")],
            None,
        )]);
        let p = plan(&wanted(now, &c), &[kaddr("192.0.2.100", 2, true)], idx);
        assert_eq!(
            p.add,
            vec![("192.0.2.100".parse().unwrap(), "eth1".into(), 32)]
        );
        assert_eq!(p.remove, vec![kaddr("192.0.2.100", 2, true)]);
    }

    #[test]
    fn a_missing_interface_adds_nothing() {
        let now = Instant::now();
        let c = claims(vec![(
            Source::ControlPlane,
            vec![claim("192.0.2.100", "eth9")],
            None,
        )]);
        assert_eq!(plan(&wanted(now, &c), &[], idx), Plan::default());
    }
}

#[cfg(test)]
mod yield_tests {
    use super::*;

    fn set(addr: &str, confirmed: bool, live: bool) -> ClaimSet {
        let now = Instant::now();
        ClaimSet {
            term: None,
            drop_on_death: false,
            probe_first: false,
            claims: vec![Claim {
                addr: addr.parse().unwrap(),
                prefix: 32,
                interface: "eth0".into(),
                route: Default::default(),
                until_silent: false,
            }],
            hold_until: Some(if live {
                now + std::time::Duration::from_secs(5)
            } else {
                now - std::time::Duration::from_secs(1)
            }),
            confirmed,
        }
    }

    #[test]
    fn only_probe_first_claims_of_absent_unchecked_addresses_are_probed() {
        let now = Instant::now();
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        let mut raft = set("192.0.2.100", true, true);
        raft.probe_first = true;
        let claims = BTreeMap::from([(Source::ControlPlane, raft)]);
        let want = wanted(now, &claims);
        let none = std::collections::HashSet::new();
        assert_eq!(
            to_probe(now, &want, &claims, &[], &none),
            BTreeSet::from([vip])
        );
        // Checked already, or on the node already: nothing to probe.
        let cleared = std::collections::HashSet::from([vip]);
        assert!(to_probe(now, &want, &claims, &[], &cleared).is_empty());
        let have = [KernelAddr {
            ifindex: 2,
            addr: vip,
            prefix: 32,
            ours: true,
        }];
        assert!(to_probe(now, &want, &claims, &have, &none).is_empty());
        // A claim that does not ask for it (a Lease's) is added at once.
        let lease = BTreeMap::from([(Source::ControlPlane, set("192.0.2.100", true, true))]);
        assert!(to_probe(now, &wanted(now, &lease), &lease, &[], &none).is_empty());
    }

    /// A Service address lives long in the kernel (`svc_addr_lifetime`):
    /// whoever claims it, and whatever the claim asks, it is checked on the
    /// wire before it is added; a BGP one is not (every node holds it).
    #[test]
    fn service_addresses_are_always_probed_first() {
        let now = Instant::now();
        let addr: IpAddr = "198.51.100.7".parse().unwrap();
        let none = std::collections::HashSet::new();
        for source in [
            Source::ServicesLeader,
            Source::ServiceAddress(addr),
            Source::ServicesPlaced,
        ] {
            let plain = set("198.51.100.7", true, true);
            assert!(!plain.probe_first);
            let claims = BTreeMap::from([(source.clone(), plain)]);
            assert_eq!(
                to_probe(now, &wanted(now, &claims), &claims, &[], &none),
                BTreeSet::from([addr]),
                "{source:?}"
            );
        }
        let bgp = BTreeMap::from([(Source::ServicesBgp, set("198.51.100.7", true, true))]);
        assert!(to_probe(now, &wanted(now, &bgp), &bgp, &[], &none).is_empty());
    }

    #[test]
    fn only_an_unconfirmed_holder_yields_to_another_announcer() {
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        let now = Instant::now();
        let one = |s: ClaimSet| BTreeMap::from([(Source::ControlPlane, s)]);
        assert!(yields_to_another(
            now,
            &one(set("192.0.2.100", false, true)),
            vip
        ));
        assert!(!yields_to_another(
            now,
            &one(set("192.0.2.100", true, true)),
            vip
        ));
        // Not claimed (or lapsed): nothing to yield.
        assert!(!yields_to_another(
            now,
            &one(set("192.0.2.101", false, true)),
            vip
        ));
        assert!(!yields_to_another(
            now,
            &one(set("192.0.2.100", false, false)),
            vip
        ));
        // Shared: one confirmed claim keeps it.
        let mut both = one(set("192.0.2.100", false, true));
        both.insert(Source::ServicesLeader, set("192.0.2.100", true, true));
        assert!(!yields_to_another(now, &both, vip));
    }

    #[test]
    fn one_address_is_judged_as_the_whole_wanted_map_judges_it() {
        let now = Instant::now();
        let mut claims = BTreeMap::new();
        // .1 live; .2 lapsed; .3 a Service's, but someone else configured
        // it; .4 the control plane's, configured by someone else too.
        let mut services = set("192.0.2.1", true, true);
        services.claims.extend(set("192.0.2.3", true, true).claims);
        claims.insert(Source::ServicesLeader, services);
        claims.insert(Source::ServicesPlaced, set("192.0.2.2", true, false));
        claims.insert(Source::ControlPlane, set("192.0.2.4", true, true));
        let kaddr = |a: &str, ours: bool| KernelAddr {
            ifindex: 1,
            addr: a.parse().unwrap(),
            prefix: 32,
            ours,
        };
        let have = vec![
            kaddr("192.0.2.3", false),
            kaddr("192.0.2.4", false),
            kaddr("192.0.2.1", true),
        ];
        let mut want = wanted(now, &claims);
        refuse_foreign(&mut want, &have);
        for a in [
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "192.0.2.4",
            "192.0.2.5",
        ] {
            let addr: IpAddr = a.parse().unwrap();
            assert_eq!(
                wanted_and_allowed(now, &claims, &have, addr),
                want.contains_key(&addr),
                "{a}"
            );
        }
        assert_eq!(want.len(), 2, "{want:?}");
    }

    #[test]
    fn the_yielding_set_is_what_yields_to_another_says_of_each_address() {
        let now = Instant::now();
        let mut claims = BTreeMap::new();
        // .1: unconfirmed only; .2: unconfirmed and confirmed; .3: confirmed
        // only; .4: unconfirmed but lapsed.
        let mut held_on = set("192.0.2.1", false, true);
        held_on.claims.extend(set("192.0.2.2", false, true).claims);
        claims.insert(Source::ControlPlane, held_on);
        let mut renewed = set("192.0.2.2", true, true);
        renewed.claims.extend(set("192.0.2.3", true, true).claims);
        claims.insert(Source::ServicesLeader, renewed);
        claims.insert(Source::ServicesPlaced, set("192.0.2.4", false, false));
        let all = yielding(now, &claims);
        for a in [
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "192.0.2.4",
            "192.0.2.5",
        ] {
            let addr: IpAddr = a.parse().unwrap();
            assert_eq!(
                all.contains(&addr),
                yields_to_another(now, &claims, addr),
                "{a}"
            );
        }
        assert_eq!(all, HashSet::from(["192.0.2.1".parse().unwrap()]));
    }

    #[test]
    fn an_address_claimed_until_silent_is_never_taken_while_another_host_answers() {
        let patience = Duration::from_secs(3);
        let mut claims = BTreeMap::from([(Source::ServicesPlaced, set("192.0.2.10", true, true))]);
        let addr: IpAddr = "192.0.2.10".parse().unwrap();
        let silent = |c: &BTreeMap<Source, ClaimSet>| until_silent(c).contains(&addr);
        assert!(!takes_anyway(
            silent(&claims),
            Duration::from_secs(1),
            patience
        ));
        assert!(takes_anyway(silent(&claims), patience, patience));
        claims.get_mut(&Source::ServicesPlaced).unwrap().claims[0].until_silent = true;
        assert!(!takes_anyway(
            silent(&claims),
            Duration::from_secs(600),
            patience
        ));
    }

    #[test]
    fn a_dead_vipd_holding_on_without_a_renewed_lease_loses_its_addresses_at_once() {
        let now = Instant::now();
        let later = now + Duration::from_secs(3);
        let mut claims = BTreeMap::from([(Source::ControlPlane, set("192.0.2.10", true, true))]);
        claims.get_mut(&Source::ControlPlane).unwrap().hold_until = Some(later);
        assert_eq!(at_death(&claims, now), Some(later));
        // Holding on through an API server that does not answer it: the
        // others may see the Lease expire before this hold ends.
        claims.get_mut(&Source::ControlPlane).unwrap().confirmed = false;
        assert_eq!(at_death(&claims, now), Some(now));
        assert_eq!(at_death(&BTreeMap::new(), now), None);
    }

    #[test]
    fn a_living_vipds_guardian_waits_a_little_past_the_earliest_deadline() {
        let now = Instant::now();
        let mut claims = BTreeMap::from([
            (Source::ControlPlane, set("192.0.2.10", true, true)),
            (Source::ServicesLeader, set("192.0.2.20", true, true)),
            // Lapsed: no longer in force, not the guardian's deadline.
            (Source::ServicesPlaced, set("192.0.2.30", true, false)),
        ]);
        claims.get_mut(&Source::ControlPlane).unwrap().hold_until =
            Some(now + Duration::from_secs(3));
        claims.get_mut(&Source::ServicesLeader).unwrap().hold_until =
            Some(now + Duration::from_secs(2));
        assert_eq!(
            guardian_deadline(&claims, now),
            Some(Duration::from_secs(2) + GUARDIAN_SLACK)
        );
        assert_eq!(guardian_deadline(&BTreeMap::new(), now), None);
    }
}
