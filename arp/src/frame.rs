//! Frames that announce "this IP address is at this MAC address".
//!
//! - IPv4: an ARP Announcement (RFC 5227 §2.3): an ARP request, broadcast,
//!   whose sender and target protocol addresses are both the announced address.
//! - IPv6: an unsolicited Neighbour Advertisement (RFC 4861 §7.2.6) to the
//!   all-nodes multicast address, Override flag set, Solicited flag clear,
//!   carrying the Target Link-Layer Address option.
//!
//! And frames that ask "does anyone else have this address?" without
//! claiming it (conflict detection): an ARP Probe (RFC 5227 §2.1.1, sender
//! protocol address all zeros) and a Neighbour Solicitation from the
//! unspecified address (RFC 4862 §5.4.2, as Duplicate Address Detection
//! sends it). A host that holds the address answers the first with an ARP
//! reply and the second with a Neighbour Advertisement to all nodes; neither
//! changes anybody's neighbour cache.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, NdpOptionTypes, NeighborAdvertFlags, NeighborAdvertPacket,
};
use pnet_packet::icmpv6::{self, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};
use pnet_packet::Packet;

pub use pnet_base::MacAddr;

/// Shortest Ethernet frame without its FCS; shorter frames are padded.
const MIN_FRAME: usize = 60;
const ETH_HEADER: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER: usize = 40;
/// ICMPv6 NA header (type, code, checksum, flags, reserved, target) + one
/// Target Link-Layer Address option of 8 bytes.
const NA_LEN: usize = 24 + 8;

/// Every IPv6 node on the link (RFC 4291 §2.7.1).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// What a captured announcement said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// The address announced.
    pub ip: IpAddr,
    /// The link-layer address it now maps to.
    pub mac: MacAddr,
}

/// The frame that announces `ip` at `mac`: a gratuitous ARP for IPv4, an
/// unsolicited Neighbour Advertisement for IPv6.
pub fn build_announcement(ip: IpAddr, mac: MacAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => gratuitous_arp(v4, mac),
        IpAddr::V6(v6) => unsolicited_na(v6, mac),
    }
}

fn gratuitous_arp(ip: Ipv4Addr, mac: MacAddr) -> Vec<u8> {
    let mut buf = vec![0u8; MIN_FRAME];
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits an Ethernet header");
    eth.set_destination(MacAddr::broadcast());
    eth.set_source(mac);
    eth.set_ethertype(EtherTypes::Arp);
    let mut arp = MutableArpPacket::new(&mut buf[ETH_HEADER..ETH_HEADER + ARP_LEN])
        .expect("buffer fits an ARP packet");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(mac);
    arp.set_sender_proto_addr(ip);
    arp.set_target_hw_addr(MacAddr::zero());
    arp.set_target_proto_addr(ip);
    buf
}

fn unsolicited_na(ip: Ipv6Addr, mac: MacAddr) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER + IPV6_HEADER + NA_LEN];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits an Ethernet header");
        // 33:33 + the low 32 bits of ff02::1 (RFC 2464 §7).
        eth.set_destination(MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
        eth.set_source(mac);
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip6 = MutableIpv6Packet::new(&mut buf[ETH_HEADER..]).expect("buffer fits IPv6");
        ip6.set_version(6);
        ip6.set_payload_length(NA_LEN as u16);
        ip6.set_next_header(IpNextHeaderProtocols::Icmpv6);
        // RFC 4861 §7.1.2: a receiver drops an NA whose hop limit is not 255.
        ip6.set_hop_limit(255);
        ip6.set_source(ip);
        ip6.set_destination(ALL_NODES);
    }
    let icmp = &mut buf[ETH_HEADER + IPV6_HEADER..];
    {
        let mut na = MutableNeighborAdvertPacket::new(icmp).expect("buffer fits an NA");
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_flags(NeighborAdvertFlags::Override);
        na.set_target_addr(ip);
    }
    // Target Link-Layer Address option: type 2, length 1 (x 8 bytes), MAC.
    icmp[24] = NdpOptionTypes::TargetLLAddr.0;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&mac.octets());
    let sum = icmpv6::checksum(
        &Icmpv6Packet::new(icmp).expect("buffer fits ICMPv6"),
        &ip,
        &ALL_NODES,
    );
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    buf
}

/// The frame that asks whether any other host holds `ip`, sent from `mac`:
/// an ARP Probe for IPv4, a DAD Neighbour Solicitation for IPv6.
pub fn build_probe(ip: IpAddr, mac: MacAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = gratuitous_arp(v4, mac);
            let mut arp = MutableArpPacket::new(&mut buf[ETH_HEADER..ETH_HEADER + ARP_LEN])
                .expect("buffer fits an ARP packet");
            arp.set_sender_proto_addr(Ipv4Addr::UNSPECIFIED);
            buf
        }
        IpAddr::V6(v6) => dad_solicitation(v6, mac),
    }
}

