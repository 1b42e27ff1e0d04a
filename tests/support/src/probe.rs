//! What lab tests measure.
//!
//! - [`Responder`]: a TCP server on a host that answers every connection with
//!   the host's name, so a client learns which node holds a virtual IP.
//! - [`Prober`]: a client that connects to an address every few milliseconds
//!   and records who answered; [`Samples::longest_outage`] is the failover time.
//! - [`HolderSampler`]: reads every node's addresses from its kernel (netlink)
//!   every few milliseconds and records who holds an address, so a test can
//!   assert that two nodes never hold it at once.
//! - [`AnnouncementCapture`]: gratuitous ARPs and unsolicited NAs seen on a
//!   host's `eth0`, with the time each arrived.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use vipd_arp::Announcement;

use crate::lab::Host;

// ---------------------------------------------------------------- responder

/// Answers each TCP connection on `[::]:port` (IPv4 too) with its name.
pub struct Responder {
    stop: Arc<AtomicBool>,
    fd: i32,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn start(host: &Host, port: u16) -> Responder {
        let listener = host.ns.run(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_only_v6(false).expect("dual-stack");
            s.set_reuse_address(true).expect("reuseaddr");
            let addr: SocketAddr = format!("[::]:{port}").parse().unwrap();
            s.bind(&addr.into()).expect("bind responder");
            s.listen(128).expect("listen");
            TcpListener::from(s)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let fd = listener.as_raw_fd();
        let name = host.name.clone();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut c) = conn {
                    let _ = c.write_all(format!("{name}\n").as_bytes());
                }
            }
        });
        Responder {
            stop,
            fd,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutting down our own listening socket wakes accept().
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- prober

/// One probe: when it started and who answered (None: no answer in time).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub wall: SystemTime,
    pub answer: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The longest time between two answered probes with only failures in
    /// between, and the failures' window (from the last answer before to the
    /// first after). Zero when no probe failed.
    pub fn longest_outage(&self) -> Duration {
        let mut worst = Duration::ZERO;
        let mut last_ok: Option<Instant> = None;
        let mut failed = false;
        for s in &self.0 {
            match (&s.answer, last_ok) {
                (Some(_), Some(ok)) if failed => {
                    worst = worst.max(s.at - ok);
                    failed = false;
                    last_ok = Some(s.at);
                }
                (Some(_), _) => last_ok = Some(s.at),
                (None, _) => failed = true,
            }
        }
        worst
    }

    /// The first answer after `t`, and who gave it.
    pub fn first_answer_after(&self, t: Instant) -> Option<(Instant, String)> {
        self.0
            .iter()
            .find(|s| s.at >= t && s.answer.is_some())
            .map(|s| (s.at, s.answer.clone().unwrap()))
    }

    /// The first answer after `t` from someone other than `who`.
    pub fn first_answer_from_other_after(
        &self,
        t: Instant,
        who: &str,
    ) -> Option<(Instant, String)> {
        self.0
            .iter()
            .find(|s| s.at >= t && s.answer.as_deref().is_some_and(|a| a != who))
            .map(|s| (s.at, s.answer.clone().unwrap()))
    }

    /// True when the last probe was answered.
    pub fn ends_answered(&self) -> bool {
        self.0.last().is_some_and(|s| s.answer.is_some())
    }
}

/// Connects to `target` every `every` from a host; see [`Samples`].
pub struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

