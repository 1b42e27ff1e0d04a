//! BGP announcements through gobgpd, with no Kubernetes in it.
//!
//! - [`api`]: the GoBGP v4 gRPC client, generated at build time from the
//!   `.proto` files of the GoBGP module `gobgp/go.mod` pins;
//! - [`route`]: host routes and peers as GoBGP messages (pure, tested);
//! - [`speaker`]: turns "these prefixes, to these peers" into GoBGP calls,
//!   idempotently, and starts over when gobgpd was restarted;
//! - [`supervisor`]: runs vipd's own gobgpd (gRPC on a private Unix socket);
//! - [`endpoint`]: where that gRPC API is.

pub mod api {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("api");
}
pub mod endpoint;
pub mod route;
pub mod speaker;
pub mod supervisor;

pub use endpoint::ApiAddr;
pub use route::{Bfd, Password, PeerConfig, RouteAttrs};
pub use speaker::{GlobalConfig, PeerStatus, Speaker, SpeakerHandle};
