//! What an election tells its user, whichever election it is: the Lease
//! election calls it directly; the Raft election tells events
//! ([`vipd_raft::LeaderEvent`]) that [`follow_raft`] turns into these calls.

use std::future::Future;
use std::time::Instant;

use tokio::sync::mpsc;
use vipd_raft::{LeaderEvent, Told};

/// What an election tells its user.
pub trait Leadership: Send {
    /// This node leads and may hold until `hold_until` unless renewed.
    fn started(&mut self, hold_until: Instant) -> impl Future<Output = ()> + Send;
    /// The same, when nobody else can hold the VIP (the previous leader
    /// handed leadership over on purpose and withdrew it first, or this
    /// node's own hold lapsed and came back within one Raft term).
    fn started_unopposed(&mut self, hold_until: Instant) -> impl Future<Output = ()> + Send {
        self.started(hold_until)
    }
    /// Still leading: may hold until `hold_until`.
    fn renewed(&mut self, hold_until: Instant);
    /// Leading, but the record that says so cannot be renewed because its
    /// store (the API server) cannot be reached: keep holding until
    /// `hold_until` unless another node is seen announcing the address.
    fn holding(&mut self, hold_until: Instant) {
        self.renewed(hold_until)
    }
    /// No longer leading: withdraw everything the lead allowed.
    fn stopped(&mut self) -> impl Future<Output = ()> + Send;
    /// The leader as last seen (None: nobody), for logs and status.
    fn observed(&mut self, _leader: Option<&str>) {}
}

/// Acts on the Raft loop's events with `leadership` until the loop ends,
/// answering each once acted on (the loop waits for `Started` and
/// `Stopped`).
pub async fn follow_raft<L: Leadership>(
    mut events: mpsc::UnboundedReceiver<Told>,
    mut leadership: L,
) {
    while let Some(Told { event, done }) = events.recv().await {
        match event {
            LeaderEvent::Started {
                hold_until,
                unopposed: true,
            } => leadership.started_unopposed(hold_until).await,
            LeaderEvent::Started { hold_until, .. } => leadership.started(hold_until).await,
            LeaderEvent::Renewed { hold_until } => leadership.renewed(hold_until),
            LeaderEvent::Stopped => leadership.stopped().await,
            LeaderEvent::Observed { leader } => leadership.observed(leader.as_deref()),
        }
        let _ = done.send(());
    }
}
