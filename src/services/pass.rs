//! One Services pass as pure functions: from a [`Snapshot`] of what the
//! caches hold to what to write and what to claim. The loop (`mod.rs`)
//! only gathers the snapshot and applies the result, so every decision
//! here is tested table by table without a network.
//!
//! The path of a pass, top to bottom:
//! 1. [`decide`]: the Services leader's assignments ([`allocate`]) become
//!    annotation, status and Event changes; every node then plans the
//!    addresses the Services' status carries ([`plan_addresses`]), refuses
//!    what the guard forbids, and turns the rest into claims: the leader's,
//!    its own per-address Leases', or BGP's;
//! 2. the loop applies the claims and learns which addresses this node
//!    announces;
//! 3. [`announcements`]: `kube-vip.io/vipHost` and its Events for them;
//! 4. [`summary`]: what `/status` and `/metrics` say.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tracing::warn;

mod assign;
mod routes;

use super::address_leases::{Want, STAGGER};
use super::eligibility::{placed_on, plan_addresses, rank, AddressPlan};
use super::guard::Guard;
use super::heir::StandIn;
use super::model::{conditions, keys, NodeInfo, ReadyNodes, Svc, SvcInfo, SvcKey};
use super::pools::Pools;
use super::writer::Change;
use crate::config::Subnets;
use crate::status::{Announced, ServicesSummary};
use crate::vips::Claim;

/// How long a pool pick is remembered while its annotation write lands.
pub const RECENT_PICK: Duration = Duration::from_secs(30);

/// What this node is and how it announces (from its configuration).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub me: String,
    /// BGP mode: every eligible node announces; these are the default attributes.
    pub bgp: Option<vipd_bgp::RouteAttrs>,
    pub per_address_election: bool,
    pub subnets: Subnets,
    /// `vip_servicesinterface`, else the VIP's interface.
    pub interface: Option<String>,
    pub default_interface: String,
}

/// Everything one pass reads.
pub struct Snapshot<'a> {
    /// Every Service in the cache.
    pub infos: &'a [Svc],
    /// The ones vipd serves (class, namespace, type).
    pub served: &'a [&'a Svc],
    pub nodes: &'a [NodeInfo],
    pub ready: &'a ReadyNodes,
    pub pools: &'a Pools,
    pub guard: &'a Guard,
    /// This node holds the Services leader's Lease.
    pub leading: bool,
    /// With placement (`svc_placement`): the live nodes. Addresses that
    /// need a node of their own go to the first-ranked live eligible one.
    pub live: Option<&'a BTreeSet<String>>,
    /// With placement: nodes alive by their Lease but dead by their link
    /// (not in `live`). An address that would be theirs is added here only
    /// once nobody answers for it.
    pub suspect: Option<&'a BTreeSet<String>>,
    /// This node's part while the Services leader may be dead: as its heir
    /// it holds the leader's addresses (see `heir`).
    pub stand_in: StandIn,
    pub node: &'a NodeSettings,
    /// Now, as written in a condition's `lastTransitionTime`.
    pub wall: &'a str,
}

/// What passes remember from one to the next.
#[derive(Debug, Default)]
pub struct Memory {
    /// Leader: the addresses each served Service had, to report releases.
    pub(super) served_before: BTreeMap<SvcKey, Vec<IpAddr>>,
    /// Leader: the last problem logged per Service.
    pub(super) last_problem: BTreeMap<SvcKey, String>,
    /// Leader: pool picks whose annotation the cache does not show yet.
    pub(super) recent_picks: BTreeMap<SvcKey, (Vec<IpAddr>, Instant)>,
    /// Addresses this node refused to claim (logged once each).
    refused_logged: BTreeSet<IpAddr>,
    /// Leader: pending Services by reason, as of the last pass.
    pub pending_reasons: BTreeMap<String, u64>,
}

/// What a pass decided.
pub struct Decision {
    pub changes: Vec<Change>,
    /// Addresses announced under the Services leader's Lease (when leading).
    pub leader_claims: Vec<Claim>,
    /// BGP mode: the addresses this node announces.
    pub bgp_claims: Vec<Claim>,
    /// Addresses this node competes for under a Lease of their own.
    pub wants: BTreeMap<IpAddr, Want>,
    /// With placement: the addresses placed on this node (and, as the
    /// heir of a dead Services leader, the leader's).
    pub placed: Vec<Claim>,
    /// The addresses to announce, and those the guard refuses.
    pub plans: Vec<AddressPlan>,
    pub refused: Vec<AddressPlan>,
    /// Leader: the Services whose `status.loadBalancer.ingress` this pass
    /// writes, as they will read once written. The pass plans and
    /// announces from these at once rather than a pass later, when the
    /// watch brings the write back, and its vipHost and Announced writes
    /// then go out with the assignment's (see `writer::coalesce`).
    pub written: BTreeMap<SvcKey, SvcInfo>,
}

impl Decision {
    /// `info` as this pass leaves it (its new addresses, if it writes them).
    pub fn as_written<'a>(&'a self, info: &'a SvcInfo) -> &'a SvcInfo {
        self.written.get(&info.key).unwrap_or(info)
    }
}

