//! The Lease election's decisions, as a state machine without I/O: the
//! driver (`LeaseElection::lead_or_follow`) feeds it what happened (a renew
//! is due, a call's outcome, the Lease as now seen, shutdown) and does what
//! it returns, in order. Time is an input, so tests drive every path
//! (acquire, renew, lose on the deadline, hold, 409, 404, release) with
//! instants they make up.

use std::time::{Duration, Instant};

use super::record::View;
use crate::config::LeaseTiming;

/// How long before its renew deadline a leader that may hold on needs its
/// failed call back, to start holding before its claim lapses.
pub const HOLD_MARGIN: Duration = Duration::from_millis(200);

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A follower's turn: the Lease as seen now.
    Follow(View),
    /// The leader's renew timer fired.
    RenewDue,
    /// The leader saw its own Lease deleted (by hand, an etcd restore):
    /// renew (recreate it) now, not at the next renewal, while the
    /// followers still wait out its term.
    LeaseGone,
    /// A renewal that started at this instant succeeded.
    Renewed(Instant),
    /// The Lease names another holder (or none): a 409 whose re-read shows
    /// another holder, a recreate someone else won, a watch showing it.
    RenewLost(Option<String>),
    /// A renewal failed without another holder winning: no answer in time
    /// or a 5xx/429 (`unreachable`), or a refusal.
    RenewFailed { unreachable: bool },
    /// An acquisition that started at this instant won the Lease.
    Acquired(Instant),
    /// Somebody else wrote first (409) or the Lease went away (404): decide
    /// again from what is there now.
    AcquireLost,
    /// The acquisition could not be made.
    AcquireFailed { unreachable: bool },
    /// vipd stops.
    Shutdown,
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Renew the Lease; give up on the call at `deadline`.
    Renew { deadline: Instant },
    /// Try to take the Lease.
    Acquire,
    /// Nothing to do before this instant (or news about the Lease).
    WaitUntil(Instant),
    /// Restart the renew timer (a new term begins now).
    ResetRenewTimer,
    /// Tell the user: leading, may hold until.
    Started { hold_until: Instant },
    /// Tell the user: still leading, may hold until.
    Renewed { hold_until: Instant },
    /// Tell the user: leading without a renewed Lease (the API server
    /// cannot be reached), hold until unless another node announces.
    Holding { hold_until: Instant },
    /// Tell the user: not leading any more; withdraw.
    Stopped,
    /// Tell the user who leads as seen now (on change only).
    Observed(Option<String>),
    /// The API server could not be reached to take a Lease held by
    /// someone else: its expiry cannot be trusted any more.
    MarkUnverifiable,
    /// Hand the Lease back so a follower takes it at once.
    Release,
    /// Worth a log line.
    Log(Note),
}

/// What the driver logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    BecameLeader,
    LostTo(Option<String>),
    HoldStarted,
    AnswersAgain(Duration),
    StepDown,
    RenewRetry,
    AcquireRetry,
}

/// Leading, with the start of the last successful acquire or renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leading {
    since: Instant,
    /// Leading past the renew deadline because the API server cannot be
    /// reached (`vip_hold_on_api_loss`): since when.
    holding_since: Option<Instant>,
}

/// The election's state.
#[derive(Debug, Clone)]
pub struct Core {
    me: String,
    timing: LeaseTiming,
    acquire_delay: Duration,
    leading: Option<Leading>,
    last_holder: Option<String>,
    /// When the Lease was first seen free in the current free spell.
    free_since: Option<Instant>,
}

impl Core {
    pub fn new(me: &str, timing: LeaseTiming, acquire_delay: Duration) -> Core {
        Core {
            me: me.to_string(),
            timing,
            acquire_delay,
            leading: None,
            last_holder: None,
            free_since: None,
        }
    }

    pub fn leading(&self) -> bool {
        self.leading.is_some()
    }

    /// How long to wait after the Lease is seen free, from now on (counted
    /// from when it was first seen free).
    pub fn set_acquire_delay(&mut self, delay: Duration) {
        self.acquire_delay = delay;
    }

    pub fn call_timeout(&self) -> Duration {
        call_timeout(&self.timing)
    }

