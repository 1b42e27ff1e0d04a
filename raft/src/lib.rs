//! Raft leader election for vipd's control-plane VIP, on raft-rs.
//!
//! No Kubernetes, no API server: the control-plane nodes elect a leader
//! among themselves over TCP, so the VIP survives a slow or dead API server
//! and fails over in well under a second.
//!
//! - [`peers`]: the peer list (`n1=192.0.2.11:7946,...`) and its fingerprint;
//! - [`storage`]: term, vote and log, persisted so a restarted node can never
//!   vote twice in a term;
//! - [`secure`]: the Noise handshake and frames, keyed by the shared secret;
//! - [`transport`]: authenticated raft messages over TCP, reconnecting;
//! - [`lease`]: how long the leader may hold the VIP, from heartbeats a quorum
//!   acknowledged (pure, tested);
//! - [`node`]: the raft-rs loop (tick, step, ready); `hold`: how long the
//!   leader holds, and the handover at a graceful stop;
//! - [`events`]: what the loop tells its user (leading, until when).
//!
//! Pre-vote and check-quorum are on: a partitioned or paused leader stops
//! holding the VIP before any other node can be elected.

pub mod config;
pub mod events;
pub mod lease;
pub mod node;
pub mod peers;
pub mod secure;
pub mod storage;
pub mod transport;

pub use config::{RaftConfig, RaftError};
pub use events::{EventSender, LeaderEvent, Told};
pub use node::run;
pub use peers::{Peer, Peers};
pub use secure::Secret;
