//! Errors returned to the caller of the core's commands.

use alloc::vec::Vec;
use core::fmt;

use bytes::Bytes;

/// Why [`Node::send`](crate::Node::send) refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No established connection to that peer.
    NotConnected,
    /// The peer does not speak that protocol.
    ProtocolNotShared,
    /// The message type is outside the protocol's `message_count`.
    UnknownMessageType,
    /// The payload exceeds the peer's maximum message size.
    MessageTooLarge,
    /// The per-peer or per-node send queue is full: retry after the peer
    /// has drained (after `poll_transmit`/`handle_written`).
    QueueFull,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::NotConnected => "peer not connected",
            SendError::ProtocolNotShared => "peer does not speak that protocol",
            SendError::UnknownMessageType => "message type not defined by the protocol",
            SendError::MessageTooLarge => "message larger than the peer accepts",
            SendError::QueueFull => "send queue full",
        })
    }
}

/// A batch of messages (see [`Waiters::send_batch`](crate::Waiters::send_batch))
/// that was refused from some message on: that message and those after it
/// come back, in order, as `(msg_type, payload)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// Why the first unsent message was refused.
    pub error: SendError,
    /// The messages not sent, in order.
    pub unsent: Vec<(u32, Bytes)>,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} messages not sent)", self.error, self.unsent.len())
    }
}

impl core::error::Error for BatchError {}

/// Why a new connection was refused by [`Node::dial`](crate::Node::dial)
/// or [`Node::accept`](crate::Node::accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The node is at `max_connections`.
    TooManyConnections,
    /// The node is at `max_handshaking`.
    TooManyHandshakes,
    /// Dialling this node's own ID.
    SelfConnect,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectError::TooManyConnections => "too many connections",
            ConnectError::TooManyHandshakes => "too many handshakes in progress",
            ConnectError::SelfConnect => "cannot connect to self",
        })
    }
}

impl core::error::Error for SendError {}

impl core::error::Error for ConnectError {}
