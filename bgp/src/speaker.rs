//! The speaker: keeps gobgpd announcing exactly the wanted host routes to
//! exactly the configured peers.
//!
//! It compares what it wants with what it has configured and makes only the
//! difference (idempotent). When gobgpd is new (started, or restarted by the
//! supervisor) it starts BGP and configures everything again. On shutdown it
//! withdraws every route before returning, so peers learn at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::api::go_bgp_service_client::GoBgpServiceClient as GobgpApiClient;
use crate::api::{self, peer_state::SessionState};
use crate::route::{family_of, host_path, peer, PeerConfig, RouteAttrs};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
}

/// A peer's session as gobgpd reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    pub state: String,
    pub established: bool,
    pub prefixes_sent: u64,
    /// The BFD session's state (`up`, `down`, `init`, `admin_down`), when
    /// BFD runs on this session.
    pub bfd: Option<String>,
}

/// What the speaker has achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeakerStatus {
    pub connected: bool,
    pub peers: Vec<PeerStatus>,
    /// Routes in gobgpd's table now.
    pub announced: BTreeSet<IpAddr>,
}

pub type Routes = BTreeMap<IpAddr, RouteAttrs>;

/// The speaker's configuration.
pub struct Speaker {
    /// gobgpd's gRPC address.
    pub api: crate::ApiAddr,
    pub global: GlobalConfig,
    pub peers: Vec<PeerConfig>,
}

/// How the rest of vipd talks to the speaker.
#[derive(Clone)]
pub struct SpeakerHandle {
    routes: watch::Sender<Routes>,
    status: watch::Receiver<SpeakerStatus>,
    stop: tokio::sync::mpsc::Sender<oneshot::Sender<()>>,
}

impl SpeakerHandle {
    /// Announces exactly `routes` (withdraws the rest).
    pub fn set_routes(&self, routes: Routes) {
        self.routes.send_if_modified(|r| {
            if *r != routes {
                *r = routes;
                true
            } else {
                false
            }
        });
    }

    pub fn status(&self) -> watch::Receiver<SpeakerStatus> {
        self.status.clone()
    }

    /// Withdraws everything and stops (waits at most `timeout`).
    pub async fn stop(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.stop.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }
}

impl Speaker {
    pub fn spawn(self) -> SpeakerHandle {
        let (routes_tx, routes_rx) = watch::channel(Routes::new());
        let (status_tx, status_rx) = watch::channel(SpeakerStatus::default());
        let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(self.run(routes_rx, status_tx, stop_rx));
        SpeakerHandle {
            routes: routes_tx,
            status: status_rx,
            stop: stop_tx,
        }
    }

