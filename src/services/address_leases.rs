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

/// The address a per-address Lease is for (the inverse of [`lease_name`]).
pub fn address_of(name: &str) -> Option<IpAddr> {
    let rest = name.strip_prefix("vipd-addr-")?;
    let parts: Vec<&str> = rest.split('-').collect();
    match parts.len() {
        4 => rest.replace('-', ".").parse().ok(),
        8 => {
            let mut segs = [0u16; 8];
            for (i, p) in parts.iter().enumerate() {
                segs[i] = u16::from_str_radix(p, 16).ok()?;
            }
            Some(IpAddr::V6(segs.into()))
        }
        _ => None,
    }
}

/// Per-address Leases that can go: their address is in no served
/// Service's status, and nobody holds them (released, or not renewed for
/// three lease durations by the record's own clock). Pure.
pub fn garbage(
    leases: &[Arc<Lease>],
    in_use: &BTreeSet<IpAddr>,
    now: k8s_openapi::jiff::Timestamp,
    lease_duration: Duration,
) -> Vec<(String, Option<String>)> {
    leases
        .iter()
        .filter_map(|l| {
            let name = l.metadata.name.clone()?;
            let addr = address_of(&name)?;
            if in_use.contains(&addr) {
                return None;
            }
            let spec = l.spec.clone().unwrap_or_default();
            let held = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty());
            let stale = spec.renew_time.as_ref().is_none_or(|t| {
                let age = now.as_millisecond() - t.0.as_millisecond();
                age > 3 * lease_duration.as_millis() as i64
            });
            (!held || stale).then(|| (name, l.metadata.resource_version.clone()))
        })
        .collect()
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

    fn holding(&mut self, hold_until: Instant) {
        self.vips
            .hold_unconfirmed(Source::ServiceAddress(self.addr), hold_until);
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
                acquire_delay: crate::election::fixed_delay(want.delay),
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
        self.api
            .namespace()
            .unwrap_or(crate::config::settings::DEFAULT_NAMESPACE)
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

    /// Deletes per-address Leases nobody needs any more (the Services
    /// leader calls it); a Lease changed since it was read is kept.
    pub async fn collect_garbage(&self, leases: &Store<Lease>, in_use: &BTreeSet<IpAddr>) {
        let now = k8s_openapi::jiff::Timestamp::now();
        for (name, rv) in garbage(&leases.state(), in_use, now, self.timing.lease_duration) {
            let dp = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    resource_version: rv,
                    uid: None,
                }),
                ..Default::default()
            };
            match self.api.delete(&name, &dp).await {
                Ok(_) => tracing::debug!(lease = %name, "deleted a per-address Lease nobody needs"),
                Err(e) => {
                    tracing::debug!(lease = %name, error = %e, "could not delete a per-address Lease")
                }
            }
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
    fn names_read_back_as_addresses() {
        for a in ["192.0.2.150", "2001:db8::150", "2001:db8::", "::1"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(address_of(&lease_name(ip)), Some(ip));
        }
        assert_eq!(address_of("plndr-svcs-lock"), None);
        assert_eq!(address_of("vipd-addr-1-2-3"), None);
    }

    #[test]
    fn only_unneeded_unheld_leases_are_garbage() {
        use k8s_openapi::api::coordination::v1::LeaseSpec;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let now = k8s_openapi::jiff::Timestamp::now();
        let lease = |addr: &str, holder: Option<&str>, age_s: i64| {
            let mut l = Lease::default();
            l.metadata.name = Some(lease_name(addr.parse().unwrap()));
            l.metadata.resource_version = Some("7".into());
            l.spec = Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::from_millisecond(
                        now.as_millisecond() - age_s * 1000,
                    )
                    .unwrap(),
                )),
                ..Default::default()
            });
            Arc::new(l)
        };
        let leases = vec![
            lease("192.0.2.1", None, 1),        // released, unused: garbage
            lease("192.0.2.2", Some("n1"), 1),  // held, unused: kept (its holder lets go first)
            lease("192.0.2.3", Some("n1"), 60), // held by a dead node, unused: garbage
            lease("192.0.2.4", None, 1),        // released but in use: kept
        ];
        let in_use: BTreeSet<IpAddr> = ["192.0.2.4".parse().unwrap()].into();
        let g: Vec<String> = garbage(&leases, &in_use, now, Duration::from_secs(4))
            .into_iter()
            .map(|(n, rv)| {
                assert_eq!(rv.as_deref(), Some("7"));
                n
            })
            .collect();
        assert_eq!(g, vec!["vipd-addr-192-0-2-1", "vipd-addr-192-0-2-3"]);
    }

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
