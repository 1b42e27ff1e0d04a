//! The kernel's addresses and links, through rtnetlink.
//!
//! Addresses vipd adds carry the address protocol [`VIPD_ADDR_PROTO`]
//! (`IFA_PROTO`, Linux 6.1+; `ip addr` shows it as `proto 86`), so a restarted
//! vipd removes the stale addresses it owns and never touches an address
//! someone else configured. They also carry a finite lifetime when asked: the
//! kernel itself removes the address if vipd stops refreshing it (a killed or
//! frozen leader), before another node can take the VIP over.

use std::net::IpAddr;
use std::time::Duration;

use futures::stream::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup};

mod host;

pub use host::Host;

/// `IFA_PROTO` of every address vipd adds ('V').
pub const VIPD_ADDR_PROTO: u8 = 86;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink: {0}")]
    Request(#[from] rtnetlink::Error),
}

impl NetlinkError {
    /// The kernel's errno, when it refused a request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request(rtnetlink::Error::NetlinkError(m)) => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// An interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// Administratively up and with carrier.
    pub up: bool,
}

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelAddr {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    /// Added by vipd (carries [`VIPD_ADDR_PROTO`]).
    pub ours: bool,
}

/// A change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    AddressAdded(KernelAddr),
    AddressRemoved(KernelAddr),
    LinkChanged(Link),
}

/// A request handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
    /// The kernel runs one dump at a time per netlink socket and refuses a
    /// second with EBUSY: dumps on this handle take turns.
    dumping: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a socket in the current thread's network namespace. Its
    /// connection runs on a thread of its own: a netlink request is a
    /// blocking `sendto` into the kernel, which waits for the kernel's global
    /// routing lock; on a runtime worker that wait would stall every task
    /// queued behind it (an election's renewal among them).
    pub fn connect() -> Result<Netlink> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("vipd-netlink".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match rtnetlink::new_connection() {
                        Ok((conn, handle, _)) => {
                            let _ = tx.send(Ok(handle));
                            conn.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("the netlink thread ended"))??;
        Ok(Netlink {
            handle,
            dumping: Default::default(),
        })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.map(|m| link_from(&m))),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.map(|m| link_from(&m))),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every address of every interface.
    pub async fn addresses(&self) -> Result<Vec<KernelAddr>> {
        let msgs: Vec<AddressMessage> = {
            let _turn = self.dumping.lock().await;
            self.handle.address().get().execute().try_collect().await?
        };
        Ok(msgs.iter().filter_map(addr_from).collect())
    }

    /// Adds `addr/prefix` to `ifindex` as vipd's, or refreshes it when it is
    /// there already (`ip addr replace`). With `lifetime`, the kernel deletes
    /// the address that long after the last refresh.
    pub async fn put_address(
        &self,
        ifindex: u32,
        addr: IpAddr,
        prefix: u8,
        lifetime: Option<Duration>,
    ) -> Result<()> {
        let mut req = self.handle.address().add(ifindex, addr, prefix).replace();
        let msg = req.message_mut();
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                VIPD_ADDR_PROTO,
            )));
        if addr.is_ipv6() {
            // A VIP must work at once: no duplicate address detection.
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        if let Some(l) = lifetime {
            let secs = l.as_secs().max(1) as u32;
            let mut info = CacheInfo::default();
            info.ifa_preferred = secs;
            info.ifa_valid = secs;
            msg.attributes.push(AddressAttribute::CacheInfo(info));
        }
        req.execute().await?;
        Ok(())
    }

    /// Removes `addr/prefix` from `ifindex`; gone already is fine.
    pub async fn del_address(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = ifindex;
        msg.header.prefix_len = prefix;
        msg.header.family = if addr.is_ipv4() {
            rtnetlink::packet_route::AddressFamily::Inet
        } else {
            rtnetlink::packet_route::AddressFamily::Inet6
        };
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) || is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The kernel's address and link changes, as they happen.
pub fn kernel_events() -> Result<impl Stream<Item = KernelEvent> + Unpin + Send> {
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])?;
    tokio::spawn(conn);
    Ok(Box::pin(messages.filter_map(|(msg, _)| async move {
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                addr_from(&m).map(KernelEvent::AddressAdded)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                addr_from(&m).map(KernelEvent::AddressRemoved)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                Some(KernelEvent::LinkChanged(link_from(&m)))
            }
            _ => None,
        }
    })))
}

pub(crate) fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| -c.get()) == Some(errno))
}

fn link_from(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up) && m.header.flags.contains(LinkFlags::LowerUp),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(b);
                link.mac = Some(mac);
            }
            _ => {}
        }
    }
    link
}

pub(crate) fn addr_from(m: &AddressMessage) -> Option<KernelAddr> {
    // IFA_LOCAL is the address itself on point-to-point links; IFA_ADDRESS
    // otherwise. Prefer Local when both exist (they are equal on Ethernet).
    let mut addr = None;
    let mut ours = false;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            AddressAttribute::Protocol(p) => ours = u8::from(*p) == VIPD_ADDR_PROTO,
            _ => {}
        }
    }
    Some(KernelAddr {
        ifindex: m.header.index,
        addr: addr?,
        prefix: m.header.prefix_len,
        ours,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel runs one dump at a time per netlink socket and answers a
    /// second with EBUSY; vipd's tasks share one handle and read addresses
    /// at the same time (this read only looks at the test host's own
    /// addresses and sends nothing on any network).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_dumps_on_one_handle_all_succeed() {
        let nl = Netlink::connect().unwrap();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let nl = nl.clone();
            tasks.push(tokio::spawn(async move {
                nl.addresses().await.map(|_| ())?;
                nl.default_route_interface().await.map(|_| ())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
}
