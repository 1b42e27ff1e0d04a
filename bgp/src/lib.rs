//! BGP announcements through gobgpd, with no Kubernetes in it.
//!
//! - [`api`]: the GoBGP gRPC client, generated at build time from GoBGP's
//!   own `.proto` files (Debian's golang-github-osrg-gobgp-dev);
//! - [`route`]: host routes and peers as GoBGP messages (pure, tested);
//! - [`speaker`]: turns "these prefixes, to these peers" into GoBGP calls,
//!   idempotently, and starts over when gobgpd was restarted;
//! - [`supervisor`]: runs vipd's own gobgpd (gRPC on a private Unix socket);
//! - [`endpoint`]: where that gRPC API is.

pub mod api {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("apipb");
}
pub mod endpoint;
pub mod route;
pub mod speaker;
pub mod supervisor;

pub use endpoint::ApiAddr;
pub use route::{Password, PeerConfig, RouteAttrs};
pub use speaker::{GlobalConfig, PeerStatus, Speaker, SpeakerHandle};
