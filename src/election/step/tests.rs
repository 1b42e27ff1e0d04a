use super::*;

const TIMING: LeaseTiming = LeaseTiming::DEFAULT; // 4 s / 2.5 s / 500 ms, hold on

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn theirs(holder: &str, expires_at: Instant) -> View {
    View::Theirs {
        holder: holder.into(),
        expires_at,
    }
}

fn leader(t0: Instant) -> Core {
    let mut c = Core::new("n1", TIMING, Duration::ZERO);
    assert_eq!(c.step(Input::Follow(View::Free), t0), vec![Action::Acquire]);
    c.step(Input::Acquired(t0), t0);
    c
}

#[test]
fn a_free_lease_is_taken_and_the_term_starts_when_the_call_started() {
    let t0 = Instant::now();
    let mut c = Core::new("n1", TIMING, Duration::ZERO);
    assert_eq!(c.step(Input::Follow(View::Free), t0), vec![Action::Acquire]);
    let started = t0 + ms(5);
    assert_eq!(
        c.step(Input::Acquired(started), t0 + ms(40)),
        vec![
            Action::Log(Note::BecameLeader),
            Action::Started {
                hold_until: started + TIMING.renew_deadline
            },
            Action::ResetRenewTimer,
        ]
    );
    assert!(c.leading());
    // A view while leading changes nothing: the renew timer drives.
    assert_eq!(c.step(Input::Follow(View::Free), t0 + ms(50)), vec![]);
}

#[test]
fn a_lease_held_by_another_is_waited_out_and_its_holder_reported_once() {
    let t0 = Instant::now();
    let mut c = Core::new("n1", TIMING, Duration::ZERO);
    let exp = t0 + ms(3000);
    assert_eq!(
        c.step(Input::Follow(theirs("n2", exp)), t0),
        vec![Action::Observed(Some("n2".into())), Action::WaitUntil(exp)]
    );
    assert_eq!(
        c.step(Input::Follow(theirs("n2", exp + ms(500))), t0 + ms(500)),
        vec![Action::WaitUntil(exp + ms(500))]
    );
    // Expired: free, nobody leads.
    assert_eq!(
        c.step(Input::Follow(View::Free), exp + ms(600)),
        vec![Action::Observed(None), Action::Acquire]
    );
}

#[test]
fn a_ranked_node_waits_its_delay_from_the_moment_the_lease_was_first_free() {
    let t0 = Instant::now();
    let mut c = Core::new("n3", TIMING, ms(600));
    assert_eq!(
        c.step(Input::Follow(View::Free), t0),
        vec![Action::WaitUntil(t0 + ms(600))]
    );
    // News in between does not restart the delay.
    assert_eq!(
        c.step(Input::Follow(View::Free), t0 + ms(200)),
        vec![Action::WaitUntil(t0 + ms(600))]
    );
    assert_eq!(
        c.step(Input::Follow(View::Free), t0 + ms(600)),
        vec![Action::Acquire]
    );
    // Someone took it meanwhile: the next free spell starts a new delay.
    let exp = t0 + ms(5000);
    c.step(Input::AcquireLost, t0 + ms(610));
    c.step(Input::Follow(theirs("n1", exp)), t0 + ms(610));
    assert_eq!(
        c.step(Input::Follow(View::Free), exp),
        vec![Action::Observed(None), Action::WaitUntil(exp + ms(600))]
    );
    // A record that names this node is taken at once (its own term).
    assert_eq!(
        c.step(Input::Follow(View::Mine), exp),
        vec![Action::Acquire]
    );
}

/// The Services leader's heir gets a head start: the others' delay is set
/// while the dead leader's Lease runs out, and lifted when the heir dies.
#[test]
fn a_delay_set_while_following_applies_to_the_next_free_spell_and_can_be_lifted() {
    let t0 = Instant::now();
    let mut c = Core::new("n2", TIMING, Duration::ZERO);
    let exp = t0 + ms(3000);
    c.step(Input::Follow(theirs("n1", exp)), t0);
    c.set_acquire_delay(ms(1000));
    assert_eq!(
        c.step(Input::Follow(View::Free), exp),
        vec![Action::Observed(None), Action::WaitUntil(exp + ms(1000))]
    );
    // The heir died too: no more waiting.
    c.set_acquire_delay(Duration::ZERO);
    assert_eq!(
        c.step(Input::Follow(View::Free), exp + ms(100)),
        vec![Action::Acquire]
    );
}

