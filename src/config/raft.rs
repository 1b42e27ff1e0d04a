//! Raft election settings: the peers, the shared secret, timing and state.
//!
//! Raft without the secret is refused: anybody who reaches the Raft port
//! could otherwise move or pin the VIP.

use std::path::PathBuf;
use std::time::Duration;

use super::reader::Reader;
use super::types::RaftSettings;

/// The Raft settings for node `me`; None when they cannot be used (every
/// problem recorded).
pub(super) fn raft_settings(r: &Reader, me: &str) -> Option<RaftSettings> {
    let peers = match r.string("vip_raft_peers") {
        None => {
            r.bad(
                "vip_raft_peers",
                "vip_raft=true needs the peer list: NAME=HOST:PORT,...",
            );
            None
        }
        Some(v) => match vipd_raft::Peers::parse(&v) {
            Ok(p) => Some(p),
            Err(m) => {
                r.bad("vip_raft_peers", m);
                None
            }
        },
    };
    if let Some(p) = &peers {
        if p.by_name(me).is_none() {
            r.bad(
                "vip_raft_peers",
                format!("this node ({me}, from vip_nodename or the host name) is not in the list"),
            );
        }
    }
    let tick = r.duration("vip_raft_tick", Duration::from_millis(5));
    if r.all_good(&["vip_raft_tick"])
        && (tick < Duration::from_millis(5) || tick > Duration::from_secs(5))
    {
        r.bad("vip_raft_tick", "must be between 5ms and 5s");
    }
    let heartbeat_ticks = r.number(
        "vip_raft_heartbeat_ticks",
        4usize,
        "a whole number of ticks",
    );
    let election_ticks = r.number(
        "vip_raft_election_ticks",
        20usize,
        "a whole number of ticks",
    );
    if r.all_good(&["vip_raft_heartbeat_ticks"]) && heartbeat_ticks == 0 {
        r.bad("vip_raft_heartbeat_ticks", "must be at least 1");
    } else if r.all_good(&["vip_raft_heartbeat_ticks", "vip_raft_election_ticks"])
        && election_ticks < heartbeat_ticks * 3
    {
        r.bad(
            "vip_raft_election_ticks",
            format!("must be at least 3 heartbeats ({} ticks): a follower must hear several before it gives up on the leader", heartbeat_ticks * 3),
        );
    }
    let state_dir = r.string_or_default("vip_raft_state_dir");
    let secret = match r.string("vip_raft_secret_file") {
        None => {
            r.bad(
                "vip_raft_secret_file",
                "vip_raft=true needs a secret shared by every peer: a file with the same random bytes on each node (from a Secret or a host file), so nobody else can speak Raft to it",
            );
            None
        }
        Some(file) => match std::fs::read(&file) {
            Err(e) => {
                r.bad("vip_raft_secret_file", format!("cannot read: {e}"));
                None
            }
            Ok(bytes) => match vipd_raft::Secret::from_bytes(&bytes) {
                Ok(s) => Some((s, file)),
                Err(m) => {
                    r.bad("vip_raft_secret_file", m);
                    None
                }
            },
        },
    };
    let (secret, secret_file) = secret?;
    Some(RaftSettings {
        peers: peers?,
        secret,
        secret_file: PathBuf::from(secret_file),
        state_dir: PathBuf::from(state_dir),
        tick,
        heartbeat_ticks,
        election_ticks,
    })
}
