//! Raft messages between peers over TCP, authenticated and encrypted.
//!
//! Each node listens on its own peer address and keeps one outbound
//! connection per peer, reconnecting with backoff. A connection starts with
//! a Noise handshake keyed by the shared secret ([`crate::secure`]) that
//! carries a hello (the peer-list fingerprint and the sender's id); the
//! listener answers whether it accepts, so a node given another peer list is
//! refused on both ends with one clear log line, and a process without the
//! secret is refused without a byte. Then encrypted raft messages follow,
//! one per frame. A connection the peer closed is replaced at once; a
//! message whose write failed is sent again on the new connection, others
//! that cannot be sent are dropped: raft retries by itself.
//!
//! Limits, so nobody on the network can exhaust a node: a handshake must
//! finish within [`HANDSHAKE`]; at most [`MAX_HANDSHAKES`] run at once, and
//! [`MAX_HANDSHAKES_PER_HOST`] from one address (more are closed at once, so
//! a host holding connections open cannot lock real peers out); each peer has one inbound connection (a newer
//! authenticated one replaces it); frames are at most 64 KiB; a failing
//! `accept` (no file descriptors left) waits before it tries again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, error, warn};

use crate::peers::{Peer, Peers};
use crate::secure::{self, HandshakeError, Hello, Reply, Secret};

mod send;
mod tune;

use send::sender_loop;

/// Queued messages per peer before new ones are dropped.
const QUEUE: usize = 1024;
/// The longest a handshake may take, either side.
pub const HANDSHAKE: Duration = Duration::from_secs(2);
/// Handshakes under way at once; connections beyond are closed.
pub const MAX_HANDSHAKES: usize = 64;
/// Handshakes under way at once from one address.
pub const MAX_HANDSHAKES_PER_HOST: usize = 2;

/// Handshakes under way, per source address.
#[derive(Default, Clone)]
struct PerHost(Arc<Mutex<HashMap<std::net::IpAddr, usize>>>);

/// A handshake slot of one source address, given back when dropped.
struct HostSlot {
    hosts: PerHost,
    ip: std::net::IpAddr,
}

