//! How a node's Raft is set up, and why it cannot go on.

use std::path::PathBuf;
use std::time::Duration;

use crate::peers::Peers;

#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's name in `peers`.
    pub me: String,
    pub peers: Peers,
    pub tick: Duration,
    pub heartbeat_ticks: usize,
    pub election_ticks: usize,
    pub state_dir: PathBuf,
    /// The key derived from the secret every peer shares.
    pub secret: crate::Secret,
    /// Compact the log when this many applied entries piled up (0: the
    /// default, [`crate::node::COMPACT_AFTER`]).
    pub compact_after: u64,
}

impl RaftConfig {
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks as u32
    }
}

/// Why this node's Raft cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// `vip_nodename` names no peer.
    #[error("vip_nodename {me:?} is not in vip_raft_peers ({peers})")]
    NotAPeer { me: String, peers: String },
    /// The state directory cannot be read or belongs to other peers.
    #[error("{0}")]
    State(String),
    /// The timing settings are refused by raft-rs.
    #[error("Raft timing: {0}")]
    Timing(#[source] raft::Error),
    /// raft-rs refused the log or snapshot it was given (`what` says which).
    #[error("Raft {what}: {source}")]
    Log {
        what: &'static str,
        #[source]
        source: raft::Error,
    },
    /// The state file cannot be written.
    #[error("cannot persist the Raft state: {0}")]
    Persist(#[source] std::io::Error),
    /// The peer port cannot be opened.
    #[error("{0}")]
    Transport(String),
}

impl RaftError {
    pub(crate) fn log(what: &'static str) -> impl Fn(raft::Error) -> RaftError + Copy {
        move |source| RaftError::Log { what, source }
    }
}
