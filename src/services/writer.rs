//! Writes to Services: annotations, `status.loadBalancer.ingress` with
//! vipd's conditions, Events. Many at once (bounded), each a patch, never a
//! read-modify-write, so they cannot conflict with other writers: the
//! status is a strategic merge patch, which merges `status.conditions` by
//! type (the leader writes `vipd.dev/AddressAssigned`, the announcing node
//! `vipd.dev/Announced`, neither removes the other's nor anybody else's). A write identical to one made in
//! the last seconds is skipped: the caches may not have caught up yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::model::{Condition, Ingress, SvcKey};
use crate::events::Events;

/// How many writes are in flight at once.
const CONCURRENCY: usize = 32;
/// How long an identical write is considered done.
const RECENT: Duration = Duration::from_secs(3);

/// One change to make.
pub enum Change {
    /// Set (Some) or remove (None) annotations.
    Annotations {
        svc: Arc<Service>,
        set: Vec<(&'static str, Option<String>)>,
    },
    /// `status.loadBalancer.ingress` (when Some) and conditions, in one write.
    Status {
        svc: Arc<Service>,
        ingress: Option<Ingress>,
        conditions: Vec<(&'static str, Condition)>,
    },
    Event {
        svc: Arc<Service>,
        warning: bool,
        reason: &'static str,
        note: String,
    },
}

pub struct Writer {
    client: Client,
    pub events: Arc<Events>,
    recent: Mutex<HashMap<(SvcKey, String), (String, Instant)>>,
    failures: std::sync::atomic::AtomicU64,
    /// Failed writes per Service and what failed (kube-vip's
    /// `kube_vip_service_reconcile_errors_total`).
    failures_by: Mutex<std::collections::BTreeMap<(SvcKey, String), u64>>,
}

fn key_of(svc: &Service) -> SvcKey {
    SvcKey {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
    }
}

impl Writer {
    pub fn new(client: Client, events: Arc<Events>) -> Writer {
        Writer {
            client,
            events,
            recent: Mutex::new(HashMap::new()),
            failures: Default::default(),
            failures_by: Default::default(),
        }
    }

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

    /// Writes that failed so far (other than to Services already gone).
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn failed(&self, key: &SvcKey, what: &str, e: kube::Error) {
        self.forget(key, what);
        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *self
                .failures_by
                .lock()
                .expect("not poisoned")
                .entry((key.clone(), what.to_string()))
                .or_default() += 1;
        }
        log_write_error(key, what, e);
    }

    /// Failed writes per Service: (namespace, name, what, count).
    pub fn failures_by_service(&self) -> Vec<(String, String, String, u64)> {
        self.failures_by
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|((k, what), n)| (k.namespace.clone(), k.name.clone(), what.clone(), *n))
            .collect()
    }

    /// Forgets the counts of Services no longer in `live`.
    pub fn forget_absent(&self, live: &[Arc<Service>]) {
        let keys: std::collections::HashSet<SvcKey> = live.iter().map(|s| key_of(s)).collect();
        self.failures_by
            .lock()
            .expect("not poisoned")
            .retain(|(k, _), _| keys.contains(k));
    }

    fn forget(&self, key: &SvcKey, kind: &str) {
        self.recent
            .lock()
            .expect("not poisoned")
            .remove(&(key.clone(), kind.to_string()));
    }

    /// Makes every change; failures are logged and retried on the next pass.
    pub async fn apply(&self, changes: Vec<Change>) {
        // Forget old writes even when there is nothing to write (after a
        // burst of deletions, say), so the map never outlives its purpose.
        self.recent
            .lock()
            .expect("not poisoned")
            .retain(|_, (_, at)| at.elapsed() < RECENT);
        futures::stream::iter(changes)
            .for_each_concurrent(CONCURRENCY, |c| self.apply_one(c))
            .await;
    }

    async fn apply_one(&self, change: Change) {
        match change {
            Change::Annotations { svc, set } => {
                let key = key_of(&svc);
                let mut ann = serde_json::Map::new();
                for (k, v) in &set {
                    ann.insert(
                        k.to_string(),
                        v.clone().map(Value::String).unwrap_or(Value::Null),
                    );
                }
                let body = json!({ "metadata": { "annotations": ann } });
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
            Change::Status {
                svc,
                ingress,
                conditions,
            } => {
                let key = key_of(&svc);
                let mut status = serde_json::Map::new();
                if let Some(ingress) = ingress {
                    status.insert(
                        "loadBalancer".into(),
                        json!({ "ingress": ingress_json(&ingress) }),
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
                let body = json!({ "status": status });
                if self.seen_recently(&key, "status", &body.to_string()) {
                    return;
                }
                let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
                if let Err(e) = api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Strategic(&body))
                    .await
                {
                    self.failed(&key, "status", e);
                }
            }
            Change::Event {
                svc,
                warning,
                reason,
                note,
            } => {
                let reference = svc.object_ref(&());
                self.events.publish(&reference, warning, reason, note);
            }
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
