//! Writes to Services: annotations, `status.loadBalancer.ingress` with
//! vipd's conditions, Events. One request per Service and pass where it
//! can be (the annotations ride in the status patch), many at once
//! (bounded), each a patch, never a read-modify-write, so they cannot conflict with other writers: the
//! status is a strategic merge patch, which merges `status.conditions` by
//! type (the leader writes `vipd.dev/AddressAssigned`, the announcing node
//! `vipd.dev/Announced`, neither removes the other's nor anybody else's). A write identical to one made in
//! the last seconds is skipped: the caches may not have caught up yet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::model::{Condition, Ingress, Svc, SvcInfo, SvcKey};
use super::write_queue::WriteQueue;
use crate::events::Events;

/// How many writes are in flight at once.
const CONCURRENCY: usize = 32;
/// How long an identical write is considered done.
const RECENT: Duration = Duration::from_secs(3);

/// One change to make.
pub enum Change {
    /// Set (Some) or remove (None) annotations.
    Annotations { svc: Svc, set: Annotations },
    /// `status.loadBalancer.ingress` (when Some) and conditions, in one write.
    Status {
        svc: Svc,
        ingress: Option<Ingress>,
        conditions: Vec<(&'static str, Condition)>,
    },
    Event {
        svc: Svc,
        warning: bool,
        reason: &'static str,
        note: String,
    },
}

/// Sends a pass's changes without holding the pass up: a task drains the
/// [`WriteQueue`], at most `CONCURRENCY` Services at once.
pub struct Writer {
    shared: Arc<Shared>,
    queue: Arc<Mutex<WriteQueue<Request>>>,
    wake: Arc<Notify>,
    drain: tokio::task::JoinHandle<()>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

impl Writer {
    pub fn new(client: Client, events: Arc<Events>) -> Writer {
        let shared = Arc::new(Shared {
            client,
            events,
            recent: Mutex::new(HashMap::new()),
            failures: Default::default(),
            failures_by: Default::default(),
            apart: AtomicBool::new(false),
            retry: Arc::new(Notify::new()),
        });
        let queue = Arc::new(Mutex::new(WriteQueue::default()));
        let wake = Arc::new(Notify::new());
        let drain = tokio::spawn(drain(shared.clone(), queue.clone(), wake.clone()));
        Writer {
            shared,
            queue,
            wake,
            drain,
        }
    }

    /// Queues a pass's changes (Events are published at once); failures
    /// are logged, and the next pass, which finds the caches still
    /// lacking them, writes them again.
    pub fn apply(&self, changes: Vec<Change>) {
        // Forget old writes even when there is nothing to write (after a
        // burst of deletions, say), so the map never outlives its purpose.
        self.shared
            .recent
            .lock()
            .expect("not poisoned")
            .retain(|_, (_, at)| at.elapsed() < RECENT);
        let fold = !self.shared.apart.load(Ordering::Relaxed);
        let (writes, events) = requests(changes, fold);
        for e in events {
            if let Change::Event {
                svc,
                warning,
                reason,
                note,
            } = e
            {
                let reference = svc.object_ref();
                self.shared
                    .events
                    .publish(&reference, warning, reason, note);
            }
        }
        let writes = writes.into_iter().map(|r| (r.svc().key.clone(), r));
        self.queue.lock().expect("not poisoned").replace(writes);
        self.wake.notify_one();
    }

    /// Notified when a write failed (other than to a Service already
    /// gone): the caches still lack it, and a pass writes it again.
    pub fn retry_wanted(&self) -> Arc<Notify> {
        self.shared.retry.clone()
    }

    /// Writes that failed so far (other than to Services already gone).
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Failed writes per Service: (namespace, name, what, count).
    pub fn failures_by_service(&self) -> Vec<(String, String, String, u64)> {
        self.shared
            .failures_by
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|((k, what), n)| (k.namespace.clone(), k.name.clone(), what.clone(), *n))
            .collect()
    }