/// One connection attempt: who answered, if anyone did within `timeout`.
pub fn ask(target: SocketAddr, timeout: Duration) -> Option<String> {
    let mut c = TcpStream::connect_timeout(&target, timeout).ok()?;
    c.set_read_timeout(Some(timeout)).ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

impl Prober {
    pub fn start(from: &Host, target: SocketAddr, every: Duration) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let ns = std::fs::File::open(from.ns.path()).expect("netns file");
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let timeout = every.max(Duration::from_millis(50));
            while !stop2.load(Ordering::Relaxed) {
                let at = Instant::now();
                let wall = SystemTime::now();
                let answer = ask(target, timeout);
                samples2.lock().unwrap().push(Sample { at, wall, answer });
                if let Some(rest) = every.checked_sub(at.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        Prober {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// A copy of what was recorded so far.
    pub fn samples(&self) -> Samples {
        Samples(self.samples.lock().unwrap().clone())
    }

    /// Stops probing and returns every sample.
    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- holders

/// A netlink connection into one host's kernel.
pub struct NodeKernel {
    pub name: String,
    handle: rtnetlink::Handle,
}

impl NodeKernel {
    /// Opens a netlink socket inside `host` (call from within a runtime).
    pub fn open(host: &Host) -> NodeKernel {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = host.ns.run(|| {
            let _guard = rt.enter();
            rtnetlink::new_connection().expect("netlink socket")
        });
        tokio::spawn(conn);
        NodeKernel {
            name: host.name.clone(),
            handle,
        }
    }

    /// Whether `ip` is on any interface of the host.
    pub async fn holds(&self, ip: IpAddr) -> bool {
        let mut stream = self.handle.address().get().execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            if msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(x) if *x == ip))
            {
                return true;
            }
        }
        false
    }
}

impl NodeKernel {
    /// Every address on the host, and whether vipd added it (IFA_PROTO 86).
    pub async fn addresses(&self) -> Vec<(IpAddr, bool)> {
        let mut out = Vec::new();
        let mut stream = self.handle.address().get().execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            let mut addr = None;
            let mut ours = false;
            for a in &msg.attributes {
                match a {
                    AddressAttribute::Address(x) => addr = Some(*x),
                    AddressAttribute::Protocol(p) => ours = u8::from(*p) == 86,
                    _ => {}
                }
            }
            if let Some(a) = addr {
                out.push((a, ours));
            }
        }
        out
    }
}

/// Every address each node had, sampled until finished: which node ever
/// held which address, and whether vipd had added it.
pub struct AddressSampler {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<AddressHistory>>,
}

/// What an [`AddressSampler`] saw.
#[derive(Debug, Default, Clone)]
pub struct AddressHistory {
    pub samples: usize,
    /// (node, address, added by vipd) ever seen.
    pub seen: std::collections::BTreeSet<(String, IpAddr, bool)>,
}

impl AddressHistory {
    /// The nodes on which vipd ever added `ip`.
    pub fn vipd_added(&self, ip: IpAddr) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(_, a, ours)| *a == ip && *ours)
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    /// The nodes that ever had `ip`, by anyone's hand.
    pub fn holders(&self, ip: IpAddr) -> std::collections::BTreeSet<String> {
        self.seen
            .iter()
            .filter(|(_, a, _)| *a == ip)
            .map(|(n, _, _)| n.clone())
            .collect()
    }
}

impl AddressSampler {
    /// Starts sampling; call from within a runtime.
    pub fn start(nodes: &[&Host], every: Duration) -> AddressSampler {
        let kernels: Vec<NodeKernel> = nodes.iter().map(|h| NodeKernel::open(h)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut h = AddressHistory::default();
            let mut tick = tokio::time::interval(every);
            while !stop2.load(Ordering::Relaxed) {
                tick.tick().await;
                for k in &kernels {
                    for (a, ours) in k.addresses().await {
                        h.seen.insert((k.name.clone(), a, ours));
                    }
                }
                h.samples += 1;
            }
            h
        });
        AddressSampler {
            stop,
            task: Some(task),
        }
    }

    pub async fn finish(mut self) -> AddressHistory {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .take()
            .expect("running")
            .await
            .expect("sampler task")
    }
}

/// Who held an address at one instant.
#[derive(Debug, Clone)]
pub struct HolderSample {
    pub at: Instant,
    pub holders: Vec<String>,
}

/// Samples which nodes hold `ip`, every `every`, until finished.
pub struct HolderSampler {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<Vec<HolderSample>>>,
}

impl HolderSampler {
    /// Starts sampling; call from within a runtime.
    pub fn start(nodes: &[&Host], ip: IpAddr, every: Duration) -> HolderSampler {
        let kernels: Vec<NodeKernel> = nodes.iter().map(|h| NodeKernel::open(h)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(every);
            while !stop2.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = Instant::now();
                let mut holders = Vec::new();
                for k in &kernels {
                    if k.holds(ip).await {
                        holders.push(k.name.clone());
                    }
                }
                out.push(HolderSample { at, holders });
            }
            out
        });
        HolderSampler {
            stop,
            task: Some(task),
        }
    }

    pub async fn finish(mut self) -> Vec<HolderSample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .take()
            .expect("running")
            .await
            .expect("sampler task")
    }
}

/// The most nodes seen holding the address in one sample.
pub fn max_holders(samples: &[HolderSample]) -> usize {
    samples.iter().map(|s| s.holders.len()).max().unwrap_or(0)
}

// ---------------------------------------------------------------- capture

