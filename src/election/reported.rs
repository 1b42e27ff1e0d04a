//! A [`Leadership`] that also tells the status and the cluster: it records
//! every change in [`Status`] and publishes an Event on this node's Node
//! object when this node starts or stops leading. The wrapped leadership
//! acts first: withdrawing addresses never waits for bookkeeping.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;

use tracing::info;

use super::Leadership;
use crate::events::Events;
use crate::status::Status;

pub struct Reported<L> {
    pub inner: L,
    pub status: Arc<Status>,
    /// `namespace/name` of the Lease, as shown in status and metrics.
    pub lease: String,
    pub me: String,
    pub events: Option<Arc<Events>>,
}

impl<L> Reported<L> {
    fn report_started(&self) {
        self.status.election(&self.lease, true, Some(&self.me));
        if let Some(ev) = &self.events {
            let note = format!("{} now leads {}", self.me, self.lease);
            ev.publish(&self.node_ref(), false, "LeaderElected", note);
        }
    }

    fn node_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.me.clone()),
            ..Default::default()
        }
    }
}

impl<L: Leadership> Leadership for Reported<L> {
    async fn started(&mut self, hold_until: Instant) {
        self.inner.started(hold_until).await;
        self.report_started();
    }

    async fn started_unopposed(&mut self, hold_until: Instant) {
        self.inner.started_unopposed(hold_until).await;
        self.report_started();
    }

    fn renewed(&mut self, hold_until: Instant) {
        self.inner.renewed(hold_until);
    }

    fn holding(&mut self, hold_until: Instant) {
        self.inner.holding(hold_until);
    }

    async fn stopped(&mut self) {
        self.inner.stopped().await;
        self.status.election(&self.lease, false, None);
        if let Some(ev) = &self.events {
            let note = format!("{} no longer leads {}", self.me, self.lease);
            ev.publish(&self.node_ref(), false, "LeadershipLost", note);
        }
    }

    fn observed(&mut self, holder: Option<&str>) {
        self.inner.observed(holder);
        if self.status.election(&self.lease, false, holder) && holder != Some(self.me.as_str()) {
            info!(election = %self.lease, leader = %holder.unwrap_or("nobody"), "following the leader");
        }
    }
}
