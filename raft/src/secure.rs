//! Authenticated, encrypted Raft connections: the Noise protocol
//! (`Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, through the `snow` crate) keyed
//! by the secret every peer shares (`vip_raft_secret_file`).
//!
//! Why: whoever reaches the Raft port could otherwise send a vote request
//! with the transfer flag (the VIP flaps) or a heartbeat response with a
//! far-future timestamp (a cut-off leader keeps the VIP). With a
//! pre-shared key, only a peer that knows the secret completes a handshake,
//! and every later frame is authenticated and bound to that connection.
//!
//! The exchange, on a connection the initiator opened:
//! 1. initiator → `psk, e` with the [`Hello`] as payload (encrypted under
//!    the PSK: without the secret it can be neither read nor forged);
//! 2. responder → `e, ee` with its [`Reply`] (refusals, for a peer that has
//!    the secret but another peer list, are readable only by such a peer);
//! 3. initiator → a first transport frame, [`CONFIRM`]: proof that it holds
//!    the session keys, so a replayed first message (which a responder
//!    cannot tell from a fresh one) never displaces a live connection.
//!
//! Someone without the secret gets nothing back: the responder closes the
//! connection without a byte. Frames are at most [`MAX_FRAME`] bytes (Noise's
//! own limit; a Raft election message is a few hundred).

use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use snow::{HandshakeState, TransportState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into every handshake: a vipd Raft connection and nothing else.
const PROLOGUE: &[u8] = b"vipd raft v1";
/// The largest frame on the wire (Noise's limit for one message).
pub const MAX_FRAME: usize = 65535;
/// Noise's authentication tag on every message.
const TAG: usize = 16;
/// The largest plaintext that fits one frame.
pub const MAX_PLAINTEXT: usize = MAX_FRAME - TAG;
/// The initiator's first transport frame.
pub const CONFIRM: &[u8] = b"confirm";
/// The least secret vipd accepts, in bytes.
pub const MIN_SECRET: usize = 16;

/// The key every peer derives from the shared secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Derives the Noise pre-shared key from the secret's bytes (a file's
    /// content, trailing newlines removed). Refuses secrets too short to
    /// resist guessing.
    pub fn from_bytes(secret: &[u8]) -> Result<Secret, String> {
        let trimmed = secret
            .iter()
            .rposition(|b| *b != b'\n' && *b != b'\r')
            .map(|end| &secret[..=end])
            .unwrap_or_default();
        if trimmed.len() < MIN_SECRET {
            return Err(format!(
                "the secret has {} bytes; use at least {MIN_SECRET} random bytes (e.g. `head -c 32 /dev/urandom | base64`)",
                trimmed.len()
            ));
        }
        let mut h = Sha256::new();
        h.update(b"vipd raft pre-shared key v1\0");
        h.update(trimmed);
        Ok(Secret(h.finalize().into()))
    }
}

/// The first thing an initiator says, inside the handshake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub fingerprint: String,
    pub from: u64,
    pub peers: String,
}

/// The responder's answer, inside the handshake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub reason: String,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// Wrong secret, or not a vipd peer at all.
    #[error("not authenticated (another vip_raft_secret, or not a vipd Raft peer)")]
    Auth,
    #[error("handshake timed out")]
    Timeout,
    #[error("malformed handshake")]
    Malformed,
}

impl From<snow::Error> for HandshakeError {
    fn from(_: snow::Error) -> Self {
        HandshakeError::Auth
    }
}

async fn write_raw(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    debug_assert!(bytes.len() <= MAX_FRAME);
    let mut buf = Vec::with_capacity(2 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    buf.extend_from_slice(bytes);
    s.write_all(&buf).await
}

async fn read_raw(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    buf.resize(u16::from_be_bytes(len) as usize, 0);
    s.read_exact(buf).await?;
    Ok(())
}

fn builder(secret: &Secret) -> snow::Builder<'_> {
    snow::Builder::new(PARAMS.parse().expect("valid Noise parameters"))
        .prologue(PROLOGUE)
        .expect("prologue set once")
        .psk(0, &secret.0)
        .expect("psk set once")
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, HandshakeError> {
    serde_json::from_slice(b).map_err(|_| HandshakeError::Malformed)
}

/// The sending half of an authenticated connection.
pub struct Sender {
    transport: TransportState,
    buf: Vec<u8>,
}

impl Sender {
    /// Encrypts and writes one frame; a plaintext over [`MAX_PLAINTEXT`]
    /// is refused.
    pub async fn send(&mut self, s: &mut TcpStream, plaintext: &[u8]) -> std::io::Result<()> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(std::io::Error::other(format!(
                "a Raft message of {} bytes is larger than a frame",
                plaintext.len()
            )));
        }
        self.buf.resize(plaintext.len() + TAG, 0);
        let n = self
            .transport
            .write_message(plaintext, &mut self.buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        write_raw(s, &self.buf[..n]).await
    }
}

