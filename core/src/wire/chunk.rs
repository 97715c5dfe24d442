//! Chunks: the units a record's plaintext is made of (SPEC.md "Chunks").
//!
//! A record carries any number of chunks. A data chunk belongs to one
//! channel and carries a piece of one message; message boundaries are
//! marked by the `FIRST` and `LAST` flags, so a receiver can reassemble
//! messages of different channels interleaved chunk by chunk (one message
//! in progress per channel), and small messages share a record. The
//! extension range lets later versions add chunk kinds (flow control credit,
//! for example) that older receivers skip.

use crate::wire::varint::{self, Reader};

/// Tag of the padding chunk: the rest of the record is padding.
pub(crate) const TAG_PADDING: u8 = 0x00;
/// Base tag of a data chunk; the low two bits are flags.
pub(crate) const TAG_DATA: u8 = 0x10;
/// Flag: this chunk starts a message (carries its type and total length).
pub(crate) const FLAG_FIRST: u8 = 0x01;
/// Flag: this chunk ends a message.
pub(crate) const FLAG_LAST: u8 = 0x02;
/// First tag of the extension range (`0x30..=0xff`): `tag, len varint, body`.
pub(crate) const TAG_EXTENSION_MIN: u8 = 0x30;

/// The start of a message, carried by its first chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageStart {
    /// Message type within the channel's protocol.
    pub(crate) msg_type: u64,
    /// Total payload length of the message.
    pub(crate) total_len: u64,
}

/// A decoded chunk, borrowing its data from the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chunk<'a> {
    /// A piece of a message.
    Data {
        /// Channel: 0 is control, 1.. are the negotiated protocols.
        channel: u64,
        /// Present on the first chunk of a message.
        start: Option<MessageStart>,
        /// True on the last chunk of a message.
        last: bool,
        /// The piece of payload.
        data: &'a [u8],
    },
    /// Padding: the rest of the record is to be ignored.
    Padding,
    /// A chunk kind from the extension range, skipped if unknown.
    Extension {
        /// The tag (`0x30..=0xff`).
        tag: u8,
        /// The chunk's body.
        body: &'a [u8],
    },
}

/// A malformed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// The chunk runs past the end of the record.
    Truncated,
    /// The tag is in no defined range.
    UnknownTag(u8),
}

impl From<varint::UnexpectedEnd> for ChunkError {
    fn from(_: varint::UnexpectedEnd) -> Self {
        ChunkError::Truncated
    }
}

fn usize_len(v: u64) -> Result<usize, ChunkError> {
    usize::try_from(v).map_err(|_| ChunkError::Truncated)
}

/// Longest data chunk header: the tag and four 8-byte varints.
pub(crate) const MAX_HEADER: usize = 1 + 4 * 8;

/// Decodes the next chunk from `r`. Returns `Ok(None)` at the end of the record.
#[inline]
pub(crate) fn decode<'a>(r: &mut Reader<'a>) -> Result<Option<Chunk<'a>>, ChunkError> {
    if r.is_empty() {
        return Ok(None);
    }
    let tag = r.u8()?;
    let chunk = match tag {
        TAG_PADDING => {
            // Consume the rest of the record.
            let n = r.remaining().len();
            r.bytes(n)?;
            Chunk::Padding
        }
        0x10..=0x13 => {
            let channel = r.varint()?;
            let last = tag & FLAG_LAST != 0;
            let (start, len) = if tag & FLAG_FIRST != 0 {
                let st = MessageStart { msg_type: r.varint()?, total_len: r.varint()? };
                // A whole message (FIRST + LAST) has no `len`: it is `total_len`.
                (Some(st), if last { st.total_len } else { r.varint()? })
            } else {
                (None, r.varint()?)
            };
            let data = r.bytes(usize_len(len)?)?;
            Chunk::Data { channel, start, last, data }
        }
        TAG_EXTENSION_MIN..=0xff => {
            let len = usize_len(r.varint()?)?;
            Chunk::Extension { tag, body: r.bytes(len)? }
        }
        other => return Err(ChunkError::UnknownTag(other)),
    };
    Ok(Some(chunk))
}