impl PerHost {
    fn take(&self, ip: std::net::IpAddr) -> Option<HostSlot> {
        let mut m = self.0.lock().expect("not poisoned");
        let n = m.entry(ip).or_default();
        if *n >= MAX_HANDSHAKES_PER_HOST {
            return None;
        }
        *n += 1;
        Some(HostSlot {
            hosts: self.clone(),
            ip,
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut m = self.hosts.0.lock().expect("not poisoned");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A message received, and from which peer.
pub struct Inbound {
    pub from: u64,
    pub msg: Message,
}

/// Logs an error at most once a minute per key.
#[derive(Default)]
struct Throttle(HashMap<String, Instant>);

impl Throttle {
    fn allow(&mut self, key: &str) -> bool {
        let now = Instant::now();
        match self.0.get(key) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
            _ => {
                self.0.insert(key.to_string(), now);
                true
            }
        }
    }
}

pub struct Transport {
    senders: HashMap<u64, mpsc::Sender<Message>>,
    /// The listener's task: the port is free again once the transport is gone.
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Transport {
    /// Listens on `me`'s address and connects to every other peer.
    pub async fn start(
        me: &Peer,
        peers: &Peers,
        secret: Secret,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Transport, String> {
        let listener = TcpListener::bind(me.addr).await.map_err(|e| {
            format!(
                "cannot listen on {} (this node's entry in vip_raft_peers): {e}",
                me.addr
            )
        })?;
        tracing::info!(addr = %me.addr, peers = %peers, "Raft transport listening (authenticated)");
        let accept = tokio::spawn(accept_loop(
            listener,
            peers.clone(),
            secret.clone(),
            inbound,
        ));
        let mut senders = HashMap::new();
        for p in peers.list.iter().filter(|p| p.id != me.id) {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(sender_loop(
                p.clone(),
                me.id,
                peers.clone(),
                secret.clone(),
                rx,
            ));
            senders.insert(p.id, tx);
        }
        Ok(Transport { senders, accept })
    }

    /// Queues `msg` for its peer; dropped when the queue is full.
    pub fn send(&self, msg: Message) {
        if let Some(tx) = self.senders.get(&msg.to) {
            let _ = tx.try_send(msg);
        }
    }
}

/// Whether to accept a peer's hello.
fn judge(hello: &Hello, peers: &Peers) -> Reply {
    if hello.fingerprint != peers.fingerprint() {
        Reply {
            ok: false,
            reason: format!(
                "peer lists differ: it has {}, we have {}",
                hello.peers, peers
            ),
        }
    } else if peers.by_id(hello.from).is_none() {
        Reply {
            ok: false,
            reason: format!("unknown peer id {}", hello.from),
        }
    } else {
        Reply {
            ok: true,
            reason: String::new(),
        }
    }
}

/// The live inbound connection of each peer: a newer one replaces it.
#[derive(Default, Clone)]
struct Live(Arc<Mutex<HashMap<u64, (u64, tokio::task::AbortHandle)>>>);

async fn accept_loop(
    listener: TcpListener,
    peers: Peers,
    secret: Secret,
    inbound: mpsc::Sender<Inbound>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_host = PerHost::default();
    let live = Live::default();
    let throttle = Arc::new(Mutex::new(Throttle::default()));
    let mut generation = 0u64;
    loop {
        let (s, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors (or another transient failure):
                // trying again at once would spin.
                if throttle.lock().expect("not poisoned").allow("accept") {
                    warn!(error = %e, "cannot accept Raft connections; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = per_host.take(remote.ip()) else {
            debug!(%remote, "too many Raft handshakes under way from this address; closing");
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            debug!(%remote, "too many Raft handshakes under way; closing");
            continue;
        };
        tune::tune(&s);
        generation += 1;
        let conn = Conn {
            s,
            remote,
            peers: peers.clone(),
            secret: secret.clone(),
            inbound: inbound.clone(),
            live: live.clone(),
            throttle: throttle.clone(),
            generation,
        };
        tokio::spawn(conn.serve((permit, slot)));
    }
}

/// One inbound connection.
struct Conn {
    s: TcpStream,
    remote: std::net::SocketAddr,
    peers: Peers,
    secret: Secret,
    inbound: mpsc::Sender<Inbound>,
    live: Live,
    throttle: Arc<Mutex<Throttle>>,
    generation: u64,
}

impl Conn {
    /// `slots` are held for the handshake only.
    async fn serve(mut self, slots: (tokio::sync::OwnedSemaphorePermit, HostSlot)) {
        let remote = self.remote;
        let peers = self.peers.clone();
        let result =
            secure::respond(&mut self.s, &self.secret, |h| judge(h, &peers), HANDSHAKE).await;
        drop(slots);
        let (hello, mut receiver) = match result {
            Ok((hello, Some(r))) => (hello, r),
            Ok((hello, None)) => {
                let reason = judge(&hello, &self.peers).reason;
                error!(%remote, "refusing a Raft peer: {reason}");
                return;
            }
            Err(e) => {
                let key = format!("refused {}", remote.ip());
                if self.throttle.lock().expect("not poisoned").allow(&key) {
                    let why = match e {
                        HandshakeError::Timeout => "no handshake in time".to_string(),
                        e => e.to_string(),
                    };
                    warn!(%remote, "refused a Raft connection: {why}");
                }
                return;
            }
        };
        // One inbound connection per peer: this one replaces an older one.
        let from = hello.from;
        {
            let mut live = self.live.0.lock().expect("not poisoned");
            if let Some((_, old)) = live.remove(&from) {
                old.abort();
            }
        }
        let reader = {
            let inbound = self.inbound.clone();
            let mut s = self.s;
            tokio::spawn(async move {
                loop {
                    let frame = match receiver.recv(&mut s).await {
                        Ok(f) => f,
                        Err(e) => {
                            debug!(%remote, error = %e, "Raft connection closed");
                            return;
                        }
                    };
                    match Message::parse_from_bytes(frame) {
                        Ok(msg) if msg.from == from => {
                            if inbound.send(Inbound { from, msg }).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => debug!(%remote, "message with a foreign sender id dropped"),
                        Err(e) => {
                            debug!(%remote, error = %e, "undecodable Raft message; closing");
                            return;
                        }
                    }
                }
            })
        };
        self.live
            .0
            .lock()
            .expect("not poisoned")
            .insert(from, (self.generation, reader.abort_handle()));
        let _ = reader.await;
        let mut live = self.live.0.lock().expect("not poisoned");
        if live.get(&from).is_some_and(|(g, _)| *g == self.generation) {
            live.remove(&from);
        }
    }
}
