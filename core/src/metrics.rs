//! Per-peer, per-protocol counters, read as a snapshot with
//! [`Node::metrics`](crate::Node::metrics).

use alloc::vec::Vec;
use core::time::Duration;

use crate::identity::NodeId;
use crate::protocol::ProtocolId;

/// Traffic of one protocol with one peer since the connection was established.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolMetrics {
    /// The local protocol.
    pub protocol: ProtocolId,
    /// Messages received completely.
    pub messages_in: u64,
    /// Payload bytes of those messages.
    pub bytes_in: u64,
    /// Messages written completely into records.
    pub messages_out: u64,
    /// Payload bytes written into records.
    pub bytes_out: u64,
    /// Messages waiting in this protocol's send queue.
    pub queued_messages: usize,
    /// Payload bytes waiting in this protocol's send queue.
    pub queued_bytes: usize,
    /// Flow-control credit the peer has left us for this protocol (payload
    /// bytes plus 16 per message; negative after a message larger than the
    /// peer's window; `i64::MAX` if the peer does no flow control).
    pub send_credit: i64,
    /// Flow-control cost of messages received on this protocol that the
    /// application has not consumed yet (what this node holds for it).
    pub unconsumed: u64,
}

/// A snapshot of one connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMetrics {
    /// The peer.
    pub peer: NodeId,
    /// The last keepalive round-trip time.
    pub rtt: Option<Duration>,
    /// One entry per shared protocol, in channel order.
    pub protocols: Vec<ProtocolMetrics>,
}
