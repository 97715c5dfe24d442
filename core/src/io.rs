//! The I/O the core asks its runtime to perform besides writing stream
//! bytes: transports to open (dials the core decided) and datagrams to
//! send. See [`Node`](crate::Node) for the whole contract.

use core::net::SocketAddr;

use crate::ids::ConnectionId;

/// A transport the runtime must open, from [`Node::poll_dial`](crate::Node::poll_dial).
///
/// The runtime connects to `addr` and answers with
/// [`Node::handle_connected`](crate::Node::handle_connected) once the
/// transport is open, or [`Node::handle_dial_failed`](crate::Node::handle_dial_failed)
/// if it could not be opened. If the connection appears in
/// [`poll_close`](crate::Node::poll_close) first (the handshake timeout
/// passed, or the node shut down), the runtime abandons the attempt and
/// closes the transport should it open after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Dial {
    /// The connection the transport is for: the runtime's handle for it
    /// from now on.
    pub connection: ConnectionId,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// An address for harnesses that wire nodes together by hand (TEST-NET-1,
/// RFC 5737: never routed).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) const TEST_ADDR: SocketAddr =
    SocketAddr::V4(core::net::SocketAddrV4::new(core::net::Ipv4Addr::new(192, 0, 2, 1), 30303));
