//! The one owner of "which virtual addresses are on this node".
//!
//! Elections and the Services controller never touch the kernel: they
//! *claim* addresses here, each source replacing its own claims, optionally
//! only until an instant (a leader's renew deadline). The owner converges the
//! kernel to the claims and announces what it adds:
//!
//! - claimed and missing: added (marked as vipd's, with a kernel lifetime it
//!   keeps refreshing) and announced at once;
//! - ours and not claimed, or claimed past its deadline: removed, even if the
//!   source never said so (fencing does not depend on the election task);
//! - removed by someone else while claimed: added back and announced again;
//! - not ours: never removed.
//!
//! At start the owner removes every address a previous vipd left behind.

mod conflict;
mod plan;
mod probe;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use vipd_arp::Schedule;

pub use conflict::Conflict;
pub use plan::{plan, refuse_foreign, to_probe, wanted, yields_to_another, ClaimSet, Plan, Want};

use crate::announce::{self, AnnounceStats};
use crate::config::Announce;
use crate::guardian::Guardian;
use crate::netlink::{kernel_events, KernelAddr, KernelEvent, Link, Netlink, NetlinkError};

/// Who claims an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Source {
    ControlPlane,
    /// Service addresses announced under the Services leader's Lease.
    ServicesLeader,
    /// One Service address announced under a Lease of its own.
    ServiceAddress(IpAddr),
    /// Service addresses this node announces by BGP (no election).
    ServicesBgp,
}

/// One address a source wants on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub addr: IpAddr,
    pub prefix: u8,
    pub interface: String,
    /// Communities and local preference when announced by BGP.
    pub route: vipd_bgp::RouteAttrs,
}

/// An address this node holds now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeldAddr {
    pub addr: IpAddr,
    pub interface: String,
    pub since: SystemTime,
    /// False when someone else configured it (vipd announces it but will
    /// never remove it).
    pub ours: bool,
}

/// What the owner holds, published after every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub addresses: BTreeMap<IpAddr, HeldAddr>,
    /// Addresses claimed now (whether or not the kernel has them yet).
    pub claimed: BTreeMap<IpAddr, Want>,
    /// Watched addresses (the VIPs) on this node although nobody here
    /// claims them: somebody configured them by hand, or a split brain.
    pub stray: BTreeSet<IpAddr>,
    /// Addresses claimed for Services that this node refuses to hold (the
    /// node has them already and vipd did not add them), with why.
    pub refused: BTreeMap<IpAddr, String>,
    /// Claimed addresses let go because another node announced them while
    /// this node could not confirm its claim (the API server out of
    /// reach), with what was seen.
    pub yielded: BTreeMap<IpAddr, String>,
    /// Claimed addresses not added yet because another host may still hold
    /// them (see `plan::to_probe`), with what was heard.
    pub probing: BTreeMap<IpAddr, String>,
}

/// How the owner works.
#[derive(Debug, Clone)]
pub struct OwnerConfig {
    pub announce: Announce,
    pub arp_rate: Duration,
    /// Kernel lifetime of added addresses; None: permanent.
    pub lifetime: Option<Duration>,
    /// Addresses to report as stray when present unclaimed (the VIPs).
    pub watch: Vec<IpAddr>,
    /// Run the guardian process (see `guardian`).
    pub guardian: bool,
}

enum Command {
    Set {
        source: Source,
        set: ClaimSet,
        done: oneshot::Sender<()>,
    },
    Extend {
        source: Source,
        hold_until: Instant,
        /// False: holding on without a renewed Lease (see `ClaimSet`).
        confirmed: bool,
    },
    ReleaseAll {
        done: oneshot::Sender<()>,
    },
}

/// The handle sources use; cheap to clone.
#[derive(Clone)]
pub struct VipHandle {
    tx: mpsc::UnboundedSender<Command>,
    held: watch::Receiver<Held>,
    pub stats: Arc<AnnounceStats>,
    pub readiness: Arc<Mutex<Readiness>>,
}

/// Whether this node really has every address it claims, and every time it
/// did not (a gap closed in a millisecond is still on record).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not.
    pub missing: Vec<String>,
    pub since: SystemTime,
    pub not_ready_total: u64,
    pub last_not_ready: Option<NotReady>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NotReady {
    pub at: SystemTime,
    pub reason: String,
    /// How long it lasted; None while it lasts.
    pub lasted_ms: Option<f64>,
}

