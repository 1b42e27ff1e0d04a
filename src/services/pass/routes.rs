//! Where and how an address is announced: its interface and, in BGP
//! mode, its route's communities and local preference.

use std::collections::BTreeMap;

use super::Snapshot;
use crate::services::eligibility::AddressPlan;
use crate::services::model::{keys, Svc, SvcKey};
use crate::services::writer::Change;

/// BGP attributes of an address: its first Service's annotations, else
/// its pool's, else vipd's own settings. A bad annotation is an Event.
pub(super) fn route_for(
    s: &Snapshot,
    plan: &AddressPlan,
    by_key: &BTreeMap<&SvcKey, &Svc>,
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
    let Some(&obj) = plan.users.first().and_then(|k| by_key.get(k)) else {
        return attrs;
    };
    let info = obj;
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
pub(super) fn interface_for(s: &Snapshot, plan: &AddressPlan) -> String {
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
