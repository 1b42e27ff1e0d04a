//! Telling the segment where an address now lives: a gratuitous ARP (IPv4)
//! or unsolicited NA (IPv6) at once, a quick burst, then a refresh every
//! `vip_arpRate`, for every held address, from one task and one timer (a
//! task per address was half a kilobyte and a timer each: a Services
//! leader holding a thousand addresses had a thousand of them).
//!
//! While an address is held on a claim nobody could confirm (the API
//! server out of reach), each announcement is followed by a probe (an ARP
//! Probe, a DAD Neighbour Solicitation): a node that took the address over
//! answers it, and the conflict watcher (`vips::conflict`) hears that answer
//! even when the new holder's own announcements were lost (RFC 5227 §2.4).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::Notify;
use tracing::{debug, info, warn};
use vipd_arp::{build_announcement, build_probe, MacAddr, Schedule, Sender};

use crate::netlink::Link;

/// Counters the status server reads.
#[derive(Debug, Default)]
pub struct AnnounceStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    /// Conflict probes sent.
    pub probes: AtomicU64,
}

/// One announced address.
struct Entry {
    sender: Arc<Sender>,
    mac: MacAddr,
    interface: Arc<str>,
    schedule: Schedule,
    /// Frames sent so far.
    sent: u32,
    /// With a probe after each announcement (see the module).
    probing: bool,
    /// When the next one is due.
    due: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<IpAddr, Entry>,
    /// (due, address); an item whose entry is gone or due at another
    /// instant is stale and skipped.
    queue: BinaryHeap<Reverse<(Instant, IpAddr)>>,
}

/// Every held address's announcements; cheap to clone. The task ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Announcers {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    stats: Arc<AnnounceStats>,
}

impl Drop for Announcers {
    fn drop(&mut self) {
        // The task holds no handle: with this the last one, it must wake
        // to find the state gone.
        if Arc::strong_count(&self.state) == 1 {
            self.wake.notify_one();
        }
    }
}

impl Announcers {
    /// Starts the task that sends what comes due.
    pub fn start(stats: Arc<AnnounceStats>) -> Announcers {
        let state = Arc::new(Mutex::new(State::default()));
        let wake = Arc::new(Notify::new());
        tokio::spawn(run(Arc::downgrade(&state), wake.clone(), stats.clone()));
        Announcers { state, wake, stats }
    }

    /// Announces `addr` on `link` at once (the caller has just added it: a
    /// frame waiting for a worker would leave the segment pointing at the
    /// old holder for milliseconds more), then on `schedule`; starts over
    /// when it is announced already. False when `link` has no MAC.
    pub fn announce(
        &self,
        link: &Link,
        sender: Arc<Sender>,
        addr: IpAddr,
        schedule: Schedule,
        probing: bool,
    ) -> bool {
        let Some(mac) = link.mac else {
            warn!(interface = %link.name, %addr, "interface has no MAC address: nothing to announce on it");
            return false;
        };
        let mut entry = Entry {
            sender,
            mac: MacAddr::new(mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]),
            interface: Arc::from(link.name.as_str()),
            schedule,
            sent: 0,
            probing,
            due: Instant::now(),
        };
        send(&mut entry, addr, &self.stats);
        let mut st = self.state.lock().expect("not poisoned");
        st.queue.push(Reverse((entry.due, addr)));
        st.entries.insert(addr, entry);
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Stops announcing `addr`.
    pub fn stop(&self, addr: IpAddr) {
        self.state
            .lock()
            .expect("not poisoned")
            .entries
            .remove(&addr);
    }

    /// Whether `addr` is being announced.
    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.state
            .lock()
            .expect("not poisoned")
            .entries
            .contains_key(addr)
    }

    /// The addresses being announced.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.state
            .lock()
            .expect("not poisoned")
            .entries
            .keys()
            .copied()
            .collect()
    }

    /// Probing on for the announced addresses in `probing`, off for the
    /// others; returns those it turned on.
    pub fn set_probing(&self, probing: &HashSet<IpAddr>) -> Vec<IpAddr> {
        let mut st = self.state.lock().expect("not poisoned");
        let mut turned_on = Vec::new();
        for (addr, e) in st.entries.iter_mut() {
            let probe = probing.contains(addr);
            if probe && !e.probing {
                turned_on.push(*addr);
            }
            e.probing = probe;
        }
        turned_on
    }
}

/// Sends `e`'s next frames (an announcement, and a probe while probing)
/// and sets when the one after is due.
fn send(e: &mut Entry, addr: IpAddr, stats: &AnnounceStats) {
    let interface = &e.interface;
    match e.sender.send(&build_announcement(addr, e.mac)) {
        Ok(()) => {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            if e.sent == 0 {
                let kind = if addr.is_ipv4() {
                    "gratuitous ARP"
                } else {
                    "unsolicited neighbour advertisement"
                };
                info!(%addr, %interface, "announced ({kind})");
            } else {
                debug!(%addr, %interface, n = e.sent + 1, "announced again");
            }
        }
        Err(err) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            // A link that is down refuses frames; keep trying on schedule.
            debug!(%addr, %interface, error = %err, "announcement not sent");
        }
    }
    if e.probing {
        match e.sender.send(&build_probe(addr, e.mac)) {
            Ok(()) => {
                stats.probes.fetch_add(1, Ordering::Relaxed);
                debug!(%addr, %interface, "probed for another holder");
            }
            Err(err) => debug!(%addr, %interface, error = %err, "probe not sent"),
        }
    }
    e.sent += 1;
    e.due = Instant::now() + e.schedule.gap_after(e.sent);
}

/// Sends whatever is due, then sleeps until the next is (or a new address
/// comes); ends when every handle is gone.
async fn run(state: Weak<Mutex<State>>, wake: Arc<Notify>, stats: Arc<AnnounceStats>) {
    loop {
        let next = {
            let Some(state) = state.upgrade() else {
                return;
            };
            let mut st = state.lock().expect("not poisoned");
            let now = Instant::now();
            let st = &mut *st;
            while let Some(Reverse((due, addr))) = st.queue.peek().copied() {
                let current = st.entries.get(&addr).is_some_and(|e| e.due == due);
                if !current {
                    st.queue.pop();
                    continue;
                }
                if due > now {
                    break;
                }
                st.queue.pop();
                if let Some(e) = st.entries.get_mut(&addr) {
                    send(e, addr, &stats);
                    st.queue.push(Reverse((e.due, addr)));
                }
            }
            st.queue.peek().map(|Reverse((due, _))| *due)
        };
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
