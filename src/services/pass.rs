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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use tracing::{info, warn};

use super::address_leases::{Want, STAGGER};
use super::allocate::{self, allocate, join, Origin};
use super::eligibility::{plan_addresses, rank, AddressPlan};
use super::guard::Guard;
use super::model::{
    conditions, current_ingress, keys, Condition, Ingress, NodeInfo, ReadyNodes, SvcInfo, SvcKey,
};
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
    pub infos: &'a [(Arc<Service>, SvcInfo)],
    /// The ones vipd serves (class, namespace, type).
    pub served: &'a [&'a (Arc<Service>, SvcInfo)],
    pub nodes: &'a [NodeInfo],
    pub ready: &'a ReadyNodes,
    pub pools: &'a Pools,
    pub guard: &'a Guard,
    /// This node holds the Services leader's Lease.
    pub leading: bool,
    pub node: &'a NodeSettings,
    /// Now, as written in a condition's `lastTransitionTime`.
    pub wall: &'a str,
}

/// `info`'s condition `kind` as it should be, when it is not so already
/// (its transition time kept while its status stays).
fn condition(
    s: &Snapshot,
    info: &SvcInfo,
    kind: &'static str,
    status: bool,
    reason: &str,
    message: &str,
) -> Option<(&'static str, Condition)> {
    let current = info.conditions.get(kind);
    if current.is_some_and(|c| c.status == status && c.reason == reason && c.message == message) {
        return None;
    }
    let last_transition = match current {
        Some(c) if c.status == status => c.last_transition.clone(),
        _ => s.wall.to_string(),
    };
    Some((
        kind,
        Condition {
            status,
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition,
        },
    ))
}

/// What passes remember from one to the next.
#[derive(Debug, Default)]
pub struct Memory {
    /// Leader: the addresses each served Service had, to report releases.
    served_before: BTreeMap<SvcKey, Vec<IpAddr>>,
    /// Leader: the last problem logged per Service.
    last_problem: BTreeMap<SvcKey, String>,
    /// Leader: pool picks whose annotation the cache does not show yet.
    recent_picks: BTreeMap<SvcKey, (Vec<IpAddr>, Instant)>,
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
    /// The addresses to announce, and those the guard refuses.
    pub plans: Vec<AddressPlan>,
    pub refused: Vec<AddressPlan>,
}

/// Steps 1 of a pass (see the module): the leader's writes, and every
/// node's claims.
pub fn decide(s: &Snapshot, mem: &mut Memory, now: Instant) -> Decision {
    let mut changes = Vec::new();
    if s.leading {
        assign(s, mem, now, &mut changes);
    }
    // Announce what the Services' status says, but never what the guard
    // refuses (whoever wrote it there).
    let served_infos: Vec<&SvcInfo> = s.served.iter().map(|(_, i)| i).collect();
    let by_key = by_key(s);
    let (plans, refused): (Vec<AddressPlan>, Vec<AddressPlan>) =
        plan_addresses(&served_infos, s.nodes, s.ready)
            .into_iter()
            .partition(|p| !s.guard.is_forbidden(p.addr));
    refuse(s, mem, &refused, &by_key, &mut changes);
    let me = s.node.me.as_str();
    let (mut leader_claims, mut bgp_claims, mut wants) = (Vec::new(), Vec::new(), BTreeMap::new());
    for plan in &plans {
        let claim = Claim {
            route: route_for(s, plan, &by_key, &mut changes),
            addr: plan.addr,
            prefix: s.node.subnets.for_ip(plan.addr),
            interface: interface_for(s, plan),
        };
        if s.node.bgp.is_some() {
            // BGP: every eligible node announces (ECMP); no election.
            if plan.eligible.allows(me) {
                bgp_claims.push(claim);
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
        } else {
            leader_claims.push(claim);
        }
    }
    Decision {
        changes,
        leader_claims,
        bgp_claims,
        wants,
        plans,
        refused,
    }
}

fn by_key<'a>(s: &'a Snapshot) -> BTreeMap<&'a SvcKey, &'a (Arc<Service>, SvcInfo)> {
    s.served.iter().map(|x| (&x.1.key, *x)).collect()
}

