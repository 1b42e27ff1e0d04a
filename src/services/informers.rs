//! The cluster state the Services controller reads: local caches of
//! Services, EndpointSlices, Nodes, the pools ConfigMap and the per-address
//! Leases, kept current by watches. Any change wakes the controller.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::debug;

use super::cache::{self, ServiceCache};
use super::trim;
use crate::config::ServicesConfig;

/// Label on the per-address Leases vipd creates.
pub const ADDRESS_LEASE_LABEL: &str = "vipd.dev/service-address";

pub struct Informers {
    pub services: ServiceCache,
    pub slices: Store<EndpointSlice>,
    pub nodes: Store<Node>,
    pub pools: Store<ConfigMap>,
    pub address_leases: Store<Lease>,
    /// Every vipd's instance record (`instance`): the control-plane VIPs
    /// and host facts the address guard refuses. Read on every pass (and
    /// the resync), not a reason for one: records renew every 10 s.
    pub instances: Store<Lease>,
    /// Every vipd's liveness Lease, with placement (`svc_placement`).
    pub liveness: Option<Store<Lease>>,
    /// Notified on every change of any of them.
    pub changed: Arc<Notify>,
    /// Notified on changes of the per-address Leases only.
    pub leases_changed: Arc<Notify>,
    /// Notified on changes of the liveness Leases only: most are renewals,
    /// which change nothing a pass decides (see `Controller::run`).
    pub liveness_changed: Arc<Notify>,
    /// Service watch events by type, for kube-vip's metric.
    pub service_events: Arc<WatchEvents>,
}

/// Watch events of one kind of object by type, as a Kubernetes watch names
/// them (ADDED, MODIFIED, DELETED): kube's watcher reports "applied", so an
/// object seen before is MODIFIED, a new one ADDED.
#[derive(Debug, Default)]
pub struct WatchEvents {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    /// During a (re-)list: the objects it has listed so far; the list
    /// replaces `seen` when done, so objects deleted while the watch was
    /// broken are forgotten.
    listing: std::sync::Mutex<Option<std::collections::HashSet<String>>>,
    added: std::sync::atomic::AtomicU64,
    modified: std::sync::atomic::AtomicU64,
    deleted: std::sync::atomic::AtomicU64,
}

impl WatchEvents {
    pub(super) fn record<K: Resource>(&self, ev: &watcher::Event<K>) {
        use std::sync::atomic::Ordering::Relaxed;
        let uid = |o: &K| o.meta().uid.clone().unwrap_or_default();
        match ev {
            watcher::Event::Init => {
                *self.listing.lock().expect("not poisoned") = Some(Default::default());
            }
            watcher::Event::InitDone => {
                if let Some(l) = self.listing.lock().expect("not poisoned").take() {
                    *self.seen.lock().expect("not poisoned") = l;
                }
            }
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                if let Some(l) = self.listing.lock().expect("not poisoned").as_mut() {
                    l.insert(uid(o));
                }
                if self.seen.lock().expect("not poisoned").insert(uid(o)) {
                    self.added.fetch_add(1, Relaxed);
                } else {
                    self.modified.fetch_add(1, Relaxed);
                }
            }
            watcher::Event::Delete(o) => {
                self.seen.lock().expect("not poisoned").remove(&uid(o));
                self.deleted.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn counts(&self) -> Vec<(String, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            ("ADDED".into(), self.added.load(Relaxed)),
            ("MODIFIED".into(), self.modified.load(Relaxed)),
            ("DELETED".into(), self.deleted.load(Relaxed)),
        ]
    }
}

/// A cache of one kind of object, each cut by `trim` to what vipd reads
/// before it is stored.
fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    notify: Vec<Arc<Notify>>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = watcher::watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => notify.iter().for_each(|n| n.notify_one()),
                Err(e) => debug!(error = %e, "watch error (retrying)"),
            }
        }
    });
    store
}

impl Informers {
    pub fn start(client: &Client, cfg: &ServicesConfig, instance_namespace: &str) -> Informers {
        let changed = Arc::new(Notify::new());
        let leases_changed = Arc::new(Notify::new());
        let liveness_changed = Arc::new(Notify::new());
        let services: Api<Service> = match &cfg.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let slices: Api<EndpointSlice> = match &cfg.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (pool_ns, pool_name) = &cfg.pool_configmap;
        let one = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let service_events = Arc::new(WatchEvents::default());
        Informers {
            service_events: service_events.clone(),
            services: cache::spawn(services, changed.clone(), service_events),
            slices: spawn_reflector(
                slices,
                watcher::Config::default(),
                trim::slice,
                vec![changed.clone()],
            ),
            nodes: spawn_reflector(
                Api::all(client.clone()),
                watcher::Config::default(),
                trim::node,
                vec![changed.clone()],
            ),
            pools: spawn_reflector(
                Api::namespaced(client.clone(), pool_ns),
                one(pool_name),
                |c: &mut ConfigMap| c.metadata.managed_fields = None,
                vec![changed.clone()],
            ),
            address_leases: spawn_reflector(
                Api::namespaced(client.clone(), &cfg.lease.namespace),
                watcher::Config::default().labels(ADDRESS_LEASE_LABEL),
                trim::lease,
                vec![leases_changed.clone()],
            ),
            instances: spawn_reflector(
                Api::namespaced(client.clone(), instance_namespace),
                watcher::Config::default().labels(crate::instance::LABEL),
                trim::lease,
                vec![],
            ),
            liveness: cfg.placement.then(|| {
                spawn_reflector(
                    Api::namespaced(client.clone(), &cfg.lease.namespace),
                    watcher::Config::default().labels(super::placement::LIVENESS_LABEL),
                    trim::lease,
                    vec![liveness_changed.clone()],
                )
            }),
            changed,
            leases_changed,
            liveness_changed,
        }
    }

    /// Waits until every cache holds a complete first list: deciding on a
    /// partial list of Services could hand one address out twice.
    pub async fn ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pools.wait_until_ready().await;
        let _ = self.address_leases.wait_until_ready().await;
        let _ = self.instances.wait_until_ready().await;
        if let Some(l) = &self.liveness {
            let _ = l.wait_until_ready().await;
        }
    }
}
