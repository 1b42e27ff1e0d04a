//! The Services leader: its election grants the right to hold the leader's
//! addresses (until a deadline it renews, ended when it stops leading); the
//! Services pass decides which addresses, and claims them under that grant.
//! Each writes one thing to the address owner, and a list decided under a
//! lead that has since ended is refused there, whatever the order.

use std::net::IpAddr;
use std::time::Instant;

use tokio::sync::watch;
use tracing::info;

use crate::election::Leadership;
use crate::vips::{Claim, Source, VipHandle};

/// A lead in force: the owner's term for it and how long it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) term: u64,
    pub(crate) hold_until: Instant,
}

impl Grant {
    /// The grant of `current`, while not past its deadline.
    pub(crate) fn in_force(current: Option<Grant>) -> Option<Grant> {
        current.filter(|g| g.hold_until > Instant::now())
    }
}

/// The election's side of a granted source: it tells the owner and the
/// deciding loop (through `grant`) when the lead starts, is renewed, held
/// on unconfirmed and ends.
pub(crate) struct Granting {
    pub(crate) source: Source,
    /// Add an address only once no other host answers for it.
    pub(crate) probe_first: bool,
    /// The guardian removes the addresses the moment vipd dies.
    pub(crate) drop_on_death: bool,
    pub(crate) grant: watch::Sender<Option<Grant>>,
    pub(crate) vips: VipHandle,
}

impl Granting {
    pub(crate) async fn started(&mut self, hold_until: Instant) {
        let term = self
            .vips
            .grant(
                self.source.clone(),
                hold_until,
                self.probe_first,
                self.drop_on_death,
            )
            .await;
        self.grant.send_replace(Some(Grant { term, hold_until }));
    }

    pub(crate) fn renewed(&mut self, hold_until: Instant, confirmed: bool) {
        self.grant.send_modify(|g| {
            if let Some(g) = g {
                g.hold_until = hold_until;
            }
        });
        if confirmed {
            self.vips.extend(self.source.clone(), hold_until);
        } else {
            self.vips.hold_unconfirmed(self.source.clone(), hold_until);
        }
    }

    pub(crate) async fn stopped(&mut self) {
        self.grant.send_replace(None);
        self.vips.release(self.source.clone()).await;
    }
}

/// Claims `claims` under the grant in force (none: nothing is claimed);
/// returns the addresses claimed.
pub(crate) async fn claim_under(
    vips: &VipHandle,
    source: Source,
    grant: Option<Grant>,
    claims: Vec<Claim>,
) -> Vec<IpAddr> {
    let Some(g) = Grant::in_force(grant) else {
        return Vec::new();
    };
    let addrs = claims.iter().map(|c| c.addr).collect();
    if vips.claim_granted(source, g.term, claims).await {
        addrs
    } else {
        Vec::new()
    }
}

pub(super) struct ServicesLeadership {
    pub(super) granting: Granting,
    pub(super) me: String,
    /// Who last held the Lease (a Lease seen expired keeps its last holder
    /// until another one is seen: its heir stands in meanwhile).
    pub(super) leader_seen: watch::Sender<Option<String>>,
}

impl Leadership for ServicesLeadership {
    async fn started(&mut self, hold_until: Instant) {
        info!("became the Services leader: allocating and announcing Service addresses");
        self.leader_seen.send_replace(Some(self.me.clone()));
        self.granting.started(hold_until).await;
    }

    fn renewed(&mut self, hold_until: Instant) {
        self.granting.renewed(hold_until, true);
    }

    fn holding(&mut self, hold_until: Instant) {
        self.granting.renewed(hold_until, false);
    }

    async fn stopped(&mut self) {
        self.granting.stopped().await;
        info!("no longer the Services leader");
    }

    fn observed(&mut self, leader: Option<&str>) {
        if let Some(l) = leader {
            self.leader_seen.send_if_modified(|seen| {
                let changed = seen.as_deref() != Some(l);
                *seen = Some(l.to_string());
                changed
            });
        }
    }
}