/// Announcements arriving on a host's `eth0`.
pub struct AnnouncementCapture {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(SystemTime, Announcement)>>>,
    thread: Option<JoinHandle<()>>,
}

impl AnnouncementCapture {
    pub fn start(host: &Host) -> AnnouncementCapture {
        let cap = host.ns.run(|| {
            let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
            vipd_arp::Capture::open(idx, Duration::from_millis(50)).expect("capture socket")
        });
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(Some(a)) = cap.next() {
                    seen2.lock().unwrap().push(a);
                }
            }
        });
        AnnouncementCapture {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<(SystemTime, Announcement)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for AnnouncementCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- ARP

/// Asks "who has X?" on a host's `eth0` and waits for the answer.
pub struct ArpProber {
    sender: vipd_arp::Sender,
    capture: vipd_arp::Capture,
    mac: vipd_arp::MacAddr,
    ip: std::net::Ipv4Addr,
}

impl ArpProber {
    pub fn open(host: &Host) -> ArpProber {
        let json =
            crate::netns::output("ip", &["-n", host.ns.name(), "-j", "link", "show", "eth0"])
                .expect("ip link");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        let mac: vipd_arp::MacAddr = v[0]["address"]
            .as_str()
            .expect("mac")
            .parse()
            .expect("mac parses");
        let (sender, capture) = host.ns.run(|| {
            let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
            (
                vipd_arp::Sender::open(idx).expect("raw socket"),
                vipd_arp::Capture::open(idx, Duration::from_millis(2)).expect("capture"),
            )
        });
        ArpProber {
            sender,
            capture,
            mac,
            ip: host.v4,
        }
    }

    /// The MAC that answers for `target` within `timeout`, if any.
    pub fn ask(&self, target: std::net::Ipv4Addr, timeout: Duration) -> Option<vipd_arp::MacAddr> {
        let frame = vipd_arp::build_arp_request(self.mac, self.ip, target);
        self.sender.send(&frame).ok()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some((_, a))) = self.capture.next_matching(vipd_arp::parse_arp_reply) {
                if a.ip == IpAddr::V4(target) {
                    return Some(a.mac);
                }
            }
        }
        None
    }
}

/// What every node's kernel showed while a node's addresses moved.
#[derive(Debug, Clone, Copy)]
pub struct Takeover {
    /// From `since` until the other nodes held every address.
    pub took: Option<Duration>,
    /// The most addresses on two nodes at once in one sample.
    pub most_doubled: usize,
    pub samples: usize,
}

/// Reads every kernel every 20 ms from now until the nodes other than
/// `dead` hold every one of `addrs` (or `limit` after `since` passed):
/// how long that took from `since`, and how many addresses were ever on
/// two nodes in one sample.
pub async fn takeover_in_kernels(
    kernels: &[NodeKernel],
    addrs: &std::collections::BTreeSet<IpAddr>,
    dead: &str,
    since: Instant,
    limit: Duration,
) -> Takeover {
    let mut t = Takeover {
        took: None,
        most_doubled: 0,
        samples: 0,
    };
    while since.elapsed() < limit {
        // Per address: on how many nodes, and on a node other than `dead`.
        let mut seen: std::collections::BTreeMap<IpAddr, (usize, bool)> = Default::default();
        // The survivors first, the dead node last: after its death it only
        // loses addresses, so one it still has when read last was there
        // while the survivors were read too. Read first, it could show an
        // address it dropped a millisecond later as doubled.
        let order = kernels
            .iter()
            .filter(|k| k.name != dead)
            .chain(kernels.iter().filter(|k| k.name == dead));
        for k in order {
            // One dump can list an address twice: the kernel resumes each
            // chunk of a dump at an index into the address list, and the
            // survivors add hundreds while they are read. Counted once per
            // node. The dead node only loses addresses, which can make a
            // dump skip one: it is read twice and both count.
            let mut listed: std::collections::BTreeSet<IpAddr> =
                k.addresses().await.into_iter().map(|(a, _)| a).collect();
            if k.name == dead {
                listed.extend(k.addresses().await.into_iter().map(|(a, _)| a));
            }
            for a in listed {
                if addrs.contains(&a) {
                    let e = seen.entry(a).or_default();
                    e.0 += 1;
                    e.1 |= k.name != dead;
                }
            }
        }
        t.samples += 1;
        t.most_doubled = t
            .most_doubled
            .max(seen.values().filter(|(n, _)| *n > 1).count());
        if seen.values().filter(|(_, other)| *other).count() == addrs.len() {
            t.took = Some(since.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t
}
