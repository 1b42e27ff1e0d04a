//! The judgement behind `vipctl status` (pure): from what was gathered,
//! every row's state and every problem, which make `vipctl` exit non-zero.
//! Tested from recorded inputs.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::instance;
use crate::services::model::keys;
use crate::status::StatusDoc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VipRow {
    pub vip: String,
    /// The Lease holder (or Raft leader).
    pub leader: Option<String>,
    /// Nodes that really have the address.
    pub held_by: Vec<String>,
    /// Seconds since the holder acquired the Lease.
    pub moved_seconds_ago: Option<f64>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<String>,
    /// `kube-vip.io/vipHost`.
    pub announced_by: Option<String>,
    /// Nodes that really have the addresses.
    pub held_by: Vec<String>,
    pub pool: Option<String>,
    /// Ready, Pending, Unannounced or Conflict.
    pub state: String,
    pub last_event: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceRow {
    pub node: String,
    /// Its record is fresh (renewed within `instance::STALE_AFTER`), or its
    /// status port answered.
    pub alive: bool,
    /// `alive` (its status port answered), `unreachable` (a fresh record
    /// but the status port does not answer: the record's facts are used),
    /// or `gone` (no fresh record, no answer).
    #[serde(default)]
    pub status: String,
    pub ready: Option<bool>,
    pub held: Vec<String>,
    /// VIPs on the node that it does not claim (by hand, or a split brain).
    pub stray: Vec<String>,
    pub version: Option<String>,
    pub seconds_since_seen: Option<f64>,
    pub bgp_peers: Vec<String>,
    /// Whether the live `/status` answered (else the record was used).
    pub live: bool,
    /// Announces by BGP: holding an address together with others is normal.
    #[serde(default)]
    pub bgp: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub control_plane: Vec<VipRow>,
    pub services: Vec<ServiceRow>,
    pub instances: Vec<InstanceRow>,
    /// What is wrong, in words; empty when all is well.
    pub problems: Vec<String>,
}

fn seconds_since(now: Timestamp, t: &Timestamp) -> f64 {
    (now.as_millisecond() - t.as_millisecond()) as f64 / 1000.0
}

/// Why a `/status` was not read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unanswered {
    /// The node refused the connection: nothing listens on the port, so
    /// vipd is not running there (the node is up).
    pub refused: bool,
    pub why: String,
}

/// Everything `vipctl status` read, as it read it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Gathered {
    pub now: Timestamp,
    /// vipd's instance records.
    pub records: Vec<Lease>,
    /// Each record's live `/status` (by record name): the document, or why
    /// it could not be read. Records without a status URL have none.
    pub live: BTreeMap<String, Result<StatusDoc, Unanswered>>,
    /// The control-plane Lease.
    pub cp_lease: Option<Lease>,
    pub services: Vec<Service>,
    pub events: Vec<Event>,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// The report from what was gathered.