/// The solicited-node multicast address of `ip` (RFC 4291 §2.7.1).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// ICMPv6 Neighbour Solicitation: type, code, checksum, reserved, target;
/// no Source Link-Layer Address option from the unspecified address
/// (RFC 4861 §7.1.1).
const NS_LEN: usize = 24;

fn dad_solicitation(ip: Ipv6Addr, mac: MacAddr) -> Vec<u8> {
    let group = solicited_node(ip);
    let g = group.octets();
    let mut buf = vec![0u8; ETH_HEADER + IPV6_HEADER + NS_LEN];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits an Ethernet header");
        // 33:33 + the low 32 bits of the group (RFC 2464 §7).
        eth.set_destination(MacAddr::new(0x33, 0x33, g[12], g[13], g[14], g[15]));
        eth.set_source(mac);
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip6 = MutableIpv6Packet::new(&mut buf[ETH_HEADER..]).expect("buffer fits IPv6");
        ip6.set_version(6);
        ip6.set_payload_length(NS_LEN as u16);
        ip6.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip6.set_hop_limit(255);
        ip6.set_source(Ipv6Addr::UNSPECIFIED);
        ip6.set_destination(group);
    }
    let icmp = &mut buf[ETH_HEADER + IPV6_HEADER..];
    icmp[0] = Icmpv6Types::NeighborSolicit.0;
    icmp[8..24].copy_from_slice(&ip.octets());
    let sum = icmpv6::checksum(
        &Icmpv6Packet::new(icmp).expect("buffer fits ICMPv6"),
        &Ipv6Addr::UNSPECIFIED,
        &group,
    );
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    buf
}

/// An ARP request from `sender` (`mac`, `ip`) asking who has `target`
/// (RFC 826), broadcast; used to check that an address answers.
pub fn build_arp_request(mac: MacAddr, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut buf = gratuitous_arp(sender, mac);
    let mut arp = MutableArpPacket::new(&mut buf[ETH_HEADER..ETH_HEADER + ARP_LEN])
        .expect("buffer fits an ARP packet");
    arp.set_target_proto_addr(target);
    buf
}

/// Reads an ARP reply: who (`ip`) is at which MAC.
pub fn parse_arp_reply(frame: &[u8]) -> Option<Announcement> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_operation() != ArpOperations::Reply || arp.get_protocol_type() != EtherTypes::Ipv4 {
        return None;
    }
    Some(Announcement {
        ip: IpAddr::V4(arp.get_sender_proto_addr()),
        mac: arp.get_sender_hw_addr(),
    })
}

