//! The Services leader's part of a pass: every served Service's
//! addresses ([`allocate`]) as annotation, status (with vipd's conditions)
//! and Event changes, and the releases of Services no longer served.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Instant;

use tracing::{info, warn};

use super::{Memory, Snapshot, RECENT_PICK};
use crate::services::allocate::{self, allocate, join, Origin};
use crate::services::model::{conditions, keys, Condition, Ingress, Svc, SvcInfo, SvcKey};
use crate::services::writer::Change;

/// `info`'s condition `kind` as it should be, when it is not so already
/// (its transition time kept while its status stays).
pub(super) fn condition(
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
pub(super) fn status_change(
    changes: &mut Vec<Change>,
    svc: &Svc,
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
fn unsupported(obj: &Svc, info: &SvcInfo, changes: &mut Vec<Change>) {
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
pub(super) fn assign(s: &Snapshot, mem: &mut Memory, now: Instant, changes: &mut Vec<Change>) {
    let served_infos: Vec<&SvcInfo> = s.served.iter().map(|i| &***i).collect();
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
    for &obj in s.served {
        let info: &SvcInfo = obj;
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
                let current = &obj.ingress;
                if *current != desired && !a.replaced.is_empty() {
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
                if *current == desired
                    && info
                        .conditions
                        .get(conditions::ASSIGNED)
                        .is_some_and(|c| c.status && c.reason == "AddressAssigned")
                {
                    cond = None;
                }
                if *current != desired {
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
                let clear = !obj.ingress.is_empty();
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
    let existing: HashSet<&SvcKey> = s.infos.iter().map(|i| &i.key).collect();
    for (key, ips) in &mem.served_before {
        if now_served.contains_key(key) {
            continue;
        }
        if let Some(obj) = s.infos.iter().find(|i| i.key == *key) {
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