    /// Forgets the counts of Services no longer in `live`.
    pub fn forget_absent(&self, live: &[Svc]) {
        let keys: std::collections::HashSet<&SvcKey> = live.iter().map(|s| &s.key).collect();
        self.shared
            .failures_by
            .lock()
            .expect("not poisoned")
            .retain(|(k, _), _| keys.contains(k));
    }
}

/// Sends what the queue holds, a Service's requests one after the other.
async fn drain(shared: Arc<Shared>, queue: Arc<Mutex<WriteQueue<Request>>>, wake: Arc<Notify>) {
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        while let Some((key, requests)) = queue.lock().expect("not poisoned").next(CONCURRENCY) {
            let shared = shared.clone();
            running.push(async move {
                for r in requests {
                    shared.send(r).await;
                }
                key
            });
        }
        tokio::select! {
            Some(key) = running.next(), if !running.is_empty() => {
                queue.lock().expect("not poisoned").done(&key);
            }
            _ = wake.notified() => {}
        }
    }
}

/// What the drain task and the pass share.
struct Shared {
    client: Client,
    events: Arc<Events>,
    recent: Mutex<HashMap<(SvcKey, String), (String, Instant)>>,
    failures: std::sync::atomic::AtomicU64,
    /// Failed writes per Service and what failed (kube-vip's
    /// `kube_vip_service_reconcile_errors_total`).
    failures_by: Mutex<std::collections::BTreeMap<(SvcKey, String), u64>>,
    /// Told of every failure (see `Writer::retry_wanted`).
    retry: Arc<Notify>,
    /// The API server dropped annotations sent with a status write: send
    /// them apart.
    apart: AtomicBool,
}

impl Shared {
    /// True if this exact write was made recently (and records it if not).
    fn seen_recently(&self, key: &SvcKey, kind: &str, value: &str) -> bool {
        let mut recent = self.recent.lock().expect("not poisoned");
        let now = Instant::now();
        recent.retain(|_, (_, at)| now.duration_since(*at) < RECENT);
        let k = (key.clone(), kind.to_string());
        if recent.get(&k).is_some_and(|(v, _)| v == value) {
            return true;
        }
        recent.insert(k, (value.to_string(), now));
        false
    }

    fn failed(&self, key: &SvcKey, what: &str, e: kube::Error) {
        self.forget(key, what);
        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
            self.retry.notify_one();
            self.failures.fetch_add(1, Ordering::Relaxed);
            *self
                .failures_by
                .lock()
                .expect("not poisoned")
                .entry((key.clone(), what.to_string()))
                .or_default() += 1;
        }
        log_write_error(key, what, e);
    }

    fn forget(&self, key: &SvcKey, kind: &str) {
        self.recent
            .lock()
            .expect("not poisoned")
            .remove(&(key.clone(), kind.to_string()));
    }

    async fn send(&self, request: Request) {
        match request {
            Request::Annotations { svc, set } => self.patch_annotations(&svc, &set).await,
            Request::Status {
                svc,
                set,
                ingress,
                conditions,
            } => {
                let key = svc.key.clone();
                let mut body = json!({ "status": status_json(ingress.as_ref(), &conditions) });
                if !set.is_empty() {
                    body["metadata"] = json!({ "annotations": annotations_json(&set) });
                }
                if self.seen_recently(&key, "status", &body.to_string()) {
                    return;
                }
                let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
                match api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Strategic(&body))
                    .await
                {
                    Ok(written) if !landed(&written, &set) => {
                        // An API server that keeps metadata out of status
                        // writes: annotations apart, now and from now on.
                        if !self.apart.swap(true, Ordering::Relaxed) {
                            warn!("the API server ignores annotations in a Service's status write: writing them apart from now on");
                        }
                        self.patch_annotations(&svc, &set).await;
                    }
                    Ok(_) => {}
                    Err(e) => self.failed(&key, "status", e),
                }
            }
        }
    }

    async fn patch_annotations(&self, svc: &SvcInfo, set: &Annotations) {
        let key = svc.key.clone();
        let body = json!({ "metadata": { "annotations": annotations_json(set) } });
        if self.seen_recently(&key, "annotations", &body.to_string()) {
            return;
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        if let Err(e) = api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            self.failed(&key, "annotations", e);
        }
    }
}

