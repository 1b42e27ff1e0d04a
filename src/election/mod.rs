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

pub mod record;
pub mod reported;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::LeaseTiming;
use record::{Observation, View};

/// What an election tells its user; shared with the Raft election.
pub use vipd_raft::Leadership;

/// A Lease election for identity `me`.
pub struct LeaseElection {
    pub api: Api<Lease>,
    pub name: String,
    pub me: String,
    pub timing: LeaseTiming,
    /// How long to wait after the Lease is seen free before trying to take
    /// it (a rank times a stagger, so the preferred node wins the race).
    pub acquire_delay: Duration,
    /// Labels put on the Lease when this node creates it.
    pub labels: BTreeMap<String, String>,
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

enum Outcome {
    Won(Instant),
    Lost,
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

    async fn lead_or_follow<L: Leadership>(
        self,
        mut events: Observations,
        initial: Option<Option<Lease>>,
        mut leadership: L,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut obs: Option<Observation> = None;
        observe(initial, &mut obs);
        // Some(t): leading; t = start of the last successful acquire/renew.
        let mut leading: Option<Instant> = None;
        // Leading past the renew deadline because the API server cannot be
        // reached (vip_hold_on_api_loss): since when.
        let mut holding_since: Option<Instant> = None;
        let mut last_holder: Option<String> = None;
        // When the Lease was first seen free in the current free spell.
        let mut free_since: Option<Instant> = None;
        let mut renew_tick = tokio::time::interval(self.timing.retry_period);
        renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = Instant::now();
            if let Some(since) = leading {
                // Holding: each attempt gets a call's time; else the renew
                // deadline bounds them.
                let deadline = match holding_since {
                    Some(_) => now + self.call_timeout(),
                    None => since + self.timing.renew_deadline,
                };
                let hold_allowed = self.timing.hold_on_api_loss;
                tokio::select! {
                    _ = renew_tick.tick() => {
                        if holding_since.is_some() {
                            // Each attempt may hang for a call's time: the
                            // hold must outlast it.
                            leadership.holding(Instant::now() + self.call_timeout() + self.timing.renew_deadline);
                        }
                        // When holding is allowed, a failing call returns
                        // early enough for the hold to begin before the
                        // claim lapses.
                        let call_deadline = if hold_allowed && holding_since.is_none() {
                            deadline.checked_sub(HOLD_MARGIN).unwrap_or(deadline)
                        } else {
                            deadline
                        };
                        match self.renew(&mut obs, call_deadline).await {
                            Ok(started) => {
                                if let Some(t) = holding_since.take() {
                                    info!(lease = %self.name, after = ?t.elapsed(), "the API server answers again: Lease renewed, still the holder");
                                }
                                leading = Some(started);
                                leadership.renewed(started + self.timing.renew_deadline);
                            }
                            Err(RenewError::Lost(holder)) => {
                                warn!(lease = %self.name, holder = holder.as_deref().unwrap_or(""), "lost the Lease to another holder");
                                leading = None;
                                holding_since = None;
                                leadership.stopped().await;
                            }
                            Err(RenewError::Failed(e)) => {
                                let now = Instant::now();
                                let lapses = since + self.timing.renew_deadline;
                                let decision = decide_on_failed_renew(
                                    now >= lapses,
                                    now + self.timing.retry_period + HOLD_MARGIN >= lapses,
                                    hold_allowed,
                                    unreachable(&e),
                                );
                                match decision {
                                    OnFailedRenew::Retry => debug!(error = %e, "renew failed; retrying"),
                                    OnFailedRenew::Hold => {
                                        if holding_since.is_none() {
                                            warn!(lease = %self.name, error = %e, "cannot reach the API server to renew the Lease: holding the addresses until another node announces them or the API server answers");
                                            holding_since = Some(now);
                                        }
                                        leadership.holding(now + self.call_timeout() + self.timing.renew_deadline);
                                    }
                                    OnFailedRenew::StepDown => {
                                        warn!(lease = %self.name, error = %e, "could not renew the Lease before the renew deadline: stepping down");
                                        leading = None;
                                        holding_since = None;
                                        leadership.stopped().await;
                                    }
                                }
                            }
                        }
                    }
                    ev = events.next() => observe(ev, &mut obs),
                    _ = shutdown.changed() => {}
                }
                continue;
            }

            // Follower.
            let v = obs
                .as_ref()
                .map(|o| record::view(o, &self.me, now, self.timing.lease_duration))
                .unwrap_or(View::Free);
            let holder = match &v {
                View::Theirs { holder, .. } => Some(holder.clone()),
                _ => None,
            };
            if holder != last_holder {
                leadership.observed(holder.as_deref());
                if let Some(h) = &holder {
                    debug!(lease = %self.name, leader = %h, "following");
                }
                last_holder = holder;
            }
            let delayed = matches!(v, View::Free)
                && !self.acquire_delay.is_zero()
                && now < *free_since.get_or_insert(now) + self.acquire_delay;
            let wake = match v {
                View::Free if delayed => free_since.expect("set above") + self.acquire_delay,
                View::Free | View::Mine => match self.try_acquire(&mut obs).await {
                    Ok(Outcome::Won(started)) => {
                        info!(lease = %self.name, "became leader");
                        leading = Some(started);
                        free_since = None;
                        last_holder = Some(self.me.clone());
                        leadership
                            .started(started + self.timing.renew_deadline)
                            .await;
                        renew_tick.reset();
                        continue;
                    }
                    Ok(Outcome::Lost) => Instant::now(),
                    Err(e) => {
                        debug!(error = %e, "could not acquire the Lease; retrying");
                        if self.timing.hold_on_api_loss && unreachable(&e) {
                            if let Some(o) = obs.as_mut() {
                                o.unverifiable(Instant::now());
                            }
                        }
                        Instant::now() + self.timing.retry_period
                    }
                },
                View::Theirs { expires_at, .. } => {
                    free_since = None;
                    expires_at
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                ev = events.next() => observe(ev, &mut obs),
                _ = shutdown.changed() => {}
            }
        }

        if leading.is_some() {
            // Withdraw first, then release: nobody may hold the VIP while we do.
            leadership.stopped().await;
            match tokio::time::timeout(Duration::from_secs(2), self.release(&mut obs)).await {
                Ok(Ok(())) => info!(lease = %self.name, "released the Lease"),
                Ok(Err(e)) => {
                    warn!(error = %e, "could not release the Lease; followers take over when it expires")
                }
                Err(_) => {
                    warn!("releasing the Lease timed out; followers take over when it expires")
                }
            }
        }
    }