/// The receiving half.
pub struct Receiver {
    transport: TransportState,
    frame: Vec<u8>,
    plain: Vec<u8>,
}

impl Receiver {
    /// Reads and decrypts one frame. A frame that fails authentication is
    /// an error: the connection must be closed.
    pub async fn recv(&mut self, s: &mut TcpStream) -> std::io::Result<&[u8]> {
        read_raw(s, &mut self.frame).await?;
        self.plain.resize(self.frame.len(), 0);
        let n = self
            .transport
            .read_message(&self.frame, &mut self.plain)
            .map_err(|_| std::io::Error::other("a frame failed authentication"))?;
        Ok(&self.plain[..n])
    }
}

/// Opens the session on a connection this node made: says hello, returns
/// the peer's reply and, when accepted, the sending half (the initiator
/// only sends).
pub async fn initiate(
    s: &mut TcpStream,
    secret: &Secret,
    hello: &Hello,
    limit: Duration,
) -> Result<(Reply, Option<Sender>), HandshakeError> {
    let run = async {
        let mut hs: HandshakeState = builder(secret).build_initiator()?;
        let mut out = vec![0u8; MAX_FRAME];
        let payload = serde_json::to_vec(hello).expect("serialisable");
        let n = hs.write_message(&payload, &mut out)?;
        write_raw(s, &out[..n]).await?;
        let mut frame = Vec::new();
        read_raw(s, &mut frame).await?;
        let mut plain = vec![0u8; frame.len()];
        let n = hs.read_message(&frame, &mut plain)?;
        let reply: Reply = decode(&plain[..n])?;
        if !reply.ok {
            return Ok((reply, None));
        }
        let mut sender = Sender {
            transport: hs.into_transport_mode()?,
            buf: Vec::new(),
        };
        sender.send(s, CONFIRM).await?;
        Ok((reply, Some(sender)))
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// Answers a connection a peer made: reads its hello, asks `judge` whether
/// to accept it, replies, and waits for the initiator's confirmation.
/// Returns the hello and the receiving half when accepted; `Ok((hello,
/// None))` when `judge` refused it (the reply has gone out).
pub async fn respond(
    s: &mut TcpStream,
    secret: &Secret,
    judge: impl FnOnce(&Hello) -> Reply,
    limit: Duration,
) -> Result<(Hello, Option<Receiver>), HandshakeError> {
    let run = async {
        let mut hs: HandshakeState = builder(secret).build_responder()?;
        let mut frame = Vec::new();
        read_raw(s, &mut frame).await?;
        let mut plain = vec![0u8; frame.len()];
        let n = hs.read_message(&frame, &mut plain)?;
        let hello: Hello = decode(&plain[..n])?;
        let reply = judge(&hello);
        let mut out = vec![0u8; MAX_FRAME];
        let n = hs.write_message(&serde_json::to_vec(&reply).expect("serialisable"), &mut out)?;
        write_raw(s, &out[..n]).await?;
        if !reply.ok {
            return Ok((hello, None));
        }
        let mut receiver = Receiver {
            transport: hs.into_transport_mode()?,
            frame: Vec::new(),
            plain: Vec::new(),
        };
        if receiver.recv(s).await.map_err(|_| HandshakeError::Auth)? != CONFIRM {
            return Err(HandshakeError::Malformed);
        }
        Ok((hello, Some(receiver)))
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn hello() -> Hello {
        Hello {
            fingerprint: "f".into(),
            from: 2,
            peers: "n1=192.0.2.11:7946,n2=192.0.2.12:7946".into(),
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    const LIMIT: Duration = Duration::from_secs(2);

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(Secret::from_bytes(b"short\n")
            .unwrap_err()
            .contains("5 bytes"));
        let a = Secret::from_bytes(b"0123456789abcdef\n").unwrap();
        assert_eq!(a, Secret::from_bytes(b"0123456789abcdef").unwrap());
        assert_ne!(a, Secret::from_bytes(b"0123456789abcdeF").unwrap());
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[tokio::test]
    async fn peers_with_the_secret_talk() {
        let secret = Secret::from_bytes(b"0123456789abcdef").unwrap();
        let (mut a, mut b) = pair().await;
        let s2 = secret.clone();
        let server = tokio::spawn(async move {
            let (h, rx) = respond(
                &mut b,
                &s2,
                |_| Reply {
                    ok: true,
                    reason: String::new(),
                },
                LIMIT,
            )
            .await
            .unwrap();
            let mut rx = rx.unwrap();
            let m = rx.recv(&mut b).await.unwrap().to_vec();
            (h, m)
        });
        let (reply, tx) = initiate(&mut a, &secret, &hello(), LIMIT).await.unwrap();
        assert!(reply.ok);
        tx.unwrap().send(&mut a, b"a raft message").await.unwrap();
        let (h, m) = server.await.unwrap();
        assert_eq!(h, hello());
        assert_eq!(m, b"a raft message");
    }

    #[tokio::test]
    async fn a_wrong_secret_gets_nothing_back() {
        let ours = Secret::from_bytes(b"0123456789abcdef").unwrap();
        let theirs = Secret::from_bytes(b"fedcba9876543210").unwrap();
        let (mut a, mut b) = pair().await;
        let server = tokio::spawn(async move {
            let r = respond(
                &mut b,
                &ours,
                |_| Reply {
                    ok: true,
                    reason: String::new(),
                },
                LIMIT,
            )
            .await;
            drop(b);
            r.map(|_| ())
        });
        let r = initiate(&mut a, &theirs, &hello(), LIMIT).await;
        assert!(matches!(server.await.unwrap(), Err(HandshakeError::Auth)));
        // The responder closed without a byte: the initiator reads EOF.
        assert!(matches!(r, Err(HandshakeError::Io(_))), "{:?}", r.err());
    }

    #[tokio::test]
    async fn a_replayed_hello_cannot_confirm_and_a_silent_peer_times_out() {
        let secret = Secret::from_bytes(b"0123456789abcdef").unwrap();
        // Record a real first message.
        let mut hs = builder(&secret).build_initiator().unwrap();
        let mut out = vec![0u8; MAX_FRAME];
        let n = hs
            .write_message(&serde_json::to_vec(&hello()).unwrap(), &mut out)
            .unwrap();
        let first = out[..n].to_vec();
        let (mut a, mut b) = pair().await;
        let s2 = secret.clone();
        let server = tokio::spawn(async move {
            respond(
                &mut b,
                &s2,
                |_| Reply {
                    ok: true,
                    reason: String::new(),
                },
                LIMIT,
            )
            .await
            .map(|_| ())
        });
        write_raw(&mut a, &first).await.unwrap();
        let mut reply = Vec::new();
        read_raw(&mut a, &mut reply).await.unwrap();
        // Without the initiator's ephemeral key, no confirmation can be made.
        write_raw(&mut a, &[0u8; 32]).await.unwrap();
        assert!(matches!(server.await.unwrap(), Err(HandshakeError::Auth)));
        // Silence: the responder gives up at its limit.
        let (_a, mut b) = pair().await;
        let t0 = std::time::Instant::now();
        let r = respond(
            &mut b,
            &secret,
            |_| Reply {
                ok: true,
                reason: String::new(),
            },
            Duration::from_millis(200),
        )
        .await;
        assert!(matches!(r, Err(HandshakeError::Timeout)));
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_refusal_is_read_only_with_the_secret() {
        let secret = Secret::from_bytes(b"0123456789abcdef").unwrap();
        let (mut a, mut b) = pair().await;
        let s2 = secret.clone();
        let server = tokio::spawn(async move {
            respond(
                &mut b,
                &s2,
                |_| Reply {
                    ok: false,
                    reason: "peer lists differ".into(),
                },
                LIMIT,
            )
            .await
            .map(|(h, r)| (h, r.is_some()))
        });
        let (reply, tx) = initiate(&mut a, &secret, &hello(), LIMIT).await.unwrap();
        assert!(!reply.ok && reply.reason == "peer lists differ" && tx.is_none());
        assert!(!server.await.unwrap().unwrap().1);
    }
}
