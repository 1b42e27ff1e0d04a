//! Serving the sources' commands: claims replaced, grants given and
//! renewed, everything released. Each command changes the claims, then the
//! owner converges.

use super::*;

/// Grants `source` a new term until `hold_until` (probing first, dropped
/// on death: see `ClaimSet`), withdrawing whatever it claimed before;
/// returns the term.
fn grant(
    claims: &mut BTreeMap<Source, ClaimSet>,
    last_term: &mut u64,
    source: Source,
    hold_until: Instant,
    (probe_first, drop_on_death): (bool, bool),
) -> u64 {
    *last_term += 1;
    let set = ClaimSet {
        claims: Vec::new(),
        hold_until: Some(hold_until),
        confirmed: true,
        probe_first,
        term: Some(*last_term),
        drop_on_death,
    };
    claims.insert(source, set);
    *last_term
}

/// Replaces the addresses of `source` if it holds the grant of `term`;
/// false, changing nothing, when that grant is over (released, or granted
/// again since).
fn set_granted(
    claims: &mut BTreeMap<Source, ClaimSet>,
    source: &Source,
    term: u64,
    list: Vec<Claim>,
) -> bool {
    match claims.get_mut(source) {
        Some(set) if set.term == Some(term) => {
            set.claims = list;
            true
        }
        _ => false,
    }
}

impl Owner {
    pub(super) async fn on_command(&mut self, cmd: Command) {
        // The guardian's list of addresses to drop at death follows the
        // claims (see `update_guardian`).
        self.drops_stale = true;
        match cmd {
            Command::Set { source, set, done } => {
                // A new confirmed claim (leadership won again) takes back
                // what was let go.
                self.reclaim(&set);
                if set.claims.is_empty() {
                    self.claims.remove(&source);
                } else {
                    self.claims.insert(source, set);
                }
                self.converge().await;
                let _ = done.send(());
            }
            Command::Grant {
                source,
                hold_until,
                probe_first,
                drop_on_death,
                done,
            } => {
                let term = grant(
                    &mut self.claims,
                    &mut self.next_term,
                    source,
                    hold_until,
                    (probe_first, drop_on_death),
                );
                self.converge().await;
                let _ = done.send(term);
            }
            Command::SetGranted {
                source,
                term,
                claims,
                done,
            } => {
                let taken = set_granted(&mut self.claims, &source, term, claims);
                if taken {
                    let set = self.claims[&source].clone();
                    self.reclaim(&set);
                    self.converge().await;
                }
                let _ = done.send(taken);
            }
            Command::Extend {
                source,
                hold_until,
                confirmed,
            } => self.extend(source, hold_until, confirmed).await,
            Command::ReleaseAll { done } => {
                self.claims.clear();
                self.converge().await;
                let _ = done.send(());
            }
        }
    }

    /// A confirmed claim takes back the addresses let go to another node.
    fn reclaim(&mut self, set: &ClaimSet) {
        if set.confirmed {
            for c in &set.claims {
                self.yielded.remove(&c.addr);
            }
        }
    }

    async fn extend(&mut self, source: Source, hold_until: Instant, confirmed: bool) {
        let now = Instant::now();
        let mut lapsed = false;
        let mut reclaimed = false;
        if let Some(set) = self.claims.get_mut(&source) {
            lapsed = set.hold_until.is_some_and(|t| t <= now);
            set.hold_until = Some(hold_until);
            set.confirmed = confirmed;
            if confirmed {
                // Renewed after all: what was let go is ours again.
                for c in &set.claims {
                    if self.yielded.remove(&c.addr).is_some() {
                        info!(addr = %c.addr, "the Lease was renewed: holding the address again");
                        reclaimed = true;
                    }
                }
            }
        }
        // A claim that had lapsed (and was withdrawn) comes back; an
        // unconfirmed one is judged again.
        if lapsed || reclaimed || !confirmed {
            self.converge().await;
        } else {
            self.update_probing();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(addr: &str) -> Claim {
        Claim {
            addr: addr.parse().unwrap(),
            prefix: 32,
            interface: "eth0".into(),
            route: Default::default(),
            until_silent: false,
        }
    }

    fn addrs(claims: &BTreeMap<Source, ClaimSet>, source: &Source) -> Vec<IpAddr> {
        claims
            .get(source)
            .map(|s| s.claims.iter().map(|c| c.addr).collect())
            .unwrap_or_default()
    }

    #[test]
    fn addresses_are_taken_only_under_the_grant_they_were_decided_in() {
        let mut claims = BTreeMap::new();
        let mut last = 0;
        let leader = Source::ServicesLeader;
        let until = Instant::now() + Duration::from_secs(5);

        let first = grant(
            &mut claims,
            &mut last,
            leader.clone(),
            until,
            (false, false),
        );
        assert!(set_granted(
            &mut claims,
            &leader,
            first,
            vec![claim("192.0.2.10")]
        ));
        assert_eq!(
            addrs(&claims, &leader),
            ["192.0.2.10".parse::<IpAddr>().unwrap()]
        );

        // Leadership lost (released) and won again: a list decided in the
        // first term arrives late and is refused; the new term holds
        // nothing until its own list comes.
        claims.remove(&leader);
        assert!(!set_granted(
            &mut claims,
            &leader,
            first,
            vec![claim("192.0.2.11")]
        ));
        assert!(!claims.contains_key(&leader));
        let second = grant(
            &mut claims,
            &mut last,
            leader.clone(),
            until,
            (false, false),
        );
        assert_ne!(first, second);
        assert!(!set_granted(
            &mut claims,
            &leader,
            first,
            vec![claim("192.0.2.11")]
        ));
        assert!(addrs(&claims, &leader).is_empty());
        assert!(set_granted(
            &mut claims,
            &leader,
            second,
            vec![claim("192.0.2.12")]
        ));
        assert_eq!(
            addrs(&claims, &leader),
            ["192.0.2.12".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_new_grant_withdraws_what_the_source_held_and_keeps_its_own_terms() {
        let mut claims = BTreeMap::new();
        let mut last = 0;
        let placed = Source::ServicesPlaced;
        let until = Instant::now() + Duration::from_secs(5);
        let t = grant(&mut claims, &mut last, placed.clone(), until, (true, false));
        assert!(set_granted(
            &mut claims,
            &placed,
            t,
            vec![claim("192.0.2.20")]
        ));
        // Another source's grant does not end this one.
        let other = grant(
            &mut claims,
            &mut last,
            Source::ServicesLeader,
            until,
            (false, false),
        );
        assert_ne!(other, t);
        assert!(set_granted(
            &mut claims,
            &placed,
            t,
            vec![claim("192.0.2.21")]
        ));
        // Granted again (a new Lease term): the old addresses are gone.
        let t2 = grant(&mut claims, &mut last, placed.clone(), until, (true, false));
        assert!(addrs(&claims, &placed).is_empty());
        assert!(claims[&placed].probe_first);
        assert_eq!(claims[&placed].term, Some(t2));
    }
}