    fn call_timeout(&self) -> Duration {
        // Long enough for a loaded API server, short enough to retry in time.
        self.timing.renew_deadline.min(Duration::from_secs(2))
    }

    async fn try_acquire(&self, obs: &mut Option<Observation>) -> Result<Outcome, kube::Error> {
        let started = Instant::now();
        let t = self.call_timeout();
        // The watched copy saves a round trip; a stale one costs a 409 and a re-read.
        let current = match obs.as_ref() {
            Some(o) => o.lease.clone(),
            None => {
                let l = timeout(t, self.api.get_opt(&self.name)).await?;
                let o = Observation::update(None, l.clone(), Instant::now());
                let held = matches!(
                    record::view(&o, &self.me, Instant::now(), self.timing.lease_duration),
                    View::Theirs { .. }
                );
                *obs = Some(o);
                if held {
                    return Ok(Outcome::Lost);
                }
                l
            }
        };
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let result = match current {
            None => {
                let mut l = Lease::default();
                l.metadata.name = Some(self.name.clone());
                if !self.labels.is_empty() {
                    l.metadata.labels = Some(self.labels.clone());
                }
                l.spec = Some(record::acquire(
                    None,
                    &self.me,
                    now,
                    self.timing.lease_duration,
                ));
                timeout(t, self.api.create(&PostParams::default(), &l)).await
            }
            Some(mut l) => {
                l.spec = Some(record::acquire(
                    l.spec.as_ref(),
                    &self.me,
                    now,
                    self.timing.lease_duration,
                ));
                timeout(t, self.api.replace(&self.name, &PostParams::default(), &l)).await
            }
        };
        match result {
            Ok(l) => {
                *obs = Some(Observation::update(obs.as_ref(), Some(l), Instant::now()));
                Ok(Outcome::Won(started))
            }
            // Someone else wrote first (409 Conflict / AlreadyExists), or our
            // copy was stale: re-read, and decide again from what is there.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let fresh = timeout(t, self.api.get_opt(&self.name)).await?;
                *obs = Some(Observation::update(obs.as_ref(), fresh, Instant::now()));
                Ok(Outcome::Lost)
            }
            // Deleted since we saw it: decide again (its last holder
            // recreates it; the others wait out its term).
            Err(kube::Error::Api(s)) if s.code == 404 => {
                *obs = Some(Observation::update(obs.as_ref(), None, Instant::now()));
                Ok(Outcome::Lost)
            }
            Err(e) => Err(e),
        }
    }

