//! Why a connection ended: the reason codes carried by the `DISCONNECT`
//! control message and the handshake `REJECT` frame (SPEC.md "Reason codes").

use core::fmt;

/// The reason a connection was closed.
///
/// Codes 0 to 253 travel on the wire; `Unreachable` (254) and
/// `TransportClosed` (255) describe what this node saw and are sent as
/// `Requested` if an application passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The application asked to disconnect (code 0).
    Requested,
    /// The node is shutting down (code 1).
    Shutdown,
    /// The peer sent a malformed frame, record, chunk or control message (code 2).
    ProtocolViolation,
    /// A record failed to authenticate: wrong key, corruption, replay or reordering (code 3).
    DecryptFailed,
    /// The two nodes share no sub-protocol (code 4).
    NoSharedProtocols,
    /// The peer speaks another wire version (code 5).
    IncompatibleVersion,
    /// Nothing was received for the idle timeout (code 6).
    IdleTimeout,
    /// The handshake did not complete in time (code 7).
    HandshakeTimeout,
    /// Another connection to the same peer won the tie-break (code 8).
    DuplicateConnection,
    /// The node is at its connection limit (code 9).
    TooManyConnections,
    /// A message exceeded the receiver's maximum message size (code 10).
    MessageTooLarge,
    /// The handshake failed to authenticate or was malformed (code 11).
    HandshakeFailed,
    /// A message used a channel or message type that was not negotiated (code 12).
    UnknownMessageType,
    /// The peer exceeded a memory limit (reassembly buffers) (code 13).
    ResourceLimit,
    /// The peer sent more than its flow-control credit allowed, or granted
    /// more credit than can be counted (code 14).
    FlowControlViolation,
    /// The initiator dialled another node ID than the key the responder
    /// proved: the connection is refused, not handed out as that node
    /// (code 15).
    WrongPeer,
    /// The transport could not be opened: the dialled address did not
    /// answer or refused (code 254, never sent).
    Unreachable,
    /// The transport was closed or reset without a `DISCONNECT` (never sent).
    TransportClosed,
    /// A code this implementation does not know.
    Unknown(u8),
}

impl DisconnectReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        use DisconnectReason::*;
        match self {
            Requested => 0,
            Shutdown => 1,
            ProtocolViolation => 2,
            DecryptFailed => 3,
            NoSharedProtocols => 4,
            IncompatibleVersion => 5,
            IdleTimeout => 6,
            HandshakeTimeout => 7,
            DuplicateConnection => 8,
            TooManyConnections => 9,
            MessageTooLarge => 10,
            HandshakeFailed => 11,
            UnknownMessageType => 12,
            ResourceLimit => 13,
            FlowControlViolation => 14,
            WrongPeer => 15,
            Unreachable => 254,
            TransportClosed => 255,
            Unknown(c) => c,
        }
    }

    /// The reason as sent to the peer: local-only reasons become `Requested`.
    pub fn on_wire(self) -> Self {
        match self {
            // `Unknown(254 | 255)` is never decoded, but an application may build it.
            DisconnectReason::TransportClosed
            | DisconnectReason::Unreachable
            | DisconnectReason::Unknown(254 | 255) => DisconnectReason::Requested,
            r => r,
        }
    }

    /// The reason for a wire code.
    pub fn from_code(code: u8) -> Self {
        use DisconnectReason::*;
        match code {
            0 => Requested,
            1 => Shutdown,
            2 => ProtocolViolation,
            3 => DecryptFailed,
            4 => NoSharedProtocols,
            5 => IncompatibleVersion,
            6 => IdleTimeout,
            7 => HandshakeTimeout,
            8 => DuplicateConnection,
            9 => TooManyConnections,
            10 => MessageTooLarge,
            11 => HandshakeFailed,
            12 => UnknownMessageType,
            13 => ResourceLimit,
            14 => FlowControlViolation,
            15 => WrongPeer,
            254 => Unreachable,
            255 => TransportClosed,
            c => Unknown(c),
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DisconnectReason::*;
        match self {
            Requested => f.write_str("disconnect requested"),
            Shutdown => f.write_str("node shutting down"),
            ProtocolViolation => f.write_str("protocol violation"),
            DecryptFailed => f.write_str("record failed to authenticate"),
            NoSharedProtocols => f.write_str("no shared sub-protocols"),
            IncompatibleVersion => f.write_str("incompatible wire version"),
            IdleTimeout => f.write_str("idle timeout"),
            HandshakeTimeout => f.write_str("handshake timeout"),
            DuplicateConnection => f.write_str("duplicate connection"),
            TooManyConnections => f.write_str("too many connections"),
            MessageTooLarge => f.write_str("message too large"),
            HandshakeFailed => f.write_str("handshake failed"),
            UnknownMessageType => f.write_str("unknown channel or message type"),
            ResourceLimit => f.write_str("peer exceeded a resource limit"),
            FlowControlViolation => f.write_str("peer broke flow control"),
            WrongPeer => f.write_str("the peer is not the node that was dialled"),
            Unreachable => f.write_str("address unreachable"),
            TransportClosed => f.write_str("transport closed"),
            Unknown(c) => write!(f, "unknown reason {c}"),
        }
    }
}

impl core::error::Error for DisconnectReason {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip() {
        for c in 0..=255u8 {
            let r = DisconnectReason::from_code(c);
            assert_eq!(r.code(), c);
        }
    }
}
