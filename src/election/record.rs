//! Leader election on a `coordination.k8s.io/v1` Lease: the decisions, with
//! no I/O, following client-go's leaderelection rules.
//!
//! Time is never read from the Lease to decide expiry: clocks of nodes
//! differ. A follower measures expiry from the moment *it* saw the record
//! change (client-go's `observedTime`), so it waits at least the full lease
//! duration after the holder's last renew, whatever the clocks say.
//!
//! A Lease that disappears (a user's `kubectl delete`, an etcd restore, a
//! deletion missed while the watch was down) is not free at once: it stays
//! its last holder's for one more lease duration from the moment the
//! deletion was seen, so the holder recreates it (it sees its own tombstone)
//! and nobody else can take the VIP while the holder may still hold it.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// The Lease as a follower last saw it.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The object (None: it does not exist).
    pub lease: Option<Lease>,
    /// When this node first saw this version of it.
    pub observed_at: Instant,
    /// The Lease is gone, and this node last saw it held: by whom, for how
    /// long a term.
    pub deleted: Option<Deleted>,
}

/// The last holder of a Lease seen deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub holder: String,
    /// The lease duration it last wrote (0: the caller's default).
    pub duration: Duration,
}

impl Observation {
    /// The API server could not be reached: the holder may have renewed
    /// meanwhile without this node seeing it, so its term counts again from
    /// now (a follower never takes a Lease over just because it could not
    /// watch it; a holder out of reach of the API is noticed by the
    /// followers that can reach it).
    pub fn unverifiable(&mut self, now: Instant) {
        if self.lease.is_some() {
            self.observed_at = now;
        }
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.lease.as_ref()?.metadata.resource_version.as_deref()
    }

    /// Records `lease` as seen at `now`; the observation time only moves
    /// when the object changed.
    pub fn update(prev: Option<&Observation>, lease: Option<Lease>, now: Instant) -> Observation {
        let rv = |l: &Option<Lease>| l.as_ref().and_then(|l| l.metadata.resource_version.clone());
        match prev {
            Some(p) if rv(&p.lease) == rv(&lease) && p.lease.is_some() == lease.is_some() => {
                Observation {
                    lease,
                    observed_at: p.observed_at,
                    deleted: p.deleted.clone(),
                }
            }
            _ => {
                // Seen deleted now: remember who held it.
                let deleted = match (&lease, prev.and_then(|p| p.lease.as_ref())) {
                    (None, Some(old)) => holder(old).map(|h| Deleted {
                        holder: h.to_string(),
                        duration: duration_of(old, Duration::ZERO),
                    }),
                    _ => None,
                };
                Observation {
                    lease,
                    observed_at: now,
                    deleted,
                }
            }
        }
    }
}

/// Who holds the Lease, from one node's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Nobody (no object, no holder, or the holder's time ran out).
    Free,
    /// This node, per the record.
    Mine,
    /// Another node, until `expires_at` unless it renews.
    Theirs { holder: String, expires_at: Instant },
}

pub fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

fn duration_of(lease: &Lease, default: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(default)
}

/// Reads an observation at `now`. `default_duration` applies when the
/// record names none.
pub fn view(obs: &Observation, me: &str, now: Instant, default_duration: Duration) -> View {
    let Some(lease) = &obs.lease else {
        return match &obs.deleted {
            Some(d) if d.holder == me => View::Mine,
            Some(d) => {
                let term = if d.duration.is_zero() {
                    default_duration
                } else {
                    d.duration
                };
                let expires_at = obs.observed_at + term;
                if now >= expires_at {
                    View::Free
                } else {
                    View::Theirs {
                        holder: d.holder.clone(),
                        expires_at,
                    }
                }
            }
            None => View::Free,
        };
    };
    let Some(h) = holder(lease) else {
        return View::Free;
    };
    if h == me {
        return View::Mine;
    }
    let expires_at = obs.observed_at + duration_of(lease, default_duration);
    if now >= expires_at {
        View::Free
    } else {
        View::Theirs {
            holder: h.to_string(),
            expires_at,
        }
    }
}

