//! vipd: virtual IPs for Kubernetes, held by one elected node and announced
//! to the network.
//!
//! The flow of an event, top to bottom:
//! - [`config`]: what the operator asked for, checked once.
//! - [`election`]: who should hold the control-plane VIP (a Lease).
//! - [`vips`]: the one owner of "which addresses are on this node"; it
//!   converges the kernel ([`netlink`]) and the wire ([`announce`]) to the
//!   claims elections make.
//! - [`manager`]: wires them together for `vipd manager`.
//! - [`manifest`]: the YAML `vipd manifest` prints.

pub mod announce;
pub mod bgp;
pub mod config;
pub mod controlplane;
pub mod election;
pub mod error_chain;
pub mod events;
pub mod guardian;
pub mod health;
pub mod http_client;
pub mod init;
pub mod instance;
pub mod kubeclient;
pub mod manager;
pub mod manifest;
pub mod memory;
pub mod netlink;
pub mod priority;
pub mod services;
pub mod shutdown;
pub mod singleton;
pub mod stamped;
pub mod status;
pub mod vipctl;
pub mod vips;
