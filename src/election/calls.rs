//! The Lease election's API calls: acquire (create or take over), renew
//! (recreate when deleted), release. Each has a deadline; a 409 is
//! answered by re-reading, a 404 by deciding again. What to make of an
//! outcome is `step`'s business.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use tracing::warn;

use super::record::{self, Observation, View};
use super::LeaseElection;

pub enum Outcome {
    Won(Instant),
    Lost,
}

impl LeaseElection {
    fn call_timeout(&self) -> Duration {
        super::step::call_timeout(&self.timing)
    }

    pub(super) async fn try_acquire(
        &self,
        obs: &mut Option<Observation>,
    ) -> Result<Outcome, kube::Error> {
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
            Err(kube::Error::Api(s)) if s.code == 409 => Err(self.after_conflict(obs, t, s).await),
            Err(e) => Err(RenewError::Failed(e)),
        }
    }

    /// Someone else wrote the Lease first (409): re-read it. Still this
    /// node's: a failed attempt (renew from the fresh copy next tick);
    /// anyone else's or nobody's: lost.
    async fn after_conflict(
        &self,
        obs: &mut Option<Observation>,
        t: Duration,
        status: Box<kube::core::Status>,
    ) -> RenewError {
        let fresh = match timeout(t, self.api.get_opt(&self.name)).await {
            Ok(f) => f,
            Err(e) => return RenewError::Failed(e),
        };
        let holder = fresh.as_ref().and_then(record::holder).map(String::from);
        *obs = Some(Observation::update(obs.as_ref(), fresh, Instant::now()));
        if holder.as_deref() == Some(self.me.as_str()) {
            RenewError::Failed(kube::Error::Api(status))
        } else {
            RenewError::Lost(holder)
        }
    }

    pub(super) async fn renew(
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
            // Our copy is stale: re-read. Still ours: renew from it next
            // tick. Gone: a PUT of a deleted Lease fails its UID
            // precondition (409, not 404; the watch has not told yet), so
            // it was deleted under us: create it again.
            Err(kube::Error::Api(s)) if s.code == 409 => match self.after_conflict(obs, t, s).await
            {
                RenewError::Lost(None) if obs.as_ref().is_some_and(|o| o.lease.is_none()) => {
                    self.recreate(obs, t, started).await
                }
                e => Err(e),
            },
            // Deleted under us (the watch missed it): create it again.
            Err(kube::Error::Api(s)) if s.code == 404 => self.recreate(obs, t, started).await,
            Err(e) => Err(RenewError::Failed(e)),
        }
    }

    pub(super) async fn release(&self, obs: &mut Option<Observation>) -> Result<(), kube::Error> {
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

pub enum RenewError {
    /// The Lease names another holder (or none).
    Lost(Option<String>),
    /// The API server did not answer in time, or refused.
    Failed(kube::Error),
}

pub(super) fn timeout_error() -> kube::Error {
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
