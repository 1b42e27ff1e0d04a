//! Placement (`svc_placement`): Service addresses that need a node of their
//! own (`svc_election`, or addresses only some nodes may announce) are
//! placed by rendezvous hashing over the live eligible nodes, instead of
//! one Lease per address. Each vipd renews one Lease of its own, its
//! liveness (`vipd-node-<node>`), at most once a second: steady-state API
//! writes grow with nodes, not Services (a thousand per-address Leases
//! renewed every retry period are two thousand writes a second).
//!
//! Every node computes the same placement from the same liveness Leases.
//! Safety does not rest on that agreement:
//! - fencing: a node holds its placed addresses only under its own
//!   liveness Lease, exactly as an elected holder does (the claims lapse
//!   at the renew deadline unless renewed; holding on API loss as for any
//!   Lease);
//! - a node adds a newly placed address only once no other host answers
//!   for it (ARP probe / DAD, `vips::probe`): during a handover the old
//!   node, which sees the same change, withdraws first;
//! - liveness is judged only on a fresh view: while this node does not see
//!   its own renewals come back through its watch (API server or watch
//!   down), nobody is declared dead and the last live set stays;
//! - a dead vipd is known sooner through its link (`peer_links`: its
//!   `/v1/alive` stream closed or silent, no renewal seen since, and this
//!   node still linked to another peer); the addresses that moves are added
//!   only once nobody answers for them, however long that takes, so a peer
//!   that lives but lost its link keeps what it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::LeaseTiming;
use crate::election::record::{self, Observation, View};
use crate::election::{Leadership, LeaseElection};
use crate::vips::{Claim, Source, VipHandle};

use super::leader::{Grant, Granting};
use super::peer_links::{LinkState, PeerLinks};

/// Label on liveness Leases.
pub const LIVENESS_LABEL: &str = "vipd.dev/liveness";

const LEASE_PREFIX: &str = "vipd-node-";

/// A node's liveness Lease.
pub fn lease_name(node: &str) -> String {
    format!("{LEASE_PREFIX}{node}")
}

/// Every node's liveness Lease as this node saw it (pure).
#[derive(Debug, Default)]
pub struct Liveness {
    seen: BTreeMap<String, Observation>,
    /// The last live set judged on a fresh view, and the nodes whose Lease
    /// was expired or released in it (None: never judged).
    last_live: Option<(BTreeSet<String>, BTreeSet<String>)>,
}

impl Liveness {
    /// Records the Leases now in the cache.
    pub fn update(&mut self, leases: &[Arc<Lease>], now: Instant) {
        let mut next = BTreeMap::new();
        for l in leases {
            let Some(name) = l.metadata.name.clone() else {
                continue;
            };
            let obs = Observation::update(self.seen.get(&name), Some((**l).clone()), now);
            next.insert(name, obs);
        }
        self.seen = next;
    }

    /// The nodes alive now: holders of a liveness Lease not expired in
    /// this node's view (`me` counts while `me_alive`), less those whose
    /// link says they died (see [`Liveness::link_dead`]), which come back
    /// as `suspect`. The Leases are judged only while this node sees its
    /// own renewals arrive (within `duration`); otherwise the last live set
    /// stands, so a broken watch never makes this node take every address.
    /// Never judged yet (its own Lease not seen yet): nobody, so nothing is
    /// placed here before the view is complete.
    pub fn live(
        &mut self,
        me: &str,
        me_alive: bool,
        now: Instant,
        duration: Duration,
        links: &BTreeMap<String, LinkState>,
    ) -> Live {
        let fresh = self
            .seen
            .get(&lease_name(me))
            .is_some_and(|o| now < o.observed_at + duration);
        if fresh {
            let (mut held, mut expired) = (BTreeSet::new(), BTreeSet::new());
            for (name, o) in &self.seen {
                match record::view(o, "", now, duration) {
                    View::Theirs { holder, .. } => {
                        held.insert(holder);
                    }
                    _ => {
                        if let Some(node) = name.strip_prefix(LEASE_PREFIX) {
                            expired.insert(node.to_string());
                        }
                    }
                }
            }
            expired.retain(|n| !held.contains(n));
            self.last_live = Some((held, expired));
        }
        let Some((mut nodes, mut expired)) = self.last_live.clone() else {
            return Live::default();
        };
        if me_alive {
            nodes.insert(me.to_string());
            expired.remove(me);
        } else {
            nodes.remove(me);
        }
        let suspect = self.link_dead(me, &nodes, links);
        nodes.retain(|n| !suspect.contains(n));
        Live {
            nodes,
            suspect,
            expired,
        }
    }

