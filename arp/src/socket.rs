//! Raw `AF_PACKET` sockets bound to one interface: a [`Sender`] for
//! announcements and a [`Capture`] that reads announcements off the wire.
//!
//! Both need `CAP_NET_RAW`. A socket belongs to the network namespace of the
//! thread that opened it.

use std::io;
use std::mem::size_of;
use std::time::SystemTime;

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

use crate::frame::{parse_announcement, Announcement};

const ETH_P_ALL: u16 = 0x0003;

/// `sockaddr_ll` naming an interface, for `sendto` and `bind`.
fn link_addr(ifindex: u32, protocol: u16) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_storage is larger than sockaddr_ll and suitably aligned.
    let ll: &mut libc::sockaddr_ll = unsafe { storage.view_as() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = protocol.to_be();
    ll.sll_ifindex = ifindex as i32;
    // SAFETY: the storage holds an initialised sockaddr_ll of that length.
    unsafe { SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as libc::socklen_t) }
}

/// Sends ready-made Ethernet frames out of one interface.
#[derive(Debug)]
pub struct Sender {
    socket: Socket,
    target: SockAddr,
}

impl Sender {
    /// Opens a send-only packet socket (protocol 0: it receives nothing).
    pub fn open(ifindex: u32) -> io::Result<Sender> {
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
        let target = link_addr(ifindex, 0);
        Ok(Sender { socket, target })
    }

    /// Sends one frame; the frame carries its own Ethernet header.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let n = self.socket.send_to(frame, &self.target)?;
        if n != frame.len() {
            return Err(io::Error::other(format!(
                "short send: {n} of {}",
                frame.len()
            )));
        }
        Ok(())
    }
}

/// Reads every frame arriving on one interface and keeps the announcements.
#[derive(Debug)]
pub struct Capture {
    socket: Socket,
}

impl Capture {
    /// Opens a capture on `ifindex`; `read_timeout` bounds each [`Capture::next`].
    pub fn open(ifindex: u32, read_timeout: std::time::Duration) -> io::Result<Capture> {
        let socket = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(ETH_P_ALL.to_be() as i32)),
        )?;
        socket.bind(&link_addr(ifindex, ETH_P_ALL))?;
        socket.set_read_timeout(Some(read_timeout))?;
        Ok(Capture { socket })
    }

    /// The next announcement seen, with the time it was read; `Ok(None)`
    /// when the read timeout passed without one.
    pub fn next(&self) -> io::Result<Option<(SystemTime, Announcement)>> {
        self.next_matching(parse_announcement)
    }

    /// The next frame `parse` accepts, with the time it was read.
    pub fn next_matching(
        &self,
        parse: impl Fn(&[u8]) -> Option<Announcement>,
    ) -> io::Result<Option<(SystemTime, Announcement)>> {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        loop {
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            let at = SystemTime::now();
            // SAFETY: recv initialised the first n bytes.
            let frame: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            if let Some(a) = parse(&frame) {
                return Ok(Some((at, a)));
            }
        }
    }
}
