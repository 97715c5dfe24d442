//! Sub-protocols: their registration, the handshake `Hello` payload that
//! advertises them, and the negotiation of the shared set.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::wire::varint::{self, Reader};

/// The devp2p wire version this implementation speaks: 2 (version 1 gave a
/// whole message's chunk a `len` field equal to its `total_len`; SPEC.md §15).
pub const WIRE_VERSION: u64 = 2;

/// Longest sub-protocol name, in bytes.
pub const MAX_PROTOCOL_NAME: usize = 64;

/// A sub-protocol an application registers: name, version and the number
/// of message types it uses (message types are `0..message_count`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol {
    /// Name, 1 to [`MAX_PROTOCOL_NAME`] bytes, compared byte-wise.
    pub name: String,
    /// Version; only equal versions are compatible.
    pub version: u32,
    /// Number of message types; message types are `0..message_count`.
    pub message_count: u32,
    /// Share of the link this protocol gets when several have data to send
    /// (deficit round robin weight; local policy, not negotiated). Default 1.
    pub weight: u32,
}

impl Protocol {
    /// A protocol description with weight 1.
    pub fn new(name: impl Into<String>, version: u32, message_count: u32) -> Self {
        Protocol { name: name.into(), version, message_count, weight: 1 }
    }

    /// The same protocol with scheduling weight `weight` (at least 1).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }
}

/// A locally registered protocol: what [`Config::register`](crate::Config::register)
/// returns. It is the protocol's index in registration order, so build one
/// by hand only from a list that never changes order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ProtocolId(pub u16);

/// A sub-protocol advertised by a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub(crate) name: Vec<u8>,
    pub(crate) version: u32,
    pub(crate) message_count: u32,
}

/// The decoded handshake payload (SPEC.md "Hello payload").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Hello {
    pub(crate) wire_version: u64,
    pub(crate) protocols: Vec<Advertised>,
    /// Largest message the sender accepts (tag 3); `None` if not advertised.
    pub(crate) max_message_size: Option<u64>,
    /// Flow-control credit the sender grants each channel at the start
    /// (tag 4); `None` if not advertised: the peer does no flow control.
    pub(crate) receive_window: Option<u64>,
}

/// Field tags of the hello payload.
mod tag {
    pub(super) const WIRE_VERSION: u64 = 1;
    pub(super) const PROTOCOL: u64 = 2;
    pub(super) const MAX_MESSAGE_SIZE: u64 = 3;
    pub(super) const RECEIVE_WINDOW: u64 = 4;
}

/// A malformed hello payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HelloError {
    /// A field or value was cut short.
    Truncated,
    /// The required wire version field is missing.
    MissingVersion,
    /// A protocol name is empty or longer than [`MAX_PROTOCOL_NAME`].
    BadProtocolName,
    /// More protocols than the configured limit.
    TooManyProtocols,
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HelloError::Truncated => "hello payload truncated",
            HelloError::MissingVersion => "hello payload lacks the wire version",
            HelloError::BadProtocolName => "hello payload has an invalid protocol name",
            HelloError::TooManyProtocols => "hello payload lists too many protocols",
        })
    }
}

impl From<varint::UnexpectedEnd> for HelloError {
    fn from(_: varint::UnexpectedEnd) -> Self {
        HelloError::Truncated
    }
}

fn write_field(out: &mut Vec<u8>, tag: u64, value: &[u8]) {
    varint::write(out, tag);
    varint::write(out, value.len() as u64);
    out.extend_from_slice(value);
}

impl Hello {
    /// The hello this node sends.
    pub(crate) fn local(protocols: &[Protocol], max_message_size: u64, receive_window: u64) -> Self {
        Hello {
            wire_version: WIRE_VERSION,
            protocols: protocols
                .iter()
                .map(|p| Advertised {
                    name: p.name.as_bytes().to_vec(),
                    version: p.version,
                    message_count: p.message_count,
                })
                .collect(),
            max_message_size: Some(max_message_size),
            receive_window: Some(receive_window),
        }
    }

    /// Appends the encoding to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut v = Vec::new();
        varint::write(&mut v, self.wire_version);
        write_field(out, tag::WIRE_VERSION, &v);
        for p in &self.protocols {
            v.clear();
            varint::write(&mut v, u64::from(p.version));
            varint::write(&mut v, u64::from(p.message_count));
            v.extend_from_slice(&p.name);
            write_field(out, tag::PROTOCOL, &v);
        }
        if let Some(m) = self.max_message_size {
            v.clear();
            varint::write(&mut v, m);
            write_field(out, tag::MAX_MESSAGE_SIZE, &v);
        }
        if let Some(w) = self.receive_window {
            v.clear();
            varint::write(&mut v, w);
            write_field(out, tag::RECEIVE_WINDOW, &v);
        }
    }

    /// Decodes a hello, accepting at most `max_protocols` protocol entries.
    /// Unknown fields are skipped.
    pub(crate) fn decode(bytes: &[u8], max_protocols: usize) -> Result<Self, HelloError> {
        let mut r = Reader::new(bytes);
        let mut hello = Hello::default();
        let mut version = None;
        while !r.is_empty() {
            let t = r.varint()?;
            let len = usize::try_from(r.varint()?).map_err(|_| HelloError::Truncated)?;
            let mut value = Reader::new(r.bytes(len)?);
            match t {
                tag::WIRE_VERSION => version = Some(value.varint()?),
                tag::PROTOCOL => {
                    if hello.protocols.len() >= max_protocols {
                        return Err(HelloError::TooManyProtocols);
                    }
                    let version = u32::try_from(value.varint()?).map_err(|_| HelloError::Truncated)?;
                    let message_count = u32::try_from(value.varint()?).map_err(|_| HelloError::Truncated)?;
                    let name = value.remaining();
                    if name.is_empty() || name.len() > MAX_PROTOCOL_NAME {
                        return Err(HelloError::BadProtocolName);
                    }
                    hello.protocols.push(Advertised { name: name.to_vec(), version, message_count });
                }
                tag::MAX_MESSAGE_SIZE => hello.max_message_size = Some(value.varint()?),
                tag::RECEIVE_WINDOW => hello.receive_window = Some(value.varint()?),
                _ => {} // unknown field: skipped
            }
        }
        hello.wire_version = version.ok_or(HelloError::MissingVersion)?;
        Ok(hello)
    }
}