    /// The next instant at which [`Liveness::live`] could answer
    /// differently with nothing new observed: a held Lease expiring, or
    /// this node's own renewals going stale (then the last live set
    /// stands). None: nothing will lapse. A renewal observed meanwhile
    /// only moves these instants later, so a node that keeps renewing
    /// needs no Services pass at all.
    pub fn next_change(&self, me: &str, now: Instant, duration: Duration) -> Option<Instant> {
        let own_stale = self
            .seen
            .get(&lease_name(me))
            .map(|o| o.observed_at + duration)
            .filter(|t| *t > now);
        self.seen
            .values()
            .filter_map(|o| match record::view(o, "", now, duration) {
                View::Theirs { expires_at, .. } => Some(expires_at),
                _ => None,
            })
            .chain(own_stale)
            .min()
    }

    /// The Lease-live peers whose link went down after it had been up,
    /// with no renewal of their Lease seen since, while this node's link
    /// to some other peer is up (so it is not this node that is cut off).
    /// A renewal seen after the link went down means the peer lives and
    /// only the link failed: the Lease decides again.
    pub fn link_dead(
        &self,
        me: &str,
        live: &BTreeSet<String>,
        links: &BTreeMap<String, LinkState>,
    ) -> BTreeSet<String> {
        let another_up = |node: &str| links.iter().any(|(n, l)| n != node && n != me && l.up);
        live.iter()
            .filter(|n| n.as_str() != me)
            .filter(|n| {
                let Some(link) = links.get(n.as_str()) else {
                    return false;
                };
                let renewal_seen = self.seen.get(&lease_name(n)).map(|o| o.observed_at);
                !link.up
                    && link.was_up
                    && renewal_seen.is_some_and(|r| r < link.since)
                    && another_up(n)
            })
            .cloned()
            .collect()
    }
}

/// Who is alive for placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub nodes: BTreeSet<String>,
    /// Alive by their Lease, dead by their link: their addresses move, but
    /// are added elsewhere only once nobody answers for them.
    pub suspect: BTreeSet<String>,
    /// Nodes whose liveness Lease this node sees expired or released: dead
    /// by their Lease (a node without a liveness Lease is in no set).
    pub expired: BTreeSet<String>,
}

/// The liveness Lease's election: it grants this node the right to hold
/// its placed addresses, and tells the Services loop when it starts or
/// stops.
struct LivenessLeadership {
    granting: Granting,
    notify: mpsc::UnboundedSender<()>,
}

impl Leadership for LivenessLeadership {
    async fn started(&mut self, hold_until: Instant) {
        self.granting.started(hold_until).await;
        let _ = self.notify.send(());
    }

    fn renewed(&mut self, hold_until: Instant) {
        self.granting.renewed(hold_until, true);
    }

    fn holding(&mut self, hold_until: Instant) {
        self.granting.renewed(hold_until, false);
    }

    async fn stopped(&mut self) {
        self.granting.stopped().await;
        let _ = self.notify.send(());
    }
}