/// A leader renews at once when it sees its Lease deleted, whenever its
/// next renewal is due; a follower ignores it (it waits out the term).
#[test]
fn a_leader_whose_lease_is_deleted_renews_at_once() {
    let t0 = Instant::now();
    let mut c = leader(t0);
    let now = t0 + ms(100);
    assert!(matches!(
        c.step(Input::LeaseGone, now).as_slice(),
        [Action::Renew { .. }]
    ));
    let mut f = Core::new("n2", TIMING, Duration::ZERO);
    assert_eq!(f.step(Input::LeaseGone, now), vec![]);
}

#[test]
fn a_409_or_404_on_acquire_decides_again_at_once() {
    let t0 = Instant::now();
    let mut c = Core::new("n1", TIMING, Duration::ZERO);
    c.step(Input::Follow(View::Free), t0);
    assert_eq!(
        c.step(Input::AcquireLost, t0 + ms(10)),
        vec![Action::WaitUntil(t0 + ms(10))]
    );
    assert!(!c.leading());
}

#[test]
fn an_unreachable_api_server_on_acquire_makes_the_holders_expiry_unverifiable() {
    let t0 = Instant::now();
    let mut c = Core::new("n1", TIMING, Duration::ZERO);
    assert_eq!(
        c.step(Input::AcquireFailed { unreachable: true }, t0),
        vec![
            Action::Log(Note::AcquireRetry),
            Action::MarkUnverifiable,
            Action::WaitUntil(t0 + TIMING.retry_period)
        ]
    );
    // A refusal (403) is an answer: the expiry stands.
    assert_eq!(
        c.step(Input::AcquireFailed { unreachable: false }, t0),
        vec![
            Action::Log(Note::AcquireRetry),
            Action::WaitUntil(t0 + TIMING.retry_period)
        ]
    );
    // Strict mode never marks it.
    let strict = LeaseTiming {
        hold_on_api_loss: false,
        ..TIMING
    };
    let mut c = Core::new("n1", strict, Duration::ZERO);
    assert!(!c
        .step(Input::AcquireFailed { unreachable: true }, t0)
        .contains(&Action::MarkUnverifiable));
}

#[test]
fn renewals_extend_the_hold_from_when_each_call_started() {
    let t0 = Instant::now();
    let mut c = leader(t0);
    // The call must come back HOLD_MARGIN before the deadline, so a hold
    // can begin before the claim lapses.
    assert_eq!(
        c.step(Input::RenewDue, t0 + ms(500)),
        vec![Action::Renew {
            deadline: t0 + TIMING.renew_deadline - HOLD_MARGIN
        }]
    );
    let started = t0 + ms(500);
    assert_eq!(
        c.step(Input::Renewed(started), t0 + ms(520)),
        vec![Action::Renewed {
            hold_until: started + TIMING.renew_deadline
        }]
    );
    assert_eq!(
        c.step(Input::RenewDue, t0 + ms(1000)),
        vec![Action::Renew {
            deadline: started + TIMING.renew_deadline - HOLD_MARGIN
        }]
    );
}

#[test]
fn a_refused_renewal_retries_within_the_deadline_and_steps_down_past_it() {
    let t0 = Instant::now();
    let mut c = leader(t0);
    assert_eq!(
        c.step(Input::RenewFailed { unreachable: false }, t0 + ms(600)),
        vec![Action::Log(Note::RenewRetry)]
    );
    assert!(c.leading());
    assert_eq!(
        c.step(
            Input::RenewFailed { unreachable: false },
            t0 + TIMING.renew_deadline
        ),
        vec![Action::Log(Note::StepDown), Action::Stopped]
    );
    assert!(!c.leading());
    // Nothing left to release on shutdown.
    assert_eq!(c.step(Input::Shutdown, t0 + ms(3000)), vec![]);
}

