//! Raft state on disk: term, vote, commit index and the log, in one small
//! JSON file written atomically (temporary file, fsync, rename, fsync of the
//! directory). Written only when raft says so (a new term, a vote, a new
//! leader's entry), never per heartbeat.
//!
//! The file also records the peer list's fingerprint: started with another
//! peer list, a node refuses to run instead of mixing two configurations.
//! Elections append one empty entry per term, so the log stays tiny.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, EntryType, HardState};
use serde::{Deserialize, Serialize};

const FILE: &str = "raft-state.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct DiskEntry {
    index: u64,
    term: u64,
    normal: bool,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct OnDisk {
    version: u32,
    /// The peer list it belongs to.
    fingerprint: String,
    peers: String,
    me: String,
    term: u64,
    vote: u64,
    commit: u64,
    entries: Vec<DiskEntry>,
    /// The log before these is compacted away: its last index and term.
    #[serde(default)]
    snapshot_index: u64,
    #[serde(default)]
    snapshot_term: u64,
}

#[derive(Debug)]
pub struct Persisted {
    path: PathBuf,
    disk: OnDisk,
}

impl Persisted {
    /// Loads the state in `dir`, or starts a new one. Errors are one line.
    pub fn open(dir: &Path, fingerprint: &str, peers: &str, me: &str) -> Result<Persisted, String> {
        fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the Raft state directory {}: {e}",
                dir.display()
            )
        })?;
        let path = dir.join(FILE);
        let disk = match fs::read_to_string(&path) {
            Ok(text) => {
                let d: OnDisk = serde_json::from_str(&text).map_err(|e| {
                    format!(
                        "{} is damaged ({e}): remove it to rejoin as a new member",
                        path.display()
                    )
                })?;
                if d.fingerprint != fingerprint {
                    return Err(format!(
                        "the peer list changed since {} was written (was {}, now {}): give every node the same list, or remove the state of every node to start a new cluster",
                        path.display(),
                        d.peers,
                        peers
                    ));
                }
                if d.me != me {
                    return Err(format!("{} belongs to {}, not {me}", path.display(), d.me));
                }
                d
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => OnDisk {
                version: 1,
                fingerprint: fingerprint.to_string(),
                peers: peers.to_string(),
                me: me.to_string(),
                term: 0,
                vote: 0,
                commit: 0,
                entries: Vec::new(),
                snapshot_index: 0,
                snapshot_term: 0,
            },
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let p = Persisted { path, disk };
        p.write()
            .map_err(|e| format!("cannot write {}: {e}", p.path.display()))?;
        Ok(p)
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.disk.term,
            vote: self.disk.vote,
            commit: self.disk.commit,
            ..Default::default()
        }
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.disk
            .entries
            .iter()
            .map(|d| {
                let mut e = Entry {
                    index: d.index,
                    term: d.term,
                    ..Default::default()
                };
                e.set_entry_type(if d.normal {
                    EntryType::EntryNormal
                } else {
                    EntryType::EntryConfChange
                });
                e.data = d.data.clone().into();
                e
            })
            .collect()
    }

    pub fn set_hard_state(&mut self, hs: &HardState) {
        self.disk.term = hs.term;
        self.disk.vote = hs.vote;
        self.disk.commit = hs.commit;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.disk.commit = commit;
    }

    /// Index and term of the last compacted entry (0, 0: none).
    pub fn snapshot(&self) -> (u64, u64) {
        (self.disk.snapshot_index, self.disk.snapshot_term)
    }

    /// Forgets the entries up to `index` (whose term is `term`).
    pub fn compact(&mut self, index: u64, term: u64) {
        if index <= self.disk.snapshot_index {
            return;
        }
        self.disk.entries.retain(|d| d.index > index);
        self.disk.snapshot_index = index;
        self.disk.snapshot_term = term;
    }

    /// Takes a leader's snapshot: the log up to `index` is replaced by it.
    pub fn apply_snapshot(&mut self, index: u64, term: u64) {
        self.disk.entries.clear();
        self.disk.snapshot_index = index;
        self.disk.snapshot_term = term;
        self.disk.commit = self.disk.commit.max(index);
        self.disk.term = self.disk.term.max(term);
    }

    /// How many entries the file holds.
    pub fn len(&self) -> usize {
        self.disk.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.disk.entries.is_empty()
    }

    /// Appends `entries`, replacing any entries from the first new index on.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        self.disk.entries.retain(|d| d.index < first.index);
        for e in entries {
            self.disk.entries.push(DiskEntry {
                index: e.index,
                term: e.term,
                normal: e.get_entry_type() == EntryType::EntryNormal,
                data: e.data.to_vec(),
            });
        }
    }

    /// Writes the state to disk, atomically and durably.
    pub fn write(&self) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_vec(&self.disk).map_err(io::Error::other)?;
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vipd-raft-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn survives_a_restart() {
        let d = dir("restart");
        let mut p = Persisted::open(&d, "fp", "a=1", "n1").unwrap();
        let hs = HardState {
            term: 7,
            vote: 2,
            ..Default::default()
        };
        p.set_hard_state(&hs);
        p.append(&[entry(1, 1), entry(2, 7)]);
        p.set_commit(2);
        p.write().unwrap();
        let q = Persisted::open(&d, "fp", "a=1", "n1").unwrap();
        assert_eq!(
            (
                q.hard_state().term,
                q.hard_state().vote,
                q.hard_state().commit
            ),
            (7, 2, 2)
        );
        assert_eq!(
            q.entries()
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 7)]
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let d = dir("suffix");
        let mut p = Persisted::open(&d, "fp", "a=1", "n1").unwrap();
        p.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        p.append(&[entry(2, 3)]);
        assert_eq!(
            p.entries()
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 3)]
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_and_snapshots_survive_a_restart() {
        let d = dir("compact");
        let mut p = Persisted::open(&d, "fp", "a=1", "n1").unwrap();
        p.append(&(1..=10).map(|i| entry(i, i)).collect::<Vec<_>>());
        p.set_commit(10);
        p.compact(7, 7);
        p.compact(5, 5); // older: nothing changes
        p.write().unwrap();
        let q = Persisted::open(&d, "fp", "a=1", "n1").unwrap();
        assert_eq!(q.snapshot(), (7, 7));
        assert_eq!(
            q.entries().iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        let mut q = q;
        q.apply_snapshot(20, 12);
        assert_eq!(
            (
                q.snapshot(),
                q.len(),
                q.hard_state().commit,
                q.hard_state().term
            ),
            ((20, 12), 0, 20, 12)
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn another_peer_list_or_node_is_refused() {
        let d = dir("refuse");
        Persisted::open(&d, "fp1", "n1=192.0.2.11:7946", "n1").unwrap();
        let e = Persisted::open(&d, "fp2", "n1=192.0.2.11:7947", "n1").unwrap_err();
        assert!(e.contains("peer list changed") && e.contains("7947"), "{e}");
        let e = Persisted::open(&d, "fp1", "n1=192.0.2.11:7946", "n2").unwrap_err();
        assert!(e.contains("belongs to n1"), "{e}");
        fs::write(d.join(FILE), "{broken").unwrap();
        assert!(Persisted::open(&d, "fp1", "x", "n1")
            .unwrap_err()
            .contains("damaged"));
        fs::remove_dir_all(&d).unwrap();
    }
}
