//! Kubernetes Events vipd publishes: what a user should see on a Service
//! (address assigned, moved, released, every error) and on a node
//! (leadership changes). One recorder; a repeated identical message for the
//! same object is published once.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Events waiting for the API server; beyond this, new ones are dropped
/// (with a log line) rather than held in memory without bound.
const QUEUE: usize = 256;

pub struct Events {
    queue: mpsc::Sender<(ObjectReference, Event)>,
    /// Last (reason, note) published per object uid, to publish changes only.
    last: Mutex<HashMap<String, (String, String)>>,
}

impl Events {
    /// Starts the task that sends Events to the API server, one at a time
    /// and in order. Publishing only queues: a slow or unreachable API
    /// server never holds up an election, an address change or a reconcile.
    pub fn new(client: Client, node: &str) -> Events {
        let reporter = Reporter {
            controller: "vipd".into(),
            instance: Some(node.to_string()),
        };
        let recorder = Recorder::new(client, reporter);
        let (queue, mut rx) = mpsc::channel::<(ObjectReference, Event)>(QUEUE);
        tokio::spawn(async move {
            while let Some((object, ev)) = rx.recv().await {
                if let Err(e) = recorder.publish(&ev, &object).await {
                    debug!(error = %e, reason = ev.reason, "could not publish an Event");
                }
            }
        });
        Events {
            queue,
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
            let entry = (reason.to_string(), note.clone());
            if last.get(&id) == Some(&entry) {
                return;
            }
            last.insert(id.clone(), entry);
        }
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self.queue.try_send((object.clone(), ev)) {
            let ev = match e {
                mpsc::error::TrySendError::Full(v) | mpsc::error::TrySendError::Closed(v) => v.1,
            };
            // Not published: the same Event later must not count as a repeat.
            self.last.lock().expect("not poisoned").remove(&id);
            warn!(reason = ev.reason, note = ?ev.note, "Event dropped: the API server is not keeping up");
        }
    }

    /// Forgets what was published for `uid` (the object is gone).
    pub fn forget(&self, uid: &str) {
        self.last.lock().expect("not poisoned").remove(uid);
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
}
