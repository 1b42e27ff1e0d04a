//! The one owner of "which virtual addresses are on this node".
//!
//! Elections and the Services controller never touch the kernel: they
//! *claim* addresses here, each source replacing its own claims, optionally
//! only until an instant (a leader's renew deadline). The owner converges the
//! kernel to the claims and announces what it adds:
//!
//! - claimed and missing: added (marked as vipd's, with a kernel lifetime it
//!   keeps refreshing) and announced at once;
//! - ours and not claimed, or claimed past its deadline: removed, even if the
//!   source never said so (fencing does not depend on the election task);
//! - removed by someone else while claimed: added back and announced again;
//! - not ours: never removed.
//!
//! At start the owner removes every address a previous vipd left behind.

mod claims;
mod conflict;
mod converge;
mod owner;
mod plan;
mod probe;
mod readiness;
mod refresh;
mod yielding;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};
use vipd_arp::Schedule;

pub use conflict::Conflict;
pub use readiness::{NotReady, Readiness};
pub use refresh::Lifetimes;

use owner::Owner;

/// Netlink requests the owner keeps in flight at once: the kernel's
/// answers must fit the socket's receive buffer.
const NETLINK_IN_FLIGHT: usize = 64;
pub use plan::{plan, refuse_foreign, to_probe, wanted, yields_to_another, ClaimSet, Plan, Want};

use crate::announce::{AnnounceStats, Announcers};
use crate::config::Announce;
use crate::guardian::Guardian;
use crate::netlink::{kernel_events, KernelAddr, KernelEvent, Link, Netlink, NetlinkError};

/// Who claims an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Source {
    ControlPlane,
    /// Service addresses announced under the Services leader's Lease.
    ServicesLeader,
    /// One Service address announced under a Lease of its own.
    ServiceAddress(IpAddr),
    /// Service addresses this node announces by BGP (no election).
    ServicesBgp,
    /// Service addresses placed on this node (`svc_placement`), under its
    /// liveness Lease.
    ServicesPlaced,
}

/// One address a source wants on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub addr: IpAddr,
    pub prefix: u8,
    pub interface: String,
    /// Communities and local preference when announced by BGP.
    pub route: vipd_bgp::RouteAttrs,
    /// With a probing source: added only once no other host answers for
    /// it, however long that takes (never after `probe::patience`): the
    /// host it comes from may still be alive.
    pub until_silent: bool,
}

/// An address this node holds now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeldAddr {
    pub addr: IpAddr,
    pub interface: String,
    pub since: SystemTime,
    /// False when someone else configured it (vipd announces it but will
    /// never remove it).
    pub ours: bool,
}

/// What the owner holds, published after every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    pub addresses: BTreeMap<IpAddr, HeldAddr>,
    /// The BGP attributes of the addresses claimed now, where they are
    /// not the defaults (ARP mode: none).
    pub routes: BTreeMap<IpAddr, vipd_bgp::RouteAttrs>,
    /// Watched addresses (the VIPs) on this node although nobody here
    /// claims them: somebody configured them by hand, or a split brain.
    pub stray: BTreeSet<IpAddr>,
    /// Addresses claimed for Services that this node refuses to hold (the
    /// node has them already and vipd did not add them), with why.
    pub refused: BTreeMap<IpAddr, String>,
    /// Claimed addresses let go because another node announced them while
    /// this node could not confirm its claim (the API server out of
    /// reach), with what was seen.
    pub yielded: BTreeMap<IpAddr, String>,
    /// Claimed addresses not added yet because another host may still hold
    /// them (see `plan::to_probe`), with what was heard.
    pub probing: BTreeMap<IpAddr, String>,
    /// Whether every claimed address is really here, with every gap on record.
    pub readiness: Readiness,
}

/// How the owner works.
#[derive(Debug, Clone)]
pub struct OwnerConfig {
    pub announce: Announce,
    pub arp_rate: Duration,
    /// Kernel lifetimes of added addresses, by who claims them.
    pub lifetimes: Lifetimes,
    /// Addresses to report as stray when present unclaimed (the VIPs).
    pub watch: Vec<IpAddr>,
    /// Run the guardian process (see `guardian`).
    pub guardian: bool,
}

pub(super) enum Command {
    Set {
        source: Source,
        set: ClaimSet,
        done: oneshot::Sender<()>,
    },
    /// An election's grant: `source` may hold addresses until `hold_until`;
    /// its earlier claims are withdrawn. Answers the term.
    Grant {
        source: Source,
        hold_until: Instant,
        probe_first: bool,
        drop_on_death: bool,
        done: oneshot::Sender<u64>,
    },
    /// The addresses of a granted source, decided in `term`. Answers
    /// whether they were taken (false: that term is over).
    SetGranted {
        source: Source,
        term: u64,
        claims: Vec<Claim>,
        done: oneshot::Sender<bool>,
    },
    Extend {
        source: Source,
        hold_until: Instant,
        /// False: holding on without a renewed Lease (see `ClaimSet`).
        confirmed: bool,
    },
    ReleaseAll {
        done: oneshot::Sender<()>,
    },
}

/// The handle sources use; cheap to clone.
#[derive(Clone)]
pub struct VipHandle {
    tx: mpsc::UnboundedSender<Command>,
    held: watch::Receiver<Held>,
    stats: Arc<AnnounceStats>,
}

/// How many announcements the owner's announcers sent, as of now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnnounceCounts {
    pub sent: u64,
    /// Conflict probes sent while holding without a renewed Lease.
    pub probes: u64,
    pub errors: u64,
}

impl VipHandle {
    /// Replaces `source`'s claims; returns once the kernel has converged.
    pub async fn set(&self, source: Source, claims: Vec<Claim>, hold_until: Option<Instant>) {
        self.claim(source, claims, hold_until, false).await
    }

