//! The Services cache: every Service as the controller reads it
//! ([`SvcInfo`]), built once when its watch event arrives and shared by
//! every pass that follows. The object itself is not kept: a Service held
//! as the API's type was 2.7 KiB (most of it fields vipd never reads), and
//! every pass built each one's `SvcInfo` anew, a thousand Services' worth
//! of allocations two times a second for nothing.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::{watch, Notify};
use tracing::debug;

use super::informers::WatchEvents;
use super::model::{Svc, SvcInfo, SvcKey};

/// A cached Service, ordered and found by its key (which it holds: a map
/// would keep a second copy of every key).
#[derive(Debug, Clone)]
pub struct ByKey(pub Svc);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

impl Borrow<SvcKey> for ByKey {
    fn borrow(&self) -> &SvcKey {
        &self.0.key
    }
}

/// Every cached Service, in key order.
pub type Services = BTreeSet<ByKey>;

/// The Services as last seen.
#[derive(Clone)]
pub struct ServiceCache {
    state: Arc<Mutex<Services>>,
    ready: watch::Receiver<bool>,
}

impl ServiceCache {
    /// Every Service, in key order (cheap: shared values).
    pub fn state(&self) -> Vec<Svc> {
        self.state
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|s| s.0.clone())
            .collect()
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// What one watch event does to the cache (pure, tested).
#[derive(Debug, Default)]
pub struct Apply {
    /// A re-list in progress: the Services listed so far. It replaces the
    /// cache when done, so Services deleted while the watch was broken go.
    listing: Option<Services>,
}

impl Apply {
    /// Applies `ev` to `cache`; true when the cache changed (a first or a
    /// new list done, a Service changed or deleted).
    pub fn event(&mut self, cache: &mut Services, ev: watcher::Event<Service>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.listing = Some(Services::new());
                false
            }
            watcher::Event::InitApply(s) => {
                if let (Some(l), Some(info)) = (self.listing.as_mut(), SvcInfo::from_service(&s)) {
                    l.replace(ByKey(Arc::new(info)));
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(l) = self.listing.take() {
                    *cache = l;
                }
                true
            }
            watcher::Event::Apply(s) => match SvcInfo::from_service(&s) {
                Some(info) => {
                    cache.replace(ByKey(Arc::new(info)));
                    true
                }
                None => false,
            },
            watcher::Event::Delete(s) => cache.remove(&SvcKey::of(&s)),
        }
    }
}

/// Watches `api`'s Services into a cache; `notify` is told of every
/// change, `counts` of every event (kube-vip's watch event metric).
pub fn spawn(api: Api<Service>, notify: Arc<Notify>, counts: Arc<WatchEvents>) -> ServiceCache {
    let state = Arc::new(Mutex::new(Services::new()));
    let (ready_tx, ready) = watch::channel(false);
    let cache = ServiceCache {
        state: state.clone(),
        ready,
    };
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut apply = Apply::default();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    counts.record(&ev);
                    let done = matches!(ev, watcher::Event::InitDone);
                    let changed = apply.event(&mut state.lock().expect("not poisoned"), ev);
                    if done {
                        ready_tx.send_replace(true);
                    }
                    if changed {
                        notify.notify_one();
                    }
                }
                Err(e) => debug!(error = %e, "watch error (retrying)"),
            }
        }
    });
    cache
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, rv: &str, ann: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "d", "uid": format!("u-{name}"),
                          "resourceVersion": rv,
                          "annotations": { "kube-vip.io/loadbalancerIPs": ann } },
            "spec": { "type": "LoadBalancer" }
        }))
        .unwrap()
    }

    fn names(cache: &Services) -> Vec<String> {
        cache.iter().map(|s| s.0.key.name.clone()).collect()
    }

    /// A list builds the cache only when complete; changes and deletions
    /// follow; a re-list drops what was deleted meanwhile; every entry is
    /// the Service's `SvcInfo`, as a pass would have built it.
    #[test]
    fn the_cache_follows_lists_changes_and_deletions() {
        let mut cache = Services::new();
        let mut a = Apply::default();
        assert!(!a.event(&mut cache, watcher::Event::Init));
        assert!(!a.event(
            &mut cache,
            watcher::Event::InitApply(svc("a", "1", "192.0.2.1"))
        ));
        assert!(!a.event(
            &mut cache,
            watcher::Event::InitApply(svc("b", "1", "192.0.2.2"))
        ));
        assert!(cache.is_empty(), "a partial list is not the cache");
        assert!(a.event(&mut cache, watcher::Event::InitDone));
        assert_eq!(names(&cache), ["a", "b"]);
        let b2 = svc("b", "2", "192.0.2.9");
        assert!(a.event(&mut cache, watcher::Event::Apply(b2.clone())));
        let key = SvcKey::of(&b2);
        let b = &cache.get(&key).unwrap().0;
        assert_eq!(**b, SvcInfo::from_service(&b2).unwrap());
        assert_eq!(b.resource_version, "2");
        assert_eq!(b.uid, "u-b");
        assert!(a.event(&mut cache, watcher::Event::Delete(svc("a", "3", ""))));
        assert!(!a.event(&mut cache, watcher::Event::Delete(svc("a", "3", ""))));
        assert_eq!(names(&cache), ["b"]);
        // The watch broke; meanwhile b was deleted and c created.
        a.event(&mut cache, watcher::Event::Init);
        a.event(
            &mut cache,
            watcher::Event::InitApply(svc("c", "5", "192.0.2.3")),
        );
        assert_eq!(names(&cache), ["b"], "the old cache stands while listing");
        a.event(&mut cache, watcher::Event::InitDone);
        assert_eq!(names(&cache), ["c"]);
    }
}
