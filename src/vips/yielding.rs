//! Another host and this node's addresses: letting an address go when
//! another node announces it while this node cannot confirm its claim, and
//! checking that no other host holds an address before adding it.

use super::plan::{takes_anyway, until_silent, yielding};
use super::*;

impl Owner {
    /// Another node announced `c.addr` (or answered a probe for it): an
    /// address being checked is not clear; a held one is let go when this
    /// node holds it only on an unconfirmed claim (see
    /// `plan::yields_to_another`).
    pub(super) async fn on_conflict(&mut self, c: Conflict) {
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

    /// Probe rounds ended (all those that ended together: a node taking
    /// over a dead one's addresses checks hundreds at once): each address is
    /// cleared when nobody answered, else asked again (and after
    /// `probe::patience` taken anyway, unless claimed `until_silent`); the
    /// kernel converges once for all the cleared ones.
    pub(super) async fn on_probed(&mut self, addrs: Vec<IpAddr>) {
        // Read from the claims once for the whole batch: per address, a
        // takeover of thousands cost the owner seconds (quadratic), and
        // grants and deadlines waited behind it.
        let want = wanted(Instant::now(), &self.claims);
        let silent = until_silent(&self.claims);
        let mut cleared = false;
        for addr in addrs {
            cleared |= self.probe_ended(addr, &want, &silent).await;
        }
        if cleared {
            self.converge().await;
        }
    }

    /// One ended round; true when `addr` is cleared (to be added). `want`
    /// and `silent`: what the claims want now, and which of it is claimed
    /// `until_silent`.
    async fn probe_ended(
        &mut self,
        addr: IpAddr,
        want: &BTreeMap<IpAddr, Want>,
        silent: &HashSet<IpAddr>,
    ) -> bool {
        let Some(p) = self.probes.get(&addr) else {
            return false;
        };
        let waited = p.since.elapsed();
        // The lifetime the previous holder gave its copy: this address's.
        let sources = want.get(&addr).map(|w| &w.sources).into_iter().flatten();
        let patience = probe::patience(self.config.lifetimes.of(sources));
        let out_of_patience = takes_anyway(silent.contains(&addr), waited, patience);
        let quiet_for = p.answered.map_or(p.since, |(at, _)| at).elapsed();
        let cautious = p.answered.is_some() || silent.contains(&addr);
        if probe::silent_enough(p.answered_this_round(), quiet_for, cautious) || out_of_patience {
            if p.answered_this_round() {
                let mac = p.answered.map(|(_, m)| mac_text(m)).unwrap_or_default();
                warn!(%addr, other = %mac, waited = ?waited, "another host still answers for this address after its lifetime could have ended: taking it over (is it configured there by hand, or is its lifetime 0: vip_addr_lifetime, svc_addr_lifetime?)");
            } else if p.answered.is_some() {
                info!(%addr, waited = ?waited, "the previous holder no longer answers for this address: taking it");
            } else {
                debug!(%addr, "no other host answers for this address");
            }
            self.probes.remove(&addr);
            self.cleared.insert(addr);
            return true;
        }
        if waited < probe::RETRY * 2 {
            let mac = p.answered.map(|(_, m)| mac_text(m)).unwrap_or_default();
            info!(%addr, other = %mac, "another host still answers for this address (a holder whose vipd died with its guardian): waiting until its kernel lets it go");
        }
        let Some(w) = want.get(&addr) else {
            self.probes.remove(&addr);
            return false;
        };
        let delay = probe::retry_delay(self.probes.len());
        self.probe_round(addr, &w.interface, delay).await;
        false
    }

    /// Starts (or restarts) checking `addr` on `iface` after `delay`.
    pub(super) async fn probe_round(&mut self, addr: IpAddr, iface: &str, delay: Duration) {
        let Some(link) = self.link(iface).await else {
            return;
        };
        self.ensure_watcher(&link);
        let sender = self.sender(&link);
        let task = probe::round(
            &link,
            sender,
            addr,
            delay,
            &self.held_set,
            self.probe_tx.clone(),
        );
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

    /// Probing on for the addresses held on an unconfirmed claim only.
    pub(super) fn update_probing(&self) {
        let yielding = yielding(Instant::now(), &self.claims);
        for addr in self.announcers.set_probing(&yielding) {
            info!(%addr, "holding without a renewed Lease: probing for another holder with every announcement");
        }
    }
}

pub(super) fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