/// The header of a whole message's chunk in its usual small form (channel
/// and type below 64, length below 2^14), read without the general
/// decoder: channel, type, length and header length; `None` for any other
/// chunk, which [`decode`] reads.
#[inline(always)]
pub(crate) fn small_whole_header(b: &[u8]) -> Option<(u64, u64, usize, usize)> {
    let &[tag, channel, msg_type, l0, ..] = b else { return None };
    if tag != TAG_DATA | FLAG_FIRST | FLAG_LAST || (channel | msg_type) >= 64 {
        return None;
    }
    let (len, header) = match l0 >> 6 {
        0 => (usize::from(l0), 4),
        1 => (usize::from(l0 & 0x3f) << 8 | usize::from(*b.get(4)?), 5),
        _ => return None,
    };
    Some((u64::from(channel), u64::from(msg_type), len, header))
}

/// Length of a data chunk header (everything before the data). A whole
/// message's chunk (`start` and `last`) carries no `len`.
#[inline]
pub(crate) fn data_header_len(channel: u64, start: Option<MessageStart>, last: bool, len: u64) -> usize {
    let st = start.map_or(0, |s| varint::len(s.msg_type) + varint::len(s.total_len));
    let len = if start.is_some() && last { 0 } else { varint::len(len) };
    1 + varint::len(channel) + st + len
}

/// Length of the header of a whole message's chunk (FIRST + LAST).
#[inline(always)]
pub(crate) fn whole_header_len(channel: u64, msg_type: u64, len: u64) -> usize {
    1 + varint::len(channel) + varint::len(msg_type) + varint::len(len)
}

/// Appends the header of a whole message's chunk (FIRST + LAST) to `out`:
/// the tag, channel, type and length (the data follows).
#[inline(always)]
pub(crate) fn push_whole_header(out: &mut alloc::vec::Vec<u8>, channel: u64, msg_type: u64, len: u64) {
    if channel < 64 && msg_type < 64 && len < 1 << 14 {
        // The usual small message: one-byte channel and type.
        let h = if len < 64 {
            [TAG_DATA | FLAG_FIRST | FLAG_LAST, channel as u8, msg_type as u8, len as u8, 0]
        } else {
            let l = (len as u16 | 0x4000).to_be_bytes();
            [TAG_DATA | FLAG_FIRST | FLAG_LAST, channel as u8, msg_type as u8, l[0], l[1]]
        };
        // Five bytes, the last dropped for a one-byte length: a fixed-size
        // copy is one store, a variable-size one a call to `memcpy`.
        out.extend_from_slice(&h);
        if len < 64 {
            out.pop();
        }
        return;
    }
    out.push(TAG_DATA | FLAG_FIRST | FLAG_LAST);
    varint::write(out, channel);
    varint::write(out, msg_type);
    varint::write(out, len);
}