/// The Services whose ingress `changes` set, with their new addresses.
fn written_by(changes: &[Change], by_key: &BTreeMap<&SvcKey, &Svc>) -> BTreeMap<SvcKey, SvcInfo> {
    let mut written = BTreeMap::new();
    for c in changes {
        if let Change::Status {
            svc,
            ingress: Some(ingress),
            ..
        } = c
        {
            let key = svc.key.clone();
            if let Some(info) = by_key.get(&key) {
                let status_ips = ingress.iter().map(|(ip, _)| *ip).collect();
                written.insert(
                    key,
                    SvcInfo {
                        status_ips,
                        ..(***info).clone()
                    },
                );
            }
        }
    }
    written
}

/// Whether `plan`'s address is placed here only because a suspect node (see
/// [`Snapshot::suspect`]) does not count: with it, the address would be its.
fn from_suspect(
    plan: &AddressPlan,
    live: &BTreeSet<String>,
    suspect: Option<&BTreeSet<String>>,
) -> bool {
    let Some(suspect) = suspect.filter(|s| !s.is_empty()) else {
        return false;
    };
    let with: BTreeSet<String> = live.union(suspect).cloned().collect();
    placed_on(plan.addr, &plan.eligible, &with).is_some_and(|n| suspect.contains(n))
}

/// Steps 1 of a pass (see the module): the leader's writes, and every
/// node's claims.
pub fn decide(s: &Snapshot, mem: &mut Memory, now: Instant) -> Decision {
    let mut changes = Vec::new();
    let by_key = by_key(s);
    let written = if s.leading {
        assign::assign(s, mem, now, &mut changes);
        written_by(&changes, &by_key)
    } else {
        BTreeMap::new()
    };
    // Announce what the Services' status says (or will, once this pass
    // wrote it), but never what the guard refuses (whoever wrote it).
    let served_infos: Vec<&SvcInfo> = s
        .served
        .iter()
        .map(|i| written.get(&i.key).unwrap_or(i))
        .collect();
    let (plans, refused): (Vec<AddressPlan>, Vec<AddressPlan>) =
        plan_addresses(&served_infos, s.nodes, s.ready)
            .into_iter()
            .partition(|p| !s.guard.is_forbidden(p.addr));
    refuse(s, mem, &refused, &by_key, &mut changes);
    let me = s.node.me.as_str();
    let (mut leader_claims, mut bgp_claims, mut wants) = (Vec::new(), Vec::new(), BTreeMap::new());
    let mut placed = Vec::new();
    for plan in &plans {
        let claim = Claim {
            route: routes::route_for(s, plan, &by_key, &mut changes),
            until_silent: false,
            addr: plan.addr,
            prefix: s.node.subnets.for_ip(plan.addr),
            interface: routes::interface_for(s, plan),
        };
        if s.node.bgp.is_some() {
            // BGP: every eligible node announces (ECMP); no election.
            if plan.eligible.allows(me) {
                bgp_claims.push(claim);
            }
        } else if let (Some(live), true) = (s.live, plan.own_lease(s.node.per_address_election)) {
            if placed_on(plan.addr, &plan.eligible, live) == Some(me) {
                let mut claim = claim;
                claim.until_silent = from_suspect(plan, live, s.suspect);
                placed.push(claim);
            }
        } else if plan.own_lease(s.node.per_address_election) {
            if plan.eligible.allows(me) {
                let r = rank(me, plan.addr, &plan.eligible, s.nodes);
                wants.insert(
                    plan.addr,
                    Want {
                        claim,
                        delay: STAGGER * r as u32,
                    },
                );
            }
        } else if let StandIn::Heir { .. } = s.stand_in {
            // Fenced by the leader's Lease, not its liveness: only silence
            // says it let them go.
            placed.push(Claim {
                until_silent: true,
                ..claim
            });
        } else {
            leader_claims.push(claim);
        }
    }
    Decision {
        changes,
        leader_claims,
        bgp_claims,
        wants,
        placed,
        plans,
        refused,
        written,
    }
}

fn by_key<'a>(s: &'a Snapshot) -> BTreeMap<&'a SvcKey, &'a Svc> {
    s.served.iter().map(|x| (&x.key, *x)).collect()
}