/// Reads a received Ethernet frame: `Some` when it announces an address
/// (a gratuitous ARP request or reply, or a Neighbour Advertisement with the
/// Override flag and a target link-layer address), else `None`.
pub fn parse_announcement(frame: &[u8]) -> Option<Announcement> {
    let eth = EthernetPacket::new(frame)?;
    match eth.get_ethertype() {
        EtherTypes::Arp => {
            let arp = ArpPacket::new(eth.payload())?;
            let gratuitous = arp.get_sender_proto_addr() == arp.get_target_proto_addr();
            if arp.get_protocol_type() != EtherTypes::Ipv4 || !gratuitous {
                return None;
            }
            Some(Announcement {
                ip: IpAddr::V4(arp.get_sender_proto_addr()),
                mac: arp.get_sender_hw_addr(),
            })
        }
        EtherTypes::Ipv6 => {
            let ip6 = Ipv6Packet::new(eth.payload())?;
            if ip6.get_next_header() != IpNextHeaderProtocols::Icmpv6 {
                return None;
            }
            let na = NeighborAdvertPacket::new(ip6.payload())?;
            if na.get_icmpv6_type() != Icmpv6Types::NeighborAdvert
                || na.get_flags() & NeighborAdvertFlags::Override == 0
            {
                return None;
            }
            let option = na
                .get_options()
                .into_iter()
                .find(|o| o.option_type == NdpOptionTypes::TargetLLAddr && o.data.len() >= 6)?;
            let d = &option.data;
            Some(Announcement {
                ip: IpAddr::V6(na.get_target_addr()),
                mac: MacAddr::new(d[0], d[1], d[2], d[3], d[4], d[5]),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr(0x02, 0x00, 0x5e, 0x10, 0x20, 0x30);

    #[test]
    fn gratuitous_arp_bytes() {
        let frame = build_announcement("192.0.2.100".parse().unwrap(), MAC);
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // our MAC
            0x08, 0x06,                         // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // Ethernet / IPv4
            0x00, 0x01,                         // request (RFC 5227 announcement)
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 192, 0, 2, 100, // sender
            0, 0, 0, 0, 0, 0, 192, 0, 2, 100,   // target: same address
        ];
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[..42], &expected[..]);
        assert!(frame[42..].iter().all(|b| *b == 0), "padding is zero");
    }

    #[test]
    fn unsolicited_na_bytes() {
        let ip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let frame = build_announcement(IpAddr::V6(ip), MAC);
        #[rustfmt::skip]
        let expected: [u8; 86] = [
            0x33, 0x33, 0, 0, 0, 1,             // all-nodes multicast MAC
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
            0x86, 0xdd,
            0x60, 0, 0, 0, 0, 32, 58, 255,      // v6, payload 32, ICMPv6, hop limit 255
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            136, 0, 0x78, 0xed,                 // NA, code 0, checksum (checked with Python)
            0x20, 0, 0, 0,                      // Override only
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
            2, 1, 0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // target link-layer address
        ];
        assert_eq!(&frame[..], &expected[..]);
    }

    /// RFC 4443 §2.3 checksum, computed independently of pnet: the
    /// one's-complement sum over the pseudo-header and the message must be
    /// 0xffff when the checksum field is right.
    #[test]
    fn na_checksum_verifies() {
        let ip: Ipv6Addr = "2001:db8:1::abcd".parse().unwrap();
        let frame = build_announcement(IpAddr::V6(ip), MAC);
        let icmp = &frame[ETH_HEADER + IPV6_HEADER..];
        let mut words: Vec<u8> = Vec::new();
        words.extend_from_slice(&ip.octets());
        words.extend_from_slice(&ALL_NODES.octets());
        words.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        words.extend_from_slice(&[0, 0, 0, 58]);
        words.extend_from_slice(icmp);
        let mut sum: u32 = words
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn arp_request_bytes_and_reply_parse() {
        let req = build_arp_request(
            MAC,
            "192.0.2.3".parse().unwrap(),
            "192.0.2.150".parse().unwrap(),
        );
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 192, 0, 2, 3,
            0, 0, 0, 0, 0, 0, 192, 0, 2, 150,
        ];
        assert_eq!(&req[..42], &expected[..]);
        assert_eq!(parse_arp_reply(&req), None, "a request is not a reply");
        // The reply a Linux host sends back (opcode 2, sender = the asked-for address).
        #[rustfmt::skip]
        let reply: [u8; 42] = [
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02,
            0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 192, 0, 2, 150,
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 192, 0, 2, 3,
        ];
        assert_eq!(
            parse_arp_reply(&reply),
            Some(Announcement {
                ip: "192.0.2.150".parse().unwrap(),
                mac: MacAddr(0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f)
            })
        );
    }

    #[test]
    fn arp_probe_bytes() {
        let frame = build_probe("192.0.2.100".parse().unwrap(), MAC);
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,  // request
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 0, 0, 0, 0, // sender: no address (RFC 5227 probe)
            0, 0, 0, 0, 0, 0, 192, 0, 2, 100,          // target: the address probed
        ];
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[..42], &expected[..]);
        // A probe announces nothing.
        assert_eq!(parse_announcement(&frame), None);
    }

    #[test]
    fn dad_solicitation_bytes() {
        let ip: Ipv6Addr = "2001:db8::1:2345".parse().unwrap();
        let frame = build_probe(IpAddr::V6(ip), MAC);
        #[rustfmt::skip]
        let expected: [u8; 78] = [
            0x33, 0x33, 0xff, 0x01, 0x23, 0x45, // solicited-node multicast MAC
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
            0x86, 0xdd,
            0x60, 0, 0, 0, 0, 24, 58, 255,      // v6, payload 24, ICMPv6, hop limit 255
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // from ::
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0x01, 0x23, 0x45,
            135, 0, 0x06, 0x63,                 // NS, code 0, checksum (computed with Python)
            0, 0, 0, 0,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x23, 0x45,
        ];
        assert_eq!(&frame[..], &expected[..]);
    }

    #[test]
    fn parse_round_trips() {
        for ip in ["192.0.2.7", "2001:db8::7"] {
            let ip: IpAddr = ip.parse().unwrap();
            let got = parse_announcement(&build_announcement(ip, MAC));
            assert_eq!(got, Some(Announcement { ip, mac: MAC }));
        }
    }

    #[test]
    fn parse_ignores_ordinary_traffic() {
        let mut frame = build_announcement("192.0.2.7".parse().unwrap(), MAC);
        // An ordinary ARP request for another address is not an announcement.
        frame[ETH_HEADER + 27] = 8;
        assert_eq!(parse_announcement(&frame), None);
        // An NA without the Override flag (a solicited answer) is not either.
        let mut na = build_announcement("2001:db8::7".parse().unwrap(), MAC);
        na[ETH_HEADER + IPV6_HEADER + 4] = NeighborAdvertFlags::Solicited;
        assert_eq!(parse_announcement(&na), None);
        assert_eq!(parse_announcement(&[0u8; 10]), None);
        assert_eq!(parse_announcement(&[]), None);
    }
}
