//! Telling the segment where an address now lives: one task per held
//! address sends a gratuitous ARP (IPv4) or unsolicited NA (IPv6) at once,
//! a quick burst, then a refresh every `vip_arpRate`.
//!
//! While the address is held on a claim nobody could confirm (the API
//! server out of reach), each announcement is followed by a probe (an ARP
//! Probe, a DAD Neighbour Solicitation): a node that took the address over
//! answers it, and the conflict watcher (`vips::conflict`) hears that answer
//! even when the new holder's own announcements were lost (RFC 5227 §2.4).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use vipd_arp::{build_announcement, build_probe, MacAddr, Schedule, Sender};

use crate::netlink::Link;

/// Counters the status server reads.
#[derive(Debug, Default)]
pub struct AnnounceStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    /// Conflict probes sent.
    pub probes: AtomicU64,
}

/// Starts announcing `addr` on `link`, probing for another holder while
/// `probing` is set; abort the handle to stop. The first announcement goes
/// out before this returns (the caller has just added the address: a task
/// waiting for a worker would leave the segment pointing at the old holder
/// for milliseconds more).
pub fn spawn(
    link: &Link,
    sender: Arc<Sender>,
    addr: IpAddr,
    schedule: Schedule,
    stats: Arc<AnnounceStats>,
    probing: Arc<AtomicBool>,
) -> Option<JoinHandle<()>> {
    let Some(mac) = link.mac else {
        warn!(interface = %link.name, %addr, "interface has no MAC address: nothing to announce on it");
        return None;
    };
    let ifname = link.name.clone();
    let mac = MacAddr::new(mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    let frame = build_announcement(addr, mac);
    let probe = build_probe(addr, mac);
    let kind = if addr.is_ipv4() {
        "gratuitous ARP"
    } else {
        "unsolicited neighbour advertisement"
    };
    let send = move |sent: u32| {
        match sender.send(&frame) {
            Ok(()) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                if sent == 0 {
                    info!(%addr, interface = %ifname, "announced ({kind})");
                } else {
                    debug!(%addr, interface = %ifname, n = sent + 1, "announced again");
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                // A link that is down refuses frames; keep trying on schedule.
                debug!(%addr, interface = %ifname, error = %e, "announcement not sent");
            }
        }
        if probing.load(Ordering::Relaxed) {
            match sender.send(&probe) {
                Ok(()) => {
                    stats.probes.fetch_add(1, Ordering::Relaxed);
                    debug!(%addr, interface = %ifname, "probed for another holder");
                }
                Err(e) => debug!(%addr, interface = %ifname, error = %e, "probe not sent"),
            }
        }
    };
    send(0);
    Some(tokio::spawn(async move {
        let mut sent = 1u32;
        loop {
            tokio::time::sleep(schedule.gap_after(sent)).await;
            send(sent);
            sent += 1;
        }
    }))
}
