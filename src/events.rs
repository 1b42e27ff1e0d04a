//! Kubernetes Events vipd publishes: what a user should see on a Service
//! (address assigned, moved, released, every error) and on a node
//! (leadership changes). One recorder; a repeated identical message for the
//! same object is published once.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tracing::debug;

pub struct Events {
    recorder: Recorder,
    /// Last (reason, note) published per object uid, to publish changes only.
    last: Mutex<HashMap<String, (String, String)>>,
}

impl Events {
    pub fn new(client: Client, node: &str) -> Events {
        let reporter = Reporter {
            controller: "vipd".into(),
            instance: Some(node.to_string()),
        };
        Events {
            recorder: Recorder::new(client, reporter),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes unless the same reason and note were the last for `object`.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
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
            last.insert(id, entry);
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
        if let Err(e) = self.recorder.publish(&ev, object).await {
            debug!(error = %e, reason, "could not publish an Event");
        }
    }

    /// Forgets what was published for `uid` (the object is gone).
    pub fn forget(&self, uid: &str) {
        self.last.lock().expect("not poisoned").remove(uid);
    }
}