    /// How long a holding leader may keep its addresses from `now`: one
    /// more call may hang for a call's time, the hold must outlast it.
    fn hold_until(&self, now: Instant) -> Instant {
        now + self.call_timeout() + self.timing.renew_deadline
    }

    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Follow(view) => self.follow(view, now),
            Input::RenewDue | Input::LeaseGone => self.renew_due(now),
            Input::Renewed(started) => self.renewed(started),
            Input::RenewLost(holder) => self.lost(holder),
            Input::RenewFailed { unreachable } => self.renew_failed(unreachable, now),
            Input::Acquired(started) => self.acquired(started),
            Input::AcquireLost => vec![Action::WaitUntil(now)],
            Input::AcquireFailed { unreachable } => {
                let mut out = vec![Action::Log(Note::AcquireRetry)];
                if self.timing.hold_on_api_loss && unreachable {
                    out.push(Action::MarkUnverifiable);
                }
                out.push(Action::WaitUntil(now + self.timing.retry_period));
                out
            }
            Input::Shutdown => match self.leading.take() {
                // Withdraw first, then release: nobody may hold the VIP
                // while we do.
                Some(_) => vec![Action::Stopped, Action::Release],
                None => vec![],
            },
        }
    }

    fn follow(&mut self, view: View, now: Instant) -> Vec<Action> {
        if self.leading.is_some() {
            return vec![];
        }
        let mut out = vec![];
        let holder = match &view {
            View::Theirs { holder, .. } => Some(holder.clone()),
            _ => None,
        };
        if holder != self.last_holder {
            out.push(Action::Observed(holder.clone()));
            self.last_holder = holder;
        }
        match view {
            View::Free => {
                let free_since = *self.free_since.get_or_insert(now);
                let take_at = free_since + self.acquire_delay;
                if !self.acquire_delay.is_zero() && now < take_at {
                    out.push(Action::WaitUntil(take_at));
                } else {
                    out.push(Action::Acquire);
                }
            }
            View::Mine => out.push(Action::Acquire),
            View::Theirs { expires_at, .. } => {
                self.free_since = None;
                out.push(Action::WaitUntil(expires_at));
            }
        }
        out
    }

    fn acquired(&mut self, started: Instant) -> Vec<Action> {
        self.leading = Some(Leading {
            since: started,
            holding_since: None,
        });
        self.free_since = None;
        self.last_holder = Some(self.me.clone());
        vec![
            Action::Log(Note::BecameLeader),
            Action::Started {
                hold_until: started + self.timing.renew_deadline,
            },
            Action::ResetRenewTimer,
        ]
    }

    fn renew_due(&mut self, now: Instant) -> Vec<Action> {
        let Some(l) = self.leading else {
            return vec![];
        };
        let mut out = vec![];
        // Holding: each attempt gets a call's time; else the renew deadline
        // bounds them.
        let deadline = match l.holding_since {
            Some(_) => {
                out.push(Action::Holding {
                    hold_until: self.hold_until(now),
                });
                now + self.call_timeout()
            }
            None => l.since + self.timing.renew_deadline,
        };
        // When holding is allowed, a failing call returns early enough for
        // the hold to begin before the claim lapses.
        let deadline = if self.timing.hold_on_api_loss && l.holding_since.is_none() {
            deadline.checked_sub(HOLD_MARGIN).unwrap_or(deadline)
        } else {
            deadline
        };
        out.push(Action::Renew { deadline });
        out
    }

    fn renewed(&mut self, started: Instant) -> Vec<Action> {
        let Some(l) = self.leading.as_mut() else {
            return vec![];
        };
        let mut out = vec![];
        if let Some(t) = l.holding_since.take() {
            out.push(Action::Log(Note::AnswersAgain(
                started.saturating_duration_since(t),
            )));
        }
        l.since = started;
        out.push(Action::Renewed {
            hold_until: started + self.timing.renew_deadline,
        });
        out
    }

    fn lost(&mut self, holder: Option<String>) -> Vec<Action> {
        if self.leading.take().is_none() {
            return vec![];
        }
        vec![Action::Log(Note::LostTo(holder)), Action::Stopped]
    }

    fn renew_failed(&mut self, unreachable: bool, now: Instant) -> Vec<Action> {
        let Some(l) = self.leading.as_mut() else {
            return vec![];
        };
        let lapses = l.since + self.timing.renew_deadline;
        let decision = decide_on_failed_renew(
            now >= lapses,
            now + self.timing.retry_period + HOLD_MARGIN >= lapses,
            self.timing.hold_on_api_loss,
            unreachable,
        );
        match decision {
            OnFailedRenew::Retry => vec![Action::Log(Note::RenewRetry)],
            OnFailedRenew::Hold => {
                let mut out = vec![];
                if l.holding_since.is_none() {
                    l.holding_since = Some(now);
                    out.push(Action::Log(Note::HoldStarted));
                }
                out.push(Action::Holding {
                    hold_until: self.hold_until(now),
                });
                out
            }
            OnFailedRenew::StepDown => {
                self.leading = None;
                vec![Action::Log(Note::StepDown), Action::Stopped]
            }
        }
    }
}

/// One API call's time: long enough for a loaded API server, short enough
/// to retry in time.
pub fn call_timeout(timing: &LeaseTiming) -> Duration {
    timing.renew_deadline.min(Duration::from_secs(2))
}

/// What a leader does when a renewal failed without another holder
/// winning the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailedRenew {
    /// Still within the renew deadline: try again next tick.
    Retry,
    /// Past it, the API server unreachable, holding allowed: keep the
    /// addresses (until another node announces them).
    Hold,
    /// Past it otherwise (the API server answered with a refusal, or
    /// `vip_hold_on_api_loss=false`): give the addresses up.
    StepDown,
}

/// The leader's rule after a failed renewal (pure): `past_deadline`, the
/// renew deadline has passed; `lapses_before_next_try`, it will before the
/// next attempt.
pub fn decide_on_failed_renew(
    past_deadline: bool,
    lapses_before_next_try: bool,
    hold_on_api_loss: bool,
    unreachable: bool,
) -> OnFailedRenew {
    if hold_on_api_loss && unreachable && (past_deadline || lapses_before_next_try) {
        OnFailedRenew::Hold
    } else if past_deadline {
        OnFailedRenew::StepDown
    } else {
        OnFailedRenew::Retry
    }
}

#[cfg(test)]
mod tests;
