//! Kernel lifetimes: how long each address lives in the kernel unless vipd
//! refreshes it, and which held addresses to refresh now.
//!
//! The lifetime is the last resort for an address whose vipd and guardian
//! died together (a container killed whole): the kernel removes it by
//! itself. The control-plane VIP's is short (a Lease successor may add it
//! without asking the wire). Service addresses are only ever added once no
//! other host answers for them (every Service source probes first), so
//! theirs can be long: a dead node's copy delays its successor, it never
//! doubles it. And it must be long at scale, since every refresh of an
//! IPv6 address costs the kernel a walk of all the namespace's IPv6
//! addresses under the host-wide RTNL lock: a thousand refreshed every
//! 667 ms (a 2 s lifetime) kept that lock half of each second.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::Source;

/// How often the owner looks for addresses due a refresh.
pub const TICK: Duration = Duration::from_millis(100);

/// At least this many refreshes a tick when more are due. Each IPv6
/// refresh walks every IPv6 address of the namespace (1.7 ms with 5000):
/// small slices keep the owner's other work going between them.
pub const SLICE: usize = 16;

/// The kernel lifetimes of the addresses vipd adds, by who claims them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetimes {
    /// The control-plane VIP's (`vip_addr_lifetime`); None: permanent.
    pub control_plane: Option<Duration>,
    /// Service addresses' (`svc_addr_lifetime`); None: permanent.
    pub services: Option<Duration>,
}

impl Lifetimes {
    /// The same lifetime for every address.
    pub fn all(lifetime: Option<Duration>) -> Lifetimes {
        Lifetimes {
            control_plane: lifetime,
            services: lifetime,
        }
    }

    /// The lifetime of an address claimed by `sources`: the shortest of
    /// theirs (permanent only when every one is). No source: the shortest
    /// there is.
    pub fn of<'a>(&self, sources: impl IntoIterator<Item = &'a Source>) -> Option<Duration> {
        let mut shortest: Option<Option<Duration>> = None;
        for s in sources {
            let l = if s.is_service() {
                self.services
            } else {
                self.control_plane
            };
            shortest = Some(match shortest {
                None => l,
                Some(prev) => shorter(prev, l),
            });
        }
        shortest.unwrap_or_else(|| shorter(self.control_plane, self.services))
    }

    /// Whether any address gets a finite lifetime (and so needs refreshes).
    pub fn any(&self) -> bool {
        self.control_plane.is_some() || self.services.is_some()
    }
}

/// The shorter of two lifetimes, None being forever.
fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// When a held address was last given its lifetime, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    pub at: Instant,
    pub lifetime: Duration,
}

impl Refreshed {
    /// How far into its lifetime the address is (1.0: it expires now).
    fn spent(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.at).as_secs_f64() / self.lifetime.as_secs_f64().max(1e-3)
    }
}

