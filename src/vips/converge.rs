//! Bringing the kernel and the announcers in line with the claims, and
//! publishing what is held.

use super::yielding::mac_text;
use super::*;

impl Owner {
    pub(super) fn claimed_now(&self, addr: IpAddr) -> bool {
        !self.yielded.contains_key(&addr)
            && !self.probes.contains_key(&addr)
            && super::plan::wanted_and_allowed(Instant::now(), &self.claims, &self.have, addr)
    }

    /// What should be on this node now, and the claims refused. Addresses
    /// still being checked on the wire are not (yet).
    pub(super) fn wanted_now(&self) -> (BTreeMap<IpAddr, Want>, BTreeMap<IpAddr, String>) {
        let mut want = wanted(Instant::now(), &self.claims);
        want.retain(|a, _| !self.yielded.contains_key(a) && !self.probes.contains_key(a));
        let refused = refuse_foreign(&mut want, &self.have);
        (want, refused)
    }

    pub(super) async fn refresh_kernel_view(&mut self) -> Result<(), NetlinkError> {
        self.have = self.netlink.addresses().await?;
        Ok(())
    }

    /// Brings the kernel and the announcers in line with the claims.
    pub(super) async fn converge(&mut self) {
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
            if let Some(w) = pending
                .get(&addr)
                .filter(|_| !self.probes.contains_key(&addr))
            {
                self.probe_round(addr, &w.interface, Duration::ZERO).await;
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

        // Removed many at once too (a Services leader stepping down
        // withdraws hundreds), all before any add.
        let removed = self
            .batched(p.remove.clone(), |nl, k| async move {
                (k, nl.del_address(k.ifindex, k.addr, k.prefix).await)
            })
            .await;
        let mut gone = HashSet::new();
        for (k, r) in removed {
            match r {
                Ok(()) => {
                    info!(addr = %k.addr, "address released");
                    self.refreshed.remove(&k.addr);
                    gone.insert((k.addr, k.ifindex));
                }
                Err(e) => error!(addr = %k.addr, error = %e, "cannot remove address"),
            }
        }
        self.have.retain(|h| !gone.contains(&(h.addr, h.ifindex)));
        // The guardian knows the deadline before any address appears: the
        // first add opens raw sockets (tens of milliseconds), and a vipd
        // killed in between would otherwise lose an address its lead
        // still covered, or keep one with no deadline told.
        if !p.add.is_empty() {
            self.update_guardian();
        }
        // Added many at once (a takeover adds hundreds), each batch
        // recorded and announced as it lands.
        let lifetimes = self.config.lifetimes;
        let adding: Vec<_> = p
            .add
            .iter()
            .filter_map(|(addr, iface, prefix)| {
                let link = links.get(iface)?.clone();
                let lifetime = lifetimes.of(want.get(addr).map(|w| &w.sources)?);
                Some((link, *addr, iface.clone(), *prefix, lifetime))
            })
            .collect();
        let yielding = super::plan::yielding(Instant::now(), &self.claims);
        for batch in adding.chunks(NETLINK_IN_FLIGHT) {
            let added =
                futures::future::join_all(batch.iter().map(|(link, addr, _, prefix, lifetime)| {
                    self.netlink
                        .put_address(link.index, *addr, *prefix, *lifetime)
                }))
                .await;
            let added_at = Instant::now();
            for ((link, addr, iface, prefix, lifetime), result) in batch.iter().zip(added) {
                let (addr, prefix) = (*addr, *prefix);
                match result {
                    Ok(()) => {
                        info!(%addr, interface = %iface, "address added");
                        if let Some(lifetime) = *lifetime {
                            let at = added_at;
                            self.refreshed
                                .insert(addr, super::refresh::Refreshed { at, lifetime });
                        }
                        self.have.push(KernelAddr {
                            ifindex: link.index,
                            addr,
                            prefix,
                            ours: true,
                        });
                        self.since.insert(addr, SystemTime::now());
                        self.start_announcer(link, addr, yielding.contains(&addr));
                    }
                    Err(e) => {
                        error!(%addr, interface = %iface, error = %e, "cannot add address");
                        self.retry_at
                            .get_or_insert(Instant::now() + super::owner::ADD_RETRY);
                    }
                }
            }
            self.take_extensions();
        }
        // Announce wanted addresses that are present but have no announcer
        // (configured by someone else, or present after a restart race).
        let present: std::collections::HashSet<(IpAddr, u32)> =
            self.have.iter().map(|k| (k.addr, k.ifindex)).collect();
        for (addr, w) in &want {
            if !self.announcers.contains(addr) {
                if let Some(link) = links.get(&w.interface) {
                    if present.contains(&(*addr, link.index)) {
                        self.since.entry(*addr).or_insert_with(SystemTime::now);
                        self.start_announcer(link, *addr, yielding.contains(addr));
                    }
                }
            }
        }
        // Stop announcing what is no longer wanted.
        for a in self.announcers.addresses() {
            if !want.contains_key(&a) {
                self.announcers.stop(a);
                self.since.remove(&a);
            }
        }
        self.update_probing();
        self.publish_with(want, refused);
    }

    /// Publishes what is held now, keeping the refusals of the last converge.
    pub(super) fn publish(&mut self, claimed: BTreeMap<IpAddr, Want>) {
        let refused = self.held.borrow().refused.clone();
        self.publish_with(claimed, refused);
    }

    pub(super) fn publish_with(
        &mut self,
        claimed: BTreeMap<IpAddr, Want>,
        refused: BTreeMap<IpAddr, String>,
    ) {
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
        self.readiness.record(missing);
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
        let plain = vipd_bgp::RouteAttrs::default();
        let routes = claimed
            .into_iter()
            .filter(|(_, w)| w.route != plain)
            .map(|(a, w)| (a, w.route))
            .collect();
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
                routes,
                stray,
                refused,
                yielded,
                probing,
                readiness: self.readiness.clone(),
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
