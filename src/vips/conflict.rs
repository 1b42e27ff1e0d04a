//! Listening on the wire for another node announcing an address this node
//! holds: an ARP packet (request, reply or gratuitous) whose sender is one
//! of our addresses at another MAC, or an IPv6 Neighbour Advertisement for
//! one of them with another link-layer address. The owner decides what such
//! a conflict means (see `plan::yields_to_another`); this only reports it.
//!
//! One thread per interface, reading only ARP frames (a packet socket bound
//! to ETH_P_ARP) and ICMPv6 Neighbour Advertisements (an ICMPv6 socket
//! filtered to that type), so a busy node's traffic is never copied here.

use std::collections::HashSet;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Another node announced `addr` from `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub addr: IpAddr,
    pub mac: [u8; 6],
}

/// The addresses held now, shared with the watchers.
pub type HeldSet = Arc<RwLock<HashSet<IpAddr>>>;

const ETH_P_ARP: u16 = 0x0806;
const ETH_HEADER: usize = 14;

/// Reads an ARP frame: the sender's protocol and hardware addresses.
pub fn arp_sender(frame: &[u8]) -> Option<(Ipv4Addr, [u8; 6])> {
    let arp = frame.get(ETH_HEADER..ETH_HEADER + 28)?;
    // Ethernet / IPv4, 6 / 4 byte addresses.
    if arp[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let mac: [u8; 6] = arp[8..14].try_into().ok()?;
    let ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    Some((ip, mac))
}

/// Reads an ICMPv6 message (as a raw ICMPv6 socket delivers it, without the
/// IPv6 header): a Neighbour Advertisement's target and the link-layer
/// address of its Target Link-Layer Address option.
pub fn na_target(msg: &[u8]) -> Option<(Ipv6Addr, [u8; 6])> {
    if msg.len() < 24 || msg[0] != 136 {
        return None;
    }
    let target: [u8; 16] = msg[8..24].try_into().ok()?;
    let mut opts = &msg[24..];
    while opts.len() >= 8 {
        let (kind, len) = (opts[0], opts[1] as usize * 8);
        if len == 0 || len > opts.len() {
            return None;
        }
        if kind == 2 {
            let mac: [u8; 6] = opts[2..8].try_into().ok()?;
            return Some((Ipv6Addr::from(target), mac));
        }
        opts = &opts[len..];
    }
    None
}

/// Starts watching interface `ifindex` (named `ifname`, with `mac`) for
/// announcements of addresses in `held` from another MAC; each is sent on
/// `tx`. Runs until `tx` is closed.
pub fn watch(
    ifindex: u32,
    ifname: String,
    mac: [u8; 6],
    held: HeldSet,
    tx: mpsc::UnboundedSender<Conflict>,
) {
    let arp = match arp_socket(ifindex) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(interface = %ifname, error = %e, "cannot listen for ARP (is CAP_NET_RAW granted?): another node taking an address over goes unnoticed on the wire");
            None
        }
    };
    let na = match na_socket(&ifname) {
        Ok(s) => Some(s),
        Err(e) => {
            debug!(interface = %ifname, error = %e, "cannot listen for neighbour advertisements");
            None
        }
    };
    let report = move |addr: IpAddr, from: [u8; 6], tx: &mpsc::UnboundedSender<Conflict>| -> bool {
        if from == mac || !held.read().expect("not poisoned").contains(&addr) {
            return true;
        }
        tx.send(Conflict { addr, mac: from }).is_ok()
    };
    if let Some(sock) = arp {
        let parse = |frame: &[u8]| arp_sender(frame).map(|(ip, from)| (IpAddr::V4(ip), from));
        read_on(
            format!("arp-watch-{ifname}"),
            sock,
            parse,
            report.clone(),
            tx.clone(),
        );
    }
    if let Some(sock) = na {
        let parse = |msg: &[u8]| na_target(msg).map(|(ip, from)| (IpAddr::V6(ip), from));
        read_on("na-watch".into(), sock, parse, report, tx);
    }
}

/// Reads `sock` on a thread named `name` until `tx` closes: every message
/// `parse` reads as an announcement of an address from a MAC goes to
/// `report`.
fn read_on(
    name: String,
    sock: Socket,
    parse: impl Fn(&[u8]) -> Option<(IpAddr, [u8; 6])> + Send + 'static,
    report: impl Fn(IpAddr, [u8; 6], &mpsc::UnboundedSender<Conflict>) -> bool + Send + 'static,
    tx: mpsc::UnboundedSender<Conflict>,
) {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // An ARP frame or an NA with its options fits.
            let mut buf = [MaybeUninit::<u8>::uninit(); 256];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        // SAFETY: recv initialised the first n bytes.
                        let msg: Vec<u8> = buf[..n]
                            .iter()
                            .map(|b| unsafe { b.assume_init() })
                            .collect();
                        if let Some((ip, from)) = parse(&msg) {
                            if !report(ip, from, &tx) {
                                return;
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .expect("spawn a thread");
}

fn arp_socket(ifindex: u32) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(ETH_P_ARP.to_be() as i32)),
    )?;
    // SAFETY: a zeroed sockaddr_ll with family, protocol and ifindex set.
    let addr = unsafe {
        let mut ll: libc::sockaddr_ll = std::mem::zeroed();
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = ETH_P_ARP.to_be();
        ll.sll_ifindex = ifindex as i32;
        SockAddr::try_init(|storage, len| {
            std::ptr::copy_nonoverlapping(
                &ll as *const libc::sockaddr_ll as *const u8,
                storage as *mut u8,
                std::mem::size_of::<libc::sockaddr_ll>(),
            );
            *len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })?
        .1
    };
    sock.bind(&addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    large_receive_buffer(&sock);
    Ok(sock)
}

/// Room for the answers of a takeover's probes (hundreds of addresses,
/// three frames each, all answered at once): a frame dropped because the
/// socket was full is an answer unheard, and an unanswered probe clears
/// its address. Beyond `net.core.rmem_max` with CAP_NET_ADMIN.
const RECEIVE_BUFFER: usize = 4 << 20;

fn large_receive_buffer(sock: &Socket) {
    let size = RECEIVE_BUFFER as libc::c_int;
    // SAFETY: setsockopt with an int option value.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = sock.set_recv_buffer_size(RECEIVE_BUFFER);
    }
}

fn na_socket(ifname: &str) -> io::Result<Socket> {
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    sock.bind_device(Some(ifname.as_bytes()))?;
    // ICMP6_FILTER: block every type but Neighbour Advertisement (136).
    let mut filter = [0xffff_ffffu32; 8];
    filter[136 / 32] &= !(1 << (136 % 32));
    // SAFETY: setsockopt with a correctly sized filter.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_ICMPV6,
            1, // ICMP6_FILTER
            filter.as_ptr() as *const libc::c_void,
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    large_receive_buffer(&sock);
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipd_arp::{build_announcement, MacAddr};

    #[test]
    fn reads_the_sender_of_a_gratuitous_arp_and_the_target_of_an_na() {
        let mac = MacAddr::new(2, 0, 0x5e, 1, 2, 3);
        let garp = build_announcement("192.0.2.100".parse().unwrap(), mac);
        assert_eq!(
            arp_sender(&garp),
            Some(("192.0.2.100".parse().unwrap(), [2, 0, 0x5e, 1, 2, 3]))
        );
        let na = build_announcement("2001:db8::100".parse().unwrap(), mac);
        // A raw ICMPv6 socket delivers the message without Ethernet and IPv6 headers.
        assert_eq!(
            na_target(&na[14 + 40..]),
            Some(("2001:db8::100".parse().unwrap(), [2, 0, 0x5e, 1, 2, 3]))
        );
        assert_eq!(arp_sender(&na), None);
        assert_eq!(na_target(&garp[14..]), None);
    }
}
