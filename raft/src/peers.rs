//! The peer list: `name=host:port` entries, comma separated; IPv6 hosts in
//! brackets. Every node must be given the same list in the same order: the
//! order assigns raft ids, and a hash of the list (the fingerprint) is
//! exchanged when peers connect, so a node configured differently is refused
//! with one clear line instead of corrupting the election.

use std::fmt;
use std::net::SocketAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// raft id: the 1-based position in the list.
    pub id: u64,
    pub name: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    pub list: Vec<Peer>,
}

impl Peers {
    pub fn parse(s: &str) -> Result<Peers, String> {
        let mut list = Vec::new();
        for (i, item) in s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .enumerate()
        {
            let (name, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected NAME=HOST:PORT"))?;
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!(
                    "{item:?}: the name must be non-empty, without spaces"
                ));
            }
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|_| format!("{item:?}: {addr:?} is not HOST:PORT (an IP address and a port; IPv6 in brackets)"))?;
            if list.iter().any(|p: &Peer| p.name == name) {
                return Err(format!("{name} is listed twice"));
            }
            if list.iter().any(|p: &Peer| p.addr == addr) {
                return Err(format!("{addr} is listed twice"));
            }
            list.push(Peer {
                id: i as u64 + 1,
                name: name.to_string(),
                addr,
            });
        }
        if list.is_empty() {
            return Err("no peers".into());
        }
        Ok(Peers { list })
    }

    pub fn by_name(&self, name: &str) -> Option<&Peer> {
        self.list.iter().find(|p| p.name == name)
    }

    pub fn by_id(&self, id: u64) -> Option<&Peer> {
        self.list.iter().find(|p| p.id == id)
    }

    /// Votes needed to win.
    pub fn quorum(&self) -> usize {
        self.list.len() / 2 + 1
    }

    /// Identifies the configuration: the same list in the same order.
    pub fn fingerprint(&self) -> String {
        // FNV-1a over the canonical text; stable across versions.
        let text = self.to_string();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

impl fmt::Display for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .list
            .iter()
            .map(|p| format!("{}={}", p.name, p.addr))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_numbers_in_order() {
        let p =
            Peers::parse("n1=192.0.2.11:7946, n2=192.0.2.12:7946,n3=[2001:db8::13]:7946").unwrap();
        assert_eq!(p.list.len(), 3);
        assert_eq!(p.by_name("n3").unwrap().id, 3);
        assert_eq!(p.by_id(2).unwrap().name, "n2");
        assert_eq!(p.quorum(), 2);
        assert_eq!(Peers::parse("a=192.0.2.1:1").unwrap().quorum(), 1);
        assert_eq!(
            Peers::parse("a=192.0.2.1:1,b=192.0.2.2:1,c=192.0.2.3:1,d=192.0.2.4:1,e=192.0.2.5:1")
                .unwrap()
                .quorum(),
            3
        );
    }

    #[test]
    fn fingerprint_depends_on_names_addresses_and_order() {
        let a = Peers::parse("n1=192.0.2.11:7946,n2=192.0.2.12:7946").unwrap();
        let b = Peers::parse("n2=192.0.2.12:7946,n1=192.0.2.11:7946").unwrap();
        let c = Peers::parse("n1=192.0.2.11:7946,n2=192.0.2.12:7947").unwrap();
        let a2 = Peers::parse(" n1=192.0.2.11:7946 , n2=192.0.2.12:7946 ").unwrap();
        assert_eq!(a.fingerprint(), a2.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn bad_lists_are_explained() {
        for (s, needle) in [
            ("", "no peers"),
            ("n1", "NAME=HOST:PORT"),
            ("n1=192.0.2.1", "not HOST:PORT"),
            ("n1=host.example:7946", "not HOST:PORT"),
            ("n1=192.0.2.1:1,n1=192.0.2.2:1", "listed twice"),
            ("n1=192.0.2.1:1,n2=192.0.2.1:1", "listed twice"),
            ("=192.0.2.1:1", "non-empty"),
        ] {
            let e = Peers::parse(s).unwrap_err();
            assert!(e.contains(needle), "{s:?}: {e}");
        }
    }
}