/// This node's side of placement: its liveness Lease and the claims of the
/// addresses placed on it.
pub struct Placement {
    me: String,
    timing: LeaseTiming,
    vips: VipHandle,
    /// The liveness Lease's grant, while this node holds it.
    alive: watch::Receiver<Option<Grant>>,
    liveness: Liveness,
    /// With `svc_peer_links`: the links to the other vipds.
    links: Option<PeerLinks>,
    /// What was claimed, and under which grant.
    placed: Vec<Claim>,
    placed_term: u64,
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Placement {
    /// Starts renewing this node's liveness Lease in `namespace` with
    /// `timing` (`svc_liveness_lease`); `notify` is told when this node
    /// becomes or stops being alive, and (with `peer_links`) when a link to
    /// another vipd goes up or down.
    pub fn start(
        client: Client,
        namespace: &str,
        me: &str,
        timing: LeaseTiming,
        peer_links: bool,
        vips: VipHandle,
        notify: mpsc::UnboundedSender<()>,
    ) -> Placement {
        let links = peer_links.then(|| PeerLinks::new(me, notify.clone()));
        let (grant, alive) = watch::channel(None);
        let election = LeaseElection {
            api: Api::<Lease>::namespaced(client, namespace),
            name: lease_name(me),
            me: me.to_string(),
            timing,
            acquire_delay: crate::election::fixed_delay(Duration::ZERO),
            labels: [(LIVENESS_LABEL.to_string(), String::new())].into(),
        };
        let leadership = LivenessLeadership {
            granting: Granting {
                source: Source::ServicesPlaced,
                // A newly placed address may still be on the node it
                // comes from: added only once nobody answers for it.
                probe_first: true,
                // Followed by the others' links, a dead vipd's addresses
                // are taken over at once: gone from its node at once too.
                drop_on_death: peer_links,
                grant,
                vips: vips.clone(),
            },
            notify,
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(election.run(leadership, stop_rx));
        Placement {
            me: me.to_string(),
            timing,
            vips,
            alive,
            liveness: Liveness::default(),
            links,
            placed: Vec::new(),
            placed_term: 0,
            task,
            stop,
        }
    }

    /// The live nodes, from the liveness Leases in the cache and the links
    /// to the other vipds (whose status servers `instances`, their
    /// instance records, say where to find).
    pub fn live(&mut self, leases: &[Arc<Lease>], instances: &[Arc<Lease>], now: Instant) -> Live {
        let links = match self.links.as_mut() {
            Some(l) => {
                let peers: BTreeMap<String, SocketAddr> = instances
                    .iter()
                    .filter_map(|r| crate::instance::status_address(r))
                    .collect();
                l.follow(&peers);
                l.view()
            }
            None => BTreeMap::new(),
        };
        self.liveness.update(leases, now);
        let me_alive = self.alive.borrow().is_some();
        self.liveness
            .live(&self.me, me_alive, now, self.timing.lease_duration, &links)
    }

    /// Records the liveness Leases now in the cache (when each renewal
    /// was seen is what their expiry counts from).
    pub fn observe(&mut self, leases: &[Arc<Lease>], now: Instant) {
        self.liveness.update(leases, now);
    }

    /// When the live set could next change by itself (see
    /// [`Liveness::next_change`]).
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        self.liveness
            .next_change(&self.me, now, self.timing.lease_duration)
    }

    /// The links to the other vipds, for the status.
    pub fn links(&self) -> BTreeMap<String, LinkState> {
        self.links.as_ref().map(PeerLinks::view).unwrap_or_default()
    }

    /// Holds exactly `claims` (the addresses placed here), under this
    /// node's liveness; new ones only once nobody else answers for them.
    /// Returns the addresses claimed.
    pub async fn set(&mut self, mut claims: Vec<Claim>) -> Vec<Claim> {
        let Some(grant) = *self.alive.borrow() else {
            // Not alive: the election withdrew them when it stopped.
            self.placed.clear();
            return Vec::new();
        };
        claims.sort_by_key(|c| c.addr);
        if claims != self.placed || grant.term != self.placed_term {
            let taken = self
                .vips
                .claim_granted(Source::ServicesPlaced, grant.term, claims.clone())
                .await;
            self.placed = if taken { claims } else { Vec::new() };
            self.placed_term = grant.term;
        }
        self.placed.clone()
    }

    /// Stops renewing; a graceful stop releases the liveness Lease (after
    /// withdrawing every placed address), so the others take over at once.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests;
