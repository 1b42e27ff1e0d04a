//! Raft messages between peers over TCP.
//!
//! Each node listens on its own peer address and keeps one outbound
//! connection per peer, reconnecting with backoff. A connection starts with
//! a hello (the peer-list fingerprint and the sender's id); the listener
//! answers whether it accepts, so a node given another peer list is refused
//! on both ends with one clear log line. Then length-prefixed raft messages
//! follow. A connection the peer closed is replaced at once; a message whose
//! write failed is sent again on the new connection, others that cannot be
//! sent are dropped: raft retries by itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, error, info};

use crate::peers::{Peer, Peers};

const MAX_FRAME: usize = 16 << 20;
/// Queued messages per peer before new ones are dropped.
const QUEUE: usize = 1024;

/// A message received, and from which peer.
pub struct Inbound {
    pub from: u64,
    pub msg: Message,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    fingerprint: String,
    from: u64,
    peers: String,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    ok: bool,
    reason: String,
}

async fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    s.write_all(bytes).await
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {n} bytes")));
    }
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    Ok(buf)
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
}

impl Transport {
    /// Listens on `me`'s address and connects to every other peer.
    pub async fn start(
        me: &Peer,
        peers: &Peers,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Transport, String> {
        let listener = TcpListener::bind(me.addr).await.map_err(|e| {
            format!(
                "cannot listen on {} (this node's entry in vip_raft_peers): {e}",
                me.addr
            )
        })?;
        info!(addr = %me.addr, peers = %peers, "Raft transport listening");
        tokio::spawn(accept_loop(listener, peers.clone(), inbound));
        let mut senders = HashMap::new();
        for p in peers.list.iter().filter(|p| p.id != me.id) {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(sender_loop(p.clone(), me.id, peers.clone(), rx));
            senders.insert(p.id, tx);
        }
        Ok(Transport { senders })
    }

    /// Queues `msg` for its peer; dropped when the queue is full.
    pub fn send(&self, msg: Message) {
        if let Some(tx) = self.senders.get(&msg.to) {
            let _ = tx.try_send(msg);
        }
    }
}

async fn accept_loop(listener: TcpListener, peers: Peers, inbound: mpsc::Sender<Inbound>) {
    let fingerprint = peers.fingerprint();
    loop {
        let Ok((mut s, remote)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let peers = peers.clone();
        let inbound = inbound.clone();
        let fingerprint = fingerprint.clone();
        tokio::spawn(async move {
            let hello: Hello = match read_frame(&mut s)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(h) => h,
                None => return,
            };
            let reply = if hello.fingerprint != fingerprint {
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
            };
            if !reply.ok {
                error!(%remote, "refusing a Raft peer: {}", reply.reason);
            }
            let ok = reply.ok;
            let bytes = serde_json::to_vec(&reply).expect("serialisable");
            if write_frame(&mut s, &bytes).await.is_err() || !ok {
                return;
            }
            while let Ok(frame) = read_frame(&mut s).await {
                match Message::parse_from_bytes(&frame) {
                    Ok(msg) if msg.from == hello.from => {
                        if inbound
                            .send(Inbound {
                                from: hello.from,
                                msg,
                            })
                            .await
                            .is_err()
                        {
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
        });
    }
}

async fn sender_loop(peer: Peer, me: u64, peers: Peers, mut rx: mpsc::Receiver<Message>) {
    let hello = serde_json::to_vec(&Hello {
        fingerprint: peers.fingerprint(),
        from: me,
        peers: peers.to_string(),
    })
    .expect("serialisable");
    let mut backoff = Duration::from_millis(50);
    let mut throttle = Throttle::default();
    // A message whose write failed: sent again on the next connection.
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let conn =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(peer.addr)).await;
        let mut s = match conn {
            Ok(Ok(s)) => s,
            _ => {
                // Messages for a peer we cannot reach are stale by the time we can.
                pending = None;
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let accepted = async {
            write_frame(&mut s, &hello).await.ok()?;
            let r: Reply = serde_json::from_slice(&read_frame(&mut s).await.ok()?).ok()?;
            Some(r)
        };
        match tokio::time::timeout(Duration::from_secs(2), accepted).await {
            Ok(Some(r)) if r.ok => {}
            Ok(Some(r)) => {
                if throttle.allow(&r.reason) {
                    error!(peer = %peer.name, addr = %peer.addr, "Raft peer refused us: {}", r.reason);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            _ => {
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        backoff = Duration::from_millis(50);
        debug!(peer = %peer.name, "Raft connection up");
        match send_until_closed(&mut s, &mut rx, pending.take()).await {
            Closed::Unsent(bytes) => {
                debug!(peer = %peer.name, "Raft connection lost; reconnecting");
                pending = Some(bytes);
            }
            Closed::ByPeer => {
                debug!(peer = %peer.name, "Raft peer closed the connection; reconnecting")
            }
            Closed::Shutdown => return,
        }
    }
}

enum Closed {
    /// A write failed; this message did not go out.
    Unsent(Vec<u8>),
    /// The peer closed its end (it restarted or stopped).
    ByPeer,
    /// This node's transport is gone.
    Shutdown,
}

/// Writes queued messages to `s` until it fails. The peer never writes on
/// this connection after its reply, so a readable socket means it closed:
/// noticing that at once (rather than at the next write, which the kernel
/// accepts and the peer drops) keeps a restarted peer's first message, a
/// vote request perhaps, from being lost.
async fn send_until_closed(
    s: &mut TcpStream,
    rx: &mut mpsc::Receiver<Message>,
    mut first: Option<Vec<u8>>,
) -> Closed {
    let mut probe = [0u8; 1];
    loop {
        let bytes = match first.take() {
            Some(b) => b,
            None => tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => match msg.write_to_bytes() {
                        Ok(b) => b,
                        Err(_) => continue,
                    },
                    None => return Closed::Shutdown,
                },
                _ = s.read(&mut probe) => return Closed::ByPeer,
            },
        };
        if write_frame(s, &bytes).await.is_err() {
            return Closed::Unsent(bytes);
        }
    }
}
