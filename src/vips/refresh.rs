//! Lifetime refreshes, spread out: every held address is refreshed within a
//! third of its lifetime (`period`), a slice of them per tick, the longest
//! unrefreshed first. All at once, a thousand IPv6 addresses held the
//! kernel's RTNL lock (shared by every network namespace) for a third of a
//! second each period, since every IPv6 replace walks all of the
//! interface's addresses; claims and reads waited behind it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often a slice is refreshed.
pub const TICK: Duration = Duration::from_millis(50);

/// The held addresses to refresh now: every one not refreshed for
/// `period` (overdue), and at least as many as keep the rest on pace (a
/// `tick / period` share of them), the longest unrefreshed first. An
/// address without a recorded refresh counts as never refreshed.
pub fn due(
    held: &[IpAddr],
    last: &HashMap<IpAddr, Instant>,
    period: Duration,
    tick: Duration,
    now: Instant,
) -> Vec<IpAddr> {
    if held.is_empty() {
        return Vec::new();
    }
    let age = |a: &IpAddr| last.get(a).map(|t| now.saturating_duration_since(*t));
    let mut by_age: Vec<(Option<Duration>, IpAddr)> = held.iter().map(|a| (age(a), *a)).collect();
    // Never refreshed first, then the oldest.
    by_age.sort_by(|x, y| match (x.0, y.0) {
        (None, None) => x.1.cmp(&y.1),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a).then(x.1.cmp(&y.1)),
    });
    let share = held.len() as f64 * tick.as_secs_f64() / period.as_secs_f64().max(1e-9);
    let pace = (share.ceil() as usize).clamp(1, held.len());
    let overdue = by_age
        .iter()
        .take_while(|(a, _)| a.is_none_or(|a| a >= period))
        .count();
    by_age
        .into_iter()
        .take(pace.max(overdue))
        .map(|(_, a)| a)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u32) -> Vec<IpAddr> {
        (0..n)
            .map(|i| {
                IpAddr::V6(std::net::Ipv6Addr::new(
                    0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16,
                ))
            })
            .collect()
    }

    /// A thousand addresses added at once: refreshed a slice per tick, each
    /// within its period plus a tick, never all in one tick again.
    #[test]
    fn a_thousand_added_at_once_are_refreshed_a_slice_at_a_time_and_on_time() {
        let period = Duration::from_millis(667);
        let held = addrs(1000);
        let t0 = Instant::now();
        let mut last: HashMap<IpAddr, Instant> = held.iter().map(|a| (*a, t0)).collect();
        let mut largest = 0;
        let mut oldest = Duration::ZERO;
        for i in 1..=200u32 {
            let now = t0 + TICK * i;
            let slice = due(&held, &last, period, TICK, now);
            if i > 20 {
                largest = largest.max(slice.len());
            }
            for a in &slice {
                oldest = oldest.max(now - last[a]);
                last.insert(*a, now);
            }
            let stale = held.iter().map(|a| now - last[a]).max().unwrap();
            assert!(
                stale <= period + TICK,
                "tick {i}: an address unrefreshed for {stale:?}"
            );
        }
        assert!(oldest <= period + TICK, "refreshed after {oldest:?}");
        assert!(largest <= 150, "a slice of {largest}: not spread out");
    }

    #[test]
    fn overdue_and_unknown_addresses_all_go_at_once() {
        let period = Duration::from_secs(1);
        let held = addrs(10);
        let now = Instant::now() + Duration::from_secs(10);
        let mut last: HashMap<IpAddr, Instant> = HashMap::new();
        assert_eq!(due(&held, &last, period, TICK, now).len(), 10);
        for a in &held[..5] {
            last.insert(*a, now - Duration::from_millis(10));
        }
        last.insert(held[5], now - Duration::from_secs(2));
        let slice = due(&held, &last, period, TICK, now);
        // Four never refreshed, one overdue: all five; the fresh ones wait.
        assert_eq!(slice.len(), 5);
        assert!(slice.contains(&held[5]));
        assert!(slice.iter().all(|a| !held[..5].contains(a)));
        assert!(due(&[], &last, period, TICK, now).is_empty());
    }
}
