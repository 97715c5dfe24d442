//! Control messages: the messages of channel 0 (SPEC.md "Control channel").

use alloc::vec::Vec;

use crate::reason::DisconnectReason;
use crate::wire::varint::Reader;

/// Largest control message payload accepted.
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 1024;

/// Message types of the control channel.
pub(crate) mod kind {
    pub(crate) const PING: u64 = 0;
    pub(crate) const PONG: u64 = 1;
    pub(crate) const DISCONNECT: u64 = 2;
    pub(crate) const REKEY: u64 = 3;
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// Keepalive probe; the peer echoes the token in a `Pong`.
    Ping(u64),
    /// Answer to a `Ping`.
    Pong(u64),
    /// The sender closes the connection for `reason`.
    Disconnect(DisconnectReason),
    /// Records after the one carrying this message use the next key.
    Rekey,
    /// A control message type this implementation does not know (ignored).
    Unknown,
}

/// A control message that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadControl;

impl Control {
    /// The control channel message type.
    pub(crate) fn msg_type(&self) -> u64 {
        match self {
            Control::Ping(_) => kind::PING,
            Control::Pong(_) => kind::PONG,
            Control::Disconnect(_) => kind::DISCONNECT,
            Control::Rekey => kind::REKEY,
            // Never sent: only produced by decoding a type we do not know.
            Control::Unknown => u64::MAX,
        }
    }

    /// The payload bytes.
    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Control::Ping(t) | Control::Pong(t) => out.extend_from_slice(&t.to_be_bytes()),
            Control::Disconnect(r) => out.push(r.code()),
            Control::Rekey | Control::Unknown => {}
        }
    }

    /// Parses a control message of type `msg_type`.
    pub(crate) fn decode(msg_type: u64, payload: &[u8]) -> Result<Self, BadControl> {
        let mut r = Reader::new(payload);
        let c = match msg_type {
            kind::PING => Control::Ping(u64::from_be_bytes(r.array().map_err(|_| BadControl)?)),
            kind::PONG => Control::Pong(u64::from_be_bytes(r.array().map_err(|_| BadControl)?)),
            kind::DISCONNECT => {
                Control::Disconnect(DisconnectReason::from_code(r.u8().map_err(|_| BadControl)?))
            }
            kind::REKEY => Control::Rekey,
            _ => return Ok(Control::Unknown),
        };
        // Trailing bytes are allowed for extensibility (a DISCONNECT may carry
        // a UTF-8 explanation after the code).
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(t in any::<u64>(), code in 0u8..=254, which in 0u8..4) {
            let c = match which {
                0 => Control::Ping(t),
                1 => Control::Pong(t),
                2 => Control::Disconnect(DisconnectReason::from_code(code)),
                _ => Control::Rekey,
            };
            let mut p = Vec::new();
            c.encode_payload(&mut p);
            prop_assert_eq!(Control::decode(c.msg_type(), &p), Ok(c));
        }

        #[test]
        fn decode_never_panics(t in any::<u64>(), p in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = Control::decode(t, &p);
        }
    }
}