    /// [`VipHandle::set`]; with `probe_first`, an address is added only once
    /// no other host answers for it (see `plan::to_probe`). Returns once
    /// the kernel has converged or the addresses are being checked.
    pub async fn claim(
        &self,
        source: Source,
        claims: Vec<Claim>,
        hold_until: Option<Instant>,
        probe_first: bool,
    ) {
        let (done, wait) = oneshot::channel();
        let set = ClaimSet {
            claims,
            hold_until,
            confirmed: true,
            probe_first,
            term: None,
            drop_on_death: false,
        };
        if self.tx.send(Command::Set { source, set, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// An election grants `source` the right to hold addresses until
    /// `hold_until` (renewed with [`VipHandle::extend`], ended with
    /// [`VipHandle::release`]); whatever it held before is withdrawn. The
    /// addresses themselves come from [`VipHandle::claim_granted`], so the
    /// election and the code deciding the addresses each write one thing.
    /// Returns the term the addresses must be claimed in.
    /// With `drop_on_death`, the guardian removes the addresses the
    /// moment vipd dies rather than at the deadline (others take over at
    /// once).
    pub async fn grant(
        &self,
        source: Source,
        hold_until: Instant,
        probe_first: bool,
        drop_on_death: bool,
    ) -> u64 {
        let (done, wait) = oneshot::channel();
        let cmd = Command::Grant {
            source,
            hold_until,
            probe_first,
            drop_on_death,
            done,
        };
        if self.tx.send(cmd).is_ok() {
            if let Ok(term) = wait.await {
                return term;
            }
        }
        0
    }

    /// Holds exactly `claims` for `source` under its grant of `term`;
    /// returns false, holding nothing new, when that grant has ended (the
    /// lead was lost, or lost and won again, since the list was decided).
    /// Returns once the kernel has converged.
    pub async fn claim_granted(&self, source: Source, term: u64, claims: Vec<Claim>) -> bool {
        let (done, wait) = oneshot::channel();
        let cmd = Command::SetGranted {
            source,
            term,
            claims,
            done,
        };
        self.tx.send(cmd).is_ok() && wait.await.unwrap_or(false)
    }

    /// Withdraws every claim of `source` (and its grant); returns once removed.
    pub async fn release(&self, source: Source) {
        self.set(source, Vec::new(), None).await
    }

    /// Moves `source`'s deadline (a renewed lease).
    pub fn extend(&self, source: Source, hold_until: Instant) {
        let _ = self.tx.send(Command::Extend {
            source,
            hold_until,
            confirmed: true,
        });
    }

    /// Moves `source`'s deadline without a renewed lease (the API server is
    /// out of reach): the addresses stay unless another node announces them.
    pub fn hold_unconfirmed(&self, source: Source, hold_until: Instant) {
        let _ = self.tx.send(Command::Extend {
            source,
            hold_until,
            confirmed: false,
        });
    }

    /// Removes every address (shutdown); returns once removed.
    pub async fn release_all(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::ReleaseAll { done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// What the node holds, its readiness included, after every change.
    pub fn held(&self) -> watch::Receiver<Held> {
        self.held.clone()
    }

    /// The announcers' counters.
    pub fn counts(&self) -> AnnounceCounts {
        AnnounceCounts {
            sent: self.stats.sent.load(Ordering::Relaxed),
            probes: self.stats.probes.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
        }
    }
}

/// Starts the owner: removes leftovers of a previous run, then serves claims.
pub async fn start(netlink: Netlink, config: OwnerConfig) -> Result<VipHandle, NetlinkError> {
    let events = kernel_events()?;
    let stats = Arc::new(AnnounceStats::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let (conflict_tx, conflict_rx) = mpsc::unbounded_channel();
    let (probe_tx, probe_rx) = mpsc::unbounded_channel();
    let (held_tx, held_rx) = watch::channel(Held::default());
    let guardian = if config.guardian {
        if !crate::guardian::wait_for_previous(Duration::from_secs(10)) {
            warn!("the guardian of a previous vipd is still running after 10 s");
        }
        match Guardian::spawn() {
            Ok(g) => Some(g),
            Err(e) => {
                warn!(error = %e, "cannot start the guardian; addresses rely on their kernel lifetime alone");
                None
            }
        }
    } else {
        None
    };
    let mut owner = Owner {
        guardian,
        netlink,
        config,
        claims: BTreeMap::new(),
        have: Vec::new(),
        links: HashMap::new(),
        announcers: Announcers::start(stats.clone()),
        since: HashMap::new(),
        stats: stats.clone(),
        held: held_tx,
        readiness: Readiness::new(),
        next_term: 0,
        yielded: BTreeMap::new(),
        held_set: Default::default(),
        conflict_tx,
        watched_links: HashSet::new(),
        probes: HashMap::new(),
        cleared: HashSet::new(),
        refreshed: HashMap::new(),
        drops_stale: true,
        probe_tx,
        senders: HashMap::new(),
        retry_at: None,
        commands: rx,
        deferred: Default::default(),
    };
    owner.refresh_kernel_view().await?;
    let stale: Vec<KernelAddr> = owner.have.iter().filter(|k| k.ours).copied().collect();
    for k in stale {
        info!(addr = %k.addr, "removing an address a previous vipd left behind");
        if let Err(e) = owner.netlink.del_address(k.ifindex, k.addr, k.prefix).await {
            warn!(addr = %k.addr, error = %e, "cannot remove stale address");
        }
    }
    owner.refresh_kernel_view().await?;
    tokio::spawn(owner.run(conflict_rx, probe_rx, events));
    Ok(VipHandle {
        tx,
        held: held_rx,
        stats,
    })
}
