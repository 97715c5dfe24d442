//! QUIC-style variable-length integers ([RFC 9000 §16]) used throughout the
//! wire format: the top two bits of the first byte give the length (1, 2, 4
//! or 8 bytes), the remaining bits the big-endian value (at most 2^62 - 1).
//!
//! [RFC 9000 §16]: https://www.rfc-editor.org/rfc/rfc9000#section-16

use alloc::vec::Vec;

/// The largest value a varint can carry.
pub(crate) const MAX: u64 = (1 << 62) - 1;

/// Input ended in the middle of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnexpectedEnd;

/// Number of bytes `v` takes when encoded.
#[inline]
pub(crate) fn len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` (which must be at most [`MAX`]; larger values are clamped) to `out`.
pub(crate) fn write(out: &mut Vec<u8>, v: u64) {
    let v = v.min(MAX);
    match len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Writes `v` into the start of `out` and returns the bytes written, or
/// `None` if `out` is too short.
#[inline]
pub(crate) fn write_to(out: &mut [u8], v: u64) -> Option<usize> {
    let v = v.min(MAX);
    let n = len(v);
    let dst = out.get_mut(..n)?;
    match n {
        1 => dst[0] = v as u8,
        2 => dst.copy_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => dst.copy_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => dst.copy_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
    Some(n)
}

/// A cursor over a byte slice that decodes the wire primitives.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    /// True when everything was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads one byte.
    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, UnexpectedEnd> {
        let (&b, rest) = self.buf.split_first().ok_or(UnexpectedEnd)?;
        self.buf = rest;
        Ok(b)
    }

    /// Reads a varint.
    #[inline(always)]
    pub(crate) fn varint(&mut self) -> Result<u64, UnexpectedEnd> {
        let first = *self.buf.first().ok_or(UnexpectedEnd)?;
        let (v, n) = match first >> 6 {
            0 => (u64::from(first), 1),
            1 => match self.buf.get(1) {
                Some(&b) => (u64::from(first & 0x3f) << 8 | u64::from(b), 2),
                None => return Err(UnexpectedEnd),
            },
            2 => match self.buf.first_chunk::<4>() {
                Some(b) => (u64::from(u32::from_be_bytes(*b) & 0x3fff_ffff), 4),
                None => return Err(UnexpectedEnd),
            },
            _ => match self.buf.first_chunk::<8>() {
                Some(b) => (u64::from_be_bytes(*b) & MAX, 8),
                None => return Err(UnexpectedEnd),
            },
        };
        self.buf = &self.buf[n..];
        Ok(v)
    }

    /// Reads `n` bytes.
    #[inline]
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], UnexpectedEnd> {
        if self.buf.len() < n {
            return Err(UnexpectedEnd);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// Reads a fixed-size array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], UnexpectedEnd> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(v in 0u64..=MAX, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = Vec::new();
            write(&mut out, v);
            prop_assert_eq!(out.len(), len(v));
            let mut buf = [0u8; 8];
            let n = write_to(&mut buf, v).unwrap();
            prop_assert_eq!(&buf[..n], &out[..]);
            out.extend_from_slice(&tail);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.remaining(), &tail[..]);
        }

        #[test]
        fn truncated_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..9)) {
            let mut r = Reader::new(&bytes);
            let _ = r.varint();
        }
    }

    #[test]
    fn rfc9000_examples() {
        let mut r = Reader::new(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]);
        assert_eq!(r.varint(), Ok(151_288_809_941_952_652));
        assert_eq!(Reader::new(&[0x9d, 0x7f, 0x3e, 0x7d]).varint(), Ok(494_878_333));
        assert_eq!(Reader::new(&[0x7b, 0xbd]).varint(), Ok(15_293));
        assert_eq!(Reader::new(&[0x25]).varint(), Ok(37));
        assert_eq!(Reader::new(&[0x40]).varint(), Err(UnexpectedEnd));
    }
}
