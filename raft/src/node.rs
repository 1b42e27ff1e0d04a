//! The raft-rs loop: tick, step received messages, handle `Ready`
//! (persist, then send), and tell the user when this node leads and until
//! when it may hold the VIP.
//!
//! Order matters for fencing: when a step makes this node lose leadership,
//! `stopped` (which withdraws the VIP) completes before any message of that
//! step is sent, so the vote that elects the next leader leaves only after
//! the VIP is gone here.

use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Message, MessageType, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, GetEntriesContext, RawNode, StateRole, Storage};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

mod hold;

pub use crate::config::{RaftConfig, RaftError};
use crate::events::{self, EventSender, LeaderEvent};
use crate::lease::LeaseTracker;
use crate::peers::Peers;
use crate::storage::Persisted;
use crate::transport::{Inbound, Transport};

/// Compact the log once this many entries are applied past the last
/// compaction, keeping the last [`KEEP`] for followers a little behind.
/// Elections append one entry per term, so this bounds the state file.
pub const COMPACT_AFTER: u64 = 64;
pub const KEEP: u64 = 16;

/// A snapshot of the log up to `index`: an election has no state machine,
/// so its metadata is all there is.
fn snapshot(index: u64, term: u64, conf: &ConfState) -> Snapshot {
    let mut s = Snapshot::default();
    let m = s.mut_metadata();
    m.index = index;
    m.term = term;
    m.set_conf_state(conf.clone());
    s
}

fn stamp(epoch: Instant) -> Vec<u8> {
    (epoch.elapsed().as_micros() as u64).to_be_bytes().to_vec()
}

struct Loop {
    node: RawNode<MemStorage>,
    /// The voters (the peer list), for snapshots.
    conf: ConfState,
    compact_after: u64,
    disk: Persisted,
    transport: Transport,
    /// Where leadership is told (see `events`).
    events: EventSender,
    peers: Peers,
    epoch: Instant,
    lease: LeaseTracker,
    leading: bool,
    /// Shutting down: leadership is being handed over, never claimed again.
    handing_over: bool,
    claimed_until: Option<Instant>,
    last_leader: u64,
    /// This node's election priority, applied once the term is above 0.
    priority: i64,
    prioritised: bool,
    /// When the leader last asked this node to take over (MsgTimeoutNow).
    handover_asked: Option<Instant>,
    election_timeout: Duration,
}

