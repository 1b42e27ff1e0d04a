//! kube-vip's metrics, as its dashboards and alerts read them: the names,
//! label names and label values of kube-vip's `pkg/metrics` (v1.2), from
//! vipd's state. Pure: each function turns plain values into rows; the
//! collector in `metrics` encodes them.
//!
//! - `kube_vip_build_info{version,build,node}` 1;
//! - `kube_vip_is_leader{node,lease_name}` and
//!   `kube_vip_leader_election_transitions_total{lease_name}`: the bare
//!   Lease name (`plndr-cp-lock`), never `namespace/name`;
//! - `kube_vip_manager_bgp_session_info{state,peer}`: every session state,
//!   upper-case as GoBGP names them, 1 for the current one, 0 for the
//!   others; `peer` as `address:port`;
//! - `kube_vip_active_services{namespace}`: the Services this node
//!   announces an address of;
//! - `kube_vip_service_reconcile_errors_total{namespace,name,reason}`;
//! - `kube_vip_manager_all_services_events_total{type}`: Service watch
//!   events by type (ADDED, MODIFIED, DELETED);
//! - `kube_vip_service_reconcile_duration_seconds{namespace}` (a histogram,
//!   registered in `metrics`): one pass covers every namespace served, so
//!   `namespace` is the one served (`svc_namespace`) or `all`.
//!
//! Not exported: kube-vip's `kube_vip_service_election_loops`,
//! `_attempts_total` and `_errors_total` count its per-Service restart
//! loops, which vipd does not have.

use std::collections::BTreeMap;

/// Label pairs of one sample.
pub type Labels = Vec<(String, String)>;

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The states kube-vip exports for a BGP session (GoBGP's names).
pub const BGP_STATES: [&str; 6] = [
    "IDLE",
    "CONNECT",
    "ACTIVE",
    "OPENSENT",
    "OPENCONFIRM",
    "ESTABLISHED",
];

/// `namespace/name` -> `name`, as kube-vip labels a Lease.
pub fn bare_lease_name(lease: &str) -> &str {
    lease.rsplit('/').next().unwrap_or(lease)
}

pub fn build_info(version: &str, build: &str, node: &str) -> Vec<(Labels, i64)> {
    vec![(
        l(&[("version", version), ("build", build), ("node", node)]),
        1,
    )]
}

/// (lease, leading) per election.
pub fn is_leader(node: &str, elections: &[(String, bool)]) -> Vec<(Labels, i64)> {
    elections
        .iter()
        .map(|(lease, leading)| {
            (
                l(&[("node", node), ("lease_name", bare_lease_name(lease))]),
                i64::from(*leading),
            )
        })
        .collect()
}

/// (lease, transitions) per election.
pub fn transitions(elections: &[(String, u64)]) -> Vec<(Labels, u64)> {
    elections
        .iter()
        .map(|(lease, n)| (l(&[("lease_name", bare_lease_name(lease))]), *n))
        .collect()
}

/// (address, port, state as vipd names it: `established`) per peer.
pub fn bgp_sessions(peers: &[(String, u16, String)]) -> Vec<(Labels, i64)> {
    let mut out = Vec::new();
    for (address, port, state) in peers {
        let peer = if address.contains(':') {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        };
        let current = state.to_ascii_uppercase();
        for st in BGP_STATES {
            out.push((
                l(&[("state", st), ("peer", &peer)]),
                i64::from(st == current),
            ));
        }
    }
    out
}

/// Services announced here (`namespace/name`), counted per namespace.
pub fn active_services<'a>(services: impl Iterator<Item = &'a str>) -> Vec<(Labels, i64)> {
    let mut by_ns: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for s in services {
        let ns = s.split_once('/').map(|(ns, _)| ns).unwrap_or("");
        by_ns.entry(ns).or_default().insert(s);
    }
    by_ns
        .into_iter()
        .map(|(ns, set)| (l(&[("namespace", ns)]), set.len() as i64))
        .collect()
}

/// (namespace, name, reason, count) per failed write.
pub fn reconcile_errors(failures: &[(String, String, String, u64)]) -> Vec<(Labels, u64)> {
    failures
        .iter()
        .map(|(ns, name, reason, n)| {
            (
                l(&[("namespace", ns), ("name", name), ("reason", reason)]),
                *n,
            )
        })
        .collect()
}

/// (type, count) of Service watch events.
pub fn service_events(counts: &[(&str, u64)]) -> Vec<(Labels, u64)> {
    counts
        .iter()
        .map(|(t, n)| (l(&[("type", t)]), *n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(rows: &[(Labels, i64)]) -> Vec<Vec<&str>> {
        rows.iter()
            .map(|(l, _)| l.iter().map(|(k, _)| k.as_str()).collect())
            .collect()
    }

    /// Label sets as kube-vip's pkg/metrics declares them.
    #[test]
    fn label_names_and_values_are_kube_vips() {
        assert_eq!(
            names(&build_info("0.1.0", "abc", "n1")),
            vec![vec!["version", "build", "node"]]
        );
        let leader = is_leader("n1", &[("vipd-system/plndr-cp-lock".into(), true)]);
        assert_eq!(names(&leader), vec![vec!["node", "lease_name"]]);
        assert_eq!(leader[0].0[1].1, "plndr-cp-lock", "a bare lease name");
        assert_eq!(leader[0].1, 1);
        let t = transitions(&[("kube-system/plndr-svcs-lock".into(), 3)]);
        assert_eq!(
            t[0].0,
            vec![("lease_name".to_string(), "plndr-svcs-lock".to_string())]
        );

        let s = bgp_sessions(&[
            ("192.0.2.1".into(), 179, "established".into()),
            ("2001:db8::1".into(), 1179, "active".into()),
        ]);
        assert_eq!(s.len(), 12, "every state of every peer");
        let value = |peer: &str, st: &str| {
            s.iter()
                .find(|(l, _)| {
                    l.contains(&("peer".into(), peer.into()))
                        && l.contains(&("state".into(), st.into()))
                })
                .map(|(_, v)| *v)
        };
        assert_eq!(value("192.0.2.1:179", "ESTABLISHED"), Some(1));
        assert_eq!(value("192.0.2.1:179", "IDLE"), Some(0));
        assert_eq!(value("[2001:db8::1]:1179", "ACTIVE"), Some(1));
        assert_eq!(names(&s)[0], vec!["state", "peer"]);

        let a = active_services(["web/a", "web/b", "web/a", "db/c"].into_iter());
        assert_eq!(
            a,
            vec![
                (vec![("namespace".into(), "db".into())], 1),
                (vec![("namespace".into(), "web".into())], 2)
            ]
        );
        let e = reconcile_errors(&[("web".into(), "a".into(), "status".into(), 2)]);
        let keys: Vec<&str> = e[0].0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["namespace", "name", "reason"]);
        assert_eq!(service_events(&[("ADDED", 1)])[0].0[0].0, "type");
    }
}
