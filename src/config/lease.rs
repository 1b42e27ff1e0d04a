//! Lease election settings (the control-plane Lease and the Services
//! leader's): where the Lease lives, its name, its timing.
//!
//! The timing's invariant, `retry < renew deadline < lease duration`, is
//! what fencing rests on: a leader gives its addresses up at the renew
//! deadline, before any follower may consider the Lease expired.

use std::time::Duration;

use super::reader::Reader;
use super::types::{LeaseConfig, LeaseTiming};
use super::values::is_k8s_name;

/// vipd's namespace (`cp_namespace`).
pub(super) fn namespace(r: &Reader) -> String {
    let ns = r.string_or_default("cp_namespace");
    if is_k8s_name(&ns) {
        ns
    } else {
        r.bad("cp_namespace", "not a valid namespace name");
        super::settings::DEFAULT_NAMESPACE.to_string()
    }
}

/// The Lease named by setting `name_key` (`NAME` or `NAMESPACE/NAME`).
pub(super) fn lease_config(r: &Reader, name_key: &str) -> LeaseConfig {
    let mut namespace = namespace(r);
    let mut name = r.string_or_default(name_key);
    if let Some((ns, n)) = name.clone().split_once('/') {
        if is_k8s_name(ns) {
            namespace = ns.to_string();
        } else {
            r.bad(name_key, "namespace part is not a valid name");
        }
        name = n.to_string();
    }
    if !is_k8s_name(&name) {
        r.bad(
            name_key,
            "not a valid Lease name (lower-case letters, digits, '-', '.')",
        );
    }
    LeaseConfig {
        namespace,
        name,
        timing: timing(r),
    }
}

/// A Lease duration setting `key`: whole seconds, at least 2 (else
/// recorded as bad, and `fallback`).
fn lease_seconds(r: &Reader, key: &str, fallback: Duration) -> Duration {
    let d = r.duration(key, fallback);
    if !r.all_good(&[key]) {
        fallback
    } else if d < Duration::from_secs(2) || d.subsec_nanos() != 0 {
        r.bad(
            key,
            "Leases count whole seconds: at least 2s, in whole seconds",
        );
        fallback
    } else {
        d
    }
}

/// `svc_liveness_lease`: with placement, a node's liveness Lease lasts this
/// long (4 s by default: a dead node's addresses move 2 to 4 s after its
/// death), is renewed every half of it (at least 1 s: one write a second
/// per node at most) and given up after three quarters. 2 s moves them
/// sooner, but in the lab a write storm on the API server (2 cores) made
/// 1.5 s renewals time out.
pub(super) fn liveness_timing(r: &Reader) -> LeaseTiming {
    let d = lease_seconds(r, "svc_liveness_lease", Duration::from_secs(4));
    LeaseTiming {
        lease_duration: d,
        renew_deadline: d * 3 / 4,
        retry_period: (d / 2).max(Duration::from_secs(1)),
        hold_on_api_loss: r.bool("vip_hold_on_api_loss"),
    }
}

/// The Services leader's Lease timing. With placement and peer links
/// (`links`) the Lease decides only who writes allocations and status: a
/// dead leader's addresses move to its heir as soon as its link or liveness
/// says it died (`services::heir`), whatever the Lease. Then it lasts
/// `svc_leader_lease` (10 s), is renewed every quarter (2.5 s: with the
/// liveness Lease's renewal every 2 s, the leader writes one Lease a second
/// at most) and given up after three quarters. Without links, or when the
/// operator set the `vip_*` timing (kube-vip's one timing for every Lease),
/// that timing (`vip`), unless `svc_leader_lease` is set too.
pub(super) fn leader_timing(r: &Reader, links: bool, vip: LeaseTiming) -> LeaseTiming {
    let vip_given = ["vip_leaseduration", "vip_renewdeadline", "vip_retryperiod"]
        .iter()
        .any(|k| r.given(k).is_some());
    let own_given = r.given("svc_leader_lease").is_some();
    if !own_given && (!links || vip_given) {
        return vip;
    }
    let d = lease_seconds(r, "svc_leader_lease", Duration::from_secs(10));
    LeaseTiming {
        lease_duration: d,
        renew_deadline: d * 3 / 4,
        retry_period: d / 4,
        hold_on_api_loss: vip.hold_on_api_loss,
    }
}

/// `vip_leaseduration`, `vip_renewdeadline`, `vip_retryperiod`,
/// `vip_hold_on_api_loss`, checked together.
pub(super) fn timing(r: &Reader) -> LeaseTiming {
    let d = LeaseTiming::DEFAULT;
    let timing = LeaseTiming {
        lease_duration: r.duration("vip_leaseduration", d.lease_duration),
        renew_deadline: r.duration("vip_renewdeadline", d.renew_deadline),
        retry_period: r.duration("vip_retryperiod", d.retry_period),
        hold_on_api_loss: r.bool("vip_hold_on_api_loss"),
    };
    let read = |envs: &[&str]| r.all_good(envs);
    if read(&["vip_leaseduration"]) {
        if timing.lease_duration < Duration::from_secs(2) {
            r.bad("vip_leaseduration", "must be at least 2s");
        } else if timing.lease_duration.subsec_nanos() != 0 {
            r.bad(
                "vip_leaseduration",
                "Leases count whole seconds: use a whole number of seconds",
            );
        }
    }
    if read(&["vip_leaseduration", "vip_renewdeadline"])
        && timing.renew_deadline >= timing.lease_duration
    {
        r.bad(
            "vip_renewdeadline",
            format!(
                "must be shorter than vip_leaseduration ({}s): the leader must give the VIP up before its Lease can expire",
                timing.lease_duration.as_secs_f64()
            ),
        );
    }
    if read(&["vip_renewdeadline", "vip_retryperiod"])
        && (timing.retry_period.is_zero() || timing.retry_period * 6 / 5 >= timing.renew_deadline)
    {
        r.bad(
            "vip_retryperiod",
            "must be above 0 and well under vip_renewdeadline (1.2 x retry < renew deadline)",
        );
    }
    timing
}