impl Readiness {
    fn new() -> Readiness {
        Readiness {
            ready: true,
            missing: Vec::new(),
            since: SystemTime::now(),
            not_ready_total: 0,
            last_not_ready: None,
        }
    }

    fn record(&mut self, missing: Vec<String>) {
        let ready = missing.is_empty();
        let now = SystemTime::now();
        if ready != self.ready {
            if ready {
                if let Some(n) = self.last_not_ready.as_mut() {
                    n.lasted_ms = now
                        .duration_since(n.at)
                        .ok()
                        .map(|d| d.as_secs_f64() * 1000.0);
                }
            } else {
                self.not_ready_total += 1;
                self.last_not_ready = Some(NotReady {
                    at: now,
                    reason: missing.join("; "),
                    lasted_ms: None,
                });
            }
            self.ready = ready;
            self.since = now;
        }
        self.missing = missing;
    }
}

impl VipHandle {
    /// Replaces `source`'s claims; returns once the kernel has converged.
    pub async fn set(&self, source: Source, claims: Vec<Claim>, hold_until: Option<Instant>) {
        self.claim(source, claims, hold_until, false).await
    }

    /// [`VipHandle::set`]; with `probe_first`, an address is added only once
    /// no other host answers for it (see `plan::to_probe`). Returns once
    /// the kernel has converged or the addresses are being checked.
    pub async fn claim(
        &self,
        source: Source,
        claims: Vec<Claim>,
        hold_until: Option<Instant>,
        probe_first: bool,
    ) {
        let (done, wait) = oneshot::channel();
        let set = ClaimSet {
            claims,
            hold_until,
            confirmed: true,
            probe_first,
        };
        if self.tx.send(Command::Set { source, set, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Withdraws every claim of `source`; returns once removed.
    pub async fn release(&self, source: Source) {
        self.set(source, Vec::new(), None).await
    }

    /// Moves `source`'s deadline (a renewed lease).
    pub fn extend(&self, source: Source, hold_until: Instant) {
        let _ = self.tx.send(Command::Extend {
            source,
            hold_until,
            confirmed: true,
        });
    }

    /// Moves `source`'s deadline without a renewed lease (the API server is
    /// out of reach): the addresses stay unless another node announces them.
    pub fn hold_unconfirmed(&self, source: Source, hold_until: Instant) {
        let _ = self.tx.send(Command::Extend {
            source,
            hold_until,
            confirmed: false,
        });
    }

    /// Removes every address (shutdown); returns once removed.
    pub async fn release_all(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::ReleaseAll { done }).is_ok() {
            let _ = wait.await;
        }
    }

    pub fn held(&self) -> watch::Receiver<Held> {
        self.held.clone()
    }
}

/// Starts the owner: removes leftovers of a previous run, then serves claims.
pub async fn start(netlink: Netlink, config: OwnerConfig) -> Result<VipHandle, NetlinkError> {
    let events = kernel_events()?;
    let stats = Arc::new(AnnounceStats::default());
    let readiness = Arc::new(Mutex::new(Readiness::new()));
    let (tx, rx) = mpsc::unbounded_channel();
    let (conflict_tx, conflict_rx) = mpsc::unbounded_channel();
    let (probe_tx, probe_rx) = mpsc::unbounded_channel();
    let (held_tx, held_rx) = watch::channel(Held::default());
    let guardian = if config.guardian {
        if !crate::guardian::wait_for_previous(Duration::from_secs(10)) {
            warn!("the guardian of a previous vipd is still running after 10 s");
        }
        match Guardian::spawn() {
            Ok(g) => Some(g),
            Err(e) => {
                warn!(error = %e, "cannot start the guardian; addresses rely on their kernel lifetime alone");
                None
            }
        }
    } else {
        None
    };
    let mut owner = Owner {
        guardian,
        netlink,
        config,
        claims: BTreeMap::new(),
        have: Vec::new(),
        links: HashMap::new(),
        announcers: HashMap::new(),
        since: HashMap::new(),
        stats: stats.clone(),
        held: held_tx,
        readiness: readiness.clone(),
        yielded: BTreeMap::new(),
        held_set: Default::default(),
        conflict_tx,
        watched_links: HashSet::new(),
        probes: HashMap::new(),
        cleared: HashSet::new(),
        probe_tx,
    };
    owner.refresh_kernel_view().await?;
    let stale: Vec<KernelAddr> = owner.have.iter().filter(|k| k.ours).copied().collect();
    for k in stale {
        info!(addr = %k.addr, "removing an address a previous vipd left behind");
        if let Err(e) = owner.netlink.del_address(k.ifindex, k.addr, k.prefix).await {
            warn!(addr = %k.addr, error = %e, "cannot remove stale address");
        }
    }
    owner.refresh_kernel_view().await?;
    tokio::spawn(owner.run(rx, conflict_rx, probe_rx, events));
    Ok(VipHandle {
        tx,
        held: held_rx,
        stats,
        readiness,
    })
}

/// The task announcing one address, and whether it probes for another
/// holder (the address is held on an unconfirmed claim).
struct Announcer {
    task: JoinHandle<()>,
    probing: Arc<AtomicBool>,
}

struct Owner {
    guardian: Option<Guardian>,
    netlink: Netlink,
    config: OwnerConfig,
    claims: BTreeMap<Source, ClaimSet>,
    /// The kernel's addresses, as last read or reported.
    have: Vec<KernelAddr>,
    links: HashMap<String, Link>,
    announcers: HashMap<IpAddr, Announcer>,
    since: HashMap<IpAddr, SystemTime>,
    stats: Arc<AnnounceStats>,
    held: watch::Sender<Held>,
    readiness: Arc<Mutex<Readiness>>,
    /// Addresses let go to another node's announcement, with why.
    yielded: BTreeMap<IpAddr, String>,
    /// What the conflict watchers compare announcements with.
    held_set: conflict::HeldSet,
    conflict_tx: mpsc::UnboundedSender<Conflict>,
    /// Interfaces with a conflict watcher.
    watched_links: HashSet<u32>,
    /// Addresses being checked on the wire before they are added.
    probes: HashMap<IpAddr, probe::Probe>,
    /// Addresses checked: nobody else answered (or it was taken anyway).
    cleared: HashSet<IpAddr>,
    probe_tx: mpsc::UnboundedSender<IpAddr>,
}

impl Owner {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut conflicts: mpsc::UnboundedReceiver<Conflict>,
        mut probed: mpsc::UnboundedReceiver<IpAddr>,
        events: impl futures::Stream<Item = KernelEvent> + Unpin + Send,
    ) {
        let mut events = events;
        // Lifetimes are refreshed three times per lifetime; without one, a
        // slow resync catches anything the event stream missed.
        let period = self
            .config
            .lifetime
            .map(|l| l / 3)
            .unwrap_or(Duration::from_secs(5));
        let mut refresh = tokio::time::interval(period.max(Duration::from_millis(200)));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.update_guardian();
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Set { source, set, done }) => {
                        // A new confirmed claim (leadership won again)
                        // takes back what was let go.
                        for c in &set.claims {
                            self.yielded.remove(&c.addr);
                        }
                        if set.claims.is_empty() {
                            self.claims.remove(&source);
                        } else {
                            self.claims.insert(source, set);
                        }
                        self.converge().await;
                        let _ = done.send(());
                    }
                    Some(Command::Extend { source, hold_until, confirmed }) => {
                        let now = Instant::now();
                        let mut lapsed = false;
                        let mut reclaimed = false;
                        if let Some(set) = self.claims.get_mut(&source) {
                            lapsed = set.hold_until.is_some_and(|t| t <= now);
                            set.hold_until = Some(hold_until);
                            set.confirmed = confirmed;
                            if confirmed {
                                // Renewed after all: what was let go is ours again.
                                for c in &set.claims {
                                    if self.yielded.remove(&c.addr).is_some() {
                                        info!(addr = %c.addr, "the Lease was renewed: holding the address again");
                                        reclaimed = true;
                                    }
                                }
                            }
                        }
                        // A claim that had lapsed (and was withdrawn) comes
                        // back; an unconfirmed one is judged again.
                        if lapsed || reclaimed || !confirmed {
                            self.converge().await;
                        } else {
                            self.update_probing();
                        }
                    }
                    Some(Command::ReleaseAll { done }) => {
                        self.claims.clear();
                        self.converge().await;
                        let _ = done.send(());
                    }
                    None => {
                        // Every handle is gone: the process is ending.
                        self.claims.clear();
                        self.converge().await;
                        return;
                    }
                },
                Some(ev) = events.next() => self.on_kernel_event(ev).await,
                Some(c) = conflicts.recv() => self.on_conflict(c).await,
                Some(a) = probed.recv() => self.on_probed(a).await,
                _ = refresh.tick() => {
                    if let Err(e) = self.refresh_kernel_view().await {
                        warn!(error = %e, "cannot read addresses");
                    }
                    self.converge().await;
                    self.refresh_lifetimes().await;
                }
                _ = sleep_until(deadline) => self.converge().await,
            }
        }
    }

    /// Tells the guardian the earliest deadline of the claims in force.
    fn update_guardian(&mut self) {
        let Some(g) = self.guardian.as_mut() else {
            return;
        };
        let now = Instant::now();
        let deadline = self
            .claims
            .values()
            .filter(|c| !c.claims.is_empty())
            .filter_map(|c| c.hold_until)
            .filter(|t| *t > now)
            .min();
        g.set(deadline.map(|d| d - now));
    }

    /// The earliest claim deadline still ahead.
    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.claims
            .values()
            .filter_map(|c| c.hold_until)
            .filter(|t| *t > now)
            .min()
    }

    async fn on_kernel_event(&mut self, ev: KernelEvent) {
        match ev {
            KernelEvent::AddressAdded(k) => {
                self.have
                    .retain(|h| !(h.addr == k.addr && h.ifindex == k.ifindex));
                self.have.push(k);
                if self.config.watch.contains(&k.addr) {
                    self.publish(self.wanted_now().0);
                }
            }
            KernelEvent::AddressRemoved(k) => {
                self.have
                    .retain(|h| !(h.addr == k.addr && h.ifindex == k.ifindex));
                if self.claimed_now(k.addr) {
                    warn!(addr = %k.addr, "a held address was removed from the interface; adding it back");
                    // Record the gap before closing it: readiness tells the truth.
                    self.publish(self.wanted_now().0);
                    self.converge().await;
                } else if self.config.watch.contains(&k.addr) {
                    self.publish(self.wanted_now().0);
                }
            }
            KernelEvent::LinkChanged(link) => {
                let was_up = self.links.get(&link.name).is_some_and(|l| l.up);
                let now_up = link.up;
                self.links.insert(link.name.clone(), link.clone());
                if now_up && !was_up {
                    // Carrier is back: neighbours may have forgotten us.
                    self.reannounce_on(&link);
                } else if was_up && !now_up {
                    self.converge().await;
                }
            }
        }
    }

    /// Another node announced `c.addr` (or answered a probe for it): an
    /// address being checked is not clear; a held one is let go when this
    /// node holds it only on an unconfirmed claim (see
    /// `plan::yields_to_another`).
    async fn on_conflict(&mut self, c: Conflict) {
        if let Some(p) = self.probes.get_mut(&c.addr) {
            p.answered = Some((Instant::now(), c.mac));
            return;
        }
        if self.yielded.contains_key(&c.addr) {
            return;
        }
        let mac = mac_text(c.mac);
        if yields_to_another(Instant::now(), &self.claims, c.addr) {
            warn!(addr = %c.addr, other = %mac, "another node announces this address while this node cannot renew its Lease (API server out of reach): letting it go");
            self.yielded.insert(
                c.addr,
                format!("announced by {mac} while the API server was out of reach"),
            );
            self.converge().await;
        } else {
            debug!(addr = %c.addr, other = %mac, "another node announces an address this node holds with a renewed Lease");
        }
    }

    /// A probe round for `addr` ended: clear it when nobody answered, else
    /// ask again (and after `probe::patience`, take it anyway).
    async fn on_probed(&mut self, addr: IpAddr) {
        let Some(p) = self.probes.get(&addr) else {
            return;
        };
        let waited = p.since.elapsed();
        let patience = probe::patience(self.config.lifetime);
        if !p.answered_this_round() || waited >= patience {
            if p.answered_this_round() {
                let mac = p.answered.map(|(_, m)| mac_text(m)).unwrap_or_default();
                warn!(%addr, other = %mac, waited = ?waited, "another host still answers for this address after its lifetime could have ended: taking it over (is it configured there by hand, or is its vip_addr_lifetime 0?)");
            } else if p.answered.is_some() {
                info!(%addr, waited = ?waited, "the previous holder no longer answers for this address: taking it");
            } else {
                debug!(%addr, "no other host answers for this address");
            }
            self.probes.remove(&addr);
            self.cleared.insert(addr);
            self.converge().await;
            return;
        }
        if waited < probe::RETRY * 2 {
            let mac = p.answered.map(|(_, m)| mac_text(m)).unwrap_or_default();
            info!(%addr, other = %mac, "another host still answers for this address (a holder whose vipd died with its guardian): waiting until its kernel lets it go");
        }
        self.probe_round(addr, probe::RETRY).await;
    }

    /// Starts (or restarts) checking `addr` after `delay`.
    async fn probe_round(&mut self, addr: IpAddr, delay: Duration) {
        let Some(iface) = self.wanted_interface(addr) else {
            self.probes.remove(&addr);
            return;
        };
        let Some(link) = self.link(&iface).await else {
            return;
        };
        self.ensure_watcher(&link);
        let task = probe::round(&link, addr, delay, self.probe_tx.clone());
        let round = Instant::now() + delay;
        match self.probes.get_mut(&addr) {
            Some(p) => {
                p.task.abort();
                p.task = task;
                p.round = round;
            }
            None => {
                self.probes.insert(
                    addr,
                    probe::Probe {
                        since: Instant::now(),
                        round,
                        answered: None,
                        task,
                    },
                );
            }
        }
    }

    fn wanted_interface(&self, addr: IpAddr) -> Option<String> {
        wanted(Instant::now(), &self.claims)
            .get(&addr)
            .map(|w| w.interface.clone())
    }

    fn claimed_now(&self, addr: IpAddr) -> bool {
        self.wanted_now().0.contains_key(&addr)
    }

    /// What should be on this node now, and the claims refused. Addresses
    /// still being checked on the wire are not (yet).
    fn wanted_now(&self) -> (BTreeMap<IpAddr, Want>, BTreeMap<IpAddr, String>) {
        let mut want = wanted(Instant::now(), &self.claims);
        want.retain(|a, _| !self.yielded.contains_key(a) && !self.probes.contains_key(a));
        let refused = refuse_foreign(&mut want, &self.have);
        (want, refused)
    }

    async fn refresh_kernel_view(&mut self) -> Result<(), NetlinkError> {
        self.have = self.netlink.addresses().await?;
        Ok(())
    }

    async fn link(&mut self, name: &str) -> Option<Link> {
        if let Some(l) = self.links.get(name) {
            return Some(l.clone());
        }
        match self.netlink.link_by_name(name).await {
            Ok(Some(l)) => {
                self.links.insert(name.to_string(), l.clone());
                Some(l)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(interface = name, error = %e, "cannot read interface");
                None
            }
        }
    }

    /// Brings the kernel and the announcers in line with the claims.
    async fn converge(&mut self) {
        // A let-go address nobody claims any more is forgotten.
        let now = Instant::now();
        let claimed = wanted(now, &self.claims);
        self.yielded.retain(|a, _| claimed.contains_key(a));
        // Held on without a renewed Lease, on an interface that lost its
        // carrier: the address serves nobody there, and brought back with
        // the link it would fight the node that took over. Let it go until
        // the Lease is renewed.
        for (addr, w) in &claimed {
            let down = self.links.get(&w.interface).is_some_and(|l| !l.up);
            if down
                && !self.yielded.contains_key(addr)
                && yields_to_another(now, &self.claims, *addr)
            {
                warn!(%addr, interface = %w.interface, "the interface is down and the Lease cannot be renewed: letting the address go");
                self.yielded.insert(
                    *addr,
                    format!(
                        "{} lost its carrier while the API server was out of reach",
                        w.interface
                    ),
                );
            }
        }
        // Checks forgotten for addresses nobody claims any more; new checks
        // for claimed addresses that ask for one.
        self.cleared.retain(|a| claimed.contains_key(a));
        let stale: Vec<IpAddr> = self
            .probes
            .keys()
            .filter(|a| !claimed.contains_key(*a))
            .copied()
            .collect();
        for a in stale {
            if let Some(p) = self.probes.remove(&a) {
                p.task.abort();
            }
        }
        let mut pending = claimed.clone();
        pending.retain(|a, _| !self.yielded.contains_key(a));
        for addr in to_probe(now, &pending, &self.claims, &self.have, &self.cleared) {
            if !self.probes.contains_key(&addr) {
                self.probe_round(addr, Duration::ZERO).await;
            }
        }
        let (want, refused) = self.wanted_now();
        for (addr, why) in &refused {
            if !self.held.borrow().refused.contains_key(addr) {
                warn!(%addr, "{why}: refusing to hold it for a Service");
            }
        }
        for w in want.values() {
            if self.link(&w.interface).await.is_none() {
                error!(interface = %w.interface, "interface not found: cannot hold addresses on it");
            }
        }
        let links = self.links.clone();
        let p = plan(&want, &self.have, |name| links.get(name).map(|l| l.index));

        for k in &p.remove {
            match self.netlink.del_address(k.ifindex, k.addr, k.prefix).await {
                Ok(()) => {
                    info!(addr = %k.addr, "address released");
                    self.have
                        .retain(|h| !(h.addr == k.addr && h.ifindex == k.ifindex));
                }
                Err(e) => error!(addr = %k.addr, error = %e, "cannot remove address"),
            }
        }
        for (addr, iface, prefix) in &p.add {
            let Some(link) = links.get(iface) else {
                continue;
            };
            match self
                .netlink
                .put_address(link.index, *addr, *prefix, self.config.lifetime)
                .await
            {
                Ok(()) => {
                    info!(%addr, interface = %iface, "address added");
                    self.have.push(KernelAddr {
                        ifindex: link.index,
                        addr: *addr,
                        prefix: *prefix,
                        ours: true,
                    });
                    self.since.insert(*addr, SystemTime::now());
                    self.start_announcer(link, *addr);
                }
                Err(e) => error!(%addr, interface = %iface, error = %e, "cannot add address"),
            }
        }
        // Announce wanted addresses that are present but have no announcer
        // (configured by someone else, or present after a restart race).
        let present: std::collections::HashSet<(IpAddr, u32)> =
            self.have.iter().map(|k| (k.addr, k.ifindex)).collect();
        for (addr, w) in &want {
            if !self.announcers.contains_key(addr) {
                if let Some(link) = links.get(&w.interface) {
                    if present.contains(&(*addr, link.index)) {
                        self.since.entry(*addr).or_insert_with(SystemTime::now);
                        self.start_announcer(link, *addr);
                    }
                }
            }
        }
        // Stop announcing what is no longer wanted.
        let stale: Vec<IpAddr> = self
            .announcers
            .keys()
            .filter(|a| !want.contains_key(a))
            .copied()
            .collect();
        for a in stale {
            if let Some(h) = self.announcers.remove(&a) {
                h.task.abort();
            }
            self.since.remove(&a);
        }
        self.update_probing();
        self.publish_with(want, refused);
    }

    /// Probing on for the addresses held on an unconfirmed claim only.
    fn update_probing(&self) {
        let now = Instant::now();
        for (addr, a) in &self.announcers {
            let probe = yields_to_another(now, &self.claims, *addr);
            if a.probing.swap(probe, Ordering::Relaxed) != probe && probe {
                info!(%addr, "holding without a renewed Lease: probing for another holder with every announcement");
            }
        }
    }

    fn start_announcer(&mut self, link: &Link, addr: IpAddr) {
        if let Some(old) = self.announcers.remove(&addr) {
            old.task.abort();
        }
        if self.config.announce != Announce::Arp {
            return;
        }
        let schedule = Schedule::new(self.config.arp_rate);
        let probing = Arc::new(AtomicBool::new(yields_to_another(
            Instant::now(),
            &self.claims,
            addr,
        )));
        if let Some(task) =
            announce::spawn(link, addr, schedule, self.stats.clone(), probing.clone())
        {
            self.announcers.insert(addr, Announcer { task, probing });
        }
        self.ensure_watcher(link);
    }

    /// Listens on `link` for other hosts announcing or answering for the
    /// addresses held or being checked (ARP mode only).
    fn ensure_watcher(&mut self, link: &Link) {
        if self.config.announce != Announce::Arp {
            return;
        }
        if let Some(mac) = link.mac {
            if self.watched_links.insert(link.index) {
                conflict::watch(
                    link.index,
                    link.name.clone(),
                    mac,
                    self.held_set.clone(),
                    self.conflict_tx.clone(),
                );
            }
        }
    }

    fn reannounce_on(&mut self, link: &Link) {
        let addrs: Vec<IpAddr> = self
            .have
            .iter()
            .filter(|k| k.ifindex == link.index && self.announcers.contains_key(&k.addr))
            .map(|k| k.addr)
            .collect();
        for a in addrs {
            info!(addr = %a, interface = %link.name, "link is up again: announcing");
            self.start_announcer(link, a);
        }
    }

    /// Pushes the kernel lifetime of every held address of ours forward.
    async fn refresh_lifetimes(&mut self) {
        let Some(lifetime) = self.config.lifetime else {
            return;
        };
        let (want, _) = self.wanted_now();
        let ours: Vec<KernelAddr> = self
            .have
            .iter()
            .filter(|k| k.ours && want.contains_key(&k.addr))
            .copied()
            .collect();
        for k in ours {
            if let Err(e) = self
                .netlink
                .put_address(k.ifindex, k.addr, k.prefix, Some(lifetime))
                .await
            {
                warn!(addr = %k.addr, error = %e, "cannot refresh address lifetime");
            }
        }
    }

    /// Publishes what is held now, keeping the refusals of the last converge.
    fn publish(&self, claimed: BTreeMap<IpAddr, Want>) {
        let refused = self.held.borrow().refused.clone();
        self.publish_with(claimed, refused);
    }

    fn publish_with(&self, claimed: BTreeMap<IpAddr, Want>, refused: BTreeMap<IpAddr, String>) {
        // Indexed once: a thousand claims against a thousand addresses.
        let by_key: HashMap<(IpAddr, u32), &KernelAddr> =
            self.have.iter().map(|k| ((k.addr, k.ifindex), k)).collect();
        let mut addresses = BTreeMap::new();
        for (addr, w) in &claimed {
            if let Some(link) = self.links.get(&w.interface) {
                if let Some(k) = by_key.get(&(*addr, link.index)) {
                    addresses.insert(
                        *addr,
                        HeldAddr {
                            addr: *addr,
                            interface: w.interface.clone(),
                            since: self
                                .since
                                .get(addr)
                                .copied()
                                .unwrap_or_else(SystemTime::now),
                            ours: k.ours,
                        },
                    );
                }
            }
        }
        let mut missing: Vec<String> = claimed
            .iter()
            .filter(|(a, _)| !addresses.contains_key(*a))
            .map(|(a, w)| format!("{a} is not on {}", w.interface))
            .collect();
        // Claimed, but waiting for another host to let go first.
        missing.extend(
            self.probes
                .keys()
                .map(|a| format!("{a} is not added yet: another host may still hold it")),
        );
        self.readiness.lock().expect("not poisoned").record(missing);
        let stray: BTreeSet<IpAddr> = self
            .config
            .watch
            .iter()
            .filter(|a| !claimed.contains_key(a) && self.have.iter().any(|k| k.addr == **a))
            .copied()
            .collect();
        *self.held_set.write().expect("not poisoned") = addresses
            .keys()
            .chain(self.probes.keys())
            .copied()
            .collect();
        let yielded: BTreeMap<IpAddr, String> = self.yielded.clone();
        let probing: BTreeMap<IpAddr, String> = self
            .probes
            .iter()
            .map(|(a, p)| {
                let why = match p.answered {
                    Some((_, m)) => format!(
                        "{} still answers for it (checking since {} ms ago)",
                        mac_text(m),
                        p.since.elapsed().as_millis()
                    ),
                    None => "checking that no other host holds it".to_string(),
                };
                (*a, why)
            })
            .collect();
        self.held.send_if_modified(|h| {
            let new = Held {
                addresses,
                claimed,
                stray,
                refused,
                yielded,
                probing,
            };
            if *h != new {
                *h = new;
                true
            } else {
                false
            }
        });
    }
}

fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => futures::future::pending().await,
    }
}
