//! Where gobgpd's gRPC API listens: a Unix socket in a private directory
//! (the default: with the host network, any pod on the node could reach a
//! TCP port on loopback and reconfigure vipd's BGP speaker), or a TCP
//! address for a gobgpd vipd does not run itself.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// gobgpd's gRPC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAddr {
    Tcp(SocketAddr),
    /// A Unix socket; its directory is made private (0700) before use.
    Unix(PathBuf),
}

/// The default: a socket only root in vipd's own container can reach.
pub const DEFAULT_SOCKET: &str = "/run/vipd/gobgpd.sock";

impl ApiAddr {
    /// `unix:///run/vipd/gobgpd.sock`, or `HOST:PORT`.
    pub fn parse(v: &str) -> Result<ApiAddr, String> {
        let v = v.trim();
        if let Some(path) = v.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(
                    "a unix:// address needs an absolute path, e.g. unix:///run/vipd/gobgpd.sock"
                        .into(),
                );
            }
            return Ok(ApiAddr::Unix(PathBuf::from(path)));
        }
        v.parse()
            .map(ApiAddr::Tcp)
            .map_err(|_| "expected unix:///PATH or HOST:PORT".into())
    }

    /// Makes the socket's directory exist and private, and removes a stale
    /// socket file (gobgpd cannot listen where one is left).
    pub fn prepare(&self) -> std::io::Result<()> {
        let ApiAddr::Unix(path) = self else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn socket(&self) -> Option<&Path> {
        match self {
            ApiAddr::Unix(p) => Some(p),
            ApiAddr::Tcp(_) => None,
        }
    }
}

impl Default for ApiAddr {
    fn default() -> Self {
        ApiAddr::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

impl fmt::Display for ApiAddr {
    /// As gobgpd's `--api-hosts` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiAddr::Tcp(a) => write!(f, "{a}"),
            ApiAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_prints_them_as_gobgpd_reads_them() {
        let u = ApiAddr::parse("unix:///run/vipd/gobgpd.sock").unwrap();
        assert_eq!(u, ApiAddr::default());
        assert_eq!(u.to_string(), "unix:///run/vipd/gobgpd.sock");
        let t = ApiAddr::parse("127.0.0.1:50051").unwrap();
        assert_eq!(t.to_string(), "127.0.0.1:50051");
        assert!(ApiAddr::parse("unix://relative.sock").is_err());
        assert!(ApiAddr::parse("localhost").is_err());
    }

    #[test]
    fn the_socket_directory_is_private() {
        let dir = std::env::temp_dir().join(format!("vipd-bgp-endpoint-{}", std::process::id()));
        let sock = dir.join("sub/gobgpd.sock");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        std::fs::set_permissions(
            sock.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(&sock, b"stale").unwrap();
        ApiAddr::Unix(sock.clone()).prepare().unwrap();
        let mode = std::fs::metadata(sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!sock.exists(), "the stale socket file is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