/// Step 3: `kube-vip.io/vipHost` on the Services of the addresses this
/// node announces (ARP: one node per address; BGP: many, so not written),
/// and its removal when nobody may announce an address.
pub fn announcements(
    s: &Snapshot,
    plans: &[AddressPlan],
    announced: &BTreeSet<IpAddr>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if s.node.bgp.is_some() {
        return changes;
    }
    let me = s.node.me.as_str();
    let by_key = by_key(s);
    for plan in plans {
        for user in &plan.users {
            let Some((obj, info)) = by_key.get(user) else {
                continue;
            };
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
                    status_change(
                        &mut changes,
                        obj,
                        condition(s, info, conditions::ANNOUNCED, true, reason, &note),
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
                    status_change(
                        &mut changes,
                        obj,
                        condition(
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
                    status_change(
                        &mut changes,
                        obj,
                        condition(
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
        .filter(|(_, i)| i.status_ips.is_empty())
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
    by_key: &BTreeMap<&SvcKey, &(Arc<Service>, SvcInfo)>,
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
            if let Some((obj, info)) = by_key.get(user) {
                let note = format!("{why}: not announced (vipd never announces it for a Service; choose another address)");
                if s.leading {
                    status_change(
                        changes,
                        obj,
                        condition(
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

/// BGP attributes of an address: its first Service's annotations, else
/// its pool's, else vipd's own settings. A bad annotation is an Event.
fn route_for(
    s: &Snapshot,
    plan: &AddressPlan,
    by_key: &BTreeMap<&SvcKey, &(Arc<Service>, SvcInfo)>,
    changes: &mut Vec<Change>,
) -> vipd_bgp::RouteAttrs {
    let Some(defaults) = &s.node.bgp else {
        return Default::default();
    };
    let mut attrs = defaults.clone();
    let ns = plan
        .users
        .first()
        .map(|k| k.namespace.as_str())
        .unwrap_or("");
    let (pool_cs, pool_lp) = s.pools.route_attrs(ns);
    if let Some(cs) = pool_cs {
        attrs.communities = cs.clone();
    }
    if pool_lp.is_some() {
        attrs.local_pref = pool_lp;
    }
    let Some((obj, info)) = plan.users.first().and_then(|k| by_key.get(k)) else {
        return attrs;
    };
    if let Some(v) = &info.bgp_communities {
        let parsed: Result<Vec<u32>, String> = v
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(vipd_bgp::route::parse_community)
            .collect();
        match parsed {
            Ok(cs) => attrs.communities = cs,
            Err(e) => changes.push(Change::Event {
                svc: obj.clone(),
                warning: true,
                reason: "InvalidAnnotation",
                note: format!(
                    "{}={v:?}: {e}; using the pool's communities",
                    keys::BGP_COMMUNITIES
                ),
            }),
        }
    }
    if let Some(v) = &info.bgp_local_pref {
        match v.trim().parse() {
            Ok(lp) => attrs.local_pref = Some(lp),
            Err(_) => changes.push(Change::Event {
                svc: obj.clone(),
                warning: true,
                reason: "InvalidAnnotation",
                note: format!(
                    "{}={v:?} is not a number; using the pool's local preference",
                    keys::BGP_LOCAL_PREF
                ),
            }),
        }
    }
    attrs
}

/// The interface of an address: its Service's `kube-vip.io/serviceInterface`,
/// else its pool's, else vipd's.
fn interface_for(s: &Snapshot, plan: &AddressPlan) -> String {
    if let Some(i) = &plan.interface {
        return i.clone();
    }
    let ns = plan
        .users
        .first()
        .map(|k| k.namespace.as_str())
        .unwrap_or("");
    if let Some(i) = s.pools.interface(ns) {
        return i.to_string();
    }
    s.node
        .interface
        .clone()
        .unwrap_or_else(|| s.node.default_interface.clone())
}

/// Whether `ips`, asked for by `kube-vip.io/loadbalancerIPs`, are what
/// vipd itself allocated from a pool and wrote there.
fn own_pool_pick(info: &SvcInfo, o: &Origin, ips: &[IpAddr]) -> bool {
    matches!(o, Origin::Annotation(k) if *k == keys::LOADBALANCER_IPS)
        && info.pool.is_some()
        && info.assigned == ips
        && info.requested.as_deref() == Some(join(ips).as_str())
}

/// Where an assignment came from, in words; which other request
/// annotations were ignored for it.
fn origin_text(o: &Origin, info: &SvcInfo, ips: &[IpAddr]) -> String {
    if own_pool_pick(info, o, ips) {
        return format!("from pool {}", info.pool.as_deref().unwrap_or(""));
    }
    let from = match o {
        Origin::Pool(k) => format!("from pool {k}"),
        Origin::Annotation(key) => format!("from {key}"),
        Origin::Status => "kept from status".into(),
        Origin::LoadBalancerIp => "from spec.loadBalancerIP".into(),
    };
    if matches!(o, Origin::Annotation(_)) && !info.requested_ignored.is_empty() {
        format!(
            "{from}; {} ignored: {} wins",
            info.requested_ignored.join(", "),
            info.requested_from
        )
    } else {
        from
    }
}

/// A status write of `conditions` only, when there is one to make.
fn status_change(
    changes: &mut Vec<Change>,
    svc: &Arc<Service>,
    condition: Option<(&'static str, Condition)>,
) {
    if let Some(c) = condition {
        changes.push(Change::Status {
            svc: svc.clone(),
            ingress: None,
            conditions: vec![c],
        });
    }
}

/// Warnings for kube-vip annotations vipd does not implement.
fn unsupported(obj: &Arc<Service>, info: &SvcInfo, changes: &mut Vec<Change>) {
    for (key, what) in &info.unsupported {
        changes.push(Change::Event {
            svc: obj.clone(),
            warning: true,
            reason: "UnsupportedAnnotation",
            note: format!(
                "{key} is kube-vip's annotation for {what}, which vipd does not implement: it is ignored"
            ),
        });
    }
}

/// The leader's part: every served Service's addresses, as changes.
fn assign(s: &Snapshot, mem: &mut Memory, now: Instant, changes: &mut Vec<Change>) {
    let served_infos: Vec<&SvcInfo> = s.served.iter().map(|(_, i)| i).collect();
    // Pool picks of recent passes whose annotation is not visible yet.
    mem.recent_picks.retain(|k, (ips, at)| {
        now.duration_since(*at) < RECENT_PICK
            && served_infos
                .iter()
                .any(|i| i.key == *k && i.requested.as_deref() != Some(join(ips).as_str()))
    });
    let recent: allocate::Recent = mem
        .recent_picks
        .iter()
        .map(|(k, (ips, _))| (k.clone(), ips.clone()))
        .collect();
    let decisions = allocate(&served_infos, s.pools, s.guard, &recent);
    let mut now_served = BTreeMap::new();
    mem.pending_reasons.clear();
    for (obj, info) in s.served {
        unsupported(obj, info, changes);
        let Some(decision) = decisions.get(&info.key) else {
            continue;
        };
        match decision {
            Ok(a) => {
                mem.last_problem.remove(&info.key);
                now_served.insert(info.key.clone(), a.ips.clone());
                let joined = join(&a.ips);
                let mut set = Vec::new();
                if matches!(a.origin, Origin::Pool(_))
                    && info.requested.as_deref() != Some(joined.as_str())
                {
                    set.push((keys::LOADBALANCER_IPS, Some(joined.clone())));
                    if mem
                        .recent_picks
                        .get(&info.key)
                        .is_none_or(|(ips, _)| *ips != a.ips)
                    {
                        mem.recent_picks
                            .insert(info.key.clone(), (a.ips.clone(), now));
                    }
                }
                // What vipd writes to the status is recorded as vipd's:
                // only such a status is kept on its own (see allocate).
                if info.assigned != a.ips {
                    set.push((keys::ASSIGNED, Some(joined.clone())));
                }
                // The pool it came from, for vipctl's POOL column.
                let pool = match &a.origin {
                    Origin::Pool(k) => Some(k.clone()),
                    o if own_pool_pick(info, o, &a.ips) => info.pool.clone(),
                    _ => None,
                };
                if pool != info.pool {
                    set.push((keys::POOL, pool));
                }
                if !set.is_empty() {
                    changes.push(Change::Annotations {
                        svc: obj.clone(),
                        set,
                    });
                }
                let desired: Ingress = a.ips.iter().map(|ip| (*ip, info.ports.clone())).collect();
                let current = current_ingress(obj);
                if current != desired && !a.replaced.is_empty() {
                    let note = format!(
                        "status.loadBalancer.ingress held {} which vipd did not assign and no pool contains (left by another controller, K3s ServiceLB perhaps): replaced by {joined}",
                        join(&a.replaced)
                    );
                    info!(service = %info.key, "{note}");
                    changes.push(Change::Event {
                        svc: obj.clone(),
                        warning: true,
                        reason: "StaleStatusReplaced",
                        note,
                    });
                }
                let note = format!(
                    "assigned {joined} ({})",
                    origin_text(&a.origin, info, &a.ips)
                );
                let mut cond = condition(
                    s,
                    info,
                    conditions::ASSIGNED,
                    true,
                    "AddressAssigned",
                    &note,
                );
                // Unchanged addresses: a reworded origin is no news.
                if current == desired
                    && info
                        .conditions
                        .get(conditions::ASSIGNED)
                        .is_some_and(|c| c.status && c.reason == "AddressAssigned")
                {
                    cond = None;
                }
                if current != desired {
                    info!(service = %info.key, addresses = %joined, "{note}");
                    changes.push(Change::Status {
                        svc: obj.clone(),
                        ingress: Some(desired),
                        conditions: cond.into_iter().collect(),
                    });
                    changes.push(Change::Event {
                        svc: obj.clone(),
                        warning: false,
                        reason: "AddressAssigned",
                        note,
                    });
                } else {
                    status_change(changes, obj, cond);
                }
            }
            Err(p) => {
                *mem.pending_reasons
                    .entry(p.reason().to_string())
                    .or_default() += 1;
                let msg = p.message();
                if mem.last_problem.get(&info.key) != Some(&msg) {
                    warn!(service = %info.key, reason = p.reason(), "{msg}");
                    mem.last_problem.insert(info.key.clone(), msg.clone());
                }
                let mut conds: Vec<(&'static str, Condition)> = Vec::new();
                conds.extend(condition(
                    s,
                    info,
                    conditions::ASSIGNED,
                    false,
                    p.reason(),
                    &msg,
                ));
                conds.extend(condition(
                    s,
                    info,
                    conditions::ANNOUNCED,
                    false,
                    "NotAssigned",
                    &format!("no address is assigned (see {})", conditions::ASSIGNED),
                ));
                let clear = !current_ingress(obj).is_empty();
                if clear || !conds.is_empty() {
                    changes.push(Change::Status {
                        svc: obj.clone(),
                        ingress: clear.then(Vec::new),
                        conditions: conds,
                    });
                }
                let mut unset = Vec::new();
                if info.vip_host.is_some() {
                    unset.push((keys::VIP_HOST, None));
                }
                if !info.assigned.is_empty() {
                    unset.push((keys::ASSIGNED, None));
                }
                if !unset.is_empty() {
                    changes.push(Change::Annotations {
                        svc: obj.clone(),
                        set: unset,
                    });
                }
                changes.push(Change::Event {
                    svc: obj.clone(),
                    warning: true,
                    reason: p.reason(),
                    note: msg,
                });
            }
        }
    }
    // Released: served before, still there, no longer served (not a
    // LoadBalancer any more, ignored, another class).
    let existing: HashSet<&SvcKey> = s.infos.iter().map(|(_, i)| &i.key).collect();
    for (key, ips) in &mem.served_before {
        if now_served.contains_key(key) {
            continue;
        }
        if let Some((obj, _)) = s.infos.iter().find(|(_, i)| i.key == *key) {
            let joined = join(ips);
            info!(service = %key, addresses = %joined, "released");
            changes.push(Change::Event {
                svc: obj.clone(),
                warning: false,
                reason: "AddressReleased",
                note: format!("released {joined}: the Service is no longer served by vipd"),
            });
        } else if !existing.contains(key) {
            info!(service = %key, "deleted: its addresses are released");
        }
    }
    mem.last_problem.retain(|k, _| existing.contains(k));
    mem.served_before = now_served;
}

#[cfg(test)]
mod tests;