#[test]
fn an_unreachable_api_server_makes_the_leader_hold_before_its_claim_lapses() {
    let t0 = Instant::now();
    let mut c = leader(t0);
    // Early failures retry.
    assert_eq!(
        c.step(Input::RenewFailed { unreachable: true }, t0 + ms(1000)),
        vec![Action::Log(Note::RenewRetry)]
    );
    // The next try would come after the claim lapses: hold now.
    let now = t0 + TIMING.renew_deadline - HOLD_MARGIN;
    let hold = now + c.call_timeout() + TIMING.renew_deadline;
    assert_eq!(
        c.step(Input::RenewFailed { unreachable: true }, now),
        vec![
            Action::Log(Note::HoldStarted),
            Action::Holding { hold_until: hold }
        ]
    );
    // While holding, each renew extends the hold first and gets a call's time.
    let later = now + ms(500);
    assert_eq!(
        c.step(Input::RenewDue, later),
        vec![
            Action::Holding {
                hold_until: later + c.call_timeout() + TIMING.renew_deadline
            },
            Action::Renew {
                deadline: later + c.call_timeout()
            }
        ]
    );
    // Another failure: still holding, logged once.
    assert_eq!(
        c.step(Input::RenewFailed { unreachable: true }, later + ms(100)),
        vec![Action::Holding {
            hold_until: later + ms(100) + c.call_timeout() + TIMING.renew_deadline
        }]
    );
    // The API server answers again: a normal term from that renewal.
    let back = later + ms(60_000);
    assert_eq!(
        c.step(Input::Renewed(back), back + ms(10)),
        vec![
            Action::Log(Note::AnswersAgain(back - now)),
            Action::Renewed {
                hold_until: back + TIMING.renew_deadline
            }
        ]
    );
}

#[test]
fn strict_mode_steps_down_on_the_deadline_even_when_unreachable() {
    let t0 = Instant::now();
    let strict = LeaseTiming {
        hold_on_api_loss: false,
        ..TIMING
    };
    let mut c = Core::new("n1", strict, Duration::ZERO);
    c.step(Input::Follow(View::Free), t0);
    c.step(Input::Acquired(t0), t0);
    // No margin taken off the call's deadline.
    assert_eq!(
        c.step(Input::RenewDue, t0 + ms(500)),
        vec![Action::Renew {
            deadline: t0 + strict.renew_deadline
        }]
    );
    assert_eq!(
        c.step(
            Input::RenewFailed { unreachable: true },
            t0 + strict.renew_deadline - ms(100)
        ),
        vec![Action::Log(Note::RenewRetry)]
    );
    assert_eq!(
        c.step(
            Input::RenewFailed { unreachable: true },
            t0 + strict.renew_deadline
        ),
        vec![Action::Log(Note::StepDown), Action::Stopped]
    );
}

#[test]
fn losing_the_lease_to_another_holder_stops_at_once() {
    let t0 = Instant::now();
    let mut c = leader(t0);
    assert_eq!(
        c.step(Input::RenewLost(Some("n2".into())), t0 + ms(700)),
        vec![
            Action::Log(Note::LostTo(Some("n2".into()))),
            Action::Stopped
        ]
    );
    assert!(!c.leading());
    // A late outcome of the old term changes nothing.
    assert_eq!(c.step(Input::Renewed(t0 + ms(700)), t0 + ms(710)), vec![]);
    assert_eq!(c.step(Input::RenewDue, t0 + ms(710)), vec![]);
    // The new holder is reported when next followed.
    let exp = t0 + ms(4700);
    assert_eq!(
        c.step(Input::Follow(theirs("n2", exp)), t0 + ms(720)),
        vec![Action::Observed(Some("n2".into())), Action::WaitUntil(exp)]
    );
}

#[test]
fn shutdown_withdraws_before_it_releases() {
    let t0 = Instant::now();
    let mut c = leader(t0);
    assert_eq!(
        c.step(Input::Shutdown, t0 + ms(100)),
        vec![Action::Stopped, Action::Release]
    );
    assert!(!c.leading());
}

#[test]
fn decide_on_failed_renew_table() {
    use OnFailedRenew::*;
    // (past, lapses before next, hold allowed, unreachable) -> decision
    let table = [
        ((false, false, true, true), Retry),
        ((false, true, true, true), Hold),
        ((true, true, true, true), Hold),
        ((true, true, true, false), StepDown),
        ((false, true, true, false), Retry),
        ((true, true, false, true), StepDown),
        ((false, true, false, true), Retry),
    ];
    for ((p, l, h, u), want) in table {
        assert_eq!(decide_on_failed_renew(p, l, h, u), want, "{p} {l} {h} {u}");
    }
}
