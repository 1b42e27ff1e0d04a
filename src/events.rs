//! Kubernetes Events vipd publishes: what a user should see on a Service
//! (address assigned, moved, released, every error) and on a node
//! (leadership changes). One recorder; a repeated identical message for the
//! same object is published once.
//!
//! Events are created directly (`events.k8s.io/v1`), without kube's
//! `Recorder`: it keeps every Event it published for six minutes to count
//! series, so a burst of Services leaves megabytes behind. vipd's own
//! de-duplication already keeps repeats off the API server.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;

/// One Event to publish.
#[derive(Debug, Clone)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub note: Option<String>,
}

/// The Event object for `ev` about `object`, reported by vipd on `node`.
fn event_object(ev: &Event, object: &ObjectReference, node: &str) -> K8sEvent {
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut e = K8sEvent {
        action: Some(ev.reason.clone()),
        reason: Some(ev.reason.clone()),
        event_time: Some(MicroTime(now)),
        regarding: Some(object.clone()),
        note: ev.note.clone(),
        reporting_controller: Some("vipd".into()),
        reporting_instance: Some(node.to_string()),
        type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
        ..Default::default()
    };
    e.metadata.namespace = object.namespace.clone();
    e.metadata.name = Some(format!(
        "{}.{:x}",
        object.name.as_deref().unwrap_or("vipd"),
        now.as_nanosecond()
    ));
    e
}
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Events waiting for the API server; beyond this, new ones are dropped
/// (with a log line) rather than held in memory without bound.
const QUEUE: usize = 256;

/// At most one log line about dropped Events this often.
const DROPS_LOGGED_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Events dropped since the last line about them, and when it was logged.
#[derive(Debug, Default)]
struct Drops {
    unlogged: u64,
    logged_at: Option<std::time::Instant>,
}

impl Drops {
    /// One more dropped; the count to log now, if a line is due (the
    /// first drop at once, then one line per `DROPS_LOGGED_EVERY`).
    fn dropped(&mut self, now: std::time::Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|t| now.duration_since(t) < DROPS_LOGGED_EVERY)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

pub struct Events {
    queue: mpsc::Sender<(ObjectReference, Event)>,
    drops: Mutex<Drops>,
    /// Last (kind, reason, note) published per object uid, to publish
    /// changes only; entries of deleted objects are dropped (see
    /// [`Events::forget_absent`]), so it stays as large as the cluster.
    last: Mutex<HashMap<String, (String, String, String)>>,
}

impl Events {
    /// Starts the task that sends Events to the API server, one at a time
    /// and in order. Publishing only queues: a slow or unreachable API
    /// server never holds up an election, an address change or a reconcile.
    pub fn new(client: Client, node: &str) -> Events {
        let node = node.to_string();
        let (queue, mut rx) = mpsc::channel::<(ObjectReference, Event)>(QUEUE);
        tokio::spawn(async move {
            while let Some((object, ev)) = rx.recv().await {
                let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
                let api: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
                let obj = event_object(&ev, &object, &node);
                if let Err(e) = api.create(&PostParams::default(), &obj).await {
                    debug!(error = %e, reason = ev.reason, "could not publish an Event");
                }
            }
        });
        Events {
            queue,
            drops: Mutex::new(Drops::default()),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Queues an Event unless the same reason and note were the last for
    /// `object`.
    pub fn publish(&self, object: &ObjectReference, warning: bool, reason: &str, note: String) {
        let id = object
            .uid
            .clone()
            .unwrap_or_else(|| format!("{:?}/{:?}", object.namespace, object.name));
        {
            let mut last = self.last.lock().expect("not poisoned");
            let kind = object.kind.clone().unwrap_or_default();
            let entry = (kind, reason.to_string(), note.clone());
            if last.get(&id) == Some(&entry) {
                return;
            }
            last.insert(id.clone(), entry);
        }
        let ev = Event {
            warning,
            reason: reason.to_string(),
            note: Some(note),
        };
        if let Err(e) = self.queue.try_send((object.clone(), ev)) {
            let ev = match e {
                mpsc::error::TrySendError::Full(v) | mpsc::error::TrySendError::Closed(v) => v.1,
            };
            // Not published: the same Event later must not count as a repeat.
            self.last.lock().expect("not poisoned").remove(&id);
            let due = self
                .drops
                .lock()
                .expect("not poisoned")
                .dropped(std::time::Instant::now());
            if let Some(dropped) = due {
                warn!(
                    dropped,
                    last_reason = ev.reason,
                    last_note = ?ev.note,
                    "Events dropped: the API server is not keeping up (one line per 10 s at most)"
                );
            }
        }
    }

    /// Forgets what was published for objects of `kind` whose uid is not
    /// in `live` (they were deleted).
    pub fn forget_absent(&self, kind: &str, live: &std::collections::HashSet<String>) {
        self.last
            .lock()
            .expect("not poisoned")
            .retain(|uid, (k, _, _)| k != kind || live.contains(uid));
    }

    /// Objects remembered (for tests and status).
    pub fn remembered(&self) -> usize {
        self.last.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// An API server that accepts connections and never answers: publishing
    /// must still return at once (an election loop calls it), and a full
    /// queue drops Events instead of growing or blocking.
    #[tokio::test]
    async fn publishing_never_waits_for_a_silent_api_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.push(s);
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let events = Events::new(Client::try_from(config).unwrap(), "n1");
        let node = ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        };
        let t0 = Instant::now();
        for i in 0..(QUEUE * 2) {
            events.publish(&node, false, "LeaderElected", format!("change {i}"));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "publishing waited for the API server: {:?}",
            t0.elapsed()
        );
        // The last one found the queue full: it is not remembered as
        // published, so the same Event later is queued, not skipped.
        assert!(
            events.last.lock().unwrap().is_empty(),
            "a dropped Event counts as published"
        );
        held.abort();
    }

    /// A burst of drops is one line with its count, not a line each.
    #[test]
    fn drops_are_logged_at_once_then_counted_per_ten_seconds() {
        let t0 = Instant::now();
        let mut d = Drops::default();
        assert_eq!(d.dropped(t0), Some(1));
        for i in 1..500 {
            assert_eq!(d.dropped(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(d.dropped(t0 + DROPS_LOGGED_EVERY), Some(500));
        assert_eq!(d.dropped(t0 + DROPS_LOGGED_EVERY * 3), Some(1));
    }

    #[tokio::test]
    async fn deleted_objects_are_forgotten() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let events = Events::new(Client::try_from(config).unwrap(), "n1");
        let obj = |kind: &str, uid: &str| ObjectReference {
            kind: Some(kind.into()),
            uid: Some(uid.into()),
            ..Default::default()
        };
        for i in 0..10 {
            events.publish(
                &obj("Service", &format!("s{i}")),
                false,
                "AddressAssigned",
                "x".into(),
            );
        }
        events.publish(&obj("Node", "n1"), false, "LeaderElected", "x".into());
        let live: std::collections::HashSet<String> = ["s3".to_string()].into();
        events.forget_absent("Service", &live);
        assert_eq!(events.remembered(), 2, "a live Service and the Node stay");
    }
}
