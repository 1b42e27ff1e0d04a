//! Electing one holder with a Kubernetes Lease.
//!
//! The loop follows client-go's rules (see [`record`]) with changes that
//! make failover faster and safer:
//! - followers watch the Lease, so a released Lease is taken at once, and a
//!   dead leader's Lease the moment it expires, not on the next poll;
//! - every API call has a deadline: a leader that has not renewed within
//!   `renew_deadline` of its last successful renew *started* stops leading
//!   (and its claims on addresses lapse by themselves at that instant, see
//!   `vips`), before any follower can consider the Lease expired;
//! - an optional acquire delay lets a preferred node take a free Lease first
//!   (per-address Leases of Services spread over nodes that way).

mod calls;
mod leadership;
pub mod record;
pub mod reported;
pub mod step;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::LeaseTiming;
use calls::{unreachable, Outcome, RenewError};
use record::{Observation, View};
use step::{Action, Core, Input, Note};

pub use leadership::{follow_raft, Leadership};

/// A Lease election for identity `me`.
pub struct LeaseElection {
    pub api: Api<Lease>,
    pub name: String,
    pub me: String,
    pub timing: LeaseTiming,
    /// How long to wait after the Lease is seen free before trying to take
    /// it (a rank times a stagger, so the preferred node wins the race); it
    /// may change while the election runs (see [`fixed_delay`]).
    pub acquire_delay: watch::Receiver<Duration>,
    /// Labels put on the Lease when this node creates it.
    pub labels: BTreeMap<String, String>,
}

/// An acquire delay that never changes.
pub fn fixed_delay(delay: Duration) -> watch::Receiver<Duration> {
    watch::channel(delay).1
}

/// Where an election learns about its Lease.
pub enum Feed {
    /// Its own watch on the one Lease.
    Watch,
    /// A shared informer's view of it (None: it does not exist).
    Shared(watch::Receiver<Option<Lease>>),
}

/// The observations, from either feed: `Some(state)` is news.
enum Observations {
    Watch {
        stream: futures::stream::BoxStream<'static, Result<watcher::Event<Lease>, watcher::Error>>,
        relist: Relist,
    },
    Shared(watch::Receiver<Option<Lease>>),
}

/// A watch that broke long enough to need a new list (410 Gone, an etcd
/// restore) reports no deletion: a Lease deleted meanwhile is simply not in
/// the new list. Tracks the list between its start and end markers, so its
/// absence reads as a deletion.
#[derive(Debug, Default)]
pub struct Relist {
    /// Some while a list is under way: whether the Lease was in it.
    listing: Option<bool>,
}

impl Relist {
    /// Feeds one watch event; returns news about the Lease, if any.
    pub fn feed(&mut self, ev: watcher::Event<Lease>) -> Option<Option<Lease>> {
        match ev {
            watcher::Event::Init => {
                self.listing = Some(false);
                None
            }
            watcher::Event::InitApply(l) => {
                self.listing = Some(true);
                Some(Some(l))
            }
            watcher::Event::InitDone => match self.listing.take() {
                Some(false) => Some(None),
                _ => None,
            },
            watcher::Event::Apply(l) => Some(Some(l)),
            watcher::Event::Delete(_) => Some(None),
        }
    }
}

impl Observations {
    async fn next(&mut self) -> Option<Option<Lease>> {
        match self {
            Observations::Watch { stream, relist } => match stream.next().await {
                Some(Ok(ev)) => relist.feed(ev),
                Some(Err(e)) => {
                    debug!(error = %e, "Lease watch error (retrying)");
                    None
                }
                None => std::future::pending().await,
            },
            Observations::Shared(rx) => match rx.changed().await {
                Ok(()) => Some(rx.borrow_and_update().clone()),
                Err(_) => std::future::pending().await,
            },
        }
    }
}

fn observe(ev: Option<Option<Lease>>, obs: &mut Option<Observation>) {
    if let Some(state) = ev {
        *obs = Some(Observation::update(obs.as_ref(), state, Instant::now()));
    }
}