/// The spec that makes `me` the holder, starting now.
pub fn acquire(old: Option<&LeaseSpec>, me: &str, now: MicroTime, duration: Duration) -> LeaseSpec {
    let old_holder = old
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    let changed = old_holder != Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
        acquire_time: if changed {
            Some(now.clone())
        } else {
            old.and_then(|s| s.acquire_time.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if changed && old_holder.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..old.cloned().unwrap_or_default()
    }
}

/// The spec a leader writes to renew.
pub fn renew(old: &LeaseSpec, now: MicroTime) -> LeaseSpec {
    LeaseSpec {
        renew_time: Some(now),
        ..old.clone()
    }
}

/// The spec a leader writes when it steps down on purpose: no holder and a
/// one-second duration, so followers take over at once (as client-go's
/// ReleaseOnCancel).
pub fn release(old: &LeaseSpec, now: MicroTime) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(now.clone()),
        acquire_time: Some(now),
        ..old.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn lease(holder: Option<&str>, rv: &str, secs: i32) -> Lease {
        let mut l = Lease::default();
        l.metadata.resource_version = Some(rv.into());
        l.spec = Some(LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        });
        l
    }

    fn micro() -> MicroTime {
        MicroTime(Timestamp::now())
    }

    const D: Duration = Duration::from_secs(4);

    #[test]
    fn views() {
        let t0 = Instant::now();
        let obs = |l: Option<Lease>| Observation {
            lease: l,
            observed_at: t0,
            deleted: None,
        };
        assert_eq!(view(&obs(None), "a", t0, D), View::Free);
        assert_eq!(
            view(&obs(Some(lease(None, "1", 4))), "a", t0, D),
            View::Free
        );
        assert_eq!(
            view(&obs(Some(lease(Some(""), "1", 4))), "a", t0, D),
            View::Free
        );
        assert_eq!(
            view(&obs(Some(lease(Some("a"), "1", 4))), "a", t0, D),
            View::Mine
        );
        let theirs = view(
            &obs(Some(lease(Some("b"), "1", 4))),
            "a",
            t0 + Duration::from_secs(3),
            D,
        );
        assert_eq!(
            theirs,
            View::Theirs {
                holder: "b".into(),
                expires_at: t0 + D
            }
        );
        // Expired by the follower's own clock: free.
        assert_eq!(
            view(&obs(Some(lease(Some("b"), "1", 4))), "a", t0 + D, D),
            View::Free
        );
    }

    #[test]
    fn the_records_duration_wins_over_ours() {
        let t0 = Instant::now();
        let o = Observation {
            lease: Some(lease(Some("b"), "1", 15)),
            observed_at: t0,
            deleted: None,
        };
        assert!(matches!(
            view(&o, "a", t0 + Duration::from_secs(10), D),
            View::Theirs { .. }
        ));
    }

    #[test]
    fn observation_time_moves_only_on_change() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(3);
        let first = Observation::update(None, Some(lease(Some("b"), "1", 4)), t0);
        let same = Observation::update(Some(&first), Some(lease(Some("b"), "1", 4)), t1);
        assert_eq!(
            same.observed_at, t0,
            "an unchanged record does not restart the clock"
        );
        let renewed = Observation::update(Some(&same), Some(lease(Some("b"), "2", 4)), t1);
        assert_eq!(renewed.observed_at, t1);
        let deleted = Observation::update(Some(&renewed), None, t1 + D);
        assert_eq!(deleted.observed_at, t1 + D);
    }

    #[test]
    fn a_deleted_lease_stays_its_holders_for_one_term() {
        let t0 = Instant::now();
        let held = Observation::update(None, Some(lease(Some("b"), "1", 4)), t0);
        let t1 = t0 + Duration::from_secs(1);
        let gone = Observation::update(Some(&held), None, t1);
        assert_eq!(
            gone.deleted,
            Some(Deleted {
                holder: "b".into(),
                duration: D
            })
        );
        // The holder recreates it at once; the others wait a full term
        // from the moment they saw the deletion.
        assert_eq!(view(&gone, "b", t1, D), View::Mine);
        assert_eq!(
            view(&gone, "a", t1 + Duration::from_secs(3), D),
            View::Theirs {
                holder: "b".into(),
                expires_at: t1 + D
            }
        );
        assert_eq!(view(&gone, "a", t1 + D, D), View::Free);
        // Seeing it gone again changes nothing; seeing it back replaces it.
        let again = Observation::update(Some(&gone), None, t1 + Duration::from_secs(2));
        assert_eq!(again.observed_at, t1);
        assert_eq!(again.deleted, gone.deleted);
        let back = Observation::update(Some(&again), Some(lease(Some("b"), "7", 4)), t1);
        assert_eq!(back.deleted, None);
        // A released (holderless) Lease that is deleted is free.
        let released = Observation::update(None, Some(lease(None, "3", 1)), t0);
        let gone = Observation::update(Some(&released), None, t1);
        assert_eq!(view(&gone, "a", t1, D), View::Free);
        // Never seen: free.
        assert_eq!(
            view(&Observation::update(None, None, t0), "a", t0, D),
            View::Free
        );
    }

    #[test]
    fn acquire_counts_transitions_and_keeps_acquire_time_on_reacquire() {
        let now = micro();
        let fresh = acquire(None, "a", now.clone(), D);
        assert_eq!(fresh.holder_identity.as_deref(), Some("a"));
        assert_eq!(fresh.lease_transitions, Some(0));
        assert_eq!(fresh.lease_duration_seconds, Some(4));
        assert_eq!(fresh.acquire_time, Some(now.clone()));

        let from_b = acquire(
            Some(&LeaseSpec {
                lease_transitions: Some(3),
                holder_identity: Some("b".into()),
                ..Default::default()
            }),
            "a",
            now.clone(),
            D,
        );
        assert_eq!(from_b.lease_transitions, Some(4));

        let earlier = MicroTime(Timestamp::from_second(1_000_000).unwrap());
        let mine = LeaseSpec {
            holder_identity: Some("a".into()),
            acquire_time: Some(earlier.clone()),
            lease_transitions: Some(4),
            ..Default::default()
        };
        let again = acquire(Some(&mine), "a", now.clone(), D);
        assert_eq!(again.acquire_time, Some(earlier));
        assert_eq!(again.lease_transitions, Some(4));
        assert_eq!(again.renew_time, Some(now));
    }

    #[test]
    fn release_frees_at_once() {
        let spec = acquire(None, "a", micro(), D);
        let r = release(&spec, micro());
        assert_eq!(r.holder_identity, None);
        assert_eq!(r.lease_duration_seconds, Some(1));
        let mut l = lease(None, "9", 1);
        l.spec = Some(r);
        let t0 = Instant::now();
        assert_eq!(
            view(
                &Observation {
                    lease: Some(l),
                    observed_at: t0,
                    deleted: None,
                },
                "b",
                t0,
                D
            ),
            View::Free
        );
    }
}
