//! The sending side: one connection per peer, handshake, then queued
//! messages until the connection fails, reconnecting with backoff.

use super::*;

pub(super) async fn sender_loop(
    peer: Peer,
    me: u64,
    peers: Peers,
    secret: Secret,
    mut rx: mpsc::Receiver<Message>,
) {
    let hello = Hello {
        fingerprint: peers.fingerprint(),
        from: me,
        peers: peers.to_string(),
    };
    let mut backoff = Duration::from_millis(50);
    let mut throttle = Throttle::default();
    // A message whose write failed: sent again on the next connection.
    let mut pending: Option<Vec<u8>> = None;
    loop {
        if rx.is_closed() {
            return;
        }
        let conn =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(peer.addr)).await;
        let mut s = match conn {
            Ok(Ok(s)) => s,
            _ => {
                // Messages for a peer we cannot reach are stale by the time we can.
                pending = None;
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        super::tune::tune(&s);
        let mut sender = match secure::initiate(&mut s, &secret, &hello, HANDSHAKE).await {
            Ok((_, Some(sender))) => sender,
            Ok((r, None)) => {
                if throttle.allow(&r.reason) {
                    error!(peer = %peer.name, addr = %peer.addr, "Raft peer refused us: {}", r.reason);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(HandshakeError::Io(_)) | Err(HandshakeError::Auth) => {
                // Closed without a word: it does not share our secret.
                if throttle.allow("auth") {
                    error!(peer = %peer.name, addr = %peer.addr, "Raft peer closed the handshake: check that vip_raft_secret_file holds the same secret on every node");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        debug!(peer = %peer.name, "Raft connection up");
        match send_until_closed(&mut s, &mut sender, &mut rx, pending.take()).await {
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
    sender: &mut secure::Sender,
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
                        Ok(b) if b.len() <= secure::MAX_PLAINTEXT => b,
                        Ok(b) => {
                            warn!(bytes = b.len(), "a Raft message too large for a frame was dropped");
                            continue;
                        }
                        Err(_) => continue,
                    },
                    None => return Closed::Shutdown,
                },
                _ = s.read(&mut probe) => return Closed::ByPeer,
            },
        };
        if sender.send(s, &bytes).await.is_err() {
            return Closed::Unsent(bytes);
        }
    }
}