/// Step 3: `kube-vip.io/vipHost` on the Services of the addresses this
/// node announces (ARP: one node per address; BGP: many, so not written),
/// and its removal when nobody may announce an address.
pub fn announcements(s: &Snapshot, d: &Decision, announced: &BTreeSet<IpAddr>) -> Vec<Change> {
    let mut changes = Vec::new();
    if s.node.bgp.is_some() {
        return changes;
    }
    let me = s.node.me.as_str();
    let by_key = by_key(s);
    for plan in &d.plans {
        for user in &plan.users {
            let Some(obj) = by_key.get(user).copied() else {
                continue;
            };
            let info = d.as_written(obj);
            let host = info.vip_host.as_deref();
            // The Announced condition follows the Service's first address
            // (with two, two nodes may announce them: one writer only).
            let first = info.status_ips.first() == Some(&plan.addr);
            let here = announced.contains(&plan.addr);
            if here && host != Some(me) {
                changes.push(Change::Annotations {
                    svc: obj.clone(),
                    set: vec![(keys::VIP_HOST, Some(me.to_string()))],
                });
                let (reason, note) = match host {
                    Some(h) if !h.is_empty() => (
                        "AddressMoved",
                        format!("{} moved from {h} to {me}", plan.addr),
                    ),
                    _ => (
                        "AddressAnnounced",
                        format!("{} announced by {me}", plan.addr),
                    ),
                };
                if first {
                    assign::status_change(
                        &mut changes,
                        obj,
                        assign::condition(s, info, conditions::ANNOUNCED, true, reason, &note),
                    );
                }
                changes.push(Change::Event {
                    svc: obj.clone(),
                    warning: false,
                    reason,
                    note,
                });
            } else if here && first {
                // Announced here already (vipHost says so): the condition
                // too, once (a Service served before vipd wrote conditions).
                let ours = info
                    .conditions
                    .get(conditions::ANNOUNCED)
                    .is_some_and(|c| c.status && c.message.ends_with(&format!(" {me}")));
                if !ours {
                    let note = format!("{} announced by {me}", plan.addr);
                    assign::status_change(
                        &mut changes,
                        obj,
                        assign::condition(
                            s,
                            info,
                            conditions::ANNOUNCED,
                            true,
                            "AddressAnnounced",
                            &note,
                        ),
                    );
                }
            } else if plan.eligible.is_none() && host.is_some() && s.leading {
                changes.push(Change::Annotations {
                    svc: obj.clone(),
                    set: vec![(keys::VIP_HOST, None)],
                });
                let note = format!(
                    "{} is withdrawn: no node may announce it (externalTrafficPolicy Local without a ready endpoint, or ServiceLB node labels)",
                    plan.addr
                );
                if first {
                    assign::status_change(
                        &mut changes,
                        obj,
                        assign::condition(
                            s,
                            info,
                            conditions::ANNOUNCED,
                            false,
                            "NoEligibleNode",
                            &note,
                        ),
                    );
                }
                changes.push(Change::Event {
                    svc: obj.clone(),
                    warning: true,
                    reason: "NoEligibleNode",
                    note,
                });
            }
        }
    }
    changes
}

/// Step 4: what `/status` and `/metrics` say about Services.
pub fn summary(
    s: &Snapshot,
    mem: &Memory,
    d: &Decision,
    announced: &BTreeSet<IpAddr>,
) -> ServicesSummary {
    let withdrawn: BTreeSet<&SvcKey> = d
        .plans
        .iter()
        .filter(|p| p.eligible.is_none())
        .chain(&d.refused)
        .flat_map(|p| p.users.iter())
        .collect();
    let served = s.served.len();
    let pending = s
        .served
        .iter()
        .filter(|i| d.as_written(i).status_ips.is_empty())
        .count();
    ServicesSummary {
        served,
        ready: served - pending - withdrawn.len(),
        pending,
        withdrawn: withdrawn.len(),
        announced_here: d
            .plans
            .iter()
            .filter(|p| announced.contains(&p.addr))
            .map(|p| Announced {
                address: p.addr,
                services: p.users.iter().map(|k| k.to_string()).collect(),
            })
            .collect(),
        problems_by_reason: mem.pending_reasons.clone(),
        ..Default::default()
    }
}

/// Addresses in some Service's status that this node will not claim:
/// logged once each, and an Event on each Service that carries one.
fn refuse(
    s: &Snapshot,
    mem: &mut Memory,
    refused: &[AddressPlan],
    by_key: &BTreeMap<&SvcKey, &Svc>,
    changes: &mut Vec<Change>,
) {
    let now: BTreeSet<IpAddr> = refused.iter().map(|p| p.addr).collect();
    for plan in refused {
        let why = s.guard.explain(plan.addr).unwrap_or_default();
        if mem.refused_logged.insert(plan.addr) {
            let users: Vec<String> = plan.users.iter().map(|k| k.to_string()).collect();
            warn!(address = %plan.addr, services = ?users, "{why}: refusing to announce it for a Service");
        }
        for user in &plan.users {
            if let Some(&obj) = by_key.get(user) {
                let info: &SvcInfo = obj;
                let note = format!("{why}: not announced (vipd never announces it for a Service; choose another address)");
                if s.leading {
                    assign::status_change(
                        changes,
                        obj,
                        assign::condition(
                            s,
                            info,
                            conditions::ANNOUNCED,
                            false,
                            "AddressForbidden",
                            &note,
                        ),
                    );
                }
                changes.push(Change::Event {
                    svc: obj.clone(),
                    warning: true,
                    reason: "AddressForbidden",
                    note,
                });
            }
        }
    }
    mem.refused_logged.retain(|a| now.contains(a));
}

#[cfg(test)]
mod tests;