/// The held addresses to refresh now, the most urgent first: each once a
/// third of its lifetime has passed since its last refresh, so a busy
/// owner still has two thirds of it to get there. A thousand addresses
/// added together come due together: they go a [`SLICE`] a tick, or twice
/// as many as keeps every address on that pace (a wave is through in
/// half of the third that follows), but every address past two thirds of
/// its lifetime goes now, however many.
pub fn due(held: &HashMap<IpAddr, Refreshed>, now: Instant) -> Vec<IpAddr> {
    let mut ripe: Vec<(f64, IpAddr)> = held
        .iter()
        .map(|(a, r)| (r.spent(now), *a))
        .filter(|(spent, _)| *spent >= 1.0 / 3.0)
        .collect();
    if ripe.is_empty() {
        return Vec::new();
    }
    ripe.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    // Refreshing every address once per third of its lifetime takes this
    // many a tick on average.
    let pace: f64 = held
        .values()
        .map(|r| TICK.as_secs_f64() * 3.0 / r.lifetime.as_secs_f64().max(1e-3))
        .sum();
    let urgent = ripe.iter().take_while(|(s, _)| *s >= 2.0 / 3.0).count();
    let n = SLICE.max((2.0 * pace).ceil() as usize).max(urgent);
    ripe.into_iter().take(n).map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(i: u32) -> IpAddr {
        IpAddr::V6(std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x100,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ))
    }

    #[test]
    fn service_addresses_get_theirs_the_vip_its_own_and_a_shared_one_the_shorter() {
        let l = Lifetimes {
            control_plane: Some(Duration::from_secs(2)),
            services: Some(Duration::from_secs(60)),
        };
        assert_eq!(l.of(&[Source::ControlPlane]), Some(Duration::from_secs(2)));
        assert_eq!(
            l.of(&[Source::ServicesLeader, Source::ServicesPlaced]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            l.of(&[Source::ControlPlane, Source::ServicesLeader]),
            Some(Duration::from_secs(2))
        );
        let permanent_services = Lifetimes {
            services: None,
            ..l
        };
        assert_eq!(permanent_services.of(&[Source::ServicesLeader]), None);
        assert_eq!(
            permanent_services.of(&[Source::ServicesLeader, Source::ControlPlane]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(permanent_services.of(&[]), Some(Duration::from_secs(2)));
        assert!(!Lifetimes::all(None).any());
        assert!(permanent_services.any());
    }

    /// A thousand Service addresses added together and the control-plane
    /// VIP: simulated for five minutes of ticks, nobody ever gets near its
    /// expiry, the VIP is refreshed in the first half of its lifetime
    /// whatever the Services do, and once the first wave is through, ticks
    /// refresh a slice, not all.
    #[test]
    fn a_thousand_added_together_are_spread_and_nobody_expires() {
        let t0 = Instant::now();
        let svc = Duration::from_secs(60);
        let cp = Duration::from_secs(2);
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        let mut held: HashMap<IpAddr, Refreshed> = (0..1000)
            .map(|i| {
                (
                    v6(i),
                    Refreshed {
                        at: t0,
                        lifetime: svc,
                    },
                )
            })
            .collect();
        held.insert(
            vip,
            Refreshed {
                at: t0,
                lifetime: cp,
            },
        );
        let mut largest_later = 0;
        let mut worst_spent: f64 = 0.0;
        let mut vip_worst = Duration::ZERO;
        for tick in 1..=3000u32 {
            let now = t0 + TICK * tick;
            let slice = due(&held, now);
            if now > t0 + Duration::from_secs(60) {
                largest_later = largest_later.max(slice.len());
            }
            for a in &slice {
                let r = held.get_mut(a).unwrap();
                worst_spent = worst_spent.max(r.spent(now));
                if *a == vip {
                    vip_worst = vip_worst.max(now - r.at);
                }
                r.at = now;
            }
        }
        assert!(
            worst_spent < 2.0 / 3.0 + 0.01,
            "an address was refreshed {:.0} % into its lifetime",
            worst_spent * 100.0
        );
        // The VIP comes first as soon as it is further into its lifetime
        // than any Service address.
        assert!(
            vip_worst <= cp / 2,
            "the VIP waited {vip_worst:?} for its refresh"
        );
        // 1000 every 20 s is 5 a tick: a slice at most, never the thousand.
        assert!(largest_later <= SLICE, "a tick refreshed {largest_later}");
    }

    #[test]
    fn nothing_is_due_before_a_third_and_everything_past_two_thirds_goes_at_once() {
        let t0 = Instant::now();
        let l = Duration::from_secs(3);
        let fresh: HashMap<IpAddr, Refreshed> = (0..10)
            .map(|i| {
                (
                    v6(i),
                    Refreshed {
                        at: t0,
                        lifetime: l,
                    },
                )
            })
            .collect();
        assert!(due(&fresh, t0 + Duration::from_millis(999)).is_empty());
        assert_eq!(due(&fresh, t0 + Duration::from_secs(1)).len(), 10);
        let late: HashMap<IpAddr, Refreshed> = (0..500)
            .map(|i| {
                (
                    v6(i),
                    Refreshed {
                        at: t0,
                        lifetime: l,
                    },
                )
            })
            .collect();
        // All 500 past two thirds: all now, not a slice.
        assert_eq!(due(&late, t0 + Duration::from_secs(2)).len(), 500);
        // A third in: a slice (500 every second need 50 a tick; twice
        // that), the most urgent first.
        let mut mixed = late.clone();
        mixed.get_mut(&v6(7)).unwrap().at = t0 - Duration::from_millis(500);
        let slice = due(&mixed, t0 + Duration::from_millis(1100));
        assert!((100..=101).contains(&slice.len()), "{}", slice.len());
        assert_eq!(slice[0], v6(7));
    }
}