pub fn judge(g: &Gathered) -> Report {
    let records = &g.records;

    // Instances: the record, refined by the live /status where reachable.
    let mut instances = Vec::new();
    let mut cp_vips: BTreeSet<String> = BTreeSet::new();
    // Nodes that say they lead a Raft election, and since when.
    let mut raft_leaders: Vec<(String, std::time::SystemTime)> = Vec::new();
    for r in records {
        let ann = r.metadata.annotations.clone().unwrap_or_default();
        let spec = r.spec.clone().unwrap_or_default();
        let node = spec.holder_identity.clone().unwrap_or_default();
        let seen = spec.renew_time.as_ref().map(|t| seconds_since(g.now, &t.0));
        let alive = seen.is_some_and(|s| s < f64::from(instance::STALE_AFTER));
        let mut row = InstanceRow {
            node,
            alive,
            status: if alive { "alive" } else { "gone" }.into(),
            ready: ann.get(instance::READY).map(|v| v == "true"),
            held: ann.get(instance::HELD).map(|v| list(v)).unwrap_or_default(),
            stray: ann
                .get(instance::STRAY)
                .map(|v| list(v))
                .unwrap_or_default(),
            version: ann.get(instance::VERSION).cloned(),
            seconds_since_seen: seen,
            bgp_peers: ann
                .get(instance::BGP_PEERS)
                .and_then(|v| serde_json::from_str::<Vec<crate::status::PeerDoc>>(v).ok())
                .map(|ps| ps.iter().map(crate::status::PeerDoc::summary).collect())
                .unwrap_or_default(),
            live: false,
            bgp: ann.get(instance::MODE).is_some_and(|m| m == "bgp"),
        };
        if let Some(v) = ann.get(instance::CP_VIPS) {
            cp_vips.extend(list(v));
        }
        let name = r.metadata.name.clone().unwrap_or_default();
        match g.live.get(&name) {
            Some(Ok(doc)) => {
                if let Some(e) = doc
                    .elections
                    .iter()
                    .find(|e| e.lease == crate::status::RAFT_ELECTION && e.leading)
                {
                    raft_leaders.push((row.node.clone(), e.since));
                }
                row.live = true;
                row.alive = true;
                row.status = "alive".into();
                row.ready = Some(doc.ready);
                row.held = doc
                    .addresses
                    .iter()
                    .map(|h| h.address.to_string())
                    .collect();
                row.stray = doc.stray_addresses.iter().map(|a| a.to_string()).collect();
                row.bgp_peers = doc
                    .bgp_peers
                    .iter()
                    .map(crate::status::PeerDoc::summary)
                    .collect();
            }
            // Its status port does not answer from here (a firewall, a
            // bind address only the node reaches, or a dead node): a fresh
            // record still says what it holds (used only where no node
            // that answers says otherwise). Refused: vipd is not running.
            Some(Err(u)) if row.alive && !u.refused => row.status = "unreachable".into(),
            Some(Err(_)) => {
                row.alive = false;
                row.status = "gone".into();
                row.held.clear();
                row.stray.clear();
            }
            None => {}
        }
        instances.push(row);
    }
    instances.sort_by(|a, b| a.node.cmp(&b.node));
    // Several holders are a conflict unless all of them announce by BGP.
    let conflict = |holders: &[String]| {
        holders.len() > 1
            && !holders
                .iter()
                .all(|h| instances.iter().any(|i| i.node == *h && i.bgp))
    };
    // Who holds an address: the nodes whose live status says so; only
    // when none does, the fresh records of nodes that do not answer.
    let holders_of = |addr: &str| -> Vec<String> {
        let holding =
            |i: &&InstanceRow| i.alive && i.held.iter().chain(i.stray.iter()).any(|h| h == addr);
        let live: Vec<String> = instances
            .iter()
            .filter(|i| i.live)
            .filter(holding)
            .map(|i| i.node.clone())
            .collect();
        if !live.is_empty() {
            return live;
        }
        instances
            .iter()
            .filter(|i| !i.live)
            .filter(holding)
            .map(|i| i.node.clone())
            .collect()
    };

    let mut report = Report::default();
    // The control-plane VIP.
    let (leader, moved) = match g.cp_lease.as_ref().and_then(|l| l.spec.clone()) {
        Some(s) => (
            s.holder_identity.filter(|h| !h.is_empty()),
            s.acquire_time.as_ref().map(|t| seconds_since(g.now, &t.0)),
        ),
        // No Lease: Raft mode, where the leader says so itself (the newest
        // claim, should an old leader not have noticed yet).
        None => match raft_leaders.iter().max_by_key(|(_, since)| *since) {
            Some((node, since)) => (
                Some(node.clone()),
                Timestamp::try_from(*since)
                    .ok()
                    .map(|t| seconds_since(g.now, &t)),
            ),
            None => (None, None),
        },
    };
    for vip in &cp_vips {
        let held_by = holders_of(vip);
        let ok = !held_by.is_empty()
            && !conflict(&held_by)
            && leader.as_ref().is_none_or(|l| held_by.contains(l));
        if held_by.is_empty() {
            report
                .problems
                .push(format!("control-plane VIP {vip} is held by no node"));
        } else if conflict(&held_by) {
            report.problems.push(format!(
                "control-plane VIP {vip} is held by {} nodes: {}",
                held_by.len(),
                held_by.join(", ")
            ));
        }
        report.control_plane.push(VipRow {
            vip: vip.clone(),
            leader: leader.clone(),
            held_by,
            moved_seconds_ago: moved,
            ok,
        });
    }

    // Services.
    let mut last_events: BTreeMap<(String, String), (Timestamp, String)> = BTreeMap::new();
    for e in &g.events {
        if e.reporting_controller.as_deref() != Some("vipd") {
            continue;
        }
        let Some(r) = &e.regarding else { continue };
        if r.kind.as_deref() != Some("Service") {
            continue;
        }
        let key = (
            r.namespace.clone().unwrap_or_default(),
            r.name.clone().unwrap_or_default(),
        );
        let at = e
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or_default();
        let text = format!(
            "{}: {}",
            e.reason.clone().unwrap_or_default(),
            e.note.clone().unwrap_or_default()
        );
        match last_events.get(&key) {
            Some((t, _)) if *t >= at => {}
            _ => {
                last_events.insert(key, (at, text));
            }
        }
    }
    for s in &g.services {
        let spec = s.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() != Some("LoadBalancer") {
            continue;
        }
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        if ann.get(keys::IGNORE).is_some_and(|v| v == "true") {
            continue;
        }
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        let ours = ann.contains_key(keys::VIP_HOST)
            || ann.contains_key(keys::LOADBALANCER_IPS)
            || last_events.contains_key(&(ns.clone(), name.clone()));
        if !ours {
            continue;
        }
        let addresses: Vec<String> = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|ing| ing.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        let mut held_by: BTreeSet<String> = BTreeSet::new();
        let mut state = "Ready";
        for a in &addresses {
            let h = holders_of(a);
            if h.is_empty() {
                state = "Unannounced";
            } else if conflict(&h) {
                state = "Conflict";
            }
            held_by.extend(h);
        }
        if addresses.is_empty() {
            state = "Pending";
        }
        let key = format!("{ns}/{name}");
        let last_event = last_events
            .get(&(ns.clone(), name.clone()))
            .map(|(_, t)| t.clone());
        match state {
            "Pending" => report.problems.push(match &last_event {
                Some(why) => format!("Service {key} is pending: {why}"),
                None => format!("Service {key} is pending"),
            }),
            "Unannounced" => report
                .problems
                .push(format!("Service {key}: an address is held by no node")),
            "Conflict" => report
                .problems
                .push(format!("Service {key}: an address is held by two nodes")),
            _ => {}
        }
        report.services.push(ServiceRow {
            last_event,
            namespace: ns,
            name,
            addresses,
            announced_by: ann.get(keys::VIP_HOST).cloned(),
            held_by: held_by.into_iter().collect(),
            pool: ann.get(keys::POOL).cloned(),
            state: state.to_string(),
        });
    }
    report
        .services
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for i in &instances {
        if !i.stray.is_empty() {
            report.problems.push(format!(
                "{} has {} on its interface without holding it",
                i.node,
                i.stray.join(",")
            ));
        }
        if !i.alive {
            report.problems.push(format!(
                "vipd on {} is not answering (or has not reported for {} s)",
                i.node,
                instance::STALE_AFTER
            ));
        } else if i.status == "unreachable" {
            report.problems.push(format!(
                "vipd on {}: its status port does not answer from here; its record ({:.0} s old) is shown",
                i.node,
                i.seconds_since_seen.unwrap_or_default()
            ));
        } else if i.ready == Some(false) {
            report
                .problems
                .push(format!("vipd on {} is not ready", i.node));
        }
    }
    report.instances = instances;
    report
}

#[cfg(test)]
mod tests;