/// Writes a data chunk header into `out` (which must have room for
/// [`data_header_len`] bytes) and returns its length. For a whole message
/// (`start` and `last`), `len` must be `start.total_len`.
#[inline]
pub(crate) fn write_data_header(
    out: &mut [u8],
    channel: u64,
    start: Option<MessageStart>,
    last: bool,
    len: u64,
) -> usize {
    let mut tag = TAG_DATA;
    if start.is_some() {
        tag |= FLAG_FIRST;
    }
    if last {
        tag |= FLAG_LAST;
    }
    out[0] = tag;
    let mut n = 1;
    // Each write fits because the caller reserved data_header_len bytes.
    let mut put = |v: u64, n: &mut usize| *n += varint::write_to(&mut out[*n..], v).unwrap_or(0);
    put(channel, &mut n);
    if let Some(s) = start {
        put(s.msg_type, &mut n);
        put(s.total_len, &mut n);
    }
    // A whole message's length is its `total_len` (which must equal `len`).
    if !(start.is_some() && last) {
        put(len, &mut n);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn encode(channel: u64, start: Option<MessageStart>, last: bool, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; data_header_len(channel, start, last, data.len() as u64)];
        let n = write_data_header(&mut out, channel, start, last, data.len() as u64);
        assert_eq!(n, out.len());
        out.extend_from_slice(data);
        out
    }

    proptest! {
        #[test]
        fn data_roundtrip(channel in 0u64..100_000, first in any::<bool>(), last in any::<bool>(),
                          msg_type in 0u64..1_000_000, total in 0u64..(1 << 40),
                          data in proptest::collection::vec(any::<u8>(), 0..300)) {
            // A whole message's total is its data length (it has no `len`).
            let total = if last { data.len() as u64 } else { total };
            let start = first.then_some(MessageStart { msg_type, total_len: total });
            let mut rec = encode(channel, start, last, &data);
            rec.extend(encode(1, None, true, b"x"));
            let mut r = Reader::new(&rec);
            prop_assert_eq!(decode(&mut r).unwrap(), Some(Chunk::Data { channel, start, last, data: &data }));
            prop_assert_eq!(decode(&mut r).unwrap(), Some(Chunk::Data { channel: 1, start: None, last: true, data: b"x" }));
            prop_assert_eq!(decode(&mut r).unwrap(), None);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut r = Reader::new(&bytes);
            while let Ok(Some(_)) = decode(&mut r) {}
        }
    }

    proptest! {
        #[test]
        fn whole_header_matches_the_general_one(channel in 0u64..100_000, msg_type in 0u64..100_000,
                                                len in prop_oneof![0u64..100, 0u64..20_000, 0u64..(1 << 40)]) {
            let st = Some(MessageStart { msg_type, total_len: len });
            let mut general = vec![0u8; data_header_len(channel, st, true, len)];
            write_data_header(&mut general, channel, st, true, len);
            let mut whole = Vec::new();
            push_whole_header(&mut whole, channel, msg_type, len);
            prop_assert_eq!(&whole, &general);
            prop_assert_eq!(whole_header_len(channel, msg_type, len), general.len());
        }

        /// The small whole header read agrees with `decode` wherever it
        /// reads one, and reads every whole message's header in the usual
        /// small form.
        #[test]
        fn small_whole_header_agrees_with_decode(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..80),
                (0u64..70, 0u64..70, proptest::collection::vec(any::<u8>(), 0..100), any::<bool>()).prop_map(
                    |(channel, msg_type, data, cut)| {
                        let st = Some(MessageStart { msg_type, total_len: data.len() as u64 });
                        let mut rec = encode(channel, st, true, &data);
                        if cut { rec.pop(); }
                        rec
                    }
                ),
            ]
        ) {
            let general = decode(&mut Reader::new(&bytes));
            match small_whole_header(&bytes) {
                Some((channel, msg_type, total, header)) => {
                    if header + total <= bytes.len() {
                        let data = &bytes[header..header + total];
                        let st = Some(MessageStart { msg_type, total_len: total as u64 });
                        prop_assert_eq!(general, Ok(Some(Chunk::Data { channel, start: st, last: true, data })));
                    } else {
                        prop_assert!(general.is_err(), "{:?}", general);
                    }
                }
                None => {
                    // Left to `decode`: a whole message's chunk only if one of
                    // its first three varints is not one byte (a length of
                    // 2^14 or more, or a value written long).
                    if let Ok(Some(Chunk::Data { start: Some(_), last: true, .. })) = general {
                        prop_assert!(bytes[1] >= 64 || bytes[2] >= 64 || bytes[3] >= 128, "{:?}", bytes);
                    }
                }
            }
        }
    }

    #[test]
    fn padding_and_extensions() {
        let rec = [0x30, 0x02, 0xaa, 0xbb, 0x00, 0x00, 0x00];
        let mut r = Reader::new(&rec);
        assert_eq!(decode(&mut r), Ok(Some(Chunk::Extension { tag: 0x30, body: &[0xaa, 0xbb] })));
        assert_eq!(decode(&mut r), Ok(Some(Chunk::Padding)));
        assert_eq!(decode(&mut r), Ok(None));
        assert_eq!(decode(&mut Reader::new(&[0x05])), Err(ChunkError::UnknownTag(5)));
        assert_eq!(decode(&mut Reader::new(&[0x13, 0x01, 0x00, 0x05, 1])), Err(ChunkError::Truncated));
        // A whole message has no `len`: its data is `total_len` bytes.
        assert_eq!(
            decode(&mut Reader::new(&[0x13, 0x01, 0x02, 0x02, 0x68, 0x69])),
            Ok(Some(Chunk::Data {
                channel: 1,
                start: Some(MessageStart { msg_type: 2, total_len: 2 }),
                last: true,
                data: b"hi"
            }))
        );
    }
}
