//! One vipd per node (per network namespace).
//!
//! Two vipd on one node would each take the other's addresses for stale
//! leftovers and remove them. vipd binds the abstract Unix socket `@vipd`
//! (abstract names live in the network namespace), so a second instance
//! stops at start with one clear line. Run the control-plane VIP and the
//! Services in one vipd (cp_enable and svc_enable together) instead.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use anyhow::{bail, Result};

/// Holds the node-wide lock for as long as it lives.
pub struct Singleton(#[allow(dead_code)] UnixListener);

/// Binds the abstract Unix socket `@name`: a lock held by this process,
/// within its network namespace, until the listener is dropped or the
/// process ends (however it ends).
pub fn bind_abstract(name: &[u8]) -> std::io::Result<UnixListener> {
    UnixListener::bind_addr(&SocketAddr::from_abstract_name(name)?)
}

pub fn acquire() -> Result<Singleton> {
    match bind_abstract(b"vipd") {
        Ok(l) => Ok(Singleton(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "another vipd already runs on this node: run one vipd per node, with cp_enable and svc_enable together if both are needed"
        ),
        Err(e) => bail!("cannot take the node-wide vipd lock: {e}"),
    }
}
