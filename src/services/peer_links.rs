//! Placement's fast path to a peer's death: this vipd follows every other
//! vipd's `/v1/alive` stream (its status port, found in its instance
//! record). The stream ends the moment that vipd's process dies (its
//! kernel closes the socket) or stops, and falls silent when its node dies
//! or drops off the network; either is known here within
//! [`SILENCE`], instead of a liveness Lease duration later.
//!
//! A link only ever speeds a death up; it never keeps a node alive or
//! makes one dead on its own (see `placement::Liveness::live`): the
//! liveness Lease decides whenever a link cannot (never up, or the peer's
//! Lease renewed after its link went down), and addresses moved because of
//! a link alone are added only once nobody answers for them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// A stream that says nothing for this long counts as down (the peer
/// writes every `status::server::ALIVE_EVERY`, 200 ms).
pub const SILENCE: Duration = Duration::from_millis(1000);
/// Between attempts to reach a peer whose link is down.
const RETRY: Duration = Duration::from_millis(250);

/// The link to one peer, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub up: bool,
    /// Since when it is up or down.
    pub since: Instant,
    /// It was up at least once: a down link then means something.
    pub was_up: bool,
    /// Why it is down, for the status.
    pub why: String,
}

/// This node's links to the other vipds, one task each.
pub struct PeerLinks {
    me: String,
    state: watch::Sender<BTreeMap<String, LinkState>>,
    running: HashMap<String, (SocketAddr, JoinHandle<()>)>,
    notify: mpsc::UnboundedSender<()>,
}

impl PeerLinks {
    /// `notify` is told whenever a link goes up or down.
    pub fn new(me: &str, notify: mpsc::UnboundedSender<()>) -> PeerLinks {
        PeerLinks {
            me: me.to_string(),
            state: watch::channel(BTreeMap::new()).0,
            running: HashMap::new(),
            notify,
        }
    }

    /// Follows exactly `peers` (node -> its status address): new ones are
    /// started, gone ones stopped, moved ones restarted.
    pub fn follow(&mut self, peers: &BTreeMap<String, SocketAddr>) {
        self.running.retain(|node, (addr, task)| {
            let keep = peers.get(node) == Some(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        self.state.send_if_modified(|s| {
            let before = s.len();
            s.retain(|node, _| peers.contains_key(node));
            s.len() != before
        });
        for (node, addr) in peers {
            if *node == self.me || self.running.contains_key(node) {
                continue;
            }
            let task = tokio::spawn(follow_one(
                node.clone(),
                *addr,
                self.state.clone(),
                self.notify.clone(),
            ));
            self.running.insert(node.clone(), (*addr, task));
        }
    }

    /// Every followed peer's link now.
    pub fn view(&self) -> BTreeMap<String, LinkState> {
        self.state.borrow().clone()
    }
}

impl Drop for PeerLinks {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

fn set(
    state: &watch::Sender<BTreeMap<String, LinkState>>,
    notify: &mpsc::UnboundedSender<()>,
    node: &str,
    up: bool,
    why: &str,
) {
    let changed = state.send_if_modified(|s| {
        let now = Instant::now();
        let entry = s.entry(node.to_string()).or_insert_with(|| LinkState {
            up: !up,
            since: now,
            was_up: false,
            why: String::new(),
        });
        if entry.up == up {
            return false;
        }
        *entry = LinkState {
            up,
            since: now,
            was_up: entry.was_up || up,
            why: why.to_string(),
        };
        true
    });
    if changed {
        if up {
            info!(peer = node, "link to the peer's vipd is up");
        } else {
            info!(peer = node, why, "link to the peer's vipd is down");
        }
        let _ = notify.send(());
    }
}

/// Keeps one peer's stream open for as long as the task runs.
async fn follow_one(
    node: String,
    addr: SocketAddr,
    state: watch::Sender<BTreeMap<String, LinkState>>,
    notify: mpsc::UnboundedSender<()>,
) {
    loop {
        let why = stream(&node, addr, &state, &notify).await;
        debug!(peer = %node, %addr, why, "alive stream ended");
        set(&state, &notify, &node, false, why);
        tokio::time::sleep(RETRY).await;
    }
}

/// Reads the peer's stream until it ends; returns why it did.
async fn stream(
    node: &str,
    addr: SocketAddr,
    state: &watch::Sender<BTreeMap<String, LinkState>>,
    notify: &mpsc::UnboundedSender<()>,
) -> &'static str {
    let Ok(Ok(mut s)) = tokio::time::timeout(SILENCE, TcpStream::connect(addr)).await else {
        return "cannot connect";
    };
    let _ = s.set_nodelay(true);
    let ask = format!("GET /v1/alive HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(ask.as_bytes()).await.is_err() {
        return "cannot send the request";
    }
    // The first beat must come from the node expected at this address.
    let expect = format!("alive {node} ");
    let mut seen = Vec::new();
    let mut confirmed = false;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(SILENCE, s.read(&mut buf)).await {
            Err(_) => return "silent",
            Ok(Err(_)) => return "connection failed",
            Ok(Ok(0)) => return "closed by the peer",
            Ok(Ok(n)) if !confirmed => {
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                if !text.starts_with("HTTP/1.1 200") && seen.len() >= 12 {
                    return "refused";
                }
                if text.contains(&expect) {
                    confirmed = true;
                    seen = Vec::new();
                    set(state, notify, node, true, "");
                } else if seen.len() > 4096 {
                    return "another node answers at its address";
                }
            }
            // Any bytes after the first beat: still alive.
            Ok(Ok(_)) => {}
        }
    }
}