/// One negotiated sub-protocol: the channel it uses on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedProtocol {
    /// Local protocol index.
    pub(crate) id: ProtocolId,
    /// Channel number on the wire (1-based; 0 is the control channel).
    pub(crate) channel: u32,
    /// Number of message types.
    pub(crate) message_count: u32,
}

/// Derives the shared protocol set: every `(name, version, message_count)`
/// both sides list; if a name is shared at several versions only the
/// highest is kept. Channels are numbered from 1 in the order of
/// `(name bytes, version)`, so both sides derive the same numbers.
pub(crate) fn negotiate(local: &[Protocol], remote: &Hello) -> Vec<SharedProtocol> {
    let mut shared: Vec<(&[u8], u32, ProtocolId, u32)> = Vec::new();
    for (i, p) in local.iter().enumerate() {
        let matches = remote.protocols.iter().any(|r| {
            r.name == p.name.as_bytes() && r.version == p.version && r.message_count == p.message_count
        });
        if !matches {
            continue;
        }
        let id = ProtocolId(i as u16);
        match shared.iter_mut().find(|s| s.0 == p.name.as_bytes()) {
            Some(s) if s.1 < p.version => *s = (p.name.as_bytes(), p.version, id, p.message_count),
            Some(_) => {}
            None => shared.push((p.name.as_bytes(), p.version, id, p.message_count)),
        }
    }
    shared.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    shared
        .into_iter()
        .enumerate()
        .map(|(i, (_, _, id, message_count))| SharedProtocol { id, channel: i as u32 + 1, message_count })
        .collect()
}

impl core::error::Error for HelloError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn arb_protocol() -> impl Strategy<Value = Protocol> {
        ("[a-z]{1,12}", 0u32..4, 0u32..300).prop_map(|(n, v, c)| Protocol::new(n, v, c))
    }

    proptest! {
        #[test]
        fn hello_roundtrip(ps in proptest::collection::vec(arb_protocol(), 0..20), m in 0u64..(1 << 40)) {
            let h = Hello::local(&ps, m, m / 2);
            let mut out = Vec::new();
            h.encode(&mut out);
            prop_assert_eq!(Hello::decode(&out, 1000).unwrap(), h);
        }

        #[test]
        fn hello_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Hello::decode(&bytes, 16);
        }

        #[test]
        fn negotiation_is_symmetric(a in proptest::collection::vec(arb_protocol(), 0..8),
                                    b in proptest::collection::vec(arb_protocol(), 0..8)) {
            let ha = Hello::local(&a, 1, 1);
            let hb = Hello::local(&b, 1, 1);
            let sa = negotiate(&a, &hb);
            let sb = negotiate(&b, &ha);
            prop_assert_eq!(sa.len(), sb.len());
            for (x, y) in sa.iter().zip(sb.iter()) {
                prop_assert_eq!(x.channel, y.channel);
                prop_assert_eq!(&a[x.id.0 as usize].name, &b[y.id.0 as usize].name);
                prop_assert_eq!(a[x.id.0 as usize].version, b[y.id.0 as usize].version);
            }
        }
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut out = Vec::new();
        Hello::local(&[Protocol::new("eth", 1, 8)], 1024, 4096).encode(&mut out);
        write_field(&mut out, 99, b"future");
        let h = Hello::decode(&out, 8).unwrap();
        assert_eq!(h.protocols.len(), 1);
    }

    #[test]
    fn highest_shared_version_wins() {
        let local = vec![Protocol::new("eth", 1, 8), Protocol::new("eth", 2, 8), Protocol::new("bzz", 1, 3)];
        let remote = Hello::local(&[Protocol::new("eth", 1, 8), Protocol::new("eth", 2, 8)], 1, 1);
        let s = negotiate(&local, &remote);
        assert_eq!(s, vec![SharedProtocol { id: ProtocolId(1), channel: 1, message_count: 8 }]);
    }

    #[test]
    fn missing_version_is_an_error() {
        assert_eq!(Hello::decode(&[], 8), Err(HelloError::MissingVersion));
    }
}
