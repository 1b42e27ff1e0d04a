//! The address owner's loop: it serves claims, follows the kernel's address
//! and link events, keeps lifetimes and the guardian's deadline, and runs
//! the announcers. Converging lives in `converge`, letting go to another
//! host and checking before adding in `yielding`.

use super::*;

/// How often the owner reads every address back from the kernel, in case
/// its event stream missed one.
const RESYNC: Duration = Duration::from_secs(5);

/// How soon an add the kernel refused is tried again.
pub(super) const ADD_RETRY: Duration = Duration::from_millis(500);

pub(super) struct Owner {
    pub(super) guardian: Option<Guardian>,
    pub(super) netlink: Netlink,
    pub(super) config: OwnerConfig,
    pub(super) claims: BTreeMap<Source, ClaimSet>,
    /// The kernel's addresses, as last read or reported.
    pub(super) have: Vec<KernelAddr>,
    pub(super) links: HashMap<String, Link>,
    /// Every held address's announcements (ARP mode).
    pub(super) announcers: Announcers,
    pub(super) since: HashMap<IpAddr, SystemTime>,
    pub(super) stats: Arc<AnnounceStats>,
    pub(super) held: watch::Sender<Held>,
    pub(super) readiness: Readiness,
    /// The last term granted (see `VipHandle::grant`).
    pub(super) next_term: u64,
    /// Addresses let go to another node's announcement, with why.
    pub(super) yielded: BTreeMap<IpAddr, String>,
    /// What the conflict watchers compare announcements with.
    pub(super) held_set: conflict::HeldSet,
    pub(super) conflict_tx: mpsc::UnboundedSender<Conflict>,
    /// Interfaces with a conflict watcher.
    pub(super) watched_links: HashSet<u32>,
    /// Addresses being checked on the wire before they are added.
    pub(super) probes: HashMap<IpAddr, probe::Probe>,
    /// Addresses checked: nobody else answered (or it was taken anyway).
    pub(super) cleared: HashSet<IpAddr>,
    /// The held addresses of ours with a kernel lifetime: when it was
    /// last given, and which.
    pub(super) refreshed: HashMap<IpAddr, refresh::Refreshed>,
    /// The claims changed since the guardian was last told what to drop
    /// at vipd's death.
    pub(super) drops_stale: bool,
    pub(super) probe_tx: mpsc::UnboundedSender<IpAddr>,
    /// When to converge again because an add failed (the interface
    /// refused it: IPv6 off, the link gone), however the kernel's events go.
    pub(super) retry_at: Option<Instant>,
    /// The sources' commands.
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    /// Commands read while working through kernel requests, behind one
    /// that could not be applied then (see `take_extensions`), in order.
    pub(super) deferred: VecDeque<Command>,
    /// One raw socket per interface for announcements and probes.
    pub(super) senders: HashMap<u32, Arc<vipd_arp::Sender>>,
}

