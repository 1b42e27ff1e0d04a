//! Telling the segment where an address now lives: one task per held
//! address sends a gratuitous ARP (IPv4) or unsolicited NA (IPv6) at once,
//! a quick burst, then a refresh every `vip_arpRate`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use vipd_arp::{build_announcement, MacAddr, Schedule, Sender};

use crate::netlink::Link;

/// Counters the status server reads.
#[derive(Debug, Default)]
pub struct AnnounceStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
}

/// Starts announcing `addr` on `link`; abort the handle to stop.
pub fn spawn(
    link: &Link,
    addr: IpAddr,
    schedule: Schedule,
    stats: Arc<AnnounceStats>,
) -> Option<JoinHandle<()>> {
    let Some(mac) = link.mac else {
        warn!(interface = %link.name, %addr, "interface has no MAC address: nothing to announce on it");
        return None;
    };
    let (ifindex, ifname) = (link.index, link.name.clone());
    Some(tokio::spawn(async move {
        let sender = match Sender::open(ifindex) {
            Ok(s) => s,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(interface = %ifname, %addr, error = %e, "cannot open a raw socket (is CAP_NET_RAW granted?)");
                return;
            }
        };
        let frame = build_announcement(
            addr,
            MacAddr::new(mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]),
        );
        let kind = if addr.is_ipv4() {
            "gratuitous ARP"
        } else {
            "unsolicited neighbour advertisement"
        };
        let mut sent = 0u32;
        loop {
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
            sent += 1;
            tokio::time::sleep(schedule.gap_after(sent)).await;
        }
    }))
}