impl LeaseElection {
    /// Runs until `shutdown` turns true; a leader then withdraws (through
    /// `stopped`) and releases the Lease so a follower takes over at once.
    pub async fn run<L: Leadership>(self, leadership: L, shutdown: watch::Receiver<bool>) {
        self.run_fed(Feed::Watch, leadership, shutdown).await
    }

    /// [`LeaseElection::run`], learning about the Lease from `feed`.
    pub async fn run_fed<L: Leadership>(
        self,
        feed: Feed,
        leadership: L,
        shutdown: watch::Receiver<bool>,
    ) {
        let (events, initial) = match feed {
            Feed::Watch => {
                let selector = format!("metadata.name={}", self.name);
                let stream = watcher::watcher(
                    self.api.clone(),
                    watcher::Config::default().fields(&selector),
                )
                .default_backoff()
                .boxed();
                (
                    Observations::Watch {
                        stream,
                        relist: Relist::default(),
                    },
                    None,
                )
            }
            Feed::Shared(mut rx) => {
                // What the informer holds already counts as observed now.
                let now = rx.borrow_and_update().clone();
                (Observations::Shared(rx), Some(now))
            }
        };
        self.lead_or_follow(events, initial, leadership, shutdown)
            .await
    }

    /// The driver: gathers what happens (the renew timer, watch news,
    /// call outcomes, shutdown), feeds it to the [`step::Core`] and does
    /// what it says, in order.
    async fn lead_or_follow<L: Leadership>(
        self,
        mut events: Observations,
        initial: Option<Option<Lease>>,
        mut leadership: L,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut obs: Option<Observation> = None;
        observe(initial, &mut obs);
        let mut core = Core::new(&self.me, self.timing, *self.acquire_delay.borrow());
        let mut renew_tick = tokio::time::interval(self.timing.retry_period);
        renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        while !*shutdown.borrow() {
            let now = Instant::now();
            let actions = if core.leading() {
                tokio::select! {
                    _ = renew_tick.tick() => core.step(Input::RenewDue, Instant::now()),
                    ev = events.next() => {
                        let news = ev.is_some();
                        observe(ev, &mut obs);
                        if news && obs.as_ref().is_some_and(|o| o.lease.is_none()) {
                            core.step(Input::LeaseGone, Instant::now())
                        } else {
                            continue;
                        }
                    }
                    _ = shutdown.changed() => continue,
                }
            } else {
                let view = obs
                    .as_ref()
                    .map(|o| record::view(o, &self.me, now, self.timing.lease_duration))
                    .unwrap_or(View::Free);
                core.set_acquire_delay(*self.acquire_delay.borrow());
                core.step(Input::Follow(view), now)
            };
            let wake = self
                .apply(
                    actions,
                    &mut core,
                    &mut obs,
                    &mut leadership,
                    &mut renew_tick,
                )
                .await;
            if let Some(wake) = wake {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    ev = events.next() => observe(ev, &mut obs),
                    _ = shutdown.changed() => {}
                }
            }
        }
        let actions = core.step(Input::Shutdown, Instant::now());
        self.apply(
            actions,
            &mut core,
            &mut obs,
            &mut leadership,
            &mut renew_tick,
        )
        .await;
    }

    /// Does what the core said, feeding each call's outcome back to it;
    /// returns when to decide again, if the core said to wait.
    async fn apply<L: Leadership>(
        &self,
        actions: Vec<Action>,
        core: &mut Core,
        obs: &mut Option<Observation>,
        leadership: &mut L,
        renew_tick: &mut tokio::time::Interval,
    ) -> Option<Instant> {
        let mut todo: std::collections::VecDeque<Action> = actions.into();
        let mut wake = None;
        // The last failed call's error, for the log line its outcome gets.
        let mut error: Option<String> = None;
        while let Some(action) = todo.pop_front() {
            match action {
                Action::Renew { deadline } => {
                    let input = match self.renew(obs, deadline).await {
                        Ok(started) => Input::Renewed(started),
                        Err(RenewError::Lost(holder)) => Input::RenewLost(holder),
                        Err(RenewError::Failed(e)) => {
                            error = Some(e.to_string());
                            Input::RenewFailed {
                                unreachable: unreachable(&e),
                            }
                        }
                    };
                    todo.extend(core.step(input, Instant::now()));
                }
                Action::Acquire => {
                    let input = match self.try_acquire(obs).await {
                        Ok(Outcome::Won(started)) => Input::Acquired(started),
                        Ok(Outcome::Lost) => Input::AcquireLost,
                        Err(e) => {
                            debug!(error = %e, "could not acquire the Lease; retrying");
                            Input::AcquireFailed {
                                unreachable: unreachable(&e),
                            }
                        }
                    };
                    todo.extend(core.step(input, Instant::now()));
                }
                Action::WaitUntil(t) => wake = Some(t),
                Action::ResetRenewTimer => renew_tick.reset(),
                Action::Started { hold_until } => leadership.started(hold_until).await,
                Action::Renewed { hold_until } => leadership.renewed(hold_until),
                Action::Holding { hold_until } => leadership.holding(hold_until),
                Action::Stopped => leadership.stopped().await,
                Action::Observed(holder) => {
                    leadership.observed(holder.as_deref());
                    if let Some(h) = &holder {
                        debug!(lease = %self.name, leader = %h, "following");
                    }
                }
                Action::MarkUnverifiable => {
                    if let Some(o) = obs.as_mut() {
                        o.unverifiable(Instant::now());
                    }
                }
                Action::Release => {
                    match tokio::time::timeout(Duration::from_secs(2), self.release(obs)).await {
                        Ok(Ok(())) => info!(lease = %self.name, "released the Lease"),
                        Ok(Err(e)) => {
                            warn!(error = %e, "could not release the Lease; followers take over when it expires")
                        }
                        Err(_) => {
                            warn!("releasing the Lease timed out; followers take over when it expires")
                        }
                    }
                }
                Action::Log(note) => self.log(note, error.as_deref().unwrap_or("")),
            }
        }
        wake
    }

    fn log(&self, note: Note, error: &str) {
        let lease = &self.name;
        match note {
            Note::BecameLeader => info!(%lease, "became leader"),
            Note::LostTo(holder) => {
                warn!(%lease, holder = holder.as_deref().unwrap_or(""), "lost the Lease to another holder")
            }
            Note::HoldStarted => {
                warn!(%lease, %error, "cannot reach the API server to renew the Lease: holding the addresses until another node announces them or the API server answers")
            }
            Note::AnswersAgain(after) => {
                info!(%lease, ?after, "the API server answers again: Lease renewed, still the holder")
            }
            Note::StepDown => {
                warn!(%lease, %error, "could not renew the Lease before the renew deadline: stepping down")
            }
            Note::RenewRetry => debug!(%lease, %error, "renew failed; retrying"),
            Note::AcquireRetry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(rv: &str) -> Lease {
        let mut l = Lease::default();
        l.metadata.name = Some("plndr-cp-lock".into());
        l.metadata.resource_version = Some(rv.into());
        l
    }

    #[test]
    fn only_no_answer_5xx_and_429_count_as_unreachable() {
        assert!(unreachable(&calls::timeout_error()));
        let status = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert!(unreachable(&status(503)));
        assert!(unreachable(&status(429)));
        assert!(!unreachable(&status(403)));
    }

    #[test]
    fn a_relist_without_the_lease_reads_as_its_deletion() {
        let mut r = Relist::default();
        // First list: it is there.
        assert_eq!(r.feed(watcher::Event::Init), None);
        assert!(matches!(
            r.feed(watcher::Event::InitApply(lease("1"))),
            Some(Some(_))
        ));
        assert_eq!(r.feed(watcher::Event::InitDone), None);
        assert!(matches!(
            r.feed(watcher::Event::Apply(lease("2"))),
            Some(Some(_))
        ));
        // The watch broke (410 Gone) and the Lease was deleted meanwhile:
        // the new list is empty, with no Delete event.
        assert_eq!(r.feed(watcher::Event::Init), None);
        assert_eq!(r.feed(watcher::Event::InitDone), Some(None));
        // An ordinary delete.
        assert_eq!(r.feed(watcher::Event::Delete(lease("3"))), Some(None));
        // InitDone outside a list says nothing.
        assert_eq!(r.feed(watcher::Event::InitDone), None);
    }
}