impl Owner {
    pub(super) async fn run(
        mut self,
        mut conflicts: mpsc::UnboundedReceiver<Conflict>,
        mut probed: mpsc::UnboundedReceiver<IpAddr>,
        events: impl futures::Stream<Item = KernelEvent> + Unpin + Send,
    ) {
        let mut events = events;
        // A slow resync catches anything the event stream missed.
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Lifetimes are refreshed a slice at a time (see `refresh`).
        let mut refresh = tokio::time::interval(refresh::TICK);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refreshing = self.config.lifetimes.any();
        loop {
            self.update_guardian();
            if let Some(cmd) = self.deferred.pop_front() {
                self.on_command(cmd).await;
                continue;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else {
                        // Every handle is gone: the process is ending.
                        self.claims.clear();
                        self.drops_stale = true;
                        self.converge().await;
                        return;
                    };
                    self.on_command(cmd).await;
                }
                Some(ev) = events.next() => self.on_kernel_event(ev).await,
                Some(c) = conflicts.recv() => self.on_conflict(c).await,
                Some(a) = probed.recv() => {
                    let mut ended = vec![a];
                    while let Ok(more) = probed.try_recv() {
                        ended.push(more);
                    }
                    // Answers already heard count for the rounds that
                    // end now, whichever channel the select read first.
                    while let Ok(c) = conflicts.try_recv() {
                        self.on_conflict(c).await;
                    }
                    self.on_probed(ended).await
                }
                _ = resync.tick() => {
                    if let Err(e) = self.refresh_kernel_view().await {
                        warn!(error = %e, "cannot read addresses");
                    }
                    self.converge().await;
                    self.track_lifetimes();
                }
                _ = refresh.tick(), if refreshing => self.refresh_lifetimes().await,
                _ = sleep_until(self.retry_at) => {
                    self.retry_at = None;
                    if let Err(e) = self.refresh_kernel_view().await {
                        warn!(error = %e, "cannot read addresses");
                    }
                    self.converge().await;
                }
                _ = sleep_until(deadline) => {
                    // Commands already queued first: an extension sent in
                    // time may have waited behind a long converge (a
                    // thousand IPv6 adds take seconds); judged before it,
                    // the deadline would withdraw everything, and the
                    // extension, read next, add it all back.
                    while let Some(cmd) = self.deferred.pop_front() {
                        self.on_command(cmd).await;
                    }
                    while let Ok(cmd) = self.commands.try_recv() {
                        self.on_command(cmd).await;
                    }
                    self.converge().await
                }
            }
        }
    }

    /// `op` on each of `items`, `NETLINK_IN_FLIGHT` requests at a time,
    /// taking in the extensions that arrive between batches (see
    /// [`Owner::take_extensions`]). Results in the order of `items`.
    pub(super) async fn batched<T, R, Fut>(
        &mut self,
        items: Vec<T>,
        op: impl Fn(Netlink, T) -> Fut,
    ) -> Vec<R>
    where
        Fut: std::future::Future<Output = R>,
    {
        let mut out = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let batch: Vec<Fut> = items
                .by_ref()
                .take(NETLINK_IN_FLIGHT)
                .map(|t| op(self.netlink.clone(), t))
                .collect();
            out.extend(futures::future::join_all(batch).await);
            self.take_extensions();
        }
        out
    }

    /// Applies the extensions that arrived meanwhile, and tells the
    /// guardian: called between batches of kernel requests, so a renewed
    /// lead never lapses behind the owner's own work (a takeover's
    /// thousands of IPv6 adds take seconds). Only plain renewals are
    /// applied here, in order; the first command that needs more (a new
    /// list, a lapsed or unconfirmed claim) and everything after it wait
    /// for the loop.
    pub(super) fn take_extensions(&mut self) {
        while self.deferred.is_empty() {
            let Ok(cmd) = self.commands.try_recv() else {
                break;
            };
            match cmd {
                Command::Extend {
                    source,
                    hold_until,
                    confirmed,
                } if self.renews_plainly(&source, confirmed) => {
                    if let Some(set) = self.claims.get_mut(&source) {
                        set.hold_until = Some(hold_until);
                    }
                }
                other => self.deferred.push_back(other),
            }
        }
        self.update_guardian();
    }

    /// Whether a confirmed extension of `source` only moves a deadline
    /// still ahead: nothing to add back, nothing let go to take back.
    fn renews_plainly(&self, source: &Source, confirmed: bool) -> bool {
        let now = Instant::now();
        self.claims.get(source).is_some_and(|set| {
            confirmed
                && set.confirmed
                && set.hold_until.is_some_and(|t| t > now)
                && !set
                    .claims
                    .iter()
                    .any(|c| self.yielded.contains_key(&c.addr))
        })
    }

    /// Tells the guardian the earliest deadline of the claims in force.
    pub(super) fn update_guardian(&mut self) {
        let Some(g) = self.guardian.as_mut() else {
            return;
        };
        let now = Instant::now();
        g.set(plan::guardian_deadline(&self.claims, now));
        g.set_at_death(plan::at_death(&self.claims, now).map(|d| d.saturating_duration_since(now)));
        // Only commands change which addresses are claimed, and how: the
        // list is not rebuilt for every kernel event, answer and ended
        // probe round (with 5000 addresses, a map of 5000 built each time).
        if !std::mem::take(&mut self.drops_stale) {
            return;
        }
        // Addresses every claim on which lets them go at vipd's death.
        let mut drop: BTreeMap<IpAddr, bool> = BTreeMap::new();
        for set in self.claims.values() {
            for c in &set.claims {
                let d = drop.entry(c.addr).or_insert(true);
                *d &= set.drop_on_death;
            }
        }
        g.set_drop_on_death(
            drop.into_iter()
                .filter(|(_, d)| *d)
                .map(|(a, _)| a)
                .collect(),
        );
    }

    /// The earliest claim deadline still ahead.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.claims
            .values()
            .filter_map(|c| c.hold_until)
            .filter(|t| *t > now)
            .min()
    }

    pub(super) async fn on_kernel_event(&mut self, ev: KernelEvent) {
        match ev {
            KernelEvent::AddressAdded(k) => {
                self.have
                    .retain(|h| !(h.addr == k.addr && h.ifindex == k.ifindex));
                self.have.push(k);
                if self.config.watch.contains(&k.addr) {
                    let want = self.wanted_now().0;
                    self.publish(want);
                }
            }
            KernelEvent::AddressRemoved(k) => {
                self.have
                    .retain(|h| !(h.addr == k.addr && h.ifindex == k.ifindex));
                if self.claimed_now(k.addr) {
                    warn!(addr = %k.addr, "a held address was removed from the interface; adding it back");
                    // Record the gap before closing it: readiness tells the truth.
                    let want = self.wanted_now().0;
                    self.publish(want);
                    self.converge().await;
                } else if self.config.watch.contains(&k.addr) {
                    let want = self.wanted_now().0;
                    self.publish(want);
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

    pub(super) async fn link(&mut self, name: &str) -> Option<Link> {
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

    /// Starts announcing `addr` on `link`; `probing`: with a probe for
    /// another holder in every announcement (held on an unconfirmed claim,
    /// see [`super::plan::yielding`]).
    pub(super) fn start_announcer(&mut self, link: &Link, addr: IpAddr, probing: bool) {
        self.announcers.stop(addr);
        if self.config.announce != Announce::Arp {
            return;
        }
        let schedule = Schedule::new(self.config.arp_rate);
        if let Some(sender) = self.sender(link) {
            self.announcers
                .announce(link, sender, addr, schedule, probing);
        }
        self.ensure_watcher(link);
    }

    /// The raw socket announcements and probes leave `link` through, one
    /// per interface (a socket per address would be a thousand descriptors,
    /// and closing each costs the kernel a network-wide synchronisation:
    /// a vipd holding a thousand addresses would take seconds to die).
    pub(super) fn sender(&mut self, link: &Link) -> Option<Arc<vipd_arp::Sender>> {
        if let Some(s) = self.senders.get(&link.index) {
            return Some(s.clone());
        }
        match vipd_arp::Sender::open(link.index) {
            Ok(s) => {
                let s = Arc::new(s);
                self.senders.insert(link.index, s.clone());
                Some(s)
            }
            Err(e) => {
                self.stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(interface = %link.name, error = %e, "cannot open a raw socket (is CAP_NET_RAW granted?)");
                None
            }
        }
    }

    /// Listens on `link` for other hosts announcing or answering for the
    /// addresses held or being checked (ARP mode only).
    pub(super) fn ensure_watcher(&mut self, link: &Link) {
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

    pub(super) fn reannounce_on(&mut self, link: &Link) {
        let addrs: Vec<IpAddr> = self
            .have
            .iter()
            .filter(|k| k.ifindex == link.index && self.announcers.contains(&k.addr))
            .map(|k| k.addr)
            .collect();
        let yielding = super::plan::yielding(Instant::now(), &self.claims);
        for a in addrs {
            info!(addr = %a, interface = %link.name, "link is up again: announcing");
            self.start_announcer(link, a, yielding.contains(&a));
        }
    }

    /// Gives the addresses due a refresh (see `refresh::due`) their
    /// lifetime again, a slice at a time.
    pub(super) async fn refresh_lifetimes(&mut self) {
        let due = refresh::due(&self.refreshed, Instant::now());
        if due.is_empty() {
            return;
        }
        let (want, _) = self.wanted_now();
        let ours: HashMap<IpAddr, KernelAddr> = self
            .have
            .iter()
            .filter(|k| k.ours)
            .map(|k| (k.addr, *k))
            .collect();
        let mut refreshing = Vec::new();
        for addr in due {
            let held = ours.get(&addr).zip(want.get(&addr));
            match held.map(|(k, w)| (k, self.config.lifetimes.of(&w.sources))) {
                Some((k, Some(lifetime))) => refreshing.push((*k, lifetime)),
                // Gone, no longer wanted, or permanent now: nothing to keep.
                _ => {
                    self.refreshed.remove(&addr);
                }
            }
        }
        let results = self
            .batched(refreshing, |nl, (k, lifetime)| async move {
                let r = nl
                    .put_address(k.ifindex, k.addr, k.prefix, Some(lifetime))
                    .await;
                (k, lifetime, r)
            })
            .await;
        let now = Instant::now();
        for (k, lifetime, r) in results {
            match r {
                Ok(()) => {
                    self.refreshed
                        .insert(k.addr, refresh::Refreshed { at: now, lifetime });
                }
                // Still due: tried again next tick.
                Err(e) => warn!(addr = %k.addr, error = %e, "cannot refresh address lifetime"),
            }
        }
    }

    /// Keeps the lifetime records in line with the kernel after a resync:
    /// forgets addresses no longer held, and counts a held address of ours
    /// without a record (its add's answer was lost) as due at once.
    pub(super) fn track_lifetimes(&mut self) {
        let ours: HashSet<IpAddr> = self
            .have
            .iter()
            .filter(|k| k.ours)
            .map(|k| k.addr)
            .collect();
        self.refreshed.retain(|a, _| ours.contains(a));
        if !self.config.lifetimes.any() {
            return;
        }
        let now = Instant::now();
        for (addr, w) in self.wanted_now().0 {
            if !ours.contains(&addr) || self.refreshed.contains_key(&addr) {
                continue;
            }
            if let Some(lifetime) = self.config.lifetimes.of(&w.sources) {
                let at = now.checked_sub(lifetime).unwrap_or(now);
                self.refreshed
                    .insert(addr, refresh::Refreshed { at, lifetime });
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => futures::future::pending().await,
    }
}
