//! Peer addresses: `host:port` or `NODEID@host:port`.

use alloc::format;
use alloc::string::String;
use core::fmt;
use core::net::SocketAddr;
use core::str::FromStr;

use crate::identity::NodeId;

/// Where to dial a peer, and its node ID if known (from introduction or a
/// previous session): knowing it enables the 1-RTT and resumption paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// The peer's node ID, if known.
    pub id: Option<NodeId>,
    /// Its TCP address.
    pub addr: SocketAddr,
}

impl PeerAddr {
    /// An address with a known node ID.
    pub fn with_id(id: NodeId, addr: SocketAddr) -> Self {
        PeerAddr { id: Some(id), addr }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        PeerAddr { id: None, addr }
    }
}

/// An address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseAddrError(String);

impl fmt::Display for ParseAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid peer address: {}", self.0)
    }
}

impl core::error::Error for ParseAddrError {}

impl FromStr for PeerAddr {
    type Err = ParseAddrError;

    /// Parses `host:port`, `[v6]:port`, or either prefixed with `NODEID@`
    /// (64 hex digits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (
                Some(NodeId::from_hex(id).ok_or_else(|| ParseAddrError(format!("bad node id in {s}")))?),
                rest,
            ),
            None => (None, s),
        };
        let addr = rest.parse().map_err(|_| ParseAddrError(alloc::format!("bad socket address in {s}")))?;
        Ok(PeerAddr { id, addr })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "{id}@{}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    #[test]
    fn parses_both_forms() {
        let id = "11".repeat(32);
        let a: PeerAddr = format!("{id}@[::1]:30303").parse().unwrap();
        assert_eq!(a.id, NodeId::from_hex(&id));
        assert_eq!(a.addr, "[::1]:30303".parse().unwrap());
        let b: PeerAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(b.id, None);
        assert_eq!(b.to_string(), "127.0.0.1:1");
        assert!("zz@127.0.0.1:1".parse::<PeerAddr>().is_err());
        assert!("nonsense".parse::<PeerAddr>().is_err());
    }
}
