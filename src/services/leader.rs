//! The Services leader: its election's side (the deadline under which the
//! leader's addresses are claimed, and their withdrawal when it stops
//! leading) and the one place that claims them, ordered against stepping
//! down by one gate.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Mutex};
use tracing::info;

use crate::election::Leadership;
use crate::vips::{Claim, Source, VipHandle};

/// The Services leader's state, shared with its election: `hold` is the
/// leader's deadline; `gate` orders claim updates against stepping down, so
/// a claim made with an old deadline can never follow a release.
#[derive(Clone)]
pub(super) struct LeaderState {
    pub(super) hold: watch::Sender<Option<Instant>>,
    pub(super) gate: Arc<Mutex<()>>,
}

pub(super) struct ServicesLeadership {
    pub(super) state: LeaderState,
    pub(super) vips: VipHandle,
}

impl Leadership for ServicesLeadership {
    async fn started(&mut self, hold_until: Instant) {
        info!("became the Services leader: allocating and announcing Service addresses");
        self.state.hold.send_replace(Some(hold_until));
    }

    fn renewed(&mut self, hold_until: Instant) {
        self.state.hold.send_replace(Some(hold_until));
        self.vips.extend(Source::ServicesLeader, hold_until);
    }

    fn holding(&mut self, hold_until: Instant) {
        self.state.hold.send_replace(Some(hold_until));
        self.vips
            .hold_unconfirmed(Source::ServicesLeader, hold_until);
    }

    async fn stopped(&mut self) {
        let _gate = self.state.gate.lock().await;
        self.state.hold.send_replace(None);
        self.vips.release(Source::ServicesLeader).await;
        info!("no longer the Services leader");
    }
}

impl LeaderState {
    /// The leader's deadline, while leading and not past it.
    pub(super) fn hold(&self) -> Option<Instant> {
        self.hold.borrow().filter(|h| *h > Instant::now())
    }

    /// Claims the leader's addresses under the leader's deadline, or
    /// withdraws them when not leading; returns the addresses claimed.
    pub(super) async fn set_claims(&self, vips: &VipHandle, claims: Vec<Claim>) -> Vec<IpAddr> {
        let _gate = self.gate.lock().await;
        match self.hold() {
            Some(hold) => {
                let addrs = claims.iter().map(|c| c.addr).collect();
                vips.set(Source::ServicesLeader, claims, Some(hold)).await;
                addrs
            }
            None => {
                vips.release(Source::ServicesLeader).await;
                Vec::new()
            }
        }
    }
}
