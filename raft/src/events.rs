//! What the Raft loop tells its user, as events on a channel: the crate
//! decides when this node leads and until when it may hold the VIP; what
//! holding means (claiming addresses) is the user's. The loop waits for
//! `Started` and `Stopped` to be acted on before it goes on: a lost lead is
//! withdrawn before the step that lost it sends anything.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

/// One thing the loop tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderEvent {
    /// This node leads and may hold the VIP until `hold_until` unless
    /// renewed. `unopposed`: nobody else can hold the VIP, so there is
    /// nothing to wait for on the wire: the previous leader handed
    /// leadership over on purpose (it withdrew the VIP first), or this
    /// node's own hold lapsed and came back within the same term (another
    /// leader would have needed the vote of a node that has acknowledged
    /// this term since).
    Started {
        hold_until: Instant,
        unopposed: bool,
    },
    /// Still leading: may hold until `hold_until`.
    Renewed { hold_until: Instant },
    /// No longer leading: withdraw everything the lead allowed.
    Stopped,
    /// The leader as last seen (None: nobody), for logs and status.
    Observed { leader: Option<String> },
}

/// An event with the answer the loop may wait for (send `()` or drop it
/// once acted on).
#[derive(Debug)]
pub struct Told {
    pub event: LeaderEvent,
    pub done: oneshot::Sender<()>,
}

/// Where the loop tells its events.
pub type EventSender = mpsc::UnboundedSender<Told>;

/// Tells `event`; with `wait`, returns once the user acted on it (or is
/// gone).
pub(crate) async fn tell(to: &EventSender, event: LeaderEvent, wait: bool) {
    let (done, acted) = oneshot::channel();
    if to.send(Told { event, done }).is_ok() && wait {
        let _ = acted.await;
    }
}
