//! BLAKE2s as the Noise `HASH`, with the Noise `HMAC-HASH` and `HKDF` built on it.
//!
//! [Noise rev 34 §4.3](https://noiseprotocol.org/noise.html#hash-functions):
//! `HASHLEN = 32`, `BLOCKLEN = 64`.

use blake2::{Blake2s256, Digest};

/// Output length of the hash, in bytes.
pub(crate) const HASHLEN: usize = 32;
/// Internal block length of the hash, used by HMAC.
const BLOCKLEN: usize = 64;

/// A hash output.
pub(crate) type Hash = [u8; HASHLEN];

/// `HASH(a || b)`.
pub(crate) fn hash2(a: &[u8], b: &[u8]) -> Hash {
    let mut h = Blake2s256::new();
    h.update(a);
    h.update(b);
    h.finalize().into()
}

/// `HASH(data)`.
pub(crate) fn hash(data: &[u8]) -> Hash {
    Blake2s256::digest(data).into()
}

/// `HMAC-HASH(key, parts[0] || parts[1] || ...)` per RFC 2104.
pub(crate) fn hmac(key: &[u8; HASHLEN], parts: &[&[u8]]) -> Hash {
    let mut ipad = [0x36u8; BLOCKLEN];
    let mut opad = [0x5cu8; BLOCKLEN];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Blake2s256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let inner: Hash = inner.finalize().into();
    let mut outer = Blake2s256::new();
    outer.update(opad);
    outer.update(inner);
    outer.finalize().into()
}

/// Noise `HKDF(chaining_key, input_key_material, 3)`; callers that need two
/// outputs ignore the third (the first two are identical either way).
pub(crate) fn hkdf3(ck: &Hash, ikm: &[u8]) -> (Hash, Hash, Hash) {
    let temp = hmac(ck, &[ikm]);
    let o1 = hmac(&temp, &[&[1u8]]);
    let o2 = hmac(&temp, &[&o1, &[2u8]]);
    let o3 = hmac(&temp, &[&o2, &[3u8]]);
    (o1, o2, o3)
}

/// Noise `HKDF(chaining_key, input_key_material, 2)`.
pub(crate) fn hkdf2(ck: &Hash, ikm: &[u8]) -> (Hash, Hash) {
    let temp = hmac(ck, &[ikm]);
    let o1 = hmac(&temp, &[&[1u8]]);
    let o2 = hmac(&temp, &[&o1, &[2u8]]);
    (o1, o2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake2s_empty_matches_rfc7693() {
        // RFC 7693 Appendix B is "abc"; BLAKE2s-256("abc"):
        let h = hash(b"abc");
        assert_eq!(h[..8], [0x50, 0x8C, 0x5E, 0x8C, 0x32, 0x7C, 0x14, 0xE2], "BLAKE2s-256(abc) prefix");
    }

    #[test]
    fn hkdf2_is_prefix_of_hkdf3() {
        let ck = [7u8; 32];
        let (a, b) = hkdf2(&ck, b"ikm");
        let (c, d, e) = hkdf3(&ck, b"ikm");
        assert_eq!((a, b), (c, d));
        assert_ne!(e, d);
    }
}
