//! Announcing that an IP address has moved to this host's link.
//!
//! When a virtual IP moves to a new node, every neighbour on the segment still
//! maps it to the old node's MAC address. This crate tells them at once:
//! IPv4 by a gratuitous ARP (an RFC 5227 ARP Announcement), IPv6 by an
//! unsolicited Neighbour Advertisement with the Override flag (RFC 4861 §7.2.6).
//!
//! - [`frame`]: the wire format only, building and parsing frames.
//! - [`schedule`]: when to send: a quick burst right after takeover, then a
//!   periodic refresh.
//! - [`socket`]: the raw `AF_PACKET` sockets that send frames and, for tests
//!   and diagnostics, capture them.
//!
//! Nothing here knows about Kubernetes.

pub mod frame;
pub mod schedule;
pub mod socket;

pub use frame::{
    build_announcement, build_arp_request, build_probe, parse_announcement, parse_arp_reply,
    Announcement, MacAddr,
};
pub use schedule::Schedule;
pub use socket::{Capture, Sender};