/// Annotations to set (Some) or remove (None).
pub type Annotations = Vec<(&'static str, Option<String>)>;

/// One request to the API server.
#[derive(Debug)]
enum Request {
    /// A metadata patch.
    Annotations { svc: Svc, set: Annotations },
    /// A status patch, carrying the Service's annotation changes of the
    /// same pass when there are any: the Service status strategy keeps a
    /// status write's metadata (it resets only the spec), so a new
    /// Service's assignment and announcement are one write. A response
    /// without them means an API server that drops them: then they are
    /// written apart (`Writer::apart`).
    Status {
        svc: Svc,
        set: Annotations,
        ingress: Option<Ingress>,
        conditions: Vec<(&'static str, Condition)>,
    },
}

impl Request {
    fn svc(&self) -> &SvcInfo {
        match self {
            Request::Annotations { svc, .. } | Request::Status { svc, .. } => svc,
        }
    }
}

/// The requests for a pass's changes: one per Service and kind
/// ([`coalesce`]), and with `fold` a Service's annotations in its status
/// write when it has one; and the pass's Events.
fn requests(changes: Vec<Change>, fold: bool) -> (Vec<Request>, Vec<Change>) {
    let changes = coalesce(changes);
    let mut folded: HashMap<SvcKey, Annotations> = HashMap::new();
    if fold {
        let with_status: std::collections::HashSet<SvcKey> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Status { svc, .. } => Some(svc.key.clone()),
                _ => None,
            })
            .collect();
        for c in &changes {
            if let Change::Annotations { svc, set } = c {
                let key = svc.key.clone();
                if with_status.contains(&key) {
                    folded.insert(key, set.clone());
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut events = Vec::new();
    for c in changes {
        match c {
            Change::Annotations { svc, set } => {
                if !folded.contains_key(&svc.key.clone()) {
                    out.push(Request::Annotations { svc, set });
                }
            }
            Change::Status {
                svc,
                ingress,
                conditions,
            } => out.push(Request::Status {
                set: folded.remove(&svc.key.clone()).unwrap_or_default(),
                svc,
                ingress,
                conditions,
            }),
            e @ Change::Event { .. } => events.push(e),
        }
    }
    (out, events)
}

/// Whether `written` (an API server's answer) carries every annotation of `set`.
fn landed(written: &Service, set: &Annotations) -> bool {
    let have = written.metadata.annotations.as_ref();
    set.iter()
        .all(|(k, v)| have.and_then(|a| a.get(*k)) == v.as_ref())
}

fn annotations_json(set: &Annotations) -> Value {
    let mut ann = serde_json::Map::new();
    for (k, v) in set {
        ann.insert(
            k.to_string(),
            v.clone().map(Value::String).unwrap_or(Value::Null),
        );
    }
    Value::Object(ann)
}

fn status_json(ingress: Option<&Ingress>, conditions: &[(&'static str, Condition)]) -> Value {
    let mut status = serde_json::Map::new();
    if let Some(ingress) = ingress {
        status.insert(
            "loadBalancer".into(),
            json!({ "ingress": ingress_json(ingress) }),
        );
    }
    if !conditions.is_empty() {
        let cs: Vec<Value> = conditions
            .iter()
            .map(|(t, c)| {
                json!({
                    "type": t,
                    "status": if c.status { "True" } else { "False" },
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": c.last_transition,
                })
            })
            .collect();
        status.insert("conditions".into(), Value::Array(cs));
    }
    Value::Object(status)
}

/// One write per Service and kind: a pass's annotation changes to one
/// Service become one patch (where two set one key, the later wins), and
/// its status changes one (the later ingress wins, conditions merge by
/// type, the later wins). Each takes the place of the first it merges;
/// Events stay as they are. A new Service's assignment and its
/// announcement are then two writes instead of four.
pub fn coalesce(changes: Vec<Change>) -> Vec<Change> {
    use std::collections::hash_map::Entry;
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    // (Service, is a status change) -> its place in `out`.
    let mut at: HashMap<(SvcKey, bool), usize> = HashMap::new();
    for c in changes {
        let slot = match &c {
            Change::Annotations { svc, .. } => (svc.key.clone(), false),
            Change::Status { svc, .. } => (svc.key.clone(), true),
            Change::Event { .. } => {
                out.push(c);
                continue;
            }
        };
        let i = match at.entry(slot) {
            Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(c);
                continue;
            }
            Entry::Occupied(e) => *e.get(),
        };
        match (&mut out[i], c) {
            (Change::Annotations { set: into, .. }, Change::Annotations { set, .. }) => {
                merge_by_key(into, set)
            }
            (
                Change::Status {
                    ingress: into_ingress,
                    conditions: into,
                    ..
                },
                Change::Status {
                    ingress,
                    conditions,
                    ..
                },
            ) => {
                if ingress.is_some() {
                    *into_ingress = ingress;
                }
                merge_by_key(into, conditions);
            }
            _ => unreachable!("a slot holds changes of its own kind"),
        }
    }
    out
}

/// `more` into `into`: a later value for a key replaces the earlier one.
fn merge_by_key<V>(into: &mut Vec<(&'static str, V)>, more: Vec<(&'static str, V)>) {
    for (k, v) in more {
        match into.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => into.push((k, v)),
        }
    }
}

fn ingress_json(ingress: &Ingress) -> Vec<Value> {
    ingress
        .iter()
        .map(|(ip, ports)| {
            let ports: Vec<Value> = ports
                .iter()
                .map(|(p, proto)| json!({ "port": p, "protocol": proto }))
                .collect();
            if ports.is_empty() {
                json!({ "ip": ip.to_string() })
            } else {
                json!({ "ip": ip.to_string(), "ports": ports })
            }
        })
        .collect()
}

fn log_write_error(key: &SvcKey, what: &str, e: kube::Error) {
    match &e {
        kube::Error::Api(s) if s.code == 404 => {
            debug!(service = %key, "gone before its {what} was written")
        }
        _ => warn!(service = %key, error = %e, "could not write {what}; retrying"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Svc {
        Arc::new(SvcInfo {
            key: SvcKey {
                namespace: "d".into(),
                name: name.into(),
            },
            ..Default::default()
        })
    }

    fn cond(reason: &str) -> Condition {
        Condition {
            status: true,
            reason: reason.into(),
            ..Default::default()
        }
    }

    /// What each write would be: (service, kind, what it sets).
    fn writes(changes: &[Change]) -> Vec<(String, &'static str, String)> {
        changes
            .iter()
            .map(|c| match c {
                Change::Annotations { svc, set } => {
                    (svc.key.clone().name, "annotations", format!("{set:?}"))
                }
                Change::Status {
                    svc,
                    ingress,
                    conditions,
                } => {
                    let conds: Vec<String> = conditions
                        .iter()
                        .map(|(t, c)| format!("{t}={}", c.reason))
                        .collect();
                    (
                        svc.key.clone().name,
                        "status",
                        format!("{ingress:?} {}", conds.join(",")),
                    )
                }
                Change::Event { svc, reason, .. } => {
                    (svc.key.clone().name, "event", reason.to_string())
                }
            })
            .collect()
    }

    /// A Service with both kinds of change: one status request carrying
    /// the annotations; one with annotations only: a metadata patch; with
    /// folding off (an API server that dropped them once): apart.
    #[test]
    fn annotations_ride_in_the_status_write_of_the_same_service() {
        let (a, b) = (svc("a"), svc("b"));
        let changes = || {
            vec![
                Change::Annotations {
                    svc: a.clone(),
                    set: vec![("kube-vip.io/vipHost", Some("n1".into()))],
                },
                Change::Annotations {
                    svc: b.clone(),
                    set: vec![("kube-vip.io/vipHost", None)],
                },
                Change::Status {
                    svc: a.clone(),
                    ingress: None,
                    conditions: vec![("Announced", cond("AddressAnnounced"))],
                },
            ]
        };
        let kinds = |rs: &[Request]| -> Vec<(String, &'static str, usize)> {
            rs.iter()
                .map(|r| match r {
                    Request::Annotations { svc, set } => {
                        (svc.key.clone().name, "annotations", set.len())
                    }
                    Request::Status { svc, set, .. } => (svc.key.clone().name, "status", set.len()),
                })
                .collect()
        };
        assert_eq!(
            kinds(&requests(changes(), true).0),
            vec![("b".into(), "annotations", 1), ("a".into(), "status", 1)]
        );
        assert_eq!(
            kinds(&requests(changes(), false).0),
            vec![
                ("a".into(), "annotations", 1),
                ("b".into(), "annotations", 1),
                ("a".into(), "status", 0)
            ]
        );
    }

    #[test]
    fn annotations_landed_only_when_the_answer_carries_each() {
        let mut s = Service::default();
        s.metadata.annotations = Some([("k".to_string(), "v".to_string())].into());
        assert!(landed(&s, &vec![("k", Some("v".into()))]));
        assert!(landed(&s, &vec![("gone", None)]));
        assert!(!landed(&s, &vec![("k", Some("w".into()))]));
        assert!(!landed(&s, &vec![("k", None)]));
        assert!(!landed(&Service::default(), &vec![("k", Some("v".into()))]));
        assert!(landed(&Service::default(), &vec![]));
    }

    #[test]
    fn one_annotation_patch_and_one_status_patch_per_service() {
        let (a, b) = (svc("a"), svc("b"));
        let ip: std::net::IpAddr = "192.0.2.160".parse().unwrap();
        let changes = vec![
            Change::Annotations {
                svc: a.clone(),
                set: vec![("vipd.dev/assigned", Some("192.0.2.160".into()))],
            },
            Change::Status {
                svc: a.clone(),
                ingress: Some(vec![(ip, vec![])]),
                conditions: vec![("Assigned", cond("AddressAssigned"))],
            },
            Change::Event {
                svc: a.clone(),
                warning: false,
                reason: "AddressAssigned",
                note: String::new(),
            },
            Change::Annotations {
                svc: b.clone(),
                set: vec![("kube-vip.io/vipHost", None)],
            },
            // The announcement, made later in the pass.
            Change::Annotations {
                svc: a.clone(),
                set: vec![
                    ("kube-vip.io/vipHost", Some("n1".into())),
                    ("vipd.dev/assigned", Some("192.0.2.161".into())),
                ],
            },
            Change::Status {
                svc: a.clone(),
                ingress: None,
                conditions: vec![
                    ("Announced", cond("AddressAnnounced")),
                    ("Assigned", cond("Reworded")),
                ],
            },
        ];
        assert_eq!(
            writes(&coalesce(changes)),
            vec![
                (
                    "a".into(),
                    "annotations",
                    r#"[("vipd.dev/assigned", Some("192.0.2.161")), ("kube-vip.io/vipHost", Some("n1"))]"#.into()
                ),
                (
                    "a".into(),
                    "status",
                    "Some([(192.0.2.160, [])]) Assigned=Reworded,Announced=AddressAnnounced".into()
                ),
                ("a".into(), "event", "AddressAssigned".into()),
                (
                    "b".into(),
                    "annotations",
                    r#"[("kube-vip.io/vipHost", None)]"#.into()
                ),
            ]
        );
    }
}