    async fn run(
        self,
        mut routes: watch::Receiver<Routes>,
        status: watch::Sender<SpeakerStatus>,
        mut stop: tokio::sync::mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut state = State::default();
        loop {
            let client = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "gobgpd not reachable yet");
                    status.send_modify(|s| s.connected = false);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(300)) => continue,
                        done = stop.recv() => { if let Some(d) = done { let _ = d.send(()); } return; }
                    }
                }
            };
            let mut client = client;
            // What we configured belongs to that gobgpd; a new connection
            // checks whether it is still the same one.
            let result: Result<Option<oneshot::Sender<()>>, tonic::Status> = async {
                loop {
                    self.ensure_started(&mut client, &mut state).await?;
                    self.sync_peers(&mut client, &mut state).await?;
                    let want = routes.borrow_and_update().clone();
                    self.sync_routes(&mut client, &mut state, &want).await?;
                    let peers = self.peer_status(&mut client).await?;
                    status.send_if_modified(|s| {
                        let new = SpeakerStatus {
                            connected: true,
                            peers,
                            announced: state.announced.keys().copied().collect(),
                        };
                        if *s != new {
                            *s = new;
                            true
                        } else {
                            false
                        }
                    });
                    tokio::select! {
                        _ = routes.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        done = stop.recv() => {
                            self.sync_routes(&mut client, &mut state, &Routes::new()).await?;
                            return Ok(done);
                        }
                    }
                }
            }
            .await;
            match result {
                Ok(done) => {
                    info!("BGP routes withdrawn");
                    if let Some(d) = done {
                        let _ = d.send(());
                    }
                    return;
                }
                Err(e) => {
                    warn!(error = %e.message(), "gobgpd call failed; reconnecting");
                    status.send_modify(|s| s.connected = false);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    async fn connect(&self) -> Result<GobgpApiClient<Channel>, tonic::transport::Error> {
        let (uri, socket) = match &self.api {
            crate::ApiAddr::Tcp(a) => (format!("http://{a}"), None),
            // The authority is unused: the connector dials the socket.
            crate::ApiAddr::Unix(p) => ("http://gobgpd".to_string(), Some(p.clone())),
        };
        let endpoint = Endpoint::from_shared(uri)?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5));
        let ch = match socket {
            None => endpoint.connect().await?,
            Some(path) => {
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    }))
                    .await?
            }
        };
        Ok(GobgpApiClient::new(ch))
    }

    /// Starts BGP on a gobgpd that is not running it yet (new or restarted).
    async fn ensure_started(
        &self,
        c: &mut GobgpApiClient<Channel>,
        st: &mut State,
    ) -> Result<(), tonic::Status> {
        let g = c
            .get_bgp(api::GetBgpRequest {})
            .await?
            .into_inner()
            .global
            .unwrap_or_default();
        if g.asn != 0 {
            return Ok(());
        }
        if st.started {
            warn!("gobgpd was restarted: configuring BGP again");
        }
        *st = State::default();
        c.start_bgp(api::StartBgpRequest {
            global: Some(api::Global {
                asn: self.global.asn,
                router_id: self.global.router_id.to_string(),
                // Outbound sessions only: nothing listens on port 179.
                listen_port: -1,
                ..Default::default()
            }),
        })
        .await?;
        st.started = true;
        info!(asn = self.global.asn, router_id = %self.global.router_id, "BGP started in gobgpd");
        Ok(())
    }

    async fn sync_peers(
        &self,
        c: &mut GobgpApiClient<Channel>,
        st: &mut State,
    ) -> Result<(), tonic::Status> {
        let want: BTreeMap<IpAddr, &PeerConfig> =
            self.peers.iter().map(|p| (p.address, p)).collect();
        let stale: Vec<IpAddr> = st
            .peers
            .iter()
            .filter(|(a, cfg)| want.get(a).is_none_or(|w| *w != *cfg))
            .map(|(a, _)| *a)
            .collect();
        for a in stale {
            c.delete_peer(api::DeletePeerRequest {
                address: a.to_string(),
                interface: String::new(),
            })
            .await?;
            st.peers.remove(&a);
        }
        for (a, p) in want {
            if st.peers.contains_key(&a) {
                continue;
            }
            match c
                .add_peer(api::AddPeerRequest {
                    peer: Some(peer(p, self.global.asn)),
                })
                .await
            {
                Ok(_) => {}
                // Configured by an earlier connection to the same gobgpd.
                Err(s) if s.message().contains("already exists") => {}
                Err(s) => return Err(s),
            }
            info!(peer = %a, asn = p.asn, "BGP peer configured");
            st.peers.insert(a, p.clone());
        }
        Ok(())
    }

    async fn sync_routes(
        &self,
        c: &mut GobgpApiClient<Channel>,
        st: &mut State,
        want: &Routes,
    ) -> Result<(), tonic::Status> {
        let gone: Vec<IpAddr> = st
            .announced
            .keys()
            .filter(|a| !want.contains_key(a))
            .copied()
            .collect();
        for a in gone {
            if let Some((_, uuid)) = st.announced.remove(&a) {
                c.delete_path(api::DeletePathRequest {
                    table_type: api::TableType::Global as i32,
                    family: Some(family_of(a)),
                    uuid,
                    ..Default::default()
                })
                .await?;
                info!(route = %a, "BGP route withdrawn");
            }
        }
        for (a, attrs) in want {
            if st.announced.get(a).is_some_and(|(have, _)| have == attrs) {
                continue;
            }
            let r = c
                .add_path(api::AddPathRequest {
                    table_type: api::TableType::Global as i32,
                    path: Some(host_path(*a, attrs)),
                    ..Default::default()
                })
                .await?
                .into_inner();
            info!(route = %a, "BGP route announced");
            st.announced.insert(*a, (attrs.clone(), r.uuid));
        }
        Ok(())
    }

    async fn peer_status(
        &self,
        c: &mut GobgpApiClient<Channel>,
    ) -> Result<Vec<PeerStatus>, tonic::Status> {
        let mut stream = c
            .list_peer(api::ListPeerRequest {
                address: String::new(),
                enable_advertised: true,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream.message().await? {
            let Some(p) = r.peer else { continue };
            let Some(state) = p.state else { continue };
            let Ok(address) = state.neighbor_address.parse() else {
                continue;
            };
            let session =
                SessionState::try_from(state.session_state).unwrap_or(SessionState::Unspecified);
            let bfd = p.bfd.as_ref().filter(|b| b.enabled).map(|_| {
                let s = state
                    .bfd_state
                    .as_ref()
                    .and_then(|b| api::BfdSessionState::try_from(b.session_state).ok())
                    .unwrap_or(api::BfdSessionState::Unspecified);
                short_name(s.as_str_name(), "BFD_SESSION_STATE_")
            });
            let sent = p
                .afi_safis
                .iter()
                .filter_map(|a| a.state.as_ref())
                .map(|s| s.advertised)
                .sum();
            out.push(PeerStatus {
                address,
                asn: state.peer_asn,
                state: short_name(session.as_str_name(), "SESSION_STATE_"),
                established: session == SessionState::Established,
                prefixes_sent: sent,
                bfd,
            });
        }
        out.sort_by_key(|p| p.address);
        Ok(out)
    }
}

/// `SESSION_STATE_ESTABLISHED` -> `established`.
fn short_name(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_ascii_lowercase()
}

/// What this speaker configured in the gobgpd it talks to.
#[derive(Default)]
struct State {
    started: bool,
    peers: BTreeMap<IpAddr, PeerConfig>,
    /// Announced routes and their gobgpd path ids.
    announced: BTreeMap<IpAddr, (RouteAttrs, Vec<u8>)>,
}
