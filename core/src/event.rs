//! What the core tells the application and the runtime.

use alloc::vec::Vec;
use bytes::Bytes;

use crate::identity::NodeId;
use crate::ids::ConnectionId;
use crate::message::{Message, MessageBatch, UnsentMessage};
use crate::protocol::ProtocolId;
use crate::reason::DisconnectReason;

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This node dialled.
    Outbound,
    /// The peer dialled.
    Inbound,
}

/// The first-packet path a handshake took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HandshakePath {
    /// Full handshake with an unknown peer (Noise `XX`, 1.5 round trips).
    Full,
    /// First message encrypted to the peer's introduced static key (Noise `IK`, 1 round trip).
    Introduced,
    /// Resumption keyed by the previous session's secret (Noise `NNpsk0`, 1 round trip).
    Resumed,
}

/// An event for the application, returned by [`Node::poll_event`](crate::Node::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A handshake completed; the peer can be sent messages.
    PeerConnected {
        /// The peer.
        peer: NodeId,
        /// The connection it is reached over.
        connection: ConnectionId,
        /// Who dialled.
        direction: Direction,
        /// The remote address of the transport: where this node dialled,
        /// or where the peer connected from.
        addr: core::net::SocketAddr,
        /// The shared protocols, in channel order.
        protocols: Vec<ProtocolId>,
        /// The handshake path that succeeded.
        path: HandshakePath,
    },
    /// A complete message arrived.
    Message {
        /// Sender.
        peer: NodeId,
        /// The connection it arrived on (what [`Node::consume`](crate::Node::consume) takes).
        connection: ConnectionId,
        /// Protocol.
        protocol: ProtocolId,
        /// Message type within the protocol.
        msg_type: u32,
        /// Payload (shared with its record's other small messages, as
        /// [`Message::payload`]).
        payload: Bytes,
    },
    /// Several small messages of one peer on one protocol that arrived
    /// together (whole, in one record), in order: the same as that many
    /// [`Event::Message`]s, in one buffer. Every consumer of events must
    /// read these too; [`MessageBatch::into_messages`] turns one into
    /// [`Message`]s.
    Messages(MessageBatch),
    /// A connected peer went away. `unsent` holds every message that had
    /// not been completely handed to the transport, in send order.
    PeerDisconnected {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: DisconnectReason,
        /// True if the peer sent the reason; false if this node decided.
        remote: bool,
        /// Messages handed back to the application.
        unsent: Vec<UnsentMessage>,
    },
    /// A connection closed before its peer was accepted.
    ConnectionFailed {
        /// The connection.
        connection: ConnectionId,
        /// The node that was dialled, if it was named; for an inbound
        /// connection, the node that proved its key, if one did.
        peer: Option<NodeId>,
        /// The key the other side proved, if the handshake got that far.
        /// With [`DisconnectReason::WrongPeer`] it is the key that answered
        /// a dial naming another node: never handed out as `peer`.
        found: Option<NodeId>,
        /// Why.
        reason: DisconnectReason,
    },
    /// A handshake attempt failed and was retried with less prior knowledge;
    /// the knowledge that failed has been dropped.
    HandshakeDowngraded {
        /// The connection.
        connection: ConnectionId,
        /// The node that was dialled.
        peer: NodeId,
        /// The path that failed.
        from: HandshakePath,
        /// The path now tried.
        to: HandshakePath,
    },
}

impl From<Message> for Event {
    #[inline]
    fn from(m: Message) -> Self {
        Event::Message {
            peer: m.peer,
            connection: m.connection,
            protocol: m.protocol,
            msg_type: m.msg_type,
            payload: m.payload,
        }
    }
}

/// The message an [`Event::Message`] carries; any other event is handed
/// back as the error.
impl TryFrom<Event> for Message {
    type Error = Event;

    #[inline]
    fn try_from(ev: Event) -> Result<Self, Event> {
        match ev {
            Event::Message { peer, connection, protocol, msg_type, payload } => {
                Ok(Message { peer, connection, protocol, msg_type, payload })
            }
            ev => Err(ev),
        }
    }
}

/// The messages an event delivers (see [`Event::delivered`]): what
/// [`Node::consume`](crate::Node::consume) takes once the application is
/// done with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The connection they arrived on.
    pub connection: ConnectionId,
    /// Their protocol.
    pub protocol: ProtocolId,
    /// How many messages.
    pub messages: u64,
    /// Their payload bytes in all.
    pub bytes: u64,
}

impl Event {
    /// The messages this event delivers, if it delivers any
    /// ([`Event::Message`] and [`Event::Messages`] do).
    pub fn delivered(&self) -> Option<Delivered> {
        match self {
            Event::Message { connection, protocol, payload, .. } => Some(Delivered {
                connection: *connection,
                protocol: *protocol,
                messages: 1,
                bytes: payload.len() as u64,
            }),
            Event::Messages(b) => Some(Delivered {
                connection: b.connection,
                protocol: b.protocol,
                messages: b.len() as u64,
                bytes: b.payload_bytes() as u64,
            }),
            _ => None,
        }
    }
}