/// Runs this node's Raft until `shutdown`; a leader then withdraws and hands
/// leadership to the most up-to-date follower.
pub async fn run(
    cfg: RaftConfig,
    events: EventSender,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RaftError> {
    let me = cfg
        .peers
        .by_name(&cfg.me)
        .ok_or_else(|| RaftError::NotAPeer {
            me: cfg.me.clone(),
            peers: cfg.peers.to_string(),
        })?
        .clone();
    let disk = Persisted::open(
        &cfg.state_dir,
        &cfg.peers.fingerprint(),
        &cfg.peers.to_string(),
        &cfg.me,
    )
    .map_err(RaftError::State)?;
    let voters: Vec<u64> = cfg.peers.list.iter().map(|p| p.id).collect();
    let conf = ConfState::from((voters, vec![]));
    let storage = MemStorage::new_with_conf_state(conf.clone());
    {
        let mut w = storage.wl();
        let (index, term) = disk.snapshot();
        if index > 0 {
            w.apply_snapshot(snapshot(index, term, &conf))
                .map_err(RaftError::log("state"))?;
        }
        w.append(&disk.entries()).map_err(RaftError::log("state"))?;
        w.set_hardstate(disk.hard_state());
    }
    let config = Config {
        id: me.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        pre_vote: true,
        check_quorum: true,
        // Priorities are set once the cluster has a term (see
        // `Loop::apply_priority`). With them, two candidates at once no
        // longer split an election, so the timeout needs little
        // randomisation: a quarter of the base, not raft-rs' default of
        // as much again, and failover comes sooner.
        priority: 0,
        min_election_tick: cfg.election_ticks,
        max_election_tick: cfg.election_ticks + (cfg.election_ticks / 4).max(2),
        applied: disk.hard_state().commit,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    config.validate().map_err(RaftError::Timing)?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let node = RawNode::new(&config, storage, &logger).map_err(RaftError::log("start"))?;
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(4096);
    let transport = Transport::start(&me, &cfg.peers, cfg.secret.clone(), in_tx)
        .await
        .map_err(RaftError::Transport)?;
    info!(
        me = %cfg.me,
        term = disk.hard_state().term,
        election_timeout = ?cfg.election_timeout(),
        heartbeat = ?(cfg.tick * cfg.heartbeat_ticks as u32),
        "Raft election started"
    );
    let mut l = Loop {
        node,
        conf,
        compact_after: cfg.compact_after,
        disk,
        transport,
        events,
        peers: cfg.peers.clone(),
        epoch: Instant::now(),
        // Margin: two ticks, for tick jitter and message delays.
        lease: LeaseTracker::new(cfg.peers.quorum(), cfg.election_timeout(), cfg.tick * 2),
        leading: false,
        handing_over: false,
        claimed_until: None,
        last_leader: 0,
        priority: (cfg.peers.list.len() as u64 + 1).saturating_sub(me.id) as i64,
        prioritised: false,
        handover_asked: None,
        election_timeout: cfg.election_timeout(),
    };
    let mut ticker = tokio::time::interval(cfg.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !l
            .next_input(&mut ticker, &mut in_rx, shutdown.changed())
            .await
        {
            break;
        }
        l.handle_ready().await?;
        l.update_hold().await;
        l.apply_priority();
    }
    l.hand_over(&mut ticker, &mut in_rx, cfg.election_timeout())
        .await?;
    Ok(())
}

impl Loop {
    /// Waits for a tick or for messages and feeds them to Raft; false when
    /// `until` completes first.
    pub(crate) async fn next_input(
        &mut self,
        ticker: &mut tokio::time::Interval,
        inbound: &mut mpsc::Receiver<Inbound>,
        until: impl std::future::Future,
    ) -> bool {
        tokio::select! {
            _ = ticker.tick() => {
                self.node.tick();
                true
            }
            Some(inb) = inbound.recv() => {
                self.receive(inb);
                // Take what else has arrived before handling Ready once.
                while let Ok(more) = inbound.try_recv() {
                    self.receive(more);
                }
                true
            }
            _ = until => false,
        }
    }

    /// Distinct priorities, by place in the peer list (the first is
    /// highest): of two nodes whose election timers fire together with
    /// equal logs, only the higher one gets pre-votes (raft-rs grants a
    /// (pre-)vote to an equally up-to-date candidate only of at least its
    /// own priority), so their elections never split. The cost: a lower
    /// node waits for a higher live one to campaign. Applied only once the
    /// term is above 0: raft-rs panics when it refuses a vote in term 0
    /// ("term should be set"), which priorities would make it do in a new
    /// cluster's first election.
    fn apply_priority(&mut self) {
        if !self.prioritised && self.node.raft.term > 0 {
            self.node.raft.set_priority(self.priority);
            self.prioritised = true;
        }
    }

    fn receive(&mut self, inb: Inbound) {
        if inb.msg.get_msg_type() == MessageType::MsgTimeoutNow {
            self.handover_asked = Some(Instant::now());
        }
        if self.leading
            && inb.msg.get_msg_type() == MessageType::MsgHeartbeatResponse
            && inb.msg.context.len() == 8
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(&inb.msg.context);
            self.lease.ack(
                inb.from,
                self.epoch + Duration::from_micros(u64::from_be_bytes(b)),
            );
        }
        // Errors here are messages from unknown or removed peers: ignore.
        let _ = self.node.step(inb.msg);
    }

    fn send(&self, msgs: Vec<Message>) {
        for mut m in msgs {
            if m.get_msg_type() == MessageType::MsgHeartbeat && m.context.is_empty() {
                m.context = stamp(self.epoch).into();
            }
            self.transport.send(m);
        }
    }

    pub(crate) async fn handle_ready(&mut self) -> Result<(), RaftError> {
        // Leadership first: a lost lead is withdrawn before anything is sent.
        let is_leader = self.node.raft.state == StateRole::Leader;
        if self.leading && !is_leader {
            self.leading = false;
            self.claimed_until = None;
            warn!(term = self.node.raft.term, "no longer the Raft leader");
            self.tell(LeaderEvent::Stopped).await;
        } else if !self.leading && is_leader && !self.handing_over {
            self.leading = true;
            self.lease.reset();
            info!(term = self.node.raft.term, "became the Raft leader");
            // Heartbeats now: their acknowledgements start the VIP's lease.
            self.node.ping();
        }
        let leader = self.node.raft.leader_id;
        if leader != self.last_leader {
            self.last_leader = leader;
            let name = self.peers.by_id(leader).map(|p| p.name.clone());
            self.tell(LeaderEvent::Observed { leader: name }).await;
        }

        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        self.send(ready.take_messages());
        let mut dirty = false;
        // A follower far behind gets the leader's snapshot instead of entries.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
            self.node
                .store()
                .wl()
                .apply_snapshot(snap)
                .map_err(RaftError::log("snapshot"))?;
            self.disk.apply_snapshot(index, term);
            dirty = true;
        }
        let _ = ready.take_committed_entries();
        if !ready.entries().is_empty() {
            self.disk.append(ready.entries());
            self.node
                .store()
                .wl()
                .append(ready.entries())
                .map_err(RaftError::log("log"))?;
            dirty = true;
        }
        if let Some(hs) = ready.hs() {
            self.disk.set_hard_state(hs);
            self.node.store().wl().set_hardstate(hs.clone());
            dirty = true;
        }
        if dirty {
            self.disk.write().map_err(RaftError::Persist)?;
        }
        self.send(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.disk.set_commit(commit);
            self.node.store().wl().mut_hard_state().commit = commit;
            self.disk.write().map_err(RaftError::Persist)?;
        }
        self.send(light.take_messages());
        let _ = light.take_committed_entries();
        self.node.advance_apply();
        self.compact()
    }

    /// Forgets applied entries once enough have piled up.
    fn compact(&mut self) -> Result<(), RaftError> {
        let applied = self.node.raft.raft_log.applied;
        let (done, _) = self.disk.snapshot();
        let after = if self.compact_after == 0 {
            COMPACT_AFTER
        } else {
            self.compact_after
        };
        if applied < done + after + KEEP {
            return Ok(());
        }
        let upto = applied - KEEP;
        let err = RaftError::log("log compaction");
        let store = self.node.store();
        let term = store.term(upto).map_err(err)?;
        let last = store.last_index().map_err(err)?;
        let tail = store
            .entries(
                upto + 1,
                last + 1,
                u64::MAX,
                GetEntriesContext::empty(false),
            )
            .map_err(err)?;
        {
            let mut w = store.wl();
            let hs = w.hard_state().clone();
            w.apply_snapshot(snapshot(upto, term, &self.conf))
                .map_err(err)?;
            w.append(&tail).map_err(err)?;
            w.set_hardstate(hs);
        }
        self.disk.compact(upto, term);
        self.disk.write().map_err(RaftError::Persist)
    }

    /// Tells the user `event`; `Started` and `Stopped` once acted on.
    pub(crate) async fn tell(&self, event: LeaderEvent) {
        let wait = matches!(event, LeaderEvent::Started { .. } | LeaderEvent::Stopped);
        events::tell(&self.events, event, wait).await;
    }
}