    /// The leader's Lease is gone (deleted by hand, lost in an etcd
    /// restore): create it again, held by this node. Someone else creating
    /// it first means another leader.
    async fn recreate(
        &self,
        obs: &mut Option<Observation>,
        t: Duration,
        started: Instant,
    ) -> Result<Instant, RenewError> {
        warn!(lease = %self.name, "the Lease was deleted while this node held it: creating it again");
        let mut l = Lease::default();
        l.metadata.name = Some(self.name.clone());
        if !self.labels.is_empty() {
            l.metadata.labels = Some(self.labels.clone());
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        l.spec = Some(record::acquire(
            None,
            &self.me,
            now,
            self.timing.lease_duration,
        ));
        match timeout(t, self.api.create(&PostParams::default(), &l)).await {
            Ok(l) => {
                *obs = Some(Observation::update(obs.as_ref(), Some(l), Instant::now()));
                Ok(started)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let fresh = timeout(t, self.api.get_opt(&self.name))
                    .await
                    .map_err(RenewError::Failed)?;
                let holder = fresh.as_ref().and_then(record::holder).map(String::from);
                *obs = Some(Observation::update(obs.as_ref(), fresh, Instant::now()));
                if holder.as_deref() == Some(self.me.as_str()) {
                    Err(RenewError::Failed(kube::Error::Api(s)))
                } else {
                    Err(RenewError::Lost(holder))
                }
            }
            Err(e) => Err(RenewError::Failed(e)),
        }
    }

    async fn renew(
        &self,
        obs: &mut Option<Observation>,
        deadline: Instant,
    ) -> Result<Instant, RenewError> {
        let started = Instant::now();
        let t = deadline
            .saturating_duration_since(started)
            .min(self.call_timeout());
        if t.is_zero() {
            return Err(RenewError::Failed(timeout_error()));
        }
        let mut lease = match obs.as_ref().and_then(|o| o.lease.clone()) {
            Some(l) => l,
            None => match timeout(t, self.api.get_opt(&self.name))
                .await
                .map_err(RenewError::Failed)?
            {
                Some(l) => l,
                None => return self.recreate(obs, t, started).await,
            },
        };
        if record::holder(&lease) != Some(self.me.as_str()) {
            return Err(RenewError::Lost(record::holder(&lease).map(String::from)));
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        lease.spec = Some(record::renew(
            lease.spec.as_ref().expect("held lease has a spec"),
            now,
        ));
        match timeout(
            t,
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(l) => {
                *obs = Some(Observation::update(obs.as_ref(), Some(l), Instant::now()));
                Ok(started)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Our copy is stale: re-read. Still ours: renew from it next tick.
                let fresh = timeout(t, self.api.get_opt(&self.name))
                    .await
                    .map_err(RenewError::Failed)?;
                let holder = fresh.as_ref().and_then(record::holder).map(String::from);
                *obs = Some(Observation::update(obs.as_ref(), fresh, Instant::now()));
                if holder.as_deref() == Some(self.me.as_str()) {
                    Err(RenewError::Failed(kube::Error::Api(s)))
                } else {
                    Err(RenewError::Lost(holder))
                }
            }
            // Deleted under us (the watch missed it): create it again.
            Err(kube::Error::Api(s)) if s.code == 404 => self.recreate(obs, t, started).await,
            Err(e) => Err(RenewError::Failed(e)),
        }
    }

    async fn release(&self, obs: &mut Option<Observation>) -> Result<(), kube::Error> {
        let Some(mut lease) = obs.as_ref().and_then(|o| o.lease.clone()) else {
            return Ok(());
        };
        if record::holder(&lease) != Some(self.me.as_str()) {
            return Ok(());
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        lease.spec = Some(record::release(
            lease.spec.as_ref().expect("held lease has a spec"),
            now,
        ));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
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

/// How long before its renew deadline a leader that may hold on needs its
/// failed call back, to start holding before its claim lapses.
const HOLD_MARGIN: Duration = Duration::from_millis(200);

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

/// Whether an API error means "the API server cannot be reached or is not
/// serving" (no answer, a timeout, 5xx, 429), as opposed to an answer
/// that refuses (403, 422, ...): only the former lets a leader hold on.
pub fn unreachable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::SerdeError(_) => false,
        _ => true,
    }
}

enum RenewError {
    /// The Lease names another holder (or none).
    Lost(Option<String>),
    /// The API server did not answer in time, or refused.
    Failed(kube::Error),
}

fn timeout_error() -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "API call timed out",
    )))
}

async fn timeout<T>(
    t: Duration,
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => r,
        Err(_) => Err(timeout_error()),
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
    fn a_leader_holds_only_when_the_api_server_cannot_be_reached() {
        use OnFailedRenew::*;
        // Well within the renew deadline: retry.
        assert_eq!(decide_on_failed_renew(false, false, true, true), Retry);
        assert_eq!(decide_on_failed_renew(false, false, false, false), Retry);
        // The claim would lapse before the next try: hold when allowed and
        // the API server is out of reach, else retry until the deadline.
        assert_eq!(decide_on_failed_renew(false, true, true, true), Hold);
        assert_eq!(decide_on_failed_renew(false, true, true, false), Retry);
        assert_eq!(decide_on_failed_renew(false, true, false, true), Retry);
        // Past it: hold only when unreachable and allowed.
        assert_eq!(decide_on_failed_renew(true, true, true, true), Hold);
        assert_eq!(decide_on_failed_renew(true, true, true, false), StepDown);
        assert_eq!(decide_on_failed_renew(true, true, false, true), StepDown);
        assert!(unreachable(&timeout_error()));
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
