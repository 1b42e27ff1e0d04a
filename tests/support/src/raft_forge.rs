//! An attacker on the Raft port: a host that knows the peer list (it is
//! no secret: it is in every manifest) but not the shared secret. It speaks
//! the unauthenticated protocol vipd used before (a JSON hello with the
//! peer-list fingerprint, then length-prefixed raft messages), tries Noise
//! with a wrong secret, and holds connections open in silence. Its forged
//! messages are the two that hurt: a `MsgTimeoutNow` that makes a follower
//! campaign at once with the transfer flag (the leader steps down), and a
//! vote request carrying that flag with a far higher term.

use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vipd_raft::secure::{self, Hello};
use vipd_raft::{Peers, Secret};

/// What the forger achieved.
#[derive(Debug, Default, Clone)]
pub struct ForgeReport {
    /// Old-protocol hellos a peer answered with "ok".
    pub plaintext_accepted: usize,
    /// Forged raft messages written on a connection a peer accepted.
    pub forged_sent: usize,
    /// Noise handshakes with a wrong secret that a peer completed.
    pub wrong_secret_accepted: usize,
    pub attempts: usize,
}

fn forged(kind: MessageType, to: u64, from: u64, term: u64) -> Vec<u8> {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.to = to;
    m.from = from;
    m.term = term;
    if kind == MessageType::MsgRequestVote {
        m.index = u64::MAX / 2;
        m.log_term = term;
        m.context = b"CAMPAIGN_TRANSFER".to_vec().into();
    }
    m.write_to_bytes().expect("encodable")
}

async fn write_frame(s: &mut TcpStream, b: &[u8]) -> std::io::Result<()> {
    s.write_all(&(b.len() as u32).to_be_bytes()).await?;
    s.write_all(b).await
}

/// The old protocol: a plaintext hello, then forged messages.
async fn plaintext(peers: &Peers, to: u64, from: u64, term: u64, r: &mut ForgeReport) {
    let addr = peers.by_id(to).expect("known").addr;
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    else {
        return;
    };
    let hello = serde_json::json!({ "fingerprint": peers.fingerprint(), "from": from, "peers": peers.to_string() });
    if write_frame(&mut s, &serde_json::to_vec(&hello).unwrap())
        .await
        .is_err()
    {
        return;
    }
    let mut len = [0u8; 4];
    let answered = tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut len)).await;
    if let Ok(Ok(_)) = answered {
        let n = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; n.min(4096)];
        if s.read_exact(&mut body).await.is_ok()
            && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v["ok"] == true)
        {
            r.plaintext_accepted += 1;
        }
    }
    for kind in [MessageType::MsgTimeoutNow, MessageType::MsgRequestVote] {
        if write_frame(&mut s, &forged(kind, to, from, term))
            .await
            .is_ok()
        {
            r.forged_sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Noise, but with a secret of its own.
async fn wrong_secret(peers: &Peers, to: u64, from: u64, r: &mut ForgeReport) {
    let addr = peers.by_id(to).expect("known").addr;
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    else {
        return;
    };
    let guess = Secret::from_bytes(b"a guess at the cluster secret").expect("long enough");
    let hello = Hello {
        fingerprint: peers.fingerprint(),
        from,
        peers: peers.to_string(),
    };
    if let Ok((reply, Some(_))) =
        secure::initiate(&mut s, &guess, &hello, Duration::from_secs(1)).await
    {
        if reply.ok {
            r.wrong_secret_accepted += 1;
        }
    }
}

/// Attacks every peer for `duration`, from the current network namespace.
pub async fn forge(peers: &Peers, duration: Duration) -> ForgeReport {
    let mut r = ForgeReport::default();
    // Connections held open without a word: they must not block anyone.
    let mut silent = Vec::new();
    for p in &peers.list {
        for _ in 0..16 {
            if let Ok(s) = TcpStream::connect(p.addr).await {
                silent.push(s);
            }
        }
    }
    let t0 = Instant::now();
    let mut term = 1_000_000;
    while t0.elapsed() < duration {
        for target in &peers.list {
            // Pretend to be another peer.
            let from = peers
                .list
                .iter()
                .map(|p| p.id)
                .find(|id| *id != target.id)
                .expect("two peers");
            term += 1;
            r.attempts += 1;
            plaintext(peers, target.id, from, term, &mut r).await;
            wrong_secret(peers, target.id, from, &mut r).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silent);
    r
}

/// A stand-in for peer `me` that knows the secret: asks `target` for its
/// vote in `term` (with a log that is up to date whatever the target has)
/// and waits for the answer, which the target sends on its own connection
/// to `me`'s address. Run it inside `me`'s network namespace. Returns
/// whether the vote was granted.
pub async fn request_vote(
    peers: &Peers,
    secret: &Secret,
    me: &str,
    target: &str,
    term: u64,
) -> anyhow::Result<bool> {
    let me = peers.by_name(me).expect("known peer").clone();
    let target = peers.by_name(target).expect("known peer").clone();
    let listener = tokio::net::TcpListener::bind(me.addr).await?;
    let mut out = TcpStream::connect(target.addr).await?;
    let hello = Hello {
        fingerprint: peers.fingerprint(),
        from: me.id,
        peers: peers.to_string(),
    };
    let (reply, sender) =
        secure::initiate(&mut out, secret, &hello, Duration::from_secs(2)).await?;
    let mut sender = sender.ok_or_else(|| anyhow::anyhow!("refused: {}", reply.reason))?;
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    m.to = target.id;
    m.from = me.id;
    m.term = term;
    m.index = u64::MAX / 2;
    m.log_term = term;
    sender.send(&mut out, &m.write_to_bytes()?).await?;
    // The answer arrives on the target's connection to us.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (mut s, _) = tokio::time::timeout(left, listener.accept()).await??;
        let ok = |_: &Hello| secure::Reply {
            ok: true,
            reason: String::new(),
        };
        let Ok((_, Some(mut rx))) =
            secure::respond(&mut s, secret, ok, Duration::from_secs(2)).await
        else {
            continue;
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Ok(frame)) = tokio::time::timeout(left, rx.recv(&mut s)).await else {
                anyhow::bail!("no vote response from {}", target.name);
            };
            let r = Message::parse_from_bytes(frame)?;
            if r.get_msg_type() == MessageType::MsgRequestVoteResponse && r.term == term {
                return Ok(!r.reject);
            }
        }
    }
}
