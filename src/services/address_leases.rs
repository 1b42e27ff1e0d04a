//! Per-address Leases: one election per Service address this node may
//! announce (with `svc_election`, or when only some nodes may announce it).
//! All of them learn about their Lease from one shared informer, so a
//! thousand addresses cost one watch, not a thousand.
//!
//! The holder of an address's Lease claims the address from the owner at
//! once, extends the claim on every renew, and withdraws it when it stops
//! leading: fencing works exactly as for the control-plane VIP.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::informers::ADDRESS_LEASE_LABEL;
use crate::config::LeaseTiming;
use crate::election::{Feed, Leadership, LeaseElection};
use crate::vips::{Claim, Source, VipHandle};

/// The delay between ranks: the node ranked `r` tries `r` times this long
/// after the Lease is free, so the preferred node wins.
pub const STAGGER: Duration = Duration::from_millis(300);

/// The Lease of a Service address: `vipd-addr-192-0-2-150`,
/// `vipd-addr-2001-db8-0-0-0-0-0-150`.
pub fn lease_name(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v) => format!("vipd-addr-{}", v.to_string().replace('.', "-")),
        IpAddr::V6(v) => {
            let parts: Vec<String> = v.segments().iter().map(|s| format!("{s:x}")).collect();
            format!("vipd-addr-{}", parts.join("-"))
        }
    }
}

/// An address to compete for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub claim: Claim,
    pub delay: Duration,
}

struct Running {
    name: String,
    feed: watch::Sender<Option<Lease>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Addresses whose Lease this node holds now.
pub type Leading = Arc<Mutex<BTreeSet<IpAddr>>>;

pub struct AddressLeases {
    api: Api<Lease>,
    me: String,
    timing: LeaseTiming,
    vips: VipHandle,
    running: HashMap<IpAddr, Running>,
    stopping: Vec<JoinHandle<()>>,
    leading: Leading,
    notify: mpsc::UnboundedSender<()>,
}

struct AddrLeadership {
    addr: IpAddr,
    claim: Claim,
    vips: VipHandle,
    leading: Leading,
    notify: mpsc::UnboundedSender<()>,
}

impl Leadership for AddrLeadership {
    async fn started(&mut self, hold_until: Instant) {
        self.vips
            .set(
                Source::ServiceAddress(self.addr),
                vec![self.claim.clone()],
                Some(hold_until),
            )
            .await;
        self.leading.lock().expect("not poisoned").insert(self.addr);
        let _ = self.notify.send(());
    }

    fn renewed(&mut self, hold_until: Instant) {
        self.vips
            .extend(Source::ServiceAddress(self.addr), hold_until);
    }

    async fn stopped(&mut self) {
        self.vips.release(Source::ServiceAddress(self.addr)).await;
        self.leading
            .lock()
            .expect("not poisoned")
            .remove(&self.addr);
        let _ = self.notify.send(());
    }
}

impl AddressLeases {
    /// `notify` is told whenever this node starts or stops holding one.
    pub fn new(
        client: Client,
        namespace: &str,
        me: &str,
        timing: LeaseTiming,
        vips: VipHandle,
        notify: mpsc::UnboundedSender<()>,
    ) -> AddressLeases {
        AddressLeases {
            api: Api::namespaced(client, namespace),
            me: me.to_string(),
            timing,
            vips,
            running: HashMap::new(),
            stopping: Vec::new(),
            leading: Arc::new(Mutex::new(BTreeSet::new())),
            notify,
        }
    }

    pub fn leading(&self) -> BTreeSet<IpAddr> {
        self.leading.lock().expect("not poisoned").clone()
    }

    /// Competes for exactly the addresses in `wants`: new ones start, gone
    /// ones stop (releasing their Lease if held, so an eligible node takes
    /// over at once).
    pub fn set(&mut self, wants: BTreeMap<IpAddr, Want>, leases: &Store<Lease>) {
        let gone: Vec<IpAddr> = self
            .running
            .keys()
            .filter(|a| !wants.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(r) = self.running.remove(&addr) {
                let _ = r.stop.send(true);
                self.stopping.push(r.task);
            }
        }
        self.stopping.retain(|t| !t.is_finished());
        for (addr, want) in wants {
            if self.running.contains_key(&addr) {
                continue;
            }
            let name = lease_name(addr);
            let current = leases
                .get(&ObjectRef::new(&name).within(self.api_namespace()))
                .map(|l| (*l).clone());
            let (feed, feed_rx) = watch::channel(current);
            let (stop, stop_rx) = watch::channel(false);
            let election = LeaseElection {
                api: self.api.clone(),
                name: name.clone(),
                me: self.me.clone(),
                timing: self.timing,
                acquire_delay: want.delay,
                labels: BTreeMap::from([
                    (ADDRESS_LEASE_LABEL.to_string(), "true".to_string()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "vipd".to_string(),
                    ),
                ]),
            };
            let leadership = AddrLeadership {
                addr,
                claim: want.claim,
                vips: self.vips.clone(),
                leading: self.leading.clone(),
                notify: self.notify.clone(),
            };
            let task = tokio::spawn(election.run_fed(Feed::Shared(feed_rx), leadership, stop_rx));
            self.running.insert(
                addr,
                Running {
                    name,
                    feed,
                    stop,
                    task,
                },
            );
        }
        self.feed(leases);
    }

    fn api_namespace(&self) -> &str {
        self.api.namespace().unwrap_or("kube-system")
    }

    /// Passes the informer's view of each Lease to its election.
    pub fn feed(&self, leases: &Store<Lease>) {
        let ns = self.api_namespace().to_string();
        for r in self.running.values() {
            let now = leases
                .get(&ObjectRef::new(&r.name).within(&ns))
                .map(|l| (*l).clone());
            r.feed.send_if_modified(|old| {
                let rv = |l: &Option<Lease>| {
                    l.as_ref().and_then(|l| l.metadata.resource_version.clone())
                };
                if rv(old) != rv(&now) || old.is_some() != now.is_some() {
                    *old = now.clone();
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Stops every election (releasing held Leases) and waits for them.
    pub async fn shutdown(&mut self) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        let tasks: Vec<JoinHandle<()>> = self
            .running
            .drain()
            .map(|(_, r)| r.task)
            .chain(self.stopping.drain(..))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_and_distinct() {
        let a = lease_name("192.0.2.150".parse().unwrap());
        let b = lease_name("2001:db8::150".parse().unwrap());
        let c = lease_name("2001:db8::".parse().unwrap());
        assert_eq!(a, "vipd-addr-192-0-2-150");
        assert_eq!(b, "vipd-addr-2001-db8-0-0-0-0-0-150");
        assert_eq!(c, "vipd-addr-2001-db8-0-0-0-0-0-0");
        for n in [a, b, c] {
            assert!(
                n.len() <= 63
                    && n.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
            assert!(n.ends_with(|c: char| c.is_ascii_alphanumeric()));
        }
    }
}
